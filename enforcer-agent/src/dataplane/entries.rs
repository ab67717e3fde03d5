//! Pure translation of compiled tables into map entries (no kernel): identities for
//! prefixes, policy-trie keys for an endpoint's allows, the endpoint record.

use std::collections::BTreeMap;
use std::sync::Arc;

use enforcer_common::endpoint::{
    EndpointInfo, F_ALL_PORTS, F_ANY_PEER, F_ANY_PROTO, F_EGRESS_ISOLATED, F_EGRESS_TIERED,
    F_HAS_V4, F_HAS_V6, F_INGRESS_ISOLATED, F_INGRESS_TIERED, F_WIDE_PORT_RANGES,
};
use enforcer_common::policy::{
    identity, PolicyKey, MAX_EXPANDED_BITS, POLICY_KEY_FIXED_BITS, RULE_DENY,
};
use enforcer_common::proto;
use ipnet::IpNet;

use crate::compile::tables::{
    Direction, EndpointPlan, Peer, PrefixOwner, PrefixTable, RuleRef, StagedEntry, Tables,
};
use imbl::ordmap::DiffItem;

/// A `POLICY_RANGES` entry without its set id: (prefix length in bits, key with `set` = 0).
pub type RangeKey = (u32, PolicyKey);

/// The policy entries of one endpoint (set ids left 0), with the rule each one reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyEntries {
    pub exact: BTreeMap<PolicyKey, u32>,
    pub ranges: BTreeMap<RangeKey, u32>,
}

impl PolicyEntries {
    pub fn len(&self) -> usize {
        self.exact.len() + self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Prefix → identity, as the identity tries hold it: a persistent map, so that the
/// assignment of one sync is the previous one with the changed prefixes edited.
pub type IdTable = imbl::OrdMap<IpNet, u32>;

/// Stable prefix → identity assignment. Ids are never reused while the agent runs, so a packet
/// racing a policy update can never meet a stale entry that now means another prefix.
#[derive(Debug, Default)]
pub struct Identities {
    /// What the tries hold (as far as the agent wrote them).
    pub by_prefix: IdTable,
    next: u32,
    /// The prefix table `by_prefix` was assigned from: the next assignment is the difference
    /// to it (`None` after an adoption: a walk over every prefix).
    assigned_from: Option<PrefixTable>,
    /// How many of `by_prefix` are in each identity map (for the map usage metrics, read
    /// after every sync: counted as they change, not by a walk).
    pub counts: IdCounts,
}

/// How many prefixes each identity map holds: addresses (host-length prefixes, one exact map
/// for both families), shorter IPv4 and shorter IPv6 prefixes (one trie each).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IdCounts {
    pub addresses: usize,
    pub v4: usize,
    pub v6: usize,
}

impl IdCounts {
    fn of<'a>(nets: impl IntoIterator<Item = &'a IpNet>) -> Self {
        let mut counts = IdCounts::default();
        for net in nets {
            counts.add(net, 1);
        }
        counts
    }

    fn add(&mut self, net: &IpNet, n: isize) {
        let slot = match net {
            _ if net.prefix_len() == net.max_prefix_len() => &mut self.addresses,
            IpNet::V4(_) => &mut self.v4,
            IpNet::V6(_) => &mut self.v6,
        };
        *slot = slot.saturating_add_signed(n);
    }
}

/// The identities one set of tables needs, and how they differ from those in force.
pub struct Assignment {
    /// Every prefix of the tables with its identity.
    pub ids: IdTable,
    /// The prefixes that are new or have another id than in force, in order.
    pub differing: Vec<(IpNet, u32)>,
    /// The prefixes in force that the tables no longer have, in order.
    pub missing: Vec<IpNet>,
    /// How many of `ids` are in each identity map.
    pub counts: IdCounts,
}

