//! Per-packet cost of Service translation with 10, 1,000 and 10,000 Services loaded (`cargo
//! xtask bench`, as root): BPF_PROG_TEST_RUN, the median of interleaved batches.
//!
//! Unlike the policy benchmark (`datapath.rs`), every run is its own `BPF_PROG_TEST_RUN` call
//! (`repeat` 1) and a batch is the mean of the kernel's per-call durations: with `repeat` the
//! program runs again on the same buffer, which the first run already rewrote, so later runs
//! would measure an untranslated packet. A single run's duration includes the kernel's clock
//! reads around it: compare the columns with each other (`direct` is the same measurement of a
//! packet that needs no translation), not with `datapath.rs`'s figures.
//!
//! Paths measured, for the local pod x/a whose egress a policy isolates (it may reach the
//! backend y/b on 8080), connecting to the last Service's ClusterIP on port 80:
//! - new: a RST to the Service (the connection closes at once, so every repetition opens it
//!   again: frontend lookup, backend choice, policy probes, conntrack and NAT inserts,
//!   rewrite);
//! - established: an ACK of a translated connection (NAT lookup, conntrack, rewrite);
//! - reply: the backend's ACK entering x/a (conntrack, reverse NAT lookup, rewrite);
//! - direct: an ACK of a connection straight to the backend (no Service), for comparison.

use std::fmt::Write as _;

use aya::programs::{TestRun, TestRunOptions};
use enforcer_common::maps::programs::{POD_EGRESS, POD_INGRESS};
use enforcer_tests::packet::*;
use enforcer_tests::{median, privileged, Fixture, PASS};

const BATCH: u32 = 2_000;
const ROUNDS: usize = 15;

/// `n` Services in y, each backed by y/b (pod=b) at 8080, ClusterIPs from 10.96.0.1; plus
/// the egress policy of x/a.
fn objects(n: usize) -> String {
    let mut s = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: out, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]\n    ports: [{port: 8080}]\n",
    );
    for i in 1..=n {
        let _ = write!(
            s,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: y}}\nspec: {{clusterIP: {}, selector: {{pod: b}}, ports: [{{port: 80, targetPort: 8080}}]}}\n",
            vip(i)
        );
    }
    s
}

fn vip(i: usize) -> String {
    format!("10.96.{}.{}", i >> 8, i & 255)
}

fn batch_ns(f: &mut Fixture, program: &str, pkt: &[u8]) -> f64 {
    let prog = f.dp.program(program).expect("loaded");
    let mut total = 0u128;
    for _ in 0..BATCH {
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(pkt),
                repeat: 1,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        total += r.duration.as_nanos();
    }
    f.drain_events();
    total as f64 / f64::from(BATCH)
}

fn main() {
    if !privileged() {
        return;
    }
    let sizes = [10usize, 1_000, 10_000];
    let mut fixtures = Vec::new();
    for n in sizes {
        let f = Fixture::new(&objects(n));
        let target = vip(n);
        let new = with_l4_checksum(tcp("10.244.1.10", &target, 41000, 80, RST));
        let est = with_l4_checksum(tcp("10.244.1.10", &target, 41001, 80, ACK));
        let reply = with_l4_checksum(tcp("10.244.2.11", "10.244.1.10", 8080, 41001, ACK));
        let direct = with_l4_checksum(tcp("10.244.1.10", "10.244.2.11", 41002, 8080, ACK));
        // Open the measured connections (an ACK opens a mid-stream connection too).
        let (verdict, out) = f.egress_out(&est);
        assert_eq!(verdict, PASS, "x/a may reach the Service");
        assert_eq!(
            seen(&out).dst,
            enforcer_tests::ip("10.244.2.11"),
            "translated"
        );
        assert_eq!(f.egress(&direct), PASS);
        assert_eq!(f.ingress(&reply), PASS);
        fixtures.push((n, f, [new, est, reply, direct], [(); 4].map(|_| Vec::new())));
    }
    for _ in 0..ROUNDS {
        for (_, f, pkts, samples) in fixtures.iter_mut() {
            for (i, program) in [POD_EGRESS, POD_EGRESS, POD_INGRESS, POD_EGRESS]
                .into_iter()
                .enumerate()
            {
                samples[i].push(batch_ns(f, program, &pkts[i]));
            }
        }
    }
    println!(
        "Service translation, ns per packet (median of {ROUNDS} interleaved batches of {BATCH} single runs; kernel {})",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "{:>9} {:>9} {:>12} {:>9} {:>9}",
        "services", "new", "established", "reply", "direct"
    );
    for (n, _, _, samples) in fixtures {
        let [a, b, c, d] = samples.map(median);
        println!("{n:>9} {a:>9.1} {b:>12.1} {c:>9.1} {d:>9.1}");
    }
}
