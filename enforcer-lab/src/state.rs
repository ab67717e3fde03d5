//! What a lab instance keeps on disk: its paths, `state.json` (everything `lab
//! status/exec/probe/down` need to find a running instance) and the agents' `status.json`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::nodes::{NodeLayout, NodeSpec};
use crate::topology::PodState;

/// Where lab instances keep their state.
pub const STATE_ROOT: &str = "/run/enforcer-lab";
/// bpffs directory under which each instance's agents pin their objects.
pub const PIN_ROOT: &str = "/sys/fs/bpf/enforcer";

/// Files and folders of one instance. The agent files are those of today's single node; in
/// a lab of several nodes each node has its own ([`NodePaths`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPaths {
    pub state_dir: PathBuf,
    pub state_file: PathBuf,
    pub manifests_dir: PathBuf,
    pub status_file: PathBuf,
    pub flow_log: PathBuf,
    pub agent_log: PathBuf,
    pub pin_dir: PathBuf,
}

impl LabPaths {
    pub fn new(instance: &str) -> Self {
        let state_dir = Path::new(STATE_ROOT).join(instance);
        Self {
            state_file: state_dir.join("state.json"),
            manifests_dir: state_dir.join("manifests"),
            status_file: state_dir.join("status.json"),
            flow_log: state_dir.join("flows.jsonl"),
            agent_log: state_dir.join("agent.log"),
            pin_dir: Path::new(PIN_ROOT).join(instance),
            state_dir,
        }
    }

    /// One node's agent files: today's for a single-node lab; else under
    /// `nodes/<node>/` of the state directory, with pins under `<pin dir>/<node>` (so
    /// removing the instance's pin directory removes every node's).
    pub fn node(&self, node: &str, single: bool) -> NodePaths {
        if single {
            return NodePaths {
                status_file: self.status_file.clone(),
                flow_log: self.flow_log.clone(),
                agent_log: self.agent_log.clone(),
                flow_socket: self.state_dir.join("flows.sock"),
                pin_dir: self.pin_dir.clone(),
            };
        }
        let dir = self.state_dir.join("nodes").join(node);
        NodePaths {
            status_file: dir.join("status.json"),
            flow_log: dir.join("flows.jsonl"),
            agent_log: dir.join("agent.log"),
            flow_socket: dir.join("flows.sock"),
            pin_dir: self.pin_dir.join(node),
        }
    }
}

/// The files of one node's agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePaths {
    pub status_file: PathBuf,
    pub flow_log: PathBuf,
    pub agent_log: PathBuf,
    pub flow_socket: PathBuf,
    pub pin_dir: PathBuf,
}

/// A node of a running lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    #[serde(flatten)]
    pub spec: NodeSpec,
    pub agent_pid: Option<u32>,
    pub paths: NodePaths,
}

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    /// The first node's namespace (the only one in a single-node lab).
    pub node_netns: String,
    /// The first node's agent.
    pub agent_pid: Option<u32>,
    pub paths: LabPaths,
    pub pods: Vec<PodState>,
    /// A probes file for `lab probe` (the scenario's first step, or the demo's).
    #[serde(default)]
    pub probes_file: Option<PathBuf>,
    /// Every node with its agent (the default node first when present).
    #[serde(default)]
    pub nodes: Vec<NodeState>,
    /// The fabric joining the nodes, if any.
    #[serde(default)]
    pub fabric: Option<String>,
    /// Whether the lab plays kube-proxy (its scenario has Services).
    #[serde(default)]
    pub kube_proxy: bool,
    /// The ClusterIPs every Service had in any step so far, for probes naming a Service that
    /// was deleted (`namespace/name` -> addresses).
    #[serde(default)]
    pub cluster_ips: BTreeMap<String, Vec<IpAddr>>,
    /// The kubeconfig of the API the lab takes its cluster from (`lab up --kubeconfig`).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The lab's controller (plays kubelet and kube-proxy for the API's objects).
    #[serde(default)]
    pub controller_pid: Option<u32>,
}

impl LabState {
    pub fn load(instance: &str) -> anyhow::Result<Self> {
        let path = LabPaths::new(instance).state_file;
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is lab instance {instance:?} up? see `enforcer lab status`)",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn pod(&self, key: &str) -> Option<&PodState> {
        self.pods.iter().find(|p| p.key() == key)
    }

    /// The node layout the lab was built with.
    pub fn layout(&self) -> NodeLayout {
        if self.nodes.is_empty() {
            return NodeLayout::single(&self.name);
        }
        NodeLayout {
            nodes: self.nodes.iter().map(|n| n.spec.clone()).collect(),
            fabric: self.fabric.clone(),
        }
    }

    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.spec.name == name)
    }

    /// The flow sockets of every node's agent, or of `node`'s.
    pub fn flow_sockets(&self, node: Option<&str>) -> anyhow::Result<Vec<PathBuf>> {
        if self.nodes.is_empty() {
            return Ok(vec![self.paths.state_dir.join("flows.sock")]);
        }
        match node {
            None => Ok(self
                .nodes
                .iter()
                .map(|n| n.paths.flow_socket.clone())
                .collect()),
            Some(name) => {
                let n = self.node(name).with_context(|| {
                    let known: Vec<&str> =
                        self.nodes.iter().map(|n| n.spec.name.as_str()).collect();
                    format!(
                        "lab {:?} has no node {name:?} (nodes: {})",
                        self.name,
                        known.join(", ")
                    )
                })?;
                Ok(vec![n.paths.flow_socket.clone()])
            }
        }
    }
}

/// What `status.json` (written by the agent after each apply) holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentStatus {
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default)]
    pub endpoints: BTreeMap<String, EndpointStatus>,
    #[serde(default)]
    pub pending: Vec<String>,
    #[serde(default)]
    pub errors: Vec<serde_json::Value>,
    /// With the API as source: what the applied snapshot held of each kind.
    #[serde(default)]
    pub source: BTreeMap<String, enforcer_agent::source::revision::KindRevision>,
}

impl AgentStatus {
    pub fn read(path: &Path) -> Option<Self> {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EndpointStatus {
    #[serde(default)]
    pub ifname: Option<String>,
    #[serde(default)]
    pub attached: bool,
}

/// What the controller of a lab on an API (`lab up --kubeconfig`) writes after every pass
/// (`controller.json` in the state directory).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ControllerStatus {
    pub pid: u32,
    /// What the last pass that built everything held of each kind (absent until one has).
    #[serde(default)]
    pub source: BTreeMap<String, enforcer_agent::source::revision::KindRevision>,
    /// Pods built on the lab's nodes.
    #[serde(default)]
    pub pods: usize,
    /// Pods of the lab's nodes that the lab cannot build, with the reason (no address yet).
    #[serde(default)]
    pub unplaced: Vec<String>,
    /// What failed in the last pass (retried every second).
    #[serde(default)]
    pub errors: Vec<String>,
}

impl ControllerStatus {
    pub fn path(paths: &LabPaths) -> PathBuf {
        paths.state_dir.join("controller.json")
    }

    pub fn log_path(paths: &LabPaths) -> PathBuf {
        paths.state_dir.join("controller.log")
    }

    pub fn read(paths: &LabPaths) -> Option<Self> {
        std::fs::read_to_string(Self::path(paths))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
    }
}
