//! The policy compiler: a pure function from the cluster model to the tables the kernel reads
//! for one node (no I/O, no clock, no globals; the same input always gives the same output).
//!
//! Identity model: every address the policies can tell apart is a prefix of
//! [`Tables::prefixes`] (pod addresses, host addresses, ipBlock `cidr`s and `except`s, and both
//! default routes), and an address's identity is its longest matching prefix there. Because
//! every `cidr` and `except` is itself in the table, "address in `cidr` and in no `except`"
//! is exactly "identity prefix inside `cidr` and inside no `except`", so an ipBlock becomes
//! the list of table prefixes it covers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::model::cluster_policy::{ClusterPolicy, Tier};
use crate::model::{
    Cluster, Labels, NetworkPolicy, PeerSpec, Pod, PodKey, PortRef, PortSpec, Protocol, Rule,
    NAMESPACE_NAME_LABEL,
};

mod evaluate;
mod incremental;
mod prefixes;
mod resolve;
pub mod services;
pub mod tables;
mod tiers;

pub use evaluate::{evaluate, identity_of, Decision, Verdict};
pub use incremental::Compiler;
pub use tables::*;

#[cfg(test)]
mod tests;

/// The node the tables are compiled for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInput {
    /// Matched against `spec.nodeName`; pods without one are local too.
    pub name: String,
    /// This node's addresses: traffic from/to them is always allowed (kubelet probes).
    pub host_ips: Vec<IpAddr>,
    /// Policy audit mode for every local pod (`--policy-audit-mode`); pods of a namespace
    /// labelled [`AUDIT_LABEL`]`=true` are audited either way.
    pub audit: bool,
}

/// A namespace with this label set to `true` has its pods' policies audited, not enforced:
/// flows the policies deny pass and are reported with the `audit` verdict.
pub const AUDIT_LABEL: &str = "policy.enforcer.dev/audit";

impl NodeInput {
    pub fn is_local(&self, pod: &Pod) -> bool {
        pod.node.as_deref().is_none_or(|n| n == self.name)
    }
}

/// Compiles the allow entries of every local pod of `node`.
pub fn compile(cluster: &Cluster, node: &NodeInput) -> Tables {
    let known = Known {
        prefixes: prefixes::identity_prefixes(cluster, node),
        rules: None,
        services: None,
        local: None,
    };
    compile_reusing(cluster, node, known, &mut |_, _| None)
}

/// Whether `pod` is one of the node's endpoints: on it, with an address.
pub(crate) fn is_endpoint(node: &NodeInput, pod: &Pod) -> bool {
    node.is_local(pod) && !pod.ips.is_empty()
}

/// What the caller of [`compile_reusing`] already has of this compile's output.
pub(crate) struct Known<'a> {
    /// The identity prefixes: always given (`prefixes::identity_prefixes(cluster, node)`;
    /// [`Compiler`] keeps them up to date).
    pub prefixes: PrefixTable,
    /// The NetworkPolicies' rules, when known ([`number_rules`] of this cluster: the previous
    /// compile's when no policy came, went or changed its number of rules); only without
    /// cluster policies.
    pub rules: Option<Arc<Vec<RuleRef>>>,
    /// The Service frontends, when known (`services::compile_services(cluster, node)`).
    pub services: Option<services::Frontends>,
    /// The keys of the node's endpoints ([`is_endpoint`]), when known.
    pub local: Option<&'a BTreeSet<PodKey>>,
}

/// Given a local pod and the rules as numbered in this compile: the plan to take as it is.
pub(crate) type Reuse<'a> = dyn FnMut(&Pod, &[RuleRef]) -> Option<Arc<EndpointPlan>> + 'a;