impl Identities {
    /// Seeds the allocator with what the pinned tries already hold (agent restart).
    pub fn adopt(existing: BTreeMap<IpNet, u32>) -> Self {
        let next = existing
            .values()
            .copied()
            .max()
            .map_or(identity::FIRST_ALLOCATED, |m| {
                (m + 1).max(identity::FIRST_ALLOCATED)
            });
        Identities {
            counts: IdCounts::of(existing.keys()),
            by_prefix: existing.into_iter().collect(),
            next,
            assigned_from: None,
        }
    }

    /// The identities the tables need: kept where a prefix already has one, new otherwise.
    /// The node's own addresses all share `identity::HOST`.
    pub fn assign(&mut self, tables: &Tables) -> Assignment {
        let mut differing = Vec::new();
        let mut missing = Vec::new();
        let Some(last) = self.assigned_from.take() else {
            return self.assign_all(tables);
        };
        // Only the prefixes whose owner changed since the last assignment: the diff skips
        // what the two tables share.
        let mut ids = self.by_prefix.clone();
        let mut counts = self.counts;
        for change in last.diff(&tables.prefixes) {
            match change {
                DiffItem::Add(net, owner)
                | DiffItem::Update {
                    new: (net, owner), ..
                } => {
                    let existing = self.by_prefix.get(net).copied();
                    let id = self.id_for(owner, existing);
                    if existing != Some(id) {
                        if ids.insert(*net, id).is_none() {
                            counts.add(net, 1);
                        }
                        differing.push((*net, id));
                    }
                }
                DiffItem::Remove(net, _) => {
                    if ids.remove(net).is_some() {
                        counts.add(net, -1);
                        missing.push(*net);
                    }
                }
            }
        }
        self.assigned_from = Some(last);
        differing.sort_unstable();
        missing.sort_unstable();
        Assignment {
            ids,
            differing,
            missing,
            counts,
        }
    }

    /// [`Self::assign`] by a walk over every prefix (both in prefix order: no lookups).
    fn assign_all(&mut self, tables: &Tables) -> Assignment {
        let mut known = self.by_prefix.iter().peekable();
        let mut ids = Vec::with_capacity(tables.prefixes.len());
        let mut differing = Vec::new();
        for (net, owner) in &tables.prefixes {
            while known.next_if(|(k, _)| *k < net).is_some() {}
            let existing = known.next_if(|(k, _)| *k == net).map(|(_, &id)| id);
            let id = match owner {
                PrefixOwner::Host => identity::HOST,
                _ => match existing {
                    Some(id) if id >= identity::FIRST_ALLOCATED => id,
                    _ => {
                        let id = self.next;
                        self.next += 1;
                        id
                    }
                },
            };
            if existing != Some(id) {
                differing.push((*net, id));
            }
            ids.push((*net, id));
        }
        let mut wanted = ids.iter().map(|(net, _)| net).peekable();
        let mut missing = Vec::new();
        for net in self.by_prefix.keys() {
            while wanted.next_if(|k| *k < net).is_some() {}
            if wanted.next_if(|k| *k == net).is_none() {
                missing.push(*net);
            }
        }
        Assignment {
            counts: IdCounts::of(ids.iter().map(|(net, _)| net)),
            ids: ids.into_iter().collect(),
            differing,
            missing,
        }
    }

    /// A prefix's identity: this node's for its addresses, else the one it has, else a new one.
    fn id_for(&mut self, owner: &PrefixOwner, existing: Option<u32>) -> u32 {
        match (owner, existing) {
            (PrefixOwner::Host, _) => identity::HOST,
            (_, Some(id)) if id >= identity::FIRST_ALLOCATED => id,
            _ => {
                let id = self.next;
                self.next += 1;
                id
            }
        }
    }

    /// Records an assignment as what the tries hold: the next is the difference to it.
    pub fn in_force(&mut self, ids: IdTable, counts: IdCounts, from: &PrefixTable) {
        self.by_prefix = ids;
        self.counts = counts;
        self.assigned_from = Some(from.clone());
    }
}

