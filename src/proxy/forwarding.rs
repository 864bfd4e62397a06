//! The forwarding headers of the upstream request: `X-Forwarded-For`, `X-Forwarded-Host`,
//! `X-Forwarded-Proto` and RFC 7239 `Forwarded`, as `upstream.forward_client_ip` says.
//!
//! One pure function, [`set_forwarding_headers`]: what it writes depends on its arguments only
//! (no clock, no config read, no I/O), so the whole policy is one table test. It never logs a
//! header value or an address.

use http::HeaderMap;
use http::header::{FORWARDED, HeaderValue};

use super::headers::{self, X_FORWARDED_HOST, X_FORWARDED_PROTO, ip_value};
use crate::client_ip::{ClientAddr, TrustedProxies, X_FORWARDED_FOR};
use crate::config::{Config, ForwardClientIp};
use crate::privacy::net::truncate;

/// What the upstream learns of the client: the configured policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardingPolicy {
    /// `upstream.forward_client_ip`: the full address, its network, or nothing.
    pub client_ip: ForwardClientIp,
    /// `privacy.ipv4_prefix`: the prefix length (bits) of a truncated IPv4 address.
    pub ipv4_prefix: u8,
    /// `privacy.ipv6_prefix`: the prefix length (bits) of a truncated IPv6 address.
    pub ipv6_prefix: u8,
}

impl ForwardingPolicy {
    /// The policy `config` sets.
    pub fn new(config: &Config) -> ForwardingPolicy {
        ForwardingPolicy {
            client_ip: config.upstream.forward_client_ip,
            ipv4_prefix: config.privacy.ipv4_prefix,
            ipv6_prefix: config.privacy.ipv6_prefix,
        }
    }
}

