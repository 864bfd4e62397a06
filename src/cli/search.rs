//! What `investigate`, `erase` and `keys` share: the settings they read from the
//! configuration, whom and which days they look for, and the summary they print and audit.
//!
//! Owns turning a client given by `--ip` into the pseudonym of each day with that day's key
//! (the day and the day before: records written just after midnight, before the proxy
//! ratcheted its key, carry the previous epoch), and the list of day files in range. Must never
//! print, log or audit an address: only pseudonyms leave this module. A day whose key is gone
//! is unlinkable, never guessed.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::accesslog::files as day_files_on_disk;
use crate::accesslog::reader::{Needle, Tally};
use crate::client_ip::ClientAddr;
use crate::config::Config;
use crate::epoch::{self, Epoch};
use crate::privacy::keys::{KeyStore, Pseudonym, pseudonym};

/// Whom to look for.
pub enum Target {
    /// A client address: its pseudonym is computed for each day with that day's key.
    Ip(ClientAddr),
    /// One pseudonym, in whatever epoch it appears.
    Client(Pseudonym),
}

impl Target {
    /// Parses `--ip`. The error never repeats the value.
    pub fn parse_ip(s: &str) -> Result<Target, String> {
        s.trim()
            .parse::<std::net::IpAddr>()
            .map(|ip| Target::Ip(ClientAddr::new(ip)))
            .map_err(|_| "--ip: the given address is not an IPv4 or IPv6 address".to_owned())
    }

    /// Parses `--client`.
    pub fn parse_client(s: &str) -> Result<Target, String> {
        s.trim()
            .parse::<Pseudonym>()
            .map(Target::Client)
            .map_err(|e| format!("--client: {e}"))
    }
}

/// The days to search: inclusive UTC days; `None` is open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DayRange {
    /// First day searched.
    pub since: Option<Epoch>,
    /// Last day searched.
    pub until: Option<Epoch>,
}

impl DayRange {
    /// Parses `--since` and `--until`; errors name the flag.
    pub fn parse(since: Option<&str>, until: Option<&str>) -> Result<DayRange, String> {
        // The value is never echoed: an address typed into the wrong flag stays off the screen.
        let day = |flag: &str, v: Option<&str>| {
            v.map(|s| {
                s.trim().parse::<Epoch>().map_err(|_| {
                    format!("{flag}: the value given is not a UTC day written YYYY-MM-DD")
                })
            })
            .transpose()
        };
        let range = DayRange {
            since: day("--since", since)?,
            until: day("--until", until)?,
        };
        if let (Some(s), Some(u)) = (range.since, range.until)
            && s > u
        {
            return Err(format!("--since {s} is after --until {u}"));
        }
        Ok(range)
    }

    /// Whether `day` is in the range.
    pub fn contains(&self, day: Epoch) -> bool {
        self.since.is_none_or(|s| day >= s) && self.until.is_none_or(|u| day <= u)
    }
}

/// What a search found, for stderr and the audit trail.
#[derive(Debug, Default)]
pub struct Summary {
    /// The matching records (investigate: shown; erase: erased) and the lines skipped.
    pub found: Tally,
    /// Day files searched.
    pub days_searched: Vec<Epoch>,
    /// Day files not searched because no key of their day is kept.
    pub days_unlinkable: Vec<Epoch>,
    /// Day files rewritten (erase), by file name.
    pub files_rewritten: Vec<String>,
    /// Lines that held the pseudonym but were not a record, removed by erase.
    pub invalid_removed: u64,
    /// The pseudonyms searched, with the epoch they belong to (`None`: any epoch).
    pub pseudonyms: Vec<(Option<Epoch>, Pseudonym)>,
    /// What each log directory searched gave, in the order given; a directory not reached
    /// (an earlier one failed) is listed too, incomplete.
    pub dirs: Vec<DirTally>,
    /// The day files opened so far, by device and inode: a file reached twice (a hard link
    /// under another node's name) is searched once.
    pub files_seen: std::collections::HashSet<(u64, u64)>,
}

