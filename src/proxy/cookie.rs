//! The cookie lifetime cap of POLICY P11, applied to upstream `Set-Cookie` headers.
//!
//! Owns the rewrite of `Max-Age` and `Expires` so that no cookie set through the proxy lives
//! longer than `privacy.cookie_max_age`. Must never log, record or put in an error message a
//! cookie value, and must leave every other byte of the header as the upstream sent it.

use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;

/// The last second httpdate can format (9999-12-31T23:59:59Z).
const MAX_HTTP_DATE_SECS: u64 = 253_402_300_799;

/// The `Set-Cookie` value with its lifetime capped to `max_age` from `now`, or `None` when
/// it needs no change.
///
/// - `Max-Age` above the cap becomes the cap.
/// - `Expires` later than `now + max_age` becomes that instant (IMF-fixdate).
/// - An `Expires` that cannot be parsed, with no valid `Max-Age`, gets `Max-Age=<cap>`
///   appended: browsers may read dates we cannot, and `Max-Age` takes precedence.
/// - Session cookies (neither attribute) are left alone.
///
/// Attribute names are matched case-insensitively, as browsers do (RFC 6265 §5.2).
pub fn cap_set_cookie(
    value: &HeaderValue,
    max_age: Duration,
    now: SystemTime,
) -> Option<HeaderValue> {
    let bytes = value.as_bytes();
    let cap = max_age.as_secs();
    let limit_secs = now
        .checked_add(max_age)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .filter(|&s| s <= MAX_HTTP_DATE_SECS);

    // (span of the attribute value to replace, replacement)
    let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::new();
    let mut valid_max_age = false;
    let mut unparsed_expires = false;

    // The first `;`-separated part is the name=value pair; the rest are attributes.
    for attr in split_attributes(bytes).skip(1) {
        let part = &bytes[attr.clone()];
        let (name, value_span) = match part.iter().position(|&b| b == b'=') {
            Some(eq) => (&part[..eq], attr.start + eq + 1..attr.end),
            None => (part, attr.end..attr.end),
        };
        let name = name.trim_ascii();
        let value_span = trim_span(bytes, value_span);
        let attr_value = &bytes[value_span.clone()];
        if name.eq_ignore_ascii_case(b"max-age") {
            match parse_max_age(attr_value) {
                Some(MaxAge::Seconds(secs)) => {
                    valid_max_age = true;
                    if secs > cap {
                        edits.push((value_span, cap.to_string().into_bytes()));
                    }
                }
                Some(MaxAge::TooLarge) => {
                    valid_max_age = true;
                    edits.push((value_span, cap.to_string().into_bytes()));
                }
                Some(MaxAge::NotPositive) => valid_max_age = true,
                None => {}
            }
        } else if name.eq_ignore_ascii_case(b"expires") {
            let parsed = std::str::from_utf8(attr_value)
                .ok()
                .and_then(|s| httpdate::parse_http_date(s).ok());
            match (parsed, limit_secs) {
                (Some(expires), Some(limit)) => {
                    let expires_secs = expires
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    if expires_secs > limit {
                        let limit = UNIX_EPOCH + Duration::from_secs(limit);
                        edits.push((value_span, httpdate::fmt_http_date(limit).into_bytes()));
                    }
                }
                (Some(_), None) => {}
                (None, _) => unparsed_expires = true,
            }
        }
    }

    let append = unparsed_expires && !valid_max_age;
    if edits.is_empty() && !append {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() + 24);
    let mut pos = 0;
    for (span, replacement) in &edits {
        out.extend_from_slice(&bytes[pos..span.start]);
        out.extend_from_slice(replacement);
        pos = span.end;
    }
    out.extend_from_slice(&bytes[pos..]);
    if append {
        if out.trim_ascii_end().ends_with(b";") {
            out.extend_from_slice(b" Max-Age=");
        } else {
            out.extend_from_slice(b"; Max-Age=");
        }
        out.extend_from_slice(cap.to_string().as_bytes());
    }
    HeaderValue::from_bytes(&out).ok()
}

/// The byte ranges between `;` separators.
fn split_attributes(bytes: &[u8]) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut start = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        match bytes[start..].iter().position(|&b| b == b';') {
            Some(i) => {
                let span = start..start + i;
                start += i + 1;
                Some(span)
            }
            None => {
                done = true;
                Some(start..bytes.len())
            }
        }
    })
}

fn trim_span(bytes: &[u8], mut span: Range<usize>) -> Range<usize> {
    while span.start < span.end && bytes[span.start].is_ascii_whitespace() {
        span.start += 1;
    }
    while span.end > span.start && bytes[span.end - 1].is_ascii_whitespace() {
        span.end -= 1;
    }
    span
}

enum MaxAge {
    Seconds(u64),
    TooLarge,
    /// Zero or negative: the cookie expires at once.
    NotPositive,
}

