//! The cookie lifetime cap of policy P11 (`docs/policy.md`), applied to upstream `Set-Cookie`
//! headers.
//!
//! Owns the rewrite of `Max-Age` and `Expires` values so that no cookie set through the proxy
//! lives longer than `privacy.cookie_max_age`, in the lifetime a browser computes from them
//! (RFC 6265 §5.2–5.3, dates by [`date`]), and the `Date` header that browsers measure an
//! `Expires` from. The cap only ever shortens: a deletion stays a deletion, a session cookie
//! stays a session cookie, an attribute a browser ignores stays ignored. Must never log,
//! record or put in an error message a cookie value, and must leave every other byte of the
//! header as the upstream sent it.

pub mod date;

use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{DATE, Entry, SET_COOKIE};
use http::{HeaderMap, HeaderValue};

use date::parse_cookie_date;

use crate::fields::{trim_ows, trim_ows_range};

/// The longest attribute value browsers read (RFC 6265bis, Chromium, Firefox); they ignore a
/// longer one, so a rewritten value keeps its length above this.
const MAX_ATTRIBUTE_VALUE_OCTETS: usize = 1024;

/// The last second an IMF-fixdate can name (9999-12-31T23:59:59Z).
const MAX_HTTP_DATE_SECS: i64 = 253_402_300_799;

/// Caps the lifetime of every `Set-Cookie` of a response to `max_age` (see [`cap_set_cookie`]).
///
/// Chromium and Firefox measure an `Expires` from the response's `Date` (expiry = Expires −
/// Date + their clock), so the cap is measured from the earlier of `now` and that `Date`. A
/// missing `Date`, or one that is not a single valid HTTP-date (RFC 9110 §5.6.7) and that
/// browsers might read as any instant, is set to `now` (RFC 9110 §6.6.1 allows both).
/// Responses without `Set-Cookie` are left alone.
pub fn cap_response(headers: &mut HeaderMap, max_age: Duration, now: SystemTime) {
    if !headers.contains_key(SET_COOKIE) {
        return;
    }
    let from = measured_from(headers, now);
    if let Entry::Occupied(mut cookies) = headers.entry(SET_COOKIE) {
        for value in cookies.iter_mut() {
            if let Some(capped) = cap_set_cookie(value, max_age, from) {
                *value = capped;
            }
        }
    }
}

/// The instant an `Expires` in this response is measured from, correcting `Date` if needed.
fn measured_from(headers: &mut HeaderMap, now: SystemTime) -> SystemTime {
    let mut dates = headers.get_all(DATE).iter();
    let only = match (dates.next(), dates.next()) {
        (Some(date), None) => date
            .to_str()
            .ok()
            .and_then(|s| httpdate::parse_http_date(s).ok()),
        _ => None,
    };
    if let Some(date) = only {
        return date.min(now);
    }
    match http_date(unix_secs(now)) {
        Some(now_date) => headers.insert(DATE, now_date),
        None => headers.remove(DATE),
    };
    now
}

