//! Day files: their names, their mode and group, opening for append, listing, and deletion
//! past retention; the log directory's creation.
//!
//! Owns `access_log.file_mode` and `access_log.group` on disk: every day file the proxy opens
//! gets exactly the configured mode (set with `fchmod`, never left to the umask) and group
//! (`fchown`), and a log directory it creates lets that group in only when the mode gives the
//! group access. Must never make a day file readable by others, never change the mode of a
//! directory the operator made, and never touch the pseudonym key files.

use std::ffi::CString;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{
    DirBuilderExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::path::{Path, PathBuf};

use crate::config::{self, ConfigError, GroupSpec};
use crate::epoch::Epoch;

/// How day files are created and kept: exact permission bits, and the group to give them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    /// Permission bits (`access_log.file_mode`), e.g. `0o640`.
    pub mode: u32,
    /// The group id (`access_log.group`); `None`: whatever the file gets (the process's group,
    /// or the directory's when it is set-group-ID).
    pub gid: Option<u32>,
}

impl Ownership {
    /// The mode and resolved group of `cfg`. Errors name `access_log.group`: the group does
    /// not exist, or this process may not give files that group.
    pub fn of(cfg: &config::AccessLog) -> Result<Ownership, ConfigError> {
        let gid = match &cfg.group {
            None => None,
            Some(spec) => {
                let gid = resolve_group(spec)
                    .map_err(|reason| ConfigError::invalid("access_log.group", reason))?;
                if !may_give_group(gid) {
                    return Err(ConfigError::invalid(
                        "access_log.group",
                        format!(
                            "\"{spec}\" (gid {gid}): this process may not give files that group; \
                             it must be one of the groups of the user running the proxy (or run \
                             as root)"
                        ),
                    ));
                }
                Some(gid)
            }
        };
        Ok(Ownership {
            mode: cfg.file_mode.bits,
            gid,
        })
    }

    /// Mode 0600, the process's group: what tests and tools that do not read the config use.
    pub const OWNER_ONLY: Ownership = Ownership {
        mode: 0o600,
        gid: None,
    };

    /// The mode of a log directory the proxy creates: 0750 when the group has access to the
    /// files, else 0700.
    pub fn dir_mode(&self) -> u32 {
        if self.mode & 0o070 != 0 { 0o750 } else { 0o700 }
    }

    /// Gives the open `file` exactly this mode and group, when it has others.
    pub fn apply(&self, file: &File) -> io::Result<()> {
        let meta = file.metadata()?;
        let mut chowned = false;
        if let Some(gid) = self.gid
            && meta.gid() != gid
        {
            std::os::unix::fs::fchown(file, None, Some(gid))?;
            chowned = true;
        }
        // After the chown (which may clear bits); compared in full so any stray bit goes.
        if chowned || meta.permissions().mode() & 0o7777 != self.mode {
            file.set_permissions(std::fs::Permissions::from_mode(self.mode))?;
        }
        Ok(())
    }
}

/// The group id `spec` names: a name looked up with `getgrnam_r`, or a numeric id (an integer,
/// or a string of digits), which must exist in the group database too (`getgrgid_r`). The error
/// says which and why.
pub fn resolve_group(spec: &GroupSpec) -> Result<u32, String> {
    let numeric = match spec {
        GroupSpec::Name(name) => name.parse::<u32>().ok().map(GroupSpec::Gid),
        GroupSpec::Gid(_) => None,
    };
    let spec = numeric.as_ref().unwrap_or(spec);
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: `group` is plain data, written by the call; `buf` outlives the call and its
        // length is passed; `found` is set to null or to `&group`.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        let rc = match spec {
            GroupSpec::Name(name) => {
                let Ok(c) = CString::new(name.as_str()) else {
                    return Err(format!("{name:?} is not a group name"));
                };
                unsafe {
                    libc::getgrnam_r(
                        c.as_ptr(),
                        &mut group,
                        buf.as_mut_ptr(),
                        buf.len(),
                        &mut found,
                    )
                }
            }
            GroupSpec::Gid(gid) => unsafe {
                libc::getgrgid_r(*gid, &mut group, buf.as_mut_ptr(), buf.len(), &mut found)
            },
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(format!(
                "looking up group \"{spec}\": {}",
                io::Error::from_raw_os_error(rc)
            ));
        }
        if found.is_null() {
            return Err(format!("group \"{spec}\" does not exist"));
        }
        return Ok(group.gr_gid);
    }
}

