//! A Kubernetes API server test double: plain HTTP/1.1 (hyper) on `127.0.0.1:<random port>`,
//! for driving the agent's real `kube` client in integration tests. Not in the shipped binary.
//!
//! **Implements**, for the collections the agent watches (core/v1 `namespaces`, `pods`,
//! `services`; networking.k8s.io/v1 `networkpolicies`; discovery.k8s.io/v1 `endpointslices`),
//! cluster-wide (`/api/v1/pods`) and, for namespaced kinds, per namespace
//! (`/api/v1/namespaces/NS/pods`), `GET` only:
//!
//! - one global `resourceVersion` counter: every write (create, update, delete) takes the next
//!   value, which becomes the object's `metadata.resourceVersion` (a deleted object carries the
//!   deletion's version); writes also set `uid` and `creationTimestamp`, and a Namespace gets its
//!   `kubernetes.io/metadata.name` label, as the real API server does;
//! - **lists** with `limit` + `continue` (each page served from the first page's version, so the
//!   list is consistent; a token whose version has been compacted answers 410 `Expired` with a
//!   fresh token, as the real server does), `remainingItemCount`, items without
//!   `apiVersion`/`kind` (as the real server sends them), and the `resourceVersion` /
//!   `resourceVersionMatch` table of the API concepts page: unset = most recent, `"0"` = any
//!   (here: the newest), `NotOlderThan`, `Exact` (the state at that version rebuilt from history;
//!   410 when compacted), a non-zero version without a match = `Exact` with `limit`, `NotOlderThan`
//!   without; a version newer than the newest answers 504 `Timeout` (`ResourceVersionTooLarge`);
//!   the invalid combinations answer 400/422;
//! - **watches** (`watch=true`): from a version, every ADDED/MODIFIED/DELETED after it in order;
//!   without one (or `"0"`), synthetic ADDED events for the current objects first;
//!   `sendInitialEvents=true` (with `resourceVersionMatch=NotOlderThan`) ending the initial
//!   events with the `k8s.io/initial-events-end` BOOKMARK; periodic `BOOKMARK`s with
//!   `allowWatchBookmarks=true`; `timeoutSeconds` ends the stream (default 1800 s); a version
//!   older than the retained history gets HTTP 200 and one `ERROR` event (Status 410 `Expired`),
//!   as the watch cache answers;
//! - **history and compaction**: [`Options::history`] keeps at most that many events; [`ApiServer::compact`]
//!   drops them all (and, like the API server's compactor, takes a version itself), so every
//!   client that resumes gets 410 and relists;
//! - **faults** chosen by the test, for every request or those a predicate picks
//!   ([`Fault::Status`]: answer a Status with that code; [`Fault::Hang`]: read the request and never
//!   answer until the fault changes, then look again; [`Fault::Reset`]: reset the connection,
//!   RST); [`ApiServer::close_watches`] ends open watches cleanly;
//! - a test API: typed or JSON writes, the current version, every request as it arrived and how
//!   it was answered, requests hanging now, open watches.
//!
//! **Does not implement**: writes through HTTP (POST/PUT/PATCH/DELETE answer 405), GET of one
//! object, other resources (404), label/field selectors (rejected with 400 rather than ignored,
//! so a test cannot pass by accident), auth, TLS, protobuf/CBOR, gzip, `pretty`, graceful deletion
//! and finalizers (deletes are immediate), admission and validation beyond the Namespace label,
//! the real server's 3 s wait before "too large resource version", bookmarks just before a
//! watch times out.

#![allow(dead_code, reason = "each test binary uses a different part of the double")]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

/// The collections the double serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
    Service,
    EndpointSlice,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::NetworkPolicy,
        Kind::Service,
        Kind::EndpointSlice,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Service => "v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Pod => "pods",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
        }
    }

    fn namespaced(self) -> bool {
        self != Kind::Namespace
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The kind of a k8s-openapi type.
    pub fn of<K: k8s_openapi::Resource>() -> Kind {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == K::KIND && k.api_version() == K::API_VERSION)
            .unwrap_or_else(|| panic!("the double does not serve {}", K::KIND))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    List,
    Watch,
}

