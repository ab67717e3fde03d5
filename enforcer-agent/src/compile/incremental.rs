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
//! What changed is found by diffs of the cluster's maps against the previous compile's copies
//! (persistent maps: the diff skips what they share, so it costs what changed, not the
//! cluster), and the identity prefix table is edited from the changed pods
//! (`prefixes.rs`).
//!
//! The result is always what [`compile`](super::compile) gives for the same input (the
//! tests compare the two over sequences of changes).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use imbl::ordmap::DiffItem;
use ipnet::IpNet;

use super::prefixes::{KeptPrefixes, PodChange};
use super::services::{compile_services_checked, update_services, Frontends};
use super::{
    compile_reusing, is_endpoint, EndpointPlan, Known, NodeInput, RuleId, RuleRef, Tables,
};
use crate::model::cluster_policy::{ClusterPolicy, ClusterPolicyKey};
use crate::model::{
    Cluster, EndpointSlice, Labels, Map, Namespace, NetworkPolicy, PeerSpec, Pod, PodKey,
    PolicyKey, PortRef, Service, ServiceKey, SliceKey,
};

/// Compiles like [`compile`](super::compile), reusing what the previous compile of this
/// value produced where its inputs did not change.
#[derive(Default)]
pub struct Compiler {
    previous: Option<Previous>,
}

/// What the previous compile read and produced, for the next one's comparison.
struct Previous {
    node: NodeInput,
    /// The cluster's maps as they were (shared copies: the diff to the next skips what they
    /// still share).
    namespaces: Map<String, Namespace>,
    pods: Map<PodKey, Arc<Pod>>,
    policies: Map<PolicyKey, NetworkPolicy>,
    services: Map<ServiceKey, Service>,
    endpoint_slices: Map<SliceKey, EndpointSlice>,
    cluster_policies: Map<ClusterPolicyKey, ClusterPolicy>,
    nodes: Map<String, Vec<std::net::IpAddr>>,
    /// The identity prefix table, edited from the changed pods at the next compile.
    prefixes: KeptPrefixes,
    /// The node's endpoints, edited from the changed pods.
    local: BTreeSet<PodKey>,
    /// The Service frontends, and whether two claimed one address (then each compile
    /// compiles them all).
    frontends: Frontends,
    frontends_collided: bool,
    rules: Arc<Vec<RuleRef>>,
    endpoints: BTreeMap<PodKey, Arc<EndpointPlan>>,
}

