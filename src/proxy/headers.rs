//! Header hygiene: hop-by-hop headers removed both ways (RFC 9110 §7.6.1), and the
//! `X-Forwarded-*` headers set for the upstream.
//!
//! Pure functions over a `HeaderMap`; they never log a header value.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::GetAll;
use http::header::{
    CONNECTION, HeaderName, HeaderValue, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};

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
    headers.get_all(CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
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
            is_hop_by_hop(name) || (has_connection && lists(&connection, name))
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
    connection.iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|t| {
            t.trim_ascii()
                .eq_ignore_ascii_case(name.as_str().as_bytes())
        })
    })
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
    fn upgrade_detection() {
        assert!(is_upgrade_request(&map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket")
        ])));
        assert!(!is_upgrade_request(&map(&[("upgrade", "websocket")])));
        assert!(!is_upgrade_request(&map(&[("connection", "upgrade")])));
    }
}
