//! The compiler a sync loop keeps: [`compile`](super::compile) again at every sync, but the
//! plan of a local pod whose inputs did not change since the previous compile is handed on
//! as it is, so a change that touches one namespace recompiles only the pods it can affect.
//!
//! A local pod's plan (NetworkPolicies only) is read from: its own namespace (the pod, the
//! policies that select it, the pods of that namespace its policies' plain `podSelector` peers
//! name); the namespaces its policies' `namespaceSelector` peers match; the identity prefixes
//! inside its policies' `ipBlock`s; the Namespace objects; the node. So the plan is reused
//! when its namespace is unchanged, no changed namespace matches one of its policies'
//! namespace selectors, no identity prefix inside one of its `ipBlock`s came, went or changed
//! owner, and the Namespace objects and the node are as they were. What the compiler cannot
//! bound that way is compiled afresh every time: egress rules with named ports (each peer
//! is its own destination, wherever it lives), and any cluster with cluster policies or
//! staged policies (their tiers are resolved over the whole plan).
//!
//! The result is always what [`compile`](super::compile) gives for the same input (the
//! tests compare the two over sequences of changes).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use ipnet::IpNet;

use super::prefixes::{KeptPrefixes, PodChange};
use super::{compile_reusing, EndpointPlan, NodeInput, RuleId, RuleRef, Tables};
use crate::model::{Cluster, Labels, Namespace, PeerSpec, Pod, PolicyKey, PortRef};

/// Compiles like [`compile`](super::compile), reusing what the previous compile of this
/// value produced where its inputs did not change.
#[derive(Default)]
pub struct Compiler {
    previous: Option<Previous>,
    hasher: foldhash::quality::RandomState,
}

/// What the previous compile read and produced, for the next one's comparison.
struct Previous {
    node: NodeInput,
    namespaces: BTreeMap<String, Namespace>,
    /// Every pod, in key order: kept alive, so an unchanged pod is the same allocation.
    pods: Vec<Arc<Pod>>,
    /// Every NetworkPolicy's key and content hash, in key order.
    policies: Vec<(PolicyKey, u64)>,
    /// The identity prefix table, edited from the changed pods at the next compile.
    prefixes: KeptPrefixes,
    rules: Vec<RuleRef>,
    endpoints: BTreeMap<crate::model::PodKey, Arc<EndpointPlan>>,
}

