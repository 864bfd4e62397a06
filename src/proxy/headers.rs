//! Header hygiene: hop-by-hop headers removed both ways (RFC 9110 §7.6.1), the HTTP/2 to
//! HTTP/1.1 translation of `Cookie` (RFC 9113 §8.2.3), `Max-Forwards` (RFC 9110 §7.6.2), the
//! head checks of the request filter (`Content-Length`, header list size), and the values of
//! the `X-Forwarded-*` headers set for the upstream.
//!
//! Pure functions over a `HeaderMap`; list-valued fields are read through [`crate::fields`].
//! They never log a header value.

use std::net::IpAddr;

use http::header::{
    CONNECTION, CONTENT_LENGTH, COOKIE, FORWARDED, GetAll, HOST, HeaderName, HeaderValue,
    MAX_FORWARDS, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, Method, Request, Version};

use crate::client_ip::X_FORWARDED_FOR;
use crate::fields::{elements, has_token};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The fixed hop-by-hop set besides `Connection` and `Upgrade` (kept for WebSocket).
fn fixed_hop_by_hop() -> [&'static HeaderName; 7] {
    [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &TE,
        &TRAILER,
        &TRANSFER_ENCODING,
        &PROXY_AUTHENTICATE,
        &PROXY_AUTHORIZATION,
    ]
}

/// Whether a request asks to switch protocols (`Connection: upgrade` with an `Upgrade` header).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && connection_has_token(headers, "upgrade")
}

fn connection_has_token(headers: &HeaderMap, token: &str) -> bool {
    has_token(headers.get_all(CONNECTION), token.as_bytes())
}

/// Fields a `Connection` option cannot remove: the request's authority and the forwarding
/// fields this proxy answers for (a client listing them would otherwise strip what the
/// upstream's allow-lists, limits and audits rely on). RFC 9110 §7.6.1 lets an intermediary
/// refuse to honour such options.
fn protected(name: &HeaderName) -> bool {
    *name == HOST
        || *name == X_FORWARDED_FOR
        || *name == X_FORWARDED_PROTO
        || *name == X_FORWARDED_HOST
        || *name == FORWARDED
        || *name == CONTENT_LENGTH
}

/// Removes every hop-by-hop header: the fixed set, `Connection`, and the names it lists.
/// With `keep_upgrade`, `Upgrade` survives and `Connection: upgrade` is set again.
///
/// One pass over the names decides what goes, comparing without hashing or allocating (the
/// `Connection` values are looked up once, before the pass); only the names present are then
/// removed (typically just `Connection`, if anything).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let mut doomed: [Option<HeaderName>; 4] = Default::default();
    let mut extra: Vec<HeaderName> = Vec::new();
    let mut n = 0;
    let connection = headers.get_all(CONNECTION);
    let has_connection = connection.iter().next().is_some();
    for name in headers.keys() {
        let hop = if *name == UPGRADE {
            !keep_upgrade
        } else {
            is_hop_by_hop(name) || (has_connection && !protected(name) && lists(&connection, name))
        };
        if hop {
            match doomed.get_mut(n) {
                Some(slot) => *slot = Some(name.clone()),
                None => extra.push(name.clone()),
            }
            n += 1;
        }
    }
    for name in doomed.into_iter().flatten().chain(extra) {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether the `Connection` values list `name` (tokens compared case-insensitively).
fn lists(connection: &GetAll<'_, HeaderValue>, name: &HeaderName) -> bool {
    has_token(connection.iter(), name.as_str().as_bytes())
}

/// The request's `Content-Length` (RFC 9110 §8.6): `Ok(None)` when absent, `Err(())` when
/// its values (over every line and list element) do not parse or disagree.
#[allow(clippy::result_unit_err)]
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    let mut length = None;
    for element in elements(headers.get_all(CONTENT_LENGTH), b',') {
        if element.is_empty() || element.len() > 19 || !element.iter().all(u8::is_ascii_digit) {
            return Err(());
        }
        let n = element
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|l| l != n) {
            return Err(());
        }
        length = Some(n);
    }
    // Only commas, or an empty value: present but not a length.
    if length.is_none() && headers.contains_key(CONTENT_LENGTH) {
        return Err(());
    }
    Ok(length)
}

