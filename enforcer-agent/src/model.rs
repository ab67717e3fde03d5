//! Pods, namespaces and NetworkPolicies as plain data: what the compiler reads.
//!
//! Objects enter through [`convert`] (re-exported here), which applies the API server's
//! defaulting and validation, so everything in a [`Cluster`] is already valid: the compiler
//! never has to reject anything.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

pub mod cluster_policy;
mod convert;

pub use convert::{
    admin_network_policy_from_api, baseline_admin_network_policy_from_api,
    cluster_network_policy_from_api, cluster_policy_api, cluster_policy_from_api,
    namespace_from_k8s, network_policy_from_k8s, node_addresses_from_k8s, node_labels_from_k8s,
    pod_from_k8s, InvalidObject,
};
pub use service::convert::{endpoint_slice_from_k8s, service_from_k8s};
pub use service::{EndpointSlice, Service, ServiceKey, SliceKey};

#[cfg(test)]
pub(crate) mod tests;

/// Labels of a pod or namespace: a sorted vector, not a B-tree (whose every node has room for
/// eleven entries: some 550 bytes for a pod's two or three labels, in a cluster of 100,000
/// pods most of what the agent holds per pod). Lookups are binary searches.
pub type Labels = litemap::LiteMap<String, String>;

/// The label the API server sets on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A `namespace/name` key type (also used by `service`, declared after this macro).
macro_rules! namespaced_key {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name {
            pub namespace: String,
            pub name: String,
        }

        impl $name {
            pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
                Self { namespace: namespace.into(), name: name.into() }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}/{}", self.namespace, self.name)
            }
        }

        /// Parses `namespace/name` (both parts non-empty).
        impl std::str::FromStr for $name {
            type Err = $crate::model::KeyParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.split_once('/') {
                    Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                        Ok(Self::new(ns, name))
                    }
                    _ => Err($crate::model::KeyParseError { input: s.to_owned() }),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

namespaced_key!(
    /// A pod's identity, written `namespace/name`.
    PodKey
);

// After the macro: the module uses it for its keys.
pub mod service;
namespaced_key!(
    /// A NetworkPolicy's identity, written `namespace/name`.
    PolicyKey
);

/// A `namespace/name` string that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not of the form namespace/name")]
pub struct KeyParseError {
    pub input: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// Always holds [`NAMESPACE_NAME_LABEL`].
    pub labels: Labels,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub key: PodKey,
    pub labels: Labels,
    /// `status.podIPs` in order (the first of each family is the one the endpoint uses). Empty
    /// for host-network pods (their address is the node's) and finished pods (`Succeeded`,
    /// `Failed`), which policies neither select nor isolate.
    pub ips: Vec<IpAddr>,
    /// Every `spec.containers[].ports[]` entry, for named-port resolution.
    pub ports: Vec<ContainerPort>,
    /// `spec.nodeName`; `None` for a standalone manifest (local to whichever node reads it).
    pub node: Option<String>,
    /// The workload that runs the pod, where the pod says (for flow records).
    pub owner: Option<Owner>,
    /// Ready as the EndpointSlice controller sees it (its `Ready` condition; a pod without
    /// conditions, as in hand-written manifests, is ready): only ready pods back Services.
    pub ready: bool,
}

/// A pod's workload: its controller from `metadata.ownerReferences`, with a ReplicaSet that
/// belongs to a Deployment (named `<deployment>-<pod-template-hash>`) shown as the Deployment.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Owner {
    pub kind: String,
    pub name: String,
}

impl Pod {
    /// The number of the container port called `name` with `protocol`, if any.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
            .map(|p| p.number)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub number: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The Kubernetes spelling (`TCP`, `UDP`, `SCTP`): the protocol's name in
    /// `enforcer_common::proto::NAMES`.
    pub const fn as_str(self) -> &'static str {
        match enforcer_common::proto::name(self.number()) {
            Some(name) => name,
            None => panic!("every Kubernetes protocol is named in enforcer_common::proto"),
        }
    }

    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        use enforcer_common::proto;
        match self {
            Protocol::Tcp => proto::TCP,
            Protocol::Udp => proto::UDP,
            Protocol::Sctp => proto::SCTP,
        }
    }

    /// Parses the Kubernetes spelling (case-sensitive, as the API server is).
    pub fn from_k8s(s: &str) -> Option<Self> {
        Protocol::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A label selector; all terms are AND-ed, and the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LabelSelector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }
}

/// One `matchExpressions` term.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Requirement {
    In {
        key: String,
        values: Vec<String>,
    },
    /// Matches when the key is absent too, as in Kubernetes.
    NotIn {
        key: String,
        values: Vec<String>,
    },
    Exists {
        key: String,
    },
    DoesNotExist {
        key: String,
    },
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::In { key, values } => labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn { key, values } => {
                labels.get(key).is_none_or(|v| !values.contains(v))
            }
            Requirement::Exists { key } => labels.contains_key(key),
            Requirement::DoesNotExist { key } => !labels.contains_key(key),
        }
    }
}

/// Which directions a policy isolates (its `policyTypes`, after defaulting).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyTypes {
    pub ingress: bool,
    pub egress: bool,
}