/// The policy entries of one endpoint: a single port, all ports (port 0) and any protocol are
/// exact keys; a port block of up to 256 ports becomes that many exact keys; wider blocks stay
/// port prefixes for the trie. A deny's value has [`RULE_DENY`] set. (Denies exist only in
/// directions with cluster policies, whose entries the compiler resolved into disjoint keys
/// with narrow blocks already expanded, so the lowest-rule merge below never meets one.)
pub fn policy_entries(plan: &EndpointPlan, ids: &IdTable) -> PolicyEntries {
    let mut out = PolicyEntries::default();
    let allows = plan.allows.iter().map(|(a, r)| (a, *r));
    let denies = plan.denies.iter().map(|(a, r)| (a, *r | RULE_DENY));
    for (allow, rule) in allows.chain(denies) {
        let ident = match allow.peer {
            Peer::Any => identity::ANY,
            Peer::Prefix(net) => match ids.get(&net) {
                Some(&id) => id,
                // The compiler only names prefixes it put in the table; skip defensively.
                None => continue,
            },
        };
        let (dir, proto) = (allow.direction.to_kernel(), allow.proto.to_kernel());
        let ports = allow.ports;
        let lowest = |r: &mut u32| *r = (*r).min(rule);
        if ports.len == 0 {
            out.exact
                .entry(PolicyKey::new(0, dir, proto, ident, 0))
                .and_modify(lowest)
                .or_insert(rule);
        } else if 16 - ports.len <= MAX_EXPANDED_BITS {
            let span = 1u32 << (16 - ports.len);
            let base = u32::from(ports.port) & !(span - 1);
            // Port 0 means "every port" in an exact key; a real block never holds it (ports
            // start at 1), so skip it rather than widen the rule.
            for port in (base..base + span).filter(|&p| p != 0) {
                out.exact
                    .entry(PolicyKey::new(0, dir, proto, ident, port as u16))
                    .and_modify(lowest)
                    .or_insert(rule);
            }
        } else {
            let key = PolicyKey::new(0, dir, proto, ident, ports.port);
            out.ranges
                .entry((POLICY_KEY_FIXED_BITS + ports.len as u32, key))
                .and_modify(lowest)
                .or_insert(rule);
        }
    }
    out
}

/// [`policy_entries`] with the compiler's rule ids (positions in `Tables::rules`) replaced by
/// stable ones (`stable[position - 1]`, from [`RuleIds::assign`]). The rule an entry credits
/// is still the lowest position that allows it, so it does not depend on history.
pub fn policy_entries_stable(plan: &EndpointPlan, ids: &IdTable, stable: &[u32]) -> PolicyEntries {
    let mut out = policy_entries(plan, ids);
    let map = |r: &mut u32| {
        let (deny, id) = (*r & RULE_DENY, *r & !RULE_DENY);
        if let Some(&s) = (id as usize).checked_sub(1).and_then(|i| stable.get(i)) {
            *r = s | deny;
        }
    };
    out.exact.values_mut().for_each(map);
    out.ranges.values_mut().for_each(map);
    out
}

/// Stable rule ids: a rule (policy, direction, index) keeps its id while it exists. The
/// compiler numbers rules by position, so adding or removing one policy would renumber every
/// later policy's rules and rewrite their entries on every node; with these ids it changes
/// only the entries of the pods it selects. Ids are not reused while the agent runs (an event
/// in flight still names its rule); a restarted agent starts after the largest id it finds
/// in the pinned entries (and rewrites each pod's entries once, with its own ids).
#[derive(Debug)]
pub struct RuleIds {
    by_rule: BTreeMap<IdKey, u32>,
    next: u32,
    /// The rules last assigned (when the tables had no staged entries) and their ids: tables
    /// that share them (the compiler hands its numbering on while no policy changes its
    /// number of rules) get the same ids without a lookup per rule.
    last: Option<(Arc<Vec<RuleRef>>, Vec<u32>)>,
    /// Stable id -> rule, made when the ids change (read after every sync).
    refs: Arc<BTreeMap<u32, RuleRef>>,
}

