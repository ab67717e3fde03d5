//! The agent's flow socket: `enforcer flows` asks it for recent and live flows.
//!
//! Protocol (JSON lines over a unix stream socket):
//! 1. The client sends one [`Request`] line:
//!    `{"follow": bool, "last": N|null, "since": "RFC3339"|null, "filter": {...}}`
//!    (`filter` is a [`Filter`]; every field may be left out).
//! 2. The server answers with [`Message`] lines: `{"type":"flow", ...record}` for each
//!    buffered record that matches (oldest first), then, with `follow`, each new matching
//!    record as it comes. `{"type":"lost","count":N}` says that N records went by while this
//!    client was too slow to read them. `{"type":"error","message":"..."}` ends a rejected
//!    request.
//! 3. Without `follow`, the server closes the connection after the history.
//!
//! The agent never waits for a client: followers read a bounded broadcast (see
//! [`super::store`]), so a slow client loses records (and is told so) instead of holding
//! anything up.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use super::enrich::FlowRecord;
use super::filter::Filter;
use super::store::{FlowStore, Followed};

/// Where the agent listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/enforcer/flows.sock";
/// Clients served at once; more are turned away with an error line.
pub const MAX_CLIENTS: usize = 64;
/// Longest request line accepted.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// How long a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that cannot take one line for this long is dropped (its permit freed).
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);

/// What a client asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Keep streaming new matching records after the history.
    #[serde(default)]
    pub follow: bool,
    /// Only the last N matching buffered records (`None`: all of them; `Some(0)`: none).
    #[serde(default)]
    pub last: Option<usize>,
    /// Only records at or after this time (RFC 3339).
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub filter: Filter,
}

/// A line from the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Message {
    Flow(Box<FlowRecord>),
    Lost { count: u64 },
    Error { message: String },
}

/// [`Message`], borrowed, for writing.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum MessageRef<'a> {
    Flow(&'a FlowRecord),
    Lost { count: u64 },
    Error { message: &'a str },
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("creating the directory {path} for the flow socket")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another agent is already serving flows on {path}")]
    AlreadyServing { path: PathBuf },
    #[error("{path} exists and is not a socket; not replacing it")]
    NotASocket { path: PathBuf },
    #[error("removing the stale flow socket {path}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("listening on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("restricting the permissions of {path}")]
    Permissions {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why one client's session ended early (logged at debug: clients come and go).
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("reading the request")]
    Read(#[source] std::io::Error),
    #[error("no request within {REQUEST_TIMEOUT:?}")]
    RequestTimeout,
    #[error("writing to the client")]
    Write(#[source] std::io::Error),
    #[error("the client did not read for {WRITE_TIMEOUT:?}")]
    WriteTimeout,
}

/// A bound flow socket; [`FlowServer::run`] serves it. The socket file is removed when the
/// server is dropped (the task aborted).
pub struct FlowServer {
    listener: UnixListener,
    path: PathBuf,
    store: FlowStore,
    clients: Arc<Semaphore>,
}

impl FlowServer {
    /// Binds `path` (creating its directory, replacing a stale socket left by a dead agent)
    /// with mode 0600: flows name pods and addresses, so only root reads them. Must be called
    /// within a tokio runtime.
    pub fn bind(path: &Path, store: FlowStore) -> Result<Self, ServerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| ServerError::CreateDir {
                path: dir.into(),
                source,
            })?;
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(ServerError::NotASocket { path: path.into() });
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServerError::AlreadyServing { path: path.into() });
            }
            std::fs::remove_file(path).map_err(|source| ServerError::RemoveStale {
                path: path.into(),
                source,
            })?;
        }
        let listener = UnixListener::bind(path).map_err(|source| ServerError::Bind {
            path: path.into(),
            source,
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| ServerError::Permissions {
                path: path.into(),
                source,
            },
        )?;
        Ok(FlowServer {
            listener,
            path: path.into(),
            store,
            clients: Arc::new(Semaphore::new(MAX_CLIENTS)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts clients forever, each in its own task.
    pub async fn run(self) {
        tracing::info!(socket = %self.path.display(), "serving flows");
        loop {
            let stream = match self.listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a flow client");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let store = self.store.clone();
            let permit = self.clients.clone().try_acquire_owned();
            tokio::spawn(async move {
                let result = match permit {
                    Ok(_permit) => session(stream, &store).await,
                    Err(_) => {
                        let msg = format!("too many flow clients (at most {MAX_CLIENTS})");
                        let (_, mut w) = stream.into_split();
                        write_message(&mut w, &MessageRef::Error { message: &msg }).await
                    }
                };
                if let Err(e) = result {
                    let error = format!("{:#}", anyhow::Error::from(e));
                    tracing::debug!(%error, "flow client");
                }
            });
        }
    }
}

impl Drop for FlowServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds and serves `path` until the task is aborted.
pub async fn serve(path: &Path, store: FlowStore) -> Result<(), ServerError> {
    FlowServer::bind(path, store)?.run().await;
    Ok(())
}

async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    m: &MessageRef<'_>,
) -> Result<(), SessionError> {
    let mut line = serde_json::to_vec(m).expect("flow records serialize");
    line.push(b'\n');
    match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&line)).await {
        Ok(r) => r.map_err(SessionError::Write),
        Err(_) => Err(SessionError::WriteTimeout),
    }
}

