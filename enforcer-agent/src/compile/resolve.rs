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
//!
//! **Staged policies** (annotation `policy.enforcer.dev/mode: audit`) are left out of the
//! verdict in force, and each entry is also evaluated with each staged policy added, one at a
//! time: where one would change the verdict, the entry's id is a [`StagedEntry`]'s (the rule
//! in force, the staged policy and rule, what the verdict would become) instead of a rule's.
//! With staged policies a catch-all key (any peer, any protocol) is added, so that traffic no
//! rule names (which a staged NetworkPolicy's isolation would deny) has an entry too.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use enforcer_common::policy::MAX_EXPANDED_BITS;

use super::tables::{
    Allow, Direction, EndpointPlan, Peer, PolicyRef, PortPrefix, Proto, RuleId, RuleRef,
    StagedEntry,
};
use super::tiers::{TierRule, TierRules};
use crate::model::cluster_policy::{Action, Tier};

/// What an entry decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Final {
    Allow(RuleId),
    Deny(RuleId),
}

impl Final {
    fn allows(self) -> bool {
        matches!(self, Final::Allow(_))
    }
}

/// A staged policy's rules for one pod and direction.
pub(super) enum StagedPolicy {
    Cluster {
        policy: PolicyRef,
        tier: Tier,
        rules: TierRules,
    },
    /// A staged NetworkPolicy that isolates the pod in this direction (one that does not has
    /// no effect on it and is not listed).
    Network {
        policy: PolicyRef,
        /// Its allows in this direction.
        allows: Vec<(Allow, RuleId)>,
    },
}

impl StagedPolicy {
    pub fn policy(&self) -> &PolicyRef {
        match self {
            StagedPolicy::Cluster { policy, .. } | StagedPolicy::Network { policy, .. } => policy,
        }
    }

    /// Whether rule `id` is one of this policy's.
    fn owns(&self, id: RuleId) -> bool {
        match self {
            StagedPolicy::Cluster { rules, .. } => rules.rules.iter().any(|r| r.id == id),
            StagedPolicy::Network { allows, .. } => allows.iter().any(|(_, r)| *r == id),
        }
    }
}

/// The three tiers as one evaluation sees them.
struct Tiers<'a> {
    admin: Cow<'a, TierRules>,
    np: Cow<'a, [(Allow, RuleId)]>,
    isolated: bool,
    baseline: Cow<'a, TierRules>,
}

impl Tiers<'_> {
    /// These tiers with a staged policy in force too.
    fn with(&self, staged: &StagedPolicy) -> Tiers<'_> {
        match staged {
            StagedPolicy::Cluster { tier, rules, .. } => Tiers {
                admin: match tier {
                    Tier::Admin => Cow::Owned(self.admin.with(rules)),
                    Tier::Baseline => Cow::Borrowed(&*self.admin),
                },
                np: Cow::Borrowed(&*self.np),
                isolated: self.isolated,
                baseline: match tier {
                    Tier::Baseline => Cow::Owned(self.baseline.with(rules)),
                    Tier::Admin => Cow::Borrowed(&*self.baseline),
                },
            },
            StagedPolicy::Network { allows, .. } => Tiers {
                admin: Cow::Borrowed(&*self.admin),
                np: Cow::Owned(self.np.iter().chain(allows).copied().collect()),
                isolated: true,
                baseline: Cow::Borrowed(&*self.baseline),
            },
        }
    }
}

/// Ids of [`StagedEntry`]s, after every rule id; one per distinct entry.
pub(super) struct StagedIds<'r> {
    rules: &'r [RuleRef],
    ids: BTreeMap<StagedEntry, RuleId>,
}

impl<'r> StagedIds<'r> {
    pub fn new(rules: &'r [RuleRef]) -> Self {
        StagedIds {
            rules,
            ids: BTreeMap::new(),
        }
    }

    fn rule(&self, id: RuleId) -> Option<RuleRef> {
        (id as usize)
            .checked_sub(1)
            .and_then(|i| self.rules.get(i))
            .cloned()
    }

    fn id(&mut self, entry: StagedEntry) -> RuleId {
        let next = (self.rules.len() + self.ids.len() + 1) as RuleId;
        *self.ids.entry(entry).or_insert(next)
    }

