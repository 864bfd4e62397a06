//! The audit trail (policy P12): `<access_log.dir>/audit.jsonl`, one line per `investigate` or
//! `erase`: when, which command, which operating-system user, the pseudonyms and days searched,
//! how many records, whether it succeeded.
//!
//! Owns the trail's file: appended under the same lock-and-check protocol as the day files,
//! lines past `access_log.retention` dropped by an atomic rewrite, owner-only (0600). Must
//! never write an address or a record, and a command whose audit line cannot be written fails.

use std::ffi::CStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::CliError;
use super::search::{Settings, Summary};
use crate::accesslog::files::same_file;
use crate::epoch::Epoch;

/// The audit trail's file name in `access_log.dir`.
pub const AUDIT_FILE: &str = "audit.jsonl";

/// Writes the audit line of `command`; a command whose audit cannot be written fails.
pub fn record(
    settings: &Settings,
    command: &str,
    summary: &Summary,
    ok: bool,
) -> Result<(), CliError> {
    audit_line(command, summary, ok)
        .map_err(io::Error::other)
        .and_then(|line| append_audit(&settings.log_dir, settings.log_retention_days, &line))
        .map_err(|e| trail_error(settings, e))
}

/// Checks, before a command shows or erases anything, that its audit line can be written:
/// the trail is (or can be made) a regular file the command may append to. Creates the
/// directory (0700) and the file (0600) when missing.
pub fn check(settings: &Settings) -> Result<(), CliError> {
    create_dir(&settings.log_dir)
        .and_then(|()| open_trail(&settings.log_dir.join(AUDIT_FILE)))
        .map(drop)
        .map_err(|e| trail_error(settings, e))
}

fn trail_error(settings: &Settings, e: io::Error) -> CliError {
    CliError::Runtime(anyhow::Error::new(e).context(format!(
        "writing the audit trail {}",
        settings.log_dir.join(AUDIT_FILE).display()
    )))
}

/// Makes `dir` (and its missing parents) owner-only when it is missing.
fn create_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Opens the trail for reading and appending, creating it 0600: never through a symbolic link,
/// never a named pipe or a device (opened non-blocking, then checked), and a file left more
/// open than owner-only is made owner-only.
fn open_trail(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::PermissionsExt as _;
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => io::Error::other("is a symbolic link, not a regular file"),
            _ => e,
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(crate::files::FileError::not_regular(
            &meta,
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// The operating-system user running the command: `USER` or `LOGNAME`, else the name of the
/// real user id in the user database (`getpwuid_r`: `/etc/passwd`, or what NSS is set up to
/// ask), else `uid:N`; and the uid.
pub fn os_user() -> (String, Option<u32>) {
    // SAFETY: no arguments; cannot fail.
    let uid = unsafe { libc::getuid() };
    let from_env = ["USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
    if let Some(name) = from_env {
        return (name, Some(uid));
    }
    match user_name(uid) {
        Some(name) => (name, Some(uid)),
        None => (format!("uid:{uid}"), Some(uid)),
    }
}

/// The name of user `uid` in the user database, if it has one.
fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        // SAFETY: `pwd` is plain data, written by the call; `buf` outlives the call and its
        // length is passed; `found` is set to null or to `&pwd`.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success `pw_name` points to a NUL-terminated string inside `buf`.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) };
        return Some(name.to_string_lossy().into_owned());
    }
}

/// One audit line: time, command, user, pseudonyms searched, days, result count, the log
/// directories. Never the address.
pub fn audit_line(command: &str, summary: &Summary, ok: bool) -> serde_json::Result<Vec<u8>> {
    let now = time::OffsetDateTime::now_utc();
    let time = now
        .replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    #[derive(serde::Serialize)]
    struct Searched {
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        client: String,
    }
    #[derive(serde::Serialize)]
    struct Line<'a> {
        time: String,
        command: &'a str,
        user: String,
        uid: Option<u32>,
        pseudonyms: Vec<Searched>,
        days_searched: Vec<String>,
        days_unlinkable: Vec<String>,
        count: u64,
        /// Each log directory searched, with its day files searched and records counted.
        log_dirs: &'a [super::search::DirTally],
        ok: bool,
    }
    let (user, uid) = os_user();
    let days = |d: &[Epoch]| d.iter().map(|e| e.to_string()).collect::<Vec<_>>();
    let line = Line {
        time,
        command,
        user,
        uid,
        pseudonyms: summary
            .pseudonyms
            .iter()
            .map(|(e, p)| Searched {
                epoch: e.map(|e| e.to_string()),
                client: p.as_str().to_owned(),
            })
            .collect(),
        days_searched: days(&summary.days_searched),
        days_unlinkable: days(&summary.days_unlinkable),
        count: summary.found.records,
        log_dirs: &summary.dirs,
        ok,
    };
    let mut out = serde_json::to_vec(&line)?;
    out.push(b'\n');
    Ok(out)
}

/// Whether an audit line is past retention (or cannot be dated, so cannot be kept).
fn audit_expired(line: &[u8], today: Epoch, retention_days: i64) -> bool {
    #[derive(serde::Deserialize)]
    struct Dated<'a> {
        #[serde(borrow)]
        time: &'a str,
    }
    let day = serde_json::from_slice::<Dated>(line)
        .ok()
        .and_then(|d| d.time.get(..10).and_then(|s| s.parse::<Epoch>().ok()));
    day.is_none_or(|d| d.days_until(today) > retention_days)
}

