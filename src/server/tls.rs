//! TLS: certificates from PEM files, the SNI resolver, self-signed development certificates,
//! atomic reload, the expiry gauge of every certificate served
//! (`tls_certificate_expiry_timestamp_seconds{name}`), and the session tickets of
//! `[tls.tickets]` ([`super::tickets`]), reloaded with the certificates.
//!
//! Only TLS 1.2 and 1.3 with the ring provider are offered, with ALPN `h2` and `http/1.1`.
//! A reload builds the whole new certificate set first and swaps it in only if every file
//! loaded, so a bad file on disk never replaces a good certificate.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use prometheus::IntGaugeVec;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config;
use crate::files;
use crate::server::tickets::{TicketError, Ticketer};

/// The largest certificate chain or key file read, in bytes.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// A certificate or key that could not be used, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file is missing or unreadable, or is not PEM of the expected kind.
    #[error("{key} {path}: {reason}")]
    File {
        /// The config key that names the file (`tls.cert`, `tls.sni[0].key`, …).
        key: String,
        /// The file.
        path: PathBuf,
        /// Why it could not be used.
        reason: String,
    },
    /// A self-signed certificate could not be generated.
    #[error("generating a self-signed certificate at {path}: {reason}")]
    Generate {
        /// Where it was to be written.
        path: PathBuf,
        /// Why it failed.
        reason: String,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in use: a default and more by SNI host name.
struct CertSet {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` is stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl CertSet {
    fn load(tls: &config::Tls) -> Result<CertSet, TlsError> {
        let provider = provider();
        let default = load_pair(&provider, &tls.cert, &tls.key, "tls")?;
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, sni) in tls.sni.iter().enumerate() {
            let pair = load_pair(&provider, &sni.cert, &sni.key, &format!("tls.sni[{i}]"))?;
            let host = sni.host.to_ascii_lowercase();
            match host.strip_prefix("*.") {
                Some(parent) => wildcard.insert(parent.to_owned(), pair),
                None => exact.insert(host, pair),
            };
        }
        Ok(CertSet {
            default,
            exact,
            wildcard,
        })
    }

    fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return self.default.clone();
        };
        // rustls hands over SNI already lowercased and validated as a DNS name.
        if let Some(ck) = self.exact.get(name) {
            return ck.clone();
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(ck) = self.wildcard.get(parent)
        {
            return ck.clone();
        }
        self.default.clone()
    }

    /// Each certificate by the name the config gives it: `default` for `[tls]`'s own, and
    /// `tls.sni[i].host` (lowercase) for the others. The last `tls.sni` entry of a host wins,
    /// as it does in [`CertSet::pick`].
    fn named(&self) -> impl Iterator<Item = (String, &Arc<CertifiedKey>)> {
        let exact = self.exact.iter().map(|(host, ck)| (host.clone(), ck));
        let wildcard = self
            .wildcard
            .iter()
            .map(|(parent, ck)| (format!("*.{parent}"), ck));
        std::iter::once((DEFAULT_NAME.to_owned(), &self.default))
            .chain(exact)
            .chain(wildcard)
    }
}

/// The `name` of the `[tls]` certificate in `tls_certificate_expiry_timestamp_seconds`.
pub const DEFAULT_NAME: &str = "default";

fn load_pair(
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
    section: &str,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let file_err = |which: &str, path: &Path, reason: String| TlsError::File {
        key: format!("{section}.{which}"),
        path: path.to_owned(),
        reason,
    };
    let certs = read_certificates(cert_path, MAX_PEM_BYTES)
        .map_err(|reason| file_err("cert", cert_path, reason))?;
    let mut pem = zeroize::Zeroizing::new(Vec::new());
    files::read_regular(key_path, MAX_PEM_BYTES, &mut pem)
        .map_err(|e| file_err("key", key_path, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| file_err("key", key_path, pem_reason(e)))?;
    CertifiedKey::from_der(certs, key, provider)
        .map_err(|e| {
            file_err(
                "key",
                key_path,
                format!("unusable with certificate {}: {e}", cert_path.display()),
            )
        })
        .map(Arc::new)
}

/// The certificates of the PEM file at `path`, in order: at least one. Read whole first, from
/// a regular file of at most `max` bytes (never waiting on a named pipe). The error is the
/// reason alone; the caller names the file and its key. Used for the served chains and for
/// `upstream.ca_roots`.
pub(crate) fn read_certificates(
    path: &Path,
    max: u64,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut pem = Vec::new();
    files::read_regular(path, max, &mut pem).map_err(|e| e.to_string())?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(pem_reason)?;
    if certs.is_empty() {
        return Err("no PEM CERTIFICATE found".into());
    }
    Ok(certs)
}

/// The system's CA roots (`rustls-native-certs`: on Linux the bundle OpenSSL would use, or
/// `SSL_CERT_FILE` / `SSL_CERT_DIR`); `None` when none is found. A store that cannot be read
/// is warned about.
pub(crate) fn system_roots() -> Option<rustls::RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "a system CA certificate store could not be read");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    (added > 0).then_some(roots)
}

fn pem_reason(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        rustls_pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind".into(),
        other => format!("not valid PEM: {other:?}"),
    }
}

/// What a certificate says about itself, read from its DER (RFC 5280 §4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// `notBefore`, Unix seconds.
    pub not_before: i64,
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
    /// The issuer's distinguished name, RFC 4514 form (`CN=R11, O=Let's Encrypt, C=US`).
    pub issuer: String,
    /// The serial number, lowercase hex with colons, as `openssl x509 -serial` groups it.
    pub serial: String,
}

impl CertFacts {
    /// Reads the validity, issuer and serial of a DER certificate; the error says why it does
    /// not parse.
    pub fn of(der: &[u8]) -> Result<CertFacts, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let validity = cert.validity();
        Ok(CertFacts {
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string(),
        })
    }
}

