//! The network-namespace lab: builds nodes and their pods as network namespaces, runs the real
//! agent on every node, plays kube-proxy, and measures which connections policies let through
//! (docs/design.md, "The lab"). The `enforcer` binary includes it behind its `lab` feature; the
//! agent library knows nothing of it. It uses the agent library's `model`, `source` and `netns`,
//! and runs the agents as `enforcer agent` processes of the binary it runs in.
//!
//! - [`scenario`]: scenario directories (docs/scenario-format.md), result matrices and their
//!   comparison.
//! - [`placement`]: which node each pod runs on (spread mode), and the agents' manifests.
//! - [`nodes`] / [`topology`]: node namespaces and their fabric; pods, veth pairs, addresses
//!   and routes (RAII).
//! - [`kube_proxy`]: each node's Service NAT (nftables, as kube-proxy writes it).
//! - [`services`]: a step's Services: endpoints, probe targets, backend servers.
//! - [`instance`] / [`state`] / [`cleanup`]: one lab instance: topology + one agent per node
//!   + state directory; `lab down`.
//! - [`servers`] / [`probe`]: listeners and clients inside pod namespaces.
//! - [`cli`]: `enforcer lab ...` ([`cli::LabCommand`], [`cli::run`]); [`demo`]: `lab demo`.
//! - A lab on a Kubernetes API (`lab up --kubeconfig`): [`api_cli`] (`up`, `wait`), its
//!   controller [`kubelet`] (pods and kube-proxy as the API holds them), [`api_proxy`] (the
//!   API as the node namespaces reach it), [`wait`] (has every agent applied the API's state).

pub mod api_cli;
pub mod api_proxy;
pub mod cleanup;
pub mod cli;
pub mod demo;
pub mod instance;
pub mod kube_proxy;
pub mod kubelet;
pub mod nodes;
pub mod placement;
pub mod probe;
pub mod scenario;
pub mod servers;
pub mod services;
pub mod state;
pub mod topology;
pub mod wait;

#[cfg(test)]
mod root_tests;
