//! Policy compile and apply at cluster scale (`cargo xtask bench`, as root): 100,000 pods in
//! 1,000 namespaces on 1,000 nodes, 10,000 NetworkPolicies and 10,000 Services (10 of each per
//! namespace, each Service selecting one app of its namespace; and `default/kubernetes`,
//! without a selector, as every cluster has it), this node
//! holding 100 of the pods on interfaces of their own (veths in a network namespace of the
//! bench's own), each pod's ingress allowed from 5,010 peers.
//!
//! Measured with the agent's own compiler and dataplane code, on the real datapath:
//! - cold start: the first compile and the first apply (every identity, endpoint and entry
//!   written);
//! - propagation: 1,000 changes, each touching one namespace (a pod relabelled, a policy's
//!   port changed, a pod created or deleted, in turn), each applied to the stores the API
//!   source keeps (`KindStore`, as a watch event is) and followed by what a sync does: the
//!   source's snapshot, the compile and the apply; p50/p99/max of the time from the changed
//!   store to the maps written. The agent adds its sync loop's settle time (5 ms) and the
//!   watch's delivery to that.
//!
//! `ENFORCER_BENCH_CHANGES` sets the number of changes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use enforcer_agent::compile::{Compiler, NodeInput};
use enforcer_agent::dataplane::{Dataplane, Iface};
use enforcer_agent::model::service::{ServicePort, TargetPort, TrafficPolicy};
use enforcer_agent::model::*;
use enforcer_agent::source::kube_store::KindStore;
use enforcer_agent::source::objects::Object;
use enforcer_tests::privileged;

const NAMESPACES: usize = 1_000;
const PODS_PER_NS: usize = 100;
const POLICIES_PER_NS: usize = 10;
const SERVICES_PER_NS: usize = 10;
const NODES: usize = 1_000;
const NODE: &str = "node-0";

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn sel(pairs: &[(&str, String)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels(pairs),
        match_expressions: vec![],
    }
}

fn ns_name(ns: usize) -> String {
    format!("ns-{ns:04}")
}

/// Pod `i` of namespace `ns`: label app-(i % 10), on node (ns * 100 + i) % 1,000, so this
/// node holds pod 0 of every tenth namespace.
fn pod(ns: usize, i: usize, app: usize) -> Pod {
    let n = ns * PODS_PER_NS + i;
    let ip = IpAddr::V4(Ipv4Addr::new(
        10,
        100 + (n >> 16) as u8,
        (n >> 8) as u8,
        n as u8,
    ));
    Pod {
        key: PodKey::new(ns_name(ns), format!("web-{i:03}")),
        labels: labels(&[("app", format!("app-{app}"))]),
        ips: vec![ip],
        ports: vec![ContainerPort {
            name: Some("http".into()),
            number: 8080,
            protocol: Protocol::Tcp,
        }],
        node: Some(format!("node-{}", n % NODES)),
        owner: None,
        ready: true,
    }
}

/// Policy `p` of namespace `ns`: selects app-p; allows app-(p+1) of its namespace and every
/// pod of the 50 namespaces of team t(p) on the named port (or `port` when given).
fn policy(ns: usize, p: usize, port: Option<u16>) -> NetworkPolicy {
    let key = PolicyKey::new(ns_name(ns), format!("p{p}"));
    NetworkPolicy {
        key,
        pod_selector: sel(&[("app", format!("app-{p}"))]),
        ingress: Some(vec![Rule {
            peers: vec![
                PeerSpec::Selector {
                    namespace: None,
                    pod: Some(sel(&[("app", format!("app-{}", (p + 1) % 10))])),
                },
                PeerSpec::Selector {
                    namespace: Some(sel(&[("team", format!("t{p}"))])),
                    pod: None,
                },
            ],
            ports: vec![PortSpec {
                protocol: Protocol::Tcp,
                port: Some(port.map_or(PortRef::Name("http".into()), PortRef::Number)),
                end_port: None,
            }],
        }]),
        egress: None,
        types: PolicyTypes {
            ingress: true,
            egress: false,
        },
        staged: false,
    }
}

/// The objects as the agent's API source holds them: one store per kind, each keeping its
/// models as a cluster of their own, edited one object at a time; a sync starts from their
/// snapshot.
struct Source {
    namespaces: KindStore,
    pods: KindStore,
    policies: KindStore,
    services: KindStore,
    slices: KindStore,
    version: u64,
}

