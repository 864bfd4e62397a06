//! The check of every file and directory the configuration names, run by `check-config` and
//! as the first step of `run`, before anything is written: the certificates (or, when they are
//! to be generated, the directories they go to), the GeoIP database, the pseudonym key
//! directory and its key files, the access-log directory, the group its day files get, the
//! CA roots for `https://` upstreams (`upstream.ca_roots`, else the system's), and, when
//! `[acme]` is enabled, its storage directory, its CA roots and its binding's MAC key file,
//! and the fleet secret files (`rate_limit.global.key_secret_file`, `tls.tickets.secret_file`).
//!
//! Must never write, create or generate anything (a directory is tried with a probe file that is
//! removed at once). Every error of the check is a [`ConfigError`] naming the config key, the
//! path, and one reason; [`RunError`] tells the operator's configuration from a failure at run
//! time for the exit status.

use std::path::Path;

use crate::config::{Config, ConfigError};
use crate::epoch::Epoch;
use crate::files::{self, FileError};
use crate::privacy::capture::open_geo;
use crate::privacy::geo::GeoDb;
use crate::privacy::keys::{KeyError, KeyStore};
use crate::proxy::upstream_tls::TlsClient;
use crate::server::tls::{self, CertResolver, TlsError};

/// Why `run` failed, by kind, so the command line gives the exit status without looking inside
/// the error: the operator's configuration (a key, a file it names, a listen address: exit
/// status 2) or a failure at run time (1).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A configuration problem found at start-up.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A certificate that cannot be loaded or generated.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A failure at run time, with its context.
    #[error(transparent)]
    Runtime(#[from] anyhow::Error),
}

impl From<KeyError> for RunError {
    /// The key store failing at run time (its files were checked by [`check`]).
    fn from(e: KeyError) -> Self {
        RunError::Runtime(anyhow::Error::new(e))
    }
}

/// What start-up reads from disk, checked and ready to use.
pub struct Checked {
    /// The certificates; `None` when `tls.self_signed` is to generate the default one.
    pub certs: Option<CertResolver>,
    /// The country database; `None` when `geoip.database` is empty.
    pub geo: Option<GeoDb>,
    /// The TLS client for `https://` upstreams; `None` when there is none.
    pub upstream_tls: Option<TlsClient>,
}

/// Checks every file and directory of `config` without writing anything.
pub fn check(config: &Config) -> Result<Checked, ConfigError> {
    let certs = check_tls(config)?;
    let geo = open_geo(&config.geoip.database)
        .map_err(|e| file_error("geoip.database", e.path(), e.reason()))?;
    check_dir("privacy.key_dir", &config.privacy.key_dir)?;
    KeyStore::check(
        &config.privacy.key_dir,
        config.privacy.key_retention.0,
        Epoch::today(),
    )
    .map_err(|e| ConfigError::invalid("privacy.key_dir", e.to_string()))?;
    check_dir("access_log.dir", &config.access_log.dir)?;
    crate::accesslog::files::Ownership::of(&config.access_log)?;
    let upstream_tls = TlsClient::for_upstreams(&config.upstream)?;
    check_acme(&config.acme)?;
    if let Some(global) = &config.rate_limit.global {
        let path = &global.key_secret_file;
        secret_file(path)
            .map_err(|reason| file_error("rate_limit.global.key_secret_file", path, reason))?;
    }
    check_tickets(&config.tls.tickets)?;
    check_distinct_secrets(config)?;
    Ok(Checked {
        certs,
        geo,
        upstream_tls,
    })
}

/// Whether `run` will generate a self-signed certificate (`tls.self_signed` and the default
/// certificate or its key missing).
pub fn will_generate_certificate(config: &Config) -> bool {
    config.tls.self_signed && !(config.tls.cert.exists() && config.tls.key.exists())
}