impl Compiler {
    /// The tables for `cluster` on `node`, equal to `compile(cluster, node)`.
    pub fn compile(&mut self, cluster: &Cluster, node: &NodeInput) -> Tables {
        let mut previous = self.previous.take();
        let (pod_changes, kept, moved, local) = match previous.as_mut() {
            Some(prev) => {
                let changes = pod_changes(&prev.pods, &cluster.pods);
                let mut kept = std::mem::take(&mut prev.prefixes);
                // The claims that are not pods' come from the policies, the cluster policies,
                // the Nodes and this node: looked at again only when one of them changed.
                let others_changed = prev.node != *node
                    || differ(&prev.policies, &cluster.policies)
                    || differ(&prev.cluster_policies, &cluster.cluster_policies)
                    || differ(&prev.nodes, &cluster.nodes);
                let moved = kept.update(cluster, node, &changes, others_changed);
                let local = if prev.node == *node {
                    let mut local = std::mem::take(&mut prev.local);
                    for (old, new) in &changes {
                        if let Some(old) = old {
                            local.remove(&old.key);
                        }
                        if let Some(new) = new.as_ref().filter(|p| is_endpoint(node, p)) {
                            local.insert(new.key.clone());
                        }
                    }
                    local
                } else {
                    endpoints_of(cluster, node)
                };
                (changes, kept, moved, local)
            }
            None => (
                Vec::new(),
                KeptPrefixes::new(cluster, node),
                Vec::new(),
                endpoints_of(cluster, node),
            ),
        };
        let reusable = previous.as_ref().filter(|prev| {
            cluster.cluster_policies.is_empty()
                && !cluster.policies.values().any(|p| p.staged)
                && prev.node == *node
                && prev.namespaces == cluster.namespaces
        });
        let table = kept.table();
        let (frontends, frontends_collided) =
            frontends(previous.as_ref(), cluster, node, &pod_changes);
        let known = |rules: Option<Arc<Vec<RuleRef>>>| Known {
            prefixes: table.clone(),
            rules,
            services: Some(frontends.clone()),
            local: Some(&local),
        };
        let tables = match reusable {
            None => compile_reusing(cluster, node, known(None), &mut |_, _| None),
            Some(prev) => {
                let policy_changes: Vec<_> = prev.policies.diff(&cluster.policies).collect();
                // Namespaces with a pod or a NetworkPolicy added, removed or changed.
                let changed = changed_namespaces(&pod_changes, &policy_changes);
                // No policy came or went, and each changed one kept its number of rules: the
                // rules are numbered as before (no cluster policy here).
                let known_rules = policy_changes
                    .iter()
                    .all(|change| match change {
                        DiffItem::Update {
                            old: (_, before),
                            new: (_, after),
                        } => rule_counts(before) == rule_counts(after),
                        _ => false,
                    })
                    .then(|| prev.rules.clone());
                let mut reused = BTreeSet::new();
                // Asked once: the rules are the same for every pod of one compile.
                let mut same_rules: Option<bool> = known_rules.is_some().then_some(true);
                let mut moved_rules: Option<Vec<Option<RuleId>>> = None;
                let tables = compile_reusing(
                    cluster,
                    node,
                    known(known_rules.clone()),
                    &mut |pod, rules| {
                        let plan = reuse(prev, cluster, &changed, pod)?;
                        let plan =
                            if *same_rules.get_or_insert_with(|| prev.rules.as_slice() == rules) {
                                plan.clone()
                            } else {
                                let ids = moved_rules
                                    .get_or_insert_with(|| moved_ids(&prev.rules, rules));
                                Arc::new(renumber(plan, ids)?)
                            };
                        reused.insert(pod.key.clone());
                        Some(plan)
                    },
                );
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
                    compile_reusing(cluster, node, known(known_rules), &mut |pod, _| {
                        (!stale.contains(&pod.key)).then(|| kept_plans.get(&pod.key).cloned())?
                    })
                }
            }
        };
        drop(previous);
        self.previous = Some(Previous {
            node: node.clone(),
            namespaces: cluster.namespaces.clone(),
            pods: cluster.pods.clone(),
            policies: cluster.policies.clone(),
            services: cluster.services.clone(),
            endpoint_slices: cluster.endpoint_slices.clone(),
            cluster_policies: cluster.cluster_policies.clone(),
            nodes: cluster.nodes.clone(),
            prefixes: kept,
            local,
            frontends,
            frontends_collided,
            rules: tables.rules.clone(),
            endpoints: tables.endpoints.clone(),
        });
        tables
    }
}

/// Whether two versions of a map differ (a diff: what they share is not looked at).
fn differ<K: Ord + Clone, V: Clone + PartialEq>(old: &Map<K, V>, new: &Map<K, V>) -> bool {
    old.diff(new).next().is_some()
}

/// The keys of the node's endpoints, found among all pods.
fn endpoints_of(cluster: &Cluster, node: &NodeInput) -> BTreeSet<PodKey> {
    cluster
        .pods
        .values()
        .filter(|p| is_endpoint(node, p))
        .map(|p| p.key.clone())
        .collect()
}

