//! The synthetic cluster of the scale tests (`api_scale.rs` through the API double,
//! `manifest_scale.rs` through a manifest folder): 100,000 pods in 100 namespaces on 50 other
//! nodes, as the API server returns them (managedFields included), and NetworkPolicies over
//! them; and what the tests read of the agent process.
// Each test binary uses some of the helpers.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::{json, Value};

pub const PODS: usize = 100_000;
pub const NAMESPACES: usize = 100;

/// A pod as the API server returns it, on a node other than the agent's.
pub fn pod(ns: usize, i: usize) -> Value {
    let ip = format!("10.{}.{}.{}", 100 + ns / 64, (i / 250) % 256, 1 + i % 250);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("web-{i:05}"), "namespace": format!("ns-{ns:03}"),
            "labels": {"app": format!("app-{}", i % 10), "pod-template-hash": "7d9f8c6b5"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": format!("web-{}-7d9f8c6b5", i % 10), "uid": "r1",
                                 "controller": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                               "apiVersion": "v1", "fieldsType": "FieldsV1",
                               "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}},
                                            "f:ownerReferences": {".": {}}},
                                            "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {".": {}, "f:image": {}, "f:ports": {}}}}}},
                              {"manager": "kubelet", "operation": "Update", "apiVersion": "v1",
                               "fieldsType": "FieldsV1", "subresource": "status",
                               "fieldsV1": {"f:status": {"f:conditions": {}, "f:podIP": {}, "f:podIPs": {}, "f:phase": {}}}}],
        },
        "spec": {
            "nodeName": format!("node-{}", i % 50),
            "containers": [{"name": "web", "image": "registry.k8s.io/pause:3.10",
                            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}],
        },
        "status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

/// Policy `p` of namespace `ns`: app-(p % 10) allows app-(p % 10 + 1) on the named port.
pub fn policy(ns: usize, p: usize) -> Value {
    policy_on(ns, p, json!("http"))
}

/// [`policy`] allowing `port`.
pub fn policy_on(ns: usize, p: usize, port: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": format!("web-{p:03}"), "namespace": format!("ns-{ns:03}")},
        "spec": {
            "podSelector": {"matchLabels": {"app": format!("app-{}", p % 10)}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": format!("app-{}", p % 10 + 1)}}}],
                         "ports": [{"port": port}]}],
        },
    })
}

/// (resident, peak resident) in bytes, from /proc/PID/status.
pub fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time the process has used (user + system), from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name (in parentheses, which may hold spaces): utime and stime are the
    // 12th and 13th fields, in clock ticks.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

pub const MIB: f64 = 1024.0 * 1024.0;
