//! The truncated client network recorded in the access log (the record's `net`).
//!
//! Owns the reduction of a client address to its network at the configured prefix length, and
//! the one IPv6 [`prefix_mask`] (also used by the pseudonym and the rate-limit key). Must never
//! keep, print or return the full address: a [`Network`] holds only the network part, with
//! every host bit zeroed.

use std::fmt;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::client_ip::ClientAddr;

/// A client network with all host bits zeroed, e.g. `203.0.113.0/24` or `2001:db8:1::/48`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Network(IpNet);

impl Network {
    /// The network as an [`IpNet`].
    pub fn as_ipnet(&self) -> IpNet {
        self.0
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The network of `client` at `ipv4_prefix` (IPv4) or `ipv6_prefix` (IPv6) bits.
///
/// An IPv4-mapped IPv6 client (`::ffff:a.b.c.d`) is an IPv4 client ([`ClientAddr::new`]) and is
/// truncated as IPv4. Prefix lengths beyond the address width (config validation rejects them)
/// are clamped. Allocates nothing.
pub fn truncate(client: ClientAddr, ipv4_prefix: u8, ipv6_prefix: u8) -> Network {
    let net = match client.ip() {
        IpAddr::V4(v4) => IpNet::V4(
            Ipv4Net::new(v4, ipv4_prefix.min(32))
                .map(|n| n.trunc())
                .unwrap_or_else(|_| Ipv4Net::from(v4)),
        ),
        IpAddr::V6(v6) => IpNet::V6(
            Ipv6Net::new(v6, ipv6_prefix.min(128))
                .map(|n| n.trunc())
                .unwrap_or_else(|_| Ipv6Net::from(v6)),
        ),
    };
    Network(net)
}

/// The mask keeping the first `prefix` bits of a 128-bit IPv6 address; `prefix` above 128
/// keeps all of them.
///
/// ```
/// use webprom_edge::privacy::net::prefix_mask;
/// assert_eq!(prefix_mask(64), u128::from(u64::MAX) << 64);
/// ```
pub fn prefix_mask(prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => u128::MAX << (128 - u32::from(p.min(128))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_table() {
        // (address, v4 prefix, v6 prefix, expected network)
        let cases: &[(&str, u8, u8, &str)] = &[
            ("203.0.113.7", 24, 48, "203.0.113.0/24"),
            ("203.0.113.255", 24, 48, "203.0.113.0/24"),
            ("203.0.113.7", 16, 48, "203.0.0.0/16"),
            ("203.0.113.7", 32, 48, "203.0.113.7/32"),
            ("203.0.113.7", 0, 48, "0.0.0.0/0"),
            ("203.0.113.7", 40, 48, "203.0.113.7/32"),
            ("10.1.2.3", 8, 48, "10.0.0.0/8"),
            ("2001:db8:1:2::5", 24, 48, "2001:db8:1::/48"),
            ("2001:db8:1:ffff:ffff::1", 24, 48, "2001:db8:1::/48"),
            ("2001:db8:1:2::5", 24, 64, "2001:db8:1:2::/64"),
            ("2001:db8:1:2::5", 24, 128, "2001:db8:1:2::5/128"),
            ("2001:db8:1:2::5", 24, 0, "::/0"),
            ("2001:db8:1:2::5", 24, 200, "2001:db8:1:2::5/128"),
            ("::1", 24, 48, "::/48"),
            // IPv4-mapped IPv6 is an IPv4 client.
            ("::ffff:203.0.113.7", 24, 48, "203.0.113.0/24"),
            ("::ffff:198.51.100.200", 16, 48, "198.51.0.0/16"),
            // IPv4-compatible (deprecated) addresses are IPv6.
            ("::203.0.113.7", 24, 48, "::/48"),
        ];
        for &(ip, v4, v6, want) in cases {
            let ip: IpAddr = ip.parse().unwrap();
            let got = truncate(ClientAddr::new(ip), v4, v6);
            assert_eq!(got.to_string(), want, "{ip} /{v4} /{v6}");
            assert_eq!(got.as_ipnet(), got.as_ipnet().trunc(), "host bits zeroed");
        }
    }

    #[test]
    fn prefix_masks_keep_the_leading_bits() {
        // (prefix, mask)
        let cases: &[(u8, u128)] = &[
            (0, 0),
            (1, 1 << 127),
            (48, u128::MAX << 80),
            (64, u128::from(u64::MAX) << 64),
            (127, u128::MAX << 1),
            (128, u128::MAX),
            (129, u128::MAX),
            (255, u128::MAX),
        ];
        for &(prefix, want) in cases {
            assert_eq!(prefix_mask(prefix), want, "/{prefix}");
        }
    }
}
