//! The key formulas (README, "Pseudonyms and keys"): the one-way ratchet from one day's key to
//! the next, and the pseudonym of an address under a key.
//!
//! Pure functions of their inputs: no file, no clock, no allocation. Must never derive a key
//! backwards, and never let anything but the pseudonym out of an address.

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{Key, Pseudonym};
use crate::client_ip::ClientAddr;
use crate::privacy::net::prefix_mask;

/// The BLAKE3 `derive_key` context of the ratchet `K[d+1] = derive_key(CONTEXT, K[d])`.
pub const RATCHET_CONTEXT: &str = "webprom-edge pseudonym ratchet v1";

/// The key of the next day: `K[d+1] = BLAKE3::derive_key(RATCHET_CONTEXT, K[d])`.
pub fn next_key(k: &Key) -> Key {
    Key::from_bytes(blake3::derive_key(RATCHET_CONTEXT, k.as_bytes()))
}

/// The pseudonym of `client` under `key` (the README's formula, "Pseudonyms and keys").
///
/// `base64url_nopad(BLAKE3::keyed_hash(key, A)[0..12])`, where A is the 4 bytes of an IPv4
/// address (an IPv4-mapped IPv6 address counts as IPv4: [`ClientAddr::new`]) or the 16 bytes of
/// an IPv6 address with every bit after `pseudonym_ipv6_prefix` zeroed. Allocates nothing.
pub fn pseudonym(key: &Key, client: ClientAddr, pseudonym_ipv6_prefix: u8) -> Pseudonym {
    let hash = match client.ip() {
        IpAddr::V4(v4) => blake3::keyed_hash(key.as_bytes(), &v4.octets()),
        IpAddr::V6(v6) => {
            let masked = u128::from(v6) & prefix_mask(pseudonym_ipv6_prefix);
            blake3::keyed_hash(key.as_bytes(), &masked.to_be_bytes())
        }
    };
    let mut out = [b'A'; 16];
    // Cannot fail: 12 bytes encode to exactly 16 characters without padding.
    let written = URL_SAFE_NO_PAD.encode_slice(&hash.as_bytes()[..12], &mut out);
    debug_assert_eq!(written.ok(), Some(16));
    Pseudonym::from_base64url(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    use crate::privacy::keys::tests::test_key;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The README's pseudonym formula, written out again with other APIs.
    fn independent_pseudonym(key: &Key, addr: &[u8]) -> String {
        let mut h = blake3::Hasher::new_keyed(key.as_bytes());
        h.update(addr);
        let digest = h.finalize();
        base64::engine::general_purpose::URL_SAFE.encode(&digest.as_bytes()[..12])
    }

    #[test]
    fn next_key_is_blake3_derive_key() {
        let k = test_key();
        let mut h = blake3::Hasher::new_derive_key("webprom-edge pseudonym ratchet v1");
        h.update(k.as_bytes());
        assert_eq!(next_key(&k).as_bytes(), h.finalize().as_bytes());
        assert_ne!(next_key(&k), k);
    }

    #[test]
    fn pseudonym_matches_the_formula() {
        let k = test_key();
        let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
        // (address, bytes hashed)
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("203.0.113.7", vec![203, 0, 113, 7]),
            ("::ffff:203.0.113.7", vec![203, 0, 113, 7]),
            ("2001:db8:1:2::5", v6("2001:db8:1:2::").to_vec()),
            (
                "2001:db8:1:2:ffff:ffff:ffff:ffff",
                v6("2001:db8:1:2::").to_vec(),
            ),
            ("2001:db8:1:3::5", v6("2001:db8:1:3::").to_vec()),
            ("::1", v6("::").to_vec()),
        ];
        for (ip, bytes) in &cases {
            let p = pseudonym(&k, ClientAddr::new(ip.parse().unwrap()), 64);
            assert_eq!(p.as_str(), independent_pseudonym(&k, bytes), "{ip}");
            assert_eq!(p.as_str().len(), 16);
            assert_eq!(p.as_str().parse::<Pseudonym>(), Ok(p));
        }
        let p = |ip: &str, prefix| pseudonym(&k, ClientAddr::new(ip.parse().unwrap()), prefix);
        // One /64, one pseudonym; different /64s, different pseudonyms.
        assert_eq!(p("2001:db8:1:2::5", 64), p("2001:db8:1:2:abcd::1", 64));
        assert_ne!(p("2001:db8:1:2::5", 64), p("2001:db8:1:3::5", 64));
        // Other prefixes.
        assert_eq!(p("2001:db8:1:2::5", 48), p("2001:db8:1:3::5", 48));
        assert_ne!(p("2001:db8:1:2::5", 128), p("2001:db8:1:2::6", 128));
        assert_eq!(p("2001:db8::1", 0), p("fe80::1", 0));
        // IPv4-mapped is IPv4; the v4 address and its /64 never collide in bytes hashed.
        assert_eq!(p("::ffff:203.0.113.7", 64), p("203.0.113.7", 64));
        assert_ne!(p("203.0.113.7", 64), p("203.0.113.8", 64));
        // Another day's key gives another pseudonym.
        assert_ne!(
            pseudonym(
                &next_key(&k),
                ClientAddr::new("203.0.113.7".parse().unwrap()),
                64
            ),
            p("203.0.113.7", 64)
        );
    }

    /// Test vectors published in the README (cross-checked with the Python `blake3` package).
    #[test]
    fn readme_test_vectors() {
        let k = test_key();
        assert_eq!(
            hex(k.as_bytes()),
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        );
        let p = |ip: &str| pseudonym(&k, ClientAddr::new(ip.parse().unwrap()), 64).to_string();
        assert_eq!(p("203.0.113.7"), "KgIJgOGaNuNAG_ak");
        assert_eq!(p("2001:db8:1:2::5"), "e49CLkzjeNXEw23A");
        assert_eq!(p("::ffff:203.0.113.7"), "KgIJgOGaNuNAG_ak");
        assert_eq!(
            hex(next_key(&k).as_bytes()),
            "e635d97cb8404c52ec74112b337685a8291ab35804aaaf33905818a855d6df12"
        );
    }
}
