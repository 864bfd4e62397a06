//! The ACME storage directory (`acme.storage`), which a fleet's instances may share: the
//! account, each name's certificate, key and renewal facts, the fleet's advisory locks and the
//! challenge responses pending.
//!
//! ```text
//! <storage>/                              0700 (created; an existing one is left as it is)
//!   accounts/<dirkey>.json                0600 the account (instant-acme credentials)
//!   certificates/<name>/cert.pem          the chain, leaf first (written last, atomically)
//!   certificates/<name>/key.pem           0600 PKCS#8 PEM (written first, atomically)
//!   certificates/<name>/meta.json         {"directory", "issued_at", "renewal_window"}
//!   certificates/<name>/retry.json        {"failures", "retry_at_ms"}: the fleet's back-off
//!   locks/<name>.lock, locks/account.lock flock(2) advisory locks
//!   challenges/http-01/<token>            key authorization
//!   challenges/tls-alpn-01/<name>         key authorization
//! ```
//!
//! Every function here does blocking file I/O: callers run it off the runtime
//! (`spawn_blocking`). Must never write a key with a mode wider than 0600, use a name or token
//! as a path before [`safe_component`] has passed it, or print a key.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::files::{self, FileStamp};

/// The largest file read from the storage, in bytes.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The storage directory.
#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
}

/// A certificate as stored for one name.
pub struct Stored {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
    /// What was recorded at issuance.
    pub meta: Meta,
}

impl Stored {
    /// A certificate from its chain and key, PEM; the error names the file at fault
    /// (`cert.pem`, `key.pem`) and why.
    pub fn from_pem(
        chain_pem: &[u8],
        key_pem: &[u8],
        meta: Meta,
    ) -> Result<Stored, (&'static str, String)> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| ("cert.pem", format!("not valid PEM: {e:?}")))?;
        if chain.is_empty() {
            return Err(("cert.pem", "no certificate in it".to_owned()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| ("key.pem", format!("not a PEM private key: {e:?}")))?;
        Ok(Stored { chain, key, meta })
    }
}

/// `meta.json`: facts about a stored certificate the certificate itself does not hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The ACME directory URL it came from.
    pub directory: String,
    /// When it was stored, Unix seconds.
    pub issued_at: i64,
    /// The CA's suggested renewal window (RFC 9773 §4.2), when it offered one.
    pub renewal_window: Option<Window>,
}

/// A renewal window, Unix seconds, `start <= end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Start of the window.
    pub start: i64,
    /// End of the window.
    pub end: i64,
}

/// `retry.json`: the back-off after failed orders for a name, shared by the fleet so that
/// instances taking the lock in turn do not each start it again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    /// Failed orders in a row.
    pub failures: u32,
    /// No order before this time, Unix milliseconds.
    pub retry_at_ms: i64,
}

/// The challenge kinds whose responses are published in the storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// By token.
    Http01,
    /// By name.
    TlsAlpn01,
}

impl ChallengeKind {
    fn dir(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// An advisory lock (flock(2), exclusive) on a file in `locks/`: released when dropped, or by
/// the kernel when the process holding it dies.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// Whether `s` can be a file name: a DNS name (lowercase letters, digits, `-`, `.`, not
/// starting with `.`) or a token (base64url: letters, digits, `-`, `_`), 1 to 253 bytes.
/// Names and tokens come from the network (SNI, a request path) before they reach a path.
pub fn safe_component(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && !s.starts_with('.')
        && !s.contains("..")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what}: not a usable name"),
    )
}

impl Storage {
    /// The storage at `root`, its directories created with mode 0700 where missing (an
    /// existing directory's mode is left as it is).
    pub fn open(root: &Path) -> io::Result<Storage> {
        let storage = Storage {
            root: root.to_owned(),
        };
        storage.make_directories()?;
        Ok(storage)
    }

