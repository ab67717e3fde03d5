//! Property test: with random cluster policies (Admin and Baseline tiers, every action, equal
//! priorities, named ports, networks, nodes, fail-closed peers) on top of random
//! NetworkPolicies, the compiled tables looked up as the kernel does agree with the evaluation
//! order of the ClusterNetworkPolicy API (FORMAT-CNP section 3), written here directly from
//! the model without the compiler's data structures. Equal priorities are ordered by kind and
//! name, the order the enforcer documents.

use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;

use super::oracle::{
    cluster, labels, network_policy_tier, protocol, selector, BLOCKS, EXTRA_PEERS, HOSTS,
    PORT_NAMES, PROBES,
};
use super::{compile, evaluate, Decision, Direction, NodeInput};
use crate::model::cluster_policy::{
    Action, ClusterPeer, ClusterPolicy, ClusterPolicyKey, ClusterPolicyKind, ClusterRule,
    ProtocolMatch, Subject, Tier,
};
use crate::model::{Cluster, LabelSelector, Labels, NetworkPolicy, Pod};

/// Another node's address (a `nodes` peer can name it) and its labels.
const OTHER_NODE: (&str, &str) = ("n2", "192.168.7.7");

fn action() -> impl Strategy<Value = Action> {
    prop::sample::select(&[Action::Accept, Action::Deny, Action::Pass][..])
}

fn subject() -> impl Strategy<Value = Subject> {
    prop_oneof![
        selector().prop_map(Subject::Namespaces),
        (selector(), selector()).prop_map(|(namespaces, pods)| Subject::Pods { namespaces, pods }),
    ]
}

fn networks() -> impl Strategy<Value = Vec<IpNet>> {
    let cidrs: Vec<&str> = BLOCKS
        .iter()
        .map(|(c, _)| *c)
        .chain([
            "10.0.1.0/24",
            "10.0.2.7/32",
            "fd00::1:0/112",
            "192.168.7.0/24",
        ])
        .collect();
    prop::sample::subsequence(cidrs, 1..=2).prop_map(|v| {
        v.into_iter()
            .map(|c| c.parse::<IpNet>().unwrap().trunc())
            .collect()
    })
}

/// A peer; `egress` allows the egress-only kinds.
fn peer(egress: bool) -> BoxedStrategy<ClusterPeer> {
    let common = prop_oneof![
        selector().prop_map(ClusterPeer::Namespaces),
        (selector(), selector())
            .prop_map(|(namespaces, pods)| ClusterPeer::Pods { namespaces, pods }),
    ];
    if !egress {
        return prop_oneof![9 => common, 1 => Just(ClusterPeer::All)].boxed();
    }
    prop_oneof![
        6 => common,
        3 => networks().prop_map(ClusterPeer::Networks),
        1 => selector().prop_map(ClusterPeer::Nodes),
        1 => Just(ClusterPeer::DomainNames(vec!["example.com".into()])),
        1 => Just(ClusterPeer::All),
    ]
    .boxed()
}

fn protocol_match() -> impl Strategy<Value = ProtocolMatch> {
    prop_oneof![
        (
            protocol(),
            prop::sample::select(
                &[
                    (0u16, 65535u16),
                    (80, 80),
                    (53, 53),
                    (79, 8080),
                    (81, 81),
                    (1, 1000)
                ][..]
            )
        )
            .prop_map(|(protocol, (start, end))| ProtocolMatch::Ports {
                protocol,
                start,
                end
            }),
        prop::sample::select(&PORT_NAMES[..]).prop_map(|n| ProtocolMatch::NamedPort(n.into())),
    ]
}

fn rule(egress: bool) -> impl Strategy<Value = ClusterRule> {
    (
        action(),
        prop::collection::vec(peer(egress), 1..=2),
        prop::option::of(prop::collection::vec(protocol_match(), 1..=2)),
    )
        .prop_map(|(action, peers, protocols)| {
            // As conversion leaves it: `All` (a fail-closed unknown peer) only in a Deny of
            // everything; domain names only in Accept rules.
            if peers.contains(&ClusterPeer::All) {
                return ClusterRule {
                    name: None,
                    action: Action::Deny,
                    peers: vec![ClusterPeer::All],
                    protocols: None,
                };
            }
            let action = match peers
                .iter()
                .any(|p| matches!(p, ClusterPeer::DomainNames(_)))
            {
                true => Action::Accept,
                false => action,
            };
            ClusterRule {
                name: None,
                action,
                peers,
                protocols,
            }
        })
}

