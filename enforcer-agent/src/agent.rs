//! The agent: source → compile → dataplane, level-triggered. Any change (or a pod whose
//! interface is not there yet) leads to a full recompile and a diff against the maps. [`run`]
//! starts the pieces: the sync loop (`sync_loop.rs`: when to sync and what follows; one sync
//! is `sync.rs`) and beside it the flow sink ([`flow_sink`]), the conntrack sweeper
//! (`sweeper.rs`), the metrics endpoint and the flow socket.

pub mod flow_sink;
mod sweeper;
mod sync;
mod sync_loop;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use crate::alerts::{notify, Alerts, AlertsConfig};
use crate::dataplane::services::GoneBackend;
use crate::dataplane::Dataplane;
use crate::flows::{enrich, rotate, server, store};
use crate::metrics::http::{self as metrics_http, Ready};
use crate::metrics::Metrics;
use crate::model::Cluster;
use crate::source::kube::KubeSource;
use crate::source::manifests::ManifestFolder;
use crate::source::revision::KindRevision;
use sweeper::sweep_conntrack;
use sync_loop::{LoopState, SyncLoop};

/// How the agent was asked to run.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Standalone: a folder of manifests. `None`: the Kubernetes API.
    pub manifests: Option<PathBuf>,
    /// The API's kubeconfig (`None`: inferred: `$KUBECONFIG`, `~/.kube/config`, in-cluster).
    pub kubeconfig: Option<PathBuf>,
    pub node: String,
    pub pin_dir: PathBuf,
    /// Load the kernel programs from this object instead of the built-in one.
    pub bpf_object: Option<PathBuf>,
    pub status_file: Option<PathBuf>,
    /// Flow log: a file path, or `-` for stdout.
    pub flow_log: PathBuf,
    pub log_allowed: bool,
    /// Audit instead of enforce, for every local pod.
    pub policy_audit_mode: bool,
    /// Which records the flow log keeps (filter flags of `enforcer flows`).
    pub flow_log_filter: crate::flows::filter::Filter,
    /// Where to serve /metrics, /healthz and /readyz (`None`: not served).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The unix socket `enforcer flows` connects to (`None`: not served).
    pub flow_socket: Option<PathBuf>,
    /// Recent flow records kept in memory for `enforcer flows`.
    pub flow_buffer: usize,
    /// Rotate the flow log file at this size (0: never), keeping this many old files.
    pub flow_log_max_bytes: u64,
    pub flow_log_keep: usize,
    /// Anomaly detection (`None`: off).
    pub alerts: Option<AlertsConfig>,
    /// Alertmanager-compatible endpoint to POST alerts to.
    pub alert_webhook: Option<hyper::Uri>,
    /// How often the conntrack map is swept (see [`crate::dataplane::ct_sweep`]).
    pub conntrack_sweep_interval: Duration,
    /// Interface name prefixes of pods' host-side veths: one that leads to no local pod the
    /// agent knows yet is quarantined (all its traffic dropped) until its pod is programmed.
    pub quarantine_prefixes: Vec<String>,
    /// How long an API watch may fail before the agent reports itself not ready.
    pub source_stale_grace: Duration,
    /// How long a read from the API may take before the request fails (watches are held
    /// open for 5/6 of it).
    pub api_timeout: Duration,
}

/// Written after every sync (atomically): what is in force.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Digest of the manifests applied (standalone mode).
    pub digest: String,
    pub revision: u32,
    pub endpoints: BTreeMap<String, EndpointStatus>,
    /// Local pods whose host interface was not found (not enforced yet).
    pub pending: Vec<String>,
    /// The addresses of the pending pods (what their host route would lead to).
    #[serde(skip)]
    pub pending_ips: Vec<IpAddr>,
    pub errors: Vec<String>,
    /// The kernel ids of the programs this agent put on the links.
    pub programs: BTreeMap<&'static str, u32>,
    /// Interfaces quarantined (see `--quarantine-prefix`): no pod programmed on them yet, all
    /// their traffic dropped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<String>,
    /// What the last sync could not program (each part kept its previous state in force).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sync_errors: Vec<String>,
    /// With the API as source: what the applied snapshot held of each kind (so that
    /// `enforcer lab wait` can tell the API's state has been applied).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub source: BTreeMap<&'static str, KindRevision>,
}

