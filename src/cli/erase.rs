//! `erase` (policy P10, P12): removes the records of one client from the access-log day files
//! in range, safely while the proxy runs, with a summary and a line in the audit trail.
//!
//! Owns the eraser's side of the lock protocol below, the temporary copies it writes
//! (`.access-D.jsonl.erase.<pid>`) and their cleanup after a killed run. Must never print, log
//! or audit an address, never lose or duplicate a record of another client, and never leave a
//! day file more open (owner, group, mode) than it found it.
//!
//! # Erasing while the proxy runs
//! The proxy's access-log writer appends to today's file while `erase` rewrites it. They
//! coordinate with an advisory lock (`flock`, through [`File::lock`]) on the day file:
//!
//! - The writer takes the exclusive lock on its open file before each write. Once it holds the
//!   lock it checks that the path still names the file it holds (same device and inode); if not,
//!   the file was replaced, and it opens the path again and locks that before writing. It only
//!   ever writes whole lines, and only while holding the lock of the file it writes to.
//! - The eraser opens the day file and copies every line that is not the client's to a temporary
//!   file in the same directory (`.access-D.jsonl.erase.<pid>`), without the lock, up to the end
//!   of the file. It then takes the exclusive lock on its open file, checks that the path still
//!   names it (another eraser may have replaced it: then it starts over on the new file), copies
//!   what was appended meanwhile, fsyncs the temporary file, renames it over the day file,
//!   fsyncs the directory, and only then drops the lock.
//!
//! Every byte the writer put in the old file before the eraser's lock is read by the eraser
//! (appends only add at the end, and the eraser reads to the end while holding the lock); every
//! write after the lock waits for it, then finds the path replaced and goes to the new file. No
//! record is lost, none is written twice. The writer is held up only while the eraser copies
//! the tail, syncs and renames, not while it reads the whole file. Records of the client written
//! after the eraser passed a file are not erased: run `erase` again once the client's traffic
//! has stopped (or is blocked).

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;

use super::args::ConfigFile;
use super::search::{self, DayRange, Settings, Summary, Target};
use super::{CliError, audit};
use crate::accesslog::files::same_file;
use crate::accesslog::reader::{DayReader, Needle, Record, Sink, Tally};
use crate::files::Replacement;

/// `erase [--config FILE] --ip ADDR [--since DAY] [--until DAY] [--logs DIR]...`: removes the
/// client's records from the day files of each `--logs` directory (else `access_log.dir`),
/// safely while the proxy runs; a summary on stderr with a line per directory, a line in the
/// audit trail naming the directories.
pub fn run(
    file: &ConfigFile,
    ip: &str,
    since: Option<&str>,
    until: Option<&str>,
    logs: &[std::path::PathBuf],
) -> Result<(), CliError> {
    let target = Target::parse_ip(ip).map_err(CliError::Config)?;
    let range = DayRange::parse(since, until).map_err(CliError::Config)?;
    let settings = super::load_settings(file)?
        .with_search_dirs(logs)
        .map_err(CliError::Config)?;
    audit::check(&settings)?;
    let mut summary = Summary::default();
    let result = erase(&settings, &target, range, &mut summary);
    eprint!("{}", summary.render("erase"));
    audit::record(&settings, "erase", &summary, result.is_ok())?;
    result.map_err(CliError::Runtime)
}

/// Removes every record of the client from the day files in range. The summary so far is in
/// `summary` even when this fails.
pub fn erase(
    settings: &Settings,
    target: &Target,
    range: DayRange,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let keys = settings.keys()?;
    search::each_dir(settings, range, summary, |dir, files, summary| {
        remove_stale_copies(dir);
        for (day, path) in files {
            // A first look without the lock: most files hold nothing of the client.
            let Some((needles, file)) =
                search::open_day(settings, keys.as_ref(), target, day, &path, summary)?
            else {
                continue;
            };
            let mut counter = Counter::default();
            let mut reader = DayReader::new(file, &needles);
            reader
                .read_available(&mut counter)
                .and_then(|()| reader.finish(&mut counter))
                .with_context(|| format!("reading {}", path.display()))?;
            if counter.hits == 0 {
                summary.found.merge(reader.into_tally());
                continue;
            }
            erase_file(&path, &needles, summary)?;
        }
        Ok(())
    })
}

/// Counts the lines erase would remove (its first look at a file).
#[derive(Default)]
struct Counter {
    hits: u64,
}

