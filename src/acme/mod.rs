//! Certificates by ACME (RFC 8555) from Let's Encrypt or another CA: the account, orders,
//! challenges answered on the proxy's own listeners (TLS-ALPN-01, RFC 8737; HTTP-01, RFC 8555
//! §8.3), storage shared by a fleet, and renewal (RFC 9773 renewal information when the CA
//! offers it, else when a third of the lifetime remains).
//!
//! [`start`] is the one entry: the server calls it once, after the certificates of the files
//! are loaded and before the listeners serve. It loads what the storage holds into the SNI
//! resolver at once, then keeps one task per name ([`renew`]) that orders ([`order`]) when
//! nothing usable is stored or renewal is due, through the CA's HTTPS client ([`client`]),
//! and loads what another instance stored ([`storage`]).
//!
//! Must never crash or stop the proxy (a failure is logged and retried with back-off, the
//! certificate in use kept), log a key, a token or a key authorization, or do blocking file
//! I/O on the runtime.

pub mod client;
pub mod order;
pub mod renew;
pub mod storage;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

pub use renew::{Running, start};
use storage::{ChallengeKind, Storage};

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The challenge responses pending, shared by the ordering task and the listeners that answer
/// them. A fleet's instances share them through the storage, since the CA may reach any
/// instance behind the balancer: a response not held in memory is looked up there.
#[derive(Default)]
pub struct Challenges {
    /// HTTP-01: key authorization by token.
    http01: Mutex<HashMap<String, String>>,
    /// TLS-ALPN-01: the `acmeIdentifier` certificate by name, with the key authorization it
    /// was built from (published here, or read from the storage).
    tls_alpn01: Mutex<HashMap<String, (String, Arc<CertifiedKey>)>>,
    /// The fleet's shared storage (`None`: memory only).
    storage: Option<Storage>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Challenges")
    }
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Challenges {
    /// Challenges published in memory and in `storage`, and looked up in both.
    pub fn with_storage(storage: Storage) -> Challenges {
        Challenges {
            storage: Some(storage),
            ..Challenges::default()
        }
    }

    /// The key authorization to answer `GET /.well-known/acme-challenge/{token}` with, if a
    /// challenge with that token is pending (here or, through the storage, on another
    /// instance). A token that is not base64url is never looked up.
    pub async fn http01(&self, token: &str) -> Option<String> {
        if let Some(found) = locked(&self.http01).get(token).cloned() {
            return Some(found);
        }
        let storage = self.storage.clone()?;
        if !storage::safe_component(token) || token.contains('.') {
            return None;
        }
        let token = token.to_owned();
        tokio::task::spawn_blocking(move || storage.challenge(ChallengeKind::Http01, &token))
            .await
            .ok()?
    }

    /// The certificate to answer a TLS-ALPN-01 handshake (ALPN `acme-tls/1`) for `name` with,
    /// if a challenge for that name is pending (here or, through the storage, on another
    /// instance).
    pub async fn tls_alpn01(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let Some(storage) = self.storage.clone() else {
            return locked(&self.tls_alpn01).get(name).map(|(_, ck)| ck.clone());
        };
        if !storage::safe_component(name) {
            return None;
        }
        let owned = name.to_owned();
        let key_authorization = tokio::task::spawn_blocking(move || {
            storage.challenge(ChallengeKind::TlsAlpn01, &owned)
        })
        .await
        .ok()??;
        if let Some((built_from, ck)) = locked(&self.tls_alpn01).get(name)
            && *built_from == key_authorization
        {
            return Some(ck.clone());
        }
        let ck = alpn_certificate(name, &key_authorization).ok()?;
        locked(&self.tls_alpn01).insert(name.to_owned(), (key_authorization, ck.clone()));
        Some(ck)
    }

    /// Publishes the HTTP-01 response for `token`.
    pub async fn publish_http01(&self, token: &str, key_authorization: &str) -> Result<(), String> {
        locked(&self.http01).insert(token.to_owned(), key_authorization.to_owned());
        self.put(ChallengeKind::Http01, token, key_authorization)
            .await
    }

    /// Publishes the TLS-ALPN-01 response for `name`: a self-signed certificate for `name`
    /// with the critical `acmeIdentifier` extension holding SHA-256 of `key_authorization`.
    pub async fn publish_tls_alpn01(
        &self,
        name: &str,
        key_authorization: &str,
    ) -> Result<(), String> {
        let ck = alpn_certificate(name, key_authorization)?;
        locked(&self.tls_alpn01).insert(name.to_owned(), (key_authorization.to_owned(), ck));
        self.put(ChallengeKind::TlsAlpn01, name, key_authorization)
            .await
    }

    async fn put(&self, kind: ChallengeKind, key: &str, value: &str) -> Result<(), String> {
        let Some(storage) = self.storage.clone() else {
            return Ok(());
        };
        let (key, value) = (key.to_owned(), value.to_owned());
        tokio::task::spawn_blocking(move || storage.put_challenge(kind, &key, &value))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("publishing the challenge in acme.storage: {e}"))
    }

    /// Withdraws the responses of an order that ended.
    pub async fn withdraw(&self, published: Vec<order::Published>) {
        let mut stored = Vec::with_capacity(published.len());
        for p in published {
            match p {
                order::Published::Http01(token) => {
                    locked(&self.http01).remove(&token);
                    stored.push((ChallengeKind::Http01, token));
                }
                order::Published::TlsAlpn01(name) => {
                    locked(&self.tls_alpn01).remove(&name);
                    stored.push((ChallengeKind::TlsAlpn01, name));
                }
            }
        }
        if let Some(storage) = self.storage.clone() {
            let _ = tokio::task::spawn_blocking(move || {
                for (kind, key) in stored {
                    storage.remove_challenge(kind, &key);
                }
            })
            .await;
        }
    }
}