#[derive(Debug, Serialize)]
pub struct EndpointStatus {
    pub ifname: String,
    pub attached: bool,
}

enum Source {
    Folder(ManifestFolder),
    Kube(Box<KubeSource>),
}

/// A snapshot of the desired state.
struct Desired {
    cluster: Cluster,
    errors: Vec<String>,
    digest: String,
    revisions: BTreeMap<&'static str, KindRevision>,
}

impl Source {
    fn snapshot(&mut self) -> anyhow::Result<Desired> {
        match self {
            Source::Folder(f) => {
                let snap = f
                    .read()
                    .with_context(|| format!("reading manifests in {}", f.dir().display()))?;
                Ok(Desired {
                    cluster: snap.cluster,
                    errors: snap.errors.iter().map(|e| e.to_string()).collect(),
                    digest: snap.digest,
                    revisions: BTreeMap::new(),
                })
            }
            Source::Kube(k) => {
                let snap = k.snapshot_full();
                Ok(Desired {
                    cluster: snap.cluster,
                    errors: snap.errors,
                    digest: String::new(),
                    revisions: snap.revisions,
                })
            }
        }
    }
}

fn open_flow_log(
    path: &std::path::Path,
    max_bytes: u64,
    keep: usize,
) -> anyhow::Result<Box<dyn Write + Send>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(std::io::stdout()));
    }
    let f = rotate::RotatingFile::open(path, max_bytes, keep)
        .with_context(|| format!("opening the flow log {}", path.display()))?;
    Ok(Box::new(std::io::LineWriter::new(f)))
}

fn write_status(path: &std::path::Path, status: &Status) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(status)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Runs the agent until SIGINT/SIGTERM. The datapath (pinned maps and links) stays in force
/// after it exits.
pub async fn run(opts: AgentOptions) -> anyhow::Result<()> {
    let mut dp = match &opts.bpf_object {
        None => Dataplane::open(&opts.pin_dir),
        Some(path) => {
            let object = std::fs::read(path)
                .with_context(|| format!("reading the eBPF object {}", path.display()))?;
            Dataplane::open_object(&opts.pin_dir, &object)
        }
    }
    .context("opening the datapath")?;
    tracing::info!(pin_dir = %opts.pin_dir.display(), revision = dp.revision(), "datapath loaded");

    let metrics = Metrics::new();
    let ready = Ready::default();
    serve_metrics(&opts, &metrics, &ready);
    let ctx = Arc::new(RwLock::new(enrich::Context::default()));
    let tasks = start_flow_tasks(&mut dp, &opts, &metrics, &ctx)?;
    let source = open_source(&opts).await?;
    let sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut agent = SyncLoop {
        state: LoopState::new(&dp, &metrics),
        opts: &opts,
        dp,
        source,
        ctx,
        metrics,
        ready,
        lost: tasks.lost.clone(),
        flush: tasks.flush.clone(),
    };
    agent.run(sigterm).await;
    tasks.abort();
    tracing::info!("agent stopping; the datapath stays in force");
    Ok(())
}

/// Serves /metrics, /healthz and /readyz when asked to (`--metrics-addr`).
fn serve_metrics(opts: &AgentOptions, metrics: &Metrics, ready: &Ready) {
    if let Some(addr) = opts.metrics_addr {
        let (m, r) = (metrics.clone(), ready.clone());
        tokio::spawn(async move {
            if let Err(e) = metrics_http::serve(addr, m, r).await {
                tracing::error!(%addr, error = %e, "metrics endpoint stopped");
            }
        });
    }
}

