//! Flow-event throughput of the agent's record pipeline (`cargo xtask bench`, as root): the
//! real program emits allowed-connection events (a TCP RST from an allowed peer is a new flow
//! on every run) into the real ring buffer at a set rate, while a consumer thread does what the
//! agent does with each event: decode, attribute, serialise as a JSON line, keep in the flow
//! store, feed the metrics and the alert detectors. The kernel's lost-event counter says when
//! the consumer falls behind. Reports, per offered rate, the events delivered and lost.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aya::programs::{TestRun, TestRunOptions};
use enforcer_agent::alerts::{Alerts, AlertsConfig};
use enforcer_agent::flows::decode::decode;
use enforcer_agent::flows::enrich::Context;
use enforcer_agent::flows::store::FlowStore;
use enforcer_agent::metrics::Metrics;
use enforcer_common::maps::programs::POD_INGRESS;
use enforcer_common::reason::counter;
use enforcer_tests::packet::*;
use enforcer_tests::{cluster, privileged, tables, Fixture, CLUSTER};

const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: base, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]\n";
const STEP: Duration = Duration::from_secs(2);
const TICK: Duration = Duration::from_millis(5);

fn main() {
    if !privileged() {
        return;
    }
    println!(
        "flow events through the agent's pipeline ({}s per rate)",
        STEP.as_secs()
    );
    println!(
        "{:>12} {:>12} {:>10} {:>12}",
        "offered/s", "delivered/s", "lost", "loss %"
    );
    let mut sustained = 0u64;
    for rate in [
        50_000u64, 100_000, 150_000, 200_000, 250_000, 300_000, 400_000,
    ] {
        let mut f = Fixture::new(POLICY);
        let ring = f.take_events();
        let ctx = Context::new(
            "bench",
            &cluster(&[CLUSTER, POLICY]),
            tables(POLICY),
            f.dp.endpoint_pods(),
        );
        let done = Arc::new(AtomicBool::new(false));
        let consumed = Arc::new(AtomicU64::new(0));
        let consumer = {
            let (done, consumed) = (done.clone(), consumed.clone());
            std::thread::spawn(move || {
                let mut ring = ring;
                let store = FlowStore::new(10_000);
                let metrics = Metrics::new();
                let mut alerts = Alerts::new(AlertsConfig::default());
                let mut out = std::io::sink();
                loop {
                    let mut n = 0;
                    while let Some(item) = ring.next() {
                        let ev = decode(&item).expect("decodable");
                        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
                        let rec = ctx.record(&ev, time);
                        metrics.observe_flow(&rec);
                        serde_json::to_writer(&mut out, &rec).unwrap();
                        out.write_all(b"\n").unwrap();
                        let _ = alerts.observe(&rec, SystemTime::now());
                        store.push(rec);
                        n += 1;
                    }
                    consumed.fetch_add(n, Ordering::Relaxed);
                    if n == 0 {
                        if done.load(Ordering::Relaxed) {
                            break;
                        }
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            })
        };
        let pkt = tcp("10.244.2.11", "10.244.1.10", 40000, 80, RST);
        let prog = f.dp.program(POD_INGRESS).expect("loaded");
        let per_tick = (rate * TICK.as_micros() as u64 / 1_000_000).max(1) as u32;
        let lost_before = f.counter(counter::EVENTS_LOST);
        let start = Instant::now();
        let mut offered = 0u64;
        let mut next = start;
        while start.elapsed() < STEP {
            prog.test_run(TestRunOptions {
                data_in: Some(&pkt),
                repeat: per_tick,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
            offered += u64::from(per_tick);
            next += TICK;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(300));
        done.store(true, Ordering::Relaxed);
        consumer.join().expect("consumer");
        let lost = f.counter(counter::EVENTS_LOST) - lost_before;
        let delivered = consumed.load(Ordering::Relaxed);
        let loss = 100.0 * lost as f64 / offered.max(1) as f64;
        println!(
            "{:>12.0} {:>12.0} {:>10} {:>11.2}%",
            offered as f64 / elapsed,
            delivered as f64 / elapsed,
            lost,
            loss
        );
        if lost == 0 {
            sustained = sustained.max(rate);
        }
    }
    println!("highest offered rate with zero loss: {sustained} events/s");
}
