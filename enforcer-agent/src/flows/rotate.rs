//! The flow log on disk: written through [`RotatingFile`], read back (and followed across
//! rotations) by [`read_files`] for `enforcer flows --file`.
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

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::enrich::FlowRecord;
use super::filter::Filter;
use super::server::Message;
use super::table::Printer;

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

/// Reading saved logs ([`read_files`]).
#[derive(Debug, thiserror::Error)]
pub enum LogReadError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the output")]
    Output(#[source] io::Error),
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

/// A line of a saved log: a flow record, or a loss marker saved from `--output jsonl`.
#[derive(Debug, PartialEq)]
enum LogItem {
    Flow(Box<FlowRecord>),
    Lost(u64),
}

fn parse_log_line(line: &str) -> Result<Option<LogItem>, serde_json::Error> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    // Records as the agent logs them (a `type` field from the socket is ignored).
    match serde_json::from_str::<FlowRecord>(line) {
        Ok(r) => Ok(Some(LogItem::Flow(Box::new(r)))),
        Err(e) => match serde_json::from_str::<Message>(line) {
            Ok(Message::Flow(r)) => Ok(Some(LogItem::Flow(r))),
            Ok(Message::Lost { count }) => Ok(Some(LogItem::Lost(count))),
            Ok(Message::Error { .. }) | Err(_) => Err(e),
        },
    }
}

/// Applies the filter and the history to the lines of saved logs, in order.
struct LogSelector<'a> {
    filter: &'a Filter,
    last: Option<usize>,
    since: Option<SystemTime>,
    /// With `last`: the newest items so far, holding at most `last` flows.
    pending: VecDeque<LogItem>,
    pending_flows: usize,
    /// Past the history: every matching line is printed at once.
    live: bool,
}

impl<'a> LogSelector<'a> {
    fn new(filter: &'a Filter, last: Option<usize>, since: Option<SystemTime>) -> Self {
        LogSelector {
            filter,
            last,
            since,
            pending: VecDeque::new(),
            pending_flows: 0,
            live: false,
        }
    }

    fn wanted(&self, r: &FlowRecord) -> bool {
        let recent = match self.since {
            None => true,
            Some(since) => humantime::parse_rfc3339_weak(&r.time).is_ok_and(|t| t >= since),
        };
        recent && self.filter.matches(r)
    }

    fn item<W: Write>(
        &mut self,
        item: LogItem,
        printer: &mut Printer<W>,
    ) -> Result<(), LogReadError> {
        if let LogItem::Flow(r) = &item {
            if !self.wanted(r) {
                return Ok(());
            }
        }
        match self.last.filter(|_| !self.live) {
            None => print_item(&item, printer),
            Some(n) => {
                if let LogItem::Flow(_) = item {
                    self.pending_flows += 1;
                }
                self.pending.push_back(item);
                // Drop the oldest flow (and the markers before it) beyond `n`.
                while self.pending_flows > n {
                    if let Some(LogItem::Flow(_)) = self.pending.pop_front() {
                        self.pending_flows -= 1;
                    }
                }
                Ok(())
            }
        }
    }

    /// The history is over: print what was held back; from now on print as lines come.
    fn go_live<W: Write>(&mut self, printer: &mut Printer<W>) -> Result<(), LogReadError> {
        for item in self.pending.drain(..) {
            print_item(&item, printer)?;
        }
        self.pending_flows = 0;
        self.live = true;
        printer.flush().map_err(LogReadError::Output)
    }
}

fn print_item<W: Write>(item: &LogItem, printer: &mut Printer<W>) -> Result<(), LogReadError> {
    match item {
        LogItem::Flow(r) => printer.flow(r),
        LogItem::Lost(n) => printer.lost(*n),
    }
    .map_err(LogReadError::Output)
}

/// A log file read line by line; a last line without its newline is held until it is
/// complete (when following) or taken as it is (at the end of a file that is not followed).
struct LogFile {
    path: PathBuf,
    reader: BufReader<File>,
    /// Inode of the open file: a different one at `path` means the log was rotated.
    ino: u64,
    line_no: u64,
    partial: String,
}

impl LogFile {
    fn open(path: &Path) -> Result<Self, LogReadError> {
        let err = |source| LogReadError::Read {
            path: path.into(),
            source,
        };
        let file = File::open(path).map_err(err)?;
        let ino = file.metadata().map_err(err)?.ino();
        Ok(LogFile {
            path: path.into(),
            reader: BufReader::new(file),
            ino,
            line_no: 0,
            partial: String::new(),
        })
    }

