//! First-seen edges (defaults: 300 s of learning from the first record; private ranges are
//! internal).

use super::*;
use crate::alerts::{Severity, Workload};

const LEARNED: u64 = 300_000;

fn w(s: &str) -> Workload {
    s.parse().unwrap()
}

#[test]
fn a_new_edge_after_learning_fires_once() {
    let mut alerts = Alerts::new(only(AlertKind::FirstSeenEdge));
    let client = pod("shop", "client-7d4b9c8f6-x7k2p", "10.0.1.5");
    let other_replica = pod("shop", "client-7d4b9c8f6-q9zvd", "10.0.1.9");
    let db = app("shop", "db", "10.0.2.7");
    let queue = app("shop", "queue", "10.0.2.8");
    // Learning starts with the first record, whenever that is.
    let start = 1_000_000;
    assert_eq!(feed(&mut alerts, flow(&client, &db).at(start)), vec![]);
    assert_eq!(
        feed(
            &mut alerts,
            flow(&client, &app("shop", "cache", "10.0.2.9")).at(start + 100_000)
        ),
        vec![]
    );
    // A new edge seen just before learning ends is learned, silently.
    let end = start + LEARNED;
    assert_eq!(feed(&mut alerts, flow(&db, &queue).at(end - 1)), vec![]);
    assert_eq!(feed(&mut alerts, flow(&db, &queue).at(end + 1)), vec![]);
    // Known edges stay quiet, from any replica.
    assert_eq!(
        feed(&mut alerts, flow(&other_replica, &db).at(end + 2)),
        vec![]
    );

    let fired = feed(&mut alerts, flow(&client, &queue).port(5672).at(end + 3));
    assert_eq!(fired.len(), 1);
    let a = &fired[0];
    assert_eq!(
        (a.kind, a.severity),
        (AlertKind::FirstSeenEdge, Severity::Info)
    );
    assert_eq!(a.source, w("shop/client"));
    assert_eq!(a.target, Some(w("shop/queue")));
    assert_eq!(a.evidence.ports, vec![5672]);
    assert_eq!(a.evidence.peers, vec!["shop/queue"]);
    assert_eq!(a.evidence.window_seconds, 300);
    assert_eq!(a.evidence.counts["known_edges"], 3);
    assert!(
        a.summary.contains("from shop/client to shop/queue"),
        "{}",
        a.summary
    );
    // Once only, for either replica.
    assert_eq!(feed(&mut alerts, flow(&client, &queue).at(end + 4)), vec![]);
    assert_eq!(
        feed(&mut alerts, flow(&other_replica, &queue).at(end + 5)),
        vec![]
    );
    assert_eq!(alerts.stats().first_seen_edges, 4);
}

/// External destinations are aggregated to their /24 or /64 and are warnings; internal
/// non-pod ones (a service address) are aggregated too, but info.
#[test]
fn external_networks_are_aggregated_and_warn() {
    let mut alerts = Alerts::new(only(AlertKind::FirstSeenEdge));
    let client = app("shop", "client", "10.0.1.5");
    feed(&mut alerts, flow(&client, &ext("93.184.215.1")).at(0));
    let cases = [
        (
            "93.184.216.34",
            Some((Severity::Warning, "cidr:93.184.216.0/24")),
        ),
        ("93.184.216.99", None),
        ("93.184.215.7", None),
        (
            "2001:db8:5:6::1",
            Some((Severity::Warning, "cidr:2001:db8:5:6::/64")),
        ),
        ("2001:db8:5:6:ffff::2", None),
        ("10.96.0.10", Some((Severity::Info, "cidr:10.96.0.0/24"))),
        ("10.96.0.11", None),
    ];
    for (i, (ip, want)) in cases.into_iter().enumerate() {
        let fired = feed(
            &mut alerts,
            flow(&client, &ext(ip)).port(443).at(LEARNED + i as u64),
        );
        let got: Vec<(Severity, String)> = fired
            .iter()
            .map(|a| (a.severity, a.target.as_ref().unwrap().to_string()))
            .collect();
        let want: Vec<(Severity, String)> =
            want.map(|(s, t)| (s, t.to_string())).into_iter().collect();
        assert_eq!(got, want, "{ip}");
        if let Some(a) = fired.first() {
            assert_eq!(a.evidence.peers, vec![format!("ip:{ip}")]);
        }
    }
    let fired = feed(
        &mut alerts,
        flow(&client, &ext("198.51.100.1")).at(LEARNED + 10),
    );
    assert!(
        fired[0]
            .summary
            .contains("to external cidr:198.51.100.0/24"),
        "{}",
        fired[0].summary
    );
}

/// Denied flows, reply records and non-pod sources teach nothing and report nothing.
#[test]
fn only_allowed_connections_from_pods_count() {
    let mut alerts = Alerts::new(only(AlertKind::FirstSeenEdge));
    let client = app("shop", "client", "10.0.1.5");
    let db = app("shop", "db", "10.0.2.7");
    feed(&mut alerts, flow(&client, &db).at(0));
    let t = LEARNED + 1;
    assert_eq!(
        feed(
            &mut alerts,
            flow(&client, &app("shop", "x", "10.0.2.1")).denied().at(t)
        ),
        vec![]
    );
    assert_eq!(
        feed(&mut alerts, flow(&ext("192.0.2.1"), &db).at(t)),
        vec![]
    );
    // A reply from db to client is the client→db edge, already known.
    assert_eq!(feed(&mut alerts, flow(&client, &db).reply().at(t)), vec![]);
    // A reply is never the first sight of an edge.
    assert_eq!(
        feed(
            &mut alerts,
            flow(&client, &app("shop", "y", "10.0.2.2")).reply().at(t)
        ),
        vec![]
    );
    assert_eq!(alerts.stats().first_seen_edges, 1);
    // The edge denied above fires once it is allowed.
    assert_eq!(
        feed(
            &mut alerts,
            flow(&client, &app("shop", "x", "10.0.2.1")).at(t)
        )
        .len(),
        1
    );
}

/// With room for 2 edges, a third new edge is neither learned nor reported, and is counted.
#[test]
fn the_edge_set_is_bounded() {
    let mut cfg = only(AlertKind::FirstSeenEdge);
    cfg.first_seen.max_edges = 2;
    let mut alerts = Alerts::new(cfg);
    let client = app("shop", "client", "10.0.1.5");
    feed(
        &mut alerts,
        flow(&client, &app("shop", "a", "10.0.2.1")).at(0),
    );
    assert_eq!(
        feed(
            &mut alerts,
            flow(&client, &app("shop", "b", "10.0.2.2")).at(LEARNED)
        )
        .len(),
        1
    );
    for i in 0..3 {
        let c = app("shop", "c", "10.0.2.3");
        assert_eq!(feed(&mut alerts, flow(&client, &c).at(LEARNED + i)), vec![]);
    }
    let s = alerts.stats();
    assert_eq!((s.first_seen_edges, s.first_seen_overflow), (2, 3));
}
