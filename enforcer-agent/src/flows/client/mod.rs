//! `enforcer flows`: recent and live flows from the local agent's socket, or from saved flow
//! logs (`--file`), filtered, as a table or JSON. [`args`]: the command line; [`query`]: asking
//! the agents on their sockets (several merged); the saved logs are read by
//! [`super::rotate::read_files`], and both print through [`super::table::Printer`].

mod args;
mod query;

use std::io::{self, BufWriter, IsTerminal};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

pub use args::{parse_filter_flags, ColorChoice, FlowsArgs, History, Since, DEFAULT_LAST};
pub use query::{query_agent, query_agents};

use super::rotate::{read_files, LogReadError, Tail};
use super::table::{OutputFormat, Printer, TableFormat};

/// How often a followed file is checked for new lines.
const TAIL_POLL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no agent is listening on {} (is `enforcer agent` running? use --file to read a saved log)", socket.display())]
    NoAgent {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("permission denied on {} (the flow socket belongs to root)", socket.display())]
    PermissionDenied {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talking to the agent on {}", socket.display())]
    Socket {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the agent sent something that is not a flow message: {line}")]
    BadMessage {
        line: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the agent refused the request: {message}")]
    Refused { message: String },
    #[error("writing the output")]
    Output(#[source] io::Error),
    #[error(transparent)]
    Log(#[from] LogReadError),
}

/// Runs `enforcer flows`.
pub fn run(args: FlowsArgs) -> Result<(), ClientError> {
    let stdout = io::stdout();
    let tty = stdout.is_terminal();
    let format = args.output.unwrap_or(if tty {
        OutputFormat::Table
    } else {
        OutputFormat::Jsonl
    });
    let table = TableFormat {
        color: args.color.enabled(
            tty,
            std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
        ),
        utc: args.utc,
    };
    let mut printer = Printer::new(BufWriter::new(stdout.lock()), format, table, args.follow);
    let history = args.history(SystemTime::now());
    let result = if args.files.is_empty() {
        query_agents(&args.sockets, &args.request(&history), &mut printer)
    } else {
        read_files(
            &args.files,
            &args.filter,
            history.last,
            history.since,
            args.follow.then_some(Tail {
                poll: TAIL_POLL,
                keep_going: &mut |_| true,
            }),
            &mut printer,
        )
        .map_err(ClientError::from)
    };
    match result {
        // `enforcer flows | head`: the reader has what it wanted.
        Err(ClientError::Output(e) | ClientError::Log(LogReadError::Output(e)))
            if e.kind() == io::ErrorKind::BrokenPipe =>
        {
            Ok(())
        }
        r => r,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use clap::Parser;

    use super::*;
    use crate::flows::enrich::FlowRecord;
    use crate::flows::filter::fixture::*;

    /// As `main.rs` mounts it.
    #[derive(clap::Parser)]
    #[command(name = "enforcer")]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(clap::Subcommand)]
    enum Cmd {
        Flows(FlowsArgs),
    }

    pub(crate) fn parse(args: &str) -> Result<FlowsArgs, clap::Error> {
        let argv = ["enforcer", "flows"]
            .into_iter()
            .chain(args.split_whitespace());
        Cli::try_parse_from(argv).map(|c| match c.cmd {
            Cmd::Flows(a) => a,
        })
    }

    pub(crate) fn rec(port: u16, drop: bool, time: &str) -> FlowRecord {
        let (mut s, d) = debug_to_backend();
        s.port = Some(port);
        let mut r = if drop { dropped(s, d) } else { allowed(s, d) };
        r.time = time.into();
        r
    }

    pub(crate) fn jsonl(r: &FlowRecord) -> String {
        serde_json::to_string(r).unwrap() + "\n"
    }

    pub(crate) fn printer(format: OutputFormat) -> Printer<Vec<u8>> {
        Printer::new(
            Vec::new(),
            format,
            TableFormat {
                color: false,
                utc: true,
            },
            false,
        )
    }

    pub(crate) fn ports_of(out: Vec<u8>) -> Vec<u16> {
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<FlowRecord>(l)
                    .unwrap()
                    .src
                    .port
                    .unwrap()
            })
            .collect()
    }
}
