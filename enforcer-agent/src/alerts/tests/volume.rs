//! Volume spikes per workload pair (defaults: 10 s buckets, factor 5, critical factor 20, at
//! least 50 connections or 1 MiB, 6 warm-up buckets, 60 s cooldown).

use super::*;
use crate::alerts::{Severity, Workload};

const BUCKET: u64 = 10_000;

fn w(s: &str) -> Workload {
    s.parse().unwrap()
}

/// Five connections a bucket (every 2 s) from `client` to `db` for `buckets` buckets, each
/// sampled a second later having carried 40 bytes out and 20 back.
fn steady(client: &FlowEnd, db: &FlowEnd, buckets: u64) -> Vec<Flow> {
    (0..buckets * 5)
        .flat_map(|i| {
            [
                flow(client, db).port(5432).at(i * 2_000),
                flow(client, db)
                    .port(5432)
                    .carried(40, 20)
                    .at(i * 2_000 + 1_000),
            ]
        })
        .collect()
}

fn run(alerts: &mut Alerts, flows: Vec<Flow>) -> Vec<(u64, Alert)> {
    flows
        .into_iter()
        .flat_map(|f| {
            let at = f.offset_ms;
            feed(alerts, f).into_iter().map(move |a| (at, a))
        })
        .collect()
}

#[test]
fn a_connection_spike_fires_then_escalates_once() {
    let mut alerts = Alerts::new(only(AlertKind::VolumeSpike));
    let client = app("shop", "client", "10.0.1.5");
    let db = app("shop", "db", "10.0.2.7");
    let mut flows = steady(&client, &db, 31);
    // 300 more connections in bucket 30 (after its 5 steady ones), 300 in bucket 31.
    for b in [30, 31] {
        for i in 0..300 {
            flows.push(flow(&client, &db).port(5432).at(b * BUCKET + 8_500 + i * 3));
        }
    }
    flows.sort_by_key(|f| f.offset_ms);
    let fired = run(&mut alerts, flows);
    let got: Vec<(u64, Severity)> = fired.iter().map(|(t, a)| (*t, a.severity)).collect();
    assert_eq!(
        got,
        vec![
            // The 50th connection of the bucket: 5 steady + 45 of the spike.
            (30 * BUCKET + 8_500 + 44 * 3, Severity::Warning),
            // max(50 × 20 / 5, 20 × 5) = 200.
            (30 * BUCKET + 8_500 + 194 * 3, Severity::Critical),
        ],
        "{fired:#?}"
    );
    let a = &fired[0].1;
    assert_eq!(a.kind, AlertKind::VolumeSpike);
    assert_eq!(a.source, w("shop/client"));
    assert_eq!(a.target, Some(w("shop/db")));
    let e = &a.evidence;
    // Bytes: the four steady connections sampled before the spike began.
    assert_eq!((e.counts["connections"], e.counts["bytes"]), (50, 4 * 60));
    assert_eq!((e.baseline, e.observed), (Some(5.0), Some(50.0)));
    assert_eq!(e.window_seconds, 10);
    assert_eq!(e.ports, vec![5432]);
    assert_eq!(e.peers, vec!["shop/db"]);
    assert!(
        a.summary.contains("50 connections in 10 s"),
        "{}",
        a.summary
    );
}