/// Several agreeing `Content-Length` lines or list elements (`3` twice, `3, 3`) become one
/// line, as HTTP/1.1 upstreams expect (some refuse repeats). Call only after
/// [`content_length`] accepted the values.
pub fn one_content_length(headers: &mut HeaderMap) {
    let mut lines = headers.get_all(CONTENT_LENGTH).iter();
    let repeated = match (lines.next(), lines.next()) {
        (Some(first), None) => first.as_bytes().contains(&b','),
        (Some(_), Some(_)) => true,
        _ => false,
    };
    if repeated && let Ok(Some(n)) = content_length(headers) {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
    }
}

/// The size of a request's head as HTTP/2 counts a header list (RFC 9113 §6.5.2): each field's
/// name and value length plus 32 octets, the pseudo-header fields included. The same measure
/// for both protocols, so one `server.max_header_bytes` means one thing.
pub fn header_list_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |pq| pq.as_str().len());
    let authority = uri.authority().map_or(0, |a| a.as_str().len() + 10 + 32);
    let pseudo =
        (7 + req.method().as_str().len() + 32) + (5 + target + 32) + (7 + 5 + 32) + authority;
    req.headers()
        .iter()
        .fold(pseudo, |n, (k, v)| n + k.as_str().len() + v.len() + 32)
}

/// How many field lines a request head has, counted the same for both protocols (the measure
/// of `server.max_header_fields`): every field line (RFC 9110 §5.2), no pseudo-header field,
/// except that over HTTP/2 the `:authority` counts as the `Host` line it stands for when the
/// request has no `Host` field (RFC 9113 §8.3.1), and the `Cookie` crumbs a client split one
/// cookie line into count as that one line (RFC 9113 §8.2.3: they are joined again before the
/// request goes on as HTTP/1.1). An HTTP/1.1 head's `Cookie` lines each count.
pub fn field_lines<B>(req: &Request<B>) -> usize {
    let headers = req.headers();
    let mut lines = headers.len();
    if req.version() == Version::HTTP_2 {
        lines -= headers.get_all(COOKIE).iter().count().saturating_sub(1);
        if req.uri().authority().is_some() && !headers.contains_key(HOST) {
            lines += 1;
        }
    }
    lines
}

