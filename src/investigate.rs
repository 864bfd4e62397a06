//! Investigation and data-subject tools (policy P9, P10, P12 in `docs/policy.md`):
//! `investigate`, `erase` and `keys`, and the audit trail they leave.
//!
//! Owns the search of the access-log day files for one client, the erasure of that client's
//! records, and `<access_log.dir>/audit.jsonl`. Must never print, log or audit an address: a
//! client given by `--ip` is turned into the pseudonym of each day with that day's key, and only
//! pseudonyms are shown or recorded. A day whose key is gone is reported as unlinkable, never
//! guessed.
//!
//! # Matching
//! A day file `access-D.jsonl` holds records whose `epoch` is `D`, or `D-1` for records written
//! just after midnight before the proxy ratcheted its key. For `--ip`, the candidates are the
//! pseudonyms of the address under the keys of `D` and `D-1`; a record matches when its
//! `client` is the pseudonym of its own `epoch`. For `--client`, a record matches when its
//! `client` is the given pseudonym, whatever its epoch. The file is read in large chunks and
//! searched for the bytes `"<pseudonym>"`; only lines holding them are parsed as JSON.
//!
//! # Robustness
//! A torn last line, blank lines, and candidate lines that are not a JSON object with string
//! `client` and `epoch` are skipped and counted; a matching record with fields outside the record
//! schema is still a record of the client (shown, or erased) and is counted. Lines that do not
//! hold the searched pseudonym are never parsed, so junk there is neither counted nor fatal.
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

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use memchr::memmem;

use crate::accesslog::files::{self, same_file};
use crate::client_ip::ClientAddr;
use crate::config::Config;
use crate::privacy::keys::{Epoch, KeyState, KeyStore, Pseudonym, pseudonym};

/// The audit trail's file name in `access_log.dir`.
pub const AUDIT_FILE: &str = "audit.jsonl";

/// Bytes read from a day file at a time.
const CHUNK: usize = 8 << 20;

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
        let day = |flag: &str, v: Option<&str>| {
            v.map(|s| s.parse::<Epoch>().map_err(|e| format!("{flag}: {e}")))
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

    fn contains(&self, day: Epoch) -> bool {
        self.since.is_none_or(|s| day >= s) && self.until.is_none_or(|u| day <= u)
    }
}

/// Lines skipped while reading, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    /// A last line without its newline.
    pub torn: u64,
    /// Empty lines.
    pub blank: u64,
    /// Lines holding the searched pseudonym that are not a record (not JSON, no `client`).
    pub invalid: u64,
    /// Matching records with fields outside the record schema (`docs/access-record.schema.json`;
    /// not skipped: shown or erased).
    pub unknown_fields: u64,
}

/// What a search found.
#[derive(Debug, Default)]
pub struct Summary {
    /// Matching records (investigate: shown; erase: erased).
    pub records: u64,
    /// Earliest and latest `ts` of the matching records.
    pub first_ts: Option<String>,
    /// See `first_ts`.
    pub last_ts: Option<String>,
    /// Matching records by status.
    pub statuses: BTreeMap<u64, u64>,
    /// Matching records by path.
    pub paths: HashMap<String, u64>,
    /// Day files searched.
    pub days_searched: Vec<Epoch>,
    /// Day files not searched because no key of their day is kept.
    pub days_unlinkable: Vec<Epoch>,
    /// Day files rewritten (erase).
    pub files_rewritten: Vec<Epoch>,
    /// Lines that held the pseudonym but were not a record, removed by erase.
    pub invalid_removed: u64,
    /// Lines skipped.
    pub skipped: Skipped,
    /// The pseudonyms searched, with the epoch they belong to (`None`: any epoch).
    pub pseudonyms: Vec<(Option<Epoch>, Pseudonym)>,
}

impl Summary {
    fn add(&mut self, rec: &Record) {
        self.records += 1;
        if let Some(ts) = &rec.ts {
            if self.first_ts.as_ref().is_none_or(|f| ts < f) {
                self.first_ts = Some(ts.clone());
            }
            if self.last_ts.as_ref().is_none_or(|l| ts > l) {
                self.last_ts = Some(ts.clone());
            }
        }
        if let Some(s) = rec.status {
            *self.statuses.entry(s).or_default() += 1;
        }
        if let Some(p) = &rec.path {
            *self.paths.entry(p.clone()).or_default() += 1;
        }
    }

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
        let mut out = String::new();
        let verb = if command == "erase" {
            "erased"
        } else {
            "found"
        };
        out.push_str(&format!("{command}: {} records {verb}\n", self.records));
        out.push_str(&format!(
            "first: {}\nlast: {}\n",
            self.first_ts.as_deref().unwrap_or("-"),
            self.last_ts.as_deref().unwrap_or("-")
        ));
        let statuses: Vec<String> = self
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
        let mut paths: Vec<(&String, &u64)> = self.paths.iter().collect();
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
                days(&self.files_rewritten)
            ));
            out.push_str(&format!(
                "unparseable lines holding the pseudonym removed: {}\n",
                self.invalid_removed
            ));
        }
        let s = &self.skipped;
        out.push_str(&format!(
            "skipped lines: {} torn, {} blank, {} invalid; records with unknown fields: {}\n",
            s.torn, s.blank, s.invalid, s.unknown_fields
        ));
        out
    }
}

