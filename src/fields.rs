//! The one reader of list-based field values (RFC 9110 §5.2, §5.3, §5.6.1).
//!
//! A list-based field may arrive as several field lines; a recipient treats them as one list,
//! in order, as if joined by commas (§5.3). Elements are separated by a delimiter (`,` for
//! `X-Forwarded-For`, `Forwarded`, `Accept-Language`, `Connection`; `;` for the crumbs of
//! `Cookie`), may carry optional whitespace around them, may be empty (`a, , b`, a
//! trailing `,`) and must then be ignored (§5.6.1.2), and may contain quoted strings (§5.6.4)
//! whose delimiters do not separate anything. A line whose quoted strings do not close pairs
//! its quotes from the end, where proxies append, so a stray quote cannot hide what follows it.
//!
//! Every parser of such a field reads it through [`elements`], so the several-lines, empty
//! element, whitespace and quoting rules hold in one place; [`weighted`] reads the weight (`q`)
//! of an element of a weighted list (`Accept-Encoding`, `Accept-Language`). [`trim_ows`] and
//! [`trim_ows_range`] are the one whitespace trim (spaces and tabs) of the crate's field and
//! cookie parsers. Structured Fields (RFC 8941: `Sec-CH-UA`) are not read here but by the `sfv`
//! crate ([`crate::privacy::ua`]). Pure and allocation-free; it never looks at what the
//! elements mean and never logs them.

use http::header::HeaderValue;

/// The non-empty, whitespace-trimmed elements of a list-based field over all its `lines`, in
/// order, split at `delimiter` outside quoted strings.
///
/// ```
/// use http::HeaderValue;
/// use webprom_edge::fields::elements;
/// let lines = [HeaderValue::from_static("a, \"b,c\""), HeaderValue::from_static(" ,d,")];
/// let got: Vec<&[u8]> = elements(lines.iter(), b',').collect();
/// assert_eq!(got, [&b"a"[..], b"\"b,c\"", b"d"]);
/// ```
pub fn elements<'a, I>(lines: I, delimiter: u8) -> Elements<'a, I::IntoIter>
where
    I: IntoIterator<Item = &'a HeaderValue>,
{
    Elements {
        lines: lines.into_iter(),
        rest: &[],
        quotes: Quotes::Paired,
        delimiter,
    }
}

/// The elements of one field line (see [`elements`]).
pub fn line_elements(line: &[u8], delimiter: u8) -> Elements<'_, std::iter::Empty<&HeaderValue>> {
    Elements {
        lines: std::iter::empty(),
        rest: line,
        quotes: Quotes::of(line),
        delimiter,
    }
}

/// Iterator returned by [`elements`].
pub struct Elements<'a, I> {
    lines: I,
    rest: &'a [u8],
    /// How the quotes of the rest of the current line pair up.
    quotes: Quotes,
    delimiter: u8,
}

impl<'a, I: Iterator<Item = &'a HeaderValue>> Iterator for Elements<'a, I> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            if self.rest.is_empty() {
                self.rest = self.lines.next()?.as_bytes();
                self.quotes = Quotes::of(self.rest);
                continue;
            }
            let end = element_end(self.rest, self.delimiter, self.quotes);
            let element = trim_ows(&self.rest[..end]);
            self.rest = self.rest.get(end + 1..).unwrap_or_default();
            // Past a delimiter outside quotes, the line's pairing starts afresh.
            if self.quotes == Quotes::FromEndOpen {
                self.quotes = Quotes::FromEnd;
            }
            if !element.is_empty() {
                return Some(element);
            }
        }
    }
}

/// How the quotes of a field line pair up.
///
/// A proxy appends to the line the client sent (`X-Forwarded-For: <client's value>, <address>`,
/// and the same for `Forwarded`), so a stray `"` from the client must not pull what the proxy
/// wrote into a quoted string. A line whose quoted strings close (RFC 9110 §5.6.4, with `\`
/// escapes) is read left to right. Any other line is read from its end, where the proxies
/// write: its quotes pair up from the right, with no escapes, so everything before the stray
/// quote is one element and what follows is read as if the client had sent nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quotes {
    /// Every quoted string closes: read left to right, with escapes.
    Paired,
    /// Paired from the end, without escapes; an even number of quotes, so no stray one.
    FromEnd,
    /// Paired from the end, without escapes; an odd number, so the line starts as if inside a
    /// quoted string that its first quote closes.
    FromEndOpen,
}

impl Quotes {
    fn of(line: &[u8]) -> Quotes {
        if memchr::memchr(b'"', line).is_none() || quoted_strings_close(line) {
            return Quotes::Paired;
        }
        if memchr::memchr_iter(b'"', line).count() % 2 == 1 {
            Quotes::FromEndOpen
        } else {
            Quotes::FromEnd
        }
    }
}

/// Whether every quoted string of `line` closes before the line ends.
fn quoted_strings_close(line: &[u8]) -> bool {
    let mut quoted = false;
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            _ => {}
        }
        i += 1;
    }
    !quoted
}