impl Sink for Counter {
    fn keep(&mut self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn matched(&mut self, _: &[u8], _: &Record) -> io::Result<()> {
        self.hits += 1;
        Ok(())
    }
    fn invalid(&mut self, _: &[u8]) -> io::Result<()> {
        self.hits += 1;
        Ok(())
    }
}

/// Writes the lines that are not the client's to the temporary copy.
struct Filter<W: Write> {
    out: W,
    removed: u64,
    invalid_removed: u64,
}

impl<W: Write> Sink for Filter<W> {
    fn keep(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)
    }
    fn matched(&mut self, _: &[u8], _: &Record) -> io::Result<()> {
        self.removed += 1;
        Ok(())
    }
    fn invalid(&mut self, _: &[u8]) -> io::Result<()> {
        self.invalid_removed += 1;
        Ok(())
    }
}

/// How one attempt at a day file ended.
enum Attempt {
    /// Another eraser replaced the file meanwhile: start over on the new one.
    FileReplaced,
    /// The file was rewritten without the client's lines (`false`: it held none after all, so
    /// it was left as it is).
    Done {
        rewritten: bool,
        tally: Tally,
        removed: u64,
        invalid_removed: u64,
    },
}

/// Gives `copy` (created 0600) the owner, group and permission bits of `original`, so the
/// proxy can go on appending to it and a log reader in the group can go on reading it.
fn keep_owner_and_mode(copy: &File, original: &fs::Metadata) -> io::Result<()> {
    let now = copy.metadata()?;
    if now.uid() != original.uid() || now.gid() != original.gid() {
        let uid = (now.uid() != original.uid()).then_some(original.uid());
        std::os::unix::fs::fchown(copy, uid, Some(original.gid()))?;
    }
    copy.set_permissions(fs::Permissions::from_mode(
        original.permissions().mode() & 0o777,
    ))
}

/// Removes the client's records from one day file, coordinating with a running writer (see
/// the module doc). Returns the records removed.
fn erase_file(path: &Path, needles: &[Needle], summary: &mut Summary) -> anyhow::Result<u64> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // Named after the day file (of whichever node): `.access-[<node>-]D.jsonl.erase.<pid>`.
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.erase.{}", std::process::id()));
    loop {
        let Some(file) =
            search::open_day_file(path).with_context(|| format!("opening {}", path.display()))?
        else {
            return Ok(0);
        };
        let meta = file
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?;
        // Created owner-only, then given the day file's owner, group and exact mode (not
        // through the umask): never more open than the day file at any instant.
        let copy = Replacement::create(path, &tmp, 0o600)
            .with_context(|| format!("creating {}", tmp.display()))?;
        keep_owner_and_mode(copy.file(), &meta).with_context(|| {
            format!(
                "{}: cannot give the copy the day file's owner, group and mode (run erase as \
                 the proxy's user or as root)",
                path.display()
            )
        })?;
        let attempt = copy_without_client(&file, path, needles, copy);
        // Dropping `file` releases the lock, after the rename.
        drop(file);
        match attempt.with_context(|| format!("erasing from {}", path.display()))? {
            Attempt::FileReplaced => continue,
            Attempt::Done {
                rewritten,
                tally,
                removed,
                invalid_removed,
            } => {
                if rewritten {
                    let name = path.file_name().unwrap_or_default().to_string_lossy();
                    summary.files_rewritten.push(name.into_owned());
                }
                summary.found.merge(tally);
                summary.invalid_removed += invalid_removed;
                return Ok(removed);
            }
        }
    }
}

/// One attempt at a day file: copies the lines that are not the client's to `copy` without the
/// lock, then takes `file`'s lock, copies what was appended meanwhile and replaces the day
/// file with the copy. Returns with the lock still held (released when `file` is dropped);
/// the copy is removed unless it replaced the file.
fn copy_without_client(
    file: &File,
    path: &Path,
    needles: &[Needle],
    copy: Replacement,
) -> io::Result<Attempt> {
    let mut reader = DayReader::new(file, needles);
    let mut filter = Filter {
        out: BufWriter::with_capacity(1 << 20, copy.file()),
        removed: 0,
        invalid_removed: 0,
    };
    // Unlocked: everything up to the current end (appends never change it).
    reader.read_available(&mut filter)?;
    filter.out.flush()?;
    copy.file().sync_data()?;
    file.lock()?;
    if !same_file(file, path)? {
        return Ok(Attempt::FileReplaced);
    }
    // Locked: the writer waits; read what it appended since, then replace.
    reader.read_available(&mut filter)?;
    reader.finish(&mut filter)?;
    filter.out.flush()?;
    let (removed, invalid_removed) = (filter.removed, filter.invalid_removed);
    drop(filter);
    let rewritten = removed != 0 || invalid_removed != 0;
    if rewritten {
        copy.commit()?;
    }
    Ok(Attempt::Done {
        rewritten,
        tally: reader.into_tally(),
        removed,
        invalid_removed,
    })
}