prop_compose! {
    fn cluster_policy()(
        tier in prop::sample::select(&[Tier::Admin, Tier::Baseline][..]),
        kind in prop::sample::select(&[ClusterPolicyKind::ClusterNetworkPolicy, ClusterPolicyKind::AdminNetworkPolicy][..]),
        name in 0..6u8,
        // Few priorities, so that ties are frequent.
        priority in prop::sample::select(&[0u32, 10, 10, 20][..]),
        subject in subject(),
        ingress in prop::collection::vec(rule(false), 0..=3),
        egress in prop::collection::vec(rule(true), 0..=3),
        staged in prop::bool::weighted(0.25),
    ) -> ClusterPolicy {
        ClusterPolicy {
            key: ClusterPolicyKey::new(kind, format!("c{name}")),
            tier,
            priority,
            subject,
            ingress,
            egress,
            staged,
        }
    }
}

prop_compose! {
    fn tiered_cluster()(
        mut cluster in cluster(),
        policies in prop::collection::vec(cluster_policy(), 1..=4),
        node_labels in labels(),
        staged_np in prop::collection::vec(prop::bool::weighted(0.25), 4),
    ) -> Cluster {
        for p in policies {
            cluster.insert_cluster_policy(p);
        }
        let keys: Vec<_> = cluster.policies.keys().cloned().collect();
        for (key, staged) in keys.iter().zip(staged_np) {
            cluster.policies.get_mut(key).expect("listed above").staged = staged;
        }
        let (name, ip) = OTHER_NODE;
        cluster.nodes.insert(name.into(), vec![ip.parse().unwrap()]);
        cluster.node_labels.insert(name.into(), node_labels);
        cluster
    }
}

/// The namespace labels of a pod's namespace.
fn ns_labels<'c>(cluster: &'c Cluster, pod: &Pod) -> &'c Labels {
    &cluster.namespaces[&pod.key.namespace].labels
}

fn selects(cluster: &Cluster, subject: &Subject, pod: &Pod) -> bool {
    match subject {
        Subject::Namespaces(ns) => ns.matches(ns_labels(cluster, pod)),
        Subject::Pods { namespaces, pods } => {
            namespaces.matches(ns_labels(cluster, pod)) && pods.matches(&pod.labels)
        }
    }
}

/// One flow as a tier sees it.
struct Flow<'a> {
    local: &'a Pod,
    direction: Direction,
    peer: IpAddr,
    peer_pod: Option<&'a Pod>,
    proto: u8,
    port: u16,
}

fn peer_matches(cluster: &Cluster, peer: &ClusterPeer, f: &Flow<'_>) -> bool {
    let pod_in = |ns: &LabelSelector, pods: &LabelSelector| {
        f.peer_pod
            .is_some_and(|p| ns.matches(ns_labels(cluster, p)) && pods.matches(&p.labels))
    };
    match peer {
        ClusterPeer::Namespaces(ns) => pod_in(ns, &LabelSelector::default()),
        ClusterPeer::Pods { namespaces, pods } => pod_in(namespaces, pods),
        ClusterPeer::Networks(nets) => nets.iter().any(|n| n.contains(&f.peer)),
        ClusterPeer::Nodes(sel) => cluster.nodes.iter().any(|(name, addrs)| {
            addrs.contains(&f.peer)
                && cluster
                    .node_labels
                    .get(name)
                    .is_some_and(|l| sel.matches(l))
        }),
        ClusterPeer::DomainNames(_) => false,
        ClusterPeer::All => true,
    }
}

fn protocols_match(m: &ProtocolMatch, f: &Flow<'_>) -> bool {
    match m {
        ProtocolMatch::Ports {
            protocol,
            start,
            end,
        } => protocol.number() == f.proto && (*start..=*end).contains(&f.port),
        ProtocolMatch::NamedPort(name) => {
            let destination = match f.direction {
                Direction::Ingress => Some(f.local),
                Direction::Egress => f.peer_pod,
            };
            destination.is_some_and(|d| {
                d.ports.iter().any(|cp| {
                    cp.name.as_deref() == Some(name.as_str())
                        && cp.number == f.port
                        && cp.protocol.number() == f.proto
                })
            })
        }
    }
}

/// Which policies an evaluation counts: those in force, and perhaps one staged policy.
#[derive(Clone, Copy)]
enum With<'c> {
    Enforced,
    Cluster(&'c ClusterPolicy),
    Network(&'c NetworkPolicy),
}

impl With<'_> {
    fn cluster(&self, p: &ClusterPolicy) -> bool {
        !p.staged || matches!(self, With::Cluster(s) if s.key == p.key)
    }
    fn network(&self, p: &NetworkPolicy) -> bool {
        !p.staged || matches!(self, With::Network(s) if s.key == p.key)
    }
}

