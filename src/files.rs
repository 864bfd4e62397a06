//! Files and directories the configuration names, as an operator may leave them: reading a
//! file whole only when it is a regular file (a named pipe or a device at the path never hangs
//! or floods the proxy), telling whether a file changed on disk, checking that a directory
//! can be written before anything is written to it, and replacing a file atomically
//! ([`write_atomically`], [`Replacement`]: the one copy of temporary file, fsync, rename, fsync
//! of the directory).
//!
//! Must never map a file (an operator rewriting it in place would crash the process with
//! SIGBUS), never leave anything behind when it checks a directory, and never write into a
//! file it did not create when it writes a replacement. Errors carry the reason only; the
//! caller names the path and the config key.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why a configured file or directory cannot be used. The message is the reason alone (the
/// operating system's error, once), for the caller to put after the path.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Opening, reading or creating failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A file was expected and the path names something else.
    #[error("is {0}, not a regular file")]
    NotRegular(&'static str),
    /// A directory was expected and the path (or the named ancestor) is something else.
    #[error("{0} is not a directory")]
    NotDirectory(PathBuf),
    /// Creating a file in the directory (the one named, or the nearest existing ancestor of a
    /// directory to be made) failed.
    #[error("{} cannot be written: {error}", .dir.display())]
    NotWritable {
        /// The directory tried.
        dir: PathBuf,
        /// Why creating a file in it failed.
        error: io::Error,
    },
    /// The file is larger than the bound given, in bytes.
    #[error("is larger than {0} bytes")]
    TooLarge(u64),
}

impl FileError {
    /// The error for a path that names `meta`'s kind of thing where a regular file was expected.
    pub fn not_regular(meta: &Metadata) -> FileError {
        FileError::NotRegular(kind_of(meta))
    }
}

/// What kind of thing `meta` describes, for messages: "a directory", "a named pipe", ….
fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a named pipe"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// Reads the regular file at `path` (symbolic links followed) into `out`, at most `max` bytes,
/// and returns its metadata as of the read (see [`FileStamp::of`]).
///
/// The file is opened non-blocking, so a named pipe at the path is an error rather than a wait
/// for a writer. Errors: the open or read failed; the path is not a regular file; the file
/// holds more than `max` bytes.
pub fn read_regular(path: &Path, max: u64, out: &mut Vec<u8>) -> Result<Metadata, FileError> {
    let (file, meta) = open_checked(path)?;
    if meta.len() > max {
        return Err(FileError::TooLarge(max));
    }
    out.clear();
    out.reserve(usize::try_from(meta.len()).unwrap_or(0));
    // The file may grow while it is read: read one byte more than allowed to notice.
    file.take(max.saturating_add(1)).read_to_end(out)?;
    if out.len() as u64 > max {
        return Err(FileError::TooLarge(max));
    }
    Ok(meta)
}

/// Which file a path named, and which version of it, as `stat` tells: device, inode, size,
/// modification and status-change times (nanoseconds). Any rewrite, truncation, replacement by
/// rename or removal changes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    /// The stamp of a file from its metadata.
    pub fn of(meta: &Metadata) -> FileStamp {
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The stamp of what `path` names now (symbolic links followed); `None` if nothing is
    /// there or it cannot be looked at.
    pub fn of_path(path: &Path) -> Option<FileStamp> {
        std::fs::metadata(path).ok().map(|m| FileStamp::of(&m))
    }
}

/// Checks that `dir` is a directory this process can create files in, or, if it does not
/// exist yet, that its nearest existing ancestor is one (so it can be created). Writes a probe
/// file and removes it at once: nothing is left behind, and no directory is created.
///
/// Permission bits are not read but tried, so the answer is right for root, for access control
/// lists and for read-only mounts alike.
pub fn check_writable_dir(dir: &Path) -> Result<(), FileError> {
    let mut at = dir;
    loop {
        match std::fs::metadata(at) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => return Err(FileError::NotDirectory(at.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                at = match at.parent() {
                    Some(p) if p.as_os_str().is_empty() => Path::new("."),
                    Some(p) => p,
                    None => return Err(FileError::Io(e)),
                };
            }
            // ENOTDIR: a component on the way is a file.
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                return Err(FileError::NotDirectory(
                    first_non_directory(at).unwrap_or_else(|| at.to_path_buf()),
                ));
            }
            Err(e) => return Err(FileError::Io(e)),
        }
    }
    let probe = at.join(format!(".webprom-edge-write-test.{}", std::process::id()));
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe);
    match created {
        Ok(file) => {
            drop(file);
            std::fs::remove_file(&probe)?;
            Ok(())
        }
        // Left over by an earlier check of this same process id: it proves nothing; remove it.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(&probe)?;
            check_writable_dir(dir)
        }
        Err(error) => Err(FileError::NotWritable {
            dir: at.to_path_buf(),
            error,
        }),
    }
}