/// Appends `line` to `<dir>/audit.jsonl`, first dropping lines past `retention_days` (and a
/// torn last line) by rewriting the file atomically. Serialised between processes with the
/// same lock-and-check protocol as the day files.
pub fn append_audit(dir: &Path, retention_days: i64, line: &[u8]) -> io::Result<()> {
    append_audit_at(dir, retention_days, line, Epoch::today())
}

fn append_audit_at(dir: &Path, retention_days: i64, line: &[u8], today: Epoch) -> io::Result<()> {
    create_dir(dir)?;
    let path = dir.join(AUDIT_FILE);
    loop {
        let mut file = open_trail(&path)?;
        file.lock()?;
        if !same_file(&file, &path)? {
            continue;
        }
        let mut old = Vec::new();
        file.read_to_end(&mut old)?;
        let torn = !old.is_empty() && !old.ends_with(b"\n");
        let mut kept = Vec::with_capacity(old.len() + line.len());
        let mut dropped = torn;
        for l in old.split_inclusive(|&b| b == b'\n') {
            if !l.ends_with(b"\n") {
                continue;
            }
            if audit_expired(&l[..l.len() - 1], today, retention_days) {
                dropped = true;
            } else {
                kept.extend_from_slice(l);
            }
        }
        if !dropped {
            file.write_all(line)?;
            return file.sync_data();
        }
        kept.extend_from_slice(line);
        let tmp = dir.join(format!(".{AUDIT_FILE}.{}", std::process::id()));
        // Made anew, so it is 0600 whatever a file left at that name had.
        return crate::files::write_atomically(&path, &tmp, 0o600, &kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn ep(s: &str) -> Epoch {
        s.parse().unwrap()
    }

    #[test]
    fn the_user_is_named_from_the_user_database_by_uid() {
        // uid 0 is root in every user database.
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(user_name(u32::MAX - 1), None);
    }

    #[test]
    fn audit_drops_lines_past_retention() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(AUDIT_FILE);
        let old = b"{\"time\":\"2026-01-01T00:00:00Z\",\"command\":\"erase\"}\n";
        let recent = b"{\"time\":\"2026-03-30T00:00:00Z\",\"command\":\"erase\"}\n";
        fs::write(
            &path,
            [&old[..], &recent[..], b"{\"time\":\"2026-03-3"].concat(),
        )
        .unwrap();
        let new = b"{\"time\":\"2026-03-31T00:00:00Z\",\"command\":\"investigate\"}\n";
        append_audit_at(tmp.path(), 30, new, ep("2026-03-31")).unwrap();
        assert_eq!(fs::read(&path).unwrap(), [&recent[..], &new[..]].concat());
        append_audit_at(tmp.path(), 30, new, ep("2026-03-31")).unwrap();
        assert_eq!(
            fs::read(&path).unwrap(),
            [&recent[..], &new[..], &new[..]].concat()
        );
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_audit_rewrite_is_owner_only_whatever_was_left_at_its_temporary_name() {
        // (mode of the file left at the temporary name)
        for left in [0o644, 0o666, 0o600] {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join(AUDIT_FILE);
            let old = b"{\"time\":\"2026-01-01T00:00:00Z\",\"command\":\"erase\"}\n";
            fs::write(&path, old).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            let stale = tmp
                .path()
                .join(format!(".{AUDIT_FILE}.{}", std::process::id()));
            fs::write(&stale, b"left over").unwrap();
            fs::set_permissions(&stale, fs::Permissions::from_mode(left)).unwrap();
            let new = b"{\"time\":\"2026-03-31T00:00:00Z\",\"command\":\"investigate\"}\n";
            append_audit_at(tmp.path(), 30, new, ep("2026-03-31")).unwrap();
            assert_eq!(fs::read(&path).unwrap(), new, "{left:o}");
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o600, "left {left:o}");
        }
    }
}
