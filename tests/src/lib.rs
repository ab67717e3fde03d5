//! Shared pieces of the kernel integration tests: packet builders and a fixture that loads the
//! real object, fills its maps through the agent's own compiler and dataplane code, and runs
//! crafted packets through the programs with `BPF_PROG_TEST_RUN`.

pub mod empty_program;
pub mod packet;
pub mod root;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use aya::maps::{MapData, RingBuf};
use aya::programs::{TestRun, TestRunOptions};
use enforcer_agent::compile::{compile, NodeInput, Tables};
use enforcer_agent::dataplane::Dataplane;
use enforcer_agent::flows::decode::{decode, Event};
use enforcer_agent::model::{Cluster, PodKey};
use enforcer_agent::source::manifests::parse_file;
use enforcer_agent::source::objects::{cluster_of, Object};
use enforcer_common::maps::programs::{POD_EGRESS, POD_INGRESS};

/// tcx verdicts as `BPF_PROG_TEST_RUN` returns them.
pub const PASS: u32 = -1i32 as u32;
pub const DROP: u32 = 2;
/// `TC_ACT_REDIRECT`: handed to another device (a hairpin goes back into the pod).
pub const REDIRECT: u32 = 7;

/// The loopback: where `BPF_PROG_TEST_RUN` runs skb programs by default.
const TEST_IFINDEX: u32 = 1;

/// Whether this process may load BPF programs (root: CAP_BPF, CAP_NET_ADMIN). Tests return
/// otherwise, and the skip is recorded so that `cargo xtask test` fails (see [`root`]).
#[track_caller]
pub fn privileged() -> bool {
    root::root_or_skip()
}

/// The cluster of most kernel tests: namespaces x and y; local pod x/a (dual stack), peers
/// x/b, y/b, y/c; node address 10.244.0.1.
pub const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {ns: y}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec:
  containers:
  - name: c
    ports:
    - {containerPort: 80, name: http}
    - {containerPort: 53, name: dns, protocol: UDP}
    - {containerPort: 9000, name: sctp, protocol: SCTP}
status: {podIP: 10.244.1.10, podIPs: [{ip: 10.244.1.10}, {ip: "fd00:10:244:1::10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: other, containers: [{name: c}]}
status: {podIP: 10.244.1.11, podIPs: [{ip: 10.244.1.11}, {ip: "fd00:10:244:1::11"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: y, labels: {pod: b}}
spec: {nodeName: other, containers: [{name: c}]}
status: {podIP: 10.244.2.11, podIPs: [{ip: 10.244.2.11}, {ip: "fd00:10:244:2::11"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y, labels: {pod: c}}
spec: {nodeName: other, containers: [{name: c}]}
status: {podIP: 10.244.2.12, podIPs: [{ip: 10.244.2.12}, {ip: "fd00:10:244:2::12"}]}
"#;

pub const NODE_IP: &str = "10.244.0.1";

/// The median of benchmark samples.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("a valid address in a test")
}

/// Builds a cluster from YAML streams, panicking on anything invalid (fixtures are valid).
pub fn cluster(yaml: &[&str]) -> Cluster {
    let mut objects: BTreeMap<_, Object> = BTreeMap::new();
    for text in yaml {
        let (parsed, errors) = parse_file(text);
        assert!(errors.is_empty(), "fixture errors: {errors:?}");
        for (_, api) in parsed {
            let o = api.convert().expect("fixture objects are valid");
            objects.insert(o.key(), o);
        }
    }
    cluster_of(objects.values())
}

pub fn tables(policies: &str) -> Tables {
    let cluster = cluster(&[CLUSTER, policies]);
    compile(
        &cluster,
        &NodeInput {
            name: "node".into(),
            host_ips: vec![ip(NODE_IP)],
            audit: false,
        },
    )
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The real datapath with its own pins, the local pod x/a on the test interface.
pub struct Fixture {
    pub dp: Dataplane,
    events: Option<RingBuf<MapData>>,
    pin_dir: PathBuf,
    pod: PodKey,
}

impl Fixture {
    pub fn new(policies: &str) -> Fixture {
        Self::with_sizes(policies, &[])
    }

    /// With some maps resized (by name), e.g. a tiny conntrack table.
    pub fn with_sizes(policies: &str, sizes: &[(&'static str, u32)]) -> Fixture {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/enforcer/test-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&pin_dir);
        let mut dp = Dataplane::open_with_sizes(&pin_dir, sizes).expect("loading the datapath");
        let events = dp.take_events().expect("first take");
        let pod = PodKey::new("x", "a");
        let mut f = Fixture {
            dp,
            events: Some(events),
            pin_dir,
            pod,
        };
        f.apply(policies);
        f
    }

    /// Applies a new set of policies (the cluster stays the same).
    pub fn apply(&mut self, policies: &str) {
        self.apply_report(policies);
    }

    /// Applies a new set of policies and returns what the sync did.
    pub fn apply_report(&mut self, policies: &str) -> enforcer_agent::dataplane::SyncReport {
        let t = tables(policies);
        assert!(t.endpoints.contains_key(&self.pod), "x/a must be local");
        self.dp
            .sync_for_test_run(&t, &self.pod, TEST_IFINDEX)
            .expect("syncing the maps")
    }

    fn run(&self, program: &str, pkt: &[u8]) -> u32 {
        let prog = self.dp.program(program).expect("program loaded");
        let opts = TestRunOptions {
            data_in: Some(pkt),
            repeat: 1,
            ..Default::default()
        };
        prog.test_run(opts).expect("BPF_PROG_TEST_RUN").return_value
    }

    /// Runs a packet and returns the verdict with the packet as the program left it.
    fn run_out(&self, program: &str, pkt: &[u8]) -> (u32, Vec<u8>) {
        let prog = self.dp.program(program).expect("program loaded");
        let mut out = vec![0u8; pkt.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(pkt),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        };
        let result = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
        out.truncate(pkt.len());
        (result.return_value, out)
    }

    /// Runs a packet leaving x/a; returns the verdict and the packet as it leaves the hook.
    pub fn egress_out(&self, pkt: &[u8]) -> (u32, Vec<u8>) {
        self.run_out(POD_EGRESS, pkt)
    }

    /// Runs a packet entering x/a; returns the verdict and the packet as it leaves the hook.
    pub fn ingress_out(&self, pkt: &[u8]) -> (u32, Vec<u8>) {
        self.run_out(POD_INGRESS, pkt)
    }

    /// Runs a packet leaving x/a.
    pub fn egress(&self, pkt: &[u8]) -> u32 {
        self.run(POD_EGRESS, pkt)
    }

    /// Runs a packet entering x/a.
    pub fn ingress(&self, pkt: &[u8]) -> u32 {
        self.run(POD_INGRESS, pkt)
    }

    /// The flow events emitted so far.
    pub fn drain_events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        let events = self.events.as_mut().expect("events not taken");
        while let Some(item) = events.next() {
            out.push(decode(&item).expect("a decodable event"));
        }
        out
    }

    /// The flow-event ring buffer, for a consumer of its own (then `drain_events` panics).
    pub fn take_events(&mut self) -> RingBuf<MapData> {
        self.events.take().expect("taken once")
    }

    /// Where this fixture's maps are pinned (the fuzz target opens some by their pins).
    pub fn pin_dir(&self) -> &std::path::Path {
        &self.pin_dir
    }

    /// Counters summed over CPUs.
    pub fn counter(&self, index: u32) -> u64 {
        self.dp.counters()[index as usize]
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}