/// The `Set-Cookie` value with its lifetime capped to `max_age` from `now`, or `None` when it
/// needs no change.
///
/// A browser uses the last valid `Max-Age`, else the last valid `Expires` (RFC 6265 §5.3
/// step 3; Chromium and Firefox take the last occurrence even if invalid), so every
/// occurrence is capped on its own, keeping its validity:
///
/// - `Max-Age`: the digits of a value above the cap become the cap; a leading `+` (which
///   Chromium reads) or trailing bytes (older browsers read the number before them) are
///   kept, so a value RFC 6265 ignores stays ignored. Zero and negative values (deletions)
///   are left alone.
/// - `Expires`: a date (RFC 6265 §5.1.1) later than `now + max_age` becomes that instant as
///   an IMF-fixdate. Past dates (deletions) and dates RFC 6265 cannot parse (a browser
///   ignores them: the cookie stays a session cookie) are left alone; nothing is ever added.
///   Where a browser's own date parser departs from RFC 6265 (Chromium reads five-digit
///   years, Firefox free-form dates), the cap follows RFC 6265.
/// - A value longer than 1024 bytes, which browsers ignore, keeps its length when rewritten.
///
/// Attribute names are matched case-insensitively and values trimmed of spaces and tabs, as
/// browsers do (RFC 6265 §5.2). The name=value pair itself is never read.
pub fn cap_set_cookie(
    value: &HeaderValue,
    max_age: Duration,
    now: SystemTime,
) -> Option<HeaderValue> {
    let bytes = value.as_bytes();
    let cap = max_age.as_secs();
    let limit = unix_secs(now).saturating_add_unsigned(cap);

    // (span of the attribute value to replace, replacement), in order.
    let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::new();
    // The first `;`-separated part is the name=value pair; the rest are attributes.
    for attr in split_attributes(bytes).skip(1) {
        let part = &bytes[attr.clone()];
        let (name, value_span) = match part.iter().position(|&b| b == b'=') {
            Some(eq) => (&part[..eq], attr.start + eq + 1..attr.end),
            None => (part, attr.end..attr.end),
        };
        // RFC 6265 §5.2 trims `WSP` (spaces and tabs): the bytes `OWS` is made of.
        let name = trim_ows(name);
        let kept = trim_ows_range(&bytes[value_span.clone()]);
        let value_span = value_span.start + kept.start..value_span.start + kept.end;
        let attr_value = &bytes[value_span.clone()];
        if name.eq_ignore_ascii_case(b"max-age") {
            if let Some((digits, capped)) = capped_max_age(attr_value, cap) {
                let start = value_span.start + digits.start;
                edits.push((start..value_span.start + digits.end, capped));
            }
        } else if name.eq_ignore_ascii_case(b"expires")
            && let Some(capped) = capped_expires(attr_value, limit)
        {
            edits.push((value_span, capped));
        }
    }
    if edits.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() + 32);
    let mut pos = 0;
    for (span, replacement) in &edits {
        out.extend_from_slice(&bytes[pos..span.start]);
        out.extend_from_slice(replacement);
        pos = span.end;
    }
    out.extend_from_slice(&bytes[pos..]);
    // Only digits, letters, spaces, `,` and `:` were put into a valid value: this succeeds.
    HeaderValue::from_bytes(&out).ok()
}

/// The span of the digits of a `Max-Age` value above `cap` and their replacement.
fn capped_max_age(value: &[u8], cap: u64) -> Option<(Range<usize>, Vec<u8>)> {
    let start = match value.first()? {
        b'+' => 1,
        b'-' => return None,
        _ => 0,
    };
    let len = value[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let digits = &value[start..start + len];
    let secs = digits.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    });
    // No digits, or not above the cap (an overflow is above it).
    if len == 0 || secs.is_some_and(|s| s <= cap) {
        return None;
    }
    let mut replacement = itoa::Buffer::new().format(cap).as_bytes().to_vec();
    if value.len() > MAX_ATTRIBUTE_VALUE_OCTETS {
        // `digits` exceeds `cap`, so it has at least as many digits once zeros are stripped.
        let zeros = len.saturating_sub(replacement.len());
        replacement.splice(0..0, std::iter::repeat_n(b'0', zeros));
    }
    Some((start..start + len, replacement))
}

/// The replacement of an `Expires` value later than `limit` (seconds since the epoch).
fn capped_expires(value: &[u8], limit: i64) -> Option<Vec<u8>> {
    let expires = parse_cookie_date(value)?;
    if expires <= limit {
        return None;
    }
    // `limit` is before a parsed date, so at most year 9999; a clock before 1970 gives none.
    let date = http_date(limit)?;
    let mut replacement = date.as_bytes().to_vec();
    if value.len() > MAX_ATTRIBUTE_VALUE_OCTETS {
        // Spaces after the weekday's comma: delimiters every date parser skips.
        let pad = value.len().saturating_sub(replacement.len());
        replacement.splice(4..4, std::iter::repeat_n(b' ', pad));
    }
    Some(replacement)
}

/// An IMF-fixdate for `secs` since the epoch, if it has one (1970 to 9999).
fn http_date(secs: i64) -> Option<HeaderValue> {
    if !(0..=MAX_HTTP_DATE_SECS).contains(&secs) {
        return None;
    }
    let at = UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs());
    HeaderValue::from_str(&httpdate::fmt_http_date(at)).ok()
}

/// Whole seconds since the epoch, rounded down (negative before 1970).
fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            let d = before.duration();
            0i64.saturating_sub_unsigned(d.as_secs() + u64::from(d.subsec_nanos() > 0))
        }
    }
}

