//! The recorded language: the primary subtag of the preferred `Accept-Language` range, if it is
//! an ISO 639-1 code (the record's `lang`, the metric `requests_by_language_total`).
//!
//! It owns the list of ISO 639-1 codes and the parsing of `Accept-Language`. It must never
//! return anything but a code from that fixed list (no region, script or private subtag, which
//! narrow a person down), and never allocate or panic, whatever the header holds.

use crate::fields::{line_elements, weighted};

/// A lowercase ISO 639-1 language code, e.g. `sq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lang([u8; 2]);

impl Lang {
    /// All 184 ISO 639-1 codes, sorted (Debian iso-codes 4.15, ISO 639-2 table; includes the
    /// withdrawn collective code `bh`, as that table does).
    pub const ALL: &'static [&'static str] = &[
        "aa", "ab", "ae", "af", "ak", "am", "an", "ar", "as", "av", "ay", "az", "ba", "be", "bg",
        "bh", "bi", "bm", "bn", "bo", "br", "bs", "ca", "ce", "ch", "co", "cr", "cs", "cu", "cv",
        "cy", "da", "de", "dv", "dz", "ee", "el", "en", "eo", "es", "et", "eu", "fa", "ff", "fi",
        "fj", "fo", "fr", "fy", "ga", "gd", "gl", "gn", "gu", "gv", "ha", "he", "hi", "ho", "hr",
        "ht", "hu", "hy", "hz", "ia", "id", "ie", "ig", "ii", "ik", "io", "is", "it", "iu", "ja",
        "jv", "ka", "kg", "ki", "kj", "kk", "kl", "km", "kn", "ko", "kr", "ks", "ku", "kv", "kw",
        "ky", "la", "lb", "lg", "li", "ln", "lo", "lt", "lu", "lv", "mg", "mh", "mi", "mk", "ml",
        "mn", "mr", "ms", "mt", "my", "na", "nb", "nd", "ne", "ng", "nl", "nn", "no", "nr", "nv",
        "ny", "oc", "oj", "om", "or", "os", "pa", "pi", "pl", "ps", "pt", "qu", "rm", "rn", "ro",
        "ru", "rw", "sa", "sc", "sd", "se", "sg", "si", "sk", "sl", "sm", "sn", "so", "sq", "sr",
        "ss", "st", "su", "sv", "sw", "ta", "te", "tg", "th", "ti", "tk", "tl", "tn", "to", "tr",
        "ts", "tt", "tw", "ty", "ug", "uk", "ur", "uz", "ve", "vi", "vo", "wa", "wo", "xh", "yi",
        "yo", "za", "zh", "zu",
    ];

    /// The code if `code` is two ASCII letters (any case) naming an ISO 639-1 language.
    pub fn new(code: &[u8]) -> Option<Lang> {
        let &[a, b] = code else {
            return None;
        };
        let lang = Lang([a.to_ascii_lowercase(), b.to_ascii_lowercase()]);
        lang.index().map(|_| lang)
    }

    /// The lowercase code, e.g. `"sq"`.
    pub fn as_str(&self) -> &str {
        // Always two ASCII letters: `new` is the only constructor.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The position of this code in [`Lang::ALL`], for arrays of pre-resolved metric handles.
    pub fn index(&self) -> Option<usize> {
        Lang::ALL
            .binary_search_by(|c| c.as_bytes().cmp(&self.0[..]))
            .ok()
    }
}

/// The primary subtag of the highest-weighted range of an `Accept-Language` header value
/// (ties go to the range listed first; `q=0` ranges and `*` are left out), if that subtag is an
/// ISO 639-1 code. A preferred range in any other form gives `None`; the next-best range is
/// not consulted, since it is not the person's language of choice.
///
/// ```
/// use webprom_edge::privacy::lang::{Lang, primary_language};
/// assert_eq!(primary_language(b"sq-AL,sq;q=0.9,en;q=0.8"), Lang::new(b"sq"));
/// assert_eq!(primary_language(b"en;q=0.1, fr;q=0.9"), Lang::new(b"fr"));
/// assert_eq!(primary_language(b"*"), None);
/// ```
pub fn primary_language(accept_language: &[u8]) -> Option<Lang> {
    primary_language_of(line_elements(accept_language, b','))
}

