//! The identity prefix table: every prefix the policies can tell apart, with its owner (see
//! the compiler's module comment). Built whole by [`identity_prefixes`]; kept and edited from
//! what changed by [`KeptPrefixes`], which a [`Compiler`](super::Compiler) holds: a cluster
//! has one prefix per pod address, and a change touches a handful.
//!
//! Who owns a prefix: a pod that has the address (the first in key order, should two claim
//! it), else this node (one of its addresses), else a `cidr` (an ipBlock's `cidr` or `except`,
//! a cluster policy's network, another node's address, a family's default route).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ipnet::IpNet;

use super::{host_prefix, NodeInput, PrefixOwner, PrefixTable};
use crate::model::cluster_policy::ClusterPeer;
use crate::model::{Cluster, PeerSpec, Pod, PodKey};

/// Every prefix of the identity tries, with its owner.
pub(super) fn identity_prefixes(cluster: &Cluster, node: &NodeInput) -> PrefixTable {
    // Claims are collected, sorted by prefix and rank, and the best of each prefix kept: one
    // sort for every pod address of the cluster.
    let others = other_claims(cluster, node);
    let mut claims: Vec<(IpNet, Rank, Option<&Pod>)> =
        Vec::with_capacity(cluster.pods.len() + others.len());
    claims.extend(others.iter().map(|(net, owner)| (*net, rank(owner), None)));
    // Should two pods claim one address, the first pod (in key order) keeps it.
    for (i, pod) in cluster.pods.values().enumerate() {
        for ip in &pod.ips {
            claims.push((host_prefix(*ip), Rank::Pod(i), Some(pod)));
        }
    }
    claims.sort_unstable_by_key(|&(net, rank, _)| (net, rank));
    claims.dedup_by(|later, first| later.0 == first.0);
    claims
        .into_iter()
        .map(|(net, rank, pod)| {
            let owner = match (rank, pod) {
                (Rank::Pod(_), Some(pod)) => PrefixOwner::Pod(pod.key.clone()),
                (Rank::Host, _) => PrefixOwner::Host,
                _ => PrefixOwner::Cidr,
            };
            (net, owner)
        })
        .collect()
}

/// The claims that are not pods': each prefix's best (this node's over a cidr's).
fn other_claims(cluster: &Cluster, node: &NodeInput) -> BTreeMap<IpNet, PrefixOwner> {
    let mut out = BTreeMap::new();
    let mut cidr = |net: IpNet| {
        out.entry(net).or_insert(PrefixOwner::Cidr);
    };
    cidr("0.0.0.0/0".parse().expect("valid"));
    cidr("::/0".parse().expect("valid"));
    for policy in cluster.policies.values() {
        let rules = policy.ingress.iter().chain(&policy.egress).flatten();
        for peer in rules.flat_map(|r| &r.peers) {
            if let PeerSpec::IpBlock {
                cidr: block,
                except,
            } = peer
            {
                for net in std::iter::once(block).chain(except) {
                    cidr(net.trunc());
                }
            }
        }
    }
    for policy in cluster.cluster_policies.values() {
        let rules = policy.ingress.iter().chain(&policy.egress);
        for peer in rules.flat_map(|r| &r.peers) {
            match peer {
                ClusterPeer::Networks(nets) => {
                    for net in nets {
                        cidr(net.trunc());
                    }
                }
                // Other nodes' addresses, so that a `nodes` peer can name them.
                ClusterPeer::Nodes(_) => {
                    for ip in cluster.nodes.values().flatten() {
                        cidr(host_prefix(*ip));
                    }
                }
                _ => {}
            }
        }
    }
    for ip in &node.host_ips {
        out.insert(host_prefix(*ip), PrefixOwner::Host);
    }
    out
}

/// Which claim on a prefix wins: a pod's (the first pod's), then this node's, then a cidr's.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Pod(usize),
    Host,
    Cidr,
}

fn rank(owner: &PrefixOwner) -> Rank {
    match owner {
        PrefixOwner::Host => Rank::Host,
        _ => Rank::Cidr,
    }
}

/// A pod that was added (`None, Some`), removed (`Some, None`) or replaced (by another
/// allocation, maybe equal) since the last compile.
pub(super) type PodChange = (Option<Arc<Pod>>, Option<Arc<Pod>>);