/// A few connections that carried a lot: a byte spike when they are sampled (with
/// `min_bytes` lowered to 100 kB).
#[test]
fn a_byte_spike_fires_on_bytes() {
    let mut cfg = only(AlertKind::VolumeSpike);
    cfg.volume.min_bytes = 100_000;
    let mut alerts = Alerts::new(cfg);
    let client = app("shop", "client", "10.0.1.5");
    let db = app("shop", "db", "10.0.2.7");
    let mut flows = steady(&client, &db, 31);
    for i in 0..10 {
        flows.push(
            flow(&client, &db)
                .port(5432)
                .carried(60_000, 5_535)
                .at(30 * BUCKET + 8_500 + i * 10),
        );
    }
    flows.sort_by_key(|f| f.offset_ms);
    let fired = run(&mut alerts, flows);
    let got: Vec<(Severity, Option<f64>)> = fired
        .iter()
        .map(|(_, a)| (a.severity, a.evidence.observed))
        .collect();
    // Warning from 100 kB (2 large), critical from 400 kB (7 large).
    assert_eq!(
        got,
        vec![
            (Severity::Warning, Some((240 + 2 * 65_535) as f64)),
            (Severity::Critical, Some((240 + 7 * 65_535) as f64)),
        ]
    );
    let a = &fired[0].1;
    assert_eq!(a.evidence.baseline, Some(300.0));
    // Samples are not connections: the five steady openings of the bucket.
    assert_eq!(a.evidence.counts["connections"], 5);
    assert!(a.summary.contains("131310 bytes"), "{}", a.summary);
}

/// A pair busy from its first bucket (200 a bucket) only learns during the warm-up, and its
/// steady rate never fires after it.
#[test]
fn a_new_pair_warms_up_first() {
    let mut alerts = Alerts::new(only(AlertKind::VolumeSpike));
    let client = app("shop", "client", "10.0.1.5");
    let db = app("shop", "db", "10.0.2.7");
    let flows = (0..200 * 30u64)
        .map(|i| flow(&client, &db).at(5_000 + i * 50))
        .collect();
    assert_eq!(run(&mut alerts, flows), vec![]);

    // Without warm-up the first bucket fires.
    let mut cfg = only(AlertKind::VolumeSpike);
    cfg.volume.warmup_buckets = 0;
    let mut alerts = Alerts::new(cfg);
    let flows = (0..200u64).map(|i| flow(&client, &db).at(i * 10)).collect();
    assert!(!run(&mut alerts, flows).is_empty());
}

/// Below the minimums nothing fires, however small the baseline; denied flows never count.
#[test]
fn minimums_and_denied_flows() {
    let mut alerts = Alerts::new(only(AlertKind::VolumeSpike));
    let client = app("shop", "client", "10.0.1.5");
    let db = app("shop", "db", "10.0.2.7");
    let mut flows = steady(&client, &db, 10);
    // Ten minutes of silence, then 40 connections in a bucket (baseline ~0, but < 50).
    for i in 0..40 {
        flows.push(flow(&client, &db).at(700_000 + i * 100));
    }
    // 500 denied in one bucket.
    for i in 0..500 {
        flows.push(flow(&client, &db).denied().at(800_000 + i * 10));
    }
    assert_eq!(run(&mut alerts, flows), vec![]);
}

/// More pairs than `max_pairs`: the least recently seen are evicted, and counted.
#[test]
fn pairs_are_bounded() {
    let mut cfg = only(AlertKind::VolumeSpike);
    cfg.volume.max_pairs = 8;
    let mut alerts = Alerts::new(cfg);
    let client = app("shop", "client", "10.0.1.5");
    for i in 0..50u64 {
        feed(
            &mut alerts,
            flow(&client, &ext(&format!("192.0.2.{i}"))).at(i),
        );
    }
    let s = alerts.stats();
    assert!(s.volume_pairs <= 8, "{s:?}");
    assert_eq!(s.evicted, 50 - s.volume_pairs as u64);
}

/// A connection's end adds nothing: its bytes were sampled while it ran.
#[test]
fn connection_ends_add_no_bytes() {
    let mut cfg = only(AlertKind::VolumeSpike);
    cfg.volume.min_bytes = 100_000;
    let mut alerts = Alerts::new(cfg);
    let client = app("shop", "client", "10.0.1.5");
    let db = app("shop", "db", "10.0.2.7");
    let mut flows = steady(&client, &db, 31);
    for i in 0..10 {
        let mut end = flow(&client, &db).port(5432).carried(60_000, 5_535);
        end.rec.end.as_mut().unwrap().reason = "closed".into();
        flows.push(end.at(30 * BUCKET + 8_500 + i * 10));
    }
    flows.sort_by_key(|f| f.offset_ms);
    assert_eq!(run(&mut alerts, flows), vec![]);
}
