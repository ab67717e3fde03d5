//! Pure translation of compiled tables into map entries (no kernel): identities for
//! prefixes, policy-trie keys for an endpoint's allows, the endpoint record.

use std::collections::BTreeMap;

use enforcer_common::endpoint::{
    EndpointInfo, F_EGRESS_ISOLATED, F_HAS_V4, F_HAS_V6, F_INGRESS_ISOLATED,
};
use enforcer_common::policy::{identity, PolicyKey, POLICY_KEY_FIXED_BITS};
use ipnet::IpNet;

use crate::compile::tables::{EndpointPlan, Peer, PrefixOwner, Tables};

/// A policy-trie entry without its set id: (prefix length in bits, key with `set` = 0).
pub type EntryKey = (u32, PolicyKey);

/// Stable prefix → identity assignment. Ids are never reused while the agent runs, so a packet
/// racing a policy update can never meet a stale entry that now means another prefix.
#[derive(Debug, Default)]
pub struct Identities {
    pub by_prefix: BTreeMap<IpNet, u32>,
    next: u32,
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
            by_prefix: existing,
            next,
        }
    }

    /// The identities the tables need: kept where a prefix already has one, new otherwise.
    /// The node's own addresses all share `identity::HOST`.
    pub fn assign(&mut self, tables: &Tables) -> BTreeMap<IpNet, u32> {
        let mut out = BTreeMap::new();
        for (net, owner) in &tables.prefixes {
            let id = match owner {
                PrefixOwner::Host => identity::HOST,
                _ => match self.by_prefix.get(net) {
                    Some(&id) if id >= identity::FIRST_ALLOCATED => id,
                    _ => {
                        let id = self.next;
                        self.next += 1;
                        id
                    }
                },
            };
            out.insert(*net, id);
        }
        out
    }
}

/// The policy-trie entries of one endpoint (set id left 0), with the rule each one reports.
pub fn policy_entries(plan: &EndpointPlan, ids: &BTreeMap<IpNet, u32>) -> BTreeMap<EntryKey, u32> {
    let mut out = BTreeMap::new();
    for (allow, &rule) in &plan.allows {
        let ident = match allow.peer {
            Peer::Any => identity::ANY,
            Peer::Prefix(net) => match ids.get(&net) {
                Some(&id) => id,
                // The compiler only names prefixes it put in the table; skip defensively.
                None => continue,
            },
        };
        let key = PolicyKey::new(
            0,
            allow.direction.to_kernel(),
            allow.proto.to_kernel(),
            ident,
            allow.ports.port,
        );
        let len = POLICY_KEY_FIXED_BITS + allow.ports.len as u32;
        out.entry((len, key))
            .and_modify(|r: &mut u32| *r = (*r).min(rule))
            .or_insert(rule);
    }
    out
}

/// The `ENDPOINTS` record of a pod.
pub fn endpoint_info(plan: &EndpointPlan, ep_id: u32, policy_set: u32) -> EndpointInfo {
    let mut flags = 0;
    if plan.ingress_isolated() {
        flags |= F_INGRESS_ISOLATED;
    }
    if plan.egress_isolated() {
        flags |= F_EGRESS_ISOLATED;
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
    use crate::compile::tables::{Allow, Direction, PortPrefix, Proto};

    #[test]
    fn identities_are_stable_and_host_is_shared() {
        let mut t = Tables::default();
        t.prefixes
            .insert("10.0.0.1/32".parse().unwrap(), PrefixOwner::Host);
        t.prefixes
            .insert("10.0.0.2/32".parse().unwrap(), PrefixOwner::Cidr);
        let mut ids = Identities::adopt(BTreeMap::new());
        let a = ids.assign(&t);
        ids.by_prefix = a.clone();
        t.prefixes
            .insert("10.0.0.3/32".parse().unwrap(), PrefixOwner::Cidr);
        let b = ids.assign(&t);
        assert_eq!(a[&"10.0.0.1/32".parse::<IpNet>().unwrap()], identity::HOST);
        assert_eq!(
            a[&"10.0.0.2/32".parse::<IpNet>().unwrap()],
            b[&"10.0.0.2/32".parse::<IpNet>().unwrap()]
        );
        assert_ne!(
            b[&"10.0.0.3/32".parse::<IpNet>().unwrap()],
            b[&"10.0.0.2/32".parse::<IpNet>().unwrap()]
        );
        assert!(b
            .values()
            .all(|&id| id == identity::HOST || id >= identity::FIRST_ALLOCATED));
    }

    #[test]
    fn entries_carry_port_prefix_length_and_lowest_rule() {
        let net: IpNet = "10.1.0.0/16".parse().unwrap();
        let ids = BTreeMap::from([(net, 300)]);
        let mut plan = EndpointPlan::default();
        let allow = Allow {
            direction: Direction::Ingress,
            peer: Peer::Prefix(net),
            proto: Proto::Tcp,
            ports: PortPrefix { port: 80, len: 15 },
        };
        plan.allows.insert(allow, 4);
        plan.allows.insert(
            Allow {
                direction: Direction::Egress,
                peer: Peer::Any,
                proto: Proto::Any,
                ports: PortPrefix::ALL,
            },
            2,
        );
        let e = policy_entries(&plan, &ids);
        assert_eq!(e.len(), 2);
        assert_eq!(
            e[&(POLICY_KEY_FIXED_BITS + 15, PolicyKey::new(0, 0, 6, 300, 80))],
            4
        );
        assert_eq!(
            e[&(
                POLICY_KEY_FIXED_BITS,
                PolicyKey::new(0, 1, 0, identity::ANY, 0)
            )],
            2
        );
    }
}
