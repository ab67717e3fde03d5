//! Cluster policies (Admin and Baseline tiers) for one local pod: which policies apply to it,
//! in evaluation order, and each rule as the table keys it matches. What the tiers then decide
//! together with the NetworkPolicies is `resolve.rs`'s.

use std::collections::BTreeSet;

use ipnet::IpNet;

use super::tables::{Allow, Direction, Peer, PortPrefix, Proto, RuleId, RuleRef};
use super::{host_prefix, port_range_prefixes, proto_of, ClusterIndex};
use crate::model::cluster_policy::{
    Action, ClusterPeer, ClusterPolicy, ClusterPolicyKey, ClusterRule, ProtocolMatch, Subject, Tier,
};
use crate::model::{Cluster, LabelSelector, Pod};

/// One rule of a cluster policy as it applies to one pod and direction: the keys it matches
/// (peer, protocol, port block). The rule matches a connection when one of them does.
#[derive(Clone, Debug)]
pub(super) struct TierRule {
    pub id: RuleId,
    /// Its policy's place in the tier: priority, then kind and name.
    pub order: (u32, ClusterPolicyKey),
    pub action: Action,
    pub matches: Vec<Allow>,
}

/// The rules of one tier that apply to a pod in one direction, in evaluation order.
#[derive(Clone, Debug, Default)]
pub(super) struct TierRules {
    pub rules: Vec<TierRule>,
    /// The policies they come from (for the endpoint's record and reports).
    pub policies: BTreeSet<ClusterPolicyKey>,
}

impl TierRules {
    /// These rules with `other`'s in evaluation order (for a staged policy's effect).
    pub fn with(&self, other: &TierRules) -> TierRules {
        let mut rules: Vec<TierRule> = self.rules.iter().chain(&other.rules).cloned().collect();
        // Stable: a policy's rules keep their written order.
        rules.sort_by(|a, b| a.order.cmp(&b.order));
        TierRules {
            rules,
            policies: self.policies.union(&other.policies).cloned().collect(),
        }
    }
}

/// The cluster policies' rule ids: every rule of every cluster policy gets one, after the
/// NetworkPolicies' (`rules` holds those), selected on this node or not, so a rule has the
/// same id on every node. Returns each policy's first id, in `cluster.cluster_policies` order.
pub(super) fn number_rules(cluster: &Cluster, rules: &mut Vec<RuleRef>) -> Vec<RuleId> {
    let mut firsts = Vec::with_capacity(cluster.cluster_policies.len());
    for policy in cluster.cluster_policies.values() {
        firsts.push(rules.len() as RuleId + 1);
        let lists = [
            (Direction::Ingress, &policy.ingress),
            (Direction::Egress, &policy.egress),
        ];
        for (direction, list) in lists {
            for (index, rule) in list.iter().enumerate() {
                rules.push(RuleRef {
                    policy: super::tables::PolicyRef::Cluster {
                        tier: policy.tier,
                        key: policy.key.clone(),
                    },
                    direction,
                    index,
                    action: Some(rule.action),
                    name: rule.name.clone(),
                });
            }
        }
    }
    firsts
}

/// The cluster policies of `tier` that select `pod`, with their first rule id, in evaluation
/// order: ascending priority; equal priorities by kind, then name (the API leaves the choice
/// to the implementation; this one is stable and the same on every node). `staged`: the
/// staged ones instead of those in force.
pub(super) fn policies_of<'c>(
    cluster: &'c Cluster,
    firsts: &[RuleId],
    (tier, staged): (Tier, bool),
    pod: &Pod,
    index: &ClusterIndex<'_>,
) -> Vec<(&'c ClusterPolicy, RuleId)> {
    let mut out: Vec<(&ClusterPolicy, RuleId)> = cluster
        .cluster_policies
        .values()
        .zip(firsts.iter().copied())
        .filter(|(p, _)| p.tier == tier && p.staged == staged && selects(&p.subject, pod, index))
        .collect();
    out.sort_by(|(a, _), (b, _)| a.order_key().cmp(&b.order_key()));
    out
}

fn selects(subject: &Subject, pod: &Pod, index: &ClusterIndex<'_>) -> bool {
    match subject {
        Subject::Namespaces(ns) => index.namespace_matches(&pod.key.namespace, ns),
        Subject::Pods { namespaces, pods } => {
            index.namespace_matches(&pod.key.namespace, namespaces) && pods.matches(&pod.labels)
        }
    }
}