/// [`compile`], with what the caller already has of the output taken as it is (`known`), and
/// the plans of the local pods `reuse` answers for ([`Compiler`] answers for those whose
/// inputs did not change; it is given each local pod and the rules as numbered in this
/// compile). Those pods' policies are not resolved.
pub(crate) fn compile_reusing(
    cluster: &Cluster,
    node: &NodeInput,
    known: Known<'_>,
    reuse: &mut Reuse<'_>,
) -> Tables {
    let Known {
        prefixes,
        rules: known_rules,
        services: known_services,
        local: known_local,
    } = known;
    let index = ClusterIndex::new(cluster, &prefixes);

    let mut rules = match known_rules {
        Some(rules) if cluster.cluster_policies.is_empty() => rules,
        _ => Arc::new(number_rules(cluster)),
    };
    let first_ids = first_rule_ids(cluster);

    let mut reused: BTreeMap<PodKey, Arc<EndpointPlan>> = BTreeMap::new();
    // The local pods: as the caller keeps them, or found among all pods.
    let local: Box<dyn Iterator<Item = &Arc<Pod>>> = match known_local {
        Some(keys) => Box::new(keys.iter().filter_map(|key| cluster.pods.get(key))),
        None => Box::new(cluster.pods.values().filter(|p| is_endpoint(node, p))),
    };
    let mut endpoints: BTreeMap<PodKey, EndpointPlan> = local
        .filter(|p| match reuse(p, rules.as_slice()) {
            Some(plan) => {
                reused.insert(p.key.clone(), plan);
                false
            }
            None => true,
        })
        .map(|p| {
            let plan = EndpointPlan {
                ipv4: p.ips.iter().find_map(|ip| match ip {
                    IpAddr::V4(a) => Some(*a),
                    IpAddr::V6(_) => None,
                }),
                ipv6: p.ips.iter().find_map(|ip| match ip {
                    IpAddr::V6(a) => Some(*a),
                    IpAddr::V4(_) => None,
                }),
                audit: node.audit
                    || cluster
                        .namespaces
                        .get(&p.key.namespace)
                        .and_then(|ns| ns.labels.get(AUDIT_LABEL))
                        .is_some_and(|v| v == "true"),
                ..EndpointPlan::default()
            };
            (p.key.clone(), plan)
        })
        .collect();

    let mut staged_np = StagedNetworkPolicies::new();
    for (policy, &first_id) in cluster.policies.values().zip(&first_ids) {
        // The endpoints of the policy's namespace (a range: keyed by namespace first), not
        // all its pods: a node holds few of them.
        let namespace = policy.key.namespace.as_str();
        let selected: Vec<&Pod> = endpoints
            .range(PodKey::new(namespace, "")..)
            .take_while(|(k, _)| k.namespace == namespace)
            .filter_map(|(k, _)| cluster.pods.get(k).map(|p| &**p))
            .filter(|p| policy.pod_selector.matches(&p.labels))
            .collect();
        if selected.is_empty() {
            continue;
        }
        if policy.staged {
            // Compiled on its own: its isolation and allows count only for its staged effect.
            let mut alone: BTreeMap<PodKey, EndpointPlan> = selected
                .iter()
                .map(|p| (p.key.clone(), EndpointPlan::default()))
                .collect();
            compile_policy(policy, first_id, &selected, &index, &mut alone);
            for (pod, plan) in alone {
                staged_np
                    .entry(pod)
                    .or_default()
                    .push((policy.key.clone(), plan));
            }
            continue;
        }
        compile_policy(policy, first_id, &selected, &index, &mut endpoints);
    }
    let staged = compile_tiers(cluster, &index, &mut rules, &staged_np, &mut endpoints);
    let mut endpoints: BTreeMap<PodKey, Arc<EndpointPlan>> = endpoints
        .into_iter()
        .map(|(k, plan)| (k, Arc::new(plan)))
        .collect();
    endpoints.append(&mut reused);

    Tables {
        prefixes,
        endpoints,
        rules,
        staged,
        services: known_services.unwrap_or_else(|| services::compile_services(cluster, node)),
    }
}

