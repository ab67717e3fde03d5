//! The double's HTTP side: connections, request parsing, injected faults, list answers and the
//! streaming watch body.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::store::{
    bookmark_line, event_line, list, start_watch, Failure, Item, OpenWatch, Started,
};
use super::{Answer, Fault, Kind, RequestInfo, Shared, Verb};

type Body = UnsyncBoxBody<Bytes, Infallible>;

impl Failure {
    pub(super) fn response(&self) -> Response<Body> {
        json_response(self.code, &self.status())
    }
}

pub(super) fn reason_of(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

pub(super) fn json_response(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(
                serde_json::to_vec(body).expect("JSON values serialize"),
            ))
            .boxed_unsync(),
        )
        .expect("a response with a valid status and header")
}

/// The client's socket, kept to reset the connection (hyper owns the stream itself).
pub(super) struct Connection {
    pub(super) socket: Option<socket2::Socket>,
}

impl Connection {
    /// SO_LINGER 0: closing the connection (both descriptors) sends RST instead of FIN.
    pub(super) fn arm_reset(&self) {
        if let Some(s) = &self.socket {
            let _ = s.set_linger(Some(Duration::ZERO));
        }
    }
}

#[derive(Debug)]
pub(super) struct ResetConnection;

impl std::fmt::Display for ResetConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset by the test's fault")
    }
}

impl std::error::Error for ResetConnection {}

pub(super) async fn serve_connection(shared: Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let socket = stream
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .map(socket2::Socket::from);
    let connection = Arc::new(Connection { socket });
    let service =
        hyper::service::service_fn(move |req| handle(shared.clone(), connection.clone(), req));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}

/// Counts a request as hanging while it lives.
pub(super) struct Hanging {
    pub(super) shared: Arc<Shared>,
    pub(super) kind: Kind,
}

impl Hanging {
    pub(super) fn new(shared: &Arc<Shared>, kind: Kind) -> Hanging {
        shared.lock().hanging[kind.index()] += 1;
        Hanging {
            shared: shared.clone(),
            kind,
        }
    }
}

impl Drop for Hanging {
    fn drop(&mut self) {
        self.shared.lock().hanging[self.kind.index()] -= 1;
    }
}

pub(super) async fn handle(
    shared: Arc<Shared>,
    connection: Arc<Connection>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ResetConnection> {
    if req.method() != Method::GET {
        return Ok(Failure::new(
            405,
            "MethodNotAllowed",
            format!("the double serves GET only, not {}", req.method()),
        )
        .response());
    }
    let info = match parse_request(req.uri().path(), req.uri().query().unwrap_or("")) {
        Ok(info) => info,
        Err(f) => return Ok(f.response()),
    };
    shared.lock().arrived.push(info.clone());
    let mut hanging = None;
    loop {
        // Subscribed before the fault is read, so a change in between is not missed.
        let mut generation = shared.fault_generation.subscribe();
        let fault = shared.lock().fault_for(&info);
        match fault {
            None => break,
            Some(Fault::Status(code)) => {
                shared.lock().answer(&info, Answer::Status(code), true);
                return Ok(Failure::new(
                    code,
                    reason_of(code),
                    format!("injected by the test: {code}"),
                )
                .response());
            }
            Some(Fault::Reset) => {
                shared.lock().answer(&info, Answer::Reset, true);
                connection.arm_reset();
                // hyper drops the connection without answering; with SO_LINGER 0 that is RST.
                return Err(ResetConnection);
            }
            Some(Fault::Hang) => {
                hanging.get_or_insert_with(|| Hanging::new(&shared, info.kind));
                let _ = generation.changed().await;
            }
        }
    }
    drop(hanging);
    Ok(match info.verb {
        Verb::List => serve_list(&shared, &info),
        Verb::Watch => serve_watch(&shared, &info),
    })
}

pub(super) fn parse_request(path: &str, query: &str) -> Result<RequestInfo, Failure> {
    let not_found = || Failure::new(404, "NotFound", format!("the double does not serve {path}"));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return Err(not_found()),
    };
    let (namespace, plural) = match rest {
        [plural] => (None, *plural),
        ["namespaces", ns, plural] => (Some((*ns).to_owned()), *plural),
        _ => return Err(not_found()),
    };
    let kind = Kind::ALL
        .into_iter()
        .find(|k| k.api_version() == api_version && k.plural() == plural)
        .filter(|k| k.namespaced() || namespace.is_none())
        .ok_or_else(not_found)?;
    let params: BTreeMap<String, String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let get = |name: &str| params.get(name).filter(|v| !v.is_empty()).cloned();
    let number = |name: &str| -> Result<Option<u64>, Failure> {
        get(name)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| Failure::bad_request(format!("{name}: {v:?} is not a number")))
            })
            .transpose()
    };
    let flag = |name: &str| get(name).map(|v| v == "true" || v == "1");
    Ok(RequestInfo {
        kind,
        verb: if flag("watch") == Some(true) {
            Verb::Watch
        } else {
            Verb::List
        },
        namespace,
        resource_version: get("resourceVersion"),
        resource_version_match: get("resourceVersionMatch"),
        limit: number("limit")?.filter(|l| *l > 0),
        continue_token: get("continue"),
        timeout_seconds: number("timeoutSeconds")?,
        allow_bookmarks: flag("allowWatchBookmarks") == Some(true),
        send_initial_events: flag("sendInitialEvents"),
        selector: get("labelSelector").is_some() || get("fieldSelector").is_some(),
    })
}