/// Whether this process may give its files group `gid`: it runs as root (effective uid 0), or
/// `gid` is its effective group or one of its supplementary groups.
pub fn may_give_group(gid: u32) -> bool {
    // SAFETY: no arguments; cannot fail.
    if unsafe { libc::geteuid() } == 0 || unsafe { libc::getegid() } == gid {
        return true;
    }
    // SAFETY: with 0 the call returns the count and writes nothing.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if n <= 0 {
        return false;
    }
    let mut groups = vec![0 as libc::gid_t; n as usize];
    // SAFETY: `groups` holds `n` entries.
    let n = unsafe { libc::getgroups(n, groups.as_mut_ptr()) };
    n > 0 && groups[..n as usize].contains(&gid)
}

/// Creates the log directory `dir` if it is missing, with the components above it that are
/// missing too: mode [`Ownership::dir_mode`] exactly (not through the umask) and the
/// configured group. A directory that exists is left as the operator set it; returns a warning
/// when the mode gives the group access to the files but the directory does not let that group
/// search it, for the caller to log once.
pub fn ensure_dir(dir: &Path, own: Ownership) -> io::Result<Option<String>> {
    let mut missing = Vec::new();
    let mut at = dir;
    loop {
        match std::fs::metadata(at) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(at.to_path_buf());
                match at.parent() {
                    Some(p) if !p.as_os_str().is_empty() => at = p,
                    _ => break,
                }
            }
            Err(e) => return Err(e),
        }
    }
    if missing.is_empty() {
        return Ok(group_search_warning(dir, own));
    }
    for path in missing.iter().rev() {
        match DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => {}
            // Made by someone else meanwhile: theirs, left as it is.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        // A umask that takes the owner's read or search away (0477) would leave a directory
        // the proxy cannot open to set its group and mode, nor use: give the owner 0700 first.
        if std::fs::symlink_metadata(path)?.permissions().mode() & 0o700 != 0o700 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
        }
        let made = File::open(path)?;
        if let Some(gid) = own.gid {
            std::os::unix::fs::fchown(&made, None, Some(gid))?;
        }
        made.set_permissions(std::fs::Permissions::from_mode(own.dir_mode()))?;
    }
    Ok(group_search_warning(dir, own))
}

/// A warning when the files give the group access but `dir` does not let that group search it
/// (neither group search with the group owning it, nor search for others).
fn group_search_warning(dir: &Path, own: Ownership) -> Option<String> {
    if own.mode & 0o070 == 0 {
        return None;
    }
    let meta = std::fs::metadata(dir).ok()?;
    let mode = meta.permissions().mode();
    // SAFETY: no arguments; cannot fail.
    let gid = own.gid.unwrap_or_else(|| unsafe { libc::getegid() });
    let searchable = mode & 0o001 != 0 || (mode & 0o010 != 0 && meta.gid() == gid);
    (!searchable).then(|| {
        format!(
            "{}: the directory (mode {:04o}, gid {}) does not let group {gid} search it, so \
             access_log.file_mode {:04o} gives that group nothing; give the directory that \
             group and mode 0750",
            dir.display(),
            mode & 0o7777,
            meta.gid(),
            own.mode
        )
    })
}

