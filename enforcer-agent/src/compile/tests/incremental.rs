//! Property test: the incremental [`Compiler`] gives exactly what [`compile`] gives, over
//! walks from one random cluster to another one object at a time (each pod, each policy, each
//! Service, each EndpointSlice, then the namespaces), so that most steps change one namespace and most plans and
//! Service frontends are reused.

use std::net::IpAddr;

use proptest::prelude::*;

use super::oracle::{cluster, labels, HOSTS, NAMESPACES, PORT_NAMES};
use super::{compile, Compiler, NodeInput};
use crate::model::service::{
    IpFamily, ServicePort, SliceEndpoint, SlicePort, TargetPort, TrafficPolicy,
};
use crate::model::{Cluster, EndpointSlice, Protocol, Service, ServiceKey, SliceKey};

/// A few Services over the cluster's pods: selectors from the pods' label space, ClusterIPs
/// from a small pool (so that two sometimes share one), target ports by number or name, some
/// of local traffic only, and some without a selector (their endpoints come from slices).
fn services() -> impl Strategy<Value = Vec<Service>> {
    let one = (
        0..NAMESPACES.len(),
        prop::option::weighted(0.85, labels()),
        0..4u8,
        prop::sample::select(&[80u16, 53][..]),
        prop::option::of(0..PORT_NAMES.len()),
        any::<bool>(),
    );
    prop::collection::vec(one, 0..=4).prop_map(|list| {
        list.into_iter()
            .enumerate()
            .map(|(i, (ns, selector, ip, port, named, local))| Service {
                key: ServiceKey::new(NAMESPACES[ns], format!("s{i}")),
                cluster_ips: vec![format!("10.96.0.{}", ip + 1).parse().unwrap()],
                // The model's selector is never empty (an empty one is none).
                selector: selector.filter(|l| !l.is_empty()),
                ports: vec![ServicePort {
                    name: Some("p".into()),
                    port,
                    protocol: Protocol::Tcp,
                    target: match named {
                        Some(n) => TargetPort::Name(PORT_NAMES[n].into()),
                        None => TargetPort::Number(port),
                    },
                }],
                internal_traffic: if local {
                    TrafficPolicy::Local
                } else {
                    TrafficPolicy::Cluster
                },
                affinity_timeout: None,
            })
            .collect()
    })
}

/// EndpointSlices naming the Services by name (`s0`..`s3` of a namespace; those without a
/// selector read them, the others ignore them), with addresses from the pods' pool (10.0.s.i:
/// a pod change moves who is at one) and one outside it.
fn slices() -> impl Strategy<Value = Vec<EndpointSlice>> {
    let address = prop_oneof![
        (0..3u8, 1..7u8).prop_map(|(s, i)| format!("10.0.{s}.{i}")),
        Just("192.0.2.1".to_string()),
    ];
    let endpoint = (
        prop::collection::vec(address, 1..=2),
        any::<bool>(),
        prop::option::of(prop::sample::select(&["n1", "n2"][..])),
    );
    let one = (
        0..NAMESPACES.len(),
        0..4usize,
        prop::collection::vec(endpoint, 1..=3),
        prop::option::of(prop::sample::select(&[80u16, 8080][..])),
    );
    prop::collection::vec(one, 0..=3).prop_map(|list| {
        list.into_iter()
            .enumerate()
            .map(|(n, (ns, svc, endpoints, port))| EndpointSlice {
                key: SliceKey::new(NAMESPACES[ns], format!("s{svc}-{n}")),
                service: Some(format!("s{svc}")),
                family: Some(IpFamily::V4),
                ports: vec![SlicePort {
                    name: Some("p".into()),
                    port,
                    protocol: Protocol::Tcp,
                }],
                endpoints: endpoints
                    .into_iter()
                    .map(|(addresses, ready, node)| SliceEndpoint {
                        addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
                        ready,
                        node: node.map(str::to_string),
                    })
                    .collect(),
            })
            .collect()
    })
}

fn with_services() -> impl Strategy<Value = Cluster> {
    (cluster(), services(), slices()).prop_map(|(mut c, services, slices)| {
        for svc in services {
            c.insert_service(svc);
        }
        for slice in slices {
            c.insert_endpoint_slice(slice);
        }
        c
    })
}

fn node() -> NodeInput {
    NodeInput {
        name: "n1".into(),
        host_ips: HOSTS.iter().map(|h| h.parse::<IpAddr>().unwrap()).collect(),
        audit: false,
    }
}

/// The clusters one object at a time from `from` to `to`.
fn walk(from: &Cluster, to: &Cluster) -> Vec<Cluster> {
    let mut at = from.clone();
    let mut out = Vec::new();
    step(&mut at, &mut out, &to.pods, |c| &mut c.pods);
    step(&mut at, &mut out, &to.policies, |c| &mut c.policies);
    step(&mut at, &mut out, &to.services, |c| &mut c.services);
    step(&mut at, &mut out, &to.endpoint_slices, |c| {
        &mut c.endpoint_slices
    });
    at.namespaces = to.namespaces.clone();
    out.push(at.clone());
    out.push(to.clone());
    out
}