/// A request to one of the collections, as the double parsed it (what fault predicates see).
#[derive(Clone, Debug)]
pub struct RequestInfo {
    pub kind: Kind,
    pub verb: Verb,
    pub namespace: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub limit: Option<u64>,
    pub continue_token: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub allow_bookmarks: bool,
    pub send_initial_events: Option<bool>,
    /// `labelSelector` or `fieldSelector` was given (rejected: not implemented).
    pub selector: bool,
}

/// How a request was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A list, or a watch stream that started.
    Served,
    /// An error Status with this HTTP code (for a watch: before the stream started).
    Status(u16),
    /// A watch stream that carried only the 410 `Expired` ERROR event.
    Gone,
    /// The connection was reset.
    Reset,
}

#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub info: RequestInfo,
    pub answer: Answer,
    /// The answer came from a fault the test injected.
    pub injected: bool,
}

/// A fault the test injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with a Status of this code (500: InternalError, 503: ServiceUnavailable, ...).
    Status(u16),
    /// Read the request and do not answer while this fault applies; when the fault changes the
    /// request is looked at again (served, failed or reset as the new fault says).
    Hang,
    /// Reset the connection (SO_LINGER 0, so the client sees RST) instead of answering.
    Reset,
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Watch events kept for watches that resume from a version (`None`: all, until
    /// [`ApiServer::compact`]). Dropping one makes every version before it too old.
    pub history: Option<usize>,
    /// How often an open watch that allows bookmarks gets one.
    pub bookmark_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            history: None,
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

type Body = UnsyncBoxBody<Bytes, Infallible>;
type Predicate = Arc<dyn Fn(&RequestInfo) -> bool + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChangeType {
    Added,
    Modified,
    Deleted,
}

impl ChangeType {
    fn as_str(self) -> &'static str {
        match self {
            ChangeType::Added => "ADDED",
            ChangeType::Modified => "MODIFIED",
            ChangeType::Deleted => "DELETED",
        }
    }
}

/// One write, kept so that watches can resume and exact lists can be rebuilt.
struct Change {
    rv: u64,
    kind: Kind,
    ty: ChangeType,
    key: String,
    object: Arc<Value>,
    /// The object before this write (None for a create).
    prev: Option<Arc<Value>>,
}

enum Item {
    Line(Bytes),
    End,
}

struct OpenWatch {
    kind: Kind,
    namespace: Option<String>,
    tx: mpsc::UnboundedSender<Item>,
}

struct State {
    rv: u64,
    /// The oldest version a watch can resume from or an exact list can be served at: every
    /// change after it is still in `log`.
    floor: u64,
    history: Option<usize>,
    /// Per kind, by `namespace/name` (or `name`), in etcd key order.
    objects: [BTreeMap<String, Arc<Value>>; 5],
    log: VecDeque<Change>,
    watches: Vec<OpenWatch>,
    fault: Option<(Fault, Predicate)>,
    arrived: Vec<RequestInfo>,
    answered: Vec<RequestRecord>,
    hanging: [usize; 5],
    uids: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped on every fault change, so that hung requests look again.
    fault_generation: watch::Sender<u64>,
    bookmark_interval: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("the double's state lock is never poisoned")
    }
}