/// Every NetworkPolicy's rules in order, rule id `i` being `out[i - 1]`. Ids are handed out
/// to every counted rule, selected or not, so a rule keeps its id whichever node compiles it.
pub(crate) fn number_rules(cluster: &Cluster) -> Vec<RuleRef> {
    let mut rules = Vec::new();
    for policy in cluster.policies.values() {
        for (index, _) in policy.effective_ingress().iter().enumerate() {
            rules.push(RuleRef::network(
                policy.key.clone(),
                Direction::Ingress,
                index,
            ));
        }
        for (index, _) in policy.effective_egress().iter().enumerate() {
            rules.push(RuleRef::network(
                policy.key.clone(),
                Direction::Egress,
                index,
            ));
        }
    }
    rules
}

/// The id of each NetworkPolicy's first rule, in policy order (as [`number_rules`] numbers
/// them).
fn first_rule_ids(cluster: &Cluster) -> Vec<RuleId> {
    let mut next = 1;
    cluster
        .policies
        .values()
        .map(|policy| {
            let first = next;
            next += (policy.effective_ingress().len() + policy.effective_egress().len()) as RuleId;
            first
        })
        .collect()
}

/// Staged NetworkPolicies compiled alone, per selected local pod.
type StagedNetworkPolicies = BTreeMap<PodKey, Vec<(crate::model::PolicyKey, EndpointPlan)>>;

/// Resolves the Admin and Baseline tiers, with the NetworkPolicy entries already compiled,
/// for every local pod and direction that cluster policies or staged policies apply to
/// (`resolve.rs`). Returns the staged entries (`Tables::staged`).
fn compile_tiers(
    cluster: &Cluster,
    index: &ClusterIndex<'_>,
    rules: &mut Arc<Vec<RuleRef>>,
    staged_np: &StagedNetworkPolicies,
    endpoints: &mut BTreeMap<PodKey, EndpointPlan>,
) -> Vec<StagedEntry> {
    if cluster.cluster_policies.is_empty() && staged_np.is_empty() {
        return Vec::new();
    }
    // Only here are the rules written to (a shared numbering is handed on untouched).
    let firsts = tiers::number_rules(cluster, Arc::make_mut(rules));
    let mut ids = resolve::StagedIds::new(rules);
    for (key, plan) in endpoints.iter_mut() {
        let Some(pod) = cluster.pods.get(key) else {
            continue;
        };
        let of = |tier, staged| tiers::policies_of(cluster, &firsts, (tier, staged), pod, index);
        let (admin, baseline) = (of(Tier::Admin, false), of(Tier::Baseline, false));
        let staged_cnp = [of(Tier::Admin, true), of(Tier::Baseline, true)];
        let staged_np = staged_np.get(key).map(Vec::as_slice).unwrap_or_default();
        for direction in [Direction::Ingress, Direction::Egress] {
            let a = tiers::tier_rules(cluster, &admin, pod, direction, index);
            let b = tiers::tier_rules(cluster, &baseline, pod, direction, index);
            let staged = staged_policies(cluster, &staged_cnp, staged_np, pod, direction, index);
            if a.policies.is_empty() && b.policies.is_empty() && staged.is_empty() {
                continue;
            }
            let by: BTreeSet<_> = a.policies.union(&b.policies).cloned().collect();
            let staged_by: BTreeSet<PolicyRef> =
                staged.iter().map(|s| s.policy().clone()).collect();
            match direction {
                Direction::Ingress => {
                    plan.ingress_tiered_by = by;
                    plan.ingress_staged_by = staged_by;
                }
                Direction::Egress => {
                    plan.egress_tiered_by = by;
                    plan.egress_staged_by = staged_by;
                }
            }
            resolve::resolve(plan, direction, (&a, &b), &staged, &mut ids);
        }
    }
    ids.into_entries()
}

