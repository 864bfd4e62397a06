//! Pseudonym keys and the pseudonyms made with them (README, "Pseudonyms and keys"; policy
//! P10–P12).
//!
//! Owns the key type ([`Key`], zeroed on drop, never printed) and the pseudonym type
//! ([`Pseudonym`]); [`formula`] is the ratchet and the pseudonym formula, pure; [`store`] is
//! the key files in `key_dir` (one per kept epoch, their destruction after `key_retention`).
//! Must never print, log or put in an error message a key or an address, never derive a key
//! backwards or guess a destroyed one, and never leave a key file readable by anyone but its
//! owner.

pub mod formula;
pub mod schedule;
pub mod store;

use std::fmt;
use std::str::FromStr;

use zeroize::Zeroize;

pub use self::formula::{RATCHET_CONTEXT, next_key, pseudonym};
pub use self::store::{KeyError, KeyState, KeyStore, RatchetOutcome};
/// A 32-byte pseudonym key. Zeroed on drop; never printed.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl Key {
    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key(bytes)
    }

    /// A new key from the operating system's random source.
    pub fn random() -> Result<Key, KeyError> {
        let mut key = Key([0; 32]);
        getrandom::fill(key.as_mut_bytes()).map_err(KeyError::Random)?;
        Ok(key)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The bytes, to be filled in place (a key read from a file leaves no copy behind).
    fn as_mut_bytes(&mut self) -> &mut [u8; 32] {
        &mut self.0
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl PartialEq for Key {
    /// Compares in constant time.
    fn eq(&self, other: &Key) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Eq for Key {}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// A client pseudonym: 16 base64url characters (96 bits of a keyed BLAKE3 hash).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pseudonym([u8; 16]);

impl Pseudonym {
    /// A pseudonym from its 16 base64url characters (the formula's output).
    fn from_base64url(chars: [u8; 16]) -> Pseudonym {
        Pseudonym(chars)
    }

    /// The pseudonym as text.
    pub fn as_str(&self) -> &str {
        // Always ASCII: built only from the base64url alphabet.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pseudonym({:?})", self.as_str())
    }
}

/// Text that is not a pseudonym (16 base64url characters). Does not echo the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a pseudonym is 16 characters from A-Z, a-z, 0-9, '-' and '_'")]
pub struct PseudonymParseError;

impl FromStr for Pseudonym {
    type Err = PseudonymParseError;

    fn from_str(s: &str) -> Result<Pseudonym, PseudonymParseError> {
        let bytes: [u8; 16] = s.as_bytes().try_into().map_err(|_| PseudonymParseError)?;
        if bytes
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        {
            Ok(Pseudonym(bytes))
        } else {
            Err(PseudonymParseError)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The test key of every key test: bytes 0, 1, …, 31.
    pub(crate) fn test_key() -> Key {
        let mut b = [0u8; 32];
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u8;
        }
        Key::from_bytes(b)
    }

    #[test]
    fn key_debug_hides_bytes() {
        assert_eq!(format!("{:?}", test_key()), "Key(..)");
    }

    #[test]
    fn pseudonym_parsing() {
        // (input, valid)
        let cases: &[(&str, bool)] = &[
            ("AAAAAAAAAAAAAAAA", true),
            ("abcdefghij-_0123", true),
            ("abcdefghij-_012", false),
            ("abcdefghij-_01234", false),
            ("abcdefghij+/0123", false),
            ("abcdefghij=_0123", false),
            ("", false),
            ("ééééééé-_0123", false),
        ];
        for &(input, ok) in cases {
            let parsed = input.parse::<Pseudonym>();
            assert_eq!(parsed.is_ok(), ok, "{input:?}");
            if let Ok(p) = parsed {
                assert_eq!(p.to_string(), input);
            } else {
                assert!(!parsed.unwrap_err().to_string().contains(input) || input.is_empty());
            }
        }
    }
}
