//! What the compiler produces: the kernel's tables in symbolic form. The dataplane turns
//! prefixes into numeric identities and writes the maps; `explain` reads the same tables.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

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

/// Where an allow came from, for flow attribution and `explain`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct RuleRef {
    pub policy: PolicyKey,
    pub direction: Direction,
    /// Index of the rule in the policy's `ingress` or `egress` list.
    pub index: usize,
}

/// What a trie prefix stands for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
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
    /// What is allowed, with the lowest rule id that allows it.
    pub allows: BTreeMap<Allow, RuleId>,
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
}

/// The compiler's output for one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tables {
    /// Every prefix of the identity tries (both families), with its owner. Always holds
    /// 0.0.0.0/0 and ::/0. A pod address that is also a host address is owned by the pod.
    pub prefixes: BTreeMap<IpNet, PrefixOwner>,
    /// The local pods (those on this node with at least one IP).
    pub endpoints: BTreeMap<PodKey, EndpointPlan>,
    /// Rule id `i` is `rules[i - 1]`.
    pub rules: Vec<RuleRef>,
    /// Every Service port's address, with the backends a client on this node may reach.
    pub services: BTreeMap<super::services::FrontendAddr, super::services::FrontendPlan>,
}

impl Tables {
    pub fn rule(&self, id: RuleId) -> Option<&RuleRef> {
        (id as usize).checked_sub(1).and_then(|i| self.rules.get(i))
    }
}