/// The staged policies that apply to `pod` in `direction`, in the order their effects are
/// looked for: Admin, then Baseline cluster policies (each tier in evaluation order), then
/// NetworkPolicies by name.
fn staged_policies(
    cluster: &Cluster,
    cluster_policies: &[Vec<(&ClusterPolicy, RuleId)>; 2],
    network: &[(crate::model::PolicyKey, EndpointPlan)],
    pod: &Pod,
    direction: Direction,
    index: &ClusterIndex<'_>,
) -> Vec<resolve::StagedPolicy> {
    let mut out = Vec::new();
    for (tier, list) in [Tier::Admin, Tier::Baseline]
        .into_iter()
        .zip(cluster_policies)
    {
        for one in list {
            let rules =
                tiers::tier_rules(cluster, std::slice::from_ref(one), pod, direction, index);
            if rules.rules.is_empty() {
                continue;
            }
            out.push(resolve::StagedPolicy::Cluster {
                policy: PolicyRef::Cluster {
                    tier,
                    key: one.0.key.clone(),
                },
                tier,
                rules,
            });
        }
    }
    for (key, plan) in network {
        // A staged NetworkPolicy that does not isolate this direction has no effect on it.
        if !plan.isolated(direction) {
            continue;
        }
        out.push(resolve::StagedPolicy::Network {
            policy: PolicyRef::Network(key.clone()),
            allows: plan
                .allows
                .iter()
                .filter(|(a, _)| a.direction == direction)
                .map(|(a, id)| (*a, *id))
                .collect(),
        });
    }
    out
}

/// Adds one policy's isolation and allows to the endpoints of the local pods it selects.
fn compile_policy(
    policy: &NetworkPolicy,
    first_id: RuleId,
    selected: &[&Pod],
    index: &ClusterIndex<'_>,
    endpoints: &mut BTreeMap<PodKey, EndpointPlan>,
) {
    let ingress = policy.effective_ingress();
    let egress = policy.effective_egress();
    let resolved_ingress: Vec<Peers> = ingress
        .iter()
        .map(|r| index.resolve_peers(policy, r))
        .collect();
    let resolved_egress: Vec<Peers> = egress
        .iter()
        .map(|r| index.resolve_peers(policy, r))
        .collect();

    for pod in selected {
        let plan = endpoints
            .get_mut(&pod.key)
            .expect("selected pods are endpoints");
        if policy.types.ingress {
            plan.ingress_isolated_by.insert(policy.key.clone());
        }
        if policy.types.egress {
            plan.egress_isolated_by.insert(policy.key.clone());
        }
        let mut id = first_id;
        for (rule, peers) in ingress.iter().zip(&resolved_ingress) {
            add_rule(plan, Direction::Ingress, id, rule, peers, Some(pod), index);
            id += 1;
        }
        for (rule, peers) in egress.iter().zip(&resolved_egress) {
            add_rule(plan, Direction::Egress, id, rule, peers, None, index);
            id += 1;
        }
    }
}

/// The peers of one rule, independent of the selected pod.
enum Peers {
    Any,
    Prefixes(BTreeSet<IpNet>),
}

/// Adds the allows of one rule. `destination` is the pod named ports are resolved on for
/// ingress (the selected pod); for egress (`None`) each peer is its own destination.
fn add_rule(
    plan: &mut EndpointPlan,
    direction: Direction,
    id: RuleId,
    rule: &Rule,
    peers: &Peers,
    destination: Option<&Pod>,
    index: &ClusterIndex<'_>,
) {
    let mut add = |peer: Peer, proto: Proto, ports: PortPrefix| {
        let entry = plan
            .allows
            .entry(Allow {
                direction,
                peer,
                proto,
                ports,
            })
            .or_insert(id);
        *entry = (*entry).min(id);
    };
    let peer_list: Vec<Peer> = match peers {
        Peers::Any => vec![Peer::Any],
        Peers::Prefixes(set) => set.iter().map(|p| Peer::Prefix(*p)).collect(),
    };
    if rule.ports.is_empty() {
        for peer in &peer_list {
            add(*peer, Proto::Any, PortPrefix::ALL);
        }
        return;
    }
    for spec in &rule.ports {
        let proto = proto_of(spec.protocol);
        match (&spec.port, destination) {
            (Some(PortRef::Name(name)), Some(dst)) => {
                if let Some(n) = dst.named_port(name, spec.protocol) {
                    for peer in &peer_list {
                        add(*peer, proto, PortPrefix::single(n));
                    }
                }
            }
            (Some(PortRef::Name(name)), None) => {
                // Egress: the peer is the destination, so each pod address gets its own port.
                let candidates: Box<dyn Iterator<Item = (IpNet, &Pod)>> = match peers {
                    Peers::Any => Box::new(index.pod_prefixes().list.iter().map(|(n, p)| (*n, *p))),
                    Peers::Prefixes(set) => Box::new(
                        set.iter()
                            .filter_map(|n| Some((*n, *index.pod_prefixes().by_prefix.get(n)?))),
                    ),
                };
                for (net, pod) in candidates {
                    if let Some(n) = pod.named_port(name, spec.protocol) {
                        add(Peer::Prefix(net), proto, PortPrefix::single(n));
                    }
                }
            }
            _ => {
                for ports in port_prefixes(spec) {
                    for peer in &peer_list {
                        add(*peer, proto, ports);
                    }
                }
            }
        }
    }
}

