//! Certificates by ACME (RFC 8555) from Let's Encrypt or another CA: the account, orders,
//! challenges answered on the proxy's own listeners (TLS-ALPN-01, RFC 8737; HTTP-01, RFC 8555
//! §8.3), storage shared by a fleet, and renewal (RFC 9773 renewal information when the CA
//! offers it, else when a third of the lifetime remains).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::sign::CertifiedKey;

/// The challenge responses pending, shared by the ordering task and the listeners that answer
/// them. A fleet's instances share them through the storage, since the CA may reach any
/// instance behind the balancer.
#[derive(Default)]
pub struct Challenges {
    /// HTTP-01: key authorization by token.
    http01: Mutex<HashMap<String, String>>,
    /// TLS-ALPN-01: the `acmeIdentifier` certificate by name.
    tls_alpn01: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Challenges")
    }
}

impl Challenges {
    /// The key authorization to answer `GET /.well-known/acme-challenge/{token}` with, if a
    /// challenge with that token is pending.
    pub async fn http01(&self, token: &str) -> Option<String> {
        self.http01.lock().unwrap().get(token).cloned()
    }

    /// The certificate to answer a TLS-ALPN-01 handshake (ALPN `acme-tls/1`) for `name` with,
    /// if a challenge for that name is pending.
    pub async fn tls_alpn01(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.tls_alpn01.lock().unwrap().get(name).cloned()
    }
}