    /// Creates the storage's directories (mode 0700) where missing: at open, and again before
    /// each order, so that a storage removed while the proxy runs does not stop renewals.
    fn make_directories(&self) -> io::Result<()> {
        let mut builder = DirBuilder::new();
        builder.recursive(true).mode(0o700);
        for sub in [
            "accounts",
            "certificates",
            "locks",
            "challenges/http-01",
            "challenges/tls-alpn-01",
        ] {
            builder.create(self.root.join(sub))?;
        }
        Ok(())
    }

    /// The storage at `root` as it is, for reading only (`certs`): nothing is created.
    pub fn existing(root: &Path) -> Storage {
        Storage {
            root: root.to_owned(),
        }
    }

    /// The file of the account at the ACME directory `directory`: `accounts/<host>-<hash>.json`,
    /// the host of the URL and 8 hex digits of its SHA-256.
    pub fn account_path(&self, directory: &str) -> PathBuf {
        self.root
            .join("accounts")
            .join(format!("{}.json", directory_key(directory)))
    }

    /// The stored account credentials (JSON) for `directory`, if any.
    pub fn read_account(&self, directory: &str) -> io::Result<Option<Vec<u8>>> {
        read_optional(&self.account_path(directory))
    }

    /// Stores the account credentials (JSON) for `directory`, mode 0600.
    pub fn write_account(&self, directory: &str, json: &[u8]) -> io::Result<()> {
        write(&self.account_path(directory), json, 0o600)
    }

    fn cert_dir(&self, name: &str) -> io::Result<PathBuf> {
        if !safe_component(name) {
            return Err(invalid("certificate name"));
        }
        Ok(self.root.join("certificates").join(name))
    }

    /// The path of `name`'s chain (`certificates/<name>/cert.pem`).
    pub fn cert_path(&self, name: &str) -> io::Result<PathBuf> {
        Ok(self.cert_dir(name)?.join("cert.pem"))
    }

    /// The stamp of `name`'s `cert.pem` (`None`: none stored): it changes with each new
    /// certificate, as each is renamed into place.
    pub fn cert_stamp(&self, name: &str) -> Option<FileStamp> {
        FileStamp::of_path(&self.cert_path(name).ok()?)
    }

    /// The certificate stored for `name`: `Ok(None)` when there is none; an error, saying
    /// which file and why, when one is there but cannot be used.
    pub fn read_certificate(&self, name: &str) -> Result<Option<Stored>, String> {
        let dir = self.cert_dir(name).map_err(|e| e.to_string())?;
        let cert_path = dir.join("cert.pem");
        let Some(cert_pem) = read_optional(&cert_path).map_err(|e| at(&cert_path, e))? else {
            return Ok(None);
        };
        let key_path = dir.join("key.pem");
        let key_pem = zeroize::Zeroizing::new(
            read_optional(&key_path)
                .map_err(|e| at(&key_path, e))?
                .ok_or_else(|| format!("{}: missing", key_path.display()))?,
        );
        let meta_path = dir.join("meta.json");
        let meta = match read_optional(&meta_path).map_err(|e| at(&meta_path, e))? {
            Some(json) => serde_json::from_slice(&json)
                .map_err(|e| format!("{}: {e}", meta_path.display()))?,
            None => Meta::default(),
        };
        Stored::from_pem(&cert_pem, &key_pem, meta)
            .map(Some)
            .map_err(|(file, why)| {
                let path = if file == "cert.pem" {
                    &cert_path
                } else {
                    &key_path
                };
                format!("{}: {why}", path.display())
            })
    }