/// What a stable id stands for: a rule, or an entry a staged policy would change.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum IdKey {
    Rule(RuleRef),
    Staged(StagedEntry),
}

impl Default for RuleIds {
    fn default() -> Self {
        Self::starting_after(0)
    }
}

impl RuleIds {
    /// An allocator whose first id is above `largest` (0 is "no rule").
    pub fn starting_after(largest: u32) -> Self {
        RuleIds {
            by_rule: BTreeMap::new(),
            next: largest.saturating_add(1).max(1),
            last: None,
            refs: Arc::default(),
        }
    }

    /// Stable id of every rule and staged entry of `tables`, by position (`out[position -
    /// 1]`: rules first, then `Tables::staged`); those that are gone are forgotten.
    pub fn assign(&mut self, tables: &Tables) -> Vec<u32> {
        if let Some((rules, ids)) = &self.last {
            if tables.staged.is_empty() && Arc::ptr_eq(rules, &tables.rules) {
                return ids.clone();
            }
        }
        let mut by_rule = BTreeMap::new();
        let mut out = Vec::with_capacity(tables.rules.len() + tables.staged.len());
        let keys = (tables.rules.iter().cloned().map(IdKey::Rule))
            .chain(tables.staged.iter().cloned().map(IdKey::Staged));
        for rule in keys {
            let id = match self.by_rule.get(&rule) {
                Some(&id) => id,
                None => {
                    let id = self.next;
                    self.next += 1;
                    id
                }
            };
            by_rule.insert(rule, id);
            out.push(id);
        }
        self.by_rule = by_rule;
        self.refs = Arc::new(
            self.by_rule
                .iter()
                .filter_map(|(k, id)| match k {
                    IdKey::Rule(r) => Some((*id, r.clone())),
                    IdKey::Staged(_) => None,
                })
                .collect(),
        );
        self.last = tables
            .staged
            .is_empty()
            .then(|| (tables.rules.clone(), out.clone()));
        out
    }

    /// Stable id -> rule, for flow attribution.
    pub fn rules(&self) -> Arc<BTreeMap<u32, RuleRef>> {
        self.refs.clone()
    }

    /// Stable id -> staged entry, for flow attribution.
    pub fn staged(&self) -> BTreeMap<u32, StagedEntry> {
        self.by_rule
            .iter()
            .filter_map(|(k, id)| match k {
                IdKey::Staged(e) => Some((*id, e.clone())),
                IdKey::Rule(_) => None,
            })
            .collect()
    }
}

/// The `ENDPOINTS` record of a pod.
pub fn endpoint_info(
    plan: &EndpointPlan,
    entries: &PolicyEntries,
    ep_id: u32,
    policy_set: u32,
) -> EndpointInfo {
    let mut flags = 0;
    if !entries.ranges.is_empty() {
        flags |= F_WIDE_PORT_RANGES;
    }
    // Which kinds of entry exist, so the kernel probes only those.
    // (Wide ranges are always probed for both the peer and any peer.)
    if entries
        .ranges
        .keys()
        .any(|(_, k)| u32::from_be_bytes(k.identity) == identity::ANY)
    {
        flags |= F_ANY_PEER;
    }
    for k in entries.exact.keys() {
        if u32::from_be_bytes(k.identity) == identity::ANY {
            flags |= F_ANY_PEER;
        }
        if k.proto == proto::ANY {
            flags |= F_ANY_PROTO;
        } else if k.port == [0, 0] {
            flags |= F_ALL_PORTS;
        }
    }
    if plan.ingress_isolated() {
        flags |= F_INGRESS_ISOLATED;
    }
    if plan.egress_isolated() {
        flags |= F_EGRESS_ISOLATED;
    }
    if plan.tiered(Direction::Ingress) {
        flags |= F_INGRESS_TIERED;
    }
    if plan.tiered(Direction::Egress) {
        flags |= F_EGRESS_TIERED;
    }
    if plan.audit {
        flags |= enforcer_common::endpoint::F_AUDIT;
    }
    let mut info = EndpointInfo {
        ep_id,
        policy_set,
        flags,
        ..Default::default()
    };
    if let Some(v4) = plan.ipv4 {
        info.flags |= F_HAS_V4;
        info.ipv4 = v4.octets();
    }
    if let Some(v6) = plan.ipv6 {
        info.flags |= F_HAS_V6;
        info.ipv6 = v6.octets();
    }
    info
}