/// Reads the request line: at most [`MAX_REQUEST_BYTES`], within [`REQUEST_TIMEOUT`].
async fn read_request<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Result<String, SessionError> {
    let mut line = String::new();
    let mut limited = (&mut *r).take(MAX_REQUEST_BYTES);
    match tokio::time::timeout(REQUEST_TIMEOUT, limited.read_line(&mut line)).await {
        Ok(r) => r.map_err(SessionError::Read)?,
        Err(_) => return Err(SessionError::RequestTimeout),
    };
    Ok(line)
}

/// Parses and checks a request line.
pub fn parse_request(line: &str) -> Result<(Request, Option<SystemTime>), String> {
    let req: Request =
        serde_json::from_str(line.trim()).map_err(|e| format!("invalid request: {e}"))?;
    let since = match &req.since {
        Some(s) => Some(
            humantime::parse_rfc3339_weak(s)
                .map_err(|e| format!("invalid `since` {s:?}: {e} (expected RFC 3339)"))?,
        ),
        None => None,
    };
    Ok((req, since))
}

async fn session(stream: UnixStream, store: &FlowStore) -> Result<(), SessionError> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let line = read_request(&mut r).await?;
    let (req, since) = match parse_request(&line) {
        Ok(x) => x,
        Err(message) => {
            return write_message(&mut w, &MessageRef::Error { message: &message }).await;
        }
    };
    store.catch_up().await;
    let (history, mut follower) = store.query_and_follow(&req.filter, req.last, since);
    let mut w = tokio::io::BufWriter::new(w);
    for rec in &history {
        write_message(&mut w, &MessageRef::Flow(rec)).await?;
    }
    w.flush().await.map_err(SessionError::Write)?;
    drop(history);
    if !req.follow {
        return w.shutdown().await.map_err(SessionError::Write);
    }
    let mut scratch = [0u8; 256];
    loop {
        tokio::select! {
            next = follower.next() => {
                let mut next = next;
                // Write what is ready, then flush once.
                loop {
                    match next {
                        None => return w.shutdown().await.map_err(SessionError::Write),
                        Some(Followed::Flow(rec)) => {
                            if req.filter.matches(&rec) {
                                write_message(&mut w, &MessageRef::Flow(&rec)).await?;
                            }
                        }
                        Some(Followed::Lost(count)) => {
                            write_message(&mut w, &MessageRef::Lost { count }).await?;
                        }
                    }
                    next = match follower.try_next() {
                        Some(n) => Some(n),
                        None => break,
                    };
                }
                match tokio::time::timeout(WRITE_TIMEOUT, w.flush()).await {
                    Ok(r) => r.map_err(SessionError::Write)?,
                    Err(_) => return Err(SessionError::WriteTimeout),
                }
            }
            // The client sends nothing more; end of stream (or an error) means it has gone.
            n = r.read(&mut scratch) => {
                if matches!(n, Ok(0) | Err(_)) {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, Write};

    use super::*;
    use crate::flows::filter::fixture::*;
    use crate::flows::filter::Verdict;
    use crate::flows::rotate::tests::TempDir;

    fn rec(port: u16, drop: bool) -> FlowRecord {
        let (mut s, d) = debug_to_backend();
        s.port = Some(port);
        if drop {
            dropped(s, d)
        } else {
            allowed(s, d)
        }
    }

    /// A blocking client, as `enforcer flows` is.
    fn connect(path: &Path, req: &Request) -> std::io::BufReader<std::os::unix::net::UnixStream> {
        let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut line = serde_json::to_vec(req).unwrap();
        line.push(b'\n');
        s.write_all(&line).unwrap();
        std::io::BufReader::new(s)
    }

    fn next_message(r: &mut impl BufRead) -> Option<Message> {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap() == 0 {
            return None;
        }
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}")))
    }

    fn port_of(m: Option<Message>) -> u16 {
        match m {
            Some(Message::Flow(r)) => r.src.port.unwrap(),
            other => panic!("expected a flow, got {other:?}"),
        }
    }

    fn dropped_only() -> Filter {
        let mut f = Filter::default();
        f.include.verdict = vec![Verdict::Dropped];
        f
    }

    #[test]
    fn messages_are_tagged_records() {
        let r = rec(1, true);
        let line = serde_json::to_string(&MessageRef::Flow(&r)).unwrap();
        assert!(
            line.starts_with(r#"{"type":"flow","schema":"enforcer.flow/v1""#),
            "{line}"
        );
        assert_eq!(
            serde_json::from_str::<Message>(&line).unwrap(),
            Message::Flow(Box::new(r))
        );
        let lost = serde_json::to_string(&MessageRef::Lost { count: 7 }).unwrap();
        assert_eq!(lost, r#"{"type":"lost","count":7}"#);
        assert!(parse_request(r#"{"follow":true,"last":null,"since":null,"filter":{}}"#).is_ok());
        assert!(parse_request("{}").is_ok());
        assert!(parse_request(r#"{"since":"yesterday"}"#)
            .unwrap_err()
            .contains("since"));
        assert!(parse_request(r#"{"folow":true}"#).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn query_then_follow_over_the_socket() {
        let dir = TempDir::new("flow-socket");
        let path = dir.0.join("run/flows.sock");
        let store = FlowStore::new(100);
        for i in 1..=6 {
            store.push(rec(i, i % 2 == 0));
        }
        let server = FlowServer::bind(&path, store.clone()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let task = tokio::spawn(server.run());

        // A query: the last two dropped records, then the connection closes.
        let p = path.clone();
        let got = tokio::task::spawn_blocking(move || {
            let mut c = connect(
                &p,
                &Request {
                    last: Some(2),
                    filter: dropped_only(),
                    ..Request::default()
                },
            );
            let got = [port_of(next_message(&mut c)), port_of(next_message(&mut c))];
            assert_eq!(next_message(&mut c), None);
            got
        })
        .await
        .unwrap();
        assert_eq!(got, [4, 6]);

        // A follower: history first, then only new matching records.
        let p = path.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let follower = tokio::task::spawn_blocking(move || {
            let mut c = connect(
                &p,
                &Request {
                    follow: true,
                    last: Some(1),
                    filter: dropped_only(),
                    ..Request::default()
                },
            );
            let first = port_of(next_message(&mut c));
            ready_tx.send(()).unwrap();
            [
                first,
                port_of(next_message(&mut c)),
                port_of(next_message(&mut c)),
            ]
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        store.push(rec(7, false));
        store.push(rec(8, true));
        store.push(rec(9, false));
        store.push(rec(10, true));
        assert_eq!(follower.await.unwrap(), [6, 8, 10]);

        // A bad request gets an error line.
        let p = path.clone();
        let err = tokio::task::spawn_blocking(move || {
            let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
            s.write_all(b"{\"last\":\"many\"}\n").unwrap();
            next_message(&mut std::io::BufReader::new(s))
        })
        .await
        .unwrap();
        assert!(
            matches!(&err, Some(Message::Error { message }) if message.contains("invalid request")),
            "{err:?}"
        );

        // A second agent does not steal the socket; the first one's is removed when it stops.
        assert!(matches!(
            FlowServer::bind(&path, store.clone()),
            Err(ServerError::AlreadyServing { .. })
        ));
        task.abort();
        let _ = task.await;
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_regular_file_is_not() {
        let dir = TempDir::new("flow-socket-stale");
        let path = dir.0.join("flows.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let server = FlowServer::bind(&path, FlowStore::new(1)).unwrap();
        drop(server);
        std::fs::write(&path, "not a socket").unwrap();
        assert!(matches!(
            FlowServer::bind(&path, FlowStore::new(1)),
            Err(ServerError::NotASocket { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_follower_is_told_what_it_lost() {
        let dir = TempDir::new("flow-socket-lag");
        let path = dir.0.join("flows.sock");
        let store = FlowStore::with_follow_buffer(10, 4);
        let task = tokio::spawn(FlowServer::bind(&path, store.clone()).unwrap().run());
        let p = path.clone();
        let mut c = tokio::task::spawn_blocking(move || {
            connect(
                &p,
                &Request {
                    follow: true,
                    last: Some(0),
                    ..Request::default()
                },
            )
        })
        .await
        .unwrap();
        // Wait until the session has subscribed: a record pushed now reaches it.
        let probe = tokio::task::spawn_blocking(move || {
            let first = next_message(&mut c);
            (first, c)
        });
        while !probe.is_finished() {
            store.push(rec(1, true));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (first, mut c) = probe.await.unwrap();
        assert_eq!(port_of(first), 1);
        // Far more than the follow buffer at once, faster than the session can forward them:
        // the session is told about the gap. (Pushing under the store's lock is quicker than a
        // write to the socket, but to be certain, this test pushes in bursts until it sees
        // a loss.)
        let lost = tokio::task::spawn_blocking(move || loop {
            match next_message(&mut c) {
                Some(Message::Lost { count }) => return count,
                Some(Message::Flow(_)) => {}
                other => panic!("{other:?}"),
            }
        });
        while !lost.is_finished() {
            for i in 0..1000 {
                store.push(rec(i, true));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(lost.await.unwrap() > 0);
        task.abort();
    }
}
