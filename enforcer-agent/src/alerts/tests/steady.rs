//! Normal traffic through every detector with its defaults: nothing fires.

use super::*;

/// For 30 minutes, every second: a client connects to the same 3 services (a database and a
/// cache on this node, seen at both veths; an external API) and to DNS (2 replicas, UDP); a
/// legacy pod is denied 8 to 12 times a second.
#[test]
fn steady_traffic_raises_nothing() {
    let mut alerts = Alerts::new(AlertsConfig::default());
    let client = pod("shop", "client-7d4b9c8f6-x7k2p", "10.0.1.5");
    let db = pod("shop", "db-0", "10.0.2.7");
    let cache = app("shop", "cache", "10.0.2.8");
    let api = ext("93.184.216.34");
    let dns = [
        app("kube-system", "kube-dns", "10.0.0.10"),
        app("kube-system", "kube-dns", "10.0.0.11"),
    ];
    let legacy = app("shop", "legacy", "10.0.1.99");
    let mut fired = Vec::new();
    for s in 0..1_800u64 {
        let t = s * 1_000;
        let mut flows = vec![
            flow(&client, &dns[(s % 2) as usize]).port(53).at(t),
            flow(&client, &db).port(5432).at(t + 10),
            flow(&client, &db).port(5432).at(t + 11),
            flow(&client, &cache).port(6379).at(t + 20),
            flow(&client, &cache).port(6379).at(t + 21),
            flow(&client, &api).port(443).len(517).at(t + 30),
        ];
        flows[0].rec.protocol = "UDP".into();
        flows[2].rec.direction = crate::compile::tables::Direction::Ingress;
        flows[4].rec.direction = crate::compile::tables::Direction::Ingress;
        let denies = 8 + (s * 7) % 5;
        for i in 0..denies {
            flows.push(flow(&legacy, &db).port(5432).denied().at(t + 100 + i * 80));
        }
        for f in flows {
            fired.extend(feed(&mut alerts, f));
        }
    }
    assert_eq!(fired, vec![], "{fired:#?}");
    let s = alerts.stats();
    assert_eq!(
        s.records,
        1_800 * 6 + (0..1_800u64).map(|s| 8 + (s * 7) % 5).sum::<u64>()
    );
    // The detectors saw the traffic: client→{dns, db, cache, api /24} learned; 4 volume pairs;
    // the legacy pod is tracked for deny bursts.
    assert_eq!(s.first_seen_edges, 4);
    assert_eq!(s.volume_pairs, 4);
    assert_eq!(s.deny_burst_sources, 1);
    assert_eq!(s.port_scan_sources, 2);
}
