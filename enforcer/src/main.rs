//! `enforcer`: the agent and its tools. This file only wires the libraries together: the agent
//! (`enforcer-agent`) and, with the `lab` feature (default), the lab (`enforcer-lab`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use enforcer_agent::alerts::AlertsConfig;
use enforcer_agent::{agent, flows, netns};

/// The flow pipeline allocates for every record; glibc's malloc and free were about a third of
/// its CPU (`tests/benches/flow_events.rs`, which runs with this allocator too).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
#[allow(clippy::large_enum_variant, reason = "parsed once at start-up")]
enum Cmd {
    /// Run the agent: enforce the cluster's NetworkPolicies on this node's pods.
    Agent(AgentArgs),
    /// The network-namespace lab: pods as network namespaces on this machine.
    #[cfg(feature = "lab")]
    #[command(subcommand)]
    Lab(enforcer_lab::args::LabCommand),
    /// Show recent and live flows from the local agent, or from a saved flow log.
    Flows(FlowsCmd),
    /// Why is a connection allowed or denied? Both sides, with the exact rules, computed from
    /// the same tables the kernel uses.
    Explain(ExplainArgs),
}

/// `enforcer flows`: the agent library's arguments and, with the `lab` feature, `--lab` and
/// `--node`, which replace the sockets with those of a lab's agents.
#[derive(clap::Args)]
struct FlowsCmd {
    #[command(flatten)]
    args: flows::client::FlowsArgs,
    #[cfg(feature = "lab")]
    #[command(flatten)]
    lab: enforcer_lab::args::LabFlowsArgs,
}

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("src").required(true).args(["from", "from_ip"]))]
#[command(group = clap::ArgGroup::new("dst").required(true).args(["to", "to_ip", "to_service"]))]
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
    /// Destination Service, NAMESPACE/NAME (with --port its Service port): explained for each
    /// backend the source's node may send the connection to, at its target port.
    #[arg(long, value_name = "NS/NAME", requires = "from")]
    to_service: Option<String>,
    /// An address of the pods' nodes (repeatable; Node objects in the cluster are read too):
    /// a pod's node is always allowed to and from it.
    #[arg(long, value_name = "IP")]
    node_ip: Vec<std::net::IpAddr>,
    /// Destination port and protocol: 80, 80/TCP, 53/UDP, 9000/SCTP; or ICMP.
    #[arg(long, default_value = "80/TCP")]
    port: String,
    /// Use the pods' IPv6 addresses.
    #[arg(long)]
    ipv6: bool,
    /// Read the cluster from this manifest folder instead of the Kubernetes API.
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// Connect to the Kubernetes API with this kubeconfig (default: inferred).
    #[arg(long, conflicts_with = "manifests")]
    kubeconfig: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Parses `80`, `80/TCP`, `53/udp`, `ICMP` into (IP protocol, port).
fn parse_port(s: &str) -> anyhow::Result<(u8, u16)> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let proto_num = match enforcer_agent::model::Protocol::from_k8s(&proto.to_ascii_uppercase()) {
        Some(p) => p.number(),
        None => anyhow::bail!("unknown protocol {proto:?} in --port (TCP, UDP, SCTP or ICMP)"),
    };
    if port.eq_ignore_ascii_case("icmp") {
        return Ok((enforcer_common::proto::ICMP, 0));
    }
    let port: u16 = port
        .parse()
        .with_context(|| format!("--port {s:?}: not a port number"))?;
    Ok((proto_num, port))
}

