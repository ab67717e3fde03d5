//! Who a flow end is, in the terms an alert speaks: workloads, addresses and networks.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::flows::enrich::FlowEnd;

/// One end of an alert, written as a string on the wire:
/// `namespace/name`, `ip:<address>` or `cidr:<network>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Workload {
    /// The pods of one app: `name` is the pod's owning workload (a Deployment, StatefulSet, ...)
    /// when known, else the `app` label, else `app.kubernetes.io/name`, else the pod name
    /// without its controller suffix.
    Pod { namespace: Arc<str>, name: Arc<str> },
    /// An address that is no known pod.
    Ip(IpAddr),
    /// A non-pod network (/24 or /64), for first-seen edges.
    Cidr(IpNet),
}

impl Workload {
    pub fn is_pod(&self) -> bool {
        matches!(self, Workload::Pod { .. })
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Pod { namespace, name } => write!(f, "{namespace}/{name}"),
            Workload::Ip(ip) => write!(f, "ip:{ip}"),
            Workload::Cidr(net) => write!(f, "cidr:{net}"),
        }
    }
}

impl From<Workload> for String {
    fn from(w: Workload) -> String {
        w.to_string()
    }
}

/// A string that is none of the three workload forms.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a workload (namespace/name, ip:<address> or cidr:<network>): {text:?}")]
pub struct ParseWorkloadError {
    pub text: String,
}

impl FromStr for Workload {
    type Err = ParseWorkloadError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseWorkloadError { text: s.into() };
        if let Some(ip) = s.strip_prefix("ip:") {
            return ip.parse().map(Workload::Ip).map_err(|_| err());
        }
        if let Some(net) = s.strip_prefix("cidr:") {
            return net.parse().map(Workload::Cidr).map_err(|_| err());
        }
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Workload::Pod {
                    namespace: ns.into(),
                    name: name.into(),
                })
            }
            _ => Err(err()),
        }
    }
}

impl TryFrom<String> for Workload {
    type Error = ParseWorkloadError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// The workload of a flow end: its pod's app, or `ip:<address>` when it is no known pod.
pub fn workload_of(end: &FlowEnd) -> Workload {
    match (&end.namespace, &end.pod) {
        (Some(namespace), Some(pod)) => {
            // The owner the pod names is authoritative; labels and the name are guesses.
            let name = end
                .workload
                .as_ref()
                .map(|w| w.name.clone())
                .or_else(|| {
                    ["app", "app.kubernetes.io/name"]
                        .iter()
                        .filter_map(|k| end.labels.get(*k))
                        .find(|v| !v.is_empty())
                        .cloned()
                })
                .unwrap_or_else(|| trim_controller_suffix(pod).to_string());
            Workload::Pod {
                namespace: namespace.clone(),
                name: name.into(),
            }
        }
        _ => Workload::Ip(end.ip),
    }
}

/// [`workload_of`], remembered per pod: every record asks for two workloads, and the flow
/// records of one pod share its name (one `Arc` per pod, see `flows::enrich::FlowEnd`), which
/// is the key here.
#[derive(Default)]
pub struct Workloads {
    by_pod: HashMap<SamePod, Workload, foldhash::fast::RandomState>,
}

/// A pod's name as records share it, compared by identity: the same `Arc` is the same pod
/// under the same flow context, hence the same end. Held, so the address is not reused.
struct SamePod(Arc<str>);

impl PartialEq for SamePod {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for SamePod {}
impl std::hash::Hash for SamePod {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (Arc::as_ptr(&self.0) as *const u8 as usize).hash(h)
    }
}

/// Pods a [`Workloads`] remembers; past this it starts over (flow contexts come and go with
/// syncs, and their pods with them).
const WORKLOADS: usize = 16_384;

impl Workloads {
    pub fn of(&mut self, end: &FlowEnd) -> Workload {
        let Some(pod) = &end.pod else {
            return workload_of(end);
        };
        let key = SamePod(pod.clone());
        if let Some(w) = self.by_pod.get(&key) {
            return w.clone();
        }
        if self.by_pod.len() >= WORKLOADS {
            self.by_pod.clear();
        }
        let w = workload_of(end);
        self.by_pod.insert(key, w.clone());
        w
    }
}

/// The network an address is aggregated to for first-seen edges: its /24 or /64.
pub fn network_of(ip: IpAddr) -> IpNet {
    match ip {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, 24).expect("24 <= 32").trunc()),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, 64).expect("64 <= 128").trunc()),
    }
}

/// Characters of the random suffixes Kubernetes generates (`generateName`): no vowels and no
/// 0, 1, 3, so that words rarely look like one.
const GENERATED: &str = "bcdfghjklmnpqrstvwxz2456789";
/// Characters of a `pod-template-hash`: the hash's decimal digits mapped through [`GENERATED`]
/// (byte % 27) land on these; older clusters wrote the decimal digits themselves.
const TEMPLATE_HASH: &str = "0123456789bcdf";

fn all_in(s: &str, set: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| set.contains(c))
}

/// The pod name without what its controller appended:
/// 1. `-<ordinal>` of a StatefulSet (`db-0` → `db`);
/// 2. the 5-character `generateName` suffix (DaemonSet, Job, bare ReplicaSet: `agent-x7k2p`),
///    then, if present, the ReplicaSet's `-<pod-template-hash>` or a CronJob's schedule stamp
///    before it (`web-7d4b9c8f6-x7k2p` → `web`).
pub fn trim_controller_suffix(pod: &str) -> &str {
    let Some((head, last)) = pod.rsplit_once('-') else {
        return pod;
    };
    if head.is_empty() {
        return pod;
    }
    if last.chars().all(|c| c.is_ascii_digit()) && !last.is_empty() {
        return head;
    }
    if last.len() != 5 || !all_in(last, GENERATED) {
        return pod;
    }
    match head.rsplit_once('-') {
        Some((base, hash))
            if !base.is_empty()
                && (6..=10).contains(&hash.len())
                && all_in(hash, TEMPLATE_HASH) =>
        {
            base
        }
        _ => head,
    }
}
