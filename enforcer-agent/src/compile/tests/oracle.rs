//! Property test: on random small clusters, the compiled tables (looked up as the kernel does)
//! agree with a direct evaluation of the NetworkPolicy spec, written here without looking at
//! the compiler's data structures.

use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;

use super::{compile, evaluate, Direction, NodeInput};
use crate::model::{
    Cluster, ContainerPort, LabelSelector, Labels, Namespace, NetworkPolicy, PeerSpec, Pod, PodKey,
    PolicyKey, PolicyTypes, PortRef, PortSpec, Protocol, Requirement, Rule, NAMESPACE_NAME_LABEL,
};

pub(super) const NAMESPACES: [&str; 3] = ["n0", "n1", "n2"];
const KEYS: [&str; 2] = ["k1", "k2"];
const VALUES: [&str; 2] = ["a", "b"];
pub(super) const PORT_NAMES: [&str; 2] = ["web", "dns"];
pub(super) const HOSTS: [&str; 2] = ["192.168.0.1", "10.0.3.250"];
/// (cidr, except)
pub(super) const BLOCKS: [(&str, &[&str]); 7] = [
    ("10.0.0.0/8", &["10.0.1.0/24", "10.0.2.5/32"]),
    ("10.0.0.0/16", &[]),
    ("10.0.2.0/24", &["10.0.2.0/25"]),
    ("0.0.0.0/0", &["10.0.0.0/8"]),
    ("10.0.1.3/32", &[]),
    ("fd00::/16", &["fd00::1:0/112"]),
    ("::/0", &["fd00::/8"]),
];
/// Peer addresses probed besides pod and host addresses.
pub(super) const EXTRA_PEERS: [&str; 8] = [
    "10.0.1.200",
    "10.0.2.5",
    "10.0.2.130",
    "11.0.0.1",
    "10.0.3.250",
    "fd00::1:7",
    "fd00::9",
    "2001:db8::1",
];
/// (IP protocol, port)
pub(super) const PROBES: [(u8, u16); 17] = [
    (6, 53),
    (6, 79),
    (6, 80),
    (6, 81),
    (6, 8080),
    (6, 65535),
    (17, 53),
    (17, 79),
    (17, 80),
    (17, 81),
    (17, 8080),
    (132, 53),
    (132, 80),
    (132, 81),
    (132, 8080),
    (132, 1),
    (1, 0),
];

pub(super) fn labels() -> impl Strategy<Value = Labels> {
    prop::collection::btree_map(
        prop::sample::select(&KEYS[..]),
        prop::sample::select(&VALUES[..]),
        0..=2,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    })
}

fn requirement() -> impl Strategy<Value = Requirement> {
    let key = prop::sample::select(&KEYS[..]).prop_map(str::to_string);
    let values = prop::sample::subsequence(&VALUES[..], 1..=2)
        .prop_map(|v| v.into_iter().map(str::to_string).collect::<Vec<_>>());
    (0..4u8, key, values).prop_map(|(op, key, values)| match op {
        0 => Requirement::In { key, values },
        1 => Requirement::NotIn { key, values },
        2 => Requirement::Exists { key },
        _ => Requirement::DoesNotExist { key },
    })
}

pub(super) fn selector() -> impl Strategy<Value = LabelSelector> {
    (
        prop::collection::btree_map(
            prop::sample::select(&KEYS[..]),
            prop::sample::select(&VALUES[..]),
            0..=1,
        ),
        prop::collection::vec(requirement(), 0..=1),
    )
        .prop_map(|(ml, match_expressions)| LabelSelector {
            match_labels: ml
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            match_expressions,
        })
}

pub(super) fn protocol() -> impl Strategy<Value = Protocol> {
    prop::sample::select(&Protocol::ALL[..])
}

fn peer() -> impl Strategy<Value = PeerSpec> {
    prop_oneof![
        (prop::option::of(selector()), prop::option::of(selector())).prop_map(
            |(namespace, pod)| {
                match (namespace, pod) {
                    (None, None) => PeerSpec::Selector {
                        namespace: None,
                        pod: Some(LabelSelector::default()),
                    },
                    (namespace, pod) => PeerSpec::Selector { namespace, pod },
                }
            }
        ),
        prop::sample::select(&BLOCKS[..]).prop_map(|(cidr, except)| PeerSpec::IpBlock {
            cidr: cidr.parse().unwrap(),
            except: except.iter().map(|e| e.parse().unwrap()).collect(),
        }),
    ]
}