/// The set id of an endpoint's entries: two per endpoint, used in turn, so that a complete new
/// set is written before the endpoint switches to it.
pub const fn set_id(ep_id: u32, parity: u32) -> u32 {
    ep_id * 2 + (parity & 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::tables::{Allow, PortPrefix, Proto};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn identities_are_stable_and_host_is_shared() {
        let mut t = Tables::default();
        t.prefixes.insert(net("10.0.0.1/32"), PrefixOwner::Host);
        t.prefixes.insert(net("10.0.0.2/32"), PrefixOwner::Cidr);
        let mut ids = Identities::adopt(BTreeMap::new());
        let a = ids.assign(&t);
        assert_eq!(a.differing.len(), 2);
        ids.in_force(a.ids.clone(), a.counts, &t.prefixes);
        t.prefixes.insert(net("10.0.0.3/32"), PrefixOwner::Cidr);
        let b = ids.assign(&t);
        assert_eq!(a.ids[&net("10.0.0.1/32")], identity::HOST);
        assert_eq!(a.ids[&net("10.0.0.2/32")], b.ids[&net("10.0.0.2/32")]);
        assert_ne!(b.ids[&net("10.0.0.3/32")], b.ids[&net("10.0.0.2/32")]);
        assert!(b
            .ids
            .values()
            .all(|&id| id == identity::HOST || id >= identity::FIRST_ALLOCATED));
        // Only the new prefix differs from what is in force; nothing is missing.
        assert_eq!(
            b.differing,
            vec![(net("10.0.0.3/32"), b.ids[&net("10.0.0.3/32")])]
        );
        assert!(b.missing.is_empty());
    }

    /// The assignment from the difference to the last tables is the one a walk over every
    /// prefix gives (what an agent that adopted the same state computes).
    #[test]
    fn an_assignment_by_difference_equals_a_full_one() {
        let mut t = Tables::default();
        for i in 1..=20u8 {
            t.prefixes
                .insert(net(&format!("10.0.0.{i}/32")), PrefixOwner::Cidr);
        }
        t.prefixes.insert(net("10.0.1.0/24"), PrefixOwner::Cidr);
        let mut ids = Identities::adopt(BTreeMap::new());
        let first = ids.assign(&t);
        ids.in_force(first.ids.clone(), first.counts, &t.prefixes);

        // Gone, new, a cidr becoming this node's address and one becoming a pod's again.
        let mut next = t.clone();
        next.prefixes.remove(&net("10.0.0.4/32"));
        next.prefixes.remove(&net("10.0.1.0/24"));
        next.prefixes.insert(net("10.0.2.0/24"), PrefixOwner::Cidr);
        next.prefixes.insert(net("10.0.0.7/32"), PrefixOwner::Host);
        let by_difference = ids.assign(&next);

        let mut walked = Identities::adopt(first.ids.iter().map(|(k, v)| (*k, *v)).collect());
        walked.next = ids.next - 1;
        let full = walked.assign(&next);
        assert_eq!(
            by_difference.missing,
            vec![net("10.0.0.4/32"), net("10.0.1.0/24")]
        );
        assert_eq!(by_difference.missing, full.missing);
        assert_eq!(by_difference.differing.len(), 2);
        assert_eq!(by_difference.ids[&net("10.0.0.7/32")], identity::HOST);
        assert_eq!(
            by_difference.ids.keys().collect::<Vec<_>>(),
            full.ids.keys().collect::<Vec<_>>()
        );
        // The same ids for the prefixes both had; the new one got the next id in each.
        assert_eq!(by_difference.ids, full.ids);
        assert_eq!(by_difference.differing, full.differing);
        assert_eq!(by_difference.counts, full.counts);
        assert_eq!(
            full.counts,
            IdCounts {
                addresses: 19,
                v4: 1,
                v6: 0
            }
        );
    }

    fn allow(peer: Peer, proto: Proto, port: u16, len: u8) -> Allow {
        Allow {
            direction: Direction::Ingress,
            peer,
            proto,
            ports: PortPrefix { port, len },
        }
    }

    #[test]
    fn small_blocks_are_expanded_wide_ones_stay_prefixes() {
        let net: IpNet = "10.1.0.0/16".parse().unwrap();
        let ids = IdTable::from_iter([(net, 300u32)]);
        let mut plan = EndpointPlan::default();
        plan.allows
            .insert(allow(Peer::Prefix(net), Proto::Tcp, 80, 15), 4); // 80-81
        plan.allows
            .insert(allow(Peer::Prefix(net), Proto::Tcp, 81, 16), 7); // overlaps
        plan.allows
            .insert(allow(Peer::Prefix(net), Proto::Udp, 32768, 1), 5); // 32768-65535
        plan.allows.insert(allow(Peer::Any, Proto::Any, 0, 0), 2);
        plan.allows.insert(allow(Peer::Any, Proto::Udp, 0, 0), 3);
        let e = policy_entries(&plan, &ids);
        assert_eq!(e.exact.len(), 4);
        assert_eq!(e.exact[&PolicyKey::new(0, 0, 6, 300, 80)], 4);
        assert_eq!(
            e.exact[&PolicyKey::new(0, 0, 6, 300, 81)],
            4,
            "lowest rule wins"
        );
        assert_eq!(e.exact[&PolicyKey::new(0, 0, 0, identity::ANY, 0)], 2);
        assert_eq!(
            e.exact[&PolicyKey::new(0, 0, 17, identity::ANY, 0)],
            3,
            "all UDP ports"
        );
        assert_eq!(e.ranges.len(), 1);
        assert_eq!(
            e.ranges[&(
                POLICY_KEY_FIXED_BITS + 1,
                PolicyKey::new(0, 0, 17, 300, 32768)
            )],
            5
        );
        let flags = endpoint_info(&plan, &e, 1, 2).flags;
        assert_ne!(flags & F_WIDE_PORT_RANGES, 0);
        assert_eq!(
            flags & (F_ANY_PEER | F_ANY_PROTO | F_ALL_PORTS),
            F_ANY_PEER | F_ANY_PROTO | F_ALL_PORTS
        );
    }

    #[test]
    fn probe_flags_name_only_the_kinds_of_entry_present() {
        let net: IpNet = "10.1.0.0/16".parse().unwrap();
        let ids = IdTable::from_iter([(net, 300u32)]);
        let mut plan = EndpointPlan::default();
        plan.allows
            .insert(allow(Peer::Prefix(net), Proto::Tcp, 80, 16), 1);
        let e = policy_entries(&plan, &ids);
        assert_eq!(
            endpoint_info(&plan, &e, 1, 2).flags
                & (F_ANY_PEER | F_ANY_PROTO | F_ALL_PORTS | F_WIDE_PORT_RANGES),
            0
        );
    }

    #[test]
    fn a_block_of_256_ports_is_expanded_without_port_zero() {
        let mut plan = EndpointPlan::default();
        plan.allows.insert(allow(Peer::Any, Proto::Tcp, 0, 8), 1); // 0-255 (as a block)
        let e = policy_entries(&plan, &IdTable::new());
        assert_eq!(e.exact.len(), 255);
        assert!(!e
            .exact
            .contains_key(&PolicyKey::new(0, 0, 6, identity::ANY, 0)));
        assert!(e.ranges.is_empty());
        assert_eq!(endpoint_info(&plan, &e, 1, 2).flags & F_WIDE_PORT_RANGES, 0);
    }
}