/// The `Max-Forwards` value (RFC 9110 §7.6.2), if present and a number.
pub fn max_forwards(headers: &HeaderMap) -> Option<u64> {
    std::str::from_utf8(headers.get(MAX_FORWARDS)?.as_bytes())
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// For `OPTIONS` and `TRACE`, the only methods it applies to, `Max-Forwards` decremented by
/// this hop (RFC 9110 §7.6.2). A value that does not parse is left as it is.
pub fn decrement_max_forwards(method: &Method, headers: &mut HeaderMap) {
    if *method != Method::OPTIONS && *method != Method::TRACE {
        return;
    }
    if let Some(n) = max_forwards(headers) {
        headers.insert(MAX_FORWARDS, HeaderValue::from(n.saturating_sub(1)));
    }
}

/// Joins several `Cookie` field lines into one, with `"; "` between them, as an HTTP/2 request
/// carries them and an HTTP/1.1 upstream must receive them (RFC 9113 §8.2.3).
pub fn join_cookie_lines(headers: &mut HeaderMap) {
    let mut lines = headers.get_all(COOKIE).iter();
    let (Some(first), Some(_)) = (lines.next(), lines.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for line in headers.get_all(COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(line.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(COOKIE, v);
    }
}

/// A trusted peer's `X-Forwarded-For` chain (every line, as one list; empty elements dropped)
/// with `peer` appended: `a, b, peer`. `None` if the chain cannot be a header value.
pub fn append_hop(chain: GetAll<'_, HeaderValue>, peer: IpAddr) -> Option<HeaderValue> {
    let mut out = Vec::with_capacity(64);
    for hop in elements(chain, b',') {
        out.extend_from_slice(hop);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(ip_value(peer).as_bytes());
    HeaderValue::from_bytes(&out).ok()
}

/// An address as a header value (`X-Forwarded-For`). IPv4, the common case on every request,
/// is written digit by digit into a stack buffer: `Ipv4Addr`'s `Display` costs about twenty
/// times as much.
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                let mut digits = itoa::Buffer::new();
                let digits = digits.format(octet).as_bytes();
                buf[len..len + digits.len()].copy_from_slice(digits);
                len += digits.len();
            }
            // Digits and dots only: always a valid header value.
            HeaderValue::from_bytes(&buf[..len]).unwrap_or_else(|_| HeaderValue::from_static(""))
        }
        IpAddr::V6(v6) => {
            HeaderValue::from_str(&v6.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
        }
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == CONNECTION || fixed_hop_by_hop().contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn ip_values() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "255.255.255.255",
            "192.0.2.100",
            "2001:db8::1",
            "::1",
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(addr), ip, "{ip}");
        }
    }

    #[test]
    fn hop_by_hop_table() {
        type Case<'a> = (&'a [(&'a str, &'a str)], bool, &'a [&'a str]);
        let cases: &[Case] = &[
            (
                &[
                    ("connection", "keep-alive"),
                    ("keep-alive", "timeout=5"),
                    ("x-a", "1"),
                ],
                false,
                &["x-a"],
            ),
            (
                &[
                    ("connection", "close, X-Secret-Hop"),
                    ("x-secret-hop", "v"),
                    ("x-a", "1"),
                ],
                false,
                &["x-a"],
            ),
            (
                &[
                    ("te", "trailers"),
                    ("transfer-encoding", "chunked"),
                    ("proxy-connection", "x"),
                    ("trailer", "x"),
                ],
                false,
                &[],
            ),
            (&[("upgrade", "websocket"), ("x-a", "1")], false, &["x-a"]),
            (
                &[("connection", "Upgrade"), ("upgrade", "websocket")],
                true,
                &["connection", "upgrade"],
            ),
            (
                &[("host", "a"), ("cookie", "c")],
                false,
                &["cookie", "host"],
            ),
        ];
        for (input, keep_upgrade, want) in cases {
            let mut m = map(input);
            strip_hop_by_hop(&mut m, *keep_upgrade);
            let mut got: Vec<&str> = m.keys().map(|k| k.as_str()).collect();
            got.sort_unstable();
            assert_eq!(&got, want, "{input:?}");
        }
    }

    #[test]
    fn connection_cannot_remove_what_the_proxy_answers_for() {
        let mut m = map(&[
            (
                "connection",
                "keep-alive, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host",
            ),
            ("connection", "Host, Forwarded, Content-Length, X-Other"),
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "a"),
            ("forwarded", "for=198.51.100.1"),
            ("host", "a"),
            ("content-length", "0"),
            ("x-other", "gone"),
        ]);
        strip_hop_by_hop(&mut m, false);
        let mut got: Vec<&str> = m.keys().map(|k| k.as_str()).collect();
        got.sort_unstable();
        assert_eq!(
            got,
            [
                "content-length",
                "forwarded",
                "host",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto"
            ]
        );
    }

    #[test]
    fn content_length_table() {
        type Case<'a> = (&'a [&'a str], Result<Option<u64>, ()>);
        let cases: &[Case] = &[
            (&[], Ok(None)),
            (&["0"], Ok(Some(0))),
            (&["42"], Ok(Some(42))),
            (&["42", "42"], Ok(Some(42))),
            (&["42, 42"], Ok(Some(42))),
            (&["42", "43"], Err(())),
            (&["42, 43"], Err(())),
            (&["-1"], Err(())),
            (&["+1"], Err(())),
            (&["4 2"], Err(())),
            (&["0x10"], Err(())),
            (&[""], Err(())),
            (&[","], Err(())),
            (&["99999999999999999999"], Err(())),
            (&["18446744073709551615"], Err(())),
            (
                &["9999999999999999999"],
                Ok(Some(9_999_999_999_999_999_999)),
            ),
        ];
        for (lines, want) in cases {
            let pairs: Vec<(&str, &str)> = lines.iter().map(|l| ("content-length", *l)).collect();
            assert_eq!(content_length(&map(&pairs)), *want, "{lines:?}");
        }
    }

    #[test]
    fn agreeing_content_lengths_become_one_line() {
        for (lines, want) in [
            (&["3", "3"][..], &["3"][..]),
            (&["3, 3"][..], &["3"][..]),
            (&["3"][..], &["3"][..]),
            (&[][..], &[][..]),
        ] {
            let pairs: Vec<(&str, &str)> = lines.iter().map(|l| ("content-length", *l)).collect();
            let mut m = map(&pairs);
            one_content_length(&mut m);
            let got: Vec<_> = m.get_all(CONTENT_LENGTH).iter().collect();
            assert_eq!(got, want, "{lines:?}");
        }
    }

    #[test]
    fn cookie_lines_join_with_semicolons() {
        let mut m = map(&[
            ("cookie", "session_id=abc123"),
            ("cookie", "preferred_language=en"),
            ("cookie", "c=3; d=4"),
        ]);
        join_cookie_lines(&mut m);
        let all: Vec<_> = m.get_all(COOKIE).iter().collect();
        assert_eq!(all, ["session_id=abc123; preferred_language=en; c=3; d=4"]);
        let mut one = map(&[("cookie", "a=1")]);
        join_cookie_lines(&mut one);
        assert_eq!(one.get(COOKIE).unwrap(), "a=1");
    }

    #[test]
    fn max_forwards_counts_down_for_options_and_trace_only() {
        for (method, value, want) in [
            (Method::OPTIONS, "5", "4"),
            (Method::TRACE, "1", "0"),
            (Method::OPTIONS, "0", "0"),
            (Method::GET, "5", "5"),
            (Method::OPTIONS, "x", "x"),
        ] {
            let mut m = map(&[("max-forwards", value)]);
            decrement_max_forwards(&method, &mut m);
            assert_eq!(m.get(MAX_FORWARDS).unwrap(), want, "{method} {value}");
        }
    }

    #[test]
    fn a_trusted_chain_keeps_every_line_and_drops_empty_elements() {
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        for (lines, want) in [
            (
                &["203.0.113.5", "81.26.200.10"][..],
                "203.0.113.5, 81.26.200.10, 127.0.0.1",
            ),
            (&["81.26.200.10,"][..], "81.26.200.10, 127.0.0.1"),
            (
                &[" , 198.51.100.1 ,, 10.0.0.2"][..],
                "198.51.100.1, 10.0.0.2, 127.0.0.1",
            ),
            (&[","][..], "127.0.0.1"),
        ] {
            let pairs: Vec<(&str, &str)> = lines.iter().map(|l| ("x-forwarded-for", *l)).collect();
            let m = map(&pairs);
            let got = append_hop(m.get_all(&X_FORWARDED_FOR), peer).unwrap();
            assert_eq!(got, want, "{lines:?}");
        }
    }

    #[test]
    fn upgrade_detection() {
        assert!(is_upgrade_request(&map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket")
        ])));
        assert!(!is_upgrade_request(&map(&[("upgrade", "websocket")])));
        assert!(!is_upgrade_request(&map(&[("connection", "upgrade")])));
    }

    #[test]
    fn field_lines_count_the_same_head_the_same_over_both_protocols() {
        /// (version, target, fields, lines counted)
        type Row<'a> = (Version, &'a str, &'a [(&'a str, &'a str)], usize);
        let rows: &[Row] = &[
            (Version::HTTP_11, "/", &[("host", "a")], 1),
            (
                Version::HTTP_11,
                "/",
                &[("host", "a"), ("x", "1"), ("x", "2")],
                3,
            ),
            // Over HTTP/1.1 each Cookie line counts.
            (
                Version::HTTP_11,
                "/",
                &[("host", "a"), ("cookie", "a=1"), ("cookie", "b=2")],
                3,
            ),
            // :authority counts as the Host line it stands for...
            (Version::HTTP_2, "https://a/", &[("x", "1")], 2),
            // ...once, when a Host field repeats it.
            (
                Version::HTTP_2,
                "https://a/",
                &[("host", "a"), ("x", "1")],
                2,
            ),
            (Version::HTTP_2, "/", &[("x", "1")], 1),
            // Cookie crumbs count as the one line they are joined into.
            (
                Version::HTTP_2,
                "https://a/",
                &[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")],
                2,
            ),
            (Version::HTTP_2, "https://a/", &[("cookie", "a=1")], 2),
        ];
        for (version, target, fields, want) in rows {
            let mut req = Request::builder().version(*version).uri(*target);
            for (k, v) in *fields {
                req = req.header(*k, *v);
            }
            let req = req.body(()).unwrap();
            assert_eq!(field_lines(&req), *want, "{version:?} {target} {fields:?}");
        }
    }
}