fn port_spec() -> impl Strategy<Value = PortSpec> {
    let port = prop_oneof![
        Just((None, None)),
        prop::sample::select(&[53u16, 80, 81, 8080][..])
            .prop_map(|n| (Some(PortRef::Number(n)), None)),
        prop::sample::select(&[(80u16, 81u16), (79, 8080), (1, 65535), (81, 81)][..])
            .prop_map(|(a, b)| (Some(PortRef::Number(a)), Some(b))),
        prop::sample::select(&PORT_NAMES[..]).prop_map(|n| (Some(PortRef::Name(n.into())), None)),
    ];
    (protocol(), port).prop_map(|(protocol, (port, end_port))| PortSpec {
        protocol,
        port,
        end_port,
    })
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        prop::collection::vec(peer(), 0..=2),
        prop::collection::vec(port_spec(), 0..=2),
    )
        .prop_map(|(peers, ports)| Rule { peers, ports })
}

/// (namespace index, podSelector, ingress, egress, (Ingress listed, Egress listed))
type PolicyParts = (
    usize,
    LabelSelector,
    Option<Vec<Rule>>,
    Option<Vec<Rule>>,
    (bool, bool),
);

fn policy() -> impl Strategy<Value = PolicyParts> {
    (
        0..NAMESPACES.len(),
        selector(),
        prop::option::of(prop::collection::vec(rule(), 0..=2)),
        prop::option::of(prop::collection::vec(rule(), 0..=2)),
        (any::<bool>(), any::<bool>()),
    )
}

/// (namespace index, labels, subnet, has IPv6, (port name index, number, protocol), node)
type PodParts = (usize, Labels, u8, bool, Vec<(usize, u16, Protocol)>, u8);

fn pod() -> impl Strategy<Value = PodParts> {
    (
        0..NAMESPACES.len(),
        labels(),
        0..4u8,
        any::<bool>(),
        prop::collection::vec(
            (
                0..PORT_NAMES.len(),
                prop::sample::select(&[53u16, 80, 81, 8080][..]),
                protocol(),
            ),
            0..=3,
        ),
        0..3u8,
    )
}

prop_compose! {
    pub(super) fn cluster()(
        ns_labels in prop::collection::vec(labels(), NAMESPACES.len()),
        pods in prop::collection::vec(pod(), 1..=6),
        policies in prop::collection::vec(policy(), 0..=4),
    ) -> Cluster {
        let mut cluster = Cluster::default();
        for (name, mut labels) in NAMESPACES.iter().zip(ns_labels) {
            labels.insert(NAMESPACE_NAME_LABEL.into(), name.to_string());
            cluster.insert_namespace(Namespace { name: name.to_string(), labels });
        }
        for (i, (ns, labels, subnet, v6, ports, node)) in pods.into_iter().enumerate() {
            let mut ips: Vec<IpAddr> = vec![format!("10.0.{subnet}.{}", i + 1).parse().unwrap()];
            if v6 {
                ips.push(format!("fd00::{:x}:{}", subnet, i + 1).parse().unwrap());
            }
            // Port names are unique within a pod.
            let mut seen = std::collections::BTreeSet::new();
            let ports = ports
                .into_iter()
                .filter(|(n, _, _)| seen.insert(*n))
                .map(|(n, number, protocol)| ContainerPort { name: Some(PORT_NAMES[n].into()), number, protocol })
                .collect();
            let node = match node { 0 => None, 1 => Some("n1".to_string()), _ => Some("n2".to_string()) };
            let key = PodKey::new(NAMESPACES[ns], format!("p{i}"));
            cluster.insert_pod(Pod { key, labels, ips, ports, node, owner: None, ready: true });
        }
        for (i, (ns, pod_selector, ingress, egress, (ti, te))) in policies.into_iter().enumerate() {
            // Types as the API server leaves them: defaulted when absent, else as given.
            let types = if !ti && !te {
                PolicyTypes { ingress: true, egress: egress.as_ref().is_some_and(|e| !e.is_empty()) }
            } else {
                PolicyTypes { ingress: ti, egress: te }
            };
            let key = PolicyKey::new(NAMESPACES[ns], format!("np{i}"));
            cluster.insert_policy(NetworkPolicy { key, pod_selector, ingress, egress, types, staged: false });
        }
        cluster
    }
}