/// The tasks beside the sync loop that carry the flows: the flow sink, the conntrack
/// sweeper and the flow socket; and the loop's two channels to them.
struct FlowTasks {
    /// Events the kernel lost (its counter's increase), for the flow sink's loss markers.
    lost: tokio::sync::mpsc::UnboundedSender<u64>,
    /// UDP flows whose Service backend went, for the sweeper to flush.
    flush: tokio::sync::mpsc::UnboundedSender<Vec<GoneBackend>>,
    flows: tokio::task::JoinHandle<()>,
    sweeper: tokio::task::JoinHandle<()>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl FlowTasks {
    fn abort(self) {
        self.flows.abort();
        self.sweeper.abort();
        if let Some(t) = self.server {
            t.abort();
        }
    }
}

/// Starts the flow sink (ring buffer and sweeper to the log, the store, the metrics and the
/// detectors), the conntrack sweeper and the flow socket. Takes the ring buffer and the
/// conntrack and NAT maps from the datapath.
fn start_flow_tasks(
    dp: &mut Dataplane,
    opts: &AgentOptions,
    metrics: &Metrics,
    ctx: &Arc<RwLock<enrich::Context>>,
) -> anyhow::Result<FlowTasks> {
    let ring = dp.take_events().expect("taken once");
    let out = open_flow_log(&opts.flow_log, opts.flow_log_max_bytes, opts.flow_log_keep)?;
    let flow_store = store::FlowStore::new(opts.flow_buffer);
    let server = serve_flow_socket(opts, &flow_store);
    let (lost_tx, lost_rx) = tokio::sync::mpsc::unbounded_channel();
    let (ends_tx, ends_rx) = tokio::sync::mpsc::channel(4096);
    let (flush_tx, flush_rx) = tokio::sync::mpsc::unbounded_channel();
    let sweeper = tokio::spawn(sweep_conntrack(
        dp.take_conntrack().expect("taken once"),
        dp.take_nat().expect("taken once"),
        dp.remover()
            .inspect_err(|e| {
                tracing::warn!(error = %e, "the conntrack sweeper removes entries one per syscall")
            })
            .ok(),
        opts.conntrack_sweep_interval,
        ends_tx,
        flush_rx,
        metrics.clone(),
    ));
    let sink = flow_sink::Pipeline {
        ctx: ctx.clone(),
        out,
        filter: flow_sink::Filter {
            allowed: opts.log_allowed,
            records: opts.flow_log_filter.clone(),
        },
        metrics: metrics.clone(),
        store: flow_store,
        alerts: opts.alerts.clone().map(Alerts::new),
        webhook: opts
            .alert_webhook
            .clone()
            .map(|u| notify::start(u, opts.node.clone())),
    };
    let (catch_up_tx, catch_up_rx) = tokio::sync::mpsc::channel(64);
    sink.store.set_filler(catch_up_tx);
    let inputs = flow_sink::Inputs {
        lost: lost_rx,
        ends: ends_rx,
        catch_up: catch_up_rx,
    };
    let flows = tokio::spawn(flow_sink::run(ring, sink, inputs));
    Ok(FlowTasks {
        lost: lost_tx,
        flush: flush_tx,
        flows,
        sweeper,
        server,
    })
}

/// Serves `enforcer flows` on the flow socket, if one is asked for. The socket is for
/// observing, not enforcing: without it the agent still enforces.
fn serve_flow_socket(
    opts: &AgentOptions,
    flow_store: &store::FlowStore,
) -> Option<tokio::task::JoinHandle<()>> {
    let p = opts.flow_socket.as_ref()?;
    match server::FlowServer::bind(p, flow_store.clone()) {
        Ok(s) => Some(tokio::spawn(s.run())),
        Err(e) => {
            tracing::warn!(socket = %p.display(), error = %format!("{:#}", anyhow::Error::from(e)), "no flow socket");
            None
        }
    }
}

/// The manifests folder, or the Kubernetes API with its watches started.
async fn open_source(opts: &AgentOptions) -> anyhow::Result<Source> {
    Ok(match &opts.manifests {
        Some(dir) => Source::Folder(ManifestFolder::new(dir.clone())),
        None => {
            let client = crate::source::kube::client(opts.api_timeout, opts.kubeconfig.as_deref())
                .await
                .context("connecting to the Kubernetes API")?;
            // Watches end (and resume) before a silent stream would hit the read timeout.
            let watch_timeout = opts.api_timeout.mul_f64(5.0 / 6.0);
            Source::Kube(Box::new(
                KubeSource::start_with(client, watch_timeout)
                    .await
                    .context("starting the API watches")?,
            ))
        }
    })
}