/// The prefix table of the last compile, with what it was made of, for the next compile to
/// edit: equal to [`identity_prefixes`] of the cluster it was last updated with.
///
/// Which pods claim an address is the table's owner when one does (a pod outranks every other
/// claim); only addresses that several pods claim are listed apart (`shared`), so a cluster
/// of pods with addresses of their own costs nothing here beyond the table.
#[derive(Default)]
pub(super) struct KeptPrefixes {
    table: PrefixTable,
    others: BTreeMap<IpNet, PrefixOwner>,
    /// Every pod claiming an address two or more pods claim.
    shared: HashMap<IpNet, Vec<PodKey>, foldhash::fast::RandomState>,
}

/// What happened to one address's claims: the pods that let go of it, those that took it.
#[derive(Default)]
struct Claims {
    gone: Vec<PodKey>,
    came: Vec<PodKey>,
}

impl KeptPrefixes {
    pub(super) fn new(cluster: &Cluster, node: &NodeInput) -> Self {
        let mut first: HashMap<IpNet, &PodKey, foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(cluster.pods.len(), Default::default());
        let mut shared: HashMap<IpNet, Vec<PodKey>, _> = HashMap::default();
        for pod in cluster.pods.values() {
            for ip in &pod.ips {
                let net = host_prefix(*ip);
                match first.get(&net) {
                    None => {
                        first.insert(net, &pod.key);
                    }
                    Some(&one) if *one == pod.key => {}
                    Some(&one) => {
                        let list = shared.entry(net).or_insert_with(|| vec![one.clone()]);
                        if !list.contains(&pod.key) {
                            list.push(pod.key.clone());
                        }
                    }
                }
            }
        }
        KeptPrefixes {
            table: identity_prefixes(cluster, node),
            others: other_claims(cluster, node),
            shared,
        }
    }

    /// The table (shares its structure with the one kept: cloning it is cheap).
    pub(super) fn table(&self) -> &PrefixTable {
        &self.table
    }

    /// Brings the table to `cluster` on `node`, given the pods that changed since the last
    /// update and whether the other claims may have (`others_changed`: a policy, a cluster
    /// policy, a Node or the node changed); returns the prefixes that came, went or changed
    /// owner, in order.
    pub(super) fn update(
        &mut self,
        cluster: &Cluster,
        node: &NodeInput,
        changed: &[PodChange],
        others_changed: bool,
    ) -> Vec<IpNet> {
        let mut touched: BTreeMap<IpNet, Claims> = BTreeMap::new();
        for (old, new) in changed {
            if let Some(pod) = old {
                for ip in &pod.ips {
                    let claims = touched.entry(host_prefix(*ip)).or_default();
                    claims.gone.push(pod.key.clone());
                }
            }
            if let Some(pod) = new {
                for ip in &pod.ips {
                    let claims = touched.entry(host_prefix(*ip)).or_default();
                    claims.came.push(pod.key.clone());
                }
            }
        }
        if others_changed {
            let others = other_claims(cluster, node);
            if others != self.others {
                let mut nets = BTreeSet::new();
                merge_keys(&self.others, &others, &mut nets);
                for net in nets {
                    touched.entry(net).or_default();
                }
                self.others = others;
            }
        }
        let mut moved = Vec::new();
        for (net, claims) in touched {
            // The pods claiming it before: listed apart, or the table's owner, or none.
            let mut pods = match self.shared.remove(&net) {
                Some(pods) => pods,
                None => match self.table.get(&net) {
                    Some(PrefixOwner::Pod(key)) => vec![key.clone()],
                    _ => Vec::new(),
                },
            };
            pods.retain(|key| !claims.gone.contains(key));
            for key in claims.came {
                // An address listed twice by one pod is one claim.
                if !pods.contains(&key) {
                    pods.push(key);
                }
            }
            let owner = match pods.iter().min() {
                Some(key) => Some(PrefixOwner::Pod(key.clone())),
                None => self.others.get(&net).cloned(),
            };
            if pods.len() > 1 {
                self.shared.insert(net, pods);
            }
            let before = match owner {
                Some(owner) if self.table.get(&net) == Some(&owner) => continue,
                Some(owner) => self.table.insert(net, owner),
                None => self.table.remove(&net),
            };
            // A prefix that was not there and still is not is no change.
            if before.is_some() || self.table.contains_key(&net) {
                moved.push(net);
            }
        }
        moved
    }
}

/// Adds to `out` every key only one of the maps has, or whose value differs.
fn merge_keys(
    old: &BTreeMap<IpNet, PrefixOwner>,
    new: &BTreeMap<IpNet, PrefixOwner>,
    out: &mut BTreeSet<IpNet>,
) {
    for (net, owner) in old {
        if new.get(net) != Some(owner) {
            out.insert(*net);
        }
    }
    for net in new.keys() {
        if !old.contains_key(net) {
            out.insert(*net);
        }
    }
}