/// The spec, evaluated directly: is a new flow of `local` in `direction` with `peer` allowed?
fn oracle(
    cluster: &Cluster,
    hosts: &[IpAddr],
    local: &Pod,
    direction: Direction,
    peer: IpAddr,
    proto: u8,
    port: u16,
) -> bool {
    if hosts.contains(&peer) && !cluster.pods.values().any(|p| p.ips.contains(&peer)) {
        return true;
    }
    network_policy_tier(cluster, &|_| true, local, direction, peer, proto, port).unwrap_or(true)
}

/// The NetworkPolicy tier alone: `None` when no policy isolates `local` in `direction`, else
/// whether one of the isolating policies' rules allows the flow.
pub(super) fn network_policy_tier(
    cluster: &Cluster,
    include: &dyn Fn(&NetworkPolicy) -> bool,
    local: &Pod,
    direction: Direction,
    peer: IpAddr,
    proto: u8,
    port: u16,
) -> Option<bool> {
    let peer_pod = cluster.pods.values().find(|p| p.ips.contains(&peer));
    let isolating: Vec<&NetworkPolicy> = cluster
        .policies
        .values()
        .filter(|np| {
            include(np)
                && np.key.namespace == local.key.namespace
                && np.pod_selector.matches(&local.labels)
        })
        .filter(|np| match direction {
            Direction::Ingress => np.types.ingress,
            Direction::Egress => np.types.egress,
        })
        .collect();
    if isolating.is_empty() {
        return None;
    }
    let peer_matches = |np: &NetworkPolicy, spec: &PeerSpec| match spec {
        PeerSpec::Selector { namespace, pod } => peer_pod.is_some_and(|p| {
            let ns_ok = match namespace {
                None => p.key.namespace == np.key.namespace,
                Some(sel) => sel.matches(&cluster.namespaces[&p.key.namespace].labels),
            };
            ns_ok && pod.as_ref().is_none_or(|sel| sel.matches(&p.labels))
        }),
        PeerSpec::IpBlock { cidr, except } => {
            cidr.contains(&peer) && !except.iter().any(|e: &IpNet| e.contains(&peer))
        }
    };
    let destination = match direction {
        Direction::Ingress => Some(local),
        Direction::Egress => peer_pod.map(|p| &**p),
    };
    let port_matches = |spec: &PortSpec| {
        if spec.protocol.number() != proto {
            return false;
        }
        match &spec.port {
            None => true,
            Some(PortRef::Number(n)) => (*n..=spec.end_port.unwrap_or(*n)).contains(&port),
            Some(PortRef::Name(name)) => destination.is_some_and(|d| {
                d.ports.iter().any(|cp| {
                    cp.name.as_deref() == Some(name)
                        && cp.protocol.number() == proto
                        && cp.number == port
                })
            }),
        }
    };
    Some(isolating.iter().any(|np| {
        let rules = match direction {
            Direction::Ingress => np.ingress.as_deref(),
            Direction::Egress => np.egress.as_deref(),
        };
        rules.unwrap_or_default().iter().any(|r| {
            (r.peers.is_empty() || r.peers.iter().any(|p| peer_matches(np, p)))
                && (r.ports.is_empty() || r.ports.iter().any(port_matches))
        })
    }))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn compiled_tables_agree_with_the_spec(cluster in cluster()) {
        let hosts: Vec<IpAddr> = HOSTS.iter().map(|h| h.parse().unwrap()).collect();
        let node = NodeInput { name: "n1".into(), host_ips: hosts.clone(), audit: false };
        let tables = compile(&cluster, &node);

        let mut peers: Vec<IpAddr> = cluster.pods.values().flat_map(|p| p.ips.iter().copied()).collect();
        peers.extend(hosts.iter().copied());
        peers.extend(EXTRA_PEERS.iter().map(|p| p.parse::<IpAddr>().unwrap()));

        for local in cluster.pods.values() {
            let is_local = local.node.as_deref().is_none_or(|n| n == "n1");
            prop_assert_eq!(tables.endpoints.contains_key(&local.key), is_local);
            if !is_local {
                continue;
            }
            for direction in [Direction::Ingress, Direction::Egress] {
                for &peer in &peers {
                    for (proto, port) in PROBES {
                        let want = oracle(&cluster, &hosts, local, direction, peer, proto, port);
                        let got = evaluate(&tables, &local.key, direction, peer, proto, port);
                        prop_assert_eq!(
                            got.allowed(), want,
                            "{} {:?} peer {} proto {} port {}: {:?}", local.key, direction, peer, proto, port, got
                        );
                    }
                }
            }
        }
    }
}