async fn explain(a: ExplainArgs) -> anyhow::Result<()> {
    use enforcer_agent::explain::{
        explain, explain_service, render, render_service, End, ANY_NODE,
    };
    let mut cluster = match &a.manifests {
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
            let client = enforcer_agent::source::kube::client(
                std::time::Duration::from_secs(60),
                a.kubeconfig.as_deref(),
            )
            .await
            .context("connecting to the Kubernetes API")?;
            // Nodes included: the source watches them (their addresses and labels).
            let mut src = enforcer_agent::source::kube::KubeSource::start(client).await?;
            src.snapshot().0
        }
    };
    cluster
        .nodes
        .entry(ANY_NODE.to_owned())
        .or_default()
        .extend(&a.node_ip);
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
    if proto == enforcer_common::proto::ICMP && a.ipv6 {
        proto = enforcer_common::proto::ICMPV6;
    }
    if let Some(svc) = &a.to_service {
        let from = a
            .from
            .as_deref()
            .expect("clap requires --from with --to-service");
        let from = from.parse().map_err(|e| anyhow::anyhow!("{from:?}: {e}"))?;
        let svc = svc.parse().map_err(|e| anyhow::anyhow!("{svc:?}: {e}"))?;
        let e = explain_service(&cluster, &from, &svc, proto, port, a.ipv6)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&e)?);
        } else {
            print!("{}", render_service(&e));
        }
        return Ok(());
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
    /// Connect to the Kubernetes API with this kubeconfig (default: `$KUBECONFIG`,
    /// `~/.kube/config`, or the pod's service account in a cluster).
    #[arg(long, conflicts_with = "manifests")]
    kubeconfig: Option<PathBuf>,
    /// This node's name: pods with this spec.nodeName (or none, from manifests) are enforced.
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// Enter this network namespace first (e.g. /run/netns/NAME).
    #[arg(long)]
    netns: Option<PathBuf>,
    /// bpffs directory for the pinned maps and links.
    #[arg(long, default_value = "/sys/fs/bpf/enforcer/default")]
    pin_dir: PathBuf,
    /// Load the kernel programs from this eBPF object (a build of enforcer-ebpf of this
    /// release, e.g. with a datapath fix) instead of the one built into this binary. Pinned
    /// maps are checked against its layout as they are against the built-in one's.
    #[arg(long, value_name = "FILE")]
    bpf_object: Option<PathBuf>,
    /// Interfaces whose name starts with this (e.g. lxc, cali; repeat or comma-separate for
    /// several) are pods' host-side veths: one that leads to no local pod the agent has
    /// programmed yet is quarantined, all its traffic dropped, until it is. Closes the window
    /// between the CNI building a pod's veth and the agent learning the pod from the API.
    /// Off by default: an interface of this prefix that is no pod would carry nothing.
    #[arg(long, value_name = "PREFIX", value_delimiter = ',', value_parser = interface_prefix)]
    quarantine_prefix: Vec<String>,
    /// Write a JSON status (applied digest, endpoints, pending pods, errors) after each sync.
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// Where flow records go, as JSON lines (`-`: stdout).
    #[arg(long, default_value = "-")]
    flow_log: PathBuf,
    /// Also log allowed connections (one record per new connection), not only drops.
    #[arg(long)]
    log_allowed: bool,
    /// Serve Prometheus metrics (/metrics) and health (/healthz, /readyz) here: this host only
    /// by default; 0.0.0.0:9966 or one of the node's addresses ([IP]:PORT works for both
    /// families, e.g. `[$(NODE_IP)]:9966`) opens them to Prometheus and kubelet's probes.
    #[arg(long, default_value = enforcer_agent::metrics::http::DEFAULT_ADDR,
          value_parser = enforcer_agent::metrics::http::parse_listen_addr)]
    metrics_addr: std::net::SocketAddr,
    /// Do not serve metrics and health endpoints.
    #[arg(long)]
    no_metrics: bool,
    /// Unix socket for `enforcer flows`.
    #[arg(long, default_value = flows::server::DEFAULT_SOCKET)]
    flow_socket: PathBuf,
    /// Do not serve the flow socket.
    #[arg(long)]
    no_flow_socket: bool,
    /// Recent flows kept in memory for `enforcer flows`.
    #[arg(long, default_value_t = flows::store::DEFAULT_CAPACITY)]
    flow_buffer: usize,
    /// Rotate the flow log file at this size (e.g. 100M; 0: never).
    #[arg(long, default_value = "100M", value_parser = flows::rotate::parse_size)]
    flow_log_max_size: u64,
    /// Rotated flow log files to keep.
    #[arg(long, default_value_t = 5)]
    flow_log_keep: usize,
    /// Keep only the records these `enforcer flows` filter flags select in the flow log, e.g.
    /// "--not --namespace kube-system --not --port 53" (alerts and loss markers always go in).
    #[arg(long, value_name = "FLAGS", value_parser = enforcer_agent::flows::client::parse_filter_flags, allow_hyphen_values = true)]
    flow_log_filter: Option<enforcer_agent::flows::filter::Filter>,
    /// Policy audit mode for every local pod: flows the policies deny pass and are reported
    /// with the `audit` verdict (namespaces labelled policy.enforcer.dev/audit=true are
    /// audited either way).
    #[arg(long)]
    policy_audit_mode: bool,
    /// Anomaly detector settings (YAML or JSON; every field optional). Detection is on by
    /// default with built-in thresholds.
    #[arg(long)]
    alerts_config: Option<PathBuf>,
    /// Turn anomaly detection off.
    #[arg(long)]
    no_alerts: bool,
    /// How often expired connections are removed from the conntrack map and the ends of idle
    /// ones reported (with their packet and byte counts).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    conntrack_sweep_interval: std::time::Duration,
    /// With the Kubernetes API: how long a watch may fail before /readyz fails (what is
    /// enforced stays in force meanwhile; `enforcer_source_stale_seconds` says how long).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    source_stale_grace: std::time::Duration,
    /// With the Kubernetes API: how long a read may take before the request fails, so that a
    /// hung API server is noticed (watches are renewed every 5/6 of it).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    api_timeout: std::time::Duration,
    /// POST alerts to this Alertmanager-compatible URL (http://host:9093/api/v2/alerts).
    #[arg(long)]
    alert_webhook: Option<hyper::Uri>,
}