/// The action of the first matching rule of `tier` for the flow, if any.
fn tier_action(cluster: &Cluster, with: With<'_>, tier: Tier, f: &Flow<'_>) -> Option<Action> {
    let mut policies: Vec<&ClusterPolicy> = cluster
        .cluster_policies
        .values()
        .filter(|p| with.cluster(p))
        .filter(|p| p.tier == tier && selects(cluster, &p.subject, f.local))
        .collect();
    policies.sort_by_key(|p| (p.priority, p.key.clone()));
    for p in policies {
        let rules = match f.direction {
            Direction::Ingress => &p.ingress,
            Direction::Egress => &p.egress,
        };
        for r in rules {
            let peer_ok = r.peers.iter().any(|peer| peer_matches(cluster, peer, f));
            let proto_ok = r
                .protocols
                .as_ref()
                .is_none_or(|list| list.iter().any(|m| protocols_match(m, f)));
            if peer_ok && proto_ok {
                return Some(r.action);
            }
        }
    }
    None
}

/// FORMAT-CNP section 3, for one side of a connection, counting the policies of `with`.
fn verdict(cluster: &Cluster, with: With<'_>, hosts: &[IpAddr], f: &Flow<'_>) -> bool {
    if f.peer_pod.is_none() && hosts.contains(&f.peer) {
        return true; // the node: always allowed (documented)
    }
    match tier_action(cluster, with, Tier::Admin, f) {
        Some(Action::Accept) => return true,
        Some(Action::Deny) => return false,
        _ => {}
    }
    let include = |np: &NetworkPolicy| with.network(np);
    let np = network_policy_tier(
        cluster,
        &include,
        f.local,
        f.direction,
        f.peer,
        f.proto,
        f.port,
    );
    if let Some(allowed) = np {
        return allowed;
    }
    !matches!(
        tier_action(cluster, with, Tier::Baseline, f),
        Some(Action::Deny)
    )
}

/// The verdict in force, and the first staged policy (Admin, then Baseline cluster policies in
/// evaluation order, then NetworkPolicies by name) that would change it, with what it would
/// become.
fn oracle(cluster: &Cluster, hosts: &[IpAddr], f: &Flow<'_>) -> (bool, Option<(String, bool)>) {
    let now = verdict(cluster, With::Enforced, hosts, f);
    let mut staged_cnp: Vec<&ClusterPolicy> = cluster
        .cluster_policies
        .values()
        .filter(|p| p.staged)
        .collect();
    staged_cnp.sort_by_key(|p| (p.tier, p.priority, p.key.clone()));
    let candidates = staged_cnp.into_iter().map(With::Cluster).chain(
        cluster
            .policies
            .values()
            .filter(|p| p.staged)
            .map(With::Network),
    );
    for with in candidates {
        let would = verdict(cluster, with, hosts, f);
        if would != now {
            let name = match with {
                With::Cluster(p) => p.key.to_string(),
                With::Network(p) => p.key.to_string(),
                With::Enforced => unreachable!(),
            };
            return (now, Some((name, would)));
        }
    }
    (now, None)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn tiers_compiled_into_the_tables_agree_with_the_api(cluster in tiered_cluster()) {
        let hosts: Vec<IpAddr> = HOSTS.iter().map(|h| h.parse().unwrap()).collect();
        let node = NodeInput { name: "n1".into(), host_ips: hosts.clone(), audit: false };
        let tables = compile(&cluster, &node);

        let mut peers: Vec<IpAddr> = cluster.pods.values().flat_map(|p| p.ips.iter().copied()).collect();
        peers.extend(hosts.iter().copied());
        peers.extend(EXTRA_PEERS.iter().map(|p| p.parse::<IpAddr>().unwrap()));
        peers.push(OTHER_NODE.1.parse().unwrap());

        for local in cluster.pods.values() {
            if !tables.endpoints.contains_key(&local.key) {
                continue;
            }
            for direction in [Direction::Ingress, Direction::Egress] {
                for &peer in &peers {
                    let peer_pod = cluster.pods.values().find(|p| p.ips.contains(&peer)).map(|p| &**p);
                    for (proto, port) in PROBES {
                        let flow = Flow { local, direction, peer, peer_pod, proto, port };
                        let (want, want_staged) = oracle(&cluster, &hosts, &flow);
                        let got = evaluate(&tables, &local.key, direction, peer, proto, port);
                        prop_assert_eq!(
                            got.allowed(), want,
                            "{} {:?} peer {} proto {} port {}: {:?}", local.key, direction, peer, proto, port, got
                        );
                        let id = match got.decision {
                            Decision::Rule { id, .. } | Decision::DeniedBy { id, .. } => id,
                            _ => 0,
                        };
                        let got_staged = tables
                            .staged_entry(id)
                            .map(|e| (e.policy.to_string(), e.would_allow));
                        prop_assert_eq!(
                            &got_staged, &want_staged,
                            "staged effect: {} {:?} peer {} proto {} port {}: {:?}", local.key, direction, peer, proto, port, got
                        );
                    }
                }
            }
        }
    }
}