/// The running double; dropping it stops the server and every connection.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApiServer {
    pub async fn start() -> ApiServer {
        ApiServer::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the double to 127.0.0.1:0");
        let addr = listener.local_addr().expect("the listener's address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 1,
                floor: 1,
                history: options.history,
                objects: Default::default(),
                log: VecDeque::new(),
                watches: Vec::new(),
                fault: None,
                arrived: Vec::new(),
                answered: Vec::new(),
                hanging: [0; 5],
                uids: 0,
            }),
            fault_generation: watch::Sender::new(0),
            bookmark_interval: options.bookmark_interval,
        });
        let accept_shared = shared.clone();
        let task = tokio::spawn(async move {
            // Dropped with this task: aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            connections.spawn(serve_connection(accept_shared.clone(), stream));
                        }
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        ApiServer { shared, addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The client configuration for the double (no TLS, no auth; otherwise kube's defaults).
    pub fn config(&self) -> kube::Config {
        kube::Config::new(self.url().parse().expect("the double's URL parses"))
    }

    /// A client of the double, as the agent builds one.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("building a kube client for the double")
    }

    /// The newest `resourceVersion` (on the wire, its decimal string).
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Creates an object (panics if it exists); returns its `resourceVersion`.
    pub fn create<K: k8s_openapi::Resource + serde::Serialize>(&self, object: &K) -> u64 {
        self.write(to_json(object), Mode::Create)
    }

    pub fn create_json(&self, object: Value) -> u64 {
        self.write(object, Mode::Create)
    }

    /// Replaces an object (panics if it does not exist).
    pub fn update<K: k8s_openapi::Resource + serde::Serialize>(&self, object: &K) -> u64 {
        self.write(to_json(object), Mode::Update)
    }

    pub fn update_json(&self, object: Value) -> u64 {
        self.write(object, Mode::Update)
    }

    /// Creates or replaces an object.
    pub fn apply<K: k8s_openapi::Resource + serde::Serialize>(&self, object: &K) -> u64 {
        self.write(to_json(object), Mode::Apply)
    }

    /// Deletes `namespace/name` (or `name` for a Namespace); panics if it does not exist.
    pub fn delete<K: k8s_openapi::Resource>(&self, key: &str) -> u64 {
        self.delete_kind(Kind::of::<K>(), key)
    }

    pub fn delete_kind(&self, kind: Kind, key: &str) -> u64 {
        let mut st = self.shared.lock();
        let prev = st.objects[kind.index()]
            .remove(key)
            .unwrap_or_else(|| panic!("deleting {} {key}: it does not exist", kind.name()));
        st.rv += 1;
        let rv = st.rv;
        let mut object = (*prev).clone();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.record(Change {
            rv,
            kind,
            ty: ChangeType::Deleted,
            key: key.to_owned(),
            object: Arc::new(object),
            prev: Some(prev),
        });
        rv
    }

    /// Deletes every object of a kind; returns how many there were.
    pub fn delete_all(&self, kind: Kind) -> usize {
        let keys: Vec<String> = self.shared.lock().objects[kind.index()]
            .keys()
            .cloned()
            .collect();
        for key in &keys {
            self.delete_kind(kind, key);
        }
        keys.len()
    }

    pub fn object_count(&self, kind: Kind) -> usize {
        self.shared.lock().objects[kind.index()].len()
    }

    /// Forgets all history (taking a version itself, as the API server's compactor writes its
    /// compaction key): every watch that resumes from an older version gets 410 `Expired`, and
    /// every continue token issued so far expires.
    pub fn compact(&self) -> u64 {
        let mut st = self.shared.lock();
        st.rv += 1;
        st.log.clear();
        st.floor = st.rv;
        st.rv
    }

    /// Injects `fault` into every request.
    pub fn set_fault_all(&self, fault: Fault) {
        self.set_fault(fault, |_| true);
    }

    /// Injects `fault` into the requests `applies` picks (replacing any earlier fault).
    pub fn set_fault(
        &self,
        fault: Fault,
        applies: impl Fn(&RequestInfo) -> bool + Send + Sync + 'static,
    ) {
        self.shared.lock().fault = Some((fault, Arc::new(applies)));
        self.shared.fault_generation.send_modify(|g| *g += 1);
    }

    /// Ends the fault: hung requests are served.
    pub fn clear_fault(&self) {
        self.shared.lock().fault = None;
        self.shared.fault_generation.send_modify(|g| *g += 1);
    }

    /// Ends every open watch (its stream ends cleanly after what was already sent); returns how
    /// many there were.
    pub fn close_watches(&self) -> usize {
        self.close_watches_where(|_| true)
    }

    pub fn close_watches_of(&self, kind: Kind) -> usize {
        self.close_watches_where(move |k| k == kind)
    }

    fn close_watches_where(&self, which: impl Fn(Kind) -> bool) -> usize {
        let mut st = self.shared.lock();
        let mut closed = 0;
        st.watches.retain(|w| {
            if which(w.kind) && !w.tx.is_closed() {
                let _ = w.tx.send(Item::End);
                closed += 1;
                false
            } else {
                !w.tx.is_closed()
            }
        });
        closed
    }

    pub fn open_watches(&self, kind: Kind) -> usize {
        let st = self.shared.lock();
        st.watches
            .iter()
            .filter(|w| w.kind == kind && !w.tx.is_closed())
            .count()
    }

    /// Requests of that kind and verb that arrived so far (answered or not).
    pub fn requests(&self, kind: Kind, verb: Verb) -> usize {
        let st = self.shared.lock();
        st.arrived
            .iter()
            .filter(|r| r.kind == kind && r.verb == verb)
            .count()
    }

    /// Lists of that kind started from the beginning (no continue token): one per (re)list.
    pub fn lists_started(&self, kind: Kind) -> usize {
        let st = self.shared.lock();
        st.arrived
            .iter()
            .filter(|r| r.kind == kind && r.verb == Verb::List && r.continue_token.is_none())
            .count()
    }

    /// Answered requests that `which` picks.
    pub fn count(&self, which: impl Fn(&RequestRecord) -> bool) -> usize {
        self.shared.lock().answered.iter().filter(|r| which(r)).count()
    }

    pub fn answered(&self) -> Vec<RequestRecord> {
        self.shared.lock().answered.clone()
    }

    /// Requests of that kind hanging now.
    pub fn hanging(&self, kind: Kind) -> usize {
        self.shared.lock().hanging[kind.index()]
    }

    /// One line per answered request, for failure messages.
    pub fn request_log(&self) -> String {
        let st = self.shared.lock();
        let mut out = String::new();
        for r in &st.answered {
            let i = &r.info;
            out.push_str(&format!(
                "{:?} {:?} rv={:?} match={:?} limit={:?} continue={} -> {:?}{}\n",
                i.verb,
                i.kind,
                i.resource_version,
                i.resource_version_match,
                i.limit,
                i.continue_token.is_some(),
                r.answer,
                if r.injected { " (injected)" } else { "" }
            ));
        }
        out
    }

    fn write(&self, mut object: Value, mode: Mode) -> u64 {
        let api_version = object["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind_name = object["kind"].as_str().unwrap_or_default().to_owned();
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.name() == kind_name && k.api_version() == api_version)
            .unwrap_or_else(|| panic!("the double does not serve {api_version} {kind_name}"));
        let name = object["metadata"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| panic!("a {kind_name} needs metadata.name"))
            .to_owned();
        let key = if kind.namespaced() {
            let ns = match object["metadata"]["namespace"].as_str() {
                Some(ns) if !ns.is_empty() => ns.to_owned(),
                _ => "default".to_owned(),
            };
            object["metadata"]["namespace"] = json!(ns);
            format!("{ns}/{name}")
        } else {
            name.clone()
        };
        let mut st = self.shared.lock();
        let prev = st.objects[kind.index()].get(&key).cloned();
        match (mode, &prev) {
            (Mode::Create, Some(_)) => panic!("creating {kind_name} {key}: it already exists"),
            (Mode::Update, None) => panic!("updating {kind_name} {key}: it does not exist"),
            _ => {}
        }
        st.rv += 1;
        let rv = st.rv;
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        match &prev {
            Some(p) => {
                meta["uid"] = p["metadata"]["uid"].clone();
                meta["creationTimestamp"] = p["metadata"]["creationTimestamp"].clone();
            }
            None => {
                st.uids += 1;
                meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", st.uids));
                meta["creationTimestamp"] = json!(humantime::format_rfc3339_seconds(
                    std::time::SystemTime::now()
                )
                .to_string());
            }
        }
        if kind == Kind::Namespace {
            // The API server sets it on every namespace (and keeps it at the name).
            if !meta["labels"].is_object() {
                meta["labels"] = json!({});
            }
            meta["labels"]["kubernetes.io/metadata.name"] = json!(name);
        }
        let object = Arc::new(object);
        st.objects[kind.index()].insert(key.clone(), object.clone());
        st.record(Change {
            rv,
            kind,
            ty: if prev.is_some() {
                ChangeType::Modified
            } else {
                ChangeType::Added
            },
            key,
            object,
            prev,
        });
        rv
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Create,
    Update,
    Apply,
}

fn to_json<K: serde::Serialize>(object: &K) -> Value {
    serde_json::to_value(object).expect("k8s-openapi objects serialize")
}

impl State {
    fn record(&mut self, change: Change) {
        let line = event_line(change.ty.as_str(), &change.object);
        self.watches.retain(|w| !w.tx.is_closed());
        for w in &self.watches {
            if w.kind == change.kind && in_namespace(&change.key, w.namespace.as_deref()) {
                let _ = w.tx.send(Item::Line(line.clone()));
            }
        }
        self.log.push_back(change);
        if let Some(max) = self.history {
            while self.log.len() > max {
                let dropped = self.log.pop_front().expect("the log is longer than max");
                self.floor = dropped.rv;
            }
        }
    }

    /// The objects of a kind as they were at version `at` (`floor <= at <= rv`).
    fn objects_at(&self, kind: Kind, at: u64) -> BTreeMap<String, Arc<Value>> {
        let mut objects = self.objects[kind.index()].clone();
        for c in self.log.iter().rev().take_while(|c| c.rv > at) {
            if c.kind != kind {
                continue;
            }
            match (&c.ty, &c.prev) {
                (ChangeType::Added, _) => {
                    objects.remove(&c.key);
                }
                (_, Some(prev)) => {
                    objects.insert(c.key.clone(), prev.clone());
                }
                (_, None) => unreachable!("a modification or deletion keeps the previous object"),
            }
        }
        objects
    }

    fn fault_for(&self, info: &RequestInfo) -> Option<Fault> {
        self.fault
            .as_ref()
            .filter(|(_, applies)| applies(info))
            .map(|(f, _)| *f)
    }

    fn answer(&mut self, info: &RequestInfo, answer: Answer, injected: bool) {
        self.answered.push(RequestRecord {
            info: info.clone(),
            answer,
            injected,
        });
    }

    fn too_large(&self, rv: u64) -> Failure {
        Failure::too_large(rv, self.rv)
    }
}

fn in_namespace(key: &str, namespace: Option<&str>) -> bool {
    match namespace {
        None => true,
        Some(ns) => key.split_once('/').is_some_and(|(k, _)| k == ns),
    }
}

fn event_line(ty: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": ty, "object": object}))
        .expect("JSON values serialize");
    line.push(b'\n');
    Bytes::from(line)
}

/// An error answer (a `Status`).
#[derive(Debug)]
struct Failure {
    code: u16,
    reason: &'static str,
    message: String,
    /// `metadata.continue` of the Status (a 410 for an expired continue token carries one).
    continue_token: Option<String>,
    details: Option<Value>,
}

impl Failure {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            code,
            reason,
            message: message.into(),
            continue_token: None,
            details: None,
        }
    }

    fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(422, "Invalid", message)
    }

    fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(400, "BadRequest", message)
    }

    fn expired(message: impl Into<String>) -> Failure {
        Failure::new(410, "Expired", message)
    }

    fn too_large(requested: u64, current: u64) -> Failure {
        let mut f = Failure::new(
            504,
            "Timeout",
            format!("Too large resource version: {requested}, current: {current}"),
        );
        f.details = Some(json!({
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1
        }));
        f
    }

    fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(token) = &self.continue_token {
            s["metadata"]["continue"] = json!(token);
        }
        if let Some(details) = &self.details {
            s["details"] = details.clone();
        }
        s
    }

    fn response(&self) -> Response<Body> {
        json_response(self.code, &self.status())
    }
}

