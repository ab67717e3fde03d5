//! Per-packet cost of the kernel programs with 10, 1,000 and 10,000 policies loaded (only
//! NetworkPolicies, and half of them Admin-tier ClusterNetworkPolicies)
//! (`cargo xtask bench`, as root). BPF_PROG_TEST_RUN with `repeat` reports the mean time per
//! run in the kernel; each figure is the median of several batches.
//!
//! Paths measured (ingress of the local pod x/a, which every policy selects):
//! - allowed new flow: a TCP RST from an allowed peer — a RST leaves its conntrack entry
//!   closed, so every repetition goes through identity lookup, policy probes and a conntrack
//!   insert like a new connection does;
//! - established: an ACK of a tracked connection;
//! - denied: a SYN from a peer no rule allows (all probes miss, the report is rate-limited).
//!
//! Each figure is also given above the cost of an empty TC program's test run, measured in
//! the same rounds: what the test run itself costs, which no packet on a real interface pays.

use std::fmt::Write as _;

use aya::programs::{TestRun, TestRunOptions};
use enforcer_common::maps::programs::POD_INGRESS;
use enforcer_tests::packet::*;
use enforcer_tests::{median, privileged, Fixture};

const BATCH: u32 = 10_000;
const ROUNDS: usize = 15;

fn policies(n: usize) -> String {
    let mut s = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: base, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]\n    ports: [{port: 80}]\n",
    );
    for i in 1..n {
        // Distinct peers and ports: every policy adds identity prefixes and policy entries.
        let _ = write!(
            s,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{i}, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: 172.{}.{}.{}/{}}}}}]\n    ports: [{{port: {}, endPort: {}}}]\n",
            16 + (i >> 16),
            (i >> 8) & 255,
            i & 255,
            if i % 3 == 0 { 30 } else { 32 },
            1000 + (i % 5000),
            1000 + (i % 5000) + (i % 7),
        );
    }
    s
}

/// The same number of policies, every other one an Admin-tier ClusterNetworkPolicy selecting
/// x's pods (a Deny of a distinct network on a port range, priorities spread over 0..1000), so
/// the pod's entries are resolved over three tiers.
fn tiered_policies(n: usize) -> String {
    let np = policies(n);
    let mut s = String::new();
    for (i, doc) in np.split("---\n").enumerate() {
        if i == 0 || i % 2 == 0 {
            if !s.is_empty() {
                s.push_str("---\n");
            }
            s.push_str(doc);
            continue;
        }
        let _ = write!(
            s,
            "---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: c{i}}}\nspec:\n  tier: Admin\n  priority: {}\n  subject: {{namespaces: {{matchLabels: {{ns: x}}}}}}\n  ingress:\n  - action: Deny\n    from: [{{namespaces: {{matchLabels: {{ns: z{i}}}}}}}]\n  - action: {}\n    from: [{{pods: {{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{matchLabels: {{pod: q{i}}}}}}}}}]\n    protocols: [{{tcp: {{destinationPort: {{range: {{start: {}, end: {}}}}}}}}}]\n",
            i % 1000,
            if i % 4 == 1 { "Deny" } else { "Pass" },
            1000 + (i % 5000),
            1001 + (i % 5000) + (i % 7),
        );
    }
    s
}

/// One measurement: mean ns per run over a batch.
fn batch_ns(f: &mut Fixture, pkt: &[u8]) -> f64 {
    let prog = f.dp.program(POD_INGRESS).expect("loaded");
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(pkt),
            repeat: BATCH,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    // Keep the ring buffer from filling up with allowed-connection events.
    f.drain_events();
    r.duration.as_nanos() as f64
}

fn main() {
    if !privileged() {
        return;
    }
    let sizes = [10usize, 1_000, 10_000];
    let new_flow = tcp("10.244.2.11", "10.244.1.10", 40000, 80, RST);
    let est = tcp("10.244.2.11", "10.244.1.10", 40001, 80, ACK);
    let denied = tcp("10.244.2.12", "10.244.1.10", 40002, 80, SYN);
    let mut fixtures = Vec::new();
    let series = sizes
        .iter()
        .map(|&n| (n, false, policies(n)))
        .chain(sizes.iter().map(|&n| (n, true, tiered_policies(n))));
    for (n, tiered, text) in series {
        let f = Fixture::new(&text);
        let syn = tcp("10.244.2.11", "10.244.1.10", 40001, 80, SYN);
        assert_eq!(
            f.ingress(&syn),
            enforcer_tests::PASS,
            "the base policy allows y/b:80"
        );
        assert_eq!(f.ingress(&denied), enforcer_tests::DROP);
        let entries = enforcer_tests::tables(&text)
            .endpoints
            .values()
            .map(|e| e.allows.len() + e.denies.len())
            .sum::<usize>();
        fixtures.push((n, tiered, entries, f, [Vec::new(), Vec::new(), Vec::new()]));
    }
    let empty = enforcer_tests::empty_program::EmptyProgram::load().expect("an empty TC program");
    let mut empty_samples = Vec::new();
    // Interleaved rounds, so that drift of the machine (other load, frequency) hits every
    // size alike.
    for _ in 0..ROUNDS {
        empty_samples.push(empty.run_ns(&est, BATCH).expect("BPF_PROG_TEST_RUN"));
        for (_, _, _, f, samples) in fixtures.iter_mut() {
            for (i, pkt) in [&new_flow, &est, &denied].into_iter().enumerate() {
                samples[i].push(batch_ns(f, pkt));
            }
        }
    }
    println!(
        "per-packet cost, ns (median of {ROUNDS} interleaved batches of {BATCH} runs; kernel {})",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let base = median(empty_samples);
    println!("empty program: {base:.1} ns per run (subtracted in the columns marked \"net\")");
    println!(
        "{:>9} {:>6} {:>10} {:>13} {:>12} {:>9} {:>9} {:>9} {:>9}",
        "policies",
        "tiers",
        "entries",
        "allowed new",
        "established",
        "denied",
        "new net",
        "est net",
        "den net"
    );
    for (n, tiered, entries, _, samples) in fixtures {
        let [a, b, c] = samples.map(median);
        let tiers = if tiered { "3" } else { "NP" };
        println!(
            "{n:>9} {tiers:>6} {entries:>10} {a:>13.1} {b:>12.1} {c:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            a - base,
            b - base,
            c - base
        );
    }
}