/// A `Max-Age` value as browsers read it: `-?DIGIT+`, anything else is ignored.
fn parse_max_age(v: &[u8]) -> Option<MaxAge> {
    let (negative, digits) = match v.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, v),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if negative {
        return Some(MaxAge::NotPositive);
    }
    let secs = digits.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    });
    Some(match secs {
        Some(0) => MaxAge::NotPositive,
        Some(s) => MaxAge::Seconds(s),
        None => MaxAge::TooLarge,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    #[test]
    fn cap_table() {
        // now = 2026-11-25T14:03:07Z; cap 14 days → limit 2026-12-09T14:03:07Z.
        let now = UNIX_EPOCH + Duration::from_secs(1_795_615_387);
        let cap = Duration::from_secs(14 * DAY);
        let cases: &[(&str, Option<&str>)] = &[
            // Session cookies are untouched.
            ("sid=abc", None),
            ("sid=abc; Path=/; Secure; HttpOnly", None),
            // Max-Age within the cap.
            ("sid=abc; Max-Age=3600", None),
            ("sid=abc; Max-Age=1209600", None),
            // Max-Age above the cap; case-insensitive; spacing kept.
            ("sid=abc; Max-Age=1209601", Some("sid=abc; Max-Age=1209600")),
            (
                "sid=abc; path=/; max-age=31536000; Secure",
                Some("sid=abc; path=/; max-age=1209600; Secure"),
            ),
            (
                "sid=abc;MAX-AGE = 99999999 ;HttpOnly",
                Some("sid=abc;MAX-AGE = 1209600 ;HttpOnly"),
            ),
            // Overflowing Max-Age.
            (
                "sid=abc; Max-Age=999999999999999999999999",
                Some("sid=abc; Max-Age=1209600"),
            ),
            // Deleting cookies stay deleted.
            ("sid=; Max-Age=0", None),
            ("sid=; Max-Age=-1", None),
            ("sid=; Expires=Thu, 01 Jan 1970 00:00:00 GMT", None),
            // Expires within the cap.
            ("sid=abc; Expires=Wed, 02 Dec 2026 00:00:00 GMT", None),
            ("sid=abc; Expires=Wed, 09 Dec 2026 14:03:07 GMT", None),
            // Expires beyond the cap → now + cap.
            (
                "sid=abc; Expires=Wed, 09 Dec 2026 14:03:08 GMT; Path=/",
                Some("sid=abc; Expires=Wed, 09 Dec 2026 14:03:07 GMT; Path=/"),
            ),
            (
                "sid=abc; Path=/; expires=Fri, 01 Jan 2100 00:00:00 GMT",
                Some("sid=abc; Path=/; expires=Wed, 09 Dec 2026 14:03:07 GMT"),
            ),
            // RFC 850 and asctime dates are understood too.
            ("sid=abc; Expires=Sunday, 06-Nov-94 08:49:37 GMT", None),
            (
                "sid=abc; Expires=Sun Nov  6 08:49:37 2095",
                Some("sid=abc; Expires=Wed, 09 Dec 2026 14:03:07 GMT"),
            ),
            // Both attributes capped.
            (
                "id=1; Expires=Fri, 01 Jan 2100 00:00:00 GMT; Max-Age=63072000; SameSite=Lax",
                Some("id=1; Expires=Wed, 09 Dec 2026 14:03:07 GMT; Max-Age=1209600; SameSite=Lax"),
            ),
            // Unparseable Expires, no Max-Age → Max-Age appended.
            (
                "sid=abc; Expires=Fri, 01-Jan-2100 00:00:00 GMT; Path=/",
                Some("sid=abc; Expires=Fri, 01-Jan-2100 00:00:00 GMT; Path=/; Max-Age=1209600"),
            ),
            (
                "sid=abc; Expires=never",
                Some("sid=abc; Expires=never; Max-Age=1209600"),
            ),
            (
                "sid=abc; Expires=never;",
                Some("sid=abc; Expires=never; Max-Age=1209600"),
            ),
            // Unparseable Expires with a valid Max-Age: Max-Age rules.
            ("sid=abc; Expires=never; Max-Age=60", None),
            // Invalid Max-Age is ignored by browsers, so it does not count.
            (
                "sid=abc; Max-Age=+60; Expires=never",
                Some("sid=abc; Max-Age=+60; Expires=never; Max-Age=1209600"),
            ),
            ("sid=abc; Max-Age=1d", None),
            // Attribute-like text in the cookie value itself is not an attribute.
            ("Max-Age=99999999; Path=/", None),
            ("expires=never", None),
            // Non-UTF-8 bytes elsewhere are kept as they are.
            (
                "sid=\u{e9}t\u{e9}; Max-Age=99999999",
                Some("sid=\u{e9}t\u{e9}; Max-Age=1209600"),
            ),
        ];
        for (i, &(input, want)) in cases.iter().enumerate() {
            let value = HeaderValue::from_bytes(input.as_bytes()).unwrap();
            let got = cap_set_cookie(&value, cap, now);
            let got = got
                .as_ref()
                .map(|v| std::str::from_utf8(v.as_bytes()).unwrap());
            assert_eq!(got, want, "case {i}: {input}");
        }
    }

    #[test]
    fn obs_text_bytes_preserved() {
        let input = b"sid=\xff\xfe; Max-Age=99999999; Path=/\x80";
        let value = HeaderValue::from_bytes(input).unwrap();
        let got = cap_set_cookie(&value, Duration::from_secs(60), SystemTime::now()).unwrap();
        assert_eq!(got.as_bytes(), b"sid=\xff\xfe; Max-Age=60; Path=/\x80");
    }

    #[test]
    fn limit_beyond_year_9999_leaves_expires() {
        let value = HeaderValue::from_static("sid=abc; Expires=Fri, 31 Dec 9999 23:59:59 GMT");
        let now = UNIX_EPOCH + Duration::from_secs(MAX_HTTP_DATE_SECS);
        assert_eq!(
            cap_set_cookie(&value, Duration::from_secs(14 * DAY), now),
            None
        );
    }
}