pub(super) fn percent_decode(s: &str) -> String {
    let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(h), Some(l)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn serve_list(shared: &Shared, info: &RequestInfo) -> Response<Body> {
    let mut st = shared.lock();
    match list(&st, info) {
        Ok(body) => {
            st.answer(info, Answer::Served, false);
            json_response(200, &body)
        }
        Err(f) => {
            st.answer(info, Answer::Status(f.code), false);
            f.response()
        }
    }
}

pub(super) fn serve_watch(shared: &Arc<Shared>, info: &RequestInfo) -> Response<Body> {
    let mut st = shared.lock();
    let (tx, rx) = mpsc::unbounded_channel();
    match start_watch(&st, info, &tx) {
        Ok(Started::Streaming) => {
            st.watches.push(OpenWatch {
                kind: info.kind,
                namespace: info.namespace.clone(),
                tx,
            });
            st.answer(info, Answer::Served, false);
        }
        Ok(Started::Gone(message)) => {
            let status = Failure::expired(message).status();
            let _ = tx.send(Item::Line(event_line("ERROR", &status)));
            let _ = tx.send(Item::End);
            st.answer(info, Answer::Gone, false);
        }
        Err(f) => {
            st.answer(info, Answer::Status(f.code), false);
            return f.response();
        }
    }
    drop(st);
    let timeout = Duration::from_secs(info.timeout_seconds.unwrap_or(1800));
    let period = shared.bookmark_interval;
    let body = WatchBody {
        shared: shared.clone(),
        kind: info.kind,
        rx,
        pending: VecDeque::new(),
        deadline: Box::pin(tokio::time::sleep(timeout)),
        bookmarks: info
            .allow_bookmarks
            .then(|| tokio::time::interval_at(tokio::time::Instant::now() + period, period)),
        done: false,
    };
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(body.boxed_unsync())
        .expect("a response with a valid status and header")
}

/// The body of a watch: the queued lines, a bookmark now and then, the end at the timeout or
/// when the test closes it.
pub(super) struct WatchBody {
    pub(super) shared: Arc<Shared>,
    pub(super) kind: Kind,
    pub(super) rx: mpsc::UnboundedReceiver<Item>,
    pub(super) pending: VecDeque<Bytes>,
    pub(super) deadline: Pin<Box<tokio::time::Sleep>>,
    pub(super) bookmarks: Option<tokio::time::Interval>,
    pub(super) done: bool,
}

impl WatchBody {
    /// Takes what is queued and the newest version under the lock: every event up to that
    /// version is then sent before the bookmark.
    pub(super) fn bookmark(&mut self) {
        let st = self.shared.lock();
        while let Ok(item) = self.rx.try_recv() {
            match item {
                Item::Line(b) => self.pending.push_back(b),
                Item::End => {
                    self.done = true;
                    return;
                }
            }
        }
        self.pending
            .push_back(bookmark_line(self.kind, st.rv, false));
    }
}

impl hyper::body::Body for WatchBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        loop {
            if let Some(line) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(line))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(Item::Line(line))) => {
                    this.pending.push_back(line);
                    continue;
                }
                Poll::Ready(Some(Item::End) | None) => {
                    this.done = true;
                    continue;
                }
                Poll::Pending => {}
            }
            if this.deadline.as_mut().poll(cx).is_ready() {
                this.done = true;
                continue;
            }
            if let Some(interval) = &mut this.bookmarks {
                if interval.poll_tick(cx).is_ready() {
                    this.bookmark();
                    continue;
                }
            }
            return Poll::Pending;
        }
    }
}