/// What one log directory gave a search.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DirTally {
    /// The directory: absolute, symbolic links resolved, as searched (a path that is not
    /// UTF-8 is written with U+FFFD for its undecodable bytes).
    #[serde(serialize_with = "lossy_path")]
    pub dir: PathBuf,
    /// Day files searched in it (a day unlinkable or outside the range is not counted).
    pub files: u64,
    /// Matching records (investigate: shown; erase: erased).
    pub records: u64,
    /// Whether every day file in range in it was searched: false when the command failed in
    /// it or before reaching it.
    pub complete: bool,
}

fn lossy_path<S: serde::Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

impl Summary {
    /// The summary as text for stderr, one `name: value` line each.
    pub fn render(&self, command: &str) -> String {
        let days = |d: &[Epoch]| {
            if d.is_empty() {
                "none".to_owned()
            } else {
                d.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        let found = &self.found;
        let mut out = String::new();
        let verb = if command == "erase" {
            "erased"
        } else {
            "found"
        };
        out.push_str(&format!("{command}: {} records {verb}\n", found.records));
        out.push_str(&format!(
            "first: {}\nlast: {}\n",
            found.first_ts.as_deref().unwrap_or("-"),
            found.last_ts.as_deref().unwrap_or("-")
        ));
        let statuses: Vec<String> = found
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}={n}"))
            .collect();
        out.push_str(&format!(
            "statuses: {}\n",
            if statuses.is_empty() {
                "-".to_owned()
            } else {
                statuses.join(" ")
            }
        ));
        let mut paths: Vec<(&String, &u64)> = found.paths.iter().collect();
        paths.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let top: Vec<String> = paths
            .iter()
            .take(10)
            .map(|(p, n)| format!("{p}={n}"))
            .collect();
        out.push_str(&format!(
            "top paths: {}\n",
            if top.is_empty() {
                "-".to_owned()
            } else {
                top.join(" ")
            }
        ));
        for d in &self.dirs {
            out.push_str(&format!(
                "in {}: {} records {verb}, {} day files searched{}\n",
                d.dir.display(),
                d.records,
                d.files,
                if d.complete { "" } else { " (incomplete)" }
            ));
        }
        out.push_str(&format!(
            "days searched: {} ({})\n",
            self.days_searched.len(),
            days(&self.days_searched)
        ));
        out.push_str(&format!(
            "days unlinkable: {} ({})\n",
            self.days_unlinkable.len(),
            days(&self.days_unlinkable)
        ));
        if command == "erase" {
            out.push_str(&format!(
                "files rewritten: {} ({})\n",
                self.files_rewritten.len(),
                if self.files_rewritten.is_empty() {
                    "none".to_owned()
                } else {
                    self.files_rewritten.join(" ")
                }
            ));
            out.push_str(&format!(
                "unparseable lines holding the pseudonym removed: {}\n",
                self.invalid_removed
            ));
        }
        let s = &found.skipped;
        out.push_str(&format!(
            "skipped lines: {} torn, {} blank, {} invalid; records with unknown fields: {}\n",
            s.torn, s.blank, s.invalid, s.unknown_fields
        ));
        out
    }
}

/// The configuration values the commands use.
pub struct Settings {
    /// `access_log.dir`: where the audit trail is written.
    pub log_dir: PathBuf,
    /// The directories searched: each `--logs DIR` given, else `access_log.dir` alone.
    pub search_dirs: Vec<PathBuf>,
    /// Whether `search_dirs` were given on the command line: then each must exist.
    pub dirs_given: bool,
    /// `access_log.retention` in whole days.
    pub log_retention_days: i64,
    /// `privacy.key_dir`.
    pub key_dir: PathBuf,
    /// `privacy.key_retention`.
    pub key_retention: std::time::Duration,
    /// `privacy.pseudonym_ipv6_prefix`.
    pub pseudonym_ipv6_prefix: u8,
}

impl Settings {
    /// From a validated configuration.
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            log_dir: config.access_log.dir.clone(),
            search_dirs: vec![config.access_log.dir.clone()],
            dirs_given: false,
            log_retention_days: epoch::whole_days(config.access_log.retention.0),
            key_dir: config.privacy.key_dir.clone(),
            key_retention: config.privacy.key_retention.0,
            pseudonym_ipv6_prefix: config.privacy.pseudonym_ipv6_prefix,
        }
    }

    /// Searches `dirs` instead of `access_log.dir` when any is given (`--logs DIR`, repeated).
    /// Each must be a directory; it is searched under its absolute path with symbolic links
    /// resolved, so one directory given under two spellings (`a`, `./a/`, a link to it) is
    /// searched once. The error names the flag and the directory, unless the value reads as
    /// an IP address (an `--ip` value in the wrong place is never echoed).
    pub fn with_search_dirs(mut self, dirs: &[PathBuf]) -> Result<Settings, String> {
        if dirs.is_empty() {
            return Ok(self);
        }
        let mut unique: Vec<PathBuf> = Vec::with_capacity(dirs.len());
        for d in dirs {
            let named = || {
                // An address, or something shaped like one (`198.51.100.777`, a CIDR).
                let looks_like_ip = d.to_str().is_some_and(|s| {
                    let s = s.trim();
                    s.contains(['.', ':'])
                        && s.bytes().any(|b| b.is_ascii_digit())
                        && s.bytes().all(|b| {
                            b.is_ascii_hexdigit() || matches!(b, b'.' | b':' | b'/' | b'%')
                        })
                });
                if looks_like_ip {
                    "--logs: the value given looks like an IP address, not a directory".to_owned()
                } else {
                    format!("--logs {}", d.display())
                }
            };
            let real = match std::fs::metadata(d) {
                Ok(m) if m.is_dir() => std::fs::canonicalize(d),
                Ok(_) => return Err(format!("{}: is not a directory", named())),
                Err(e) => Err(e),
            }
            .map_err(|e| format!("{}: {e}", named()))?;
            if !unique.contains(&real) {
                unique.push(real);
            }
        }
        self.search_dirs = unique;
        self.dirs_given = true;
        Ok(self)
    }

    /// The key store, or `None` when `key_dir` does not exist (every day is unlinkable). Does
    /// not create the directory.
    pub fn keys(&self) -> anyhow::Result<Option<KeyStore>> {
        if !self.key_dir.is_dir() {
            return Ok(None);
        }
        KeyStore::open(&self.key_dir, self.key_retention)
            .map(Some)
            .with_context(|| "opening privacy.key_dir")
    }
}

