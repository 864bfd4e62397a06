//! Day files: their names, opening for append, listing, and deletion past retention.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
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

/// Opens a day file for appending, creating it (mode 0640) if needed.
pub fn open_append(dir: &Path, day: Epoch) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(day_path(dir, day))
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
