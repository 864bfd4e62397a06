//! Header hygiene: hop-by-hop headers removed both ways (RFC 9110 §7.6.1), and the
//! `X-Forwarded-*` headers set for the upstream.
//!
//! Pure functions over a `HeaderMap`; they never log a header value.

use http::HeaderMap;
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
/// One pass over the names decides what goes, comparing without hashing or allocating; only
/// the names present are then removed (typically just `Connection`, if anything).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let mut doomed: [Option<HeaderName>; 4] = Default::default();
    let mut extra: Vec<HeaderName> = Vec::new();
    let mut n = 0;
    for name in headers.keys() {
        let hop = if *name == UPGRADE {
            !keep_upgrade
        } else {
            is_hop_by_hop(name) || listed_in_connection(headers, name)
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

/// Whether `Connection` lists `name` (its tokens compared case-insensitively).
fn listed_in_connection(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|t| {
            t.trim_ascii()
                .eq_ignore_ascii_case(name.as_str().as_bytes())
        })
    })
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
