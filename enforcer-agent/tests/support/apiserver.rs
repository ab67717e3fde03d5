//! A Kubernetes API server test double: plain HTTP/1.1 (hyper) on `127.0.0.1:<random port>`,
//! for driving the agent's real `kube` client in integration tests. Not in the shipped binary.
//!
//! **Implements**, for the collections the agent watches (core/v1 `namespaces`, `pods`,
//! `services`, `nodes`; networking.k8s.io/v1 `networkpolicies`; discovery.k8s.io/v1
//! `endpointslices`; the network-policy-api CRDs' policy.networking.k8s.io/v1alpha2
//! `clusternetworkpolicies` and v1alpha1 `adminnetworkpolicies`, `baselineadminnetworkpolicies`;
//! Namespaces, Nodes and the three policy kinds cluster-scoped),
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
//! - **history and compaction**: [`Options::history`] keeps at most that many events;
//!   [`ApiServer::compact`] drops them all (and, like the API server's compactor, takes a version
//!   itself), so every client that resumes gets 410 and relists;
//! - **faults** chosen by the test, for every request or those a predicate picks
//!   ([`Fault::Status`]: answer a Status with that code; [`Fault::Hang`]: read the request and never
//!   answer until the fault changes, then look again; [`Fault::Reset`]: reset the connection,
//!   RST); [`ApiServer::close_watches`] ends open watches cleanly;
//! - **CRDs not installed**: the three network-policy-api kinds are served from the start;
//!   [`ApiServer::uninstall`] takes one away as deleting its CustomResourceDefinition does (its
//!   objects deleted with DELETED events, its watches ended), after which its lists and watches
//!   answer 404 `NotFound` with the Status the real server gives for a resource it does not
//!   serve ("the server could not find the requested resource"), and writes of it panic;
//!   [`ApiServer::install`] serves it again, empty. Injected faults come before that answer;
//! - a test API: typed or JSON writes, the current version, every request as it arrived and how
//!   it was answered, requests hanging now, open watches.
//!
//! **Does not implement**: writes through HTTP (POST/PUT/PATCH/DELETE answer 405), GET of one
//! object, other resources (404), discovery (`/apis`, `/apis/GROUP/VERSION`: 404; the agent
//! lists without it), CustomResourceDefinition objects themselves (the switch above stands in
//! for them), schema validation of custom resources, label/field selectors (rejected with 400
//! rather than ignored, so a test cannot pass by accident), auth, TLS, protobuf/CBOR, gzip,
//! `pretty`, graceful deletion
//! and finalizers (deletes are immediate), admission and validation beyond the Namespace label,
//! the real server's 3 s wait before "too large resource version" (and its answer to a watch:
//! here a 504 before the stream), bookmarks just before a watch times out.
//!
//! What kube 5's watcher sends, with the source's default `watcher::Config`: lists with
//! `limit=500` and no `resourceVersion` (most recent), paged with `continue`; then a watch from
//! the list's version with `allowWatchBookmarks=true&timeoutSeconds=290`; on a 410, a new list.
//! The client itself retries 429/503/504 answers (`Config::default_retry`).

mod http;
mod store;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use store::{Change, ChangeType, Item, State};

/// The collections the double serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
    Service,
    EndpointSlice,
    Node,
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
}

/// How many kinds the double serves.
pub(crate) const KINDS: usize = Kind::ALL.len();

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::NetworkPolicy,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Node,
        Kind::ClusterNetworkPolicy,
        Kind::AdminNetworkPolicy,
        Kind::BaselineAdminNetworkPolicy,
    ];

    /// The kinds that CRDs define in a real cluster (network-policy-api): the ones
    /// [`ApiServer::uninstall`] can take away.
    pub const CRDS: [Kind; 3] = [
        Kind::ClusterNetworkPolicy,
        Kind::AdminNetworkPolicy,
        Kind::BaselineAdminNetworkPolicy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
            Kind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            Kind::AdminNetworkPolicy => "AdminNetworkPolicy",
            Kind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Service | Kind::Node => "v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::ClusterNetworkPolicy => "policy.networking.k8s.io/v1alpha2",
            Kind::AdminNetworkPolicy | Kind::BaselineAdminNetworkPolicy => {
                "policy.networking.k8s.io/v1alpha1"
            }
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Pod => "pods",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
            Kind::ClusterNetworkPolicy => "clusternetworkpolicies",
            Kind::AdminNetworkPolicy => "adminnetworkpolicies",
            Kind::BaselineAdminNetworkPolicy => "baselineadminnetworkpolicies",
        }
    }

    fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::Namespace
                | Kind::Node
                | Kind::ClusterNetworkPolicy
                | Kind::AdminNetworkPolicy
                | Kind::BaselineAdminNetworkPolicy
        )
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

type Predicate = Arc<dyn Fn(&RequestInfo) -> bool + Send + Sync>;

struct Shared {
    state: Mutex<State>,
    /// Bumped on every fault change, so that hung requests look again.
    fault_generation: watch::Sender<u64>,
    bookmark_interval: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("the double's state lock is never poisoned")
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
                hanging: [0; KINDS],
                uids: 0,
                not_installed: [false; KINDS],
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
                            connections.spawn(http::serve_connection(accept_shared.clone(), stream));
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

    /// A kubeconfig for the double (what `enforcer agent --kubeconfig` and `enforcer lab up
    /// --kubeconfig` read).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster: {{server: '{}'}}\ncontexts:\n- name: double\n  context: {{cluster: double, user: nobody}}\ncurrent-context: double\nusers:\n- name: nobody\n  user: {{}}\n",
            self.url()
        )
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

    /// Creates or replaces an object given as JSON.
    pub fn apply_json(&self, object: Value) -> u64 {
        self.write(object, Mode::Apply)
    }

    /// Deletes `namespace/name` (or `name` for a cluster-scoped kind); panics if it does not
    /// exist.
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

    /// Removes a CRD kind as deleting its CustomResourceDefinition does: every object of the
    /// kind is deleted (DELETED events to its watches), its open watches end, and from then on
    /// its lists and watches answer 404 `NotFound` with the real server's Status for an unknown
    /// resource, until [`ApiServer::install`]. Writes of the kind panic meanwhile. Returns how
    /// many objects it deleted.
    pub fn uninstall(&self, kind: Kind) -> usize {
        assert!(
            Kind::CRDS.contains(&kind),
            "{kind:?} is built in, not a CRD"
        );
        let deleted = self.delete_all(kind);
        self.shared.lock().not_installed[kind.index()] = true;
        self.close_watches_of(kind);
        deleted
    }

    /// Installs a CRD kind again (empty), as creating its CustomResourceDefinition does.
    pub fn install(&self, kind: Kind) {
        self.shared.lock().not_installed[kind.index()] = false;
    }

    pub fn installed(&self, kind: Kind) -> bool {
        !self.shared.lock().not_installed[kind.index()]
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
        self.shared
            .lock()
            .answered
            .iter()
            .filter(|r| which(r))
            .count()
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
        assert!(
            !st.not_installed[kind.index()],
            "writing {kind_name} {key}: the double's {kind_name} CRD is not installed"
        );
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
