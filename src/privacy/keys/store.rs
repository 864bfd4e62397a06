//! The key store: the key files in `privacy.key_dir`, one per kept epoch (`YYYY-MM-DD.key`,
//! mode 0600), the ratchet of the store to a day, and the destruction of the files of days past
//! `privacy.key_retention`.
//!
//! Must never print, log or put in an error message a key's content, never derive a key
//! backwards or guess a destroyed one, never leave a key file readable by anyone but its
//! owner, and never leave a key's bytes in a file it unlinks (destroyed files are overwritten
//! first).

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use zeroize::Zeroizing;

use super::{Key, next_key};
use crate::epoch::{self, Epoch};
use crate::files::{self, FileError};

/// The largest key file read: 64 hex digits and trailing whitespace.
const MAX_KEY_FILE_BYTES: usize = 128;

/// The key file name of `epoch`, `YYYY-MM-DD.key`.
pub fn file_name(epoch: Epoch) -> String {
    format!("{epoch}.key")
}

/// Why the key store failed. Messages name the file at fault, never a key's content.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key directory could not be created or read.
    #[error("key directory {}: {source}", .path.display())]
    Dir { path: PathBuf, source: io::Error },
    /// A key file could not be read: missing, unreadable, or not a regular file.
    #[error("cannot read key file {}: {source}", .path.display())]
    Read { path: PathBuf, source: FileError },
    /// A key file holds neither 32 raw bytes nor 64 hex digits.
    #[error(
        "key file {} is corrupt: it must hold 32 raw bytes or 64 hex digits; restore it or remove it",
        .path.display()
    )]
    Corrupt { path: PathBuf },
    /// A key file could not be written.
    #[error("cannot write key file {}: {source}", .path.display())]
    Write { path: PathBuf, source: io::Error },
    /// An expired key file could not be destroyed.
    #[error("cannot destroy expired key file {}: {source}", .path.display())]
    Destroy { path: PathBuf, source: io::Error },
    /// The operating system's random source failed.
    #[error("cannot make a random key: {0}")]
    Random(getrandom::Error),
}

/// What [`KeyStore::ratchet_to`] did.
#[derive(Debug)]
pub struct RatchetOutcome {
    /// The day ratcheted to.
    pub epoch: Epoch,
    /// That day's key.
    pub key: Key,
    /// No earlier key existed, so a random key was created for this day: pseudonyms do not
    /// link to any earlier day.
    pub created_random: bool,
    /// Key files of days after the one ratcheted to exist: with `created_random`, this
    /// machine's clock is behind the day the fleet's keys were made for (not a first start).
    pub later_keys: bool,
    /// Key files written: this day's if it was missing, and the first day of the retention
    /// window if destroying older files would otherwise have made it underivable.
    pub written: Vec<Epoch>,
    /// Key files destroyed because they were older than the retention window.
    pub destroyed: Vec<Epoch>,
}

/// What the store has for one day, as listed by the `keys` command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    /// The day's key file is kept.
    Kept,
    /// No file, but the key can be derived forward from an earlier kept day.
    Derivable,
    /// No key can be had for this day (destroyed, or never kept here) though records of it
    /// remain: its pseudonyms are unlinkable. [`KeyStore::list`] never says it (it lists only
    /// days from the oldest kept key); the `keys` command does, for access-log day files.
    Destroyed,
}

/// The key files in `key_dir`: one per kept epoch, `YYYY-MM-DD.key`, mode 0600.
///
/// One process ratchets a directory at a time; a fleet shares pseudonyms by copying the
/// day's key file to every instance's own directory.
#[derive(Debug)]
pub struct KeyStore {
    dir: PathBuf,
    retention_days: i64,
}

