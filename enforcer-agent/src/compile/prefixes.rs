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
#[derive(Default)]
pub(super) struct KeptPrefixes {
    table: PrefixTable,
    others: BTreeMap<IpNet, PrefixOwner>,
    /// The pods that have each address (almost always one).
    claimants: HashMap<IpNet, Vec<PodKey>, foldhash::fast::RandomState>,
}

impl KeptPrefixes {
    pub(super) fn new(cluster: &Cluster, node: &NodeInput) -> Self {
        let mut claimants: HashMap<IpNet, Vec<PodKey>, _> = HashMap::with_capacity_and_hasher(
            cluster.pods.len(),
            foldhash::fast::RandomState::default(),
        );
        for pod in cluster.pods.values() {
            for ip in &pod.ips {
                let list = claimants.entry(host_prefix(*ip)).or_default();
                if !list.contains(&pod.key) {
                    list.push(pod.key.clone());
                }
            }
        }
        KeptPrefixes {
            table: identity_prefixes(cluster, node),
            others: other_claims(cluster, node),
            claimants,
        }
    }

    /// The table (shares its structure with the one kept: cloning it is cheap).
    pub(super) fn table(&self) -> &PrefixTable {
        &self.table
    }

    /// Brings the table to `cluster` on `node`, given the pods that changed since the last
    /// update; returns the prefixes that came, went or changed owner, in order.
    pub(super) fn update(
        &mut self,
        cluster: &Cluster,
        node: &NodeInput,
        changed: &[PodChange],
    ) -> Vec<IpNet> {
        let mut touched = BTreeSet::new();
        for (old, new) in changed {
            if let Some(old) = old {
                for ip in &old.ips {
                    let net = host_prefix(*ip);
                    if let Some(list) = self.claimants.get_mut(&net) {
                        list.retain(|key| *key != old.key);
                        if list.is_empty() {
                            self.claimants.remove(&net);
                        }
                    }
                    touched.insert(net);
                }
            }
            if let Some(new) = new {
                for ip in &new.ips {
                    let net = host_prefix(*ip);
                    let list = self.claimants.entry(net).or_default();
                    // An address listed twice by one pod is one claim.
                    if !list.contains(&new.key) {
                        list.push(new.key.clone());
                    }
                    touched.insert(net);
                }
            }
        }
        let others = other_claims(cluster, node);
        if others != self.others {
            merge_keys(&self.others, &others, &mut touched);
            self.others = others;
        }
        let mut moved = Vec::new();
        for net in touched {
            let owner = match self.claimants.get(&net) {
                Some(pods) => pods.iter().min().map(|key| PrefixOwner::Pod(key.clone())),
                None => self.others.get(&net).cloned(),
            };
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
