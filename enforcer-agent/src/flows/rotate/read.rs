//! Saved logs read back for `enforcer flows --file` ([`read_files`]): the filter and the
//! history applied line by line, the last file followed as it grows, across rotations.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::flows::enrich::FlowRecord;
use crate::flows::filter::Filter;
use crate::flows::server::Message;
use crate::flows::table::Printer;

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
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::flows::client::tests::{jsonl, parse, ports_of, printer, rec};
    use crate::flows::rotate::tests::TempDir;
    use crate::flows::rotate::{rotated_path, RotatingFile};
    use crate::flows::table::OutputFormat;

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
}