/// Picks the certificate for each handshake from a set that can be swapped atomically, and
/// keeps the expiry gauge of every certificate served once [`CertResolver::report_expiry`]
/// has handed it the gauge.
pub struct CertResolver {
    set: ArcSwap<CertSet>,
    /// Certificates obtained by ACME, by exact name: chosen before the files' (`[acme]`).
    acme: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    /// Held while the gauge is brought up to date, so that a reload and an install never
    /// interleave their updates. Never held on the handshake path.
    expiry: Mutex<Expiry>,
    /// The session-ticket keys: inert until [`CertResolver::start_tickets`].
    tickets: Arc<Ticketer>,
}

/// `tls_certificate_expiry_timestamp_seconds{name}` and the names it has a series for.
#[derive(Default)]
struct Expiry {
    gauge: Option<IntGaugeVec>,
    published: HashSet<String>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertResolver")
    }
}

impl CertResolver {
    /// Loads every certificate of `[tls]`.
    pub fn load(tls: &config::Tls) -> Result<CertResolver, TlsError> {
        Ok(CertResolver {
            set: ArcSwap::from_pointee(CertSet::load(tls)?),
            acme: ArcSwap::from_pointee(HashMap::new()),
            expiry: Mutex::default(),
            tickets: Arc::new(Ticketer::new()),
        })
    }

    /// Takes `[tls.tickets]` into use ([`Ticketer::start`]): reads, ratchets and rewrites the
    /// secret file, and inside a tokio runtime starts the rotation task. Before it, no ticket
    /// is issued. Blocking.
    pub fn start_tickets(&self, tickets: &config::Tickets) -> Result<(), TicketError> {
        self.tickets.start(tickets)
    }

    /// The session-ticket keys, for [`server_config`].
    pub fn ticketer(&self) -> Arc<Ticketer> {
        self.tickets.clone()
    }

    /// Keeps `gauge` (`tls_certificate_expiry_timestamp_seconds{name}`) at the not-after time
    /// (Unix seconds) of every certificate served, from now on: set at once, and again at each
    /// [`CertResolver::reload`] and [`CertResolver::install`]; a name no longer served loses
    /// its series. `name` is `default`, a `tls.sni[i].host`, or an `[acme]` domain: never a
    /// name a client sent.
    pub fn report_expiry(&self, gauge: IntGaugeVec) {
        self.lock_expiry().gauge = Some(gauge);
        self.publish_expiry();
    }