impl Compiler {
    /// The tables for `cluster` on `node`, equal to `compile(cluster, node)`.
    pub fn compile(&mut self, cluster: &Cluster, node: &NodeInput) -> Tables {
        let policies: Vec<(PolicyKey, u64)> = cluster
            .policies
            .values()
            .map(|p| (p.key.clone(), self.hash(p)))
            .collect();
        let mut previous = self.previous.take();
        let (pods, pod_changes, kept, moved) = match previous.as_mut() {
            Some(prev) => {
                let (pods, changes) = relist(std::mem::take(&mut prev.pods), cluster);
                let mut kept = std::mem::take(&mut prev.prefixes);
                let moved = kept.update(cluster, node, &changes);
                (pods, changes, kept, moved)
            }
            None => (
                cluster.pods.values().cloned().collect(),
                Vec::new(),
                KeptPrefixes::new(cluster, node),
                Vec::new(),
            ),
        };
        let reusable = previous.as_ref().filter(|prev| {
            cluster.cluster_policies.is_empty()
                && !cluster.policies.values().any(|p| p.staged)
                && prev.node == *node
                && prev.namespaces == cluster.namespaces
        });
        let table = kept.table();
        let tables = match reusable {
            None => compile_reusing(cluster, node, table.clone(), &mut |_, _| None),
            Some(prev) => {
                // Namespaces with a pod or a NetworkPolicy added, removed or changed.
                let changed = changed_namespaces(&pod_changes, &prev.policies, &policies);
                let mut reused = BTreeSet::new();
                // Asked once: the rules are the same for every pod of one compile.
                let mut same_rules: Option<bool> = None;
                let mut moved_rules: Option<Vec<Option<RuleId>>> = None;
                let tables = compile_reusing(cluster, node, table.clone(), &mut |pod, rules| {
                    let plan = reuse(prev, cluster, &changed, pod)?;
                    let plan = if *same_rules.get_or_insert_with(|| prev.rules == rules) {
                        plan.clone()
                    } else {
                        let ids = moved_rules.get_or_insert_with(|| moved_ids(&prev.rules, rules));
                        Arc::new(renumber(plan, ids)?)
                    };
                    reused.insert(pod.key.clone());
                    Some(plan)
                });
                // A reused plan whose ipBlocks hold an identity prefix that came, went or
                // changed owner is compiled again.
                let stale: BTreeSet<_> = reused
                    .into_iter()
                    .filter(|key| {
                        !moved.is_empty()
                            && reads_changed_prefixes(cluster, &tables.endpoints[key], &moved)
                    })
                    .collect();
                if stale.is_empty() {
                    tables
                } else {
                    let kept_plans = &tables.endpoints;
                    compile_reusing(cluster, node, table.clone(), &mut |pod, _| {
                        (!stale.contains(&pod.key)).then(|| kept_plans.get(&pod.key).cloned())?
                    })
                }
            }
        };
        drop(previous);
        self.previous = Some(Previous {
            node: node.clone(),
            namespaces: cluster.namespaces.clone(),
            pods,
            policies,
            prefixes: kept,
            rules: tables.rules.clone(),
            endpoints: tables.endpoints.clone(),
        });
        tables
    }

    fn hash(&self, value: &impl Hash) -> u64 {
        self.hasher.hash_one(value)
    }
}

/// The pods of `cluster` in key order, the unchanged ones taken over from the previous
/// listing `old` (no reference count touched: a node sees every pod of the cluster), and the
/// pods added, removed or replaced since.
fn relist(old: Vec<Arc<Pod>>, cluster: &Cluster) -> (Vec<Arc<Pod>>, Vec<PodChange>) {
    let mut out = Vec::with_capacity(cluster.pods.len());
    let mut changes = Vec::new();
    let mut old = old.into_iter().peekable();
    for new in cluster.pods.values() {
        // Pods before this one's key are gone.
        while let Some(gone) = old.next_if(|o| o.key < new.key) {
            changes.push((Some(gone), None));
        }
        match old.next_if(|o| o.key == new.key) {
            Some(same) if Arc::ptr_eq(&same, new) => out.push(same),
            Some(before) => {
                changes.push((Some(before), Some(new.clone())));
                out.push(new.clone());
            }
            None => {
                changes.push((None, Some(new.clone())));
                out.push(new.clone());
            }
        }
    }
    changes.extend(old.map(|gone| (Some(gone), None)));
    (out, changes)
}

/// The namespaces with a pod added, removed or changed (a pod replaced by an equal one is
/// none), or whose NetworkPolicies differ between the two listings (in key order; an
/// unchanged policy hashes the same).
fn changed_namespaces(
    pods: &[PodChange],
    old_policies: &[(PolicyKey, u64)],
    new_policies: &[(PolicyKey, u64)],
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for change in pods {
        match change {
            (Some(old), Some(new)) if old == new => {}
            (Some(pod), _) | (None, Some(pod)) => {
                out.insert(pod.key.namespace.clone());
            }
            (None, None) => {}
        }
    }
    merge(
        old_policies,
        new_policies,
        |a, b| a == b,
        |p| &p.0,
        |p| {
            out.insert(p.0.namespace.clone());
        },
    );
    out
}

