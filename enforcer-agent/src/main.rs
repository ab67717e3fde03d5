//! `enforcer`: the agent and its tools. This file only wires the library's modules together.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use enforcer_agent::{agent, lab, netns};

#[derive(Parser)]
#[command(
    name = "enforcer",
    version,
    about = "eBPF NetworkPolicy enforcer and flow monitor"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent: enforce the cluster's NetworkPolicies on this node's pods.
    Agent(AgentArgs),
    /// The network-namespace lab: pods as network namespaces on this machine.
    #[command(subcommand)]
    Lab(lab::cli::LabCommand),
}

#[derive(clap::Args)]
struct AgentArgs {
    /// Read Namespaces, Pods and NetworkPolicies from this folder (re-read on every change)
    /// instead of the Kubernetes API.
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// This node's name: pods with this spec.nodeName (or none, from manifests) are enforced.
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// Enter this network namespace first (e.g. /run/netns/NAME).
    #[arg(long)]
    netns: Option<PathBuf>,
    /// bpffs directory for the pinned maps and links.
    #[arg(long, default_value = "/sys/fs/bpf/enforcer/default")]
    pin_dir: PathBuf,
    /// Write a JSON status (applied digest, endpoints, pending pods, errors) after each sync.
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// Where flow records go, as JSON lines (`-`: stdout).
    #[arg(long, default_value = "-")]
    flow_log: PathBuf,
    /// Also log allowed connections (one record per new connection), not only drops.
    #[arg(long)]
    log_allowed: bool,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ENFORCER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    match cli.cmd {
        Cmd::Agent(a) => {
            if let Some(path) = &a.netns {
                // Before the runtime starts: threads inherit the namespace of their creator.
                let ns = netns::Netns::open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                std::mem::forget(
                    ns.enter()
                        .with_context(|| format!("entering {}", path.display()))?,
                );
            }
            let opts = agent::AgentOptions {
                manifests: a.manifests,
                node: a.node,
                pin_dir: a.pin_dir,
                status_file: a.status_file,
                flow_log: a.flow_log,
                log_allowed: a.log_allowed,
            };
            runtime()?.block_on(agent::run(opts))
        }
        Cmd::Lab(cmd) => runtime()?.block_on(lab::cli::run(cmd)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}