/// Loads the certificates, or, when they are to be generated, checks that they can be written
/// and loads the SNI certificates (which are never generated).
fn check_tls(config: &Config) -> Result<Option<CertResolver>, ConfigError> {
    if !will_generate_certificate(config) {
        return CertResolver::load(&config.tls).map(Some).map_err(tls_error);
    }
    for (key, path) in [("tls.cert", &config.tls.cert), ("tls.key", &config.tls.key)] {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        files::check_writable_dir(dir).map_err(|e| {
            let why = dir_reason(dir, e);
            file_error(
                key,
                path,
                format!("cannot be generated: {}: {why}", dir.display()),
            )
        })?;
    }
    if let Some(first) = config.tls.sni.first() {
        let mut sni_only = config.tls.clone();
        sni_only.cert = first.cert.clone();
        sni_only.key = first.key.clone();
        CertResolver::load(&sni_only).map_err(tls_error)?;
    }
    Ok(None)
}

/// The largest `acme.eab_hmac_key_file` read, in bytes.
const MAX_ACME_FILE_BYTES: u64 = 1 << 20;

/// `[acme]`'s files, when it is enabled: `storage` a writable directory or one that can be
/// created, `ca_roots` (if set) a readable PEM file of at least one certificate, each usable as
/// a root ([`load_roots`](crate::proxy::upstream_tls::load_roots)), and
/// `eab_hmac_key_file` (if set) a readable file holding a base64url key ([`eab_hmac_key`]).
fn check_acme(acme: &crate::config::Acme) -> Result<(), ConfigError> {
    if !acme.enabled {
        return Ok(());
    }
    check_dir("acme.storage", &acme.storage)?;
    if let Some(path) = &acme.ca_roots {
        // The reader `upstream.ca_roots` uses: what the ACME client will trust, checked alike.
        crate::proxy::upstream_tls::load_roots(path)
            .map_err(|reason| ConfigError::invalid("acme.ca_roots", reason))?;
    }
    if let Some(path) = &acme.eab_hmac_key_file {
        eab_hmac_key(path).map_err(|reason| file_error("acme.eab_hmac_key_file", path, reason))?;
    }
    Ok(())
}

/// The external account binding's MAC key (RFC 8555 §7.3.4) from the file at `path`: base64url
/// as the CA gives it, with or without `=` padding, surrounding whitespace ignored; at least
/// one byte. The error is the reason alone, and never quotes the file.
pub fn eab_hmac_key(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    use base64::Engine as _;
    let mut text = zeroize::Zeroizing::new(Vec::new());
    files::read_regular(path, MAX_ACME_FILE_BYTES, &mut text).map_err(|e| e.to_string())?;
    let trimmed = text.trim_ascii();
    let unpadded = trimmed
        .strip_suffix(b"==")
        .or_else(|| trimmed.strip_suffix(b"="))
        .unwrap_or(trimmed);
    if unpadded.is_empty() {
        return Err("is empty: it must hold the MAC key the CA gave (base64url)".into());
    }
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(unpadded)
        .map_err(|_| "is not base64url: it must hold the MAC key as the CA gave it".to_owned())?;
    Ok(zeroize::Zeroizing::new(key))
}

/// The most bytes a fleet secret file (`rate_limit.global.key_secret_file`,
/// `tls.tickets.secret_file`) may hold.
const MAX_SECRET_FILE_BYTES: u64 = 4096;

/// The fewest bytes of a fleet secret, surrounding whitespace not counted: 256 bits written as
/// 32 raw bytes, or more as text (`openssl rand -hex 32` gives 64).
pub const MIN_SECRET_BYTES: usize = 32;

/// A secret the fleet shares, from the file at `path`: a regular file that only its owner may
/// read or write (mode 0600 or 0400: no group or other bits), holding at least
/// [`MIN_SECRET_BYTES`] bytes once surrounding ASCII whitespace is trimmed; the bytes are the
/// key material as they are (derive keys from them, never use them twice for two purposes).
/// The error is the reason alone, and never quotes the file.
pub fn secret_file(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    let meta =
        files::read_regular(path, MAX_SECRET_FILE_BYTES, &mut bytes).map_err(|e| e.to_string())?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "has mode {mode:04o}: a fleet secret must be readable by its owner only (chmod 600)"
        ));
    }
    let trimmed = bytes.trim_ascii();
    if trimmed.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "holds {} bytes: at least {MIN_SECRET_BYTES} are needed (e.g. `openssl rand -hex 32`)",
            trimmed.len()
        ));
    }
    Ok(zeroize::Zeroizing::new(trimmed.to_vec()))
}