impl Source {
    fn put(&mut self, object: Object) {
        self.version += 1;
        let (store, key) = match &object {
            Object::Namespace(n) => (&mut self.namespaces, (String::new(), n.name.clone())),
            Object::Pod(p) => (
                &mut self.pods,
                (p.key.namespace.clone(), p.key.name.clone()),
            ),
            Object::Policy(p) => (
                &mut self.policies,
                (p.key.namespace.clone(), p.key.name.clone()),
            ),
            Object::Service(svc) => (
                &mut self.services,
                (svc.key.namespace.clone(), svc.key.name.clone()),
            ),
            Object::EndpointSlice(s) => (
                &mut self.slices,
                (s.key.namespace.clone(), s.key.name.clone()),
            ),
            _ => unreachable!("the bench has no other kind"),
        };
        store.apply(key, self.version.to_string(), Ok(object));
    }

    fn delete_pod(&mut self, key: &PodKey) {
        self.version += 1;
        let key = (key.namespace.clone(), key.name.clone());
        self.pods.delete(&key, &self.version.to_string());
    }

    /// What a sync starts from (`KubeSource::snapshot`).
    fn snapshot(&self) -> Cluster {
        let mut c = Cluster::default();
        for store in [
            &self.namespaces,
            &self.pods,
            &self.policies,
            &self.services,
            &self.slices,
        ] {
            c.absorb(store.models());
        }
        c
    }
}

fn source() -> Source {
    let mut s = Source {
        namespaces: KindStore::new("Namespace"),
        pods: KindStore::new("Pod"),
        policies: KindStore::new("NetworkPolicy"),
        services: KindStore::new("Service"),
        slices: KindStore::new("EndpointSlice"),
        version: 0,
    };
    // What every cluster has: `default/kubernetes`, a Service without a selector whose slice
    // names the API servers.
    s.put(Object::Namespace(Namespace {
        name: "default".into(),
        labels: labels(&[(NAMESPACE_NAME_LABEL, "default".into())]),
    }));
    s.put(Object::Service(kubernetes_service()));
    s.put(Object::EndpointSlice(kubernetes_slice()));
    for ns in 0..NAMESPACES {
        let name = ns_name(ns);
        s.put(Object::Namespace(Namespace {
            name: name.clone(),
            labels: labels(&[
                (NAMESPACE_NAME_LABEL, name.clone()),
                ("team", format!("t{}", ns % 20)),
            ]),
        }));
        for i in 0..PODS_PER_NS {
            s.put(Object::Pod(Arc::new(pod(ns, i, i % 10))));
        }
        for p in 0..POLICIES_PER_NS {
            s.put(Object::Policy(policy(ns, p, None)));
        }
        for k in 0..SERVICES_PER_NS {
            s.put(Object::Service(service(ns, k)));
        }
    }
    s
}

/// `default/kubernetes`: 443 to the API servers' 6443, by its EndpointSlice.
fn kubernetes_service() -> Service {
    Service {
        key: ServiceKey::new("default", "kubernetes"),
        cluster_ips: vec![IpAddr::V4(Ipv4Addr::new(10, 96, 255, 1))],
        selector: None,
        ports: vec![ServicePort {
            name: Some("https".into()),
            port: 443,
            protocol: Protocol::Tcp,
            target: TargetPort::Number(6443),
        }],
        internal_traffic: TrafficPolicy::Cluster,
        affinity_timeout: None,
    }
}

fn kubernetes_slice() -> EndpointSlice {
    use enforcer_agent::model::service::{IpFamily, SliceEndpoint, SlicePort};
    EndpointSlice {
        key: SliceKey::new("default", "kubernetes"),
        service: Some("kubernetes".into()),
        family: Some(IpFamily::V4),
        ports: vec![SlicePort {
            name: Some("https".into()),
            port: Some(6443),
            protocol: Protocol::Tcp,
        }],
        endpoints: (1..=3)
            .map(|i| SliceEndpoint {
                addresses: vec![IpAddr::V4(Ipv4Addr::new(172, 20, 0, i))],
                ready: true,
                node: None,
            })
            .collect(),
    }
}

/// Service `k` of namespace `ns`: selects app-k, port 80 to the pods' `http`.
fn service(ns: usize, k: usize) -> Service {
    let n = ns * SERVICES_PER_NS + k;
    Service {
        key: ServiceKey::new(ns_name(ns), format!("svc-{k}")),
        cluster_ips: vec![IpAddr::V4(Ipv4Addr::new(10, 96, (n >> 8) as u8, n as u8))],
        selector: Some(labels(&[("app", format!("app-{k}"))])),
        ports: vec![ServicePort {
            name: Some("http".into()),
            port: 80,
            protocol: Protocol::Tcp,
            target: TargetPort::Name("http".into()),
        }],
        internal_traffic: TrafficPolicy::Cluster,
        affinity_timeout: None,
    }
}

