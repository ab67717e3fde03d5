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