/// `tls.tickets.secret_file`, when tickets are enabled and it is set: a fleet secret
/// ([`secret_file`]) that is a bare secret or a file the proxy rewrote for the same
/// `tls.tickets.rotation` ([`Anchor::parse`](crate::server::tickets::Anchor::parse)).
fn check_tickets(tickets: &crate::config::Tickets) -> Result<(), ConfigError> {
    let Some(path) = tickets.secret_file.as_ref().filter(|_| tickets.enabled) else {
        return Ok(());
    };
    let content =
        secret_file(path).map_err(|reason| file_error("tls.tickets.secret_file", path, reason))?;
    let rotation = tickets.rotation.0.as_secs();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    crate::server::tickets::Anchor::parse(&content, rotation)
        .and_then(|anchor| anchor.usable_at(rotation, now))
        .map_err(|reason| file_error("tls.tickets.secret_file", path, reason))?;
    Ok(())
}

/// The two fleet secrets must be two files: the ticket secret is rewritten at each rotation,
/// which would change the rate-limit key under the fleet, and one secret must never key two
/// purposes. Compared with symbolic links resolved.
fn check_distinct_secrets(config: &Config) -> Result<(), ConfigError> {
    let (Some(global), Some(tickets)) = (
        config.rate_limit.global.as_ref(),
        config
            .tls
            .tickets
            .secret_file
            .as_ref()
            .filter(|_| config.tls.tickets.enabled),
    ) else {
        return Ok(());
    };
    let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    if real(&global.key_secret_file) == real(tickets) {
        return Err(file_error(
            "tls.tickets.secret_file",
            tickets,
            "is also rate_limit.global.key_secret_file: give each its own secret (the ticket \
             secret is rewritten at each rotation)",
        ));
    }
    Ok(())
}

/// A directory that must exist and be writable, or be creatable.
fn check_dir(key: &str, dir: &Path) -> Result<(), ConfigError> {
    files::check_writable_dir(dir).map_err(|e| file_error(key, dir, dir_reason(dir, e)))
}

/// Why `dir` cannot be used, naming the ancestor at fault when it is not `dir` itself.
fn dir_reason(dir: &Path, e: FileError) -> String {
    match e {
        FileError::NotDirectory(at) if at == dir => "not a directory".to_owned(),
        FileError::NotWritable { dir: at, error } if at == dir => {
            format!("cannot be written: {error}")
        }
        FileError::NotDirectory(at) => {
            format!("cannot be created: {} is not a directory", at.display())
        }
        FileError::NotWritable { dir: at, error } => format!(
            "cannot be created: {} cannot be written: {error}",
            at.display()
        ),
        other => other.to_string(),
    }
}

fn file_error(key: &str, path: &Path, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::invalid(key, format!("{}: {reason}", path.display()))
}

fn tls_error(e: TlsError) -> ConfigError {
    match e {
        TlsError::File { key, path, reason } => file_error(&key, &path, reason),
        TlsError::Generate { path, reason } => file_error("tls.cert", &path, reason),
    }
}

/// Generates the self-signed certificate when asked to (after [`check`] passed), and returns
/// the certificates to serve, with `[tls.tickets]` taken into use
/// ([`CertResolver::start_tickets`]: the secret file is ratcheted and rewritten, the rotation
/// task started).
pub fn certificates(
    config: &Config,
    checked: Option<CertResolver>,
) -> Result<CertResolver, TlsError> {
    let resolver = match checked {
        Some(certs) => certs,
        None => generate_certificates(config)?,
    };
    resolver
        .start_tickets(&config.tls.tickets)
        .map_err(|e| TlsError::File {
            key: "tls.tickets.secret_file".into(),
            path: e.path,
            reason: e.reason,
        })?;
    Ok(resolver)
}

fn generate_certificates(config: &Config) -> Result<CertResolver, TlsError> {
    if let Some(fp) = tls::ensure_self_signed(&config.tls, &config.server.hosts)? {
        tracing::warn!(
            cert = %config.tls.cert.display(),
            key = %config.tls.key.display(),
            sha256 = %fp,
            "generated a self-signed certificate ({})",
            tls::self_signed_purpose(config)
        );
    }
    CertResolver::load(&config.tls)
}
