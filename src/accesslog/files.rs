//! Day files: their names, opening for append, listing, and deletion past retention.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::privacy::keys::Epoch;

/// `<dir>/access-YYYY-MM-DD.jsonl`.
pub fn day_path(dir: &Path, day: Epoch) -> PathBuf {
    dir.join(format!("access-{day}.jsonl"))
}

/// The day of a file name `access-YYYY-MM-DD.jsonl`, if it is one.
pub fn parse_day_file(name: &str) -> Option<Epoch> {
    name.strip_prefix("access-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

/// Opens a day file for appending (and reading its tail), creating it (mode 0640) if needed,
/// and the directory too if it was removed while the proxy runs.
pub fn open_append(dir: &Path, day: Epoch) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o640)
            .open(day_path(dir, day))
    };
    let file = match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            open()?
        }
        other => other?,
    };
    // A named pipe would stall the writer once its buffer is full, and shutdown with it.
    // (Opened read-write, a named pipe does not block the open itself.)
    if file.metadata()?.file_type().is_fifo() {
        return Err(io::Error::other("a named pipe, not a regular file"));
    }
    Ok(file)
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

/// Every day file in `dir`, oldest first.
pub fn list_days(dir: &Path) -> io::Result<Vec<(Epoch, PathBuf)>> {
    let mut days = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(day) = entry.file_name().to_str().and_then(parse_day_file) {
            days.push((day, entry.path()));
        }
    }
    days.sort_by_key(|(day, _)| *day);
    Ok(days)
}

/// Deletes day files more than `retention_days` days before `today`; returns how many.
pub fn sweep(dir: &Path, today: Epoch, retention_days: i64) -> io::Result<usize> {
    let mut removed = 0;
    for (day, path) in list_days(dir)? {
        if day.days_until(today) > retention_days {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}