/// Where an instance writes its day files: `access_log.dir`, and `access_log.node` in their
/// names.
#[derive(Clone, Debug)]
pub struct LogDir {
    /// `access_log.dir`.
    pub dir: PathBuf,
    /// `access_log.node` (validated: a plain file-name part); `None`: no node in the names.
    pub node: Option<String>,
}

impl LogDir {
    /// The day files of `cfg`.
    pub fn of(cfg: &config::AccessLog) -> LogDir {
        LogDir {
            dir: cfg.dir.clone(),
            node: cfg.node.clone(),
        }
    }

    /// `<dir>/access-<node>-YYYY-MM-DD.jsonl`, or `<dir>/access-YYYY-MM-DD.jsonl` without a
    /// node.
    pub fn day_path(&self, day: Epoch) -> PathBuf {
        match &self.node {
            Some(node) => self.dir.join(format!("access-{node}-{day}.jsonl")),
            None => self.dir.join(format!("access-{day}.jsonl")),
        }
    }
}

/// The day and node of a day file's name: `access-YYYY-MM-DD.jsonl` (no node) or
/// `access-<node>-YYYY-MM-DD.jsonl`; `None` for any other name (a temporary copy of `erase`, the
/// audit trail, a node part that is empty or not a plain name).
pub fn parse_day_file(name: &str) -> Option<(Epoch, Option<&str>)> {
    let stem = name.strip_prefix("access-")?.strip_suffix(".jsonl")?;
    let split = stem.len().checked_sub(10)?;
    let (head, date) = (stem.get(..split)?, stem.get(split..)?);
    let day = date.parse().ok()?;
    if head.is_empty() {
        return Some((day, None));
    }
    let node = head.strip_suffix('-')?;
    is_node_name(node).then_some((day, Some(node)))
}

/// Whether `name` may be an `access_log.node`: 1 to 64 of ASCII letters, digits, `-`, `_` and
/// `.`, starting with a letter or digit (so it is one plain part of a file name).
pub fn is_node_name(name: &str) -> bool {
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let first_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    plain && first_ok && name.len() <= 64
}

/// Opens a day file for appending (and reading its tail), creating it if needed, and the
/// directory too if it was removed while the proxy runs (see [`ensure_dir`]). A file created
/// gets `own`'s mode and group before anything is written to it (it is created 0600, so it is
/// never more open than configured); a file that exists is given them too, and when that fails
/// (a file of another owner) the file is still returned, with the reason, for the caller to
/// report. Only a regular file the path names itself is given them: a symbolic link is
/// followed for writing but what it points to (another file, a device such as `/dev/full`)
/// keeps its mode and group, with the reason returned. A regular file whose mode gives more
/// than `own.mode` and that cannot be changed that way is an error: no record goes where more
/// can read it than configured.
pub fn open_append(
    log: &LogDir,
    day: Epoch,
    own: Ownership,
) -> io::Result<(File, Option<io::Error>)> {
    let path = log.day_path(day);
    let open = |create: bool, follow: bool| {
        let mut o = OpenOptions::new();
        o.read(true).append(true);
        if !follow {
            o.custom_flags(libc::O_NOFOLLOW);
        }
        if create {
            o.create_new(true).mode(0o600);
        }
        o.open(&path)
    };
    let open = |create: bool| open(create, false);
    let (file, created) = loop {
        match open(false) {
            Ok(f) => break (f, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // O_NOFOLLOW met a symbolic link: written through, never given a mode or group.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                let file = OpenOptions::new().read(true).append(true).open(&path)?;
                let meta = file.metadata()?;
                if meta.file_type().is_fifo() {
                    return Err(io::Error::other("a named pipe, not a regular file"));
                }
                if meta.is_file() && wider(&meta, own) {
                    return Err(too_open(&meta, own));
                }
                return Ok((file, Some(not_regular())));
            }
            Err(e) => return Err(e),
        }
        match open(true) {
            Ok(f) => break (f, true),
            // Created by another process meanwhile: open it as it is.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                ensure_dir(&log.dir, own)?;
                match open(true) {
                    Ok(f) => break (f, true),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    };
    // A named pipe would stall the writer once its buffer is full, and shutdown with it.
    // (Opened read-write, a named pipe does not block the open itself.)
    let kind = file.metadata()?.file_type();
    if kind.is_fifo() {
        return Err(io::Error::other("a named pipe, not a regular file"));
    }
    if !kind.is_file() {
        return Ok((file, Some(not_regular())));
    }
    match own.apply(&file) {
        Ok(()) => Ok((file, None)),
        Err(e) if created => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
        // Records are never written where more can read them than access_log.file_mode lets.
        Err(e) => match file.metadata() {
            Ok(meta) if wider(&meta, own) => Err(io::Error::new(
                e.kind(),
                format!("{}; {e}", too_open(&meta, own)),
            )),
            _ => Ok((file, Some(e))),
        },
    }
}

/// Whether `meta`'s permission bits give more than `own.mode` does.
fn wider(meta: &std::fs::Metadata, own: Ownership) -> bool {
    meta.permissions().mode() & 0o7777 & !own.mode != 0
}

/// Why a day file whose mode gives more than `access_log.file_mode` is not written to.
fn too_open(meta: &std::fs::Metadata, own: Ownership) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "mode {:04o} gives more than access_log.file_mode {:04o} and the proxy cannot or \
             may not change it (a file of uid {}, or named through a link): no record is \
             written to it",
            meta.permissions().mode() & 0o7777,
            own.mode,
            meta.uid()
        ),
    )
}

