//! The kernel's lookup, emulated on [`Tables`]: what `explain` shows, and what the tests check
//! the compiled entries with.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use super::tables::{Allow, Direction, Peer, PortPrefix, PrefixOwner, Proto, RuleId, Tables};
use crate::model::cluster_policy::ClusterPolicyKey;
use crate::model::{PodKey, PolicyKey};

/// What the datapath decides for a new flow of a local pod.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    pub decision: Decision,
    /// The peer's identity: its longest matching prefix in [`Tables::prefixes`] (`None` only
    /// for [`Decision::NotLocal`]).
    pub peer_prefix: Option<IpNet>,
    pub peer_owner: Option<PrefixOwner>,
    /// The policies isolating the pod in this direction.
    pub isolated_by: BTreeSet<PolicyKey>,
    /// The cluster policies that apply to the pod in this direction.
    pub tiered_by: BTreeSet<ClusterPolicyKey>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The pod is not an endpoint of these tables: this node's programs never see the flow.
    NotLocal,
    /// No policy isolates the pod in this direction, and no cluster policy applies to it.
    NotIsolated,
    /// The peer is this node (kubelet probes): always allowed.
    Host,
    /// Allowed by this rule, through this entry (the first of the kernel's probes that hit;
    /// rule 0 in a direction with cluster policies: no tier decided, the default allows).
    Rule { id: RuleId, allow: Allow },
    /// Denied through this entry (directions with cluster policies only): by this rule, or
    /// (rule 0) by a NetworkPolicy's isolation.
    DeniedBy { id: RuleId, entry: Allow },
    /// Isolated and no entry matched.
    Denied,
    /// Cluster policies apply, none of their rules nor any NetworkPolicy decides, and the pod
    /// is not isolated: allowed.
    Unmatched,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        !matches!(self.decision, Decision::Denied | Decision::DeniedBy { .. })
    }
}

/// Evaluates a new flow of `local` in `direction` with `peer` (the source for ingress, the
/// destination for egress), IP protocol number `proto` and destination port `port` (ignored
/// for protocols without ports).
///
/// Lookup order, as in the datapath:
/// 1. no endpoint → not ours; not isolated in this direction → allowed without a rule;
/// 2. peer identity = longest prefix match in the identity trie; the host → allowed;
/// 3. for the peer's identity, then any peer: the port (blocks of up to 256 ports), every port
///    of the protocol, any protocol; then wide port ranges. Protocols without ports only look
///    for rules without ports. The first hit decides (and names the rule).
pub fn evaluate(
    tables: &Tables,
    local: &PodKey,
    direction: Direction,
    peer: IpAddr,
    proto: u8,
    port: u16,
) -> Verdict {
    let Some(plan) = tables.endpoints.get(local) else {
        return Verdict {
            decision: Decision::NotLocal,
            peer_prefix: None,
            peer_owner: None,
            isolated_by: BTreeSet::new(),
            tiered_by: BTreeSet::new(),
        };
    };
    let (isolated_by, tiered_by) = match direction {
        Direction::Ingress => (&plan.ingress_isolated_by, &plan.ingress_tiered_by),
        Direction::Egress => (&plan.egress_isolated_by, &plan.egress_tiered_by),
    };
    let (prefix, owner) = identity_of(tables, peer);
    let verdict = |decision| Verdict {
        decision,
        peer_prefix: Some(prefix),
        peer_owner: Some(owner.clone()),
        isolated_by: isolated_by.clone(),
        tiered_by: tiered_by.clone(),
    };
    if !plan.isolated(direction) && !plan.tiered(direction) {
        return verdict(Decision::NotIsolated);
    }
    if owner == PrefixOwner::Host {
        return verdict(Decision::Host);
    }

    let proto = Proto::of_kernel(proto);
    let entries = |peer: Peer, proto: Proto| {
        let lo = Allow {
            direction,
            peer,
            proto,
            ports: PortPrefix { port: 0, len: 0 },
        };
        let hi = Allow {
            direction,
            peer,
            proto,
            ports: PortPrefix {
                port: u16::MAX,
                len: 16,
            },
        };
        let allows = plan.allows.range(lo..=hi).map(|(a, id)| (*a, *id, false));
        let denies = plan.denies.range(lo..=hi).map(|(a, id)| (*a, *id, true));
        allows.chain(denies)
    };
    let hit = |entry: Allow, id: RuleId, deny: bool| match deny {
        true => verdict(Decision::DeniedBy { id, entry }),
        false => verdict(Decision::Rule { id, allow: entry }),
    };
    // The datapath's probe order (the kernel's `policy::lookup`, the dataplane's `entries`):
    // port blocks of up to 256 ports are expanded into single-port keys, so every such block
    // containing the port answers the first probe (the lowest rule id is reported); then the
    // longest wide block, every port of the protocol, any protocol; for the peer, then for
    // any peer.
    let narrow = |a: &Allow| a.ports.len >= 16 - enforcer_common::policy::MAX_EXPANDED_BITS;
    for peer in [Peer::Prefix(prefix), Peer::Any] {
        if let Some(p) = proto {
            let exact = entries(peer, p).filter(|(a, ..)| narrow(a) && a.ports.contains(port));
            if let Some((a, id, deny)) = exact.min_by_key(|(_, id, _)| *id) {
                return hit(a, id, deny);
            }
            let wide = entries(peer, p)
                .filter(|(a, ..)| a.ports.len > 0 && !narrow(a) && a.ports.contains(port));
            if let Some((a, id, deny)) =
                wide.max_by_key(|(a, id, _)| (a.ports.len, std::cmp::Reverse(*id)))
            {
                return hit(a, id, deny);
            }
            if let Some((a, id, deny)) = entries(peer, p).find(|(a, ..)| a.ports.len == 0) {
                return hit(a, id, deny);
            }
        }
        if let Some((a, id, deny)) = entries(peer, Proto::Any).next() {
            return hit(a, id, deny);
        }
    }
    if isolated_by.is_empty() {
        return verdict(Decision::Unmatched);
    }
    verdict(Decision::Denied)
}

/// The longest prefix of [`Tables::prefixes`] containing `addr`, with its owner.
pub fn identity_of(tables: &Tables, addr: IpAddr) -> (IpNet, PrefixOwner) {
    let max = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    for len in (0..=max).rev() {
        let net = IpNet::new(addr, len)
            .expect("len within the family's maximum")
            .trunc();
        if let Some(owner) = tables.prefixes.get(&net) {
            return (net, owner.clone());
        }
    }
    // Tables always hold both default routes; a hand-built one may not.
    let any = IpNet::new(addr, 0).expect("0 is a valid length").trunc();
    (any, PrefixOwner::Cidr)
}