    /// The next complete line; at the end of the file, the held partial line if `take_partial`.
    fn next_line(&mut self, take_partial: bool) -> Result<Option<String>, LogReadError> {
        self.reader
            .read_line(&mut self.partial)
            .map_err(|source| LogReadError::Read {
                path: self.path.clone(),
                source,
            })?;
        // `read_line` stops short of a newline only at the end of the file.
        if self.partial.ends_with('\n') || (take_partial && !self.partial.is_empty()) {
            self.line_no += 1;
            return Ok(Some(std::mem::take(&mut self.partial)));
        }
        Ok(None)
    }

    /// At the end of the file: whether `path` still names the open file.
    fn state(&mut self) -> Result<FileState, LogReadError> {
        let Ok(meta) = std::fs::metadata(&self.path) else {
            // Between the rename and the new file: look again on the next poll.
            return Ok(FileState::Same);
        };
        if meta.ino() != self.ino {
            return Ok(FileState::Rotated);
        }
        let pos = self
            .reader
            .stream_position()
            .map_err(|source| LogReadError::Read {
                path: self.path.clone(),
                source,
            })?;
        Ok(if meta.len() < pos {
            FileState::Truncated
        } else {
            FileState::Same
        })
    }

    fn rewind(&mut self) -> Result<(), LogReadError> {
        self.partial.clear();
        self.reader
            .seek(SeekFrom::Start(0))
            .map(drop)
            .map_err(|source| LogReadError::Read {
                path: self.path.clone(),
                source,
            })
    }
}

enum FileState {
    Same,
    /// `path` names a new file (the old one was renamed to `.1`).
    Rotated,
    /// The file is shorter than what was read.
    Truncated,
}

fn handle_line<W: Write>(
    file: &LogFile,
    line: &str,
    selector: &mut LogSelector<'_>,
    printer: &mut Printer<W>,
) -> Result<(), LogReadError> {
    match parse_log_line(line) {
        Ok(Some(item)) => selector.item(item, printer),
        Ok(None) => Ok(()),
        Err(e) => {
            // One bad line (e.g. cut short by a crash) should not hide the rest of the log.
            eprintln!(
                "enforcer flows: skipping line {} of {}: {e}",
                file.line_no,
                file.path.display()
            );
            Ok(())
        }
    }
}

/// How to follow the last file of a saved log as it grows.
pub struct Tail<'a> {
    /// How often to look for new lines.
    pub poll: Duration,
    /// Called with the number of flows printed so far; following stops when it says false.
    pub keep_going: &'a mut dyn FnMut(u64) -> bool,
}

