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
    /// Why is a connection allowed or denied? Both sides, with the exact rules, computed from
    /// the same tables the kernel uses.
    Explain(ExplainArgs),
}

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("src").required(true).args(["from", "from_ip"]))]
#[command(group = clap::ArgGroup::new("dst").required(true).args(["to", "to_ip"]))]
struct ExplainArgs {
    /// Source pod, NAMESPACE/POD.
    #[arg(long)]
    from: Option<String>,
    /// Source address (not a pod).
    #[arg(long)]
    from_ip: Option<std::net::IpAddr>,
    /// Destination pod, NAMESPACE/POD.
    #[arg(long)]
    to: Option<String>,
    /// Destination address (not a pod).
    #[arg(long)]
    to_ip: Option<std::net::IpAddr>,
    /// Destination port and protocol: 80, 80/TCP, 53/UDP, 9000/SCTP; or ICMP.
    #[arg(long, default_value = "80/TCP")]
    port: String,
    /// Use the pods' IPv6 addresses.
    #[arg(long)]
    ipv6: bool,
    /// Read the cluster from this manifest folder instead of the Kubernetes API.
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Parses `80`, `80/TCP`, `53/udp`, `ICMP` into (IP protocol, port).
fn parse_port(s: &str) -> anyhow::Result<(u8, u16)> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let proto_num = match proto.to_ascii_uppercase().as_str() {
        "TCP" => 6,
        "UDP" => 17,
        "SCTP" => 132,
        _ => anyhow::bail!("unknown protocol {proto:?} in --port (TCP, UDP, SCTP or ICMP)"),
    };
    if port.eq_ignore_ascii_case("icmp") {
        return Ok((1, 0));
    }
    let port: u16 = port
        .parse()
        .with_context(|| format!("--port {s:?}: not a port number"))?;
    Ok((proto_num, port))
}

async fn explain(a: ExplainArgs) -> anyhow::Result<()> {
    use enforcer_agent::explain::{explain, render, End};
    let cluster = match &a.manifests {
        Some(dir) => {
            let snap = enforcer_agent::source::manifests::ManifestFolder::new(dir.clone())
                .read()
                .with_context(|| format!("reading {}", dir.display()))?;
            for e in &snap.errors {
                eprintln!("warning: {e}");
            }
            snap.cluster
        }
        None => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API")?;
            let mut src = enforcer_agent::source::kube::KubeSource::start(client).await?;
            src.snapshot().0
        }
    };
    let end = |pod: &Option<String>, ip: Option<std::net::IpAddr>| -> anyhow::Result<End> {
        match (pod, ip) {
            (Some(p), _) => Ok(End::Pod(
                p.parse().map_err(|e| anyhow::anyhow!("{p:?}: {e}"))?,
            )),
            (None, Some(ip)) => Ok(End::Ip(ip)),
            (None, None) => unreachable!("clap requires one of them"),
        }
    };
    let (proto, port) = parse_port(&a.port)?;
    let mut proto = proto;
    if proto == 1 && a.ipv6 {
        proto = 58;
    }
    let e = explain(
        &cluster,
        &end(&a.from, a.from_ip)?,
        &end(&a.to, a.to_ip)?,
        proto,
        port,
        a.ipv6,
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        print!("{}", render(&e));
    }
    Ok(())
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
        Cmd::Explain(a) => runtime()?.block_on(explain(a)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}