/// Moves `at`'s map `field` to `target` one key at a time (in key order), each step a cluster
/// of `out`.
fn step<K: Ord + Clone, V: Clone>(
    at: &mut Cluster,
    out: &mut Vec<Cluster>,
    target: &crate::model::Map<K, V>,
    field: impl Fn(&mut Cluster) -> &mut crate::model::Map<K, V>,
) {
    let keys: std::collections::BTreeSet<K> =
        field(at).keys().chain(target.keys()).cloned().collect();
    for key in keys {
        match target.get(&key) {
            Some(v) => field(at).insert(key, v.clone()),
            None => field(at).remove(&key),
        };
        out.push(at.clone());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_incremental_compiler_gives_what_a_full_compile_gives(
        clusters in prop::collection::vec(with_services(), 2..4)
    ) {
        let node = node();
        let mut compiler = Compiler::default();
        let mut steps = vec![clusters[0].clone()];
        for pair in clusters.windows(2) {
            steps.extend(walk(&pair[0], &pair[1]));
        }
        for (i, c) in steps.iter().enumerate() {
            let want = compile(c, &node);
            let got = compiler.compile(c, &node);
            prop_assert_eq!(got, want, "step {}", i);
        }
    }
}

/// The kept prefix table follows who owns an address that several claim: two pods (the
/// first in key order wins), this node, an ipBlock; each step equal to a full compile.
#[test]
fn an_address_claimed_twice_changes_owner_as_its_claimants_come_and_go() {
    use crate::compile::PrefixOwner;
    use crate::model::{NetworkPolicy, PeerSpec, Pod, PodKey, PolicyKey, PolicyTypes, Rule};

    let addr: IpAddr = "10.0.0.5".parse().unwrap();
    let net: ipnet::IpNet = "10.0.0.5/32".parse().unwrap();
    let pod = |key: &str| Pod {
        key: key.parse().unwrap(),
        labels: Default::default(),
        ips: vec![addr, addr],
        ports: vec![],
        node: Some("n2".into()),
        owner: None,
        ready: true,
    };
    let block = NetworkPolicy {
        key: PolicyKey::new("x", "block"),
        pod_selector: Default::default(),
        ingress: Some(vec![Rule {
            peers: vec![PeerSpec::IpBlock {
                cidr: net,
                except: vec![],
            }],
            ports: vec![],
        }]),
        egress: None,
        types: PolicyTypes {
            ingress: true,
            egress: false,
        },
        staged: false,
    };
    let mut node = NodeInput {
        name: "n1".into(),
        host_ips: vec![],
        audit: false,
    };
    let mut c = Cluster::default();
    let mut compiler = Compiler::default();
    let mut step = |c: &Cluster, node: &NodeInput, want: Option<PrefixOwner>| {
        let tables = compiler.compile(c, node);
        assert_eq!(tables, compile(c, node));
        assert_eq!(tables.prefixes.get(&net).cloned(), want);
    };
    let key = |s: &str| s.parse::<PodKey>().unwrap();

    step(&c, &node, None);
    c.insert_pod(pod("y/b"));
    step(&c, &node, Some(PrefixOwner::Pod(key("y/b"))));
    c.insert_pod(pod("x/a"));
    step(&c, &node, Some(PrefixOwner::Pod(key("x/a"))));
    c.pods.remove(&key("x/a"));
    step(&c, &node, Some(PrefixOwner::Pod(key("y/b"))));
    node.host_ips.push(addr);
    step(&c, &node, Some(PrefixOwner::Pod(key("y/b"))));
    c.insert_policy(block);
    c.pods.remove(&key("y/b"));
    step(&c, &node, Some(PrefixOwner::Host));
    node.host_ips.clear();
    step(&c, &node, Some(PrefixOwner::Cidr));
    c.policies.clear();
    step(&c, &node, None);
    // Moved to another address, then given it back.
    let mut moved = pod("y/b");
    moved.ips = vec!["10.0.0.6".parse().unwrap()];
    c.insert_pod(moved);
    step(&c, &node, None);
    c.insert_pod(pod("y/b"));
    step(&c, &node, Some(PrefixOwner::Pod(key("y/b"))));
    // Three claimants, going one by one (the last two, then the last, listed apart or not).
    c.insert_pod(pod("z/c"));
    c.insert_pod(pod("x/a"));
    step(&c, &node, Some(PrefixOwner::Pod(key("x/a"))));
    c.pods.remove(&key("x/a"));
    step(&c, &node, Some(PrefixOwner::Pod(key("y/b"))));
    c.pods.remove(&key("y/b"));
    step(&c, &node, Some(PrefixOwner::Pod(key("z/c"))));
    c.insert_pod(pod("x/a"));
    step(&c, &node, Some(PrefixOwner::Pod(key("x/a"))));
    c.pods.remove(&key("z/c"));
    step(&c, &node, Some(PrefixOwner::Pod(key("x/a"))));
    c.pods.remove(&key("x/a"));
    step(&c, &node, None);
}
