//! The double's data: objects by kind, the global resourceVersion, the history of changes, and
//! the list and watch semantics served from them (no I/O here: `http` does that).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use hyper::body::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{Answer, Fault, Kind, Predicate, RequestInfo, RequestRecord, KINDS};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ChangeType {
    Added,
    Modified,
    Deleted,
}

impl ChangeType {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            ChangeType::Added => "ADDED",
            ChangeType::Modified => "MODIFIED",
            ChangeType::Deleted => "DELETED",
        }
    }
}

/// One write, kept so that watches can resume and exact lists can be rebuilt.
pub(super) struct Change {
    pub(super) rv: u64,
    pub(super) kind: Kind,
    pub(super) ty: ChangeType,
    pub(super) key: String,
    pub(super) object: Arc<Value>,
    /// The object before this write (None for a create).
    pub(super) prev: Option<Arc<Value>>,
}

/// What a watch's body sends next.
pub(super) enum Item {
    /// One event, serialized, newline-terminated.
    Line(Bytes),
    /// The end of the stream.
    End,
}

/// A watch being served: every write of its kind (and namespace) is queued to `tx`, under the
/// state lock, so the order of events is the order of versions.
pub(super) struct OpenWatch {
    pub(super) kind: Kind,
    pub(super) namespace: Option<String>,
    pub(super) tx: mpsc::UnboundedSender<Item>,
}

pub(super) struct State {
    pub(super) rv: u64,
    /// The oldest version a watch can resume from or an exact list can be served at: every
    /// change after it is still in `log`.
    pub(super) floor: u64,
    pub(super) history: Option<usize>,
    /// Per kind, by `namespace/name` (or `name`), in etcd key order.
    pub(super) objects: [BTreeMap<String, Arc<Value>>; KINDS],
    pub(super) log: VecDeque<Change>,
    pub(super) watches: Vec<OpenWatch>,
    pub(super) fault: Option<(Fault, Predicate)>,
    pub(super) arrived: Vec<RequestInfo>,
    pub(super) answered: Vec<RequestRecord>,
    pub(super) hanging: [usize; KINDS],
    pub(super) uids: u64,
    /// Per kind: its CRD is not installed (lists and watches answer 404).
    pub(super) not_installed: [bool; KINDS],
}

impl State {
    pub(super) fn record(&mut self, change: Change) {
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
    pub(super) fn objects_at(&self, kind: Kind, at: u64) -> BTreeMap<String, Arc<Value>> {
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

    pub(super) fn fault_for(&self, info: &RequestInfo) -> Option<Fault> {
        self.fault
            .as_ref()
            .filter(|(_, applies)| applies(info))
            .map(|(f, _)| *f)
    }

    pub(super) fn answer(&mut self, info: &RequestInfo, answer: Answer, injected: bool) {
        self.answered.push(RequestRecord {
            info: info.clone(),
            answer,
            injected,
        });
    }

    pub(super) fn too_large(&self, rv: u64) -> Failure {
        Failure::too_large(rv, self.rv)
    }

    /// The answer to a request of a kind whose CRD is not installed, as the real server gives
    /// it for a resource it does not serve.
    pub(super) fn not_installed(&self, kind: Kind) -> Option<Failure> {
        self.not_installed[kind.index()].then(Failure::not_found)
    }
}

pub(super) fn in_namespace(key: &str, namespace: Option<&str>) -> bool {
    match namespace {
        None => true,
        Some(ns) => key.split_once('/').is_some_and(|(k, _)| k == ns),
    }
}

pub(super) fn event_line(ty: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({"type": ty, "object": object})).expect("JSON values serialize");
    line.push(b'\n');
    Bytes::from(line)
}

/// An error answer (a `Status`).
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) code: u16,
    pub(super) reason: &'static str,
    pub(super) message: String,
    /// `metadata.continue` of the Status (a 410 for an expired continue token carries one).
    pub(super) continue_token: Option<String>,
    pub(super) details: Option<Value>,
}

impl Failure {
    pub(super) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            code,
            reason,
            message: message.into(),
            continue_token: None,
            details: None,
        }
    }

    /// What the real server answers for a resource it does not serve.
    pub(super) fn not_found() -> Failure {
        let mut f = Failure::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
        f.details = Some(json!({}));
        f
    }

    pub(super) fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(422, "Invalid", message)
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(400, "BadRequest", message)
    }

    pub(super) fn expired(message: impl Into<String>) -> Failure {
        Failure::new(410, "Expired", message)
    }

    pub(super) fn too_large(requested: u64, current: u64) -> Failure {
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

    pub(super) fn status(&self) -> Value {
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
}

pub(super) fn parse_rv(text: &str) -> Result<u64, Failure> {
    text.parse()
        .map_err(|_| Failure::bad_request(format!("resourceVersion: {text:?} is not valid")))
}

/// A continue token: the version the list is served at and the last key sent (hex).
pub(super) fn continue_token(rv: u64, last_key: &str) -> String {
    let hex: String = last_key.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{rv}.{hex}")
}

pub(super) fn parse_continue(token: &str) -> Option<(u64, String)> {
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

pub(super) fn list(st: &State, info: &RequestInfo) -> Result<Value, Failure> {
    if let Some(f) = st.not_installed(info.kind) {
        return Err(f);
    }
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

pub(super) fn exact(st: &State, rv: u64) -> Result<u64, Failure> {
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

pub(super) fn not_older_than(st: &State, rv: u64) -> Result<u64, Failure> {
    if rv > st.rv {
        return Err(st.too_large(rv));
    }
    Ok(st.rv)
}

pub(super) enum Started {
    Streaming,
    /// The version is older than the history: one 410 ERROR event.
    Gone(String),
}

/// Queues what a new watch sends first (under the state lock, so no write slips in between).
pub(super) fn start_watch(
    st: &State,
    info: &RequestInfo,
    tx: &mpsc::UnboundedSender<Item>,
) -> Result<Started, Failure> {
    if let Some(f) = st.not_installed(info.kind) {
        return Err(f);
    }
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
    match (
        info.send_initial_events,
        info.resource_version_match.as_deref(),
    ) {
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

pub(super) fn bookmark_line(kind: Kind, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": kind.name(), "apiVersion": kind.api_version(), "metadata": metadata}),
    )
}
