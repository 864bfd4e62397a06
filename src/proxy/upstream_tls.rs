//! TLS to `https://` upstream servers: the rustls client configuration, built once at start,
//! and the handshake on a new TCP connection ([`Transport`]).
//!
//! Roots: the PEM certificates of `upstream.ca_roots` when it is set (only those), else the
//! system's (`rustls-native-certs`: the bundle OpenSSL would use on this host, or
//! `SSL_CERT_FILE`). The name verified (RFC 9110 §4.3.4), and sent as SNI (RFC 6066 §3), is the
//! server's host, or `upstream.tls_server_name` for every `https://` server; an IP address is
//! verified against the certificate's IP addresses and sent without SNI (RFC 6066 allows only
//! host names in it). ALPN (RFC 7301) offers only `http/1.1`: the pool speaks HTTP/1.1 to
//! upstreams. TLS 1.2 and 1.3 from the ring provider; sessions resume from rustls's in-memory
//! cache.
//!
//! Must never: accept a certificate that does not verify, or put anything from a request into
//! an error (a handshake error names the server's configured authority and rustls's reason).

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::{self, ConfigError, UpstreamUrl};

/// Why the system's roots cannot serve (none found).
const NO_SYSTEM_ROOTS: &str = "unset, and no system CA certificate was found for the https:// upstreams \
     (install ca-certificates, or set upstream.ca_roots to a PEM file)";

/// The largest `upstream.ca_roots` file read, in bytes (a full public CA bundle is ~250 KB).
const MAX_ROOTS_BYTES: u64 = 4 << 20;

/// The TLS client for the `https://` servers: one rustls configuration, shared by every
/// connection (cheap to clone).
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    /// `upstream.tls_server_name`.
    name: Option<ServerName<'static>>,
}

impl TlsClient {
    /// The client for `cfg`'s `https://` servers: `None` when there is none. `upstream.ca_roots`,
    /// when set, is read and checked even then, so a bad file is found at start.
    ///
    /// Errors (naming the key and the file): `ca_roots` unreadable, not a regular file, over
    /// 4 MiB, with no PEM certificate or one that does not parse; no system root found while
    /// `ca_roots` is unset; an invalid `tls_server_name`.
    pub fn for_upstreams(cfg: &config::Upstream) -> Result<Option<TlsClient>, ConfigError> {
        let configured = match &cfg.ca_roots {
            Some(path) => Some(
                load_roots(path).map_err(|why| ConfigError::invalid("upstream.ca_roots", why))?,
            ),
            None => None,
        };
        if !cfg.servers.iter().any(|s| s.url.tls) {
            if cfg.ca_roots.is_some() || cfg.tls_server_name.is_some() {
                tracing::warn!(
                    "upstream.ca_roots or upstream.tls_server_name is set, but no server in upstream.servers is https://: unused"
                );
            }
            return Ok(None);
        }
        let roots = match configured {
            Some(roots) => roots,
            None => crate::server::tls::system_roots()
                .ok_or_else(|| NO_SYSTEM_ROOTS.to_owned())
                .map_err(|why| ConfigError::invalid("upstream.ca_roots", why))?,
        };
        let name = match &cfg.tls_server_name {
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
                ConfigError::invalid(
                    "upstream.tls_server_name",
                    format!("{name:?} is not a DNS name or an IP address"),
                )
            })?),
            None => None,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::invalid("upstream.ca_roots", e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(TlsClient {
            connector: TlsConnector::from(Arc::new(tls)),
            name,
        }))
    }
}

/// How one server's connections are made.
#[derive(Clone)]
pub enum Transport {
    /// `http://`: the TCP connection as it is.
    Plain,
    /// `https://`: a TLS handshake verifying `name`.
    Tls {
        /// The shared client.
        client: TlsClient,
        /// The name verified and sent as SNI.
        name: ServerName<'static>,
    },
    /// `https://` without a usable TLS client (its configuration failed to load): every
    /// connection fails with this reason.
    Unusable(String),
}

impl Transport {
    /// The transport for `server`, with `client` for `https://` servers.
    pub fn for_server(server: &UpstreamUrl, client: Option<&TlsClient>) -> Transport {
        if !server.tls {
            return Transport::Plain;
        }
        let Some(client) = client else {
            return Transport::Unusable(
                "no TLS client configuration (see the start-up log)".into(),
            );
        };
        let name = match &client.name {
            Some(name) => name.clone(),
            None => match ServerName::try_from(server.host().to_owned()) {
                Ok(name) => name,
                Err(_) => {
                    return Transport::Unusable(
                        "the host is not a name a certificate can be verified for".into(),
                    );
                }
            },
        };
        Transport::Tls {
            client: client.clone(),
            name,
        }
    }
}

/// Performs the TLS handshake on `tcp` for `name`. The error is rustls's reason (unknown
/// issuer, name mismatch, expired, not TLS, …); it holds nothing from a request.
pub async fn handshake(
    client: &TlsClient,
    name: &ServerName<'static>,
    tcp: TcpStream,
) -> io::Result<TlsStream<TcpStream>> {
    client.connector.connect(name.clone(), tcp).await
}