/// Walks two key-ordered listings side by side and calls `changed` for every element only
/// one has, or that differs (`same`) between them.
fn merge<T, K: Ord>(
    old: &[T],
    new: &[T],
    same: impl Fn(&T, &T) -> bool,
    key: impl Fn(&T) -> &K,
    mut changed: impl FnMut(&T),
) {
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if same(a, b) => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) => match key(a).cmp(key(b)) {
                std::cmp::Ordering::Less => {
                    changed(a);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    changed(b);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    changed(b);
                    i += 1;
                    j += 1;
                }
            },
            (Some(a), None) => {
                changed(a);
                i += 1;
            }
            (None, Some(b)) => {
                changed(b);
                j += 1;
            }
            (None, None) => unreachable!("the loop condition"),
        }
    }
}

/// The previous plan of `pod`, if its inputs did not change; `None` compiles it afresh.
fn reuse<'p>(
    prev: &'p Previous,
    cluster: &Cluster,
    changed: &BTreeSet<String>,
    pod: &Pod,
) -> Option<&'p Arc<EndpointPlan>> {
    let plan = prev.endpoints.get(&pod.key)?;
    if changed.contains(&pod.key.namespace) {
        return None;
    }
    for key in plan
        .ingress_isolated_by
        .iter()
        .chain(&plan.egress_isolated_by)
    {
        let policy = cluster.policies.get(key)?;
        let rules_of = policy
            .effective_ingress()
            .iter()
            .chain(policy.effective_egress());
        for rule in rules_of {
            for peer in &rule.peers {
                if let PeerSpec::Selector {
                    namespace: Some(sel),
                    ..
                } = peer
                {
                    let hit = changed
                        .iter()
                        .any(|ns| sel.matches(&namespace_labels(cluster, ns)));
                    if hit {
                        return None;
                    }
                }
            }
        }
        let named_egress = policy
            .effective_egress()
            .iter()
            .flat_map(|r| &r.ports)
            .any(|p| matches!(p.port, Some(PortRef::Name(_))));
        if named_egress && !changed.is_empty() {
            return None;
        }
    }
    Some(plan)
}

/// The labels namespace `name` is selected by (as the compiler's index has them).
fn namespace_labels(cluster: &Cluster, name: &str) -> Labels {
    match cluster.namespaces.get(name) {
        Some(ns) => ns.labels.clone(),
        None => Labels::from([(
            crate::model::NAMESPACE_NAME_LABEL.to_owned(),
            name.to_owned(),
        )]),
    }
}

/// Whether a plan's policies have an `ipBlock` that holds one of the changed prefixes.
fn reads_changed_prefixes(cluster: &Cluster, plan: &EndpointPlan, changed: &[IpNet]) -> bool {
    plan.ingress_isolated_by
        .iter()
        .chain(&plan.egress_isolated_by)
        .filter_map(|key| cluster.policies.get(key))
        .flat_map(|p| p.effective_ingress().iter().chain(p.effective_egress()))
        .flat_map(|r| &r.peers)
        .any(|peer| match peer {
            PeerSpec::IpBlock { cidr, .. } => changed.iter().any(|net| cidr.contains(net)),
            PeerSpec::Selector { .. } => false,
        })
}

/// Each old rule id's new one (`out[old - 1]`), `None` for a rule that is gone.
fn moved_ids(old: &[RuleRef], new: &[RuleRef]) -> Vec<Option<RuleId>> {
    let position: BTreeMap<&RuleRef, RuleId> = new
        .iter()
        .enumerate()
        .map(|(i, r)| (r, i as RuleId + 1))
        .collect();
    old.iter().map(|r| position.get(r).copied()).collect()
}

/// The plan with its rule ids moved to their new positions; `None` when one of its rules is
/// gone (it is then compiled afresh).
fn renumber(plan: &EndpointPlan, moved: &[Option<RuleId>]) -> Option<EndpointPlan> {
    let mut plan = plan.clone();
    for id in plan.allows.values_mut() {
        if *id != 0 {
            *id = (*moved.get(*id as usize - 1)?)?;
        }
    }
    Some(plan)
}
