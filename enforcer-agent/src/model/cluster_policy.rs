//! Cluster-wide policies of SIG Network's network-policy-api as plain data: the
//! `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy (tiers Admin and Baseline), and the
//! v1alpha1 AdminNetworkPolicy and BaselineAdminNetworkPolicy converted into the same model.
//!
//! Like the rest of the model, everything here is valid (conversion rejects what the CRD's
//! validation would) and fail-closed rewrites are already applied: an unknown peer in an
//! `Accept` rule is dropped (it matches nothing), and a `Deny` or `Pass` rule holding one is a
//! `Deny` of everything ([`ClusterPeer::All`], no protocols).

use std::fmt;

use ipnet::IpNet;

use super::{LabelSelector, Protocol};

/// Which tier a cluster policy is evaluated in: Admin before NetworkPolicy, Baseline after.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Admin,
    Baseline,
}

impl Tier {
    pub const fn as_str(self) -> &'static str {
        match self {
            Tier::Admin => "admin",
            Tier::Baseline => "baseline",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The API kind a cluster policy was written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClusterPolicyKind {
    /// `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy (the native model).
    ClusterNetworkPolicy,
    /// `policy.networking.k8s.io/v1alpha1` AdminNetworkPolicy (converted, tier Admin).
    AdminNetworkPolicy,
    /// `policy.networking.k8s.io/v1alpha1` BaselineAdminNetworkPolicy (converted, tier
    /// Baseline).
    BaselineAdminNetworkPolicy,
}

impl ClusterPolicyKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            ClusterPolicyKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            ClusterPolicyKind::AdminNetworkPolicy => "AdminNetworkPolicy",
            ClusterPolicyKind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
        }
    }

    pub fn from_kind(kind: &str) -> Option<Self> {
        [
            ClusterPolicyKind::ClusterNetworkPolicy,
            ClusterPolicyKind::AdminNetworkPolicy,
            ClusterPolicyKind::BaselineAdminNetworkPolicy,
        ]
        .into_iter()
        .find(|k| k.as_str() == kind)
    }
}

/// A cluster policy's identity: its kind and name (they are cluster-scoped). Written
/// `Kind/name`, which no `namespace/name` can be (namespaces are lowercase).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterPolicyKey {
    pub kind: ClusterPolicyKind,
    pub name: String,
}

impl ClusterPolicyKey {
    pub fn new(kind: ClusterPolicyKind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for ClusterPolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.name)
    }
}

impl serde::Serialize for ClusterPolicyKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A validated cluster policy (any of the three kinds, in the v1alpha2 model).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterPolicy {
    pub key: ClusterPolicyKey,
    pub tier: Tier,
    /// `spec.priority`, 0..=1000, lower first. A BaselineAdminNetworkPolicy has 0.
    pub priority: u32,
    pub subject: Subject,
    /// `spec.ingress` in written order (peers are sources).
    pub ingress: Vec<ClusterRule>,
    /// `spec.egress` in written order (peers are destinations).
    pub egress: Vec<ClusterRule>,
    /// Staged (annotation `policy.enforcer.dev/mode: audit`): not enforced; flows whose verdict
    /// it would change are reported.
    pub staged: bool,
}

impl ClusterPolicy {
    /// The evaluation order within a tier: priority, then (for equal priorities, where the API
    /// lets an implementation choose) kind and name, so the choice is stable and documented.
    pub fn order_key(&self) -> (u32, &ClusterPolicyKey) {
        (self.priority, &self.key)
    }
}

/// `spec.subject`: the pods a cluster policy applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// Every pod of the namespaces whose labels match.
    Namespaces(LabelSelector),
    /// The pods matching `pods` in namespaces matching `namespaces` (absent selectors are `{}`).
    Pods {
        namespaces: LabelSelector,
        pods: LabelSelector,
    },
}

/// A rule's action.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Action {
    /// Allows the connection in this direction; final.
    Accept,
    /// Drops the connection; final.
    Deny,
    /// Skips the rest of the tier: the next tier decides.
    Pass,
}

impl Action {
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One ingress or egress rule of a cluster policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRule {
    /// `name`: informational (reported in flow records and `explain`).
    pub name: Option<String>,
    pub action: Action,
    /// `from` / `to`: the rule matches when any peer matches. Never empty after conversion,
    /// except for an `Accept` rule whose peers were all unknown (it matches nothing).
    pub peers: Vec<ClusterPeer>,
    /// `protocols`: `None` matches every protocol and port; otherwise any entry matches.
    pub protocols: Option<Vec<ProtocolMatch>>,
}

/// One peer of a cluster policy rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterPeer {
    /// Every pod of the namespaces whose labels match.
    Namespaces(LabelSelector),
    /// The pods matching `pods` in namespaces matching `namespaces`.
    Pods {
        namespaces: LabelSelector,
        pods: LabelSelector,
    },
    /// Egress only: addresses in any of the CIDRs (canonical: host bits cleared), pod
    /// addresses included.
    Networks(Vec<IpNet>),
    /// Egress only (experimental): the addresses of the Nodes whose labels match.
    Nodes(LabelSelector),
    /// Egress only (experimental), `Accept` rules only: DNS names. The enforcer does not
    /// resolve names, so these match nothing (an Accept that matches nothing fails closed).
    DomainNames(Vec<String>),
    /// Every address: what a `Deny` or `Pass` rule with an unknown peer becomes (fail-closed).
    All,
}

/// One `protocols` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolMatch {
    /// `tcp` / `udp` / `sctp` with `destinationPort`: ports `start..=end` (a single port has
    /// `start == end`; an entry without `destinationPort` is `0..=65535`, every port).
    Ports {
        protocol: Protocol,
        start: u16,
        end: u16,
    },
    /// `destinationNamedPort`: a container port of the destination pod with this name, whose
    /// number is the destination port and whose protocol is the traffic's.
    NamedPort(String),
}