/// The rules of `policies` (in order) for `pod` in `direction`.
pub(super) fn tier_rules(
    cluster: &Cluster,
    policies: &[(&ClusterPolicy, RuleId)],
    pod: &Pod,
    direction: Direction,
    index: &ClusterIndex<'_>,
) -> TierRules {
    let mut out = TierRules::default();
    for (policy, first) in policies {
        let (list, first) = match direction {
            Direction::Ingress => (&policy.ingress, *first),
            Direction::Egress => (&policy.egress, *first + policy.ingress.len() as RuleId),
        };
        if list.is_empty() {
            continue;
        }
        out.policies.insert(policy.key.clone());
        for (i, rule) in list.iter().enumerate() {
            out.rules.push(TierRule {
                id: first + i as RuleId,
                order: (policy.priority, policy.key.clone()),
                action: rule.action,
                matches: rule_matches(cluster, rule, pod, direction, index),
            });
        }
    }
    out
}

/// The keys one rule matches for `pod` (the subject) in `direction`.
fn rule_matches(
    cluster: &Cluster,
    rule: &ClusterRule,
    pod: &Pod,
    direction: Direction,
    index: &ClusterIndex<'_>,
) -> Vec<Allow> {
    let peers = rule_peers(cluster, rule, index);
    let key = |peer, proto, ports| Allow {
        direction,
        peer,
        proto,
        ports,
    };
    let mut out = Vec::new();
    let Some(protocols) = &rule.protocols else {
        out.extend(peers.iter().map(|p| key(*p, Proto::Any, PortPrefix::ALL)));
        return out;
    };
    for m in protocols {
        match m {
            ProtocolMatch::Ports {
                protocol,
                start,
                end,
            } => {
                let blocks = if (*start, *end) == (0, u16::MAX) {
                    vec![PortPrefix::ALL]
                } else {
                    port_range_prefixes(*start, *end)
                };
                for peer in &peers {
                    for b in &blocks {
                        out.push(key(*peer, proto_of(*protocol), *b));
                    }
                }
            }
            // The destination's container port of that name, with its own protocol: for
            // ingress the subject, for egress each peer pod.
            ProtocolMatch::NamedPort(name) => match direction {
                Direction::Ingress => {
                    for (proto, port) in named(pod, name) {
                        out.extend(
                            peers
                                .iter()
                                .map(|p| key(*p, proto, PortPrefix::single(port))),
                        );
                    }
                }
                Direction::Egress => {
                    for peer in &peers {
                        let Peer::Prefix(net) = peer else { continue };
                        let Some(dst) = index.pod_prefixes().by_prefix.get(net) else {
                            continue;
                        };
                        for (proto, port) in named(dst, name) {
                            out.push(key(*peer, proto, PortPrefix::single(port)));
                        }
                    }
                }
            },
        }
    }
    out
}

/// A pod's container ports called `name`: (protocol, number).
fn named<'p>(pod: &'p Pod, name: &'p str) -> impl Iterator<Item = (Proto, u16)> + 'p {
    pod.ports
        .iter()
        .filter(move |p| p.name.as_deref() == Some(name))
        .map(|p| (proto_of(p.protocol), p.number))
}

/// The peers of a rule as table prefixes (or every address, for a fail-closed `All`).
fn rule_peers(cluster: &Cluster, rule: &ClusterRule, index: &ClusterIndex<'_>) -> Vec<Peer> {
    let mut set: BTreeSet<IpNet> = BTreeSet::new();
    for peer in &rule.peers {
        match peer {
            ClusterPeer::All => return vec![Peer::Any],
            ClusterPeer::Namespaces(ns) => {
                set.extend(pods_matching(index, ns, &LabelSelector::default()));
            }
            ClusterPeer::Pods { namespaces, pods } => {
                set.extend(pods_matching(index, namespaces, pods));
            }
            ClusterPeer::Networks(nets) => {
                for net in nets {
                    set.extend(index.prefixes_inside(*net, &[]));
                }
            }
            ClusterPeer::Nodes(sel) => {
                for (name, addrs) in &cluster.nodes {
                    let labels = cluster.node_labels.get(name);
                    if labels.is_some_and(|l| sel.matches(l))
                        || (labels.is_none() && sel.is_empty())
                    {
                        set.extend(addrs.iter().map(|ip| host_prefix(*ip)));
                    }
                }
            }
            // Names are not resolved: they match nothing (only Accept rules have them).
            ClusterPeer::DomainNames(_) => {}
        }
    }
    set.into_iter().map(Peer::Prefix).collect()
}

fn pods_matching<'a, 'c: 'a>(
    index: &'a ClusterIndex<'c>,
    namespaces: &'a LabelSelector,
    pods: &'a LabelSelector,
) -> impl Iterator<Item = IpNet> + use<'a, 'c> {
    index
        .namespaces_matching(namespaces)
        .flat_map(move |ns| index.pods_in(ns))
        .filter(move |p| pods.matches(&p.labels))
        .flat_map(|p| p.ips.iter().map(|ip| host_prefix(*ip)))
}