    /// Stores a certificate for `name`: all three files are written in full and synced under
    /// temporary names first, so a full disk or any failure before the renames leaves the
    /// stored pair as it was; then the key (0600), the facts and the chain are renamed into
    /// place in that order, so a reader that sees the new chain sees its key.
    pub fn write_certificate(
        &self,
        name: &str,
        chain_pem: &str,
        key_pem: &str,
        meta: &Meta,
    ) -> io::Result<()> {
        use std::io::Write as _;
        let dir = self.cert_dir(name)?;
        DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        let json = serde_json::to_vec_pretty(meta).map_err(io::Error::other)?;
        let mut staged = Vec::with_capacity(3);
        for (file, bytes, mode) in [
            ("key.pem", key_pem.as_bytes(), 0o600),
            ("meta.json", &json[..], 0o644),
            ("cert.pem", chain_pem.as_bytes(), 0o644),
        ] {
            let path = dir.join(file);
            let replacement = files::Replacement::create(&path, &temporary(&path), mode)?;
            replacement.file().write_all(bytes)?;
            replacement.file().sync_all()?;
            staged.push(replacement);
        }
        // Every byte is on disk: what is left cannot run out of space.
        staged.into_iter().try_for_each(files::Replacement::commit)
    }

    /// The fleet's back-off for `name` (`retry.json`): none when missing or unreadable.
    pub fn read_retry(&self, name: &str) -> Retry {
        let Ok(dir) = self.cert_dir(name) else {
            return Retry::default();
        };
        read_optional(&dir.join("retry.json"))
            .ok()
            .flatten()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .unwrap_or_default()
    }

    /// Records the fleet's back-off for `name`, for whichever instance takes the lock next.
    pub fn write_retry(&self, name: &str, retry: &Retry) -> io::Result<()> {
        let dir = self.cert_dir(name)?;
        DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        let json = serde_json::to_vec(retry).map_err(io::Error::other)?;
        write(&dir.join("retry.json"), &json, 0o644)
    }

    /// Forgets `name`'s back-off (after an issuance).
    pub fn clear_retry(&self, name: &str) {
        if let Ok(dir) = self.cert_dir(name) {
            let _ = fs::remove_file(dir.join("retry.json"));
        }
    }

    /// Takes the lock `locks/<lock>.lock` if no one holds it (`None`: another process does).
    /// The storage's directories are made again first if they were removed: whoever takes a
    /// lock goes on to order, and publishes challenges and stores what it gets.
    pub fn try_lock(&self, lock: &str) -> io::Result<Option<Lock>> {
        if !safe_component(lock) {
            return Err(invalid("lock name"));
        }
        self.make_directories()?;
        let path = self.root.join("locks").join(format!("{lock}.lock"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)?;
        // SAFETY: flock on a file descriptor this function owns; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(Lock { _file: file }));
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(e)
        }
    }

    fn challenge_path(&self, kind: ChallengeKind, key: &str) -> io::Result<PathBuf> {
        if !safe_component(key) {
            return Err(invalid("challenge"));
        }
        Ok(self.root.join("challenges").join(kind.dir()).join(key))
    }

    /// Publishes a challenge response for the fleet: `challenges/<kind>/<key>`.
    pub fn put_challenge(&self, kind: ChallengeKind, key: &str, value: &str) -> io::Result<()> {
        write(&self.challenge_path(kind, key)?, value.as_bytes(), 0o644)
    }

    /// The challenge response published under `key`, if any.
    pub fn challenge(&self, kind: ChallengeKind, key: &str) -> Option<String> {
        let path = self.challenge_path(kind, key).ok()?;
        let bytes = read_optional(&path).ok()??;
        String::from_utf8(bytes).ok()
    }

    /// Withdraws a challenge response.
    pub fn remove_challenge(&self, kind: ChallengeKind, key: &str) {
        if let Ok(path) = self.challenge_path(kind, key) {
            let _ = fs::remove_file(path);
        }
    }
}

/// `<host>-<8 hex of SHA-256(url)>`, the account file's name for a directory URL.
pub fn directory_key(directory: &str) -> String {
    let host = directory
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_owned))
        .filter(|h| safe_component(h))
        .unwrap_or_else(|| "directory".to_owned());
    let digest = ring::digest::digest(&ring::digest::SHA256, directory.as_bytes());
    let mut hex = String::with_capacity(8);
    for b in &digest.as_ref()[..4] {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("{host}-{hex}")
}

