//! The client address and trusted-proxy resolution.
//!
//! Owns [`ClientAddr`], the only type that holds a raw client address, in its one canonical
//! form: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is folded to IPv4 when the value is made,
//! so every consumer sees one spelling of one client. It has no `Debug`, `Display` or
//! `Serialize`, and its address can be read only inside this crate, so it cannot reach a log
//! line, an error or a panic message by accident. The consumers that derive an allowed value
//! from it take a `ClientAddr` and keep only the result: the pseudonym
//! ([`crate::privacy::keys::pseudonym`]), the network ([`crate::privacy::net::truncate`]), the
//! country ([`crate::privacy::geo::GeoDb::lookup`]) and the rate-limit key
//! ([`crate::ratelimit::RateLimiter::check`]); forwarding reads it to write the forwarding
//! headers the upstream receives.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{FORWARDED, HeaderName};
use ipnet::IpNet;

use crate::config::Cidr;
use crate::fields::{elements, line_elements, trim_ows, unquote};

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// A client address in canonical form. Deliberately unprintable: no `Debug`, `Display` or
/// `Serialize`, and no public way to read the address back.
///
/// Two `ClientAddr`s are equal when they name the same client, whichever spelling it came in:
///
/// ```
/// use webprom_edge::client_ip::ClientAddr;
/// let mapped = ClientAddr::new("::ffff:192.0.2.7".parse().unwrap());
/// assert!(mapped == ClientAddr::new("192.0.2.7".parse().unwrap()));
/// ```
///
/// Outside this crate the address can be neither printed, serialised nor read:
///
/// ```compile_fail
/// # use webprom_edge::client_ip::ClientAddr;
/// let client = ClientAddr::new("192.0.2.7".parse().unwrap());
/// println!("{client:?}");
/// ```
/// ```compile_fail
/// # use webprom_edge::client_ip::ClientAddr;
/// let client = ClientAddr::new("192.0.2.7".parse().unwrap());
/// println!("{client}");
/// ```
/// ```compile_fail
/// # use webprom_edge::client_ip::ClientAddr;
/// let client = ClientAddr::new("192.0.2.7".parse().unwrap());
/// let _ = serde_json::to_string(&client);
/// ```
/// ```compile_fail
/// # use webprom_edge::client_ip::ClientAddr;
/// let client = ClientAddr::new("192.0.2.7".parse().unwrap());
/// let _ = client.ip();
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(IpAddr);

impl ClientAddr {
    /// Wraps an address, folding IPv4-mapped IPv6 (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2) to IPv4:
    /// the only place the two spellings of an IPv4 client are made one. IPv4-compatible
    /// addresses (`::a.b.c.d`, deprecated) stay IPv6.
    pub fn new(ip: IpAddr) -> ClientAddr {
        ClientAddr(ip.to_canonical())
    }

    /// The canonical address, for deriving an allowed value or forwarding it upstream; never
    /// IPv4-mapped. Never print, log or store the result. Crate-private, so that no code outside
    /// the crate reads an address by accident; it is not a secret from the crate's public API,
    /// which must be able to truncate at any configured width (`privacy::net::truncate` at /32
    /// or /128 gives the whole address, as `privacy.ipv4_prefix = 32` asks).
    pub(crate) fn ip(&self) -> IpAddr {
        self.0
    }
}

/// The networks whose forwarding headers are believed.
#[derive(Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// From the configured CIDRs.
    pub fn new(cidrs: &[Cidr]) -> TrustedProxies {
        TrustedProxies(cidrs.iter().map(|c| c.0).collect())
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// Whether any proxy is trusted at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The client address of a request that arrived from `peer`.
    ///
    /// The peer itself unless it is trusted; then the right-most address of `X-Forwarded-For`
    /// (or, without it, of RFC 7239 `Forwarded`) that is not trusted. Several field lines are
    /// one list, in order, and empty elements are ignored ([`crate::fields`]). An entry that
    /// does not parse ends the walk: everything left of it may be forged, so the last good hop
    /// is used.
    pub fn resolve(&self, peer: ClientAddr, headers: &HeaderMap) -> ClientAddr {
        if self.is_empty() || !self.contains(peer.0) {
            return peer;
        }
        if headers.contains_key(&X_FORWARDED_FOR) {
            let hops = elements(headers.get_all(&X_FORWARDED_FOR), b',').map(parse_xff_entry);
            return self.walk(peer, hops);
        }
        if headers.contains_key(FORWARDED) {
            let hops = elements(headers.get_all(FORWARDED), b',').map(parse_forwarded_element);
            return self.walk(peer, hops);
        }
        peer
    }

    /// The right-to-left walk over `hops` (listed left to right), computed in one forward pass
    /// so that no list is collected: the answer is the last untrusted hop after the last entry
    /// that does not parse, else the first hop after it, else the peer.
    fn walk(&self, peer: ClientAddr, hops: impl Iterator<Item = Option<IpAddr>>) -> ClientAddr {
        let mut last_untrusted = None;
        let mut first_good = None;
        for hop in hops {
            match hop {
                None => (last_untrusted, first_good) = (None, None),
                Some(ip) => {
                    let hop = ClientAddr::new(ip);
                    first_good.get_or_insert(hop);
                    if !self.contains(hop.0) {
                        last_untrusted = Some(hop);
                    }
                }
            }
        }
        last_untrusted.or(first_good).unwrap_or(peer)
    }
}