/// [`primary_language`] over the ranges of every `Accept-Language` field line, as one list
/// (RFC 9110 §5.3): `ranges` are the list's elements, e.g. from [`crate::fields::elements`].
pub fn primary_language_of<'a>(ranges: impl IntoIterator<Item = &'a [u8]>) -> Option<Lang> {
    let mut best: Option<(u16, &[u8])> = None;
    for range in ranges {
        let (tag, weight) = weighted(range);
        if tag.is_empty() || tag == b"*" {
            continue;
        }
        // A range whose weight cannot be read is malformed and is left out, like `q=0`.
        let Some(weight) = weight.filter(|&w| w > 0) else {
            continue;
        };
        if best.is_none_or(|(best_weight, _)| weight > best_weight) {
            best = Some((weight, tag));
        }
    }
    let (_, tag) = best?;
    // Some clients write `en_US`; the primary subtag ends at either separator.
    let primary = tag.split(|&b| b == b'-' || b == b'_').next()?;
    Lang::new(primary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_codes() {
        assert_eq!(Lang::ALL.len(), 184);
        assert!(
            Lang::ALL.windows(2).all(|w| w[0] < w[1]),
            "sorted and unique"
        );
        for (i, code) in Lang::ALL.iter().enumerate() {
            assert!(code.len() == 2 && code.bytes().all(|b| b.is_ascii_lowercase()));
            let lang = Lang::new(code.as_bytes()).expect("listed code");
            assert_eq!(lang.as_str(), *code);
            assert_eq!(lang.index(), Some(i));
        }
    }

    #[test]
    fn primary_language_table() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"sq-AL,sq;q=0.9,en;q=0.8", Some("sq")),
            (b"en;q=0.1, fr;q=0.9", Some("fr")),
            (b"en-US,en;q=0.9", Some("en")),
            (b"de", Some("de")),
            (b"DE-de", Some("de")),
            (b"zh-Hant-TW", Some("zh")),
            (b"  ja ; q=0.8 ,\tko ; q=0.9  ", Some("ko")),
            (b"en_US", Some("en")),
            // Ties go to the first listed.
            (b"es;q=0.5, pt;q=0.5", Some("es")),
            (b"it, nl", Some("it")),
            // `*` is ignored; q=0 means "not acceptable".
            (b"*", None),
            (b"*, fr;q=0.5", Some("fr")),
            (b"en;q=0, *;q=0.5", None),
            (b"en;q=0.000, de;q=0.001", Some("de")),
            (b"fr;q=1.0, en", Some("fr")),
            // The preferred range decides, even when it is not ISO 639-1.
            (b"fil, en;q=0.9", None),
            (b"haw", None),
            (b"i-klingon", None),
            (b"x-pig-latin;q=1, en;q=0.5", None),
            (b"xx", None),
            // Malformed weights leave the range out.
            (b"en;q=2, de;q=0.3", Some("de")),
            (b"en;q=0.1234, de;q=0.3", Some("de")),
            (b"en;q=abc", None),
            (b"en;q=, fr;q=0.1", Some("fr")),
            (b"en;Q=0.2, fr;q=0.1", Some("en")),
            (b"en;level=1;q=0.5, fr;q=0.4", Some("en")),
            // Empty list elements are ignored (RFC 9110 §5.6.1.2).
            (b",en", Some("en")),
            (b", ,de;q=0.4,", Some("de")),
            // Garbage and empty.
            (b"", None),
            (b",,,;;;", None),
            (b"e", None),
            (b"\xff\xfe", None),
            (b"\xc3\xa9n", None),
            (b"en\x00", None),
            (b"1e", None),
            // Only spaces and tabs are whitespace around a range (found by tests/fuzz.rs).
            (b"\x0caM", None),
            (b"\x0c en", None),
            (b"en\r", None),
            (b"\ten\t;\tq=0.5\t,\tfr;q=0.4", Some("en")),
        ];
        for &(header, want) in cases {
            let got = primary_language(header);
            assert_eq!(
                got.as_ref().map(Lang::as_str),
                want,
                "{:?}",
                String::from_utf8_lossy(header)
            );
        }
    }

    #[test]
    fn several_field_lines_are_one_list() {
        let lines = |ls: &[&str]| -> Vec<http::HeaderValue> {
            ls.iter().map(|l| l.parse().unwrap()).collect()
        };
        let cases: &[(&[&str], Option<&str>)] = &[
            (&["en;q=0.1", "fr"], Some("fr")),
            (&["de", "en"], Some("de")),
            (&["", "sq"], Some("sq")),
            (&[",", " , it;q=0.5,"], Some("it")),
            (&["*", "fr;q=0.2"], Some("fr")),
            (&["en;q=0.5,", ",pt;q=0.6"], Some("pt")),
        ];
        for &(ls, want) in cases {
            let values = lines(ls);
            let got = primary_language_of(crate::fields::elements(values.iter(), b','));
            assert_eq!(got.as_ref().map(Lang::as_str), want, "{ls:?}");
        }
    }

    #[test]
    fn huge_header_is_fine() {
        let mut header = b"en;q=0.1".to_vec();
        for _ in 0..10_000 {
            header.extend_from_slice(b", xx-YY;q=0.2");
        }
        header.extend_from_slice(b", fr;q=0.3");
        assert_eq!(primary_language(&header), Lang::new(b"fr"));
    }
}