fn reason_of(code: u16) -> &'static str {
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

fn json_response(code: u16, body: &Value) -> Response<Body> {
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
struct Connection {
    socket: Option<socket2::Socket>,
}

impl Connection {
    /// SO_LINGER 0: closing the connection (both descriptors) sends RST instead of FIN.
    fn arm_reset(&self) {
        if let Some(s) = &self.socket {
            let _ = s.set_linger(Some(Duration::ZERO));
        }
    }
}

#[derive(Debug)]
struct ResetConnection;

impl std::fmt::Display for ResetConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset by the test's fault")
    }
}

impl std::error::Error for ResetConnection {}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let socket = stream
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .map(socket2::Socket::from);
    let connection = Arc::new(Connection { socket });
    let service = hyper::service::service_fn(move |req| {
        handle(shared.clone(), connection.clone(), req)
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}

/// Counts a request as hanging while it lives.
struct Hanging {
    shared: Arc<Shared>,
    kind: Kind,
}

impl Hanging {
    fn new(shared: &Arc<Shared>, kind: Kind) -> Hanging {
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

async fn handle(
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

fn parse_request(path: &str, query: &str) -> Result<RequestInfo, Failure> {
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

fn percent_decode(s: &str) -> String {
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

fn parse_rv(text: &str) -> Result<u64, Failure> {
    text.parse()
        .map_err(|_| Failure::bad_request(format!("resourceVersion: {text:?} is not valid")))
}

/// A continue token: the version the list is served at and the last key sent (hex).
fn continue_token(rv: u64, last_key: &str) -> String {
    let hex: String = last_key.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{rv}.{hex}")
}

fn parse_continue(token: &str) -> Option<(u64, String)> {
    let (rv, hex) = token.split_once('.')?;
    let rv = rv.parse().ok()?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some((rv, String::from_utf8(bytes).ok()?))
}

fn serve_list(shared: &Shared, info: &RequestInfo) -> Response<Body> {
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

fn list(st: &State, info: &RequestInfo) -> Result<Value, Failure> {
    if info.selector {
        return Err(Failure::bad_request(
            "the double does not implement label or field selectors",
        ));
    }
    let rv = info.resource_version.as_deref();
    let rv_match = info.resource_version_match.as_deref();
    // (version served at, key to continue after)
    let (at, after) = if let Some(token) = &info.continue_token {
        if rv_match.is_some() {
            return Err(Failure::invalid(
                "resourceVersionMatch is forbidden when continue is provided",
            ));
        }
        if rv.is_some_and(|v| v != "0") {
            return Err(Failure::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        let (at, after) = parse_continue(token)
            .ok_or_else(|| Failure::bad_request("continue key is not valid"))?;
        if at < st.floor {
            let mut f = Failure::expired(
                "The provided continue parameter is too old to display a consistent list \
                 result. You can start a new list without the continue parameter, or use the \
                 continue token in this response to retrieve the remainder of the results. \
                 Continuing with the provided token results in an inconsistent list - objects \
                 that were created, modified, or deleted between the time the first chunk was \
                 returned and now may show up in the list.",
            );
            f.continue_token = Some(continue_token(st.rv, &after));
            return Err(f);
        }
        if at > st.rv {
            return Err(Failure::bad_request("continue key is not valid"));
        }
        (at, Some(after))
    } else {
        let at = match (rv_match, rv) {
            (Some(_), None) => {
                return Err(Failure::invalid(
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                ))
            }
            (Some("Exact"), Some("0")) => {
                return Err(Failure::invalid(
                    "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"",
                ))
            }
            (Some("Exact"), Some(v)) => exact(st, parse_rv(v)?)?,
            (Some("NotOlderThan"), Some(v)) => not_older_than(st, parse_rv(v)?)?,
            (Some(other), Some(_)) => {
                return Err(Failure::invalid(format!(
                    "resourceVersionMatch: Unsupported value: {other:?}: supported values: \
                     \"Exact\", \"NotOlderThan\""
                )))
            }
            // Most recent.
            (None, None) => st.rv,
            // Any: the double's newest is as good as any.
            (None, Some("0")) => st.rv,
            // Legacy: with a limit, exact; without, not older than.
            (None, Some(v)) if info.limit.is_some() => exact(st, parse_rv(v)?)?,
            (None, Some(v)) => not_older_than(st, parse_rv(v)?)?,
        };
        (at, None)
    };
    let objects = if at == st.rv {
        st.objects[info.kind.index()].clone()
    } else {
        st.objects_at(info.kind, at)
    };
    let mut candidates = objects
        .iter()
        .filter(|(k, _)| in_namespace(k, info.namespace.as_deref()))
        .filter(|(k, _)| after.as_deref().is_none_or(|a| k.as_str() > a))
        .peekable();
    let mut items = Vec::new();
    let mut last = None;
    while let Some((key, object)) = candidates.peek() {
        if info.limit.is_some_and(|l| items.len() as u64 >= l) {
            break;
        }
        let mut item = Value::clone(object);
        // Items of a list carry no apiVersion/kind, as the real server sends them.
        if let Some(map) = item.as_object_mut() {
            map.remove("apiVersion");
            map.remove("kind");
        }
        items.push(item);
        last = Some((*key).clone());
        candidates.next();
    }
    let remaining = candidates.count();
    let mut metadata = json!({"resourceVersion": at.to_string()});
    if remaining > 0 {
        let last = last.expect("a limit of at least one sent an item");
        metadata["continue"] = json!(continue_token(at, &last));
        metadata["remainingItemCount"] = json!(remaining);
    }
    Ok(json!({
        "kind": format!("{}List", info.kind.name()),
        "apiVersion": info.kind.api_version(),
        "metadata": metadata,
        "items": items,
    }))
}

fn exact(st: &State, rv: u64) -> Result<u64, Failure> {
    if rv < st.floor {
        return Err(Failure::expired(format!(
            "too old resource version: {rv} ({})",
            st.floor
        )));
    }
    if rv > st.rv {
        return Err(st.too_large(rv));
    }
    Ok(rv)
}

fn not_older_than(st: &State, rv: u64) -> Result<u64, Failure> {
    if rv > st.rv {
        return Err(st.too_large(rv));
    }
    Ok(st.rv)
}

fn serve_watch(shared: &Arc<Shared>, info: &RequestInfo) -> Response<Body> {
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

enum Started {
    Streaming,
    /// The version is older than the history: one 410 ERROR event.
    Gone(String),
}

/// Queues what a new watch sends first (under the state lock, so no write slips in between).
fn start_watch(
    st: &State,
    info: &RequestInfo,
    tx: &mpsc::UnboundedSender<Item>,
) -> Result<Started, Failure> {
    if info.selector {
        return Err(Failure::bad_request(
            "the double does not implement label or field selectors",
        ));
    }
    let rv = info.resource_version.as_deref();
    let send_current = |st: &State| {
        for (key, object) in &st.objects[info.kind.index()] {
            if in_namespace(key, info.namespace.as_deref()) {
                let _ = tx.send(Item::Line(event_line("ADDED", object)));
            }
        }
    };
    match (info.send_initial_events, info.resource_version_match.as_deref()) {
        (Some(true), Some("NotOlderThan")) => {
            if !info.allow_bookmarks {
                return Err(Failure::invalid(
                    "allowWatchBookmarks: Required value: sendInitialEvents requires bookmarks",
                ));
            }
            if let Some(v) = rv.filter(|v| *v != "0") {
                not_older_than(st, parse_rv(v)?)?;
            }
            send_current(st);
            let _ = tx.send(Item::Line(bookmark_line(info.kind, st.rv, true)));
            return Ok(Started::Streaming);
        }
        (Some(true), _) => {
            return Err(Failure::invalid(
                "sendInitialEvents requires resourceVersionMatch=NotOlderThan",
            ))
        }
        (_, Some(_)) if info.send_initial_events != Some(false) => {
            return Err(Failure::invalid(
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ))
        }
        _ => {}
    }
    match rv {
        None | Some("0") => {
            send_current(st);
            Ok(Started::Streaming)
        }
        Some(v) => {
            let from = parse_rv(v)?;
            if from < st.floor {
                return Ok(Started::Gone(format!(
                    "too old resource version: {from} ({})",
                    st.floor
                )));
            }
            if from > st.rv {
                return Err(st.too_large(from));
            }
            for c in st.log.iter().filter(|c| c.rv > from) {
                if c.kind == info.kind && in_namespace(&c.key, info.namespace.as_deref()) {
                    let _ = tx.send(Item::Line(event_line(c.ty.as_str(), &c.object)));
                }
            }
            Ok(Started::Streaming)
        }
    }
}

fn bookmark_line(kind: Kind, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": kind.name(), "apiVersion": kind.api_version(), "metadata": metadata}),
    )
}

/// The body of a watch: the queued lines, a bookmark now and then, the end at the timeout or
/// when the test closes it.
struct WatchBody {
    shared: Arc<Shared>,
    kind: Kind,
    rx: mpsc::UnboundedReceiver<Item>,
    pending: VecDeque<Bytes>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    bookmarks: Option<tokio::time::Interval>,
    done: bool,
}

impl WatchBody {
    /// Takes what is queued and the newest version under the lock: every event up to that
    /// version is then sent before the bookmark.
    fn bookmark(&mut self) {
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
        self.pending.push_back(bookmark_line(self.kind, st.rv, false));
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
