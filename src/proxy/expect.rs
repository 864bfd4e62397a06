//! The `Expect` request header (RFC 9110 §10.1.1): met at the edge, never forwarded.
//!
//! The only expectation HTTP defines is `100-continue`, and the proxy meets it itself: the
//! connection sends `100 (Continue)` when the request body is first read (hyper's HTTP/1.1
//! server, and [`crate::server::h2`] for HTTP/2), which happens as soon as the request has
//! been accepted for forwarding. The upstream is never asked to meet it again: the header is
//! removed from the forwarded request. Any other expectation cannot be met and is answered
//! with `417 (Expectation Failed)`, which RFC 9110 allows (as Apache httpd does); an HTTP/1.0
//! request's expectations are ignored, as the RFC requires for `100-continue`.
//!
//! Pure functions over a `HeaderMap`; they never log a header value.

use http::header::{EXPECT, Entry};
use http::{HeaderMap, Version};

/// A request carries an expectation the proxy cannot meet: answer 417.
#[derive(Debug, PartialEq, Eq)]
pub struct Unmet;

/// Whether the `Expect` values (comma-separated lists, tokens compared case-insensitively)
/// ask for `100 (Continue)`.
pub fn wants_continue(headers: &HeaderMap) -> bool {
    headers
        .get_all(EXPECT)
        .iter()
        .any(|v| members(v.as_bytes()).any(|m| m.eq_ignore_ascii_case(b"100-continue")))
}

/// Removes `Expect` from a request about to be forwarded. `Err(Unmet)` when an HTTP/1.1 or
/// later request expects anything besides `100-continue`; empty list members are ignored.
pub fn take(headers: &mut HeaderMap, version: Version) -> Result<(), Unmet> {
    // The common case first: a lookup costs less than `entry`, which may grow the map.
    if !headers.contains_key(EXPECT) {
        return Ok(());
    }
    let Entry::Occupied(entry) = headers.entry(EXPECT) else {
        return Ok(());
    };
    let unmet = version > Version::HTTP_10
        && entry
            .iter()
            .any(|v| members(v.as_bytes()).any(|m| !m.eq_ignore_ascii_case(b"100-continue")));
    entry.remove();
    if unmet { Err(Unmet) } else { Ok(()) }
}

/// The non-empty members of one list value, trimmed.
fn members(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(EXPECT, HeaderValue::from_str(v).unwrap());
        }
        h.insert("x-other", HeaderValue::from_static("kept"));
        h
    }

    #[test]
    fn expectations_are_met_removed_or_refused() {
        // (values, version, wants 100, take result)
        type Row = (&'static [&'static str], Version, bool, Result<(), Unmet>);
        let rows: &[Row] = &[
            (&[], Version::HTTP_11, false, Ok(())),
            (&["100-continue"], Version::HTTP_11, true, Ok(())),
            (&["100-continue"], Version::HTTP_2, true, Ok(())),
            (&["100-Continue"], Version::HTTP_11, true, Ok(())),
            (&[" 100-CONTINUE "], Version::HTTP_2, true, Ok(())),
            (
                &["100-continue, 100-continue"],
                Version::HTTP_11,
                true,
                Ok(()),
            ),
            (
                &["100-continue", "100-continue"],
                Version::HTTP_2,
                true,
                Ok(()),
            ),
            (&[",100-continue,"], Version::HTTP_11, true, Ok(())),
            (&[""], Version::HTTP_11, false, Ok(())),
            (&[" , "], Version::HTTP_2, false, Ok(())),
            (&["something-else"], Version::HTTP_11, false, Err(Unmet)),
            (&["something-else"], Version::HTTP_2, false, Err(Unmet)),
            (&["100-continue, foo"], Version::HTTP_2, true, Err(Unmet)),
            (
                &["100-continue", "foo=bar"],
                Version::HTTP_11,
                true,
                Err(Unmet),
            ),
            (&["100-continue=1"], Version::HTTP_11, false, Err(Unmet)),
            (&["100-continuex"], Version::HTTP_11, false, Err(Unmet)),
            (&["something-else"], Version::HTTP_10, false, Ok(())),
            (&["100-continue"], Version::HTTP_10, true, Ok(())),
        ];
        for (values, version, wants, taken) in rows {
            let mut h = map(values);
            assert_eq!(wants_continue(&h), *wants, "{values:?}");
            assert_eq!(take(&mut h, *version), *taken, "{values:?} {version:?}");
            assert!(!h.contains_key(EXPECT), "{values:?} removed");
            assert_eq!(h["x-other"], "kept", "{values:?}");
        }
    }
}