/// Interface names are shorter than this (the kernel's `IFNAMSIZ`).
const IF_NAMESIZE: usize = 16;

/// A quarantine prefix: an empty one would match every interface (the node's own included).
fn interface_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() >= IF_NAMESIZE || s.contains(['/', ' ', ':']) {
        return Err(format!(
            "{s:?} is no interface name prefix (1 to {} characters, no '/', ':' or space)",
            IF_NAMESIZE - 1
        ));
    }
    Ok(s.to_owned())
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
                kubeconfig: a.kubeconfig,
                node: a.node,
                pin_dir: a.pin_dir,
                bpf_object: a.bpf_object,
                quarantine_prefixes: a.quarantine_prefix,
                status_file: a.status_file,
                flow_log: a.flow_log,
                log_allowed: a.log_allowed,
                policy_audit_mode: a.policy_audit_mode,
                flow_log_filter: a.flow_log_filter.unwrap_or_default(),
                metrics_addr: (!a.no_metrics).then_some(a.metrics_addr),
                flow_socket: (!a.no_flow_socket).then_some(a.flow_socket),
                flow_buffer: a.flow_buffer,
                flow_log_max_bytes: a.flow_log_max_size,
                flow_log_keep: a.flow_log_keep,
                alerts: if a.no_alerts {
                    None
                } else {
                    Some(alerts_config(a.alerts_config.as_deref())?)
                },
                alert_webhook: a.alert_webhook,
                conntrack_sweep_interval: a.conntrack_sweep_interval,
                source_stale_grace: a.source_stale_grace,
                api_timeout: a.api_timeout,
            };
            runtime()?.block_on(agent::run(opts))
        }
        #[cfg(feature = "lab")]
        Cmd::Lab(cmd) => runtime()?.block_on(enforcer_lab::cli::run(cmd)),
        Cmd::Explain(a) => runtime()?.block_on(explain(a)),
        Cmd::Flows(cmd) => {
            #[allow(unused_mut, reason = "changed only with the lab")]
            let mut args = cmd.args;
            #[cfg(feature = "lab")]
            if let Some(sockets) = enforcer_lab::cli::flow_sockets(&cmd.lab)? {
                args.sockets = sockets;
            }
            flows::client::run(args).map_err(anyhow::Error::from)
        }
    }
}

/// Reads and checks the detector settings (built-in defaults without a file).
fn alerts_config(path: Option<&std::path::Path>) -> anyhow::Result<AlertsConfig> {
    let Some(path) = path else {
        return Ok(AlertsConfig::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let cfg: AlertsConfig = serde_yaml::from_str(&text)
        .with_context(|| format!("{}: invalid alert settings", path.display()))?;
    cfg.validate()
        .with_context(|| format!("{}: invalid alert settings", path.display()))?;
    Ok(cfg)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn metrics_listen_on_localhost_unless_opened() {
        let addr = |extra: &[&str]| {
            let args = ["enforcer", "agent", "--node", "n"].iter().chain(extra);
            match Cli::try_parse_from(args).unwrap().cmd {
                Cmd::Agent(a) => a.metrics_addr.to_string(),
                _ => unreachable!("an agent command line"),
            }
        };
        assert_eq!(addr(&[]), "127.0.0.1:9966");
        assert_eq!(addr(&["--metrics-addr=[10.1.2.3]:9966"]), "10.1.2.3:9966");
        assert_eq!(addr(&["--metrics-addr", "0.0.0.0:9966"]), "0.0.0.0:9966");
        assert!(Cli::try_parse_from([
            "enforcer",
            "agent",
            "--node",
            "n",
            "--metrics-addr",
            "[$(NODE_IP)]:9966"
        ])
        .is_err());
    }
}
