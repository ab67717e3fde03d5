//! The network-namespace lab: builds nodes and their pods as network namespaces, runs the real
//! agent on every node, plays kube-proxy, and measures which connections policies let through
//! (docs/design.md, "The lab"). The `enforcer` binary includes it behind its `lab` feature; the
//! agent library knows nothing of it. It uses the agent library's `model`, `source` and `netns`,
//! and runs the agents as `enforcer agent` processes of the binary it runs in.
//!
//! The modules, lowest first (each uses only modules above it in this list; no cycles):
//!
//! - [`scenario`]: scenario directories (docs/scenario-format.md), result matrices and their
//!   comparison; [`demo_scenario`]: the built-in demo (`demo/`).
//! - [`placement`]: which node each pod runs on (spread mode), and the agents' manifests.
//! - [`iproute`]: the `ip` and sysctl commands, the lab's namespace names.
//! - [`kube_proxy`]: each node's Service NAT (nftables, as kube-proxy writes it).
//! - [`nodes`] / [`topology`]: node namespaces and their fabric; pods, veth pairs, addresses
//!   and routes (RAII).
//! - [`servers`] / [`probe`]: listeners and clients inside pod namespaces.
//! - [`services`]: a step's Services: endpoints, probe targets, backend servers.
//! - [`state`] / [`cleanup`] / [`instance`]: one lab instance: topology + one agent per node
//!   + state directory; `lab down`.
//! - [`report`]: what the commands print about a running lab.
//! - [`run`]: a scenario's run (`lab run`), bringing its first step up (`lab up`), Ctrl-C.
//! - A lab on a Kubernetes API (`lab up --kubeconfig`): [`api_proxy`] (the API as the node
//!   namespaces reach it), [`wait`] (has every agent applied the API's state), its controller
//!   [`kubelet`] (pods and kube-proxy as the API holds them), [`api_cli`] (`up`, `wait`).
//! - [`args`]: the command line of `enforcer lab ...` ([`args::LabCommand`]).
//! - [`demo`]: `lab demo`; [`cli`]: the commands ([`cli::run`] runs a [`args::LabCommand`]).

pub mod api_cli;
pub mod api_proxy;
pub mod args;
pub mod cleanup;
pub mod cli;
pub mod demo;
pub mod demo_scenario;
pub mod instance;
pub mod iproute;
pub mod kube_proxy;
pub mod kubelet;
pub mod nodes;
pub mod placement;
pub mod probe;
pub mod report;
pub mod run;
pub mod scenario;
pub mod servers;
pub mod services;
pub mod state;
pub mod topology;
pub mod wait;

#[cfg(test)]
mod root_tests;