fn at(path: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", path.display())
}

/// The whole file at `path`; `None` when nothing is there.
fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    match files::read_regular(path, MAX_FILE_BYTES, &mut out) {
        Ok(_) => Ok(Some(out)),
        Err(files::FileError::Io(e)) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::other(e.to_string())),
    }
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    files::write_atomically(path, &temporary(path), mode, bytes)
}

/// The temporary name a file of the storage is written under: `<path>.tmp`.
fn temporary(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn only_dns_names_and_tokens_become_file_names() {
        // (input, usable as a file name)
        let rows = [
            ("edge.example.com", true),
            ("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0", true),
            ("a-b_c", true),
            ("", false),
            (".", false),
            ("..", false),
            ("../etc/passwd", false),
            ("a/b", false),
            ("a..b", false),
            (".hidden", false),
            ("a b", false),
            ("a\0b", false),
            ("a\\b", false),
            ("é.example", false),
        ];
        for (input, want) in rows {
            assert_eq!(safe_component(input), want, "{input:?}");
        }
        assert!(!safe_component(&"a".repeat(254)));
    }

    #[test]
    fn the_storage_is_owner_only_and_keys_are_0600() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("acme");
        let storage = Storage::open(&root).unwrap();
        for sub in ["", "accounts", "certificates", "locks", "challenges"] {
            assert_eq!(mode(&root.join(sub)), 0o700, "{sub}");
        }
        storage.write_account("https://ca.test/dir", b"{}").unwrap();
        assert_eq!(mode(&storage.account_path("https://ca.test/dir")), 0o600);
        let meta = Meta {
            directory: "https://ca.test/dir".into(),
            issued_at: 1,
            renewal_window: None,
        };
        storage
            .write_certificate("a.example", "cert", "key", &meta)
            .unwrap();
        let cdir = root.join("certificates/a.example");
        assert_eq!(mode(&cdir), 0o700);
        assert_eq!(mode(&cdir.join("key.pem")), 0o600);
    }

    #[test]
    fn a_certificate_that_cannot_be_stored_in_full_leaves_the_stored_pair_as_it_was() {
        let meta = Meta {
            directory: "https://ca.test/dir".into(),
            issued_at: 1,
            renewal_window: None,
        };
        // (the file whose temporary name is blocked by a directory: its write fails)
        for blocked in ["key.pem", "meta.json", "cert.pem"] {
            let dir = tempfile::tempdir().unwrap();
            let storage = Storage::open(&dir.path().join("acme")).unwrap();
            storage
                .write_certificate("a.example", "old chain", "old key", &meta)
                .unwrap();
            let cdir = storage.cert_dir("a.example").unwrap();
            fs::create_dir(temporary(&cdir.join(blocked))).unwrap();
            let newer = Meta {
                issued_at: 2,
                ..meta.clone()
            };
            assert!(
                storage
                    .write_certificate("a.example", "new chain", "new key", &newer)
                    .is_err(),
                "{blocked}"
            );
            assert_eq!(
                fs::read_to_string(cdir.join("key.pem")).unwrap(),
                "old key",
                "{blocked}"
            );
            assert_eq!(
                fs::read_to_string(cdir.join("cert.pem")).unwrap(),
                "old chain",
                "{blocked}"
            );
            let left: Vec<_> = fs::read_dir(&cdir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.ends_with(".tmp") && *n != format!("{blocked}.tmp"))
                .collect();
            assert!(left.is_empty(), "{blocked}: {left:?}");
        }
    }

    #[test]
    fn an_existing_storage_directory_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("acme");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o750)).unwrap();
        Storage::open(&root).unwrap();
        assert_eq!(mode(&root), 0o750);
    }

    #[test]
    fn a_lock_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let held = storage.try_lock("a.example").unwrap();
        assert!(held.is_some());
        assert!(storage.try_lock("a.example").unwrap().is_none());
        assert!(storage.try_lock("b.example").unwrap().is_some());
        drop(held);
        assert!(storage.try_lock("a.example").unwrap().is_some());
    }

    #[test]
    fn a_storage_removed_while_running_is_made_again_when_a_lock_is_taken() {
        // (what happened to the storage under the running proxy)
        type Damage = fn(&Path);
        let rows: [(&str, Damage); 3] = [
            ("the whole directory removed", |root| {
                fs::remove_dir_all(root).unwrap()
            }),
            ("locks/ removed", |root| {
                fs::remove_dir_all(root.join("locks")).unwrap()
            }),
            ("challenges/ removed", |root| {
                fs::remove_dir_all(root.join("challenges")).unwrap()
            }),
        ];
        for (what, damage) in rows {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("acme");
            let storage = Storage::open(&root).unwrap();
            damage(&root);
            let lock = storage.try_lock("a.example").unwrap();
            assert!(lock.is_some(), "{what}");
            storage
                .put_challenge(ChallengeKind::Http01, "tok", "tok.thumb")
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            storage
                .put_challenge(ChallengeKind::TlsAlpn01, "a.example", "k.thumb")
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(mode(&root), 0o700, "{what}");
            assert_eq!(mode(&root.join("locks")), 0o700, "{what}");
        }
    }

    #[test]
    fn account_files_are_named_by_host_and_hash_of_the_directory() {
        // (directory URL, start of the key)
        let rows = [
            (
                "https://acme-v02.api.letsencrypt.org/directory",
                "acme-v02.api.letsencrypt.org-",
            ),
            ("https://127.0.0.1:14000/dir", "127.0.0.1-"),
            ("not a url", "directory-"),
        ];
        for (url, start) in rows {
            let key = directory_key(url);
            assert!(key.starts_with(start), "{url}: {key}");
            assert_eq!(key.len(), start.len() + 8, "{url}: {key}");
        }
        assert_ne!(
            directory_key("https://ca.test/a"),
            directory_key("https://ca.test/b")
        );
    }

    #[test]
    fn the_fleets_back_off_is_kept_per_name_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        assert_eq!(storage.read_retry("a.example"), Retry::default());
        let retry = Retry {
            failures: 3,
            retry_at_ms: 1_700_000_000_000,
        };
        storage.write_retry("a.example", &retry).unwrap();
        assert_eq!(storage.read_retry("a.example"), retry);
        assert_eq!(storage.read_retry("b.example"), Retry::default());
        // (what is in retry.json) : unreadable is no back-off.
        for junk in ["", "{", "[]", "{\"failures\": -1}"] {
            std::fs::write(dir.path().join("certificates/a.example/retry.json"), junk).unwrap();
            assert_eq!(storage.read_retry("a.example"), Retry::default(), "{junk}");
        }
        storage.write_retry("a.example", &retry).unwrap();
        storage.clear_retry("a.example");
        assert_eq!(storage.read_retry("a.example"), Retry::default());
        assert!(storage.write_retry("../x", &retry).is_err());
    }

    #[test]
    fn challenges_round_trip_and_unsafe_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        storage
            .put_challenge(ChallengeKind::Http01, "tok-1", "tok-1.thumb")
            .unwrap();
        assert_eq!(
            storage.challenge(ChallengeKind::Http01, "tok-1").as_deref(),
            Some("tok-1.thumb")
        );
        assert_eq!(storage.challenge(ChallengeKind::TlsAlpn01, "tok-1"), None);
        assert!(
            storage
                .put_challenge(ChallengeKind::Http01, "../x", "v")
                .is_err()
        );
        assert_eq!(storage.challenge(ChallengeKind::Http01, "../x"), None);
        storage.remove_challenge(ChallengeKind::Http01, "tok-1");
        assert_eq!(storage.challenge(ChallengeKind::Http01, "tok-1"), None);
    }
}