/// The first ancestor of `path` (from the root down) that exists and is not a directory.
fn first_non_directory(path: &Path) -> Option<PathBuf> {
    let mut so_far = PathBuf::new();
    for part in path.components() {
        so_far.push(part);
        match std::fs::metadata(&so_far) {
            Ok(m) if !m.is_dir() => return Some(so_far),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// Opens `path` for reading without blocking on a named pipe (for callers that stream the
/// file themselves, such as PEM readers), after checking it is a regular file.
pub fn open_regular(path: &Path) -> Result<File, FileError> {
    open_checked(path).map(|(file, _)| file)
}

/// Opens `path` non-blocking and checks it is a regular file; returns it with its metadata.
fn open_checked(path: &Path) -> Result<(File, Metadata), FileError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(FileError::NotRegular(kind_of(&meta)));
    }
    Ok((file, meta))
}

/// Replaces `path` with `bytes` atomically: written to `tmp` (created anew with `mode`, through
/// the umask), fsynced, renamed over `path`, and the directory fsynced. Readers see the old
/// file or the new one, never a part; after a crash, `path` holds one of them. `tmp` must be in
/// the directory of `path`; on failure it is removed.
pub fn write_atomically(path: &Path, tmp: &Path, mode: u32, bytes: &[u8]) -> io::Result<()> {
    let replacement = Replacement::create(path, tmp, mode)?;
    replacement.file().write_all(bytes)?;
    replacement.commit()
}

/// A file being written under a temporary name, to replace another atomically once complete
/// ([`Replacement::commit`]); dropped without a commit, the temporary file is removed. For
/// writers that stream the new content or do more between creating and committing (`erase`
/// copies a day file under a lock); [`write_atomically`] for content at hand.
#[derive(Debug)]
pub struct Replacement {
    path: PathBuf,
    tmp: PathBuf,
    file: File,
    committed: bool,
}

impl Replacement {
    /// Creates `tmp` (in the directory of `path`) anew with `mode`, through the umask: a file
    /// left at that name, whatever its mode, is removed first, never written into.
    pub fn create(path: &Path, tmp: &Path, mode: u32) -> io::Result<Replacement> {
        match std::fs::remove_file(tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(tmp)?;
        Ok(Replacement {
            path: path.to_path_buf(),
            tmp: tmp.to_path_buf(),
            file,
            committed: false,
        })
    }

    /// The temporary file, to write the new content to (`&File` is `Write`).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Fsyncs the temporary file, renames it over the path, and fsyncs the directory.
    pub fn commit(mut self) -> io::Result<()> {
        self.file.sync_all()?;
        std::fs::rename(&self.tmp, &self.path)?;
        self.committed = true;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()
    }
}

impl Drop for Replacement {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read_and_within_their_bound() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"0123456789").unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();

        // (path, bound, Ok(bytes) or the error's message)
        type Row<'a> = (PathBuf, u64, Result<&'a [u8], &'a str>);
        let cases: Vec<Row<'_>> = vec![
            (file.clone(), 10, Ok(b"0123456789")),
            (link.clone(), 10, Ok(b"0123456789")),
            (file.clone(), 9, Err("is larger than 9 bytes")),
            (dir.path().to_path_buf(), 10, Err("is a directory")),
            (fifo.clone(), 10, Err("is a named pipe")),
            ("/dev/zero".into(), 10, Err("is a device")),
            (dir.path().join("missing"), 10, Err("(os error 2)")),
        ];
        for (path, max, want) in cases {
            let mut out = Vec::new();
            let got = read_regular(&path, max, &mut out);
            match want {
                Ok(bytes) => {
                    assert!(got.is_ok(), "{path:?}: {got:?}");
                    assert_eq!(out, bytes, "{path:?}");
                }
                Err(msg) => {
                    let err = got.expect_err(&path.display().to_string()).to_string();
                    assert!(err.contains(msg), "{path:?}: {err}");
                    assert!(err.matches("os error").count() <= 1, "{err}");
                }
            }
        }
    }

    #[test]
    fn writable_directories_are_tried_and_nothing_is_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();

        // (directory, Ok or the error's message)
        let cases: Vec<(PathBuf, Result<(), String>)> = vec![
            (dir.path().to_path_buf(), Ok(())),
            (dir.path().join("new/deeper"), Ok(())),
            (
                file.clone(),
                Err(format!("{} is not a directory", file.display())),
            ),
            (
                file.join("below"),
                Err(format!("{} is not a directory", file.display())),
            ),
            // Not writable even by root: a directory of the kernel's process file system.
            ("/proc/self/new".into(), Err("os error".into())),
        ];
        for (path, want) in cases {
            let got = check_writable_dir(&path).map_err(|e| e.to_string());
            match want {
                Ok(()) => assert!(got.is_ok(), "{path:?}: {got:?}"),
                Err(msg) => {
                    let err = got.expect_err(&path.display().to_string());
                    assert!(err.contains(&msg), "{path:?}: {err}");
                }
            }
        }
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("file")]);
    }

    #[test]
    fn a_stamp_changes_with_every_kind_of_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, b"first").unwrap();
        let first = FileStamp::of_path(&path).unwrap();
        assert_eq!(FileStamp::of_path(&path), Some(first));

        // (what the operator does, the step)
        type Step = Box<dyn Fn(&Path)>;
        let steps: Vec<(&str, Step)> = vec![
            (
                "truncate in place",
                Box::new(|p| {
                    File::options()
                        .write(true)
                        .open(p)
                        .unwrap()
                        .set_len(0)
                        .unwrap()
                }),
            ),
            (
                "rewrite in place, same size",
                Box::new(|p| std::fs::write(p, b"other").unwrap()),
            ),
            (
                "replace by rename",
                Box::new(|p| {
                    let tmp = p.with_extension("tmp");
                    std::fs::write(&tmp, b"other").unwrap();
                    std::fs::rename(&tmp, p).unwrap();
                }),
            ),
        ];
        let mut last = first;
        for (what, step) in steps {
            std::thread::sleep(std::time::Duration::from_millis(5));
            step(&path);
            let now = FileStamp::of_path(&path).unwrap();
            assert_ne!(now, last, "{what}");
            last = now;
        }
        std::fs::remove_file(&path).unwrap();
        assert_eq!(FileStamp::of_path(&path), None);
    }

    #[test]
    fn an_atomic_write_replaces_the_file_whole_and_leaves_no_temporary_file() {
        // (content of the file before, or none; mode of a file left at the temporary name, or
        // none)
        let rows: &[(Option<&[u8]>, Option<u32>)] = &[
            (None, None),
            (Some(b"old content, longer than the new"), None),
            (Some(b"old"), Some(0o644)),
            (None, Some(0o666)),
        ];
        use std::os::unix::fs::PermissionsExt;
        for &(before, left) in rows {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("file");
            let tmp = dir.path().join(".file.tmp");
            if let Some(b) = before {
                std::fs::write(&path, b).unwrap();
            }
            if let Some(mode) = left {
                std::fs::write(&tmp, b"left over").unwrap();
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            write_atomically(&path, &tmp, 0o600, b"new").unwrap();
            let row = format!("{before:?} {left:?}");
            assert_eq!(std::fs::read(&path).unwrap(), b"new", "{row}");
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o600, "{row}");
            assert!(!tmp.exists(), "{row}");
        }
    }

    #[test]
    fn a_replacement_dropped_without_commit_leaves_the_file_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        let tmp = dir.path().join(".file.tmp");
        std::fs::write(&path, b"old").unwrap();
        let replacement = Replacement::create(&path, &tmp, 0o600).unwrap();
        replacement.file().write_all(b"half").unwrap();
        drop(replacement);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert!(!tmp.exists());
        // Into a directory that does not exist: an error, nothing made.
        let missing = dir.path().join("missing/file");
        assert!(write_atomically(&missing, &missing.with_extension("tmp"), 0o600, b"x").is_err());
        assert!(!dir.path().join("missing").exists());
    }
}
