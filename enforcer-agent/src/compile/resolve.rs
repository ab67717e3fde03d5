//! Precedence compiled into the tables: for a pod and direction that cluster policies apply
//! to, the Admin tier, the NetworkPolicy tier and the Baseline tier are resolved into one set of
//! entries, each with its final verdict, so that the kernel's first hit decides (no walk over
//! policies or tiers per packet).
//!
//! Why the first hit is right. Every rule matches a union of keys (peer, protocol, port
//! block), and keys are *nested or disjoint*: a port block is an aligned prefix, "every port of
//! a protocol" holds each of its blocks, "any protocol" holds every protocol, and the peer of a
//! key is one identity (a table prefix; identities partition the addresses). The entries are
//! the keys of every rule, with each key of a rule for any peer repeated for every peer that
//! has keys of its own. For a packet, the most specific entry containing it is `K`; every rule
//! key containing the packet contains all of `K` (a rule key inside `K` would itself be an
//! entry, more specific than `K`). So every tier decides the same way for the whole of `K`, and
//! `K`'s verdict, computed from the rule keys that contain `K`, is the packet's. The kernel's
//! probe order (`policy::lookup`) visits the entries from most to least specific: the peer's
//! single port, its port blocks (longest first), every port of the protocol, any protocol;
//! then the same for any peer. Blocks of up to 256 ports become single ports here (the map
//! holds them so), each with its own verdict.

use std::collections::BTreeSet;

use enforcer_common::policy::MAX_EXPANDED_BITS;

use super::tables::{Allow, Direction, EndpointPlan, Peer, PortPrefix, Proto, RuleId};
use super::tiers::{TierRule, TierRules};
use crate::model::cluster_policy::Action;

/// What an entry decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Final {
    Allow(RuleId),
    Deny(RuleId),
}

/// Replaces the NetworkPolicy allows of `direction` in `plan` with the resolved entries of all
/// three tiers.
pub(super) fn resolve(
    plan: &mut EndpointPlan,
    direction: Direction,
    admin: &TierRules,
    baseline: &TierRules,
) {
    let isolated = plan.isolated(direction);
    let np: Vec<(Allow, RuleId)> = plan
        .allows
        .iter()
        .filter(|(a, _)| a.direction == direction)
        .map(|(a, id)| (*a, *id))
        .collect();
    plan.allows.retain(|a, _| a.direction != direction);

    let rule_keys = admin
        .rules
        .iter()
        .chain(&baseline.rules)
        .flat_map(|r| r.matches.iter().copied())
        .chain(np.iter().map(|(a, _)| *a));
    for key in entry_keys(rule_keys) {
        match decide(&key, admin, &np, isolated, baseline) {
            Final::Allow(id) => plan.allows.insert(key, id),
            Final::Deny(id) => plan.denies.insert(key, id),
        };
    }
}

/// The entries: every rule key, keys of any peer also for each peer with keys of its own, and
/// port blocks of up to 256 ports as single ports.
fn entry_keys(rule_keys: impl Iterator<Item = Allow> + Clone) -> BTreeSet<Allow> {
    let peers: BTreeSet<Peer> = rule_keys
        .clone()
        .map(|k| k.peer)
        .filter(|p| *p != Peer::Any)
        .collect();
    let mut out = BTreeSet::new();
    for key in rule_keys {
        let copies = std::iter::once(key).chain(
            (key.peer == Peer::Any)
                .then(|| peers.iter().map(move |p| Allow { peer: *p, ..key }))
                .into_iter()
                .flatten(),
        );
        for k in copies {
            expand(k, &mut out);
        }
    }
    out
}

/// A key as the map holds it: a block of up to 256 ports as its single ports (port 0 is "every
/// port" in the map, and no real block holds it).
fn expand(key: Allow, out: &mut BTreeSet<Allow>) {
    let narrow = key.proto != Proto::Any
        && key.ports.len > 0
        && key.ports.len < 16
        && 16 - key.ports.len <= MAX_EXPANDED_BITS;
    if !narrow {
        out.insert(key);
        return;
    }
    let span = 1u32 << (16 - key.ports.len);
    let base = u32::from(key.ports.port) & !(span - 1);
    for port in (base..base + span).filter(|&p| p != 0) {
        out.insert(Allow {
            ports: PortPrefix::single(port as u16),
            ..key
        });
    }
}

/// Whether rule key `rule` holds all of entry `key`.
fn holds(rule: &Allow, key: &Allow) -> bool {
    (rule.peer == Peer::Any || rule.peer == key.peer)
        && match rule.proto {
            Proto::Any => true,
            p => key.proto == p && rule.ports.contains_block(key.ports),
        }
}

/// The first rule of a tier (in order) with a key holding `key`.
fn first_match<'r>(tier: &'r TierRules, key: &Allow) -> Option<&'r TierRule> {
    tier.rules
        .iter()
        .find(|r| r.matches.iter().any(|m| holds(m, key)))
}

/// The evaluation order of docs/design.md section 4.1 for everything `key` holds.
fn decide(
    key: &Allow,
    admin: &TierRules,
    np: &[(Allow, RuleId)],
    isolated: bool,
    baseline: &TierRules,
) -> Final {
    match first_match(admin, key) {
        Some(r) if r.action == Action::Accept => return Final::Allow(r.id),
        Some(r) if r.action == Action::Deny => return Final::Deny(r.id),
        _ => {} // Pass, or no match: the NetworkPolicy tier
    }
    if isolated {
        let allowed = np
            .iter()
            .filter(|(a, _)| holds(a, key))
            .map(|(_, id)| *id)
            .min();
        return allowed.map_or(Final::Deny(0), Final::Allow);
    }
    match first_match(baseline, key) {
        Some(r) if r.action == Action::Accept => Final::Allow(r.id),
        Some(r) if r.action == Action::Deny => Final::Deny(r.id),
        _ => Final::Allow(0),
    }
}