/// One `X-Forwarded-For` entry: an address, possibly `[v6]:port` or `v4:port`.
fn parse_xff_entry(entry: &[u8]) -> Option<IpAddr> {
    parse_node(std::str::from_utf8(entry).ok()?)
}

/// The `for=` node of one `Forwarded` element, e.g. `for=192.0.2.1;proto=https`.
fn parse_forwarded_element(element: &[u8]) -> Option<IpAddr> {
    let node = line_elements(element, b';').find_map(|pair| {
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (k, v) = (trim_ows(&pair[..eq]), trim_ows(&pair[eq + 1..]));
        k.eq_ignore_ascii_case(b"for").then_some(v)
    })?;
    parse_node(std::str::from_utf8(unquote(node)).ok()?)
}

/// An address, `v4:port` or `[v6]` with an optional `:port` (RFC 7239 §6: `node`; the port may
/// be an `obfport`). Anything after the address but a port makes it unparseable.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if !after.is_empty() && !after.strip_prefix(':').is_some_and(is_node_port) {
            return None;
        }
        return v6.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let (v4, port) = s.rsplit_once(':')?;
    if !is_node_port(port) {
        return None;
    }
    v4.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// RFC 7239 §6 `node-port`: a port number (1 to 5 digits), or `_` and an obfuscated identifier.