/// Prints the matching flows of saved logs (oldest file first): only those at or after
/// `since`, and of those the `last` N (`None`: all). With `follow`, then keeps reading the
/// last file as it grows, across rotations.
pub fn read_files<W: Write>(
    paths: &[PathBuf],
    filter: &Filter,
    last: Option<usize>,
    since: Option<SystemTime>,
    follow: Option<Tail<'_>>,
    printer: &mut Printer<W>,
) -> Result<(), LogReadError> {
    let mut selector = LogSelector::new(filter, last, since);
    let mut tail = None;
    for (i, path) in paths.iter().enumerate() {
        let mut file = LogFile::open(path)?;
        let followed = follow.is_some() && i + 1 == paths.len();
        while let Some(line) = file.next_line(!followed)? {
            handle_line(&file, &line, &mut selector, printer)?;
        }
        if followed {
            tail = Some(file);
        }
    }
    selector.go_live(printer)?;
    let (Some(mut file), Some(follow)) = (tail, follow) else {
        return Ok(());
    };
    while (follow.keep_going)(printer.flows()) {
        if let Some(line) = file.next_line(false)? {
            handle_line(&file, &line, &mut selector, printer)?;
            continue;
        }
        match file.state()? {
            FileState::Same => {
                printer.flush().map_err(LogReadError::Output)?;
                std::thread::sleep(follow.poll);
            }
            FileState::Truncated => file.rewind()?,
            FileState::Rotated => {
                // Lines written between our last read and the rename are still in the old file.
                while let Some(line) = file.next_line(true)? {
                    handle_line(&file, &line, &mut selector, printer)?;
                }
                file = LogFile::open(&file.path)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use super::*;
    use crate::flows::client::tests::{jsonl, parse, ports_of, printer, rec};
    use crate::flows::table::OutputFormat;

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
    fn reads_saved_logs_offline() {
        let dir = TempDir::new("flows-file");
        let old = dir.0.join("flows.jsonl.1");
        let cur = dir.0.join("flows.jsonl");
        let t = |s: u32| format!("2024-11-23T18:{:02}:00Z", s);
        std::fs::write(
            &old,
            jsonl(&rec(1, true, &t(1))) + &jsonl(&rec(2, false, &t(2))),
        )
        .unwrap();
        std::fs::write(
            &cur,
            jsonl(&rec(3, true, &t(3)))
                + "this is not json\n\n"
                + r#"{"type":"lost","count":9}"#
                + "\n"
                + &jsonl(&rec(4, false, &t(4)))
                + serde_json::to_string(&rec(5, true, &t(5)))
                    .unwrap()
                    .as_str(),
        )
        .unwrap();
        let files = [old.clone(), cur.clone()];
        let run = |args: &str| {
            let a = parse(&format!(
                "--file {} --file {} {args}",
                old.display(),
                cur.display()
            ))
            .unwrap();
            let h = a.history(SystemTime::now());
            assert_eq!(a.files, files);
            let mut p = printer(OutputFormat::Jsonl);
            read_files(&a.files, &a.filter, h.last, h.since, None, &mut p).unwrap();
            String::from_utf8(p.into_inner()).unwrap()
        };
        let flows = |out: String| -> Vec<u16> {
            out.lines()
                .filter_map(|l| serde_json::from_str::<FlowRecord>(l).ok())
                .map(|r| r.src.port.unwrap())
                .collect()
        };
        // Everything, in file order; the bad line is skipped, the marker kept, and the last
        // line is read although it has no newline.
        let all = run("");
        assert_eq!(flows(all.clone()), [1, 2, 3, 4, 5]);
        assert!(all.contains(r#"{"type":"lost","count":9}"#));
        assert_eq!(flows(run("--verdict dropped")), [1, 3, 5]);
        assert_eq!(flows(run("--not --verdict dropped")), [2, 4]);
        assert_eq!(flows(run("--from-port 4 --from-port 1")), [1, 4]);
        assert_eq!(flows(run("--last 2")), [4, 5]);
        assert_eq!(flows(run("--verdict dropped --last 2")), [3, 5]);
        assert_eq!(flows(run("--since 2024-11-23T18:03:00Z")), [3, 4, 5]);
        assert_eq!(
            flows(run(
                "--since 2024-11-23T18:02:00Z --last 1 --verdict allowed"
            )),
            [4]
        );
        assert!(flows(run("--namespace kube-system")).is_empty());

        let missing = read_files(
            &[dir.0.join("nope.jsonl")],
            &Filter::default(),
            None,
            None,
            None,
            &mut printer(OutputFormat::Jsonl),
        );
        assert!(matches!(missing, Err(LogReadError::Read { .. })));
    }

    #[test]
    fn follows_a_file_across_rotations() {
        let dir = TempDir::new("flows-tail");
        let path = dir.0.join("flows.jsonl");
        let t = "2024-11-23T18:40:48.822Z";
        // At most one byte per file: every line goes to a new file.
        let mut log = std::io::LineWriter::new(RotatingFile::open(&path, 1, 10).unwrap());
        log.write_all(jsonl(&rec(1, true, t)).as_bytes()).unwrap();
        let writer = std::thread::spawn(move || {
            for i in 2..=7u16 {
                std::thread::sleep(Duration::from_millis(30));
                let r = rec(i, i % 2 == 1, t);
                // A line in two writes: the reader must wait for its end.
                let line = jsonl(&r);
                let (a, b) = line.split_at(line.len() / 2);
                log.get_mut().write_all(a.as_bytes()).unwrap();
                std::thread::sleep(Duration::from_millis(10));
                log.get_mut().write_all(b.as_bytes()).unwrap();
            }
        });
        let a = parse(&format!(
            "-f --file {} --verdict dropped --last 5",
            path.display()
        ))
        .unwrap();
        let h = a.history(SystemTime::now());
        let mut p = printer(OutputFormat::Jsonl);
        let deadline = Instant::now() + Duration::from_secs(20);
        read_files(
            &a.files,
            &a.filter,
            h.last,
            h.since,
            Some(Tail {
                poll: Duration::from_millis(5),
                keep_going: &mut |n| n < 4 && Instant::now() < deadline,
            }),
            &mut p,
        )
        .unwrap();
        writer.join().unwrap();
        assert!(
            rotated_path(&path, 6).exists(),
            "the log should have rotated"
        );
        assert_eq!(ports_of(p.into_inner()), [1, 3, 5, 7]);
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
