//! The flow log on disk: written through [`RotatingFile`] (this file), read back (and followed
//! across rotations) by [`read_files`] for `enforcer flows --file` (`read.rs`).
//!
//! A flow log file rotates by size: `flows.jsonl` is written; when it is full it becomes
//! `flows.jsonl.1`, the previous `.1` becomes `.2`, and so on; `keep` rotated files are kept.
//!
//! Rotation happens only between lines, so every file holds whole JSON lines and can be read
//! with `enforcer flows --file`. A file is rotated before a write that starts a line and would
//! take it past `max_bytes`; when a record arrives in pieces (`serde_json::to_writer` writes
//! field by field) the file may exceed `max_bytes` by the rest of that line. Wrapping the file
//! in a `LineWriter` makes each write one whole line, so files stay within `max_bytes` unless a
//! single line is larger.

mod read;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub use read::{read_files, LogReadError, Tail};

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("opening the flow log {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("renaming {from} to {to}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("removing the old flow log {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{input}` is not a size (a number of bytes with an optional K, M or G suffix)")]
    Size { input: String },
}

impl From<RotateError> for io::Error {
    fn from(e: RotateError) -> io::Error {
        let kind = match &e {
            RotateError::Open { source, .. }
            | RotateError::Rename { source, .. }
            | RotateError::Remove { source, .. } => source.kind(),
            RotateError::Size { .. } => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e)
    }
}

/// `path.N`: the N-th most recent rotated file.
pub fn rotated_path(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Parses `4096`, `64K`, `100M`, `100MiB`, `1G` (K, M and G are powers of 1024; case and a
/// trailing `B`/`iB` do not matter).
pub fn parse_size(s: &str) -> Result<u64, RotateError> {
    let err = || RotateError::Size { input: s.into() };
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(digits_end);
    let n: u64 = num.parse().map_err(|_| err())?;
    let shift = match unit.trim() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(err()),
    };
    n.checked_mul(1 << shift).ok_or_else(err)
}

/// The current file of a rotated log; see the module docs.
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: File,
    size: u64,
    at_line_start: bool,
}

fn open_append(path: &Path) -> Result<File, RotateError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .map_err(|source| RotateError::Open {
            path: path.into(),
            source,
        })
}

fn remove_if_present(path: &Path) -> Result<(), RotateError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(RotateError::Remove {
            path: path.into(),
            source: e,
        }),
        _ => Ok(()),
    }
}

impl RotatingFile {
    /// Opens `path` for appending (an existing file is continued, and counts toward
    /// `max_bytes`). Rotated files beyond `keep` (left by an earlier, larger `keep`) are removed.
    /// `max_bytes` 0 means "never rotate".
    pub fn open(
        path: impl Into<PathBuf>,
        max_bytes: u64,
        keep: usize,
    ) -> Result<Self, RotateError> {
        let path = path.into();
        let mut file = open_append(&path)?;
        let size = file
            .metadata()
            .map_err(|source| RotateError::Open {
                path: path.clone(),
                source,
            })?
            .len();
        let at_line_start = size == 0 || last_byte(&mut file).ok() == Some(b'\n');
        let mut n = keep + 1;
        while rotated_path(&path, n).exists() {
            remove_if_present(&rotated_path(&path, n))?;
            n += 1;
        }
        Ok(RotatingFile {
            path,
            max_bytes,
            keep,
            file,
            size,
            at_line_start,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the current file.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Moves the current file to `.1` (shifting the older ones) and starts an empty one.
    pub fn rotate(&mut self) -> Result<(), RotateError> {
        self.file.flush().ok();
        if self.keep == 0 {
            remove_if_present(&self.path)?;
        } else {
            // `rename` replaces the target, so the oldest (`.keep`) is overwritten by `.keep-1`.
            for n in (1..self.keep).rev() {
                let (from, to) = (rotated_path(&self.path, n), rotated_path(&self.path, n + 1));
                match std::fs::rename(&from, &to) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(RotateError::Rename {
                            from,
                            to,
                            source: e,
                        })
                    }
                    _ => {}
                }
            }
            let to = rotated_path(&self.path, 1);
            std::fs::rename(&self.path, &to).map_err(|source| RotateError::Rename {
                from: self.path.clone(),
                to,
                source,
            })?;
        }
        self.file = open_append(&self.path)?;
        self.size = 0;
        self.at_line_start = true;
        tracing::debug!(path = %self.path.display(), keep = self.keep, "flow log rotated");
        Ok(())
    }
}

fn last_byte(f: &mut File) -> io::Result<u8> {
    f.seek(SeekFrom::End(-1))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)?;
    Ok(b[0])
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.max_bytes > 0
            && self.at_line_start
            && self.size > 0
            && self.size.saturating_add(buf.len() as u64) > self.max_bytes
        {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.size += n as u64;
        if n > 0 {
            self.at_line_start = buf[n - 1] == b'\n';
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "enforcer-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap_or_default()
    }

    /// A 10-byte line: `line NNNN\n`.
    fn line(i: usize) -> String {
        format!("line {i:04}\n")
    }

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let dir = TempDir::new("rotate");
        let path = dir.0.join("flows.jsonl");
        let mut f = RotatingFile::open(&path, 30, 2).unwrap();
        for i in 0..10 {
            f.write_all(line(i).as_bytes()).unwrap();
        }
        f.flush().unwrap();
        // Three lines (30 bytes) per file; the oldest file (lines 0-2) was dropped.
        assert_eq!(read(&path), line(9));
        assert_eq!(read(&rotated_path(&path, 1)), line(6) + &line(7) + &line(8));
        assert_eq!(read(&rotated_path(&path, 2)), line(3) + &line(4) + &line(5));
        assert!(!rotated_path(&path, 3).exists());
        assert_eq!(f.size(), 10);
    }

