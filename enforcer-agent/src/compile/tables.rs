//! What the compiler produces: the kernel's tables in symbolic form. The dataplane turns
//! prefixes into numeric identities and writes the maps; `explain` reads the same tables.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::model::cluster_policy::{Action, ClusterPolicyKey, Tier};
use crate::model::{PodKey, PolicyKey};

/// Direction as the pod sees it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const fn to_kernel(self) -> u8 {
        match self {
            Direction::Ingress => enforcer_common::direction::INGRESS,
            Direction::Egress => enforcer_common::direction::EGRESS,
        }
    }
}

/// Protocol of an allow entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Proto {
    /// A rule without ports: every protocol, every port (ICMP and unknown protocols included).
    Any,
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub const fn to_kernel(self) -> u8 {
        use enforcer_common::proto;
        match self {
            Proto::Any => proto::ANY,
            Proto::Tcp => proto::TCP,
            Proto::Udp => proto::UDP,
            Proto::Sctp => proto::SCTP,
        }
    }

    /// The protocol of an IP protocol number, if a rule's ports can be of it.
    pub const fn of_kernel(p: u8) -> Option<Self> {
        use enforcer_common::proto;
        match p {
            proto::TCP => Some(Proto::Tcp),
            proto::UDP => Some(Proto::Udp),
            proto::SCTP => Some(Proto::Sctp),
            _ => None,
        }
    }
}

/// A block of destination ports: the `len` high bits of `port` (len 16 = one port, 0 = all).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct PortPrefix {
    pub port: u16,
    pub len: u8,
}

impl PortPrefix {
    pub const ALL: PortPrefix = PortPrefix { port: 0, len: 0 };
    pub const fn single(port: u16) -> Self {
        PortPrefix { port, len: 16 }
    }
    /// Whether every port of `other` is in this block.
    pub fn contains_block(&self, other: PortPrefix) -> bool {
        self.len <= other.len && self.contains(other.port)
    }

    pub fn contains(&self, port: u16) -> bool {
        let mask = if self.len == 0 {
            0
        } else {
            u16::MAX << (16 - self.len as u32)
        };
        port & mask == self.port & mask
    }
}

/// The peer side of an allow entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Peer {
    /// Every address (a rule with a missing or empty `from`/`to`).
    Any,
    /// The addresses whose longest matching prefix in [`Tables::prefixes`] is this one.
    Prefix(IpNet),
}

/// One allow entry of an endpoint: traffic in `direction` with a peer in `peer`, protocol
/// `proto`, destination port in `ports` (always [`PortPrefix::ALL`] for [`Proto::Any`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Allow {
    pub direction: Direction,
    pub peer: Peer,
    pub proto: Proto,
    pub ports: PortPrefix,
}

/// Index into [`Tables::rules`]. Rule ids start at 1 (0 means "no rule" in the kernel).
pub type RuleId = u32;

/// The policy a rule belongs to: a NetworkPolicy (`namespace/name`) or a cluster policy of a
/// tier (`Kind/name`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyRef {
    Network(PolicyKey),
    Cluster { tier: Tier, key: ClusterPolicyKey },
}

impl PolicyRef {
    /// `admin`, `networkpolicy` or `baseline`: where the rule sits in the evaluation order.
    pub fn tier_name(&self) -> &'static str {
        match self {
            PolicyRef::Network(_) => "networkpolicy",
            PolicyRef::Cluster { tier, .. } => tier.as_str(),
        }
    }
}

impl std::fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyRef::Network(k) => k.fmt(f),
            PolicyRef::Cluster { key, .. } => key.fmt(f),
        }
    }
}

impl serde::Serialize for PolicyRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl PartialEq<PolicyKey> for PolicyRef {
    fn eq(&self, other: &PolicyKey) -> bool {
        matches!(self, PolicyRef::Network(k) if k == other)
    }
}

/// Where an entry came from, for flow attribution and `explain`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct RuleRef {
    pub policy: PolicyRef,
    pub direction: Direction,
    /// Index of the rule in the policy's `ingress` or `egress` list.
    pub index: usize,
    /// A cluster policy rule's action (`None`: a NetworkPolicy rule, which allows).
    pub action: Option<Action>,
    /// A cluster policy rule's `name`, if it has one.
    pub name: Option<String>,
}

/// `ns/policy ingress[0]`; for a cluster policy `admin ClusterNetworkPolicy/p egress[1]
/// "name" (Deny)`.
impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dir = match self.direction {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        };
        if let PolicyRef::Cluster { tier, .. } = &self.policy {
            write!(f, "{tier} ")?;
        }
        write!(f, "{} {dir}[{}]", self.policy, self.index)?;
        if let Some(name) = &self.name {
            write!(f, " {name:?}")?;
        }
        if let Some(action) = self.action {
            write!(f, " ({action})")?;
        }
        Ok(())
    }
}

impl RuleRef {
    /// A NetworkPolicy's rule.
    pub fn network(policy: PolicyKey, direction: Direction, index: usize) -> Self {
        RuleRef {
            policy: PolicyRef::Network(policy),
            direction,
            index,
            action: None,
            name: None,
        }
    }
}