/// The configuration values the tools use.
pub struct Settings {
    /// `access_log.dir`.
    pub log_dir: PathBuf,
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
            log_retention_days: i64::try_from(config.access_log.retention.0.as_secs() / 86_400)
                .unwrap_or(i64::MAX),
            key_dir: config.privacy.key_dir.clone(),
            key_retention: config.privacy.key_retention.0,
            pseudonym_ipv6_prefix: config.privacy.pseudonym_ipv6_prefix,
        }
    }

    /// The key store, or `None` when `key_dir` does not exist (every day is unlinkable). Does
    /// not create the directory.
    fn keys(&self) -> anyhow::Result<Option<KeyStore>> {
        if !self.key_dir.is_dir() {
            return Ok(None);
        }
        KeyStore::open(&self.key_dir, self.key_retention)
            .map(Some)
            .with_context(|| "opening privacy.key_dir")
    }
}

/// One pseudonym looked for in a day file, and the epoch a record must have to match.
struct Needle {
    pseudonym: Pseudonym,
    /// `Some`: the record's `epoch` must be this; `None`: any epoch.
    epoch: Option<Epoch>,
    finder: memmem::Finder<'static>,
}

impl Needle {
    fn new(pseudonym: Pseudonym, epoch: Option<Epoch>) -> Needle {
        let quoted = format!("\"{pseudonym}\"").into_bytes();
        Needle {
            pseudonym,
            epoch,
            finder: memmem::Finder::new(&quoted).into_owned(),
        }
    }
}

/// The parts of a matching record the summary uses.
struct Record {
    ts: Option<String>,
    status: Option<u64>,
    path: Option<String>,
    unknown_fields: bool,
}

enum Verdict {
    Match(Record),
    Other,
    Invalid,
}

/// Parses a candidate line and decides whether it is a record of one of `needles`.
fn judge(line: &[u8], needles: &[Needle]) -> Verdict {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(line)
    else {
        return Verdict::Invalid;
    };
    let (Some(client), Some(epoch)) = (
        map.get("client").and_then(|v| v.as_str()),
        map.get("epoch").and_then(|v| v.as_str()),
    ) else {
        return Verdict::Invalid;
    };
    let epoch = epoch.parse::<Epoch>().ok();
    let hit = needles
        .iter()
        .any(|n| n.pseudonym.as_str() == client && n.epoch.is_none_or(|want| epoch == Some(want)));
    if !hit {
        return Verdict::Other;
    }
    Verdict::Match(Record {
        ts: map.get("ts").and_then(|v| v.as_str()).map(str::to_owned),
        status: map.get("status").and_then(|v| v.as_u64()),
        path: map.get("path").and_then(|v| v.as_str()).map(str::to_owned),
        unknown_fields: map
            .keys()
            .any(|k| !crate::privacy::observation::FIELDS.contains(&k.as_str())),
    })
}

/// A day file read in large chunks, handed out as regions of whole lines.
struct Lines<R> {
    src: R,
    buf: Vec<u8>,
    /// Valid bytes in `buf`.
    len: usize,
    /// Bytes of `buf` already handed out; the rest is an incomplete line.
    consumed: usize,
    /// Whether the byte before `buf[0]` was a newline (or the start of the file).
    at_line_start: bool,
}

impl<R: Read> Lines<R> {
    fn new(src: R) -> Lines<R> {
        Lines {
            src,
            buf: vec![0; CHUNK],
            len: 0,
            consumed: 0,
            at_line_start: true,
        }
    }