fn is_node_port(port: &str) -> bool {
    match port.as_bytes() {
        [b'_', rest @ ..] => {
            !rest.is_empty()
                && rest
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b))
        }
        digits => {
            !digits.is_empty()
                && digits.iter().all(u8::is_ascii_digit)
                && port.parse::<u16>().is_ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(nets: &[&str]) -> TrustedProxies {
        let cidrs: Vec<Cidr> = nets.iter().map(|n| n.parse().unwrap()).collect();
        TrustedProxies::new(&cidrs)
    }

    fn resolve(t: &TrustedProxies, peer: &str, headers: &[(&str, &str)]) -> IpAddr {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        t.resolve(ClientAddr::new(peer.parse().unwrap()), &map).ip()
    }

    #[test]
    fn resolution_table() {
        let t = trusted(&["10.0.0.0/8", "::1"]);
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            // Untrusted peers are believed only about themselves.
            (
                "203.0.113.9",
                &[("x-forwarded-for", "198.51.100.1")],
                "203.0.113.9",
            ),
            // A trusted peer: the right-most untrusted entry.
            (
                "10.0.0.1",
                &[("x-forwarded-for", "198.51.100.1, 198.51.100.2")],
                "198.51.100.2",
            ),
            (
                "10.0.0.1",
                &[("x-forwarded-for", "198.51.100.1, 10.2.3.4")],
                "198.51.100.1",
            ),
            // Several header lines are one list, in order.
            (
                "10.0.0.1",
                &[
                    ("x-forwarded-for", "198.51.100.1"),
                    ("x-forwarded-for", "10.9.9.9"),
                ],
                "198.51.100.1",
            ),
            // Several lines: the last line's entry is the right-most.
            (
                "10.0.0.1",
                &[
                    ("x-forwarded-for", "203.0.113.5"),
                    ("x-forwarded-for", "81.26.200.10"),
                ],
                "81.26.200.10",
            ),
            (
                "10.0.0.1",
                &[
                    ("x-forwarded-for", "198.51.100.1, 10.1.1.1"),
                    ("x-forwarded-for", "10.2.2.2"),
                ],
                "198.51.100.1",
            ),
            // Empty elements and whitespace are ignored.
            (
                "10.0.0.1",
                &[("x-forwarded-for", "81.26.200.10,")],
                "81.26.200.10",
            ),
            (
                "10.0.0.1",
                &[("x-forwarded-for", ",81.26.200.10")],
                "81.26.200.10",
            ),
            (
                "10.0.0.1",
                &[("x-forwarded-for", "198.51.100.1, ,\t10.2.3.4 ,")],
                "198.51.100.1",
            ),
            ("10.0.0.1", &[("x-forwarded-for", ", ,")], "10.0.0.1"),
            (
                "10.0.0.1",
                &[("x-forwarded-for", ""), ("x-forwarded-for", "81.26.200.10")],
                "81.26.200.10",
            ),
            // Every hop trusted: the left-most.
            (
                "10.0.0.1",
                &[("x-forwarded-for", "10.3.3.3, 10.2.2.2")],
                "10.3.3.3",
            ),
            // Garbage stops the walk at the last good hop.
            (
                "10.0.0.1",
                &[("x-forwarded-for", "198.51.100.1, junk, 10.2.3.4")],
                "10.2.3.4",
            ),
            (
                "10.0.0.1",
                &[("x-forwarded-for", "[2001:db8::7]:443")],
                "2001:db8::7",
            ),
            (
                "10.0.0.1",
                &[("x-forwarded-for", "198.51.100.3:5555")],
                "198.51.100.3",
            ),
            // Forwarded, when X-Forwarded-For is absent.
            (
                "10.0.0.1",
                &[(
                    "forwarded",
                    "for=192.0.2.43, for=\"[2001:db8:cafe::17]:4711\";proto=https",
                )],
                "2001:db8:cafe::17",
            ),
            ("10.0.0.1", &[("forwarded", "for=unknown")], "10.0.0.1"),
            // Forwarded over several lines, with empty elements, quoted commas and any case.
            (
                "10.0.0.1",
                &[
                    ("forwarded", "for=192.0.2.43,"),
                    ("forwarded", "proto=https;For=\"198.51.100.17\""),
                ],
                "198.51.100.17",
            ),
            (
                "10.0.0.1",
                &[("forwarded", "for=192.0.2.60;by=\"a,b\", for=10.1.1.1")],
                "192.0.2.60",
            ),
            // Garbage between good hops: only what is right of it counts.
            (
                "10.0.0.1",
                &[(
                    "x-forwarded-for",
                    "198.51.100.1, junk, 10.2.3.4, 198.51.100.9",
                )],
                "198.51.100.9",
            ),
            // An unclosed quote hides nothing after it: a trusted proxy appends the address
            // it saw to whatever the client sent (found by tests/fuzz.rs).
            (
                "10.0.0.1",
                &[("x-forwarded-for", "\", 198.51.100.7")],
                "198.51.100.7",
            ),
            (
                "10.0.0.1",
                &[("x-forwarded-for", "\"203.0.113.1, 198.51.100.7")],
                "198.51.100.7",
            ),
            (
                "10.0.0.1",
                &[("forwarded", "for=\"x, for=198.51.100.7")],
                "198.51.100.7",
            ),
            (
                "10.0.0.1",
                &[(
                    "forwarded",
                    "for=\"[2001:db8::1]:80, for=198.51.100.7;proto=https",
                )],
                "198.51.100.7",
            ),
            // A node is an address and at most a port (RFC 7239 §6): nothing else after it.
            (
                "10.0.0.1",
                &[("x-forwarded-for", "198.51.100.1, [2001:db8::7]x")],
                "10.0.0.1",
            ),
            (
                "10.0.0.1",
                &[("x-forwarded-for", "198.51.100.1, [2001:db8::7]:99999")],
                "10.0.0.1",
            ),
            (
                "10.0.0.1",
                &[("x-forwarded-for", "198.51.100.1, [2001:db8::7]:")],
                "10.0.0.1",
            ),
            (
                "10.0.0.1",
                &[("x-forwarded-for", "198.51.100.1, [198.51.100.2]")],
                "10.0.0.1",
            ),
            (
                "10.0.0.1",
                &[("x-forwarded-for", "198.51.100.1, 198.51.100.2:+80")],
                "10.0.0.1",
            ),
            (
                "10.0.0.1",
                &[("x-forwarded-for", "198.51.100.1, 198.51.100.2:")],
                "10.0.0.1",
            ),
            // An obfuscated port (RFC 7239 §6.3) is a port.
            (
                "10.0.0.1",
                &[("forwarded", "for=\"198.51.100.2:_proxy1\"")],
                "198.51.100.2",
            ),
            (
                "10.0.0.1",
                &[("forwarded", "for=\"[2001:db8::9]:_a.b-c\"")],
                "2001:db8::9",
            ),
            (
                "10.0.0.1",
                &[("forwarded", "for=\"198.51.100.2:_\"")],
                "10.0.0.1",
            ),
            // No header from a trusted peer: the peer.
            ("10.0.0.1", &[], "10.0.0.1"),
            // IPv4-mapped IPv6 counts as IPv4, for the peer and for hops.
            (
                "::ffff:10.0.0.1",
                &[("x-forwarded-for", "::ffff:198.51.100.4")],
                "198.51.100.4",
            ),
            ("::ffff:203.0.113.9", &[], "203.0.113.9"),
        ];
        for (peer, headers, want) in cases {
            assert_eq!(
                resolve(&t, peer, headers),
                want.parse::<IpAddr>().unwrap(),
                "{peer} {headers:?}"
            );
        }
    }

    /// Two spellings of one client: equal `ClientAddr`s, and the same value from every
    /// consumer (pseudonym, network, country, rate-limit bucket); two clients: different.
    #[test]
    fn every_spelling_of_one_client_is_one_client_everywhere() {
        use crate::config::RateLimit;
        use crate::privacy::geo::GeoDb;
        use crate::privacy::keys::{Key, pseudonym};
        use crate::privacy::net::truncate;
        use crate::ratelimit::{Decision, RateLimiter};

        // (spelling, the same client in canonical form, whether they are one client)
        let cases: &[(&str, &str, bool)] = &[
            // IPv4-mapped IPv6 (RFC 4291 §2.5.5.2) is the IPv4 client, however it is written.
            ("::ffff:1.2.3.4", "1.2.3.4", true),
            ("::ffff:203.0.113.7", "203.0.113.7", true),
            ("::FFFF:81.26.200.10", "81.26.200.10", true),
            ("0:0:0:0:0:ffff:c000:207", "192.0.2.7", true),
            ("::ffff:8.8.8.8", "8.8.8.8", true),
            ("::ffff:0.0.0.0", "0.0.0.0", true),
            ("::ffff:255.255.255.255", "255.255.255.255", true),
            // Other IPv6 forms that embed an IPv4 address are IPv6 clients.
            ("::1.2.3.4", "1.2.3.4", false),
            ("::ffff:0:1.2.3.4", "1.2.3.4", false),
            ("64:ff9b::1.2.3.4", "1.2.3.4", false),
            ("2002:102:304::1", "1.2.3.4", false),
            // Plain addresses are themselves.
            ("1.2.3.4", "1.2.3.4", true),
            ("2001:db8::1", "2001:db8::1", true),
            ("2001:DB8:0:0:0:0:0:1", "2001:db8::1", true),
        ];
        let key = Key::from_bytes([3; 32]);
        let geo = GeoDb::open(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/geo/country.mmdb"),
        )
        .ok();
        let one_request = RateLimit {
            requests_per_second: 1,
            burst: 1,
            ..RateLimit::default()
        };
        for &(spelling, canonical, same) in cases {
            let (a, b) = (
                ClientAddr::new(spelling.parse().unwrap()),
                ClientAddr::new(canonical.parse().unwrap()),
            );
            assert_eq!(a == b, same, "{spelling} and {canonical}");
            assert!(
                a.ip().to_canonical() == a.ip(),
                "{spelling} is not canonical"
            );
            // /128 so that two IPv6 clients never share a pseudonym, network or bucket here.
            let pseudonyms = (pseudonym(&key, a, 128), pseudonym(&key, b, 128));
            assert_eq!(
                pseudonyms.0 == pseudonyms.1,
                same,
                "pseudonym of {spelling}"
            );
            let networks = (truncate(a, 24, 48), truncate(b, 24, 48));
            assert_eq!(networks.0 == networks.1, same, "network of {spelling}");
            let limiter = RateLimiter::new(&RateLimit {
                ipv6_prefix: 128,
                ..one_request.clone()
            })
            .unwrap();
            assert_eq!(limiter.check(a, "/"), Decision::Allow, "{spelling}");
            let second = limiter.check(b, "/");
            assert_eq!(second != Decision::Allow, same, "bucket of {spelling}");
            if same && let Some(db) = &geo {
                assert_eq!(db.lookup(a), db.lookup(b), "country of {spelling}");
            }
        }
        // The country database has 8.8.8.8: the mapped spelling finds it too.
        if let Some(db) = &geo {
            let mapped = ClientAddr::new("::ffff:8.8.8.8".parse().unwrap());
            assert!(db.lookup(mapped).is_some(), "::ffff:8.8.8.8 has no country");
        }
    }
}