    /// The name each certificate is served for and its not-after time (Unix seconds): the
    /// files' ([`CertSet::named`]), then the ACME certificates, which win for their exact
    /// name as they do in a handshake. A certificate whose leaf does not parse is left out,
    /// with a warning naming it.
    pub fn expiries(&self) -> HashMap<String, i64> {
        let set = self.set.load();
        let acme = self.acme.load();
        let all = set
            .named()
            .chain(acme.iter().map(|(name, ck)| (name.clone(), ck)));
        let mut out = HashMap::new();
        for (name, certified) in all {
            let facts = certified
                .end_entity_cert()
                .map_err(|e| e.to_string())
                .and_then(|leaf| CertFacts::of(leaf));
            match facts {
                Ok(facts) => {
                    out.insert(name, facts.not_after);
                }
                Err(reason) => {
                    tracing::warn!(%name, %reason, "cannot read the expiry of a served certificate: no tls_certificate_expiry_timestamp_seconds for it");
                }
            }
        }
        out
    }

    /// Brings the gauge up to date with the certificates now served.
    fn publish_expiry(&self) {
        let mut expiry = self.lock_expiry();
        let Some(gauge) = expiry.gauge.clone() else {
            return;
        };
        let served = self.expiries();
        for stale in expiry.published.iter().filter(|n| !served.contains_key(*n)) {
            let _ = gauge.remove_label_values(&[stale]);
        }
        for (name, not_after) in &served {
            gauge.with_label_values(&[name]).set(*not_after);
        }
        expiry.published = served.into_keys().collect();
    }

    fn lock_expiry(&self) -> std::sync::MutexGuard<'_, Expiry> {
        // The state is whole after every statement: a panic elsewhere leaves nothing half done.
        self.expiry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Serves `certified` for the exact name `name` from the next handshake on, in place of
    /// any certificate of the files (`[tls]`) and any earlier one for `name`. Open connections
    /// keep the certificate they were made with.
    pub fn install(&self, name: &str, certified: Arc<CertifiedKey>) {
        self.acme.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(name.to_owned(), certified.clone());
            map
        });
        self.publish_expiry();
    }

    /// Loads the certificates again and swaps them in; on error the old ones stay. The expiry
    /// gauge follows: a `tls.sni` host removed loses its series. `[tls.tickets]` is taken
    /// into use first, whatever becomes of the certificates (once tickets were started):
    /// on error the keys in use stay, said in an error line naming the file.
    pub fn reload(&self, tls: &config::Tls) -> Result<(), TlsError> {
        if self.tickets.started() {
            match self.tickets.start(&tls.tickets) {
                Ok(()) => tracing::info!("reloaded tls.tickets"),
                Err(e) => {
                    tracing::error!(key = "tls.tickets.secret_file", error = %e, "session-ticket reload failed; keeping the keys in use")
                }
            }
        }
        self.set.store(Arc::new(CertSet::load(tls)?));
        self.publish_expiry();
        Ok(())
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name()
            && let Some(certified) = self.acme.load().get(name)
        {
            return Some(certified.clone());
        }
        Some(self.set.load().pick(hello.server_name()))
    }
}

/// The rustls server configuration: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`. Sessions are
/// resumed only by the resolver's tickets ([`CertResolver::ticketer`]; two TLS 1.3 tickets
/// after each full handshake and one after each resumption, as rustls sends): no session-ID
/// cache, so with `tls.tickets.enabled = false` nothing is resumed.
pub fn server_config(resolver: Arc<CertResolver>) -> rustls::ServerConfig {
    let ticketer = resolver.ticketer();
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = ticketer;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config
}