/// The needles for one day file: the pseudonyms of the address under the keys of the day and
/// the day before. `None` when the day's own key is gone (the day is unlinkable).
fn needles_for_day(
    target: &Target,
    keys: Option<&KeyStore>,
    day: Epoch,
    prefix: u8,
) -> anyhow::Result<Option<Vec<Needle>>> {
    match target {
        Target::Client(p) => Ok(Some(vec![Needle::new(*p, None)])),
        Target::Ip(addr) => {
            let Some(keys) = keys else { return Ok(None) };
            let mut out = Vec::new();
            for epoch in [day, day.prev()] {
                let key = keys
                    .load(epoch)
                    .with_context(|| format!("loading the key of {epoch}"))?;
                match key {
                    Some(key) => out.push(Needle::new(pseudonym(&key, *addr, prefix), Some(epoch))),
                    None if epoch == day => return Ok(None),
                    None => {}
                }
            }
            Ok(Some(out))
        }
    }
}

fn note_pseudonyms(summary: &mut Summary, needles: &[Needle]) {
    for n in needles {
        let entry = (n.epoch(), n.pseudonym());
        if !summary.pseudonyms.contains(&entry) {
            summary.pseudonyms.push(entry);
        }
    }
}

/// Prepares one day file for a search: the target's needles for that day and the open file.
/// `None` for a day that cannot be searched: unlinkable (recorded in `summary`), or swept by
/// retention since it was listed. Records the pseudonyms and the day searched.
pub fn open_day(
    settings: &Settings,
    keys: Option<&KeyStore>,
    target: &Target,
    day: Epoch,
    path: &Path,
    summary: &mut Summary,
) -> anyhow::Result<Option<(Vec<Needle>, File)>> {
    let Some(needles) = needles_for_day(target, keys, day, settings.pseudonym_ipv6_prefix)? else {
        if !summary.days_unlinkable.contains(&day) {
            summary.days_unlinkable.push(day);
        }
        return Ok(None);
    };
    note_pseudonyms(summary, &needles);
    let Some(file) = open_day_file(path).with_context(|| format!("opening {}", path.display()))?
    else {
        return Ok(None);
    };
    let meta = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    if !summary.files_seen.insert((meta.dev(), meta.ino())) {
        // The same file under another name (a hard link): searched already.
        return Ok(None);
    }
    if !summary.days_searched.contains(&day) {
        summary.days_searched.push(day);
    }
    if let Some(d) = summary.dirs.last_mut() {
        d.files += 1;
    }
    Ok(Some((needles, file)))
}