/// What an operator can do about a failed handshake, for the warning that names it: `""`, or
/// a sentence (with its leading space) naming the config key to change, for an unknown issuer,
/// a certificate for another name, and a server that does not answer in TLS.
pub fn hint(e: &io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<Error>());
    match inner {
        Some(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            " (is the issuing CA in upstream.ca_roots, or in the system's roots when it is unset?)"
        }
        Some(Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => " (set upstream.tls_server_name to a name the certificate carries)",
        Some(Error::InvalidMessage(_) | Error::InappropriateMessage { .. }) => {
            " (does the server speak TLS? write http:// for a cleartext one)"
        }
        _ if e.kind() == io::ErrorKind::UnexpectedEof => {
            " (does the server speak TLS? write http:// for a cleartext one)"
        }
        _ => "",
    }
}

/// The roots in the PEM file at `path`: every `CERTIFICATE` in it, at least one, each a valid
/// CA certificate. The error names the file and the reason.
pub fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let at = |why: String| format!("{}: {why}", path.display());
    let certs = crate::server::tls::read_certificates(path, MAX_ROOTS_BYTES).map_err(at)?;
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            at(format!(
                "certificate {} is not usable as a root: {e}",
                i + 1
            ))
        })?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn a_roots_file_that_cannot_be_used_is_named_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let good = ca_pem();
        // (file name, contents or None for absent, what the error says)
        let rows: [(&str, Option<String>, &str); 6] = [
            ("absent.pem", None, "No such file"),
            ("empty.pem", Some(String::new()), "no PEM CERTIFICATE"),
            (
                "key-only.pem",
                Some(rcgen::KeyPair::generate().unwrap().serialize_pem()),
                "no PEM CERTIFICATE",
            ),
            (
                "bad-base64.pem",
                Some("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".into()),
                "not valid PEM",
            ),
            (
                "not-der.pem",
                Some("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into()),
                "certificate 1 is not usable",
            ),
            (
                "second-bad.pem",
                Some(format!(
                    "{good}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
                )),
                "certificate 2 is not usable",
            ),
        ];
        for (name, contents, says) in rows {
            let path = dir.path().join(name);
            if let Some(text) = &contents {
                std::fs::write(&path, text).unwrap();
            }
            let e = load_roots(&path)
                .err()
                .unwrap_or_else(|| panic!("{name}: loaded"));
            assert!(e.starts_with(&path.display().to_string()), "{name}: {e}");
            assert!(e.contains(says), "{name}: {e}");
        }
        // A directory is not a roots file.
        let e = load_roots(dir.path()).expect_err("a directory is refused");
        assert!(e.starts_with(&dir.path().display().to_string()), "{e}");
    }

    #[test]
    fn every_certificate_of_a_roots_file_is_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("two.pem");
        std::fs::write(&path, format!("{}{}", ca_pem(), ca_pem())).unwrap();
        assert_eq!(load_roots(&path).unwrap().len(), 2);
    }

    #[test]
    fn only_https_servers_get_tls_and_the_configured_name_overrides_each_host() {
        let url = |s: &str| s.parse::<config::UpstreamServer>().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let roots = dir.path().join("ca.pem");
        std::fs::write(&roots, ca_pem()).unwrap();
        let cfg = |servers: &[&str], name: Option<&str>| config::Upstream {
            servers: servers.iter().map(|s| url(s)).collect(),
            ca_roots: Some(roots.clone()),
            tls_server_name: name.map(str::to_owned),
            ..Default::default()
        };
        assert!(
            TlsClient::for_upstreams(&cfg(&["http://a.test"], None))
                .unwrap()
                .is_none()
        );
        // (server, tls_server_name, the name verified; None: cleartext)
        let rows = [
            ("http://a.test:8080", None, None),
            ("https://a.test", None, Some("a.test")),
            (
                "https://a.test:8443",
                Some("origin.test"),
                Some("origin.test"),
            ),
            ("https://127.0.0.1:8443", None, Some("127.0.0.1")),
            ("https://[::1]:8443", None, Some("::1")),
            (
                "https://127.0.0.1",
                Some("origin.test"),
                Some("origin.test"),
            ),
            ("http://127.0.0.1", Some("origin.test"), None),
        ];
        for (server, name, verified) in rows {
            let client = TlsClient::for_upstreams(&cfg(&[server, "https://b.test"], name))
                .unwrap()
                .expect("an https server");
            let got = match Transport::for_server(&url(server).url, Some(&client)) {
                Transport::Plain => None,
                Transport::Tls { name, .. } => Some(name.to_str().into_owned()),
                Transport::Unusable(why) => panic!("{server}: {why}"),
            };
            assert_eq!(got.as_deref(), verified, "{server} {name:?}");
        }
        assert!(matches!(
            Transport::for_server(&url("https://a.test").url, None),
            Transport::Unusable(_)
        ));
    }
}
