#![allow(
    dead_code,
    reason = "each test that includes the support module uses a part of it"
)]

//! Support for the tests that drive the agent's Kubernetes source through the real `kube`
//! client: the API server double ([`apiserver`]) and small builders of the objects it serves
//! (typed k8s-openapi objects, shaped as the API server returns them).

pub mod apiserver;
#[path = "../../../tests/src/root.rs"]
mod root_skip;

/// The agent needs root (BPF): without it a test returns, and its skip is recorded so that
/// `cargo xtask test` fails (see tests/src/root.rs).
#[allow(unused_imports, reason = "the tests of the source alone need no root")]
pub use root_skip::root_or_skip as root;

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};
use tokio::time::Instant;

fn typed<K: serde::de::DeserializeOwned>(value: Value) -> K {
    serde_json::from_value(value).expect("the fixture is a valid object")
}

fn label_map(labels: &[(&str, &str)]) -> Value {
    Value::Object(
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect(),
    )
}

pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    typed(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": label_map(labels)},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }))
}

/// A Ready Node with `labels` and the InternalIP `internal_ip` (and, as kubelet reports it,
/// its Hostname address, which is not an IP).
pub fn node(name: &str, internal_ip: &str, labels: &[(&str, &str)]) -> Node {
    typed(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": label_map(labels)},
        "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": internal_ip},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }))
}

/// A running pod on `node-1` with one address and a container port `http` 8080/TCP.
pub fn pod(ns: &str, name: &str, ip: &str, labels: &[(&str, &str)]) -> Pod {
    typed(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": label_map(labels)},
        "spec": {
            "nodeName": "node-1",
            "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}],
        },
        "status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }))
}

/// A policy selecting pods with `selector`, isolating them for ingress, allowing TCP `ports`
/// from pods labelled `app=client` (no ports: allowing nothing).
pub fn policy(ns: &str, name: &str, selector: &[(&str, &str)], ports: &[u16]) -> NetworkPolicy {
    let ingress = if ports.is_empty() {
        json!([])
    } else {
        json!([{
            "from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
            "ports": ports.iter().map(|p| json!({"protocol": "TCP", "port": p})).collect::<Vec<_>>(),
        }])
    };
    typed(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "podSelector": {"matchLabels": label_map(selector)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }))
}

/// A ClusterIP Service of one TCP port to target port `http`.
pub fn service(
    ns: &str,
    name: &str,
    cluster_ip: &str,
    port: u16,
    selector: &[(&str, &str)],
) -> Service {
    typed(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "selector": label_map(selector),
            "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": "http"}],
        },
    }))
}

/// An IPv4 EndpointSlice of `service` with ready endpoints on port `http` 8080.
pub fn slice(ns: &str, name: &str, service: &str, addresses: &[&str]) -> EndpointSlice {
    typed(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": addresses.iter().map(|a| json!({
            "addresses": [a], "conditions": {"ready": true}, "nodeName": "node-1",
        })).collect::<Vec<_>>(),
    }))
}

/// A `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy of `tier` (`Admin`, `Baseline`)
/// at `priority`, whose subject is the namespaces labelled `ns=x`, with one ingress rule named
/// `rule` of `action` (`Accept`, `Deny`, `Pass`) from the namespaces labelled `ns=y` on TCP
/// `port`. Written as JSON: the double serves it as it would any custom resource.
pub fn cluster_network_policy(
    name: &str,
    tier: &str,
    priority: i64,
    action: &str,
    port: u16,
) -> Value {
    json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": {
            "tier": tier, "priority": priority,
            "subject": {"namespaces": {"matchLabels": {"ns": "x"}}},
            "ingress": [{
                "name": "rule", "action": action,
                "from": [{"namespaces": {"matchLabels": {"ns": "y"}}}],
                "protocols": [{"tcp": {"destinationPort": {"number": port}}}],
            }],
        },
    })
}

/// A `policy.networking.k8s.io/v1alpha1` AdminNetworkPolicy: as [`cluster_network_policy`]
/// in the Admin tier, with v1alpha1's spellings (`Allow`, `ports`/`portNumber`).
pub fn admin_network_policy(name: &str, priority: i64, action: &str, port: u16) -> Value {
    json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
        "metadata": {"name": name},
        "spec": {
            "priority": priority,
            "subject": {"namespaces": {"matchLabels": {"ns": "x"}}},
            "ingress": [{
                "name": "rule", "action": action,
                "from": [{"namespaces": {"matchLabels": {"ns": "y"}}}],
                "ports": [{"portNumber": {"protocol": "TCP", "port": port}}],
            }],
        },
    })
}

/// A `policy.networking.k8s.io/v1alpha1` BaselineAdminNetworkPolicy named `name` (the API
/// allows only `default`): as [`admin_network_policy`] in the Baseline tier, without priority.
pub fn baseline_admin_network_policy(name: &str, action: &str, port: u16) -> Value {
    json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "BaselineAdminNetworkPolicy",
        "metadata": {"name": name},
        "spec": {
            "subject": {"namespaces": {"matchLabels": {"ns": "x"}}},
            "ingress": [{
                "name": "rule", "action": action,
                "from": [{"namespaces": {"matchLabels": {"ns": "y"}}}],
                "ports": [{"portNumber": {"protocol": "TCP", "port": port}}],
            }],
        },
    })
}

/// What a cluster model holds, one line per kind (for failure messages).
pub fn summary(c: &enforcer_agent::model::Cluster) -> String {
    fn keys<K: std::fmt::Display + Ord + Clone, V: Clone>(
        m: &enforcer_agent::model::Map<K, V>,
    ) -> String {
        let mut names: Vec<String> = m.keys().take(8).map(|k| k.to_string()).collect();
        if m.len() > 8 {
            names.push(format!("... ({} in all)", m.len()));
        }
        names.join(", ")
    }
    format!(
        "namespaces: [{}]\npods: [{}]\npolicies: [{}]\nservices: [{}]\nslices: [{}]\n\
         nodes: [{}]\ncluster policies: [{}]",
        keys(&c.namespaces),
        keys(&c.pods),
        keys(&c.policies),
        keys(&c.services),
        keys(&c.endpoint_slices),
        keys(&c.nodes),
        keys(&c.cluster_policies),
    )
}

/// Every test ends within this, whatever hangs.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(90);

pub async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {TEST_TIMEOUT:?}"))
}

/// Polls `ready` every 10 ms until it holds; panics after `within`.
pub async fn wait_for(
    api: &apiserver::ApiServer,
    what: &str,
    within: Duration,
    ready: impl Fn() -> bool,
) {
    let deadline = Instant::now() + within;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "waited {within:?} for {what}\nrequests answered:\n{}",
            api.request_log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
