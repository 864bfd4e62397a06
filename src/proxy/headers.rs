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

/// The fixed hop-by-hop set. `Upgrade` is handled by the caller, which keeps it for WebSocket.
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
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of these: one pass over the names (cheap comparisons, no
    // hashing) spares a dozen hash lookups per message.
    if !keep_upgrade && !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(CONNECTION) {
        // Rare (HTTP/1.0 keep-alive, custom hop headers): the allocation is off the common path.
        let listed: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
            .collect();
        for name in listed {
            if !(keep_upgrade && name == UPGRADE) {
                headers.remove(&name);
            }
        }
        headers.remove(CONNECTION);
    }
    for name in fixed_hop_by_hop() {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == CONNECTION || *name == UPGRADE || fixed_hop_by_hop().contains(&name)
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
