//! Property test: the incremental [`Compiler`] gives exactly what [`compile`] gives, over
//! walks from one random cluster to another one object at a time (each pod, each policy, then
//! the namespaces), so that most steps change one namespace and most plans are reused.

use std::net::IpAddr;

use proptest::prelude::*;

use super::oracle::{cluster, HOSTS};
use super::{compile, Compiler, NodeInput};
use crate::model::Cluster;

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
    let keys: std::collections::BTreeSet<_> =
        from.pods.keys().chain(to.pods.keys()).cloned().collect();
    for key in keys {
        match to.pods.get(&key) {
            Some(p) => at.pods.insert(key, p.clone()),
            None => at.pods.remove(&key),
        };
        out.push(at.clone());
    }
    let keys: std::collections::BTreeSet<_> = from
        .policies
        .keys()
        .chain(to.policies.keys())
        .cloned()
        .collect();
    for key in keys {
        match to.policies.get(&key) {
            Some(p) => at.policies.insert(key, p.clone()),
            None => at.policies.remove(&key),
        };
        out.push(at.clone());
    }
    at.namespaces = to.namespaces.clone();
    out.push(at.clone());
    out.push(to.clone());
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_incremental_compiler_gives_what_a_full_compile_gives(
        clusters in prop::collection::vec(cluster(), 2..4)
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