/// The rustls configuration of a TLS-ALPN-01 answer (RFC 8737 §3): `certified` (the
/// challenge certificate) for any name, ALPN `acme-tls/1` only.
pub fn challenge_config(certified: Arc<CertifiedKey>) -> rustls::ServerConfig {
    #[derive(Debug)]
    struct Fixed(Arc<CertifiedKey>);
    impl ResolvesServerCert for Fixed {
        fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(certified)));
    config.alpn_protocols = vec![crate::acme::ACME_TLS_ALPN.to_vec()];
    config
}

/// With `self_signed = true` and no certificate on disk, generates one for `hosts` (plus
/// `localhost`, `127.0.0.1` and `::1`) at the configured paths, the key with mode 0600.
/// Returns the SHA-256 fingerprint of a generated certificate.
pub fn ensure_self_signed(tls: &config::Tls, hosts: &[String]) -> Result<Option<String>, TlsError> {
    if !tls.self_signed || (tls.cert.exists() && tls.key.exists()) {
        return Ok(None);
    }
    let gen_err = |reason: String| TlsError::Generate {
        path: tls.cert.clone(),
        reason,
    };
    let mut names: Vec<String> = hosts.to_vec();
    for extra in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|n| n == extra) {
            names.push(extra.to_owned());
        }
    }
    let certified =
        rcgen::generate_simple_self_signed(names).map_err(|e| gen_err(e.to_string()))?;
    for path in [&tls.cert, &tls.key] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)
                .map_err(|e| gen_err(format!("creating {}: {e}", dir.display())))?;
        }
    }
    write_file(
        &tls.key,
        certified.key_pair.serialize_pem().as_bytes(),
        0o600,
    )
    .map_err(|e| gen_err(format!("writing {}: {e}", tls.key.display())))?;
    write_file(&tls.cert, certified.cert.pem().as_bytes(), 0o644)
        .map_err(|e| gen_err(format!("writing {}: {e}", tls.cert.display())))?;
    Ok(Some(fingerprint(certified.cert.der())))
}

/// What the warning about a generated self-signed certificate says: with `[acme]` on it is the
/// placeholder served until the first certificates are issued (and to clients without SNI),
/// else a development certificate.
pub fn self_signed_purpose(config: &config::Config) -> &'static str {
    if config.acme.enabled {
        "a placeholder, served to clients without SNI, to names outside acme.domains, and to each \
         of acme.domains until its first certificate is issued"
    } else {
        "development only; set tls.self_signed = false in production"
    }
}

/// Writes a generated file atomically through `<path>.tmp` ([`crate::files::write_atomically`]):
/// the temporary file is made anew, so `mode` (at most, through the umask) holds whatever was
/// left at that name.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    crate::files::write_atomically(path, &path.with_extension("tmp"), mode, bytes)
}

