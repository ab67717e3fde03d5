//! Port scans (vertical) and sweeps (horizontal).

use super::*;
use crate::alerts::{Severity, Workload};

fn w(s: &str) -> Workload {
    s.parse().unwrap()
}

/// Feeds `(flow)` records, returning (index of the record, alert) for each alert.
fn run(alerts: &mut Alerts, flows: impl IntoIterator<Item = Flow>) -> Vec<(usize, Alert)> {
    flows
        .into_iter()
        .enumerate()
        .flat_map(|(i, f)| feed(alerts, f).into_iter().map(move |a| (i, a)))
        .collect()
}

#[test]
fn vertical_scan_fires_on_the_twentieth_port_then_escalates_once() {
    let mut alerts = Alerts::new(only(AlertKind::PortScan));
    let attacker = app("shop", "attacker", "10.0.1.66");
    let db = app("shop", "db", "10.0.2.7");
    // 25 ports in 5 s, every other one denied.
    let probe = |i: u64, at: u64| {
        let f = flow(&attacker, &db).port(1000 + i as u16).at(at);
        if i % 2 == 1 {
            f.denied()
        } else {
            f
        }
    };
    let fired = run(&mut alerts, (0..25).map(|i| probe(i, i * 200)));
    assert_eq!(fired.len(), 1, "{fired:#?}");
    let (i, a) = &fired[0];
    assert_eq!(*i, 19, "fires on the 20th distinct port");
    assert_eq!(
        (a.kind, a.severity),
        (AlertKind::PortScan, Severity::Warning)
    );
    assert_eq!(a.source, w("shop/attacker"));
    assert_eq!(a.target, Some(w("shop/db")));
    assert_eq!(*a.time, *flow(&attacker, &db).at(19 * 200).build().time);
    let e = &a.evidence;
    assert_eq!(e.counts["distinct_ports"], 20);
    assert_eq!(e.counts["distinct_peers"], 1);
    assert_eq!((e.counts["allowed"], e.counts["denied"]), (10, 10));
    assert_eq!(e.window_seconds, 10);
    assert_eq!(e.peers, vec!["shop/db"]);
    assert_eq!(e.ports, (1000..1020).collect::<Vec<u16>>());
    assert!(
        a.summary.contains("20 distinct ports on shop/db"),
        "{}",
        a.summary
    );

    // Faster: 125 more ports from 5 s to 7.5 s. One critical alert at the 100th, then quiet.
    let fired = run(
        &mut alerts,
        (25..150).map(|i| probe(i, 5_000 + (i - 25) * 20)),
    );
    assert_eq!(fired.len(), 1, "{fired:#?}");
    let (i, a) = &fired[0];
    assert_eq!(i + 25, 99, "escalates on the 100th distinct port");
    assert_eq!(a.severity, Severity::Critical);
    assert_eq!(a.evidence.counts["distinct_ports"], 100);
    assert_eq!(a.evidence.ports.len(), crate::alerts::MAX_EVIDENCE_ITEMS);
}

#[test]
fn horizontal_sweep_fires_on_the_twentieth_peer() {
    let mut alerts = Alerts::new(only(AlertKind::PortScan));
    let attacker = pod("shop", "attacker-x7k2p", "10.0.1.66");
    let fired = run(
        &mut alerts,
        (0..30u64).map(|i| {
            let target = ext(&format!("10.0.5.{i}"));
            flow(&attacker, &target).port(22).denied().at(i * 100)
        }),
    );
    assert_eq!(fired.len(), 1, "{fired:#?}");
    let (i, a) = &fired[0];
    assert_eq!(*i, 19);
    assert_eq!(
        (a.kind, a.severity),
        (AlertKind::PortScan, Severity::Warning)
    );
    assert_eq!(a.source, w("shop/attacker"));
    assert_eq!(a.target, None);
    let e = &a.evidence;
    assert_eq!(e.counts["distinct_peers"], 20);
    assert_eq!(e.counts["distinct_ports"], 1);
    assert_eq!((e.counts["allowed"], e.counts["denied"]), (0, 20));
    assert_eq!(e.ports, vec![22]);
    assert_eq!(e.peers.len(), 20);
    assert!(e.peers.contains(&"ip:10.0.5.19".to_string()));
    assert!(
        e.peers.windows(2).all(|p| p[0] < p[1]),
        "sorted: {:?}",
        e.peers
    );
    assert!(a.summary.contains("20 distinct peers"), "{}", a.summary);
}