/// One change touching one namespace, the `k`-th of the run.
fn change(s: &mut Source, k: usize) -> &'static str {
    let ns = (k * 7919) % NAMESPACES;
    let i = 1 + (k * 31) % (PODS_PER_NS - 1);
    match k % 4 {
        0 => {
            // Relabel a pod (never a local one: pod 0 of its namespace).
            s.put(Object::Pod(Arc::new(pod(ns, i, (i + k) % 10))));
            "pod relabelled"
        }
        1 => {
            let p = k % POLICIES_PER_NS;
            s.put(Object::Policy(policy(
                ns,
                p,
                Some(8000 + (k % 1000) as u16),
            )));
            "policy changed"
        }
        2 => {
            s.delete_pod(&PodKey::new(ns_name(ns), format!("web-{i:03}")));
            "pod deleted"
        }
        _ => {
            s.put(Object::Pod(Arc::new(pod(ns, i, i % 10))));
            "pod created"
        }
    }
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("running ip");
    assert!(st.success(), "ip {args:?} failed");
}

/// The local pods' interfaces: veths in this process's own network namespace.
fn local_interfaces(c: &Cluster) -> BTreeMap<PodKey, Iface> {
    // SAFETY: unshare on the main thread before any other thread starts.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    let mut out = BTreeMap::new();
    for (n, p) in c
        .pods
        .values()
        .filter(|p| p.node.as_deref() == Some(NODE))
        .enumerate()
    {
        let name = format!("pod{n}");
        let peer = format!("pod{n}p");
        ip(&["link", "add", &name, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &name, "up"]);
        let cname = std::ffi::CString::new(name.as_str()).expect("no NUL");
        // SAFETY: a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        assert_ne!(ifindex, 0, "no ifindex for {name}");
        out.insert(p.key.clone(), Iface { name, ifindex });
    }
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    if !privileged() {
        eprintln!("scale bench: needs root (it loads the datapath)");
        return;
    }
    let changes: usize = std::env::var("ENFORCER_BENCH_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let mut source = source();
    let c = source.snapshot();
    let ifaces = local_interfaces(&c);
    let pin_dir = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/enforcer/bench-scale-{}",
        std::process::id()
    ));
    let mut dp = Dataplane::open(&pin_dir).expect("loading the datapath");
    let node = NodeInput {
        name: NODE.into(),
        host_ips: vec![],
        audit: false,
    };
    let mut compiler = Compiler::default();

    let t = Instant::now();
    let tables = compiler.compile(&c, &node);
    let compiled = t.elapsed();
    let report = dp.sync(&tables, &ifaces).expect("the first sync");
    let applied = t.elapsed() - compiled;
    assert!(report.errors.is_empty(), "sync errors: {:?}", report.errors);
    let entries: usize = tables.endpoints.values().map(|e| e.allows.len()).sum();
    println!(
        "scale: {} pods, {} policies, {} local pods with {} allow entries, {} identities",
        c.pods.len(),
        c.policies.len(),
        ifaces.len(),
        entries,
        tables.prefixes.len()
    );
    println!(
        "cold start: compile {:.0} ms, apply {:.0} ms ({} entries written)",
        ms(compiled),
        ms(applied),
        report.entries_written
    );

    let mut compile_ms = Vec::new();
    let mut total_ms = Vec::new();
    let mut kinds: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut snapshot_ms = Vec::new();
    drop(c);
    for k in 0..changes {
        let kind = change(&mut source, k);
        let t = Instant::now();
        let c = source.snapshot();
        let snapshot = t.elapsed();
        let tables = compiler.compile(&c, &node);
        let compiled = t.elapsed() - snapshot;
        let report = dp.sync(&tables, &ifaces).expect("a sync");
        assert!(report.errors.is_empty(), "sync errors: {:?}", report.errors);
        let total = t.elapsed();
        snapshot_ms.push(ms(snapshot));
        compile_ms.push(ms(compiled));
        total_ms.push(ms(total));
        kinds.entry(kind).or_default().push(ms(total));
    }
    let pct = |v: &[f64], q: f64| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        v[((v.len() as f64 - 1.0) * q).round() as usize]
    };
    println!(
        "propagation over {changes} changes (snapshot + compile + apply): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; snapshot alone p50 {:.2} ms, p99 {:.2} ms; compile alone p50 {:.1} ms, p99 {:.1} ms",
        pct(&total_ms, 0.5),
        pct(&total_ms, 0.99),
        pct(&total_ms, 1.0),
        pct(&snapshot_ms, 0.5),
        pct(&snapshot_ms, 0.99),
        pct(&compile_ms, 0.5),
        pct(&compile_ms, 0.99)
    );
    for (kind, v) in &kinds {
        println!(
            "  {kind}: p50 {:.1} ms, p99 {:.1} ms",
            pct(v, 0.5),
            pct(v, 0.99)
        );
    }
    drop(dp);
    let _ = std::fs::remove_dir_all(&pin_dir);
}
