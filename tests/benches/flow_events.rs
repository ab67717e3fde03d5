//! Flow-event throughput of the agent's record pipeline (`cargo xtask bench`, as root): the
//! real program emits allowed-connection events (a TCP RST from an allowed peer is a new flow
//! on every run) into the real ring buffer at a set rate, while a consumer thread runs the
//! agent's own flow sink (`agent::flow_sink::Pipeline`) on them: decode, attribute, the flow
//! log, the flow store, the metrics and the alert detectors. The kernel's lost-event counter
//! says when the consumer falls behind. Reports, per offered rate, the events delivered and
//! lost, twice: as the agent runs by default (allowed flows are not logged, drops are) and with
//! `--log-allowed` (every record serialised as a JSON line; here into a sink).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use aya::programs::{TestRun, TestRunOptions};
use enforcer_agent::agent::flow_sink::{Filter, Pipeline};
use enforcer_agent::alerts::{Alerts, AlertsConfig};
use enforcer_agent::flows::decode::decode;
use enforcer_agent::flows::enrich::Context;
use enforcer_agent::flows::store::FlowStore;
use enforcer_agent::metrics::Metrics;
use enforcer_common::maps::programs::POD_INGRESS;
use enforcer_common::reason::counter;
use enforcer_tests::packet::*;
use enforcer_tests::{cluster, privileged, tables, Fixture, CLUSTER};

/// The agent's allocator (`enforcer/src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: base, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]\n";
const STEP: Duration = Duration::from_secs(2);
const TICK: Duration = Duration::from_millis(5);
const RATES: [u64; 8] = [
    100_000, 200_000, 300_000, 400_000, 600_000, 800_000, 1_000_000, 1_200_000,
];

fn main() {
    if !privileged() {
        return;
    }
    if std::env::var_os("ENFORCER_BENCH_SINK_ONLY").is_some() {
        sink_alone();
        return;
    }
    sink_alone();
    for log_allowed in [false, true] {
        println!(
            "flow events through the agent's pipeline, {} ({}s per rate)",
            if log_allowed {
                "--log-allowed: every record a JSON line"
            } else {
                "default: allowed flows not logged"
            },
            STEP.as_secs()
        );
        println!(
            "{:>12} {:>12} {:>10} {:>8} {:>14}",
            "offered/s", "delivered/s", "lost", "loss %", "sink CPU ns/ev"
        );
        let mut sustained = 0u64;
        for rate in RATES {
            let r = run(rate, log_allowed);
            let loss = 100.0 * r.lost as f64 / r.offered.max(1) as f64;
            println!(
                "{:>12.0} {:>12.0} {:>10} {:>7.2}% {:>14.0}",
                r.offered as f64 / r.seconds,
                r.delivered as f64 / r.seconds,
                r.lost,
                loss,
                r.sink_cpu_ns as f64 / r.delivered.max(1) as f64
            );
            if r.lost == 0 {
                sustained = sustained.max(rate);
            }
        }
        println!("highest offered rate with zero loss: {sustained} events/s");
    }
}

struct Run {
    offered: u64,
    delivered: u64,
    lost: u64,
    seconds: f64,
    /// CPU time of the consumer thread over the run (its sleeps excluded).
    sink_cpu_ns: u64,
}

/// The sink's own cost per event, without the generator on the other core: events the real
/// program wrote (allowed connections from 256 client ports) captured from the ring once, then
/// decoded and run through the pipeline over and over, as `--log-allowed` and as the default.
/// (`ENFORCER_BENCH_SINK_ONLY=1`: this alone.)
fn sink_alone() {
    const EVENTS: usize = 1_000_000;
    let mut f = Fixture::new(POLICY);
    let mut ring = f.take_events();
    let prog = f.dp.program(POD_INGRESS).expect("loaded");
    for port in 0..256u16 {
        let pkt = tcp("10.244.2.11", "10.244.1.10", 40000 + port, 80, RST);
        prog.test_run(TestRunOptions {
            data_in: Some(&pkt),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    }
    let mut captured = Vec::new();
    while let Some(item) = ring.next() {
        captured.push(item.to_vec());
    }
    assert_eq!(captured.len(), 256, "one event per connection");
    for log_allowed in [false, true] {
        let ctx = Context::new(
            "bench",
            &cluster(&[CLUSTER, POLICY]),
            tables(POLICY),
            f.dp.endpoint_pods(),
        );
        let mut sink = pipeline(ctx, log_allowed);
        let start = Instant::now();
        let cpu0 = thread_cpu_ns();
        // In batches, as the sink drains the ring (decoded first: the same work).
        for batch in captured
            .iter()
            .cycle()
            .take(EVENTS)
            .collect::<Vec<_>>()
            .chunks(256)
        {
            let evs: Vec<_> = batch.iter().map(|b| decode(b).expect("decodes")).collect();
            sink.events(&evs);
        }
        let cpu = thread_cpu_ns() - cpu0;
        println!(
            "sink alone, {}: {:.0} ns CPU per event ({:.2} M events/s on one core, {EVENTS} events)",
            if log_allowed { "--log-allowed" } else { "default" },
            cpu as f64 / EVENTS as f64,
            EVENTS as f64 / start.elapsed().as_secs_f64() / 1e6,
        );
    }
}

/// The agent's flow sink as the agent wires it (the log into a sink).
fn pipeline(ctx: Context, log_allowed: bool) -> Pipeline {
    Pipeline {
        ctx: Arc::new(RwLock::new(ctx)),
        out: Box::new(std::io::sink()),
        filter: Filter {
            allowed: log_allowed,
            records: Default::default(),
        },
        metrics: Metrics::new(),
        store: FlowStore::new(10_000),
        alerts: Some(Alerts::new(AlertsConfig::default())),
        webhook: None,
    }
}

/// Events at `rate` for `STEP` through a fresh datapath and the agent's flow sink.
fn run(rate: u64, log_allowed: bool) -> Run {
    let mut f = Fixture::new(POLICY);
    let mut ring = f.take_events();
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
            let mut sink = pipeline(ctx, log_allowed);
            let records = |s: &Pipeline| s.alerts.as_ref().expect("on").stats().records;
            let cpu0 = thread_cpu_ns();
            loop {
                let before = records(&sink);
                sink.drain(&mut ring);
                let n = records(&sink) - before;
                consumed.fetch_add(n, Ordering::Relaxed);
                if n == 0 {
                    if done.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            thread_cpu_ns() - cpu0
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
    let seconds = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    done.store(true, Ordering::Relaxed);
    let sink_cpu_ns = consumer.join().expect("consumer");
    Run {
        offered,
        delivered: consumed.load(Ordering::Relaxed),
        lost: f.counter(counter::EVENTS_LOST) - lost_before,
        seconds,
        sink_cpu_ns,
    }
}

/// CPU time of the calling thread.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer; the thread clock always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