    /// The entries, in id order.
    pub fn into_entries(self) -> Vec<StagedEntry> {
        let mut v: Vec<(RuleId, StagedEntry)> =
            self.ids.into_iter().map(|(e, id)| (id, e)).collect();
        v.sort_by_key(|(id, _)| *id);
        v.into_iter().map(|(_, e)| e).collect()
    }
}

/// Replaces the NetworkPolicy allows of `direction` in `plan` with the resolved entries of all
/// three tiers, with the effect of each staged policy.
pub(super) fn resolve(
    plan: &mut EndpointPlan,
    direction: Direction,
    (admin, baseline): (&TierRules, &TierRules),
    staged: &[StagedPolicy],
    ids: &mut StagedIds<'_>,
) {
    let np: Vec<(Allow, RuleId)> = plan
        .allows
        .iter()
        .filter(|(a, _)| a.direction == direction)
        .map(|(a, id)| (*a, *id))
        .collect();
    plan.allows.retain(|a, _| a.direction != direction);
    let enforced = Tiers {
        admin: Cow::Borrowed(admin),
        np: Cow::Borrowed(&np),
        isolated: plan.isolated(direction),
        baseline: Cow::Borrowed(baseline),
    };
    let variants: Vec<Tiers<'_>> = staged.iter().map(|s| enforced.with(s)).collect();

    let mut rule_keys: Vec<Allow> = np.iter().map(|(a, _)| *a).collect();
    for tier in [admin, baseline] {
        rule_keys.extend(tier.rules.iter().flat_map(|r| r.matches.iter().copied()));
    }
    for s in staged {
        match s {
            StagedPolicy::Cluster { rules, .. } => {
                rule_keys.extend(rules.rules.iter().flat_map(|r| r.matches.iter().copied()));
            }
            StagedPolicy::Network { allows, .. } => {
                rule_keys.extend(allows.iter().map(|(a, _)| *a));
            }
        }
    }
    if !staged.is_empty() {
        rule_keys.push(Allow {
            direction,
            peer: Peer::Any,
            proto: Proto::Any,
            ports: PortPrefix::ALL,
        });
    }
    for key in entry_keys(rule_keys.into_iter()) {
        let now = decide(&key, &enforced);
        let change = staged
            .iter()
            .zip(&variants)
            .map(|(s, tiers)| (s, decide(&key, tiers)))
            .find(|(_, would)| would.allows() != now.allows());
        let id = match (now, change) {
            (Final::Allow(id) | Final::Deny(id), None) => id,
            (Final::Allow(id) | Final::Deny(id), Some((s, would))) => {
                let entry = StagedEntry {
                    enforced: ids.rule(id),
                    enforced_allows: now.allows(),
                    policy: s.policy().clone(),
                    rule: staged_rule(s, would, &key).and_then(|r| ids.rule(r)),
                    would_allow: would.allows(),
                };
                ids.id(entry)
            }
        };
        match now.allows() {
            true => plan.allows.insert(key, id),
            false => plan.denies.insert(key, id),
        };
    }
}

/// The staged policy's rule to report for a changed verdict: the rule that decides, or else
/// its first rule that matches (a Pass that hands the decision on); `None` for a staged
/// NetworkPolicy's isolation.
fn staged_rule(s: &StagedPolicy, would: Final, key: &Allow) -> Option<RuleId> {
    let (Final::Allow(id) | Final::Deny(id)) = would;
    if id != 0 && s.owns(id) {
        return Some(id);
    }
    match s {
        StagedPolicy::Cluster { rules, .. } => first_match(rules, key).map(|r| r.id),
        StagedPolicy::Network { .. } => None,
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
fn decide(key: &Allow, t: &Tiers<'_>) -> Final {
    match first_match(&t.admin, key) {
        Some(r) if r.action == Action::Accept => return Final::Allow(r.id),
        Some(r) if r.action == Action::Deny => return Final::Deny(r.id),
        _ => {} // Pass, or no match: the NetworkPolicy tier
    }
    if t.isolated {
        let allowed =
            t.np.iter()
                .filter(|(a, _)| holds(a, key))
                .map(|(_, id)| *id)
                .min();
        return allowed.map_or(Final::Deny(0), Final::Allow);
    }
    match first_match(&t.baseline, key) {
        Some(r) if r.action == Action::Accept => Final::Allow(r.id),
        Some(r) if r.action == Action::Deny => Final::Deny(r.id),
        _ => Final::Allow(0),
    }
}
