//! The access log: a bounded queue from the request path to one writer thread, which appends
//! JSON Lines to day files `access-YYYY-MM-DD.jsonl` and deletes day files past retention.
//!
//! The request path only ever calls [`AccessLog::record`], which never blocks: when the queue
//! is full the record is counted as dropped. The writer flushes at least once a second and at
//! shutdown. A write error (disk full, a file size limit) is counted, reported once until
//! writing works again, and never stops the proxy. The counters agree with the file exactly:
//! the whole records that reached the file before the error count as written, the partial record
//! after them is cut off the file, and it and the rest of the batch count as dropped
//! (`records + dropped` = requests). A partial last line found in a file (after a crash or a
//! failed cut) is cut off before the next record is written, so every record starts on a line
//! of its own. The queue carries [`Observation`]s, so nothing but the allowed fields can reach
//! a file.
//!
//! `erase` may replace a day file while the writer appends to it (see [`crate::cli::erase`]):
//! the writer writes whole lines only while holding the exclusive lock ([`File::lock`]) of the
//! file it writes to, and after taking the lock checks that the path still names that file,
//! reopening the path if it was replaced.

pub mod files;
pub mod reader;

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::IntCounter;

use crate::config;
use crate::epoch::{self, Epoch};
use crate::privacy::observation::Observation;

/// How often buffered records reach the file, at the latest.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// The writer's pause between batches while records arrive, and while none do. The queue
/// (`buffer_records`, 65536 by default) holds far more than arrives in either at 100k req/s.
const BUSY_PAUSE: Duration = Duration::from_millis(5);
const IDLE_PAUSE: Duration = Duration::from_millis(25);
/// How often day files past retention are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// Size of the writer's buffer: one write system call per this many bytes under load.
const WRITE_BUFFER: usize = 256 * 1024;

/// The writer's counters (exported as `webprom_edge_access_log_*`).
#[derive(Clone)]
pub struct LogCounters {
    /// Records written to a day file.
    pub records: IntCounter,
    /// Records lost: the queue was full, or their write failed.
    pub dropped: IntCounter,
    /// Failed writes or flushes.
    pub write_errors: IntCounter,
}

enum Msg {
    Record(Observation),
    /// Flush and answer (tests, erasure).
    Flush(SyncSender<()>),
    Shutdown,
}