/// Removes the temporary copies left by an `erase` that was killed: they hold other clients'
/// records that retention would never delete. A copy whose process still runs is left alone.
fn remove_stale_copies(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = name
            .strip_prefix(".access-")
            .and_then(|rest| rest.split_once(".jsonl.erase."))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "AAAAAAAAAAAAAAAA";
    const B: &str = "BBBBBBBBBBBBBBBB";
    const DAY: &str = "2026-11-02";

    fn rec(client: &str, path: &str) -> String {
        format!(
            "{{\"ts\":\"{DAY}T00:00:01Z\",\"epoch\":\"{DAY}\",\"client\":\"{client}\",\"path\":\"{path}\",\"status\":200}}\n"
        )
    }

    #[test]
    fn erasing_a_day_file_removes_the_client_keeps_the_rest_and_its_mode() {
        let others = [rec(B, "/b1"), "\n".to_owned(), rec(B, "/b2")].concat();
        // (day file content, its mode, records removed, content after, rewritten)
        let rows: Vec<(String, u32, u64, String, bool)> = vec![
            (
                [rec(A, "/a"), rec(B, "/b1"), "\n".to_owned(), rec(B, "/b2")].concat(),
                0o600,
                1,
                others.clone(),
                true,
            ),
            (
                [
                    rec(B, "/b1"),
                    rec(A, "/a"),
                    "\n".to_owned(),
                    rec(B, "/b2"),
                    rec(A, "/c"),
                ]
                .concat(),
                0o640,
                2,
                others.clone(),
                true,
            ),
            // A torn last line holding the pseudonym goes; one without it stays.
            (
                [others.clone(), format!("{{\"client\":\"{A}\",\"ep")].concat(),
                0o640,
                0,
                others.clone(),
                true,
            ),
            (
                [others.clone(), "{\"client\":\"x".to_owned()].concat(),
                0o600,
                0,
                [others.clone(), "{\"client\":\"x".to_owned()].concat(),
                false,
            ),
            // Nothing of the client: the file is left as it is.
            (others.clone(), 0o640, 0, others.clone(), false),
        ];
        let needles = [Needle::new(A.parse().unwrap(), Some(DAY.parse().unwrap()))];
        for (i, (before, mode, removed, after, rewritten)) in rows.into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(format!("access-{DAY}.jsonl"));
            fs::write(&path, &before).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let mut summary = Summary::default();
            let got = erase_file(&path, &needles, &mut summary).unwrap();
            assert_eq!(got, removed, "row {i}");
            assert_eq!(fs::read_to_string(&path).unwrap(), after, "row {i}");
            let now = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
            assert_eq!(now, mode, "row {i}");
            assert_eq!(
                summary.files_rewritten.len(),
                usize::from(rewritten),
                "row {i}"
            );
            assert_eq!(summary.found.records, removed, "row {i}");
            // No temporary copy is left behind.
            assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "row {i}");
        }
    }

    #[test]
    fn only_the_copies_of_erase_runs_that_are_gone_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        // (file name, kept)
        let rows: Vec<(String, bool)> = vec![
            (format!(".access-{DAY}.jsonl.erase.{me}"), true),
            // No process has this id (above the kernel's limit).
            (format!(".access-{DAY}.jsonl.erase.{}", u32::MAX), false),
            (format!(".access-{DAY}.jsonl.erase.x"), true),
            (format!("access-{DAY}.jsonl"), true),
            (".audit.jsonl.1".to_owned(), true),
        ];
        for (name, _) in &rows {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        remove_stale_copies(dir.path());
        for (name, kept) in rows {
            assert_eq!(dir.path().join(&name).exists(), kept, "{name}");
        }
    }
}