impl KeyStore {
    /// Opens `dir`, creating it with mode 0700 if missing. Keys of epochs older than
    /// `retention` (whole days, rounded down) are destroyed at each ratchet.
    pub fn open(dir: &Path, retention: Duration) -> Result<KeyStore, KeyError> {
        let dir_err = |source| KeyError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        if !dir.is_dir() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(dir_err)?;
        }
        let meta = fs::metadata(dir).map_err(dir_err)?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                dir = %dir.display(),
                "key directory is accessible to other users; it should be mode 0700"
            );
        }
        Ok(KeyStore::at(dir, retention))
    }

    /// The store of `dir`, with nothing checked or created.
    fn at(dir: &Path, retention: Duration) -> KeyStore {
        KeyStore {
            dir: dir.to_path_buf(),
            retention_days: epoch::whole_days(retention),
        }
    }

    /// Checks `dir` before start-up writes anything: every key file a ratchet to `today` or a
    /// later day could read (those of the retention window and after) must be a readable regular
    /// file holding a key. Creates, changes and logs nothing. A missing directory passes: it
    /// will be created. Errors name the directory or file, never a key's content.
    pub fn check(dir: &Path, retention: Duration, today: Epoch) -> Result<(), KeyError> {
        match fs::metadata(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            _ => {}
        }
        let store = KeyStore::at(dir, retention);
        let files = store.scan()?;
        for slot in files.range(store.window_start(today)..).map(|(_, f)| f) {
            if let Some(path) = &slot.key {
                read_key_file(path)?;
            }
        }
        Ok(())
    }

    /// The key directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The oldest epoch whose key is kept when the current day is `today`.
    pub fn window_start(&self, today: Epoch) -> Epoch {
        today.add_days(-self.retention_days)
    }

    /// Ratchets the store to `today`: loads the newest key of a day up to `today`, derives
    /// forward to `today` (never backwards), writes today's file if missing, and destroys the
    /// files of days before the retention window. With no key of `today` or before (even if
    /// later days' files exist), creates a random one. Logs nothing: the caller reports the
    /// outcome.
    pub fn ratchet_to(&self, today: Epoch) -> Result<RatchetOutcome, KeyError> {
        let files = self.scan()?;
        let mut written = Vec::new();
        let mut created_random = false;
        let later_keys = files
            .range((std::ops::Bound::Excluded(today), std::ops::Bound::Unbounded))
            .any(|(_, f)| f.key.is_some());

        let key = match self.newest_at_or_before(&files, today)? {
            Some(key) => key,
            None => {
                created_random = true;
                Key::random()?
            }
        };
        if !has_key(&files, today) {
            self.write_key(today, &key)?;
            written.push(today);
        }

        // Keep the whole window derivable: if the files about to be destroyed are the only
        // source of the window's first days, write the key of the window's first day.
        let start = self.window_start(today);
        let expired: Vec<Epoch> = files.range(..start).map(|(&e, _)| e).collect();
        let expired_key = files.range(..start).any(|(_, f)| f.key.is_some());
        if expired_key
            && start != today
            && !has_key(&files, start)
            && let Some(start_key) = self.newest_at_or_before(&files, start)?
        {
            self.write_key(start, &start_key)?;
            written.push(start);
        }

        let mut destroyed = Vec::new();
        for epoch in expired {
            if let Some(paths) = files.get(&epoch) {
                for path in &paths.all {
                    destroy_file(path)?;
                }
            }
            destroyed.push(epoch);
        }
        self.sync_dir_after(!destroyed.is_empty())?;
        Ok(RatchetOutcome {
            epoch: today,
            key,
            created_random,
            later_keys,
            written,
            destroyed,
        })
    }

    /// The key of `epoch`: from its file, or derived forward from the newest earlier kept
    /// file. `None` when no key of that day or before is kept (the day is unlinkable).
    pub fn load(&self, epoch: Epoch) -> Result<Option<Key>, KeyError> {
        let files = self.scan()?;
        self.newest_at_or_before(&files, epoch)
    }

    /// Every kept epoch, and the state of each day of the retention window ending today from
    /// the oldest kept key on. Days before the oldest kept key are not listed: this store never
    /// had their key (a new install lists today only; a store with no key, nothing).
    pub fn list(&self) -> Result<Vec<(Epoch, KeyState)>, KeyError> {
        self.list_at(Epoch::today())
    }

    /// As [`KeyStore::list`], with the window ending at `today`.
    pub fn list_at(&self, today: Epoch) -> Result<Vec<(Epoch, KeyState)>, KeyError> {
        let files = self.scan()?;
        let mut out: BTreeMap<Epoch, KeyState> = files
            .iter()
            .filter(|(_, f)| f.key.is_some())
            .map(|(&e, _)| (e, KeyState::Kept))
            .collect();
        let Some(oldest_kept) = out.keys().next().copied() else {
            return Ok(Vec::new());
        };
        if oldest_kept > today {
            return Ok(out.into_iter().collect());
        }
        let mut day = self.window_start(today).max(oldest_kept);
        loop {
            // From the oldest kept key on, a day without a file follows from an earlier one.
            let state = if has_key(&files, day) {
                KeyState::Kept
            } else {
                KeyState::Derivable
            };
            out.insert(day, state);
            if day >= today || day.next() == day {
                break;
            }
            day = day.next();
        }
        Ok(out.into_iter().collect())
    }

    fn path_of(&self, epoch: Epoch) -> PathBuf {
        self.dir.join(file_name(epoch))
    }

    /// The key files by epoch, plus leftover temporary files of the same epoch.
    fn scan(&self) -> Result<BTreeMap<Epoch, EpochFiles>, KeyError> {
        let dir_err = |source| KeyError::Dir {
            path: self.dir.clone(),
            source,
        };
        let mut files: BTreeMap<Epoch, EpochFiles> = BTreeMap::new();
        for entry in fs::read_dir(&self.dir).map_err(dir_err)? {
            let entry = entry.map_err(dir_err)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let (date, is_tmp) = if let Some(date) = name.strip_suffix(".key") {
                (date, false)
            } else if let Some((date, _)) = name.split_once(".key.tmp") {
                (date, true)
            } else {
                continue;
            };
            let Ok(epoch) = date.parse::<Epoch>() else {
                continue;
            };
            // Follows symbolic links: a fleet may link a shared day's file into place. A key
            // file that is not a readable regular file (a directory, a dangling link) is an
            // error naming it, never taken for a missing key; a leftover temporary file that
            // is not a file is left alone.
            match fs::metadata(entry.path()) {
                Ok(meta) if meta.is_file() => {}
                _ if is_tmp => continue,
                Ok(meta) => {
                    return Err(KeyError::Read {
                        path: entry.path(),
                        source: FileError::not_regular(&meta),
                    });
                }
                Err(e) => {
                    return Err(KeyError::Read {
                        path: entry.path(),
                        source: FileError::Io(e),
                    });
                }
            }
            let slot = files.entry(epoch).or_default();
            slot.all.push(entry.path());
            if !is_tmp {
                slot.key = Some(entry.path());
            }
        }
        Ok(files)
    }

    /// The key of `epoch`, derived forward from the newest kept file at or before it.
    fn newest_at_or_before(
        &self,
        files: &BTreeMap<Epoch, EpochFiles>,
        epoch: Epoch,
    ) -> Result<Option<Key>, KeyError> {
        let Some((&from, path)) = files
            .range(..=epoch)
            .rev()
            .find_map(|(e, f)| f.key.as_ref().map(|p| (e, p)))
        else {
            return Ok(None);
        };
        let mut key = read_key_file(path)?;
        for _ in 0..from.days_between(epoch) {
            key = next_key(&key);
        }
        Ok(Some(key))
    }

    /// Writes `epoch`'s key file atomically: temporary file (0600), fsync, rename, fsync dir.
    fn write_key(&self, epoch: Epoch, key: &Key) -> Result<(), KeyError> {
        let path = self.path_of(epoch);
        let tmp = self
            .dir
            .join(format!("{}.tmp.{}", file_name(epoch), std::process::id()));
        // A temporary file left by a killed process may hold a key: destroyed, not just unlinked.
        if tmp.exists() {
            destroy_file(&tmp)?;
        }
        let mut text = Zeroizing::new([0u8; 65]);
        hex_encode(key.as_bytes(), &mut text[..64]);
        text[64] = b'\n';
        files::write_atomically(&path, &tmp, 0o600, &text[..])
            .map_err(|source| KeyError::Write { path, source })
    }

    fn sync_dir_after(&self, changed: bool) -> Result<(), KeyError> {
        if changed {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| KeyError::Dir {
                    path: self.dir.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}

fn has_key(files: &BTreeMap<Epoch, EpochFiles>, epoch: Epoch) -> bool {
    files.get(&epoch).is_some_and(|f| f.key.is_some())
}

/// The files of one epoch. Leftover temporary files alone do not make an epoch kept, but
/// are destroyed with it.
#[derive(Default)]
struct EpochFiles {
    /// The `YYYY-MM-DD.key` file.
    key: Option<PathBuf>,
    /// Every file of the epoch: the key file and leftover temporary files.
    all: Vec<PathBuf>,
}

/// Reads a key file: 32 raw bytes, or 64 hex digits with optional trailing whitespace. Only a
/// regular file is read (a named pipe never blocks the reader).
fn read_key_file(path: &Path) -> Result<Key, KeyError> {
    let corrupt = || KeyError::Corrupt {
        path: path.to_path_buf(),
    };
    // Longest valid content: 64 hex digits and some trailing whitespace; read no more. The
    // buffer never grows, so no copy of the key is left behind in freed memory.
    let mut data = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_BYTES + 1));
    let meta = match files::read_regular(path, MAX_KEY_FILE_BYTES as u64, &mut data) {
        Ok(meta) => meta,
        Err(FileError::TooLarge(_)) => return Err(corrupt()),
        Err(source) => {
            return Err(KeyError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            "key file is readable by other users; it should be mode 0600"
        );
    }
    let mut key = Key::from_bytes([0; 32]);
    if data.len() == 32 {
        key.as_mut_bytes().copy_from_slice(&data);
        return Ok(key);
    }
    let text = data.trim_ascii_end();
    if text.len() != 64 {
        return Err(corrupt());
    }
    for (out, pair) in key.as_mut_bytes().iter_mut().zip(text.chunks_exact(2)) {
        match (hex_value(pair[0]), hex_value(pair[1])) {
            (Some(hi), Some(lo)) => *out = hi << 4 | lo,
            _ => return Err(corrupt()),
        }
    }
    Ok(key)
}

/// Overwrites a file with zeros, syncs it, and unlinks it.
fn destroy_file(path: &Path) -> Result<(), KeyError> {
    let derr = |source| KeyError::Destroy {
        path: path.to_path_buf(),
        source,
    };
    let result = (|| {
        let mut f = OpenOptions::new().write(true).open(path)?;
        let len = usize::try_from(f.metadata()?.len()).unwrap_or(usize::MAX);
        let zeros = [0u8; 64];
        let mut left = len;
        while left > 0 {
            let n = left.min(zeros.len());
            f.write_all(&zeros[..n])?;
            left -= n;
        }
        f.sync_all()?;
        drop(f);
        fs::remove_file(path)
    })();
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other.map_err(derr),
    }
}