/// The request path's handle on the access log.
pub struct AccessLog {
    tx: SyncSender<Msg>,
    counters: LogCounters,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl AccessLog {
    /// Creates the directory, deletes day files past retention, and starts the writer thread.
    pub fn start(cfg: &config::AccessLog, counters: LogCounters) -> io::Result<AccessLog> {
        let own = files::Ownership::of(cfg).map_err(io::Error::other)?;
        if let Some(warning) =
            files::ensure_dir(&cfg.dir, own).map_err(|e| with_path(e, &cfg.dir))?
        {
            tracing::warn!("access_log.dir {warning}");
        }
        // Today's file, when it exists, follows a changed file_mode or group at once.
        let log_dir = files::LogDir::of(cfg);
        let today = log_dir.day_path(Epoch::today());
        if today.exists() {
            match files::open_append(&log_dir, Epoch::today(), own) {
                Ok((_, Some(e))) => {
                    tracing::warn!(path = %today.display(), error = %e, "cannot give the day file access_log.file_mode and access_log.group")
                }
                Ok((_, None)) => {}
                Err(e) => return Err(with_path(e, &today)),
            }
        }
        let retention_days = epoch::whole_days(cfg.retention.0);
        let removed = files::sweep(&cfg.dir, Epoch::today(), retention_days)
            .map_err(|e| with_path(e, &cfg.dir))?;
        if removed > 0 {
            tracing::info!(removed, dir = %cfg.dir.display(), "deleted access-log day files past retention");
        }
        let (tx, rx) = sync_channel(cfg.buffer_records);
        let writer = Writer {
            dir: log_dir,
            own,
            retention_days,
            counters: counters.clone(),
            open: None,
            failing: false,
            line: Vec::with_capacity(WRITE_BUFFER + 4096),
        };
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(AccessLog {
            tx,
            counters,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues one record; never blocks. A full queue drops the record and counts it.
    pub fn record(&self, obs: Observation) {
        match self.tx.try_send(Msg::Record(obs)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.inc();
            }
        }
    }

    /// Waits until every record queued so far is in the file (blocking: not for the runtime).
    pub fn flush(&self) {
        let (tx, rx) = sync_channel(1);
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Writes what is queued, flushes, and stops the writer thread (blocking).
    pub fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown);
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// Opens a day file for appending with [`files::open_append`]; an existing file that cannot be
/// given the configured mode and group is written to anyway, with a warning.
fn open_day_file(dir: &files::LogDir, day: Epoch, own: files::Ownership) -> io::Result<File> {
    let (file, problem) = files::open_append(dir, day, own)?;
    if let Some(e) = problem {
        let path = dir.day_path(day);
        tracing::warn!(path = %path.display(), error = %e, "cannot give the day file access_log.file_mode and access_log.group");
    }
    Ok(file)
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

struct OpenDay {
    day: Epoch,
    file: File,
    /// Whole lines not yet written; written under the file's lock.
    buf: Vec<u8>,
    /// How many records `buf` holds.
    lines: u64,
}

/// A write of buffered records that failed: how many whole records reached the file first
/// (they stay and count as written), and why the rest did not.
struct PartialWrite {
    written: u64,
    error: io::Error,
}

impl OpenDay {
    /// Writes the buffered lines while holding the lock of the file the day's path names now.
    ///
    /// Records start on a line boundary: a partial last line left in the file (by a process
    /// killed mid-write, or a write cut short) is cut off first. A write that fails part-way
    /// leaves the whole records that reached the file and cuts off the partial one after them,
    /// so the file holds exactly the records counted as written.
    fn write_locked(
        &mut self,
        dir: &files::LogDir,
        own: files::Ownership,
    ) -> Result<(), PartialWrite> {
        let result = self.write_under_lock(dir, own);
        self.buf.clear();
        result
    }

    fn write_under_lock(
        &mut self,
        dir: &files::LogDir,
        own: files::Ownership,
    ) -> Result<(), PartialWrite> {
        let nothing = |error| PartialWrite { written: 0, error };
        let path = dir.day_path(self.day);
        loop {
            self.file.lock().map_err(nothing)?;
            if files::same_file(&self.file, &path).map_err(nothing)? {
                break;
            }
            // Replaced by `erase` (or removed): write to the file the path names now.
            let _ = self.file.unlock();
            self.file = open_day_file(dir, self.day, own).map_err(nothing)?;
        }
        let result = self.append_whole_lines(&path);
        let _ = self.file.unlock();
        result
    }

    /// Appends `buf` (the lock held), leaving only whole lines in the file.
    fn append_whole_lines(&mut self, path: &Path) -> Result<(), PartialWrite> {
        let nothing = |error| PartialWrite { written: 0, error };
        let len = self.file.metadata().map_err(nothing)?.len();
        let start = files::cut_partial_line(&self.file, len).map_err(nothing)?;
        if start < len {
            tracing::warn!(path = %path.display(), bytes = len - start, "access-log day file ended in a partial line (a write cut short, or written by someone else); removed it");
        }
        let mut done = 0;
        let error = loop {
            match self.file.write(&self.buf[done..]) {
                Ok(0) => break io::Error::from(io::ErrorKind::WriteZero),
                Ok(n) => {
                    done += n;
                    if done == self.buf.len() {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break e,
            }
        };
        let whole = memchr::memrchr(b'\n', &self.buf[..done]).map_or(0, |i| i + 1);
        if whole < done {
            // Cut the partial record off now; if that fails too, the next write does it.
            let _ = self.file.set_len(start + whole as u64);
        }
        Err(PartialWrite {
            written: memchr::memchr_iter(b'\n', &self.buf[..whole]).count() as u64,
            error,
        })
    }
}

struct Writer {
    /// `access_log.dir` and `access_log.node`.
    dir: files::LogDir,
    /// The day files' mode and group.
    own: files::Ownership,
    retention_days: i64,
    counters: LogCounters,
    open: Option<OpenDay>,
    /// A write error was reported and writing has not worked since.
    failing: bool,
    /// The buffer of the next day opened (kept across days to reuse its allocation).
    line: Vec<u8>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut last_flush = Instant::now();
        let mut last_sweep = Instant::now();
        let mut dirty = false;
        loop {
            // Drain in batches and sleep between them, rather than block in recv(): a receiver
            // that is not waiting is never woken, so the request path's try_send stays a few
            // atomic operations, with no system call and no context switch per record.
            let mut got = 0usize;
            loop {
                match rx.try_recv() {
                    Ok(Msg::Record(obs)) => {
                        self.write(&obs);
                        dirty = true;
                        got += 1;
                    }
                    Ok(Msg::Flush(done)) => {
                        self.flush();
                        dirty = false;
                        last_flush = Instant::now();
                        let _ = done.send(());
                    }
                    Ok(Msg::Shutdown) | Err(TryRecvError::Disconnected) => {
                        while let Ok(msg) = rx.try_recv() {
                            match msg {
                                Msg::Record(obs) => self.write(&obs),
                                Msg::Flush(done) => {
                                    let _ = done.send(());
                                }
                                Msg::Shutdown => {}
                            }
                        }
                        self.flush();
                        return;
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
            std::thread::sleep(if got > 0 { BUSY_PAUSE } else { IDLE_PAUSE });
            if last_flush.elapsed() >= FLUSH_EVERY {
                if dirty {
                    self.flush();
                    dirty = false;
                }
                last_flush = Instant::now();
            }
            if last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = Instant::now();
                match files::sweep(&self.dir.dir, Epoch::today(), self.retention_days) {
                    Ok(0) => {}
                    Ok(removed) => {
                        tracing::info!(removed, "deleted access-log day files past retention")
                    }
                    Err(e) => {
                        tracing::warn!(dir = %self.dir.dir.display(), error = %e, "access-log retention sweep failed")
                    }
                }
            }
        }
    }

    fn write(&mut self, obs: &Observation) {
        let day = obs.day();
        if self.open.as_ref().is_none_or(|o| o.day != day) {
            self.flush();
            match open_day_file(&self.dir, day, self.own) {
                Ok(file) => {
                    self.open = Some(OpenDay {
                        day,
                        file,
                        buf: std::mem::take(&mut self.line),
                        lines: 0,
                    })
                }
                Err(e) => return self.failed(day, e, 1),
            }
        }
        let Some(open) = self.open.as_mut() else {
            return;
        };
        obs.write_json(&mut open.buf);
        open.lines += 1;
        if open.buf.len() >= WRITE_BUFFER {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        if open.buf.is_empty() {
            return;
        }
        let (day, lines) = (open.day, std::mem::take(&mut open.lines));
        match open.write_locked(&self.dir, self.own) {
            Ok(()) => {
                self.counters.records.inc_by(lines);
                if self.failing {
                    self.failing = false;
                    tracing::info!("access log writing again");
                }
            }
            Err(PartialWrite { written, error }) => {
                self.counters.records.inc_by(written);
                self.failed(day, error, lines - written);
            }
        }
    }

    /// A write (or open) failed: `lost` records are gone, counted as dropped.
    fn failed(&mut self, day: Epoch, e: io::Error, lost: u64) {
        self.counters.write_errors.inc();
        self.counters.dropped.inc_by(lost);
        if !self.failing {
            self.failing = true;
            let path = self.dir.day_path(day);
            tracing::error!(path = %path.display(), error = %e, "access log write failed; records are being lost (counted in webprom_edge_access_log_write_errors_total)");
        }
        // Start from a fresh file handle next time; the buffered bytes are gone.
        if let Some(old) = self.open.take() {
            self.line = old.buf;
            self.line.clear();
        }
    }
}

/// The writer through its handle: records reach the day file whole and in order, a full queue
/// drops and counts, shutdown writes what was queued. Records are made by the capture, as on
/// the request path.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_ip::ClientAddr;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::privacy::capture::{Capture, ClientMemo, EpochKey};
    use crate::privacy::keys::Key;

    /// The capture the records come from, made once (its User-Agent rules take a while).
    fn capture() -> &'static Capture {
        static CAPTURE: std::sync::OnceLock<Capture> = std::sync::OnceLock::new();
        CAPTURE.get_or_init(|| {
            let key = EpochKey {
                epoch: Epoch::today(),
                key: Key::from_bytes([7; 32]),
            };
            Capture::new(&Config::default(), key, None).expect("capture")
        })
    }

    /// `n` records of distinct requests, and the bytes each writes: its JSON line.
    fn records(n: usize) -> Vec<(Observation, Vec<u8>)> {
        let capture = capture();
        let memo = ClientMemo::default();
        (0..n)
            .map(|i| {
                let ip = std::net::IpAddr::from([198, 51, (i / 256 % 256) as u8, (i % 256) as u8]);
                let req = http::Request::get("/page").body(()).unwrap();
                let obs = capture
                    .begin(ClientAddr::new(ip), &req, None, &memo)
                    .finish(200, i as u64, false);
                let mut line = Vec::new();
                obs.write_json(&mut line);
                (obs, line)
            })
            .collect()
    }

    /// A writer on a new directory with a queue of `buffer_records`, and its counters.
    fn start(buffer_records: usize) -> (tempfile::TempDir, AccessLog, LogCounters) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config::AccessLog {
            dir: dir.path().join("logs"),
            buffer_records,
            ..Default::default()
        };
        let counters = Metrics::new(&[]).log_counters();
        let log = AccessLog::start(&cfg, counters.clone()).expect("writer starts");
        (dir, log, counters)
    }

    /// Every day file's bytes, oldest day first.
    fn written(dir: &tempfile::TempDir) -> Vec<u8> {
        let mut days: Vec<_> = std::fs::read_dir(dir.path().join("logs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        days.sort();
        days.iter()
            .flat_map(|p| std::fs::read(p).unwrap())
            .collect()
    }

    #[test]
    fn every_record_reaches_the_day_file_whole_and_in_order() {
        // Past WRITE_BUFFER (256 KiB, about 1000 records) the writer writes while it buffers.
        for n in [1, 10, 5_000] {
            let (dir, log, counters) = start(65_536);
            let mut expected = Vec::new();
            for (obs, line) in records(n) {
                expected.extend_from_slice(&line);
                log.record(obs);
            }
            log.flush();
            assert!(written(&dir) == expected, "{n} records: the file differs");
            assert_eq!(counters.records.get(), n as u64, "{n} records");
            assert_eq!(counters.dropped.get(), 0, "{n} records");
            assert_eq!(counters.write_errors.get(), 0, "{n} records");
            log.shutdown();
        }
    }

    #[test]
    fn a_full_queue_drops_records_counts_them_and_leaves_only_whole_records() {
        let n = 5_000;
        let (dir, log, counters) = start(4);
        let all = records(n);
        let lines: Vec<Vec<u8>> = all.iter().map(|(_, line)| line.clone()).collect();
        for (obs, _) in all {
            log.record(obs);
        }
        log.flush();
        let (records, dropped) = (counters.records.get(), counters.dropped.get());
        assert_eq!(records + dropped, n as u64);
        assert!(dropped > 0, "a queue of 4 took {n} records at once");
        // What reached the file: whole records, in the order they came, as many as counted.
        let file = written(&dir);
        let mut rest = lines.iter();
        let mut count = 0u64;
        for line in file.split_inclusive(|&b| b == b'\n') {
            assert!(
                rest.any(|l| l.as_slice() == line),
                "not a whole record in order: {}",
                String::from_utf8_lossy(line)
            );
            count += 1;
        }
        assert_eq!(count, records);
        assert_eq!(counters.write_errors.get(), 0);
        log.shutdown();
    }

    #[test]
    fn shutdown_writes_every_queued_record_and_a_record_after_it_is_counted_as_dropped() {
        let n = 2_000;
        let (dir, log, counters) = start(65_536);
        let mut expected = Vec::new();
        for (obs, line) in records(n + 1) {
            if expected.len() < n {
                expected.push(line);
                log.record(obs);
            } else {
                log.shutdown();
                assert!(written(&dir) == expected.concat(), "the file differs");
                assert_eq!(counters.records.get(), n as u64);
                assert_eq!(counters.dropped.get(), 0);
                log.record(obs);
                assert_eq!(counters.dropped.get(), 1);
                // A second shutdown, and a flush after it, return at once.
                log.shutdown();
                log.flush();
            }
        }
        assert!(
            written(&dir) == expected.concat(),
            "nothing written after shutdown"
        );
        assert_eq!(counters.records.get(), n as u64);
    }
}