    #[test]
    fn never_splits_a_line_written_in_pieces() {
        let dir = TempDir::new("rotate-pieces");
        let path = dir.0.join("flows.jsonl");
        let mut f = RotatingFile::open(&path, 15, 3).unwrap();
        for i in 0..6 {
            for piece in line(i).as_bytes().chunks(3) {
                f.write_all(piece).unwrap();
            }
        }
        for n in [0, 1, 2] {
            let p = if n == 0 {
                path.clone()
            } else {
                rotated_path(&path, n)
            };
            let text = read(&p);
            assert!(
                text.ends_with('\n') && !text.is_empty(),
                "{}: {text:?}",
                p.display()
            );
            assert!(text.lines().all(|l| l.len() == 9), "{text:?}");
        }
        let all: String = [3, 2, 1]
            .iter()
            .map(|n| read(&rotated_path(&path, *n)))
            .chain([read(&path)])
            .collect();
        assert_eq!(all, (0..6).map(line).collect::<String>());
    }

    #[test]
    fn reopening_continues_the_file_and_its_size() {
        let dir = TempDir::new("rotate-reopen");
        let path = dir.0.join("flows.jsonl");
        {
            let mut f = RotatingFile::open(&path, 30, 1).unwrap();
            f.write_all((line(0) + &line(1)).as_bytes()).unwrap();
        }
        let mut f = RotatingFile::open(&path, 30, 1).unwrap();
        assert_eq!(f.size(), 20);
        f.write_all(line(2).as_bytes()).unwrap();
        assert_eq!(read(&path), line(0) + &line(1) + &line(2));
        f.write_all(line(3).as_bytes()).unwrap();
        assert_eq!(read(&path), line(3));
        assert_eq!(read(&rotated_path(&path, 1)), line(0) + &line(1) + &line(2));
    }

    #[test]
    fn a_smaller_keep_removes_extra_files_and_zero_keeps_none() {
        let dir = TempDir::new("rotate-keep");
        let path = dir.0.join("flows.jsonl");
        let mut f = RotatingFile::open(&path, 10, 3).unwrap();
        for i in 0..5 {
            f.write_all(line(i).as_bytes()).unwrap();
        }
        assert!(rotated_path(&path, 3).exists());
        drop(f);
        let mut f = RotatingFile::open(&path, 10, 0).unwrap();
        assert!(!rotated_path(&path, 1).exists());
        f.write_all(line(5).as_bytes()).unwrap();
        assert_eq!(read(&path), line(5));
        assert!(!rotated_path(&path, 1).exists());
    }

    #[test]
    fn a_partial_last_line_is_finished_before_rotating() {
        let dir = TempDir::new("rotate-partial");
        let path = dir.0.join("flows.jsonl");
        std::fs::write(&path, "0123456789abc").unwrap();
        let mut f = RotatingFile::open(&path, 10, 1).unwrap();
        f.write_all(b"def\n").unwrap();
        assert_eq!(read(&path), "0123456789abcdef\n");
        f.write_all(b"x\n").unwrap();
        assert_eq!(read(&path), "x\n");
    }

    #[test]
    fn max_zero_never_rotates() {
        let dir = TempDir::new("rotate-never");
        let path = dir.0.join("flows.jsonl");
        let mut f = RotatingFile::open(&path, 0, 1).unwrap();
        for i in 0..20 {
            f.write_all(line(i).as_bytes()).unwrap();
        }
        assert_eq!(f.size(), 200);
        assert!(!rotated_path(&path, 1).exists());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("100MiB").unwrap(), 100 << 20);
        assert_eq!(parse_size("100mb").unwrap(), 100 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        for bad in ["", "M", "1.5M", "10T", "-1"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
