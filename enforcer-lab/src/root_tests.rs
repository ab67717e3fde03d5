//! Root-only test: a 3-pod topology without any agent must connect every pair over TCP and
//! UDP in both families, and dropping it must remove its namespaces. Without root it returns
//! and records the skip, which fails `cargo xtask test`.

use std::time::{Duration, Instant};

use crate::iproute::list_netns;
use crate::probe::run_probes;
use crate::scenario::{Family, PodSpec, Probe, Proto};
use crate::servers::{endpoints_for, ServerSet};
use crate::topology::{node_netns_name, Topology};

/// Also the lab's other root test's (`kube_proxy_tests.rs`): a file is one module of a crate.
#[path = "../../tests/src/root.rs"]
pub(super) mod root_skip;
use root_skip::root_or_skip;

fn pod(ns: &str, name: &str, n: u8, h: u8) -> PodSpec {
    PodSpec {
        namespace: ns.into(),
        name: name.into(),
        ipv4: format!("10.244.{n}.{h}").parse().unwrap(),
        ipv6: Some(format!("fd00:10:244:{n}::{h}").parse().unwrap()),
        node: None,
    }
}

#[test]
fn three_pods_connect_without_agent_and_cleanup_removes_netns() {
    if !root_or_skip() {
        return;
    }
    let instance = format!("t{}", std::process::id());
    let prefix = format!("enf-{instance}-");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let probes: Vec<Probe> = [
        (80, Proto::Tcp, None),
        (80, Proto::Tcp, Some(Family::IPv6)),
        (81, Proto::Udp, None),
        (81, Proto::Udp, Some(Family::IPv6)),
    ]
    .into_iter()
    .map(|(port, protocol, family)| Probe {
        service: None,
        port,
        protocol,
        family,
    })
    .collect();
    {
        let mut topo = Topology::create(&instance).unwrap();
        let specs = [
            pod("x", "a", 1, 10),
            pod("x", "b", 1, 11),
            pod("y", "a", 2, 10),
        ];
        topo.sync_pods(&specs).unwrap();
        assert_eq!(list_netns(&prefix).len(), 4, "{:?}", list_netns(&prefix));
        let pods = topo.pods();

        let started = Instant::now();
        let results = rt.block_on(async {
            let servers = ServerSet::start(&pods, &endpoints_for(&probes)).unwrap();
            let r = run_probes(&pods, &probes, &[], Duration::from_secs(2))
                .await
                .unwrap();
            servers.stop().await;
            r
        });
        for (probe, result) in probes.iter().zip(&results) {
            for (from, row) in &result.matrix {
                for (to, cell) in row {
                    let want = if from == to { None } else { Some(true) };
                    assert_eq!(*cell, want, "{probe}: {from} -> {to}");
                }
            }
        }
        eprintln!("12 pairs x 4 probes in {:?}", started.elapsed());

        // Nothing listens on 82: refused at once (TCP RST / ICMP unreachable), i.e. `false`.
        let closed = [Probe {
            service: None,
            port: 82,
            protocol: Proto::Tcp,
            family: None,
        }];
        let r = rt
            .block_on(run_probes(&pods, &closed, &[], Duration::from_secs(2)))
            .unwrap();
        assert_eq!(r[0].matrix["x/a"]["y/a"], Some(false));

        // Removing a pod removes its namespace and keeps the others.
        topo.sync_pods(&specs[..2]).unwrap();
        assert_eq!(list_netns(&prefix).len(), 3);
        assert_eq!(topo.pods().len(), 2);
    }
    assert!(
        list_netns(&prefix).is_empty(),
        "left behind: {:?}",
        list_netns(&prefix)
    );
    assert!(!enforcer_agent::netns::named_path(&node_netns_name(&instance)).exists());
}