/// A validated, defaulted `networking.k8s.io/v1` NetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NetworkPolicy {
    pub key: PolicyKey,
    pub pod_selector: LabelSelector,
    /// `spec.ingress` in order (`None` when absent; `Some(vec![])` allows nothing). Only counts
    /// when `types.ingress`.
    pub ingress: Option<Vec<Rule>>,
    /// `spec.egress` in order. Only counts when `types.egress`.
    pub egress: Option<Vec<Rule>>,
    pub types: PolicyTypes,
    /// Staged (annotation [`STAGE_ANNOTATION`]` = audit`): not enforced; flows whose verdict
    /// it would change are reported.
    pub staged: bool,
}

/// The annotation that stages one policy (NetworkPolicy or cluster policy): `audit` stages it
/// (not enforced, its effect reported), `enforce` or absent enforces it.
pub const STAGE_ANNOTATION: &str = "policy.enforcer.dev/mode";

impl NetworkPolicy {
    /// The rules that count for isolation in one direction (empty when the policy's types
    /// leave that direction out).
    pub fn effective_ingress(&self) -> &[Rule] {
        match (&self.ingress, self.types.ingress) {
            (Some(rules), true) => rules,
            _ => &[],
        }
    }

    pub fn effective_egress(&self) -> &[Rule] {
        match (&self.egress, self.types.egress) {
            (Some(rules), true) => rules,
            _ => &[],
        }
    }
}

/// One ingress or egress rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rule {
    /// `from`/`to`; empty = every peer.
    pub peers: Vec<PeerSpec>,
    /// `ports`; empty = every port and protocol.
    pub ports: Vec<PortSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PeerSpec {
    /// `podSelector` and/or `namespaceSelector` (at least one is `Some`). `namespace: None` =
    /// the policy's own namespace; `pod: None` = every pod of the selected namespaces.
    Selector {
        namespace: Option<LabelSelector>,
        pod: Option<LabelSelector>,
    },
    /// `cidr` and `except`, canonical (host bits cleared), every except strictly inside `cidr`.
    IpBlock { cidr: IpNet, except: Vec<IpNet> },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortSpec {
    pub protocol: Protocol,
    /// `None` = every port of `protocol`.
    pub port: Option<PortRef>,
    /// Inclusive range end; only with a numeric `port`, and never below it.
    pub end_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// A map of a [`Cluster`]: ordered, and persistent, so that a copy shares its structure with
/// the original and an edit copies only the path to what it changes. The API source keeps its
/// cluster this way: a sync's snapshot of 100,000 pods is a copy of a few pointers, and the
/// compiler finds what changed since the last one by a diff that skips what they share.
pub type Map<K, V> = imbl::OrdMap<K, V>;

/// Everything the compiler looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    pub namespaces: Map<String, Namespace>,
    /// Shared (`Arc`) with the source's store and the flow enrichment: a snapshot of a large
    /// cluster copies no pod.
    pub pods: Map<PodKey, std::sync::Arc<Pod>>,
    pub policies: Map<PolicyKey, NetworkPolicy>,
    pub services: Map<ServiceKey, Service>,
    pub endpoint_slices: Map<SliceKey, EndpointSlice>,
    /// Node addresses by node name (the Node objects' InternalIP/ExternalIP), for the `nodes`
    /// peers of cluster policies and for `explain` (the agent takes its own node's addresses
    /// from its network namespace).
    pub nodes: Map<String, Vec<IpAddr>>,
    /// Node labels by node name, for the `nodes` peers of cluster policies.
    pub node_labels: Map<String, Labels>,
    /// ClusterNetworkPolicies (and converted v1alpha1 Admin/BaselineAdminNetworkPolicies).
    pub cluster_policies: Map<cluster_policy::ClusterPolicyKey, cluster_policy::ClusterPolicy>,
}

impl Cluster {
    pub fn insert_namespace(&mut self, ns: Namespace) {
        self.namespaces.insert(ns.name.clone(), ns);
    }

    pub fn insert_pod(&mut self, pod: impl Into<std::sync::Arc<Pod>>) {
        let pod = pod.into();
        self.pods.insert(pod.key.clone(), pod);
    }

    pub fn insert_policy(&mut self, policy: NetworkPolicy) {
        self.policies.insert(policy.key.clone(), policy);
    }

    pub fn insert_cluster_policy(&mut self, policy: cluster_policy::ClusterPolicy) {
        self.cluster_policies.insert(policy.key.clone(), policy);
    }

    pub fn insert_service(&mut self, service: Service) {
        self.services.insert(service.key.clone(), service);
    }

    pub fn insert_endpoint_slice(&mut self, slice: EndpointSlice) {
        self.endpoint_slices.insert(slice.key.clone(), slice);
    }

    /// Adds every object of `other` (one both have: `other`'s). A kind `self` has none of is
    /// taken over as a shared copy, in constant time: the API source's snapshot puts together
    /// the clusters of its kinds' stores this way.
    pub fn absorb(&mut self, other: &Cluster) {
        fn join<K: Ord + Clone, V: Clone>(into: &mut Map<K, V>, from: &Map<K, V>) {
            if into.is_empty() {
                *into = from.clone();
            } else {
                into.extend(from.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        join(&mut self.namespaces, &other.namespaces);
        join(&mut self.pods, &other.pods);
        join(&mut self.policies, &other.policies);
        join(&mut self.services, &other.services);
        join(&mut self.endpoint_slices, &other.endpoint_slices);
        join(&mut self.nodes, &other.nodes);
        join(&mut self.node_labels, &other.node_labels);
        join(&mut self.cluster_policies, &other.cluster_policies);
    }
}