#[test]
fn ping_sweep_counts_peers_without_ports() {
    let mut alerts = Alerts::new(only(AlertKind::PortScan));
    let attacker = app("shop", "attacker", "10.0.1.66");
    let fired = run(
        &mut alerts,
        (0..25u64).map(|i| {
            flow(&attacker, &ext(&format!("10.0.6.{i}")))
                .icmp()
                .at(i * 50)
        }),
    );
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].0, 19);
    assert_eq!(fired[0].1.evidence.ports, Vec::<u16>::new());
}

/// A sweep that goes on for 70 s at 5 peers a second (never critical): one alert, then the next
/// only when the 60 s cooldown is over.
#[test]
fn a_long_sweep_fires_once_per_cooldown() {
    let mut alerts = Alerts::new(only(AlertKind::PortScan));
    let attacker = app("shop", "attacker", "10.0.1.66");
    let fired = run(
        &mut alerts,
        (0..350u64).map(|i| {
            let target = ext(&format!("10.0.{}.{}", 10 + i / 200, i % 200));
            flow(&attacker, &target).port(443).at(i * 200)
        }),
    );
    let at: Vec<u64> = fired.iter().map(|(i, _)| *i as u64 * 200).collect();
    assert_eq!(at, vec![3_800, 63_800], "{fired:#?}");
    assert!(fired.iter().all(|(_, a)| a.severity == Severity::Warning));
}

/// One new port every 1.5 s: never 20 within 10 s, however long it goes on.
#[test]
fn a_slow_scan_stays_below_the_window() {
    let mut alerts = Alerts::new(only(AlertKind::PortScan));
    let attacker = app("shop", "attacker", "10.0.1.66");
    let db = app("shop", "db", "10.0.2.7");
    let fired = run(
        &mut alerts,
        (0..120u64).map(|i| flow(&attacker, &db).port(2000 + i as u16).at(i * 1_500)),
    );
    assert_eq!(fired, vec![]);
}

/// Not scans: a client spreading over 30 replicas of a backend, a gateway reaching 10 services
/// on 3 ports each (30 ports, 10 peers), and a server answering 40 clients (reply records).
#[test]
fn busy_clients_gateways_and_servers_are_no_scanners() {
    let mut alerts = Alerts::new(only(AlertKind::PortScan));
    let client = app("shop", "client", "10.0.1.5");
    let gateway = app("edge", "gateway", "10.0.1.6");
    let server = app("shop", "api", "10.0.1.7");
    let mut flows = Vec::new();
    for round in 0..10u64 {
        let t = round * 1_000;
        for r in 0..30u64 {
            let replica = app("shop", "backend", &format!("10.0.3.{r}"));
            flows.push(flow(&client, &replica).port(8080).at(t + r));
        }
        for s in 0..10u64 {
            let svc = app("shop", &format!("svc{s}"), &format!("10.0.4.{s}"));
            for p in 0..3u16 {
                flows.push(
                    flow(&gateway, &svc)
                        .port(9000 + s as u16 * 3 + p)
                        .at(t + 100),
                );
            }
        }
        for c in 0..40u64 {
            let peer = ext(&format!("10.0.7.{c}"));
            flows.push(flow(&peer, &server).port(443).reply().at(t + 200));
        }
    }
    assert_eq!(run(&mut alerts, flows), vec![]);
    // The server's replies count for the clients (40 sources), not for the server.
    assert_eq!(alerts.stats().port_scan_sources, 42);
}

/// More sources than `max_sources`: the least recently seen are evicted, and counted.
#[test]
fn sources_are_bounded() {
    let mut cfg = only(AlertKind::PortScan);
    cfg.port_scan.max_sources = 16;
    let mut alerts = Alerts::new(cfg);
    let db = app("shop", "db", "10.0.2.7");
    for i in 0..100u64 {
        let src = ext(&format!("192.0.2.{i}"));
        feed(&mut alerts, flow(&src, &db).at(i));
    }
    let s = alerts.stats();
    assert!(s.port_scan_sources <= 16, "{s:?}");
    assert_eq!(s.evicted, 100 - s.port_scan_sources as u64);
    // Sources idle for longer than window + cooldown (70 s) are forgotten by the next sweep.
    feed(&mut alerts, flow(&ext("198.51.100.1"), &db).at(71_000));
    assert_eq!(alerts.stats().port_scan_sources, 1);
    assert_eq!(alerts.stats().evicted, 100);
}