/// Many small policies over a few hundred pods compile quickly (this is an unoptimised test
/// build, so the bound is loose; a release build is far faster).
#[test]
fn compiles_ten_thousand_policies_quickly() {
    let mut cluster = Cluster::default();
    for n in 0..10 {
        let name = format!("ns{n}");
        let labels = Labels::from_iter([
            (NAMESPACE_NAME_LABEL.to_string(), name.clone()),
            ("team".into(), format!("t{}", n % 3)),
        ]);
        cluster.insert_namespace(Namespace { name, labels });
    }
    for i in 0..300u32 {
        let labels = Labels::from_iter([
            ("app".to_string(), format!("app{}", i % 50)),
            ("tier".into(), format!("t{}", i % 4)),
        ]);
        let ports = vec![ContainerPort {
            name: Some("http".into()),
            number: 8000 + (i % 7) as u16,
            protocol: Protocol::Tcp,
        }];
        let ip: IpAddr = format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256 + 1)
            .parse()
            .unwrap_or_else(|_| "10.255.0.1".parse().unwrap());
        let node = Some(if i % 3 == 0 { "n1" } else { "n2" }.to_string());
        cluster.insert_pod(Pod {
            key: PodKey::new(format!("ns{}", i % 10), format!("pod{i}")),
            labels,
            ips: vec![ip],
            ports,
            node,
            owner: None,
            ready: true,
        });
    }
    let sel = |k: &str, v: String| LabelSelector {
        match_labels: Labels::from_iter([(k.to_string(), v)]),
        match_expressions: vec![],
    };
    for i in 0..10_000u32 {
        let peers = match i % 3 {
            0 => vec![PeerSpec::Selector {
                namespace: None,
                pod: Some(sel("app", format!("app{}", (i + 1) % 50))),
            }],
            1 => vec![PeerSpec::Selector {
                namespace: Some(sel("team", format!("t{}", i % 3))),
                pod: Some(sel("tier", format!("t{}", i % 4))),
            }],
            _ => vec![PeerSpec::IpBlock {
                cidr: format!("10.{}.0.0/16", i % 200).parse().unwrap(),
                except: vec![format!("10.{}.1.0/24", i % 200).parse().unwrap()],
            }],
        };
        let ports = vec![
            PortSpec {
                protocol: Protocol::Tcp,
                port: Some(PortRef::Number(80)),
                end_port: Some(90),
            },
            PortSpec {
                protocol: Protocol::Tcp,
                port: Some(PortRef::Name("http".into())),
                end_port: None,
            },
        ];
        let rule = Rule { peers, ports };
        cluster.insert_policy(NetworkPolicy {
            key: PolicyKey::new(format!("ns{}", i % 10), format!("np{i}")),
            pod_selector: sel("app", format!("app{}", i % 50)),
            ingress: Some(vec![rule.clone()]),
            egress: Some(vec![rule]),
            types: PolicyTypes {
                ingress: true,
                egress: true,
            },
            staged: false,
        });
    }
    let start = std::time::Instant::now();
    let tables = compile(
        &cluster,
        &NodeInput {
            name: "n1".into(),
            host_ips: vec![],
            audit: false,
        },
    );
    let elapsed = start.elapsed();
    eprintln!(
        "compiled {} policies, {} endpoints, {} allows in {elapsed:?}",
        cluster.policies.len(),
        tables.endpoints.len(),
        tables
            .endpoints
            .values()
            .map(|e| e.allows.len())
            .sum::<usize>()
    );
    assert_eq!(tables.endpoints.len(), 100);
    assert!(tables
        .endpoints
        .values()
        .all(|e| e.ingress_isolated() && !e.allows.is_empty()));
    assert!(elapsed < std::time::Duration::from_secs(20), "{elapsed:?}");
}
