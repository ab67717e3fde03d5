//! The controller of a lab that takes its cluster from a Kubernetes API (`lab up
//! --kubeconfig`): a process on the host that plays, for each of the lab's nodes, what a
//! node's kubelet, CNI and kube-proxy do with the API's objects.
//!
//! - It watches the API with the agent's own source ([`KubeSource`]), so it sees what the
//!   agents see, and every pass is level-triggered: the lab is made to match the snapshot.
//! - **kubelet + CNI**: a pod whose `spec.nodeName` is one of the lab's nodes gets a network
//!   namespace on that node with the addresses of `status.podIPs`, serving every TCP and UDP
//!   container port in each of its families; it is removed when the pod goes (or rebuilt when
//!   its addresses change). A pod without an IPv4 address is reported, not built.
//! - **kube-proxy**: every node's Service NAT as [`kube_proxy`] writes it, replaced when the
//!   Services, EndpointSlices or pods change it.
//! - It starts the agents (watching the same API with `--node`) and forwards their API
//!   connections ([`api_proxy`]).
//! - After every pass it writes `controller.json` ([`ControllerStatus`]): what the pass held of
//!   each kind, only once everything of it was built, so that `lab wait` can compare.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use enforcer_agent::model::{Cluster, Pod, PodKey, Protocol};
use enforcer_agent::source::kube::{client, KubeSource};

use crate::api_proxy;
use crate::instance::{write_atomic, AgentSource, Lab};
use crate::kube_proxy;
use crate::nodes::NodeLayout;
use crate::scenario::{Family, PodSpec, Proto};
use crate::servers::{Endpoint, ServerSet};
use crate::state::{ControllerStatus, LabState};
use crate::topology::LivePod;