    /// The next region of whole lines (ending with a newline), or `None` at the end of the
    /// file for now; the incomplete last line stays in [`Lines::tail`]. Calling again after
    /// `None` reads what was appended since.
    fn next_region(&mut self) -> io::Result<Option<std::ops::Range<usize>>> {
        if self.consumed > 0 {
            self.at_line_start = self.buf[self.consumed - 1] == b'\n';
            self.buf.copy_within(self.consumed..self.len, 0);
            self.len -= self.consumed;
            self.consumed = 0;
        }
        loop {
            if self.len == self.buf.len() {
                // One line longer than the buffer: grow rather than cut it.
                let bigger = self.buf.len() * 2;
                self.buf.resize(bigger, 0);
            }
            let n = match self.src.read(&mut self.buf[self.len..]) {
                Ok(0) => return Ok(None),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let old = self.len;
            self.len += n;
            if let Some(p) = memchr::memrchr(b'\n', &self.buf[old..self.len]) {
                self.consumed = old + p + 1;
                return Ok(Some(0..self.consumed));
            }
        }
    }

    fn region(&self, r: std::ops::Range<usize>) -> &[u8] {
        &self.buf[r]
    }

    /// The incomplete last line (after `next_region` returned `None`).
    fn tail(&self) -> &[u8] {
        &self.buf[self.consumed..self.len]
    }
}

/// Empty lines in `region` (whole lines), given whether it starts at a line start.
fn count_blank(region: &[u8], at_line_start: bool) -> u64 {
    let mut n = 0;
    let mut i = 0;
    if at_line_start {
        while i < region.len() && region[i] == b'\n' {
            n += 1;
            i += 1;
        }
    }
    while let Some(p) = memmem::find(&region[i..], b"\n\n") {
        let mut j = i + p + 1;
        while j < region.len() && region[j] == b'\n' {
            n += 1;
            j += 1;
        }
        i = j;
    }
    n
}

/// The lines of `region` holding one of the needles, as `(start, end)` without the newline,
/// in order, each once.
fn candidates(region: &[u8], needles: &[Needle], out: &mut Vec<(usize, usize)>) {
    out.clear();
    for needle in needles {
        for pos in needle.finder.find_iter(region) {
            let start = memchr::memrchr(b'\n', &region[..pos]).map_or(0, |i| i + 1);
            let end = memchr::memchr(b'\n', &region[pos..]).map_or(region.len(), |i| pos + i);
            out.push((start, end));
        }
    }
    if needles.len() > 1 {
        out.sort_unstable();
    }
    out.dedup();
}

/// Where the lines of a day file go.
trait Sink {
    /// A run of lines (or a torn tail) that is not the client's.
    fn keep(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// A record of the client, without its newline.
    fn matched(&mut self, line: &[u8], rec: &Record) -> io::Result<()>;
    /// A line holding the pseudonym that is not a record, with its newline if it had one.
    fn invalid(&mut self, line: &[u8]) -> io::Result<()>;
}

/// Reads `lines` to its current end, sending every line to `sink`.
fn pump<R: Read>(
    lines: &mut Lines<R>,
    needles: &[Needle],
    summary: &mut Summary,
    sink: &mut impl Sink,
    scratch: &mut Vec<(usize, usize)>,
) -> io::Result<()> {
    while let Some(range) = lines.next_region()? {
        let region = lines.region(range);
        summary.skipped.blank += count_blank(region, lines.at_line_start);
        candidates(region, needles, scratch);
        let mut kept_to = 0;
        for &(start, end) in scratch.iter() {
            let line = &region[start..end];
            let with_nl = &region[start..(end + 1).min(region.len())];
            match judge(line, needles) {
                Verdict::Other => continue,
                Verdict::Match(rec) => {
                    sink.keep(&region[kept_to..start])?;
                    if rec.unknown_fields {
                        summary.skipped.unknown_fields += 1;
                    }
                    summary.add(&rec);
                    sink.matched(line, &rec)?;
                }
                Verdict::Invalid => {
                    sink.keep(&region[kept_to..start])?;
                    summary.skipped.invalid += 1;
                    sink.invalid(with_nl)?;
                }
            }
            kept_to = start + with_nl.len();
        }
        sink.keep(&region[kept_to..])?;
    }
    Ok(())
}

/// Handles the incomplete last line at the end: counted as torn; erase drops it if it holds
/// the pseudonym, else keeps it.
fn finish_tail<R: Read>(
    lines: &Lines<R>,
    needles: &[Needle],
    summary: &mut Summary,
    sink: &mut impl Sink,
) -> io::Result<()> {
    let tail = lines.tail();
    if tail.is_empty() {
        return Ok(());
    }
    summary.skipped.torn += 1;
    if needles.iter().any(|n| n.finder.find(tail).is_some()) {
        sink.invalid(tail)
    } else {
        sink.keep(tail)
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
        let entry = (n.epoch, n.pseudonym);
        if !summary.pseudonyms.contains(&entry) {
            summary.pseudonyms.push(entry);
        }
    }
}

/// Prepares one day file for a search: the target's needles for that day and the open file.
/// `None` for a day that cannot be searched: unlinkable (recorded in `summary`), or swept by
/// retention since it was listed. Records the pseudonyms and the day searched.
fn open_day(
    settings: &Settings,
    keys: Option<&KeyStore>,
    target: &Target,
    day: Epoch,
    path: &Path,
    summary: &mut Summary,
) -> anyhow::Result<Option<(Vec<Needle>, File)>> {
    let Some(needles) = needles_for_day(target, keys, day, settings.pseudonym_ipv6_prefix)? else {
        summary.days_unlinkable.push(day);
        return Ok(None);
    };
    note_pseudonyms(summary, &needles);
    // Only a regular file: a named pipe in the log directory must not hang the search.
    let file = match crate::files::open_regular(path) {
        Ok(f) => f,
        Err(crate::files::FileError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    summary.days_searched.push(day);
    Ok(Some((needles, file)))
}

/// The day files in range, oldest first.
fn day_files(settings: &Settings, range: DayRange) -> anyhow::Result<Vec<(Epoch, PathBuf)>> {
    if !settings.log_dir.is_dir() {
        return Ok(Vec::new());
    }
    let days = files::list_days(&settings.log_dir)
        .with_context(|| format!("listing {}", settings.log_dir.display()))?;
    Ok(days
        .into_iter()
        .filter(|(d, _)| range.contains(*d))
        .collect())
}

struct Printer<W: Write> {
    out: W,
}

impl<W: Write> Sink for Printer<W> {
    fn keep(&mut self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn matched(&mut self, line: &[u8], _: &Record) -> io::Result<()> {
        self.out.write_all(line)?;
        self.out.write_all(b"\n")
    }
    fn invalid(&mut self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
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

/// `investigate`: writes the client's records to `out` as stored, and returns the summary.
/// The summary so far is in `summary` even when this fails.
pub fn investigate(
    settings: &Settings,
    target: &Target,
    range: DayRange,
    out: impl Write,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let keys = settings.keys()?;
    let mut printer = Printer { out };
    let mut scratch = Vec::new();
    for (day, path) in day_files(settings, range)? {
        let Some((needles, file)) = open_day(settings, keys.as_ref(), target, day, &path, summary)?
        else {
            continue;
        };
        let mut lines = Lines::new(file);
        pump(&mut lines, &needles, summary, &mut printer, &mut scratch)
            .and_then(|()| finish_tail(&lines, &needles, summary, &mut Counter::default()))
            .with_context(|| format!("reading {}", path.display()))?;
    }
    printer
        .out
        .flush()
        .context("writing the records to stdout")?;
    Ok(())
}

/// Writes the lines that are not the client's to the temporary file.
struct Filter {
    out: BufWriter<File>,
    removed: u64,
    invalid_removed: u64,
}

impl Sink for Filter {
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

/// Gives `copy` (created 0600) the owner, group and permission bits of `original`, so the
/// proxy can go on appending to it and a log reader in the group can go on reading it.
fn keep_owner_and_mode(copy: &File, original: &fs::Metadata) -> io::Result<()> {
    let now = copy.metadata()?;
    if now.uid() != original.uid() || now.gid() != original.gid() {
        let uid = if now.uid() == original.uid() {
            u32::MAX
        } else {
            original.uid()
        };
        // SAFETY: a valid open descriptor; -1 leaves the owner as it is.
        if unsafe { libc::fchown(copy.as_raw_fd(), uid, original.gid()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    copy.set_permissions(fs::Permissions::from_mode(
        original.permissions().mode() & 0o777,
    ))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes the client's records from one day file, coordinating with a running writer (see
/// the module doc). Returns the records removed.
fn erase_file(
    path: &Path,
    day: Epoch,
    needles: &[Needle],
    summary: &mut Summary,
) -> anyhow::Result<u64> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".access-{day}.jsonl.erase.{}", std::process::id()));
    let mut scratch = Vec::new();
    loop {
        let file = match crate::files::open_regular(path) {
            Ok(f) => f,
            Err(crate::files::FileError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(0);
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let meta = file
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?;
        let _ = fs::remove_file(&tmp);
        // Created owner-only, then given the day file's owner, group and exact mode (not
        // through the umask): never more open than the day file at any instant.
        let out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        if let Err(e) = keep_owner_and_mode(&out, &meta) {
            drop(out);
            let _ = fs::remove_file(&tmp);
            return Err(e).with_context(|| {
                format!(
                    "{}: cannot give the copy the day file's owner, group and mode (run erase as \
                     the proxy's user or as root)",
                    path.display()
                )
            });
        }
        let mut filter = Filter {
            out: BufWriter::with_capacity(1 << 20, out),
            removed: 0,
            invalid_removed: 0,
        };
        // Counts are kept apart until this attempt is the one that counts.
        let mut attempt = Summary::default();
        let result = (|| -> io::Result<Option<bool>> {
            let mut lines = Lines::new(&file);
            // Unlocked: everything up to the current end (appends never change it).
            pump(&mut lines, needles, &mut attempt, &mut filter, &mut scratch)?;
            filter.out.flush()?;
            filter.out.get_ref().sync_data()?;
            file.lock()?;
            if !same_file(&file, path)? {
                // Replaced by another eraser meanwhile: start over on the new file.
                return Ok(None);
            }
            // Locked: the writer waits; read what it appended since, then replace.
            pump(&mut lines, needles, &mut attempt, &mut filter, &mut scratch)?;
            finish_tail(&lines, needles, &mut attempt, &mut filter)?;
            if filter.removed == 0 && filter.invalid_removed == 0 {
                return Ok(Some(false));
            }
            filter.out.flush()?;
            filter.out.get_ref().sync_all()?;
            fs::rename(&tmp, path)?;
            sync_dir(dir)?;
            Ok(Some(true))
        })();
        // Dropping `file` releases the lock, after the rename.
        drop(file);
        match result {
            Ok(None) => {
                let _ = fs::remove_file(&tmp);
                continue;
            }
            Ok(Some(replaced)) => {
                if !replaced {
                    let _ = fs::remove_file(&tmp);
                } else {
                    summary.files_rewritten.push(day);
                }
                merge(summary, attempt);
                summary.invalid_removed += filter.invalid_removed;
                return Ok(filter.removed);
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e).with_context(|| format!("erasing from {}", path.display()));
            }
        }
    }
}

fn merge(into: &mut Summary, from: Summary) {
    into.records += from.records;
    for ts in [from.first_ts.clone(), from.last_ts.clone()]
        .into_iter()
        .flatten()
    {
        if into.first_ts.as_ref().is_none_or(|f| &ts < f) {
            into.first_ts = Some(ts.clone());
        }
        if into.last_ts.as_ref().is_none_or(|l| &ts > l) {
            into.last_ts = Some(ts);
        }
    }
    for (s, n) in from.statuses {
        *into.statuses.entry(s).or_default() += n;
    }
    for (p, n) in from.paths {
        *into.paths.entry(p).or_default() += n;
    }
    let s = &mut into.skipped;
    s.torn += from.skipped.torn;
    s.blank += from.skipped.blank;
    s.invalid += from.skipped.invalid;
    s.unknown_fields += from.skipped.unknown_fields;
}

/// `erase`: removes every record of the client from the day files in range. The summary so
/// far is in `summary` even when this fails.
pub fn erase(
    settings: &Settings,
    target: &Target,
    range: DayRange,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let keys = settings.keys()?;
    remove_stale_copies(&settings.log_dir);
    let mut scratch = Vec::new();
    for (day, path) in day_files(settings, range)? {
        // A first look without the lock: most files hold nothing of the client.
        let Some((needles, file)) = open_day(settings, keys.as_ref(), target, day, &path, summary)?
        else {
            continue;
        };
        let mut look = Summary::default();
        let mut counter = Counter::default();
        let mut lines = Lines::new(file);
        pump(&mut lines, &needles, &mut look, &mut counter, &mut scratch)
            .and_then(|()| finish_tail(&lines, &needles, &mut look, &mut counter))
            .with_context(|| format!("reading {}", path.display()))?;
        if counter.hits == 0 {
            merge(summary, look);
            continue;
        }
        erase_file(&path, day, &needles, summary)?;
    }
    Ok(())
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

/// The operating-system user running the command: `USER` or `LOGNAME`, else the name of the
/// real user id in `/etc/passwd`, else `uid:N`; and the uid when known.
pub fn os_user() -> (String, Option<u32>) {
    let uid = fs::metadata("/proc/self").ok().map(|m| m.uid());
    let from_env = ["USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
    if let Some(name) = from_env {
        return (name, uid);
    }
    let from_passwd = uid.and_then(|uid| {
        let text = fs::read_to_string("/etc/passwd").ok()?;
        text.lines().find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let _pw = f.next()?;
            (f.next()?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
        })
    });
    match (from_passwd, uid) {
        (Some(name), _) => (name, uid),
        (None, Some(uid)) => (format!("uid:{uid}"), Some(uid)),
        (None, None) => ("unknown".to_owned(), None),
    }
}

/// One audit line: time, command, user, pseudonyms searched, days, result count. Never the
/// address.
pub fn audit_line(command: &str, summary: &Summary, ok: bool) -> Vec<u8> {
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
        count: summary.records,
        ok,
    };
    let mut out = serde_json::to_vec(&line).unwrap_or_default();
    out.push(b'\n');
    out
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
    fs::create_dir_all(dir)?;
    let path = dir.join(AUDIT_FILE);
    loop {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)?;
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
        let result = (|| {
            // Made anew, so it is 0600 whatever a file left at that name had.
            match fs::remove_file(&tmp) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut t = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            t.write_all(&kept)?;
            t.sync_all()?;
            fs::rename(&tmp, &path)?;
            sync_dir(dir)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        return result;
    }
}

/// `keys`: every kept epoch, every day of the retention window from the oldest kept key on
/// (kept or derivable), and every day with an access-log day file whose key cannot be had
/// (destroyed), oldest first, as `YYYY-MM-DD kept|derivable|destroyed` lines, and a summary
/// line. Days that never had a key and have no records are not listed.
pub fn keys_report(settings: &Settings) -> anyhow::Result<(String, String)> {
    let today = Epoch::today();
    let retention_days =
        i64::try_from(settings.key_retention.as_secs() / 86_400).unwrap_or(i64::MAX);
    let mut list: Vec<(Epoch, KeyState)> = match settings.keys()? {
        Some(store) => store
            .list_at(today)
            .with_context(|| "listing privacy.key_dir")?,
        None => Vec::new(),
    };
    // Days whose records remain but whose key cannot be had: every access-log day up to today
    // that the store does not list (so before its oldest kept key, or any with no key at all).
    // Days that never had a key and have no records are not listed: a new install shows today.
    let listed: std::collections::BTreeSet<Epoch> = list.iter().map(|&(e, _)| e).collect();
    for (day, _) in day_files(settings, DayRange::default())? {
        if day <= today && !listed.contains(&day) {
            list.push((day, KeyState::Destroyed));
        }
    }
    list.sort_by_key(|&(e, _)| e);
    let mut lines = String::new();
    let (mut kept, mut derivable, mut destroyed) = (0, 0, 0);
    for (epoch, state) in &list {
        let word = match state {
            KeyState::Kept => {
                kept += 1;
                "kept"
            }
            KeyState::Derivable => {
                derivable += 1;
                "derivable"
            }
            KeyState::Destroyed => {
                destroyed += 1;
                "destroyed"
            }
        };
        lines.push_str(&format!("{epoch} {word}\n"));
    }
    let missing = if settings.key_dir.is_dir() {
        String::new()
    } else {
        format!(" ({} does not exist)", settings.key_dir.display())
    };
    let summary = format!(
        "keys: {kept} kept, {derivable} derivable, {destroyed} destroyed; window {}..{} (privacy.key_retention {}d){missing}\n",
        today.add_days(-retention_days),
        today,
        retention_days,
    );
    Ok((lines, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Epoch {
        s.parse().unwrap()
    }

    #[test]
    fn blank_lines_are_counted() {
        // (region, at line start, blank lines)
        let cases: &[(&[u8], bool, u64)] = &[
            (b"a\nb\n", true, 0),
            (b"\n", true, 1),
            (b"\n", false, 0),
            (b"\n\na\n", true, 2),
            (b"a\n\nb\n\n\n", true, 3),
            (b"a\n\n\n\nb\n", false, 3),
        ];
        for &(region, start, want) in cases {
            assert_eq!(count_blank(region, start), want, "{region:?}");
        }
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
    fn ip_errors_never_echo_the_value() {
        let err = Target::parse_ip("203.0.113.999").err().unwrap();
        assert!(
            err.starts_with("--ip") && !err.contains("203.0.113"),
            "{err}"
        );
    }

    fn needle(p: &str, e: Option<&str>) -> Needle {
        Needle::new(p.parse().unwrap(), e.map(ep))
    }

    struct Collect(Vec<u8>, Vec<String>);
    impl Sink for Collect {
        fn keep(&mut self, b: &[u8]) -> io::Result<()> {
            self.0.extend_from_slice(b);
            Ok(())
        }
        fn matched(&mut self, l: &[u8], _: &Record) -> io::Result<()> {
            self.1.push(String::from_utf8_lossy(l).into_owned());
            Ok(())
        }
        fn invalid(&mut self, _: &[u8]) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn pump_splits_matches_from_the_rest_across_small_chunks() {
        let a = "AAAAAAAAAAAAAAAA";
        let b = "BBBBBBBBBBBBBBBB";
        let rec = |c: &str, e: &str, extra: &str| {
            format!(
                "{{\"ts\":\"{e}T00:00:01Z\",\"epoch\":\"{e}\",\"client\":\"{c}\",\"path\":\"/x\",\"status\":200{extra}}}\n"
            )
        };
        let text = [
            rec(a, "2026-11-02", ""),
            rec(b, "2026-11-02", ""),
            "\n".to_owned(),
            rec(a, "2026-11-01", ",\"extra\":1"),
            // Right pseudonym, wrong epoch: not the client.
            rec(a, "2026-10-30", ""),
            format!("{{\"client\":\"{a}\", junk\n"),
            "junk without the pseudonym\n".to_owned(),
            rec(b, "2026-11-02", ""),
            format!("{{\"ts\":\"2026-11-02T00:00:09Z\",\"client\":\"{a}"),
        ]
        .concat();
        let needles = [needle(a, Some("2026-11-02")), needle(a, Some("2026-11-01"))];
        for chunk in [7, 64, CHUNK] {
            let mut lines = Lines::new(text.as_bytes());
            lines.buf = vec![0; chunk];
            let mut summary = Summary::default();
            let mut sink = Collect(Vec::new(), Vec::new());
            let mut scratch = Vec::new();
            pump(&mut lines, &needles, &mut summary, &mut sink, &mut scratch).unwrap();
            finish_tail(&lines, &needles, &mut summary, &mut Counter::default()).unwrap();
            assert_eq!(summary.records, 2, "chunk {chunk}");
            assert_eq!(sink.1.len(), 2);
            assert!(sink.1[1].contains("\"extra\""));
            let kept = String::from_utf8(sink.0).unwrap();
            assert_eq!(
                kept,
                [
                    rec(b, "2026-11-02", ""),
                    "\n".to_owned(),
                    rec(a, "2026-10-30", ""),
                    "junk without the pseudonym\n".to_owned(),
                    rec(b, "2026-11-02", ""),
                ]
                .concat(),
                "chunk {chunk}"
            );
            assert_eq!(
                summary.skipped,
                Skipped {
                    torn: 1,
                    blank: 1,
                    invalid: 1,
                    unknown_fields: 1
                },
                "chunk {chunk}"
            );
        }
    }

    /// Property-based fuzzing of the day-file reader (issue 12 §6; the long run is
    /// `scripts/fuzz-long.sh`): any bytes, read in any chunks and in reads of any size, never
    /// panic; every line holding the pseudonym is judged as the module doc says; and the lines
    /// that are not the client's reach the sink byte for byte, so erase loses nothing else.
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        const A: &str = "AAAAAAAAAAAAAAAA";
        const B: &str = "BBBBBBBBBBBBBBBB";
        const DAY: &str = "2026-11-02";
        const DAY_BEFORE: &str = "2026-11-01";

        fn config() -> ProptestConfig {
            let cases = std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(512);
            ProptestConfig {
                cases,
                failure_persistence: None,
                ..ProptestConfig::default()
            }
        }

        /// Hands out at most the next of `sizes` bytes per read; a size of 0 is an interrupted
        /// read.
        struct Trickle<'a> {
            data: &'a [u8],
            sizes: Vec<usize>,
            at: usize,
        }

        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let size = self.sizes[self.at % self.sizes.len()];
                self.at += 1;
                if size == 0 {
                    return Err(io::ErrorKind::Interrupted.into());
                }
                let n = size.min(buf.len()).min(self.data.len());
                buf[..n].copy_from_slice(&self.data[..n]);
                self.data = &self.data[n..];
                Ok(n)
            }
        }

        /// What the sink received, in order: (0 keep, 1 matched, 2 invalid, bytes).
        #[derive(Default)]
        struct Tape(Vec<(u8, Vec<u8>)>);

        impl Sink for Tape {
            fn keep(&mut self, b: &[u8]) -> io::Result<()> {
                if !b.is_empty() {
                    self.0.push((0, b.to_vec()));
                }
                Ok(())
            }
            fn matched(&mut self, l: &[u8], _: &Record) -> io::Result<()> {
                self.0.push((1, l.to_vec()));
                Ok(())
            }
            fn invalid(&mut self, l: &[u8]) -> io::Result<()> {
                self.0.push((2, l.to_vec()));
                Ok(())
            }
        }

        fn line() -> impl Strategy<Value = Vec<u8>> {
            let record = (
                prop::sample::select(vec![A, B]),
                prop::sample::select(vec![DAY, DAY_BEFORE, "2026-10-30", "2026-13-01", "x"]),
                prop::sample::select(vec![
                    "",
                    ",\"extra\":1",
                    ",\"path\":\"/a\"",
                    ",\"status\":404",
                ]),
            )
                .prop_map(|(c, e, extra)| {
                    format!(
                        "{{\"ts\":\"{e}T00:00:01Z\",\"epoch\":\"{e}\",\"client\":\"{c}\"{extra}}}"
                    )
                    .into_bytes()
                });
            let junk = prop::sample::select(vec![
                format!("{{\"client\":\"{A}\", junk"),
                format!("[\"{A}\"]"),
                format!("{{\"client\":\"{A}\",\"epoch\":5}}"),
                format!("{{\"epoch\":\"{DAY}\",\"client\":\"{B}\",\"path\":\"{A}\"}}"),
                format!("{{\"client\":\"{A}\",\"client\":\"{A}\",\"epoch\":\"{DAY}\"}}"),
                format!("\"{A}\" \"{A}\""),
                format!("{}\"{A}\"", "x".repeat(300)),
                String::new(),
                "\r".to_owned(),
            ])
            .prop_map(String::into_bytes);
            let bytes = prop::collection::vec(any::<u8>(), 0..40).prop_map(|mut v| {
                v.retain(|&b| b != b'\n');
                v
            });
            prop_oneof![3 => record, 2 => junk, 1 => bytes]
        }

        fn contains(hay: &[u8], needle: &[u8]) -> bool {
            hay.windows(needle.len()).any(|w| w == needle)
        }

        /// What the module doc says of one complete line: 1 matched, 2 invalid, 0 kept.
        fn model(line: &[u8], epochs: &[Option<&str>]) -> u8 {
            if !contains(line, format!("\"{A}\"").as_bytes()) {
                return 0;
            }
            let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(line) else {
                return 2;
            };
            let (Some(client), Some(epoch)) = (
                map.get("client").and_then(|v| v.as_str()),
                map.get("epoch").and_then(|v| v.as_str()),
            ) else {
                return 2;
            };
            let epoch_ok = epochs.iter().any(|want| {
                want.is_none_or(|w| epoch.parse::<Epoch>().ok() == w.parse::<Epoch>().ok())
            });
            u8::from(client == A && epoch_ok)
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn the_reader_judges_every_line_and_keeps_every_other_byte(
                lines in prop::collection::vec(line(), 0..12),
                torn in proptest::option::of(line()),
                any_epoch in any::<bool>(),
                chunk in prop::sample::select(vec![1usize, 2, 3, 7, 16, 64, 4096]),
                sizes in prop::collection::vec(0usize..80, 1..4).prop_map(|mut v| {
                    v.push(1);
                    v
                }),
            ) {
                let mut text = Vec::new();
                for l in &lines {
                    text.extend_from_slice(l);
                    text.push(b'\n');
                }
                let tail = torn.unwrap_or_default();
                text.extend_from_slice(&tail);
                let epochs: Vec<Option<&str>> = if any_epoch {
                    vec![None]
                } else {
                    vec![Some(DAY), Some(DAY_BEFORE)]
                };
                let needles: Vec<Needle> = epochs
                    .iter()
                    .map(|e| Needle::new(A.parse().unwrap(), e.map(|e| e.parse().unwrap())))
                    .collect();
                let mut lines_reader = Lines::new(Trickle { data: &text, sizes, at: 0 });
                lines_reader.buf = vec![0; chunk];
                let mut summary = Summary::default();
                let mut tape = Tape::default();
                let mut scratch = Vec::new();
                pump(&mut lines_reader, &needles, &mut summary, &mut tape, &mut scratch).unwrap();
                finish_tail(&lines_reader, &needles, &mut summary, &mut tape).unwrap();

                // Byte for byte: nothing lost, nothing added, nothing reordered.
                let mut replay = Vec::new();
                for (kind, bytes) in &tape.0 {
                    replay.extend_from_slice(bytes);
                    if *kind == 1 {
                        replay.push(b'\n');
                    }
                }
                prop_assert_eq!(String::from_utf8_lossy(&replay), String::from_utf8_lossy(&text));

                // Each line judged as the module doc says.
                let mut want: Vec<(u8, Vec<u8>)> = Vec::new();
                let (mut blank, mut unknown) = (0, 0);
                for l in &lines {
                    let kind = model(l, &epochs);
                    blank += u64::from(l.is_empty());
                    if kind == 1 {
                        let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(l) else {
                            unreachable!()
                        };
                        unknown += u64::from(map.keys().any(|k| !crate::privacy::observation::FIELDS.contains(&k.as_str())));
                    }
                    let mut with_nl = l.clone();
                    if kind == 2 {
                        with_nl.push(b'\n');
                    }
                    want.push((kind, if kind == 0 { Vec::new() } else { with_nl }));
                }
                let judged: Vec<&(u8, Vec<u8>)> = tape.0.iter().filter(|(k, _)| *k != 0).collect();
                let expected: Vec<&(u8, Vec<u8>)> = want.iter().filter(|(k, _)| *k != 0).collect();
                let tail_invalid = !tail.is_empty() && contains(&tail, format!("\"{A}\"").as_bytes());
                let judged_lines = &judged[..judged.len() - usize::from(tail_invalid)];
                prop_assert_eq!(judged_lines, &expected[..]);
                prop_assert_eq!(summary.records, want.iter().filter(|(k, _)| *k == 1).count() as u64);
                prop_assert_eq!(
                    summary.skipped,
                    Skipped {
                        torn: u64::from(!tail.is_empty()),
                        blank,
                        invalid: want.iter().filter(|(k, _)| *k == 2).count() as u64,
                        unknown_fields: unknown,
                    }
                );
            }

            #[test]
            fn blank_lines_are_counted_in_any_region(
                text in prop::collection::vec(prop::sample::select(vec![b'\n', b'\n', b'a']), 0..40),
                at_line_start in any::<bool>(),
            ) {
                // Only whole lines are handed out.
                let end = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                let region = &text[..end];
                let mut want = 0;
                let mut previous_newline = at_line_start;
                for &b in region {
                    want += u64::from(b == b'\n' && previous_newline);
                    previous_newline = b == b'\n';
                }
                prop_assert_eq!(count_blank(region, at_line_start), want);
            }
        }
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