fn hex_encode(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const DAY: u64 = epoch::SECS_PER_DAY;

    use crate::privacy::keys::tests::test_key;

    fn ep(s: &str) -> Epoch {
        s.parse().unwrap()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn store(dir: &Path, retention_days: u64) -> KeyStore {
        KeyStore::open(dir, Duration::from_secs(retention_days * DAY)).unwrap()
    }

    fn write_hex(dir: &Path, epoch: &str, key: &Key) {
        fs::write(
            dir.join(format!("{epoch}.key")),
            format!("{}\n", hex(key.as_bytes())),
        )
        .unwrap();
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn open_creates_private_dir_and_first_ratchet_is_random() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state/keys");
        let ks = store(&dir, 30);
        assert_eq!(mode(&dir), 0o700);

        let today = ep("2026-11-25");
        let out = ks.ratchet_to(today).unwrap();
        assert!(out.created_random);
        assert!(!out.later_keys, "an empty directory: a first start");
        assert_eq!(out.written, vec![today]);
        assert!(out.destroyed.is_empty());
        let file = dir.join("2026-11-25.key");
        assert_eq!(mode(&file), 0o600);
        let text = fs::read_to_string(&file).unwrap();
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n'));
        assert!(
            text[..64]
                .bytes()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        );
        // No temporary file left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);

        // Restart on the same day: same key, nothing new.
        let again = store(&dir, 30).ratchet_to(today).unwrap();
        assert!(!again.created_random);
        assert!(again.written.is_empty());
        assert_eq!(again.key, out.key);
        assert_eq!(ks.load(today).unwrap(), Some(out.key.clone()));
    }

    #[test]
    fn ratchet_derives_forward_and_never_backwards() {
        let tmp = tempfile::tempdir().unwrap();
        let ks = store(tmp.path(), 30);
        let k = test_key();
        write_hex(tmp.path(), "2026-11-20", &k);

        let out = ks.ratchet_to(ep("2026-11-21")).unwrap();
        assert!(!out.created_random);
        assert_eq!(out.key, next_key(&k));
        assert_eq!(out.written, vec![ep("2026-11-21")]);

        // Five days later: derived through the gap from the newest file.
        let out = ks.ratchet_to(ep("2026-11-26")).unwrap();
        let mut want = next_key(&k);
        for _ in 0..5 {
            want = next_key(&want);
        }
        assert_eq!(out.key, want);
        // Days in the gap are derivable; days before the first key are not.
        let mut d22 = next_key(&next_key(&k));
        assert_eq!(ks.load(ep("2026-11-22")).unwrap(), Some(d22.clone()));
        d22 = next_key(&d22);
        assert_eq!(ks.load(ep("2026-11-23")).unwrap(), Some(d22));
        assert_eq!(ks.load(ep("2026-11-19")).unwrap(), None);

        // Ratcheting to an earlier day than kept files derives from what is at or before it.
        let back = ks.ratchet_to(ep("2026-11-20")).unwrap();
        assert_eq!(back.key, k);
        assert!(!back.created_random);
        assert!(back.later_keys);
        // A clock behind every key file: a random key, and the later files are said to exist
        // (the schedule warns: this is not a first start).
        let behind = ks.ratchet_to(ep("2026-11-10")).unwrap();
        assert!(behind.created_random);
        assert!(behind.later_keys);
        assert_ne!(behind.key, k);
    }

    #[test]
    fn retention_destroys_old_files_and_keeps_window_derivable() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ks = store(dir, 3);
        let k = test_key();
        write_hex(dir, "2026-11-01", &k);
        let k2 = next_key(&next_key(&k));
        write_hex(dir, "2026-11-03", &k2);
        // Not key files: ignored and left alone.
        fs::write(dir.join("README"), "x").unwrap();
        fs::write(dir.join("2026-11-02.txt"), "x").unwrap();
        fs::write(dir.join("2026-13-01.key"), "x").unwrap();
        // A leftover temporary file of an expired day is destroyed with it.
        fs::write(dir.join("2026-11-01.key.tmp.999"), "secret").unwrap();

        // Window for 2026-11-10 with 3 days: 11-07..=11-10.
        let out = ks.ratchet_to(ep("2026-11-10")).unwrap();
        assert_eq!(out.destroyed, vec![ep("2026-11-01"), ep("2026-11-03")]);
        assert_eq!(out.written, vec![ep("2026-11-10"), ep("2026-11-07")]);
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "2026-11-02.txt",
                "2026-11-07.key",
                "2026-11-10.key",
                "2026-13-01.key",
                "README"
            ]
        );
        let mut want = k2;
        for _ in 3..7 {
            want = next_key(&want);
        }
        assert_eq!(ks.load(ep("2026-11-07")).unwrap(), Some(want.clone()));
        assert_eq!(ks.load(ep("2026-11-08")).unwrap(), Some(next_key(&want)));
        assert_eq!(ks.load(ep("2026-11-06")).unwrap(), None);
        assert_eq!(mode(&dir.join("2026-11-07.key")), 0o600);

        // The listing for 2026-11-11: window 11-08..=11-11.
        let list = ks.list_at(ep("2026-11-11")).unwrap();
        assert_eq!(
            list,
            vec![
                (ep("2026-11-07"), KeyState::Kept),
                (ep("2026-11-08"), KeyState::Derivable),
                (ep("2026-11-09"), KeyState::Derivable),
                (ep("2026-11-10"), KeyState::Kept),
                (ep("2026-11-11"), KeyState::Derivable),
            ]
        );
        // Next day: 11-07 goes, 11-08 is written in its place.
        let out = ks.ratchet_to(ep("2026-11-11")).unwrap();
        assert_eq!(out.destroyed, vec![ep("2026-11-07")]);
        assert_eq!(out.written, vec![ep("2026-11-11"), ep("2026-11-08")]);
    }

    #[test]
    fn list_starts_at_the_oldest_kept_key_never_listing_days_that_had_none() {
        let k = test_key();
        // (retention days, kept files, today, expected list): one row each.
        type Row = (
            u64,
            &'static [&'static str],
            &'static str,
            Vec<(&'static str, KeyState)>,
        );
        let rows: [Row; 6] = [
            // A new install: today's key only, a 30-day window: today alone.
            (
                30,
                &["2026-11-11"],
                "2026-11-11",
                vec![("2026-11-11", KeyState::Kept)],
            ),
            // The first key yesterday: the day before it is not listed.
            (
                2,
                &["2026-11-10"],
                "2026-11-11",
                vec![
                    ("2026-11-10", KeyState::Kept),
                    ("2026-11-11", KeyState::Derivable),
                ],
            ),
            // A gap after the first key is derivable.
            (
                5,
                &["2026-11-08", "2026-11-11"],
                "2026-11-11",
                vec![
                    ("2026-11-08", KeyState::Kept),
                    ("2026-11-09", KeyState::Derivable),
                    ("2026-11-10", KeyState::Derivable),
                    ("2026-11-11", KeyState::Kept),
                ],
            ),
            // A kept file older than the window (not ratcheted yet) is listed; the window
            // after it too.
            (
                1,
                &["2026-11-01"],
                "2026-11-11",
                vec![
                    ("2026-11-01", KeyState::Kept),
                    ("2026-11-10", KeyState::Derivable),
                    ("2026-11-11", KeyState::Derivable),
                ],
            ),
            // Only a later day's file: it is listed, no day before it.
            (
                30,
                &["2026-11-12"],
                "2026-11-11",
                vec![("2026-11-12", KeyState::Kept)],
            ),
            // No key at all: nothing.
            (30, &[], "2026-11-11", vec![]),
        ];
        for (retention, kept, today, expected) in rows {
            let tmp = tempfile::tempdir().unwrap();
            let ks = store(tmp.path(), retention);
            for day in kept {
                write_hex(tmp.path(), day, &k);
            }
            let expected: Vec<(Epoch, KeyState)> =
                expected.into_iter().map(|(d, s)| (ep(d), s)).collect();
            assert_eq!(
                ks.list_at(ep(today)).unwrap(),
                expected,
                "{kept:?} at {today}"
            );
        }
    }

    #[test]
    fn hex_and_raw_files_load() {
        let tmp = tempfile::tempdir().unwrap();
        let ks = store(tmp.path(), 30);
        let k = test_key();
        // (file content, epoch)
        let upper = hex(k.as_bytes()).to_uppercase();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (k.as_bytes().to_vec(), "2026-01-01"),
            (
                format!("{}\n", hex(k.as_bytes())).into_bytes(),
                "2026-01-02",
            ),
            (hex(k.as_bytes()).into_bytes(), "2026-01-03"),
            (format!("{upper}\r\n  \t").into_bytes(), "2026-01-04"),
        ];
        for (content, day) in &cases {
            fs::write(tmp.path().join(format!("{day}.key")), content).unwrap();
            assert_eq!(ks.load(ep(day)).unwrap(), Some(k.clone()), "{day}");
        }
        // A symbolic link to a shared key file counts as the day's file.
        let shared = tempfile::tempdir().unwrap();
        let target = shared.path().join("shared.key");
        fs::write(&target, hex(next_key(&k).as_bytes())).unwrap();
        std::os::unix::fs::symlink(&target, tmp.path().join("2026-01-05.key")).unwrap();
        assert_eq!(ks.load(ep("2026-01-05")).unwrap(), Some(next_key(&k)));
    }

    #[test]
    fn corrupt_file_error_names_path_not_content() {
        // (file content)
        let cases: &[&[u8]] = &[
            b"",
            b"short",
            &[0xAB; 31],
            &[0xAB; 33],
            b"zz0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            b" 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            b"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f00",
            // Valid digits, but more trailing whitespace than a key file ever has.
            &[
                b"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f" as &[u8],
                &[b' '; 100],
            ]
            .concat(),
            &[b'0'; 1 << 20],
        ];
        for content in cases {
            let tmp = tempfile::tempdir().unwrap();
            let ks = store(tmp.path(), 30);
            let path = tmp.path().join("2026-02-01.key");
            fs::write(&path, content).unwrap();
            let err = ks.load(ep("2026-02-01")).unwrap_err();
            assert!(matches!(err, KeyError::Corrupt { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
            assert!(!msg.contains("0102030405"), "{msg}");
            assert!(ks.ratchet_to(ep("2026-02-02")).is_err());
        }
    }

    #[test]
    fn a_key_file_that_is_not_a_regular_file_is_an_error_never_a_missing_key() {
        // (what the day's key path is, a word of the reason)
        type Make = fn(&Path);
        let cases: &[(&str, Make, &str)] = &[
            ("a directory", |p| fs::create_dir(p).unwrap(), "a directory"),
            (
                "a dangling symbolic link",
                |p| std::os::unix::fs::symlink("/nonexistent/shared.key", p).unwrap(),
                "No such file",
            ),
            (
                "a named pipe",
                |p| {
                    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
                    // SAFETY: a valid NUL-terminated path.
                    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
                },
                "a named pipe",
            ),
        ];
        for &(what, make, reason) in cases {
            let tmp = tempfile::tempdir().unwrap();
            let ks = store(tmp.path(), 30);
            let path = tmp.path().join("2026-02-01.key");
            make(&path);
            for err in [
                ks.load(ep("2026-02-01")).unwrap_err(),
                ks.ratchet_to(ep("2026-02-02")).unwrap_err(),
            ] {
                let msg = err.to_string();
                assert!(msg.contains(&*path.to_string_lossy()), "{what}: {msg}");
                assert!(msg.contains(reason), "{what}: {msg}");
            }
            // Nothing was made up in its place.
            assert!(!tmp.path().join("2026-02-02.key").exists(), "{what}");
        }
    }
}