/// The byte ranges between `;` separators.
fn split_attributes(bytes: &[u8]) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut start = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        match memchr::memchr(b';', &bytes[start..]) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = crate::epoch::SECS_PER_DAY;

    /// now = 2026-11-25T14:03:07Z; cap 14 days → limit 2026-12-09T14:03:07Z.
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_615_387)
    }

    fn capped(input: &[u8]) -> Option<Vec<u8>> {
        let value = HeaderValue::from_bytes(input).unwrap();
        cap_set_cookie(&value, Duration::from_secs(14 * DAY), now()).map(|v| v.as_bytes().to_vec())
    }

    #[test]
    fn set_cookie_lifetimes_are_capped_and_never_lengthened() {
        let rows: &[(&str, Option<&str>)] = &[
            // Session cookies are untouched.
            ("sid=abc", None),
            ("sid=abc; Path=/; Secure; HttpOnly", None),
            // Max-Age within the cap.
            ("sid=abc; Max-Age=3600", None),
            ("sid=abc; Max-Age=1209600", None),
            ("sid=abc; Max-Age=0001209600", None),
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
            (
                "sid=abc;\tMax-Age\t=\t99999999\t",
                Some("sid=abc;\tMax-Age\t=\t1209600\t"),
            ),
            (
                "sid=abc; Max-Age=999999999999999999999999",
                Some("sid=abc; Max-Age=1209600"),
            ),
            // Deletions stay deletions.
            (
                "JSESSIONID=deleted; Expires=Thu, 01-Jan-1970 00:00:10 GMT; Path=/",
                None,
            ),
            ("sid=; Expires=Thu, 01-Jan-70 00:00:01 GMT", None),
            ("sid=; Expires=Thu, 01 Jan 1970 00:00:00 GMT", None),
            ("sid=; expires=Wed, 25 Nov 2026 14:03:07 GMT", None), // exactly now
            ("sid=; Expires=Sunday, 06-Nov-94 08:49:37 GMT", None),
            ("sid=; Expires=Sun Nov  6 08:49:37 1994", None),
            ("sid=; Max-Age=0", None),
            ("sid=; Max-Age=-1", None),
            ("sid=; Max-Age=-99999999999999999999999", None),
            (
                "sid=; Max-Age=0; Expires=Fri, 01 Jan 2100 00:00:00 GMT",
                Some("sid=; Max-Age=0; Expires=Wed, 09 Dec 2026 14:03:07 GMT"),
            ),
            // Expires within the cap.
            ("sid=abc; Expires=Wed, 02 Dec 2026 00:00:00 GMT", None),
            ("sid=abc; Expires=Wed, 09 Dec 2026 14:03:07 GMT", None),
            // Expires beyond the cap → now + cap, in any format the browser reads.
            (
                "sid=abc; Expires=Wed, 09 Dec 2026 14:03:08 GMT; Path=/",
                Some("sid=abc; Expires=Wed, 09 Dec 2026 14:03:07 GMT; Path=/"),
            ),
            (
                "sid=abc; Path=/; expires=Fri, 01 Jan 2100 00:00:00 GMT",
                Some("sid=abc; Path=/; expires=Wed, 09 Dec 2026 14:03:07 GMT"),
            ),
            (
                "sid=abc; Expires=Fri, 01-Jan-2100 00:00:00 GMT; Path=/",
                Some("sid=abc; Expires=Wed, 09 Dec 2026 14:03:07 GMT; Path=/"),
            ),
            (
                "sid=abc; Expires=Friday, 01-Jan-50 00:00:00 GMT",
                Some("sid=abc; Expires=Wed, 09 Dec 2026 14:03:07 GMT"),
            ),
            (
                "sid=abc; Expires=Sun Nov  6 08:49:37 2095",
                Some("sid=abc; Expires=Wed, 09 Dec 2026 14:03:07 GMT"),
            ),
            (
                "sid=abc; EXPIRES = 2100 jan 1 0:0:0 ; Secure",
                Some("sid=abc; EXPIRES = Wed, 09 Dec 2026 14:03:07 GMT ; Secure"),
            ),
            // Both attributes capped.
            (
                "id=1; Expires=Fri, 01 Jan 2100 00:00:00 GMT; Max-Age=63072000; SameSite=Lax",
                Some("id=1; Expires=Wed, 09 Dec 2026 14:03:07 GMT; Max-Age=1209600; SameSite=Lax"),
            ),
            // Every occurrence is capped, whichever one a browser picks.
            (
                "id=1; Max-Age=63072000; Max-Age=60; Max-Age=31536000",
                Some("id=1; Max-Age=1209600; Max-Age=60; Max-Age=1209600"),
            ),
            (
                "id=1; Expires=Fri, 01 Jan 2100 00:00:00 GMT; Expires=never",
                Some("id=1; Expires=Wed, 09 Dec 2026 14:03:07 GMT; Expires=never"),
            ),
            // An Expires a browser cannot parse is ignored by it: nothing is added.
            ("sid=abc; Expires=never", None),
            ("sid=abc; Expires=never;", None),
            ("sid=abc; Expires=", None),
            ("sid=abc; Expires", None),
            ("sid=abc; Expires=Fri, 01 Jan 2100", None),
            ("sid=abc; Expires=01 Jan 2100 10:00", None),
            ("sid=abc; Expires=30 Feb 2100 00:00:00", None),
            ("sid=abc; Expires=01 Jan 2100 24:00:00", None),
            ("sid=abc; Expires=01 Jan 1600 00:00:00", None),
            ("sid=abc; Expires=never; Max-Age=60", None),
            // A Max-Age RFC 6265 ignores stays ignored; digits a browser may read are capped.
            ("sid=abc; Max-Age=1d", None),
            ("sid=abc; Max-Age=", None),
            ("sid=abc; Max-Age=-", None),
            ("sid=abc; Max-Age=- 5", None),
            ("sid=abc; Max-Age=+60", None),
            (
                "sid=abc; Max-Age=+99999999",
                Some("sid=abc; Max-Age=+1209600"),
            ),
            (
                "sid=abc; Max-Age=99999999abc",
                Some("sid=abc; Max-Age=1209600abc"),
            ),
            (
                "sid=abc; Max-Age=99999999 1",
                Some("sid=abc; Max-Age=1209600 1"),
            ),
            // Attribute-like text in the name=value pair is not an attribute.
            ("Max-Age=99999999; Path=/", None),
            ("expires=Fri, 01 Jan 2100 00:00:00 GMT", None),
            // Unknown attributes and attribute-like values of other attributes are kept.
            (
                "sid=abc; Max-Agex=99999999; XExpires=Fri, 01 Jan 2100 00:00:00 GMT",
                None,
            ),
            ("sid=abc; Path=Max-Age=99999999", None),
        ];
        for (i, &(input, want)) in rows.iter().enumerate() {
            let got = capped(input.as_bytes());
            let got = got.as_deref().map(|v| std::str::from_utf8(v).unwrap());
            assert_eq!(got, want, "row {i}: {input}");
        }
    }

    #[test]
    fn bytes_outside_the_rewritten_values_are_kept_even_when_not_utf8() {
        let got = capped(b"sid=\xff\xfe; Max-Age=99999999; Path=/\x80").unwrap();
        assert_eq!(got, b"sid=\xff\xfe; Max-Age=1209600; Path=/\x80");
        let got = capped(b"s=\xe9; Expires=\xe9 01 Jan 2100 00:00:00 \xe9; a=\xff").unwrap();
        assert_eq!(
            got,
            b"s=\xe9; Expires=Wed, 09 Dec 2026 14:03:07 GMT; a=\xff"
        );
    }

    #[test]
    fn values_longer_than_browsers_read_keep_their_length() {
        let long_age = format!("sid=abc; Max-Age={}", "9".repeat(1100));
        let got = capped(long_age.as_bytes()).unwrap();
        assert_eq!(got.len(), long_age.len());
        let want = format!("sid=abc; Max-Age={}1209600", "0".repeat(1093));
        assert_eq!(std::str::from_utf8(&got).unwrap(), want);

        let long_date = format!("sid=abc; Expires=01 Jan 2100 00:00:00{}x", " ".repeat(1100));
        let got = capped(long_date.as_bytes()).unwrap();
        assert_eq!(got.len(), long_date.len());
        let got = std::str::from_utf8(&got).unwrap();
        let value = got.strip_prefix("sid=abc; Expires=").unwrap();
        assert!(value.starts_with("Wed, ") && value.ends_with(" 09 Dec 2026 14:03:07 GMT"));
        assert_eq!(
            parse_cookie_date(value.as_bytes()),
            Some(1_795_615_387 + 14 * DAY as i64)
        );
    }

    #[test]
    fn a_zero_cap_turns_every_lifetime_into_a_deletion() {
        let value =
            HeaderValue::from_static("a=1; Max-Age=60; Expires=Fri, 01 Jan 2100 00:00:00 GMT");
        let got = cap_set_cookie(&value, Duration::ZERO, now()).unwrap();
        assert_eq!(got, "a=1; Max-Age=0; Expires=Wed, 25 Nov 2026 14:03:07 GMT");
    }

    #[test]
    fn a_clock_outside_the_http_date_range_caps_max_age_and_leaves_expires() {
        let value = HeaderValue::from_static(
            "a=1; Max-Age=99999999; Expires=Fri, 31 Dec 9999 23:59:59 GMT",
        );
        let late = UNIX_EPOCH + Duration::from_secs(MAX_HTTP_DATE_SECS as u64);
        let got = cap_set_cookie(&value, Duration::from_secs(14 * DAY), late).unwrap();
        assert_eq!(
            got,
            "a=1; Max-Age=1209600; Expires=Fri, 31 Dec 9999 23:59:59 GMT"
        );
        let early = UNIX_EPOCH - Duration::from_secs(100 * 365 * DAY);
        let got = cap_set_cookie(&value, Duration::from_secs(14 * DAY), early).unwrap();
        assert_eq!(
            got,
            "a=1; Max-Age=1209600; Expires=Fri, 31 Dec 9999 23:59:59 GMT"
        );
    }

    /// The response headers after the cap, as (name, value) text.
    fn response_after(headers: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut map = HeaderMap::new();
        for &(name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        cap_response(&mut map, Duration::from_secs(14 * DAY), now());
        map.iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect()
    }

    #[test]
    fn expires_is_measured_from_the_earlier_of_the_clock_and_the_date_header() {
        const FAR: (&str, &str) = ("set-cookie", "a=1; Expires=Fri, 01 Jan 2100 00:00:00 GMT");
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        };
        type Headers = &'static [(&'static str, &'static str)];
        let rows: &[(Headers, Headers)] = &[
            // No Date: from the clock, which becomes the Date.
            (
                &[FAR],
                &[
                    ("set-cookie", "a=1; Expires=Wed, 09 Dec 2026 14:03:07 GMT"),
                    ("date", "Wed, 25 Nov 2026 14:03:07 GMT"),
                ],
            ),
            // A Date a day behind the clock: from the Date, so Expires − Date is the cap.
            (
                &[("date", "Tue, 24 Nov 2026 14:03:07 GMT"), FAR],
                &[
                    ("set-cookie", "a=1; Expires=Tue, 08 Dec 2026 14:03:07 GMT"),
                    ("date", "Tue, 24 Nov 2026 14:03:07 GMT"),
                ],
            ),
            // A Date ahead of the clock: from the clock.
            (
                &[("date", "Fri, 27 Nov 2026 14:03:07 GMT"), FAR],
                &[
                    ("set-cookie", "a=1; Expires=Wed, 09 Dec 2026 14:03:07 GMT"),
                    ("date", "Fri, 27 Nov 2026 14:03:07 GMT"),
                ],
            ),
            // A Date that is no HTTP-date, or two of them: replaced by the clock.
            (
                &[("date", "24 Nov 2000"), FAR],
                &[
                    ("set-cookie", "a=1; Expires=Wed, 09 Dec 2026 14:03:07 GMT"),
                    ("date", "Wed, 25 Nov 2026 14:03:07 GMT"),
                ],
            ),
            (
                &[
                    ("date", "Tue, 24 Nov 2026 14:03:07 GMT"),
                    ("date", "Tue, 24 Nov 2026 14:03:07 GMT"),
                    ("set-cookie", "a=1"),
                ],
                &[
                    ("set-cookie", "a=1"),
                    ("date", "Wed, 25 Nov 2026 14:03:07 GMT"),
                ],
            ),
            // Without Set-Cookie nothing is touched, not even a bad Date.
            (&[("date", "whenever")], &[("date", "whenever")]),
        ];
        for (i, &(input, want)) in rows.iter().enumerate() {
            let mut got = response_after(input);
            let mut want = pairs(want);
            got.sort();
            want.sort();
            assert_eq!(got, want, "row {i}: {input:?}");
        }
    }

    #[test]
    fn every_set_cookie_line_of_a_response_is_capped() {
        let got = response_after(&[
            ("set-cookie", "a=1; Max-Age=99999999"),
            ("set-cookie", "b=2; Expires=Thu, 01-Jan-1970 00:00:10 GMT"),
            ("set-cookie", "c=3; Expires=Fri, 01 Jan 2100 00:00:00 GMT"),
            ("set-cookie", "d=4"),
        ]);
        let cookies: Vec<&str> = got
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(
            cookies,
            [
                "a=1; Max-Age=1209600",
                "b=2; Expires=Thu, 01-Jan-1970 00:00:10 GMT",
                "c=3; Expires=Wed, 09 Dec 2026 14:03:07 GMT",
                "d=4",
            ]
        );
    }
}