/// The Service frontends: the previous compile's with the Services whose frontends may have
/// changed compiled again (same node, and no two frontends claimed one address), else all.
/// A Service's frontends are read from the Service, the pods of its namespace (a selector's)
/// or its EndpointSlices and every pod (whose addresses they name), and the node.
fn frontends(
    previous: Option<&Previous>,
    cluster: &Cluster,
    node: &NodeInput,
    pod_changes: &[PodChange],
) -> (Frontends, bool) {
    let Some(prev) = previous.filter(|p| p.node == *node && !p.frontends_collided) else {
        return compile_services_checked(cluster, node);
    };
    let mut stale: BTreeSet<ServiceKey> = prev
        .services
        .diff(&cluster.services)
        .map(|change| match change {
            DiffItem::Add(key, _) | DiffItem::Remove(key, _) => key.clone(),
            DiffItem::Update { new: (key, _), .. } => key.clone(),
        })
        .collect();
    let pod_namespaces: BTreeSet<&str> = pod_changes
        .iter()
        .filter_map(|(old, new)| new.as_ref().or(old.as_ref()))
        .map(|pod| pod.key.namespace.as_str())
        .collect();
    // A Service without a selector reads its EndpointSlices and, for each address they name,
    // the pod there (the first in key order that has it): it is stale when one of its slices
    // changed, or a changed pod had or has one of those addresses. (Every cluster has one,
    // `default/kubernetes`: recompiling it at every pod change would index every pod's
    // address at every change.)
    let mut slice_services: BTreeSet<(&str, &str)> = BTreeSet::new();
    for change in prev.endpoint_slices.diff(&cluster.endpoint_slices) {
        let (old, new) = match change {
            DiffItem::Add(_, s) => (None, Some(s)),
            DiffItem::Remove(_, s) => (Some(s), None),
            DiffItem::Update { old, new } => (Some(old.1), Some(new.1)),
        };
        for slice in old.into_iter().chain(new) {
            if let Some(svc) = &slice.service {
                slice_services.insert((slice.key.namespace.as_str(), svc.as_str()));
            }
        }
    }
    let pod_ips: BTreeSet<IpAddr> = pod_changes
        .iter()
        .flat_map(|(old, new)| old.iter().chain(new.iter()))
        .flat_map(|pod| pod.ips.iter().copied())
        .collect();
    if !pod_namespaces.is_empty() || !slice_services.is_empty() {
        for svc in cluster.services.values() {
            let touched = match svc.selector {
                Some(_) => pod_namespaces.contains(svc.key.namespace.as_str()),
                None => {
                    slice_services.contains(&(svc.key.namespace.as_str(), svc.key.name.as_str()))
                        || (!pod_ips.is_empty()
                            && slices_of(cluster, &svc.key).any(|slice| {
                                slice
                                    .endpoints
                                    .iter()
                                    .flat_map(|e| &e.addresses)
                                    .any(|a| pod_ips.contains(a))
                            }))
                }
            };
            if touched {
                stale.insert(svc.key.clone());
            }
        }
    }
    match update_services(&prev.frontends, &prev.services, cluster, node, &stale) {
        Some(frontends) => (frontends, false),
        None => compile_services_checked(cluster, node),
    }
}

/// The EndpointSlices of a Service (`kubernetes.io/service-name`): those of its namespace that
/// name it.
fn slices_of<'a>(
    cluster: &'a Cluster,
    svc: &'a ServiceKey,
) -> impl Iterator<Item = &'a crate::model::EndpointSlice> + 'a {
    cluster
        .endpoint_slices
        .range(crate::model::SliceKey::new(svc.namespace.as_str(), "")..)
        .take_while(move |(k, _)| k.namespace == svc.namespace)
        .map(|(_, s)| s)
        .filter(move |s| s.service.as_deref() == Some(svc.name.as_str()))
}

/// The pods added, removed or changed between two listings (a diff: what the two maps still
/// share is not looked at).
fn pod_changes(old: &Map<PodKey, Arc<Pod>>, new: &Map<PodKey, Arc<Pod>>) -> Vec<PodChange> {
    old.diff(new)
        .map(|change| match change {
            DiffItem::Add(_, pod) => (None, Some(pod.clone())),
            DiffItem::Update {
                old: (_, before),
                new: (_, after),
            } => (Some(before.clone()), Some(after.clone())),
            DiffItem::Remove(_, pod) => (Some(pod.clone()), None),
        })
        .collect()
}

/// How many rules a policy numbers (ingress, egress).
fn rule_counts(policy: &NetworkPolicy) -> (usize, usize) {
    (
        policy.effective_ingress().len(),
        policy.effective_egress().len(),
    )
}

/// The namespaces with a pod added, removed or changed, or a NetworkPolicy added, removed or
/// changed.
fn changed_namespaces(
    pods: &[PodChange],
    policies: &[DiffItem<'_, '_, PolicyKey, NetworkPolicy>],
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for change in pods {
        if let (Some(pod), _) | (None, Some(pod)) = change {
            out.insert(pod.key.namespace.clone());
        }
    }
    for change in policies {
        let key = match change {
            DiffItem::Add(key, _) | DiffItem::Remove(key, _) => key,
            DiffItem::Update { new: (key, _), .. } => key,
        };
        out.insert(key.namespace.clone());
    }
    out
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
        None => Labels::from_iter([(
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