/// Sets the forwarding headers in `h`, the head of a request on its way upstream, of a request
/// that came from the TCP `peer` (over TLS when `tls`) on behalf of `client` (the address
/// [`TrustedProxies::resolve`] gave), for the request's own `authority` (`None`: it named no
/// host).
///
/// - `X-Forwarded-Host`: `authority` (removed without one); `X-Forwarded-Proto`: `https` or
///   `http`. A trusted peer's own values are kept.
/// - `forward_client_ip = "full"`: `X-Forwarded-For` is `client`; from a trusted peer that sent
///   a chain, the chain (all its field lines, as one list, RFC 9110 §5.3) with the peer
///   appended. `Forwarded` is kept only from a trusted peer.
/// - `"truncated"`: `X-Forwarded-For` is the network of `client` (`privacy.ipv4_prefix`,
///   `ipv6_prefix`), `Forwarded` removed.
/// - `"none"`: both removed.
///
/// Set after the hop-by-hop removal, so that no `Connection` option can take them away.
pub fn set_forwarding_headers(
    h: &mut HeaderMap,
    peer: ClientAddr,
    trusted: &TrustedProxies,
    client: ClientAddr,
    tls: bool,
    policy: ForwardingPolicy,
    authority: Option<&HeaderValue>,
) {
    let peer_trusted = !trusted.is_empty() && trusted.contains(peer.ip());
    if !(peer_trusted && h.contains_key(&X_FORWARDED_HOST)) {
        match authority {
            Some(host) => h.insert(X_FORWARDED_HOST.clone(), host.clone()),
            None => h.remove(&X_FORWARDED_HOST),
        };
    }
    if !(peer_trusted && h.contains_key(&X_FORWARDED_PROTO)) {
        let proto = if tls { "https" } else { "http" };
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    match policy.client_ip {
        ForwardClientIp::Full => {
            if !peer_trusted {
                h.remove(FORWARDED);
            }
            let value = match peer_trusted && h.contains_key(&X_FORWARDED_FOR) {
                true => headers::append_hop(h.get_all(&X_FORWARDED_FOR), peer.ip()),
                false => Some(ip_value(client.ip())),
            };
            match value {
                Some(v) => h.insert(X_FORWARDED_FOR.clone(), v),
                None => h.insert(X_FORWARDED_FOR.clone(), ip_value(client.ip())),
            };
        }
        ForwardClientIp::Truncated => {
            h.remove(FORWARDED);
            let net = truncate(client, policy.ipv4_prefix, policy.ipv6_prefix);
            if let Ok(v) = HeaderValue::from_str(&net.as_ipnet().network().to_string()) {
                h.insert(X_FORWARDED_FOR.clone(), v);
            }
        }
        ForwardClientIp::None => {
            h.remove(FORWARDED);
            h.remove(&X_FORWARDED_FOR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cidr;

    /// One request through the policy: what arrived, and what the upstream is sent.
    struct Row {
        what: &'static str,
        peer: &'static str,
        trusted: &'static [&'static str],
        client: &'static str,
        tls: bool,
        policy: ForwardClientIp,
        authority: Option<&'static str>,
        /// The request's own field lines.
        sent: &'static [(&'static str, &'static str)],
        /// Every line of `x-forwarded-for`, `x-forwarded-host`, `x-forwarded-proto` and
        /// `forwarded` the upstream gets, in that order.
        want: &'static [(&'static str, &'static str)],
    }

    const FULL: ForwardClientIp = ForwardClientIp::Full;
    const TRUNCATED: ForwardClientIp = ForwardClientIp::Truncated;
    const NONE: ForwardClientIp = ForwardClientIp::None;
    const SPOOFED: &[(&str, &str)] = &[
        ("x-forwarded-for", "203.0.113.66"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "gopher"),
        ("forwarded", "for=203.0.113.66;host=evil.example"),
    ];

    fn rows() -> Vec<Row> {
        vec![
            Row {
                what: "a direct client with nothing of its own",
                peer: "198.51.100.7",
                trusted: &[],
                client: "198.51.100.7",
                tls: true,
                policy: FULL,
                authority: Some("a.example"),
                sent: &[],
                want: &[
                    ("x-forwarded-for", "198.51.100.7"),
                    ("x-forwarded-host", "a.example"),
                    ("x-forwarded-proto", "https"),
                ],
            },
            Row {
                what: "an untrusted peer's spoofed values are all replaced or removed",
                peer: "198.51.100.7",
                trusted: &[],
                client: "198.51.100.7",
                tls: true,
                policy: FULL,
                authority: Some("a.example"),
                sent: SPOOFED,
                want: &[
                    ("x-forwarded-for", "198.51.100.7"),
                    ("x-forwarded-host", "a.example"),
                    ("x-forwarded-proto", "https"),
                ],
            },
            Row {
                what: "a peer outside the trusted networks is untrusted",
                peer: "198.51.100.7",
                trusted: &["10.0.0.0/8"],
                client: "198.51.100.7",
                tls: false,
                policy: FULL,
                authority: Some("a.example"),
                sent: SPOOFED,
                want: &[
                    ("x-forwarded-for", "198.51.100.7"),
                    ("x-forwarded-host", "a.example"),
                    ("x-forwarded-proto", "http"),
                ],
            },
            Row {
                what: "a trusted peer's chain gets the peer appended, its own values kept",
                peer: "10.0.0.1",
                trusted: &["10.0.0.0/8"],
                client: "203.0.113.66",
                tls: true,
                policy: FULL,
                authority: Some("a.example"),
                sent: SPOOFED,
                want: &[
                    ("x-forwarded-for", "203.0.113.66, 10.0.0.1"),
                    ("x-forwarded-host", "evil.example"),
                    ("x-forwarded-proto", "gopher"),
                    ("forwarded", "for=203.0.113.66;host=evil.example"),
                ],
            },
            Row {
                what: "a trusted peer's chain over several lines becomes one list",
                peer: "10.0.0.1",
                trusted: &["10.0.0.0/8"],
                client: "203.0.113.9",
                tls: true,
                policy: FULL,
                authority: Some("a.example"),
                sent: &[
                    ("x-forwarded-for", "192.0.2.1, 203.0.113.9"),
                    ("x-forwarded-for", ", 10.0.0.2"),
                ],
                want: &[
                    (
                        "x-forwarded-for",
                        "192.0.2.1, 203.0.113.9, 10.0.0.2, 10.0.0.1",
                    ),
                    ("x-forwarded-host", "a.example"),
                    ("x-forwarded-proto", "https"),
                ],
            },
            Row {
                what: "a trusted peer without a chain: the client alone",
                peer: "10.0.0.1",
                trusted: &["10.0.0.0/8"],
                client: "10.0.0.1",
                tls: false,
                policy: FULL,
                authority: None,
                sent: &[],
                want: &[
                    ("x-forwarded-for", "10.0.0.1"),
                    ("x-forwarded-proto", "http"),
                ],
            },
            Row {
                what: "a trusted peer with Forwarded but no X-Forwarded-For keeps Forwarded",
                peer: "10.0.0.1",
                trusted: &["10.0.0.0/8"],
                client: "203.0.113.66",
                tls: true,
                policy: FULL,
                authority: Some("a.example"),
                sent: &[("forwarded", "for=203.0.113.66")],
                want: &[
                    ("x-forwarded-for", "203.0.113.66"),
                    ("x-forwarded-host", "a.example"),
                    ("x-forwarded-proto", "https"),
                    ("forwarded", "for=203.0.113.66"),
                ],
            },
            Row {
                what: "no authority removes a spoofed X-Forwarded-Host",
                peer: "198.51.100.7",
                trusted: &[],
                client: "198.51.100.7",
                tls: true,
                policy: FULL,
                authority: None,
                sent: &[("x-forwarded-host", "evil.example")],
                want: &[
                    ("x-forwarded-for", "198.51.100.7"),
                    ("x-forwarded-proto", "https"),
                ],
            },
            Row {
                what: "an IPv6 client in full",
                peer: "2001:db8:1:2::7",
                trusted: &[],
                client: "2001:db8:1:2::7",
                tls: true,
                policy: FULL,
                authority: Some("[2001:db8::1]:8443"),
                sent: &[],
                want: &[
                    ("x-forwarded-for", "2001:db8:1:2::7"),
                    ("x-forwarded-host", "[2001:db8::1]:8443"),
                    ("x-forwarded-proto", "https"),
                ],
            },
            Row {
                what: "truncated IPv4: the network only, Forwarded removed",
                peer: "198.51.100.7",
                trusted: &[],
                client: "198.51.100.7",
                tls: true,
                policy: TRUNCATED,
                authority: Some("a.example"),
                sent: SPOOFED,
                want: &[
                    ("x-forwarded-for", "198.51.100.0"),
                    ("x-forwarded-host", "a.example"),
                    ("x-forwarded-proto", "https"),
                ],
            },
            Row {
                what: "truncated IPv6",
                peer: "2001:db8:1:2::7",
                trusted: &[],
                client: "2001:db8:1:2::7",
                tls: true,
                policy: TRUNCATED,
                authority: Some("a.example"),
                sent: &[],
                want: &[
                    ("x-forwarded-for", "2001:db8:1::"),
                    ("x-forwarded-host", "a.example"),
                    ("x-forwarded-proto", "https"),
                ],
            },
            Row {
                what: "truncated from a trusted peer: the resolved client's network, no chain",
                peer: "10.0.0.1",
                trusted: &["10.0.0.0/8"],
                client: "203.0.113.66",
                tls: true,
                policy: TRUNCATED,
                authority: Some("a.example"),
                sent: SPOOFED,
                want: &[
                    ("x-forwarded-for", "203.0.113.0"),
                    ("x-forwarded-host", "evil.example"),
                    ("x-forwarded-proto", "gopher"),
                ],
            },
            Row {
                what: "none: no client address at all",
                peer: "198.51.100.7",
                trusted: &[],
                client: "198.51.100.7",
                tls: true,
                policy: NONE,
                authority: Some("a.example"),
                sent: SPOOFED,
                want: &[
                    ("x-forwarded-host", "a.example"),
                    ("x-forwarded-proto", "https"),
                ],
            },
            Row {
                what: "none from a trusted peer drops its chain too",
                peer: "10.0.0.1",
                trusted: &["10.0.0.0/8"],
                client: "203.0.113.66",
                tls: false,
                policy: NONE,
                authority: Some("a.example"),
                sent: SPOOFED,
                want: &[
                    ("x-forwarded-host", "evil.example"),
                    ("x-forwarded-proto", "gopher"),
                ],
            },
        ]
    }

    #[test]
    fn forwarding_headers_follow_the_policy_and_the_peers_trust() {
        let policy = |client_ip| ForwardingPolicy {
            client_ip,
            ipv4_prefix: 24,
            ipv6_prefix: 48,
        };
        let addr = |s: &str| ClientAddr::new(s.parse().unwrap());
        for row in rows() {
            let mut h = HeaderMap::new();
            for (name, value) in row.sent {
                h.append(*name, value.parse().unwrap());
            }
            h.insert("accept", HeaderValue::from_static("*/*"));
            let cidrs: Vec<Cidr> = row.trusted.iter().map(|c| c.parse().unwrap()).collect();
            let authority = row.authority.map(HeaderValue::from_static);
            set_forwarding_headers(
                &mut h,
                addr(row.peer),
                &TrustedProxies::new(&cidrs),
                addr(row.client),
                row.tls,
                policy(row.policy),
                authority.as_ref(),
            );
            let got: Vec<(&str, &str)> = [
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto",
                "forwarded",
            ]
            .into_iter()
            .flat_map(|name| {
                h.get_all(name)
                    .iter()
                    .map(move |v| (name, v.to_str().unwrap()))
            })
            .collect();
            assert_eq!(got, row.want, "{}", row.what);
            // Nothing else is touched.
            assert_eq!(h.get("accept").unwrap(), "*/*", "{}", row.what);
        }
    }
}