/// The TLS-ALPN-01 certificate (RFC 8737 §3): self-signed, for `name` only, with the critical
/// `id-pe-acmeIdentifier` extension holding SHA-256 of the key authorization.
pub fn alpn_certificate(name: &str, key_authorization: &str) -> Result<Arc<CertifiedKey>, String> {
    let digest = ring::digest::digest(&ring::digest::SHA256, key_authorization.as_bytes());
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest.as_ref())];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    // Not `CertifiedKey::from_der`: its check that key and certificate match parses the
    // certificate as webpki does, which refuses the critical acmeIdentifier extension.
    let signing_key = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            key.serialize_der(),
        )))
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing_key,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_alpn_01_certificate_names_only_the_domain_and_carries_the_critical_digest() {
        let ck = alpn_certificate("a.example", "token.thumbprint").unwrap();
        let der = ck.cert[0].as_ref();
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["DNSName(a.example)"]);
        let acme_id = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .unwrap();
        assert!(acme_id.critical);
        let digest = ring::digest::digest(&ring::digest::SHA256, b"token.thumbprint");
        // An OCTET STRING of 32 bytes: tag 4, length 32, the digest.
        let mut want = vec![4u8, 32];
        want.extend_from_slice(digest.as_ref());
        assert_eq!(acme_id.value, &want[..]);
    }

    #[tokio::test]
    async fn a_challenge_published_by_one_instance_is_answered_by_another_sharing_the_storage() {
        let dir = tempfile::tempdir().unwrap();
        let one = Challenges::with_storage(Storage::open(dir.path()).unwrap());
        let other = Challenges::with_storage(Storage::open(dir.path()).unwrap());
        one.publish_http01("tok", "tok.thumb").await.unwrap();
        one.publish_tls_alpn01("a.example", "alpn.thumb")
            .await
            .unwrap();
        assert_eq!(other.http01("tok").await.as_deref(), Some("tok.thumb"));
        let ck = other.tls_alpn01("a.example").await.unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(ck.cert[0].as_ref()).unwrap();
        assert!(
            cert.extensions()
                .iter()
                .any(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
        );
        // Asked again, the same certificate (built once per key authorization).
        let again = other.tls_alpn01("a.example").await.unwrap();
        assert!(Arc::ptr_eq(&ck, &again));
        // (token or name asked for, which kind): none is pending.
        for token in ["other", "../tok", "", "tok.thumb"] {
            assert_eq!(other.http01(token).await, None, "{token:?}");
        }
        assert!(other.tls_alpn01("b.example").await.is_none());
        one.withdraw(vec![
            order::Published::Http01("tok".into()),
            order::Published::TlsAlpn01("a.example".into()),
        ])
        .await;
        assert_eq!(other.http01("tok").await, None);
        assert!(other.tls_alpn01("a.example").await.is_none());
        assert_eq!(one.http01("tok").await, None);
    }
}
