//! Deny bursts against the source's own baseline (defaults: 5 s buckets, min 20, factor 5,
//! critical factor 20, alpha 0.1, 3 warm-up buckets, 60 s cooldown).

use super::*;
use crate::alerts::{Severity, Workload};

const BUCKET: u64 = 5_000;

fn w(s: &str) -> Workload {
    s.parse().unwrap()
}

/// Denied flows from `src` to `dst`: one a bucket (at +1 s) for `buckets` buckets, plus
/// `burst` more (20 ms apart from +2 s) in each bucket of `bursts`. Sorted by time.
fn traffic(src: &FlowEnd, dst: &FlowEnd, buckets: u64, bursts: &[(u64, u64)]) -> Vec<Flow> {
    let mut out = Vec::new();
    for b in 0..buckets {
        out.push(flow(src, dst).port(5432).denied().at(b * BUCKET + 1_000));
        for &(bucket, n) in bursts.iter().filter(|(bucket, _)| *bucket == b) {
            for i in 0..n {
                out.push(
                    flow(src, dst)
                        .port(5432)
                        .denied()
                        .at(bucket * BUCKET + 2_000 + i * 20),
                );
            }
        }
    }
    out
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
fn fires_over_its_own_baseline_once_per_cooldown() {
    let mut alerts = Alerts::new(only(AlertKind::DenyBurst));
    let client = app("shop", "client", "10.0.1.5");
    let db = app("shop", "db", "10.0.2.7");
    // Baseline 1 a bucket; bursts of 30 at 120 s, 150 s (in the cooldown) and 190 s.
    let fired = run(
        &mut alerts,
        traffic(&client, &db, 50, &[(24, 30), (30, 30), (38, 30)]),
    );
    let at: Vec<u64> = fired.iter().map(|(t, _)| *t).collect();
    // The 20th denied flow of bucket 24: the one-a-bucket flow and 19 of the burst.
    assert_eq!(
        at,
        vec![24 * BUCKET + 2_000 + 18 * 20, 38 * BUCKET + 2_000 + 18 * 20]
    );
    let a = &fired[0].1;
    assert_eq!(
        (a.kind, a.severity),
        (AlertKind::DenyBurst, Severity::Warning)
    );
    assert_eq!(a.source, w("shop/client"));
    assert_eq!(a.target, Some(w("shop/db")));
    let e = &a.evidence;
    assert_eq!(e.counts["denied"], 20);
    assert_eq!((e.baseline, e.observed), (Some(1.0), Some(20.0)));
    assert_eq!(e.window_seconds, 5);
    assert_eq!(e.peers, vec!["shop/db"]);
    assert_eq!(e.ports, vec![5432]);
    assert!(
        a.summary.contains("20 denied flows to shop/db in 5 s"),
        "{}",
        a.summary
    );
}

/// 40 denied flows in a bucket: a burst for a quiet source, normal for one that is denied 10
/// times a bucket anyway (40 < 5 × 10).
#[test]
fn the_baseline_is_the_sources_own() {
    let mut alerts = Alerts::new(only(AlertKind::DenyBurst));
    let busy = app("shop", "busy", "10.0.1.5");
    let quiet = app("shop", "quiet", "10.0.1.6");
    let db = app("shop", "db", "10.0.2.7");
    let mut flows = Vec::new();
    for b in 0..20u64 {
        let n = if b == 12 { 40 } else { 10 };
        for i in 0..n {
            flows.push(flow(&busy, &db).denied().at(b * BUCKET + i * 100));
        }
        if b == 0 {
            flows.push(flow(&quiet, &db).denied().at(b * BUCKET + 4_000));
        }
        if b == 12 {
            for i in 0..40 {
                flows.push(flow(&quiet, &db).denied().at(b * BUCKET + 4_000 + i * 10));
            }
        }
    }
    flows.sort_by_key(|f| f.offset_ms);
    let fired = run(&mut alerts, flows);
    assert_eq!(fired.len(), 1, "{fired:#?}");
    assert_eq!(fired[0].1.source, w("shop/quiet"));
    assert_eq!(fired[0].1.evidence.counts["denied"], 20);
}

/// 100 in one bucket over a baseline of 1: warning at 20, critical at 80 (= 20 × 20 / 5).
#[test]
fn escalates_to_critical_once() {
    let mut alerts = Alerts::new(only(AlertKind::DenyBurst));
    let client = app("shop", "client", "10.0.1.5");
    let db = app("shop", "db", "10.0.2.7");
    let fired = run(&mut alerts, traffic(&client, &db, 12, &[(10, 100)]));
    let sev: Vec<(Severity, u64)> = fired
        .iter()
        .map(|(_, a)| (a.severity, a.evidence.counts["denied"]))
        .collect();
    assert_eq!(sev, vec![(Severity::Warning, 20), (Severity::Critical, 80)]);
}

/// A source first seen while denied 40 times a bucket (e.g. after an agent restart): its first
/// three buckets only teach the baseline, and the steady rate never fires afterwards.
#[test]
fn a_new_source_learns_before_it_can_fire() {
    let mut alerts = Alerts::new(only(AlertKind::DenyBurst));
    let client = app("shop", "client", "10.0.1.5");
    let db = app("shop", "db", "10.0.2.7");
    let flows = (0..40 * 60u64)
        .map(|i| flow(&client, &db).denied().at(2_500 + i * 125))
        .collect();
    assert_eq!(run(&mut alerts, flows), vec![]);

    // With no warm-up, the first bucket fires (the baseline is still zero).
    let mut cfg = only(AlertKind::DenyBurst);
    cfg.deny_burst.warmup_buckets = 0;
    let mut alerts = Alerts::new(cfg);
    let flows = (0..40u64)
        .map(|i| flow(&client, &db).denied().at(i * 125))
        .collect();
    assert_eq!(run(&mut alerts, flows).len(), 1);
}

/// A source denied 8 to 12 times a second for 30 minutes, to a few peers.
#[test]
fn a_steady_deny_rate_never_fires() {
    let mut alerts = Alerts::new(only(AlertKind::DenyBurst));
    let client = app("shop", "client", "10.0.1.5");
    let peers = [
        app("shop", "db", "10.0.2.7"),
        app("shop", "cache", "10.0.2.8"),
        ext("93.184.216.34"),
    ];
    let mut flows = Vec::new();
    for s in 0..1_800u64 {
        let n = 8 + (s * 7) % 5;
        for i in 0..n {
            let peer = &peers[((s + i) % 3) as usize];
            flows.push(flow(&client, peer).denied().at(s * 1_000 + i * (1_000 / n)));
        }
    }
    assert_eq!(run(&mut alerts, flows), vec![]);
    assert_eq!(alerts.stats().deny_burst_sources, 1);
}

/// A burst spread over 30 peers names no single target and lists a bounded set of peers.
#[test]
fn a_burst_to_many_peers_lists_a_bounded_set() {
    let mut alerts = Alerts::new(only(AlertKind::DenyBurst));
    let client = app("shop", "client", "10.0.1.5");
    let db = app("shop", "db", "10.0.2.7");
    let mut flows = traffic(&client, &db, 10, &[]);
    for i in 0..30u64 {
        let peer = ext(&format!("10.0.9.{i}"));
        flows.push(flow(&client, &peer).denied().at(10 * BUCKET + 100 + i * 10));
    }
    let fired = run(&mut alerts, flows);
    assert_eq!(fired.len(), 1);
    let a = &fired[0].1;
    assert_eq!(a.target, None);
    assert_eq!(a.evidence.peers.len(), 20);
    assert!(a.summary.contains("to 20 peers"), "{}", a.summary);
    // Allowed flows never count.
    let mut alerts = Alerts::new(only(AlertKind::DenyBurst));
    for i in 0..200u64 {
        assert_eq!(feed(&mut alerts, flow(&client, &db).at(i * 10)), vec![]);
    }
}

/// Silent buckets count as zeros: 50 a bucket for 2 minutes, then 10 minutes of silence; 40
/// in a bucket is then a burst again (with a baseline still at 50 it would not be).
#[test]
fn the_baseline_decays_over_silent_buckets() {
    let mut alerts = Alerts::new(only(AlertKind::DenyBurst));
    let client = app("shop", "client", "10.0.1.5");
    let db = app("shop", "db", "10.0.2.7");
    let mut flows: Vec<Flow> = (0..24 * 50u64)
        .map(|i| flow(&client, &db).denied().at(i * 100))
        .collect();
    let back = 24 * BUCKET + 600_000;
    flows.extend((0..40u64).map(|i| flow(&client, &db).denied().at(back + i * 10)));
    let fired = run(&mut alerts, flows);
    assert_eq!(fired.len(), 1, "{fired:#?}");
    assert!(fired[0].1.evidence.baseline.unwrap() < 0.1, "{fired:#?}");
}