/// The index of the first `delimiter` outside a quoted string, or the length.
fn element_end(s: &[u8], delimiter: u8, quotes: Quotes) -> usize {
    let escapes = quotes == Quotes::Paired;
    let mut quoted = quotes == Quotes::FromEndOpen;
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'\\' if quoted && escapes => i += 1,
            b'"' => quoted = !quoted,
            b if b == delimiter && !quoted => return i,
            _ => {}
        }
        i += 1;
    }
    s.len()
}

/// `s` without the optional whitespace around it (RFC 9110 §5.6.3 `OWS`: spaces and tabs only;
/// the same two bytes are RFC 6265 §5.2's `WSP` around cookie attributes).
///
/// ```
/// use webprom_edge::fields::trim_ows;
/// assert_eq!(trim_ows(b" \tMax-Age=60 "), b"Max-Age=60");
/// ```
pub fn trim_ows(s: &[u8]) -> &[u8] {
    &s[trim_ows_range(s)]
}

/// The range of `s` that [`trim_ows`] keeps, for a caller that rewrites `s` in place.
///
/// ```
/// use webprom_edge::fields::trim_ows_range;
/// assert_eq!(trim_ows_range(b"  60\t"), 2..4);
/// assert_eq!(trim_ows_range(b" \t "), 3..3);
/// ```
pub fn trim_ows_range(s: &[u8]) -> std::ops::Range<usize> {
    let is_ows = |b: &u8| matches!(b, b' ' | b'\t');
    let start = s.iter().position(|b| !is_ows(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !is_ows(b)).map_or(start, |i| i + 1);
    start..end
}

/// An element of a weighted list (RFC 9110 §12.4.2: `Accept-Encoding`, `Accept-Language`):
/// its value without parameters, and its weight in thousandths (1000 when it has no `q`
/// parameter; `None` when its qvalue is malformed, so the caller can leave it out).
///
/// ```
/// use webprom_edge::fields::weighted;
/// assert_eq!(weighted(b"gzip ; Q=0.5"), (&b"gzip"[..], Some(500)));
/// assert_eq!(weighted(b"br"), (&b"br"[..], Some(1000)));
/// assert_eq!(weighted(b"br;q=2"), (&b"br"[..], None));
/// ```
pub fn weighted(element: &[u8]) -> (&[u8], Option<u16>) {
    let mut parts = element.split(|&b| b == b';');
    let value = trim_ows(parts.next().unwrap_or_default());
    let mut weight = Some(1000);
    for param in parts {
        if let [q, b'=', qv @ ..] = trim_ows(param)
            && q.eq_ignore_ascii_case(&b'q')
        {
            weight = qvalue(qv);
        }
    }
    (value, weight)
}

/// An RFC 9110 §12.4.2 qvalue (`0`, `0.5`, `1.000`) in thousandths; `None` when malformed.
pub fn qvalue(q: &[u8]) -> Option<u16> {
    let (int, frac) = match q.iter().position(|&b| b == b'.') {
        Some(dot) => (&q[..dot], &q[dot + 1..]),
        None => (q, &b""[..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths = 0u16;
    for i in 0..3 {
        thousandths = thousandths * 10 + frac.get(i).map_or(0, |d| u16::from(d - b'0'));
    }
    match int {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// Whether any element of the lines equals `token`, ASCII case-insensitively (e.g. a
/// `Connection` option, RFC 9110 §7.6.1).
pub fn has_token<'a>(lines: impl IntoIterator<Item = &'a HeaderValue>, token: &[u8]) -> bool {
    elements(lines, b',').any(|e| e.eq_ignore_ascii_case(token))
}

/// The content of a quoted string (RFC 9110 §5.6.4) with its escapes still in, or the input
/// unchanged when it is not quoted.
pub fn unquote(s: &[u8]) -> &[u8] {
    match s {
        [b'"', inner @ .., b'"'] => inner,
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qvalues() {
        let cases: &[(&[u8], Option<u16>)] = &[
            (b"0", Some(0)),
            (b"0.", Some(0)),
            (b"0.5", Some(500)),
            (b"0.05", Some(50)),
            (b"0.999", Some(999)),
            (b"1", Some(1000)),
            (b"1.000", Some(1000)),
            (b"1.001", None),
            (b"0.1234", None),
            (b"2", None),
            (b".5", None),
            (b"-0", None),
            (b"", None),
        ];
        for &(q, want) in cases {
            assert_eq!(qvalue(q), want, "{:?}", String::from_utf8_lossy(q));
        }
    }

    fn split(lines: &[&str], delimiter: u8) -> Vec<String> {
        let values: Vec<HeaderValue> = lines.iter().map(|l| l.parse().unwrap()).collect();
        elements(values.iter(), delimiter)
            .map(|e| String::from_utf8(e.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn list_table() {
        type Case<'a> = (&'a [&'a str], u8, &'a [&'a str]);
        let cases: &[Case] = &[
            // One line, several lines, in order.
            (&["a, b"], b',', &["a", "b"]),
            (&["a", "b"], b',', &["a", "b"]),
            (&["a, b", "c"], b',', &["a", "b", "c"]),
            // Empty elements and optional whitespace are ignored (RFC 9110 §5.6.1.2).
            (&["a,"], b',', &["a"]),
            (&[",a"], b',', &["a"]),
            (&["a, ,b"], b',', &["a", "b"]),
            (&[",,,"], b',', &[]),
            (&["", "a"], b',', &["a"]),
            (&[" \t a \t , b"], b',', &["a", "b"]),
            (&[""], b',', &[]),
            // Quoted strings keep their delimiters.
            (
                &["for=\"[2001:db8::1]:80\", for=1.2.3.4"],
                b',',
                &["for=\"[2001:db8::1]:80\"", "for=1.2.3.4"],
            ),
            (&["\"a,b\",c"], b',', &["\"a,b\"", "c"]),
            (&["\"a\\\",b\",c"], b',', &["\"a\\\",b\"", "c"]),
            // A stray quote hides neither what a proxy appends after it nor the next line: a
            // line whose quoted strings do not close pairs its quotes from the end, without
            // escapes (found by tests/fuzz.rs).
            (&["\"a,b", "c"], b',', &["\"a", "b", "c"]),
            (&["\"", "c"], b',', &["\"", "c"]),
            (&["\", 203.0.113.7"], b',', &["\"", "203.0.113.7"]),
            (&["\"x, 203.0.113.7"], b',', &["\"x", "203.0.113.7"]),
            (&["x\", 203.0.113.7"], b',', &["x\"", "203.0.113.7"]),
            (&["a, \"b, c"], b',', &["a, \"b", "c"]),
            (
                &["for=\", for=\"[2001:db8::1]:80\""],
                b',',
                &["for=\"", "for=\"[2001:db8::1]:80\""],
            ),
            (
                &["for=\"a\\\", for=\"[::1]\", for=1.2.3.4"],
                b',',
                &["for=\"a\\\"", "for=\"[::1]\"", "for=1.2.3.4"],
            ),
            (
                &["\"a\\\", by=\"x,y\";for=\"[::1]\""],
                b',',
                &["\"a\\\"", "by=\"x,y\";for=\"[::1]\""],
            ),
            (&["\"a\\, b"], b',', &["\"a\\", "b"]),
            (&["a=\"x; b=1"], b';', &["a=\"x", "b=1"]),
            // Escapes count in a line whose quoted strings close.
            (&["\"a\\\",b\", c"], b',', &["\"a\\\",b\"", "c"]),
            // Sec-CH-UA style.
            (
                &["\"Chromium\";v=\"127\", \"Not)A;Brand\";v=\"99\""],
                b',',
                &["\"Chromium\";v=\"127\"", "\"Not)A;Brand\";v=\"99\""],
            ),
            // Cookie crumbs.
            (&["a=1; b=2", "c=3"], b';', &["a=1", "b=2", "c=3"]),
            (&["a=1;; b=2;"], b';', &["a=1", "b=2"]),
        ];
        for (lines, delimiter, want) in cases {
            assert_eq!(split(lines, *delimiter), *want, "{lines:?}");
        }
    }

    #[test]
    fn only_spaces_and_tabs_are_optional_whitespace() {
        let cases: &[(&[u8], &[u8])] = &[
            (b" \ta b\t ", b"a b"),
            (b"", b""),
            (b" \t ", b""),
            (b"a", b"a"),
            // Not OWS (found by tests/fuzz.rs): a raw value keeps them.
            (b"\x0caM", b"\x0caM"),
            (b"\r\nen\n", b"\r\nen\n"),
            (b" \x0b x", b"\x0b x"),
        ];
        for &(s, want) in cases {
            assert_eq!(trim_ows(s), want, "{s:?}");
            let kept = trim_ows_range(s);
            assert_eq!(&s[kept], want, "{s:?}");
        }
        let got: Vec<&[u8]> = line_elements(b"\x0cde, \ten\t", b',').collect();
        assert_eq!(got, [&b"\x0cde"[..], b"en"]);
    }

    #[test]
    fn tokens_are_found_in_any_line_and_case() {
        let lines: Vec<HeaderValue> = ["keep-alive", "X-Secret , Upgrade"]
            .iter()
            .map(|l| l.parse().unwrap())
            .collect();
        assert!(has_token(lines.iter(), b"upgrade"));
        assert!(has_token(lines.iter(), b"x-secret"));
        assert!(!has_token(lines.iter(), b"close"));
    }

    #[test]
    fn unquote_strips_one_pair() {
        assert_eq!(unquote(b"\"[::1]:80\""), b"[::1]:80");
        assert_eq!(unquote(b"1.2.3.4"), b"1.2.3.4");
        assert_eq!(unquote(b"\""), b"\"");
    }
}