/// SHA-256 of a DER certificate, as colon-separated hex.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = String::with_capacity(95);
    for (i, b) in digest.as_ref().iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&format!("{b:02X}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Writes a self-signed certificate for `name` expiring on `year`-01-01 to
    /// `dir/{file}.pem` and its key to `dir/{file}.key`; returns (cert, key, not-after).
    fn cert_until(dir: &Path, file: &str, name: &str, year: i32) -> (PathBuf, PathBuf, i64) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(year, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (
            dir.join(format!("{file}.pem")),
            dir.join(format!("{file}.key")),
        );
        fs::write(&c, cert.pem()).unwrap();
        fs::write(&k, key.serialize_pem()).unwrap();
        let not_after = time::Date::from_calendar_date(year, time::Month::January, 1)
            .unwrap()
            .midnight()
            .assume_utc()
            .unix_timestamp();
        (c, k, not_after)
    }

    fn sni(host: &str, (cert, key, _): &(PathBuf, PathBuf, i64)) -> config::SniCert {
        config::SniCert {
            host: host.to_owned(),
            cert: cert.clone(),
            key: key.clone(),
        }
    }

    fn gauge_values(gauge: &IntGaugeVec) -> Vec<(String, i64)> {
        use prometheus::core::Collector as _;
        let mut out: Vec<(String, i64)> = gauge
            .collect()
            .iter()
            .flat_map(|family| family.get_metric().to_vec())
            .map(|m| {
                let name = m.get_label()[0].value().to_owned();
                (name, m.get_gauge().get_value() as i64)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn the_expiry_gauge_follows_every_certificate_served_through_reload_and_install() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let default = cert_until(d, "default", "localhost", 2031);
        let ads = cert_until(d, "ads", "ads.example", 2032);
        let wild = cert_until(d, "wild", "*.cdn.example", 2033);
        let ads_renewed = cert_until(d, "ads2", "ads.example", 2034);
        let acme = cert_until(d, "acme", "click.example", 2035);
        let tls = config::Tls {
            cert: default.0.clone(),
            key: default.1.clone(),
            sni: vec![sni("Ads.Example", &ads), sni("*.cdn.example", &wild)],
            ..config::Tls::default()
        };
        let resolver = CertResolver::load(&tls).unwrap();
        let gauge = IntGaugeVec::new(prometheus::Opts::new("expiry", "test"), &["name"]).unwrap();
        resolver.report_expiry(gauge.clone());
        let s = |n: &str| n.to_owned();
        // Rows: the gauge after each step, one row per step.
        assert_eq!(
            gauge_values(&gauge),
            [
                (s("*.cdn.example"), wild.2),
                (s("ads.example"), ads.2),
                (s("default"), default.2)
            ],
            "at start"
        );

        // Reload: ads.example's certificate replaced, the wildcard removed from the config.
        let reloaded = config::Tls {
            sni: vec![sni("ads.example", &ads_renewed)],
            ..tls.clone()
        };
        resolver.reload(&reloaded).unwrap();
        assert_eq!(
            gauge_values(&gauge),
            [(s("ads.example"), ads_renewed.2), (s("default"), default.2)],
            "after a reload"
        );

        // A reload that fails keeps the gauge as it was.
        let broken = config::Tls {
            sni: vec![sni(
                "ads.example",
                &(d.join("missing.pem"), ads.1.clone(), 0),
            )],
            ..tls.clone()
        };
        assert!(resolver.reload(&broken).is_err());
        assert_eq!(
            gauge_values(&gauge),
            [(s("ads.example"), ads_renewed.2), (s("default"), default.2)],
            "after a failed reload"
        );

        // An ACME certificate installed: its name appears; installed for a name the files
        // also serve, it replaces theirs (it is the one served).
        let load = |(c, k, _): &(PathBuf, PathBuf, i64)| load_pair(&provider(), c, k, "t").unwrap();
        resolver.install("click.example", load(&acme));
        resolver.install("ads.example", load(&ads));
        assert_eq!(
            gauge_values(&gauge),
            [
                (s("ads.example"), ads.2),
                (s("click.example"), acme.2),
                (s("default"), default.2)
            ],
            "after installs"
        );
        // The installed ones survive a reload of the files.
        resolver.reload(&reloaded).unwrap();
        assert_eq!(
            gauge_values(&gauge),
            [
                (s("ads.example"), ads.2),
                (s("click.example"), acme.2),
                (s("default"), default.2)
            ],
            "installed, then a reload"
        );
    }

    #[test]
    fn a_generated_private_key_is_owner_only_whatever_was_left_at_its_temporary_name() {
        // (mode of a file left at the key's temporary name, or none)
        for left in [None, Some(0o644), Some(0o666), Some(0o600)] {
            let dir = tempfile::tempdir().unwrap();
            let tls = config::Tls {
                cert: dir.path().join("cert.pem"),
                key: dir.path().join("key.pem"),
                ..config::Tls::default()
            };
            if let Some(mode) = left {
                let stale = tls.key.with_extension("tmp");
                fs::write(&stale, b"left over").unwrap();
                fs::set_permissions(&stale, fs::Permissions::from_mode(mode)).unwrap();
            }
            ensure_self_signed(&tls, &["localhost".to_owned()]).unwrap();
            let mode = fs::metadata(&tls.key).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o600, "left {left:?}");
            let pem = fs::read_to_string(&tls.key).unwrap();
            assert!(pem.contains("PRIVATE KEY"), "left {left:?}");
        }
    }
}