/// An entry whose verdict a staged policy would change: its id (above every rule id) stands
/// for the rule in force and the staged policy's effect. The kernel only reads the value's
/// deny bit; the agent reads the rest from its flow records' rule id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct StagedEntry {
    /// The rule whose verdict is in force (`None`: no rule; the default, or a NetworkPolicy's
    /// isolation when `enforced_allows` is false).
    pub enforced: Option<RuleRef>,
    pub enforced_allows: bool,
    /// The staged policy that would change the verdict (the first in evaluation order, when
    /// several would).
    pub policy: PolicyRef,
    /// Its rule that decides, or (a Pass) that hands the decision on; `None`: a staged
    /// NetworkPolicy's isolation, which no rule of it allows.
    pub rule: Option<RuleRef>,
    /// What the verdict would become with the staged policy in force.
    pub would_allow: bool,
}

/// Every prefix of the identity tries with its owner: a persistent map, so that a table
/// edited from the previous one shares what did not change with it (a cluster has a prefix
/// per pod address).
pub type PrefixTable = imbl::OrdMap<IpNet, PrefixOwner>;

/// What a trie prefix stands for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum PrefixOwner {
    /// One address of a pod (a /32 or /128).
    Pod(PodKey),
    /// One address of this node: always allowed (kubelet probes).
    Host,
    /// A CIDR named by some ipBlock (`cidr` or `except`), or a family's default route
    /// (0.0.0.0/0, ::/0), which is always present.
    Cidr,
}

/// A local pod's compiled policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EndpointPlan {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// Policies of type Ingress that select this pod (empty = ingress not isolated).
    pub ingress_isolated_by: BTreeSet<PolicyKey>,
    /// Policies of type Egress that select this pod (empty = egress not isolated).
    pub egress_isolated_by: BTreeSet<PolicyKey>,
    /// What is allowed, with the rule that allows it (0: no rule, the default). Without
    /// cluster policies in a direction, the NetworkPolicy allows of that direction, a union,
    /// each with the lowest rule id that allows it; with some, the resolved entries (section
    /// 4.1 of docs/design.md): the first of the kernel's probes that hits decides.
    pub allows: BTreeMap<Allow, RuleId>,
    /// What is denied (only in directions with cluster policies), with the rule that denies it
    /// (0: a NetworkPolicy's isolation).
    pub denies: BTreeMap<Allow, RuleId>,
    /// Cluster policies whose rules of ingress apply to this pod (empty: the NetworkPolicy
    /// tier alone decides ingress).
    pub ingress_tiered_by: BTreeSet<ClusterPolicyKey>,
    /// Cluster policies whose rules of egress apply to this pod.
    pub egress_tiered_by: BTreeSet<ClusterPolicyKey>,
    /// Staged policies (of any kind) that apply to this pod's ingress: its entries are
    /// resolved and carry their effect.
    pub ingress_staged_by: BTreeSet<PolicyRef>,
    /// Staged policies that apply to this pod's egress.
    pub egress_staged_by: BTreeSet<PolicyRef>,
    /// Policy audit mode: what the policies deny passes and is reported as `audit`.
    pub audit: bool,
}

impl EndpointPlan {
    pub fn ingress_isolated(&self) -> bool {
        !self.ingress_isolated_by.is_empty()
    }
    pub fn egress_isolated(&self) -> bool {
        !self.egress_isolated_by.is_empty()
    }
    /// Whether cluster policies apply to this direction: its entries are resolved, and looked
    /// up even when no NetworkPolicy isolates it.
    pub fn tiered(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => {
                !self.ingress_tiered_by.is_empty() || !self.ingress_staged_by.is_empty()
            }
            Direction::Egress => {
                !self.egress_tiered_by.is_empty() || !self.egress_staged_by.is_empty()
            }
        }
    }
    pub fn isolated(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.ingress_isolated(),
            Direction::Egress => self.egress_isolated(),
        }
    }
}

/// The compiler's output for one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tables {
    /// Every prefix of the identity tries (both families), with its owner. Always holds
    /// 0.0.0.0/0 and ::/0. A pod address that is also a host address is owned by the pod.
    pub prefixes: PrefixTable,
    /// The local pods (those on this node with at least one IP). Shared: a [`super::Compiler`]
    /// hands the plan of a pod whose inputs did not change to the next compile as it is.
    pub endpoints: BTreeMap<PodKey, std::sync::Arc<EndpointPlan>>,
    /// Rule id `i` is `rules[i - 1]`. Shared: a compile whose policies kept their rules hands
    /// on the previous numbering, and the dataplane keeps its ids when it is the same.
    pub rules: std::sync::Arc<Vec<RuleRef>>,
    /// Id `rules.len() + i` is `staged[i - 1]`: entries a staged policy would change.
    pub staged: Vec<StagedEntry>,
    /// Every Service port's address, with the backends a client on this node may reach.
    pub services: super::services::Frontends,
}

impl Tables {
    pub fn rule(&self, id: RuleId) -> Option<&RuleRef> {
        (id as usize).checked_sub(1).and_then(|i| self.rules.get(i))
    }

    /// The staged policy's effect an entry id stands for, if it is one.
    pub fn staged_entry(&self, id: RuleId) -> Option<&StagedEntry> {
        (id as usize)
            .checked_sub(self.rules.len() + 1)
            .and_then(|i| self.staged.get(i))
    }
}