fn proto_of(p: Protocol) -> Proto {
    match p {
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
        Protocol::Sctp => Proto::Sctp,
    }
}

/// The port prefixes of a numeric (or absent) port entry.
fn port_prefixes(spec: &PortSpec) -> Vec<PortPrefix> {
    match (&spec.port, spec.end_port) {
        (None, _) => vec![PortPrefix::ALL],
        (Some(PortRef::Number(start)), end) => port_range_prefixes(*start, end.unwrap_or(*start)),
        (Some(PortRef::Name(_)), _) => Vec::new(),
    }
}

/// The minimal set of port prefixes covering exactly `start..=end` (empty when start > end).
pub fn port_range_prefixes(start: u16, end: u16) -> Vec<PortPrefix> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(start), u32::from(end));
    while lo <= hi {
        // The largest aligned block starting at `lo` that stays within `hi`.
        let mut size_log2 = if lo == 0 {
            16
        } else {
            lo.trailing_zeros().min(16)
        };
        while lo + (1 << size_log2) - 1 > hi {
            size_log2 -= 1;
        }
        out.push(PortPrefix {
            port: lo as u16,
            len: 16 - size_log2 as u8,
        });
        lo += 1 << size_log2;
    }
    out
}

/// The host-length prefix of one address.
pub fn host_prefix(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// Every pod-owned prefix with its pod: in prefix order, and by prefix.
struct PodPrefixes<'a> {
    list: Vec<(IpNet, &'a Pod)>,
    by_prefix: BTreeMap<IpNet, &'a Pod>,
}

/// Lookups the compiler needs, built once per compile.
struct ClusterIndex<'a> {
    prefixes: &'a PrefixTable,
    pods: &'a crate::model::Map<PodKey, Arc<Pod>>,
    /// Labels of each namespace that has pods or a Namespace object. A namespace without an
    /// object (standalone manifests) only has its `kubernetes.io/metadata.name` label.
    namespace_labels: BTreeMap<&'a str, std::borrow::Cow<'a, Labels>>,
    /// Every pod-owned prefix with its pod, in prefix order.
    /// Built on first use (egress rules with named ports): most compiles never need it.
    pod_prefixes: std::cell::OnceCell<PodPrefixes<'a>>,
}