/// Why a day file path that is a symbolic link or a device keeps the mode and group it has.
fn not_regular() -> io::Error {
    io::Error::other(
        "not a regular file (a symbolic link or a device): its mode and group are left as they are",
    )
}

/// Cuts a partial last line off a day file `len` bytes long: what is left of a record whose
/// write was cut short (the process killed mid-write, a disk that filled up, a file size limit),
/// or anything else not ending in a newline. The next record then starts on a line of its own
/// instead of being glued to the fragment. Returns the length after the cut. Reads one byte
/// when the file ends in a newline. Call with the file's lock held.
pub fn cut_partial_line(file: &File, len: u64) -> io::Result<u64> {
    let mut end = len;
    let mut chunk = vec![0u8; 1];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - start) as usize];
        file.read_exact_at(part, start)?;
        if let Some(i) = memchr::memrchr(b'\n', part) {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
        // Past the last byte: search backwards in larger reads.
        chunk.resize(1 << 16, 0);
    }
    if end < len {
        file.set_len(end)?;
    }
    Ok(end)
}

/// Whether `file` is still the file that `path` names (same device and inode). False when the
/// path was replaced (by `erase`) or removed.
pub fn same_file(file: &File, path: &Path) -> io::Result<bool> {
    let held = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(now) => Ok(held.dev() == now.dev() && held.ino() == now.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every day file in `dir`, of every node (a directory an archive gathers from many instances
/// may hold several files of one day), oldest first, then by name.
pub fn list_days(dir: &Path) -> io::Result<Vec<(Epoch, PathBuf)>> {
    let mut days = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some((day, _)) = name.to_str().and_then(parse_day_file) {
            days.push((day, entry.path()));
        }
    }
    days.sort();
    Ok(days)
}

/// Deletes day files more than `retention_days` days before `today`, of every node (retention
/// only ever removes more); returns how many. An expired entry that cannot be removed (a
/// directory named like a day file, a file the process may not delete) is reported in the
/// diagnostics by path and left, and the sweep goes on with the others; only a directory that
/// cannot be listed is an error.
pub fn sweep(dir: &Path, today: Epoch, retention_days: i64) -> io::Result<usize> {
    let mut removed = 0;
    for (day, path) in list_days(dir)? {
        if day.days_until(today) <= retention_days {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete an access-log day file past retention; left in place")
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_created_log_directory_lets_the_group_in_only_when_the_files_do() {
        // SAFETY: no arguments; cannot fail.
        let own = unsafe { libc::getegid() };
        // (file mode, group, mode of every directory made)
        let rows = [
            (0o640, None, 0o750),
            (0o660, Some(own), 0o750),
            (0o600, None, 0o700),
            (0o600, Some(own), 0o700),
        ];
        for (file_mode, gid, want) in rows {
            let tmp = tempfile::tempdir().unwrap();
            let parent_mode = mode(tmp.path());
            let dir = tmp.path().join("a/b/logs");
            let own_ship = Ownership {
                mode: file_mode,
                gid,
            };
            assert_eq!(ensure_dir(&dir, own_ship).unwrap(), None, "{file_mode:o}");
            for made in [tmp.path().join("a"), tmp.path().join("a/b"), dir.clone()] {
                assert_eq!(mode(&made), want, "{file_mode:o}: {}", made.display());
                let meta = std::fs::metadata(&made).unwrap();
                assert_eq!(meta.gid(), gid.unwrap_or(own), "{}", made.display());
            }
            // The parent the test made is left as it was.
            assert_eq!(mode(tmp.path()), parent_mode);
        }
    }

    #[test]
    fn an_existing_directory_is_left_alone_and_warned_about_when_the_group_cannot_search_it() {
        // (directory mode, file mode, warned)
        let rows = [
            (0o700, 0o640, true),
            (0o740, 0o640, true),
            (0o700, 0o660, true),
            (0o750, 0o640, false),
            (0o701, 0o640, false),
            (0o700, 0o600, false),
            (0o755, 0o600, false),
        ];
        for (dir_mode, file_mode, warned) in rows {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("logs");
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(dir_mode)).unwrap();
            let own = Ownership {
                mode: file_mode,
                gid: None,
            };
            let warning = ensure_dir(&dir, own).unwrap();
            let what = format!("directory {dir_mode:o}, files {file_mode:o}");
            assert_eq!(warning.is_some(), warned, "{what}: {warning:?}");
            if let Some(w) = warning {
                assert!(w.contains(&dir.display().to_string()), "{w}");
                assert!(w.contains("access_log.file_mode"), "{w}");
            }
            assert_eq!(mode(&dir), dir_mode, "{what}");
        }
    }

    #[test]
    fn a_day_file_gets_exactly_the_mode_created_or_found() {
        // (mode the file had, or none, file mode configured)
        let rows = [
            (None, 0o640),
            (None, 0o660),
            (None, 0o600),
            (Some(0o600), 0o640),
            (Some(0o644), 0o640),
            (Some(0o4640), 0o640),
            (Some(0o666), 0o600),
        ];
        let day: Epoch = "2026-11-25".parse().unwrap();
        for (before, file_mode) in rows {
            let tmp = tempfile::tempdir().unwrap();
            let log = LogDir {
                dir: tmp.path().to_owned(),
                node: None,
            };
            let path = log.day_path(day);
            if let Some(m) = before {
                std::fs::write(&path, b"").unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).unwrap();
            }
            let own = Ownership {
                mode: file_mode,
                gid: None,
            };
            let (_, problem) = open_append(&log, day, own).unwrap();
            assert!(problem.is_none(), "{before:?}: {problem:?}");
            assert_eq!(mode(&path), file_mode, "{before:?} → {file_mode:o}");
        }
    }

    #[test]
    fn day_file_names_carry_the_node_and_only_day_files_are_taken() {
        let day: Epoch = "2026-11-30".parse().unwrap();
        // (name, the day and node read from it, or None: not a day file)
        type Row = (&'static str, Option<(&'static str, Option<&'static str>)>);
        let rows: &[Row] = &[
            ("access-2026-11-30.jsonl", Some(("2026-11-30", None))),
            (
                "access-edge-1-2026-11-30.jsonl",
                Some(("2026-11-30", Some("edge-1"))),
            ),
            ("access-e-2026-11-30.jsonl", Some(("2026-11-30", Some("e")))),
            (
                "access-fra.edge_2-2026-11-30.jsonl",
                Some(("2026-11-30", Some("fra.edge_2"))),
            ),
            // A node that is itself a date, and one that ends in digits.
            (
                "access-2026-11-29-2026-11-30.jsonl",
                Some(("2026-11-30", Some("2026-11-29"))),
            ),
            (
                "access-edge-01-2026-11-30.jsonl",
                Some(("2026-11-30", Some("edge-01"))),
            ),
            ("access--2026-11-30.jsonl", None),
            ("access-.hidden-2026-11-30.jsonl", None),
            ("access--x-2026-11-30.jsonl", None),
            ("access-edge 1-2026-11-30.jsonl", None),
            ("access-edge2026-11-30.jsonl", None),
            ("access-edge-1-2026-13-30.jsonl", None),
            ("access-edge-1-2026-11-30.json", None),
            ("access-2026-11-30.jsonl.erase.42", None),
            (".access-edge-1-2026-11-30.jsonl.erase.42", None),
            ("audit.jsonl", None),
            ("access-.jsonl", None),
            ("access-é-2026-11-30.jsonl", None),
        ];
        for &(name, want) in rows {
            let got = parse_day_file(name).map(|(d, n)| (d.to_string(), n.map(str::to_owned)));
            let want = want.map(|(d, n)| (d.to_owned(), n.map(str::to_owned)));
            assert_eq!(got, want, "{name}");
        }
        // Written names read back as what they were written for.
        for node in [None, Some("edge-1"), Some("a"), Some("2026-11-29")] {
            let log = LogDir {
                dir: PathBuf::from("/x"),
                node: node.map(str::to_owned),
            };
            let path = log.day_path(day);
            let name = path.file_name().unwrap().to_str().unwrap();
            assert_eq!(parse_day_file(name), Some((day, node)), "{name}");
        }
    }

    #[test]
    fn every_node_s_day_files_are_listed_and_swept() {
        let tmp = tempfile::tempdir().unwrap();
        for name in [
            "access-2026-11-01.jsonl",
            "access-edge-1-2026-11-01.jsonl",
            "access-edge-2-2026-11-20.jsonl",
            "access-edge-1-2026-11-30.jsonl",
            "audit.jsonl",
            "notes.txt",
        ] {
            std::fs::write(tmp.path().join(name), b"").unwrap();
        }
        let listed: Vec<String> = list_days(tmp.path())
            .unwrap()
            .iter()
            .map(|(_, p)| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            listed,
            [
                "access-2026-11-01.jsonl",
                "access-edge-1-2026-11-01.jsonl",
                "access-edge-2-2026-11-20.jsonl",
                "access-edge-1-2026-11-30.jsonl",
            ]
        );
        let today: Epoch = "2026-11-30".parse().unwrap();
        assert_eq!(sweep(tmp.path(), today, 15).unwrap(), 2);
        assert!(tmp.path().join("access-edge-2-2026-11-20.jsonl").exists());
        assert!(tmp.path().join("audit.jsonl").exists());
    }

    #[test]
    fn a_sweep_leaves_what_it_cannot_delete_and_deletes_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        // Sorted before the expired files: it must not stop the sweep.
        std::fs::create_dir(tmp.path().join("access-a-2020-01-01.jsonl")).unwrap();
        for name in [
            "access-b-2020-01-01.jsonl",
            "access-2020-01-02.jsonl",
            "access-z-2026-11-30.jsonl",
        ] {
            std::fs::write(tmp.path().join(name), b"").unwrap();
        }
        let today: Epoch = "2026-11-30".parse().unwrap();
        assert_eq!(sweep(tmp.path(), today, 90).unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["access-a-2020-01-01.jsonl", "access-z-2026-11-30.jsonl"]
        );
    }
}