/// Opens a day file for reading: `None` when it is gone. Only a regular file: a named pipe in
/// the log directory must not hang the search. A symbolic link named like a day file is an
/// error, never followed: `erase` would replace the link, not the records it points to, and
/// the file it points to is searched in its own directory.
pub fn open_day_file(path: &Path) -> Result<Option<File>, crate::files::FileError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(crate::files::FileError::NotRegular(
                "a symbolic link (not followed: give its target's directory with --logs)",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        _ => {}
    }
    match crate::files::open_regular(path) {
        Ok(f) => Ok(Some(f)),
        Err(crate::files::FileError::Io(e)) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The day files in range in `dir` (of every node), oldest first. A directory that does not
/// exist holds none, unless it `must_exist` (given with `--logs`: then it is an error).
pub fn day_files(
    dir: &Path,
    range: DayRange,
    must_exist: bool,
) -> anyhow::Result<Vec<(Epoch, PathBuf)>> {
    if !must_exist && !dir.is_dir() {
        return Ok(Vec::new());
    }
    let days =
        day_files_on_disk::list_days(dir).with_context(|| format!("listing {}", dir.display()))?;
    Ok(days
        .into_iter()
        .filter(|(d, _)| range.contains(*d))
        .collect())
}

/// Runs `search` on each directory of `settings.search_dirs` in turn, with its day files in
/// range, and keeps in `summary.dirs` what each gave (the records counted from
/// `summary.found`). Stops at the first error; the summary so far is kept.
pub fn each_dir(
    settings: &Settings,
    range: DayRange,
    summary: &mut Summary,
    mut search: impl FnMut(&Path, Vec<(Epoch, PathBuf)>, &mut Summary) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut failed = None;
    for dir in &settings.search_dirs {
        summary.dirs.push(DirTally {
            dir: dir.clone(),
            files: 0,
            records: 0,
            complete: false,
        });
        if failed.is_some() {
            continue;
        }
        let before = summary.found.records;
        let result = day_files(dir, range, settings.dirs_given)
            .and_then(|files| search(dir, files, summary));
        let records = summary.found.records - before;
        if let Some(d) = summary.dirs.last_mut() {
            d.records = records;
            d.complete = result.is_ok();
        }
        if let Err(e) = result {
            failed = Some(e);
        }
    }
    failed.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Epoch {
        s.parse().unwrap()
    }

    #[test]
    fn day_range_parsing_names_the_flag() {
        assert_eq!(DayRange::parse(None, None), Ok(DayRange::default()));
        let r = DayRange::parse(Some("2026-11-01"), Some("2026-11-03")).unwrap();
        assert!(r.contains(ep("2026-11-01")) && r.contains(ep("2026-11-03")));
        assert!(!r.contains(ep("2026-10-31")) && !r.contains(ep("2026-11-04")));
        assert!(
            DayRange::parse(Some("2026-13-01"), None)
                .unwrap_err()
                .starts_with("--since")
        );
        assert!(
            DayRange::parse(None, Some("yesterday"))
                .unwrap_err()
                .starts_with("--until")
        );
        assert!(DayRange::parse(Some("2026-11-03"), Some("2026-11-01")).is_err());
    }

    #[test]
    fn the_client_flags_are_parsed_into_a_target() {
        // (flag, value, Ok(what it names) or the start of the error)
        let rows: &[(&str, &str, Result<&str, &str>)] = &[
            ("--ip", "203.0.113.7", Ok("ip 203.0.113.7")),
            ("--ip", " 203.0.113.7\n", Ok("ip 203.0.113.7")),
            ("--ip", "2001:db8::1", Ok("ip 2001:db8::1")),
            ("--ip", "203.0.113.7/24", Err("--ip")),
            ("--ip", "", Err("--ip")),
            ("--ip", "localhost", Err("--ip")),
            (
                "--client",
                "AAAAAAAAAAAAAAAA",
                Ok("client AAAAAAAAAAAAAAAA"),
            ),
            (
                "--client",
                " abcdefghij-_0123 ",
                Ok("client abcdefghij-_0123"),
            ),
            ("--client", "abcdefghij+/0123", Err("--client")),
            ("--client", "AAAA", Err("--client")),
        ];
        for &(flag, value, want) in rows {
            let parsed = if flag == "--ip" {
                Target::parse_ip(value)
            } else {
                Target::parse_client(value)
            };
            let got = parsed.map(|t| match t {
                Target::Ip(addr) => format!("ip {}", addr.ip()),
                Target::Client(p) => format!("client {p}"),
            });
            match want {
                Ok(named) => assert_eq!(got.as_deref(), Ok(named), "{flag} {value:?}"),
                Err(start) => {
                    let err = got.expect_err(value);
                    assert!(err.starts_with(start), "{flag} {value:?}: {err}");
                }
            }
        }
    }

    #[test]
    fn ip_errors_never_echo_the_value() {
        let err = Target::parse_ip("203.0.113.999").err().unwrap();
        assert!(
            err.starts_with("--ip") && !err.contains("203.0.113"),
            "{err}"
        );
    }

    #[test]
    fn a_directory_gone_after_the_check_fails_the_search_and_later_ones_are_listed_incomplete() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = ["a", "gone", "c"]
            .iter()
            .map(|d| tmp.path().join(d))
            .collect();
        for d in &dirs {
            std::fs::create_dir(d).unwrap();
        }
        let settings = Settings {
            log_dir: tmp.path().join("audit"),
            search_dirs: Vec::new(),
            dirs_given: false,
            log_retention_days: 90,
            key_dir: tmp.path().join("keys"),
            key_retention: std::time::Duration::from_secs(86400),
            pseudonym_ipv6_prefix: 64,
        }
        .with_search_dirs(&dirs)
        .unwrap();
        std::fs::remove_dir(&dirs[1]).unwrap();
        let mut summary = Summary::default();
        let mut searched = Vec::new();
        let result = each_dir(&settings, DayRange::default(), &mut summary, |dir, _, _| {
            searched.push(dir.to_owned());
            Ok(())
        });
        let err = format!("{:#}", result.unwrap_err());
        assert!(err.contains("gone"), "{err}");
        assert_eq!(searched.len(), 1, "c is not searched after gone failed");
        let tallies: Vec<(bool, bool)> = summary
            .dirs
            .iter()
            .map(|d| {
                (
                    d.dir.ends_with("a") || d.dir.ends_with("gone") || d.dir.ends_with("c"),
                    d.complete,
                )
            })
            .collect();
        assert_eq!(tallies, [(true, true), (true, false), (true, false)]);
        let text = summary.render("erase");
        assert!(
            text.contains("gone: 0 records erased, 0 day files searched (incomplete)"),
            "{text}"
        );
    }
}