/// How long an API read may take (as the agent's default `--api-timeout`).
const API_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the controller of lab `name` until SIGTERM or SIGINT (`lab down`).
pub async fn run(name: &str, agent_args: &[String]) -> anyhow::Result<()> {
    let state = LabState::load(name)?;
    let kubeconfig = state
        .kubeconfig
        .clone()
        .with_context(|| format!("lab {name:?} does not take its cluster from an API"))?;
    let mut lab = Lab::attach(&state)?;
    lab.set_controller_pid(std::process::id())?;

    let plan = api_proxy::plan(&kubeconfig).await?;
    for node in &lab.topo.layout().nodes {
        api_proxy::start(node, &plan)?;
    }
    let agent_config = api_proxy::agent_kubeconfig(&kubeconfig, &plan, &lab.paths.state_dir)?;
    lab.set_agent_source(AgentSource::Kubeconfig(agent_config));
    let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    lab.start_agent(true, &agent_args)?;
    tracing::info!(api = %plan.upstream, "agents started; watching the API");

    let client = client(API_TIMEOUT, Some(&kubeconfig))
        .await
        .context("connecting to the Kubernetes API")?;
    let mut source = KubeSource::start_with(client, API_TIMEOUT.mul_f64(5.0 / 6.0))
        .await
        .context("starting the API watches")?;
    let changed = source.changed.clone();
    let mut node_state = Nodes::default();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    let mut dirty = true;
    loop {
        if dirty {
            let snap = source.snapshot_full();
            let pass = node_state.reconcile(&mut lab, &snap.cluster).await;
            let status = ControllerStatus {
                pid: std::process::id(),
                source: if pass.errors.is_empty() {
                    snap.revisions
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect()
                } else {
                    BTreeMap::new()
                },
                pods: lab.topo.pods().len(),
                unplaced: pass.unplaced,
                errors: pass.errors,
            };
            for err in &status.errors {
                tracing::warn!(error = %err, "pass failed (retried)");
            }
            dirty = !status.errors.is_empty();
            let json = serde_json::to_vec_pretty(&status).expect("status serializes");
            write_atomic(&ControllerStatus::path(&lab.paths), &json)?;
        }
        if let Some((node, exit)) = lab.exited_agent() {
            tracing::error!(%node, %exit, "an agent exited");
        }
        tokio::select! {
            _ = changed.notified() => {
                // Let a burst of events settle into one pass.
                tokio::time::sleep(Duration::from_millis(50)).await;
                dirty = true;
            }
            _ = retry.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    tracing::info!("stopping (the lab stays until `lab down` removes it)");
    Ok(())
}

/// What one pass did not manage.
#[derive(Default)]
struct Pass {
    unplaced: Vec<String>,
    errors: Vec<String>,
}

/// What the controller keeps between passes.
#[derive(Default)]
struct Nodes {
    /// Pod key -> its listeners (for the pod namespace they were started in).
    servers: BTreeMap<String, (u32, Vec<Endpoint>, ServerSet)>,
    /// Node -> the kube-proxy rules in force.
    rules: BTreeMap<String, String>,
}

impl Nodes {
    async fn reconcile(&mut self, lab: &mut Lab, cluster: &Cluster) -> Pass {
        let mut pass = Pass::default();
        let (specs, unplaced) = pods_of(lab.topo.layout(), cluster);
        pass.unplaced = unplaced;
        if let Err(err) = lab.sync_placed_pods(&specs) {
            pass.errors.push(format!("building pods: {err:#}"));
        }
        let live = lab.topo.pods();
        if let Err(err) = self.sync_servers(&live, cluster).await {
            pass.errors.push(format!("starting servers: {err:#}"));
        }
        for node in lab.topo.layout().nodes.clone() {
            let rules = kube_proxy::ruleset(cluster, &node.name);
            if self.rules.get(&node.name) == Some(&rules) {
                continue;
            }
            match kube_proxy::apply(&node.netns, &rules) {
                Ok(()) => {
                    self.rules.insert(node.name.clone(), rules);
                }
                Err(err) => pass.errors.push(format!(
                    "programming node {}'s kube-proxy: {err:#}",
                    node.name
                )),
            }
        }
        lab.remember_cluster_ips(cluster);
        if let Err(err) = lab.save_state() {
            pass.errors.push(format!("saving the lab's state: {err:#}"));
        }
        pass
    }

    /// Every live pod serves its container ports; listeners of pods that went are stopped.
    async fn sync_servers(
        &mut self,
        live: &[Arc<LivePod>],
        cluster: &Cluster,
    ) -> anyhow::Result<()> {
        let mut keep = BTreeMap::new();
        for pod in live {
            let key = pod.state.key();
            let model = key
                .parse::<PodKey>()
                .ok()
                .and_then(|k| cluster.pods.get(&k));
            let wanted = model.map(|p| container_endpoints(p)).unwrap_or_default();
            match self.servers.remove(&key) {
                Some(entry) if entry.0 == pod.state.index && entry.1 == wanted => {
                    keep.insert(key, entry);
                }
                old => {
                    if let Some((_, _, set)) = old {
                        set.stop().await;
                    }
                    let set = ServerSet::start(std::slice::from_ref(pod), &wanted)?;
                    keep.insert(key, (pod.state.index, wanted, set));
                }
            }
        }
        for (_, (_, _, set)) in std::mem::replace(&mut self.servers, keep) {
            set.stop().await;
        }
        Ok(())
    }
}

/// The pods of the lab's nodes as specs to build, and those that cannot be built.
fn pods_of(layout: &NodeLayout, cluster: &Cluster) -> (Vec<PodSpec>, Vec<String>) {
    let (mut specs, mut unplaced) = (Vec::new(), Vec::new());
    for pod in cluster.pods.values() {
        let Some(node) = pod.node.as_deref().filter(|n| layout.node(n).is_some()) else {
            continue;
        };
        let ipv4 = pod.ips.iter().find_map(|ip| match ip {
            std::net::IpAddr::V4(v4) => Some(*v4),
            _ => None,
        });
        let ipv6 = pod.ips.iter().find_map(|ip| match ip {
            std::net::IpAddr::V6(v6) => Some(*v6),
            _ => None,
        });
        let Some(ipv4) = ipv4 else {
            unplaced.push(format!(
                "{} (node {node}): no IPv4 address in status.podIPs (the lab builds pods with one)",
                pod.key
            ));
            continue;
        };
        specs.push(PodSpec {
            namespace: pod.key.namespace.clone(),
            name: pod.key.name.clone(),
            ipv4,
            ipv6,
            node: Some(node.to_owned()),
        });
    }
    (specs, unplaced)
}

/// What a pod serves: each TCP and UDP container port in both families (a family the pod
/// has no address of is skipped when the listeners start).
fn container_endpoints(pod: &Pod) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = pod
        .ports
        .iter()
        .filter_map(|p| {
            let protocol = match p.protocol {
                Protocol::Tcp => Proto::Tcp,
                Protocol::Udp => Proto::Udp,
                _ => return None,
            };
            Some([Family::IPv4, Family::IPv6].map(|family| Endpoint {
                port: p.number,
                protocol,
                family,
            }))
        })
        .flatten()
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use enforcer_agent::model::ContainerPort;

    fn pod(key: &str, node: Option<&str>, ips: &[&str]) -> Pod {
        Pod {
            key: key.parse().unwrap(),
            labels: Default::default(),
            ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            ports: vec![
                ContainerPort {
                    name: Some("http".into()),
                    number: 80,
                    protocol: Protocol::Tcp,
                },
                ContainerPort {
                    name: None,
                    number: 53,
                    protocol: Protocol::Udp,
                },
                ContainerPort {
                    name: None,
                    number: 80,
                    protocol: Protocol::Tcp,
                },
                ContainerPort {
                    name: None,
                    number: 9,
                    protocol: Protocol::Sctp,
                },
            ],
            node: node.map(str::to_owned),
            owner: None,
            ready: true,
        }
    }

    #[test]
    fn only_pods_of_the_labs_nodes_with_an_ipv4_address_are_built() {
        let layout = NodeLayout::named("t", &["node-a".into(), "node-b".into()]);
        let mut cluster = Cluster::default();
        for p in [
            pod("x/a", Some("node-a"), &["10.244.1.10", "fd00::a"]),
            pod("x/b", Some("node-b"), &["10.244.1.11"]),
            pod("x/c", Some("elsewhere"), &["10.244.1.12"]),
            pod("x/d", None, &["10.244.1.13"]),
            pod("x/e", Some("node-a"), &[]),
            pod("x/f", Some("node-b"), &["fd00::f"]),
        ] {
            cluster.insert_pod(p);
        }
        let (specs, unplaced) = pods_of(&layout, &cluster);
        let built: Vec<(String, Option<&str>, Option<std::net::Ipv6Addr>)> = specs
            .iter()
            .map(|s| (s.key(), s.node.as_deref(), s.ipv6))
            .collect();
        assert_eq!(
            built,
            vec![
                (
                    "x/a".into(),
                    Some("node-a"),
                    Some("fd00::a".parse().unwrap())
                ),
                ("x/b".into(), Some("node-b"), None),
            ]
        );
        assert_eq!(unplaced.len(), 2, "{unplaced:?}");
        assert!(unplaced[0].starts_with("x/e (node node-a)"), "{unplaced:?}");
        assert!(unplaced[1].starts_with("x/f (node node-b)"), "{unplaced:?}");
    }

    #[test]
    fn a_pod_serves_each_tcp_and_udp_container_port_once_per_family() {
        let eps = container_endpoints(&pod("x/a", Some("node-a"), &["10.244.1.10"]));
        let got: Vec<(u16, Proto, Family)> =
            eps.iter().map(|e| (e.port, e.protocol, e.family)).collect();
        assert_eq!(
            got,
            vec![
                (53, Proto::Udp, Family::IPv4),
                (53, Proto::Udp, Family::IPv6),
                (80, Proto::Tcp, Family::IPv4),
                (80, Proto::Tcp, Family::IPv6),
            ]
        );
    }
}