impl<'a> ClusterIndex<'a> {
    fn new(cluster: &'a Cluster, prefixes: &'a PrefixTable) -> Self {
        let mut namespace_labels: BTreeMap<&str, std::borrow::Cow<'a, Labels>> = cluster
            .namespaces
            .values()
            .map(|ns| (ns.name.as_str(), std::borrow::Cow::Borrowed(&ns.labels)))
            .collect();
        // The namespaces that have pods: one lookup each, not a walk over every pod (keyed by
        // namespace first, the pods of the next namespace start at the first key past
        // `namespace + "\0"`, the least string after `namespace`).
        let mut next = cluster.pods.keys().next();
        while let Some(key) = next {
            let ns = key.namespace.as_str();
            namespace_labels.entry(ns).or_insert_with(|| {
                std::borrow::Cow::Owned(Labels::from_iter([(
                    NAMESPACE_NAME_LABEL.to_owned(),
                    ns.to_owned(),
                )]))
            });
            next = cluster
                .pods
                .range(PodKey::new(format!("{ns}\0"), "")..)
                .next()
                .map(|(k, _)| k);
        }
        ClusterIndex {
            prefixes,
            pods: &cluster.pods,
            namespace_labels,
            pod_prefixes: std::cell::OnceCell::new(),
        }
    }

    /// Every pod-owned prefix with its pod.
    fn pod_prefixes(&self) -> &PodPrefixes<'a> {
        self.pod_prefixes.get_or_init(|| {
            let list: Vec<(IpNet, &Pod)> = self
                .prefixes
                .iter()
                .filter_map(|(net, owner)| match owner {
                    PrefixOwner::Pod(key) => Some((*net, &**self.pods.get(key)?)),
                    _ => None,
                })
                .collect();
            let by_prefix = list.iter().copied().collect();
            PodPrefixes { list, by_prefix }
        })
    }

    /// The pods of one namespace: a contiguous range of the pods, keyed by namespace first.
    fn pods_in<'s>(&'s self, namespace: &'s str) -> impl Iterator<Item = &'a Pod> + 's {
        self.pods
            .range(PodKey::new(namespace, "")..)
            .take_while(move |(k, _)| k.namespace == namespace)
            .map(|(_, p)| &**p)
    }

    /// The table prefixes inside `cidr` and inside none of `except`.
    fn prefixes_inside<'s>(
        &'s self,
        cidr: IpNet,
        except: &'s [IpNet],
    ) -> impl Iterator<Item = IpNet> + 's {
        let cidr = cidr.trunc();
        // In IpNet order, the prefixes inside `cidr` follow it contiguously.
        self.prefixes
            .range(cidr..)
            .map(|(n, _)| *n)
            .take_while(move |net| cidr.contains(net))
            .filter(move |net| !except.iter().any(|e| e.contains(net)))
    }

    /// Whether namespace `name`'s labels match `sel`.
    fn namespace_matches(&self, name: &str, sel: &crate::model::LabelSelector) -> bool {
        self.namespace_labels
            .get(name)
            .is_some_and(|labels| sel.matches(labels))
    }

    /// The namespaces whose labels match `sel`.
    fn namespaces_matching<'s>(
        &'s self,
        sel: &'s crate::model::LabelSelector,
    ) -> impl Iterator<Item = &'a str> + 's {
        self.namespace_labels
            .iter()
            .filter(move |(_, labels)| sel.matches(labels))
            .map(|(name, _)| *name)
    }

    /// The peers a rule of `policy` names.
    fn resolve_peers(&self, policy: &NetworkPolicy, rule: &Rule) -> Peers {
        if rule.peers.is_empty() {
            return Peers::Any;
        }
        let mut out = BTreeSet::new();
        for peer in &rule.peers {
            match peer {
                PeerSpec::Selector { namespace, pod } => {
                    let namespaces: Vec<&str> = match namespace {
                        None => vec![policy.key.namespace.as_str()],
                        Some(sel) => self
                            .namespace_labels
                            .iter()
                            .filter(|(_, labels)| sel.matches(labels))
                            .map(|(name, _)| *name)
                            .collect(),
                    };
                    for ns in namespaces {
                        for p in self.pods_in(ns) {
                            if pod.as_ref().is_none_or(|sel| sel.matches(&p.labels)) {
                                out.extend(p.ips.iter().map(|ip| host_prefix(*ip)));
                            }
                        }
                    }
                }
                PeerSpec::IpBlock { cidr, except } => {
                    out.extend(self.prefixes_inside(*cidr, except));
                }
            }
        }
        Peers::Prefixes(out)
    }
}
