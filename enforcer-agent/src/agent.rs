//! The agent's sync loop: source → compile → dataplane, level-triggered. Any change (or a
//! pod whose interface is not there yet) leads to a full recompile and a diff against the maps.
//! Beside it, the agent's other tasks: the flow sink ([`flow_sink`]), the conntrack sweeper,
//! the metrics endpoint and the flow socket.

pub mod flow_sink;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use crate::alerts::{notify, Alerts, AlertsConfig};
use crate::compile::{compile, NodeInput, Tables};
use crate::dataplane::services::GoneBackend;
use crate::dataplane::{ct_sweep, interfaces, Dataplane, Iface};
use crate::flows::{enrich, rotate, server, store};
use crate::metrics::http::{self as metrics_http, Ready};
use crate::metrics::Metrics;
use crate::model::{Cluster, PodKey};
use crate::source::kube::KubeSource;
use crate::source::manifests::{stat_signature, ManifestFolder};
use crate::source::revision::KindRevision;
use enforcer_common::ct::{CtEntry, CtKey};

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
    if let Some(addr) = opts.metrics_addr {
        let (m, r) = (metrics.clone(), ready.clone());
        tokio::spawn(async move {
            if let Err(e) = metrics_http::serve(addr, m, r).await {
                tracing::error!(%addr, error = %e, "metrics endpoint stopped");
            }
        });
    }
    let ctx = Arc::new(RwLock::new(enrich::Context::default()));
    let ring = dp.take_events().expect("taken once");
    let out = open_flow_log(&opts.flow_log, opts.flow_log_max_bytes, opts.flow_log_keep)?;
    let flow_store = store::FlowStore::new(opts.flow_buffer);
    // The socket is for observing, not enforcing: without it the agent still enforces.
    let flow_server = opts.flow_socket.as_ref().and_then(|p| {
        match server::FlowServer::bind(p, flow_store.clone()) {
            Ok(s) => Some(tokio::spawn(s.run())),
            Err(e) => {
                tracing::warn!(socket = %p.display(), error = %format!("{:#}", anyhow::Error::from(e)), "no flow socket");
                None
            }
        }
    });
    let (lost_tx, lost_rx) = tokio::sync::mpsc::unbounded_channel();
    let (ends_tx, ends_rx) = tokio::sync::mpsc::channel(4096);
    let (flush_tx, flush_rx) = tokio::sync::mpsc::unbounded_channel();
    let sweeper = tokio::spawn(sweep_conntrack(
        dp.take_conntrack().expect("taken once"),
        dp.take_nat().expect("taken once"),
        opts.conntrack_sweep_interval,
        ends_tx,
        flush_rx,
        metrics.clone(),
    ));
    let outputs = flow_sink::Outputs {
        lost: lost_rx,
        ends: ends_rx,
        metrics: metrics.clone(),
        store: flow_store,
        alerts: opts.alerts.clone().map(Alerts::new),
        webhook: opts
            .alert_webhook
            .clone()
            .map(|u| notify::start(u, opts.node.clone())),
    };
    let filter = flow_sink::Filter {
        allowed: opts.log_allowed,
        records: opts.flow_log_filter.clone(),
    };
    let flow_ctx = ctx.clone();
    let flows = tokio::spawn(async move {
        if let Err(e) = flow_sink::run(ring, flow_ctx, out, filter, outputs).await {
            tracing::error!(error = %format!("{e:#}"), "flow log stopped");
        }
    });

    let mut source = match &opts.manifests {
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
    };
    let changed = match &source {
        Source::Kube(k) => Some(k.changed.clone()),
        Source::Folder(_) => None,
    };

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_signature = None;
    let mut dirty = true;
    // When the pending change was first noticed (for the propagation delay).
    let mut noticed: Option<Instant> = Some(Instant::now());
    let mut counters_copied = Instant::now();
    // Events lost before this agent started are not this stream's gap.
    let mut lost_seen = dp.counters()[enforcer_common::reason::counter::EVENTS_LOST as usize];
    let mut pending_since: Option<Instant> = None;
    let mut pending_ips: Vec<IpAddr> = Vec::new();
    let mut pending_backoff = Duration::from_millis(500);
    let mut pending_logged: std::collections::BTreeSet<String> = Default::default();
    let mut went_stale = false;
    let mut last_errors: Vec<String> = Vec::new();
    let mut last_sync_errors: Vec<String> = Vec::new();
    for class in crate::dataplane::SyncErrorClass::ALL {
        // Every class shows, at 0, before the first failure.
        metrics.sync_errors.with_label_values(&[class.as_str()]);
    }
    // While pods wait for their interface, their routes are looked at every 20 ms (a route
    // table read, no recompile), so a new pod is enforced soon after its CNI built it.
    let mut pending_tick = tokio::time::interval(Duration::from_millis(20));
    pending_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // With quarantine on, interface names are polled every 10 ms (one procfs read; names
    // are resolved only when they changed), so a new pod's veth carries nothing unfiltered
    // for longer than that and an attach.
    dp.set_quarantine_prefixes(opts.quarantine_prefixes.clone());
    let quarantining = !opts.quarantine_prefixes.is_empty();
    let mut quarantine_tick = tokio::time::interval(Duration::from_millis(10));
    quarantine_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = pending_tick.tick(), if pending_since.is_some() => {}
            _ = quarantine_tick.tick(), if quarantining => {}
            _ = async { match &changed { Some(n) => n.notified().await, None => std::future::pending().await } } => {
                // Debounce: let a burst of watch events settle into one sync.
                tokio::time::sleep(Duration::from_millis(100)).await;
                dirty = true;
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
        if quarantine_step(&mut dp, false) {
            dirty = true;
        }
        if let Some(dir) = &opts.manifests {
            // Polling the folder's metadata is cheap; its content is read only on a change.
            match stat_signature(dir) {
                Ok(s) if last_signature.as_ref() != Some(&s) => {
                    last_signature = Some(s);
                    dirty = true;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot read the manifests folder")
                }
            }
        }
        // Pods whose interface is missing: re-checked as soon as a host route to one of their
        // addresses appears (reading the route tables is cheap; a recompile is not), and
        // otherwise with a backoff from 0.5 s to 8 s.
        if let Some(since) = pending_since {
            let appeared = !pending_ips.is_empty()
                && interfaces::host_routes()
                    .map(|r| pending_ips.iter().any(|ip| r.contains_key(ip)))
                    .unwrap_or(false);
            if appeared || since.elapsed() > pending_backoff {
                dirty = true;
                pending_backoff = (pending_backoff * 2).min(Duration::from_secs(8));
            }
        }
        if let Source::Kube(k) = &source {
            let stale = k.stale_for().unwrap_or_default();
            metrics.source_stale.set(stale.as_secs_f64());
            if stale > opts.source_stale_grace && !went_stale {
                tracing::error!(
                    stale_s = stale.as_secs(),
                    "the Kubernetes API has not answered a watch for longer than the grace period: not ready (the last state stays enforced)"
                );
                ready.unset();
                went_stale = true;
            } else if stale.is_zero() && went_stale {
                // Back: ready again once the next sync has applied what changed meanwhile.
                went_stale = false;
                dirty = true;
            }
        }
        if counters_copied.elapsed() >= Duration::from_secs(1) {
            let counters = dp.counters();
            metrics.set_kernel_counters(&counters);
            let lost = counters[enforcer_common::reason::counter::EVENTS_LOST as usize];
            if lost > lost_seen {
                let _ = lost_tx.send(lost - lost_seen);
                lost_seen = lost;
            }
            counters_copied = Instant::now();
        }
        if dirty && noticed.is_none() {
            noticed = Some(Instant::now());
        }
        if !dirty {
            continue;
        }
        dirty = false;
        let desired = match source.snapshot() {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reading the desired state");
                continue;
            }
        };
        if desired.errors != last_errors {
            for e in &desired.errors {
                tracing::error!(error = %e, "invalid object (not applied)");
            }
            last_errors = desired.errors.clone();
        }
        match sync_once(&mut dp, &opts, &desired, &ctx, &metrics, &flush_tx) {
            Ok(status) => {
                let stale = match &source {
                    Source::Kube(k) => k.stale_for().unwrap_or_default(),
                    Source::Folder(_) => Duration::ZERO,
                };
                // A datapath that cannot be programmed is not ready, though what it could
                // program (and everything it could not change) stays in force.
                if status.sync_errors != last_sync_errors {
                    for e in &status.sync_errors {
                        tracing::error!(error = %e, "sync: could not program (the previous state stays in force; retried)");
                    }
                    if status.sync_errors.is_empty() && !last_sync_errors.is_empty() {
                        tracing::info!("sync: everything programmed again");
                    }
                    last_sync_errors = status.sync_errors.clone();
                }
                if !status.sync_errors.is_empty() {
                    ready.unset();
                } else if stale <= opts.source_stale_grace {
                    ready.set();
                }
                if let Some(t) = noticed.take() {
                    metrics.propagation_delay.observe(t.elapsed().as_secs_f64());
                }
                metrics.pending_endpoints.set(status.pending.len() as i64);
                metrics.invalid_objects.set(status.errors.len() as i64);
                // Each pod that waits for its interface is logged once, and once when it is
                // enforced.
                for pod in status
                    .pending
                    .iter()
                    .filter(|p| !pending_logged.contains(*p))
                {
                    tracing::warn!(pod = %pod, "no host route to the pod's addresses yet: not enforced until its interface appears");
                }
                for pod in pending_logged
                    .iter()
                    .filter(|p| !status.pending.contains(p))
                {
                    tracing::info!(pod = %pod, "the pod's interface appeared: enforced");
                }
                pending_logged = status.pending.iter().cloned().collect();
                if status.pending.is_empty() && status.sync_errors.is_empty() {
                    pending_since = None;
                    pending_backoff = Duration::from_millis(500);
                } else {
                    // Pending pods and failed parts are tried again with the backoff.
                    pending_since = Some(Instant::now());
                }
                pending_ips = status.pending_ips.clone();
                if let Some(path) = &opts.status_file {
                    if let Err(e) = write_status(path, &status) {
                        tracing::warn!(error = %format!("{e:#}"), "status file");
                    }
                }
            }
            Err(e) => {
                // The maps keep their last state; retry on the next tick.
                tracing::error!(error = %format!("{e:#}"), "sync failed; enforcing the previous state");
                pending_since = Some(Instant::now());
            }
        }
    }
    flows.abort();
    sweeper.abort();
    if let Some(t) = flow_server {
        t.abort();
    }
    tracing::info!("agent stopping; the datapath stays in force");
    Ok(())
}

/// One quarantine pass (see [`crate::dataplane::quarantine`]), logged; returns whether it
/// changed anything (the status then needs writing again).
fn quarantine_step(dp: &mut Dataplane, full: bool) -> bool {
    let q = dp.quarantine_new_interfaces(full);
    for name in &q.added {
        tracing::info!(interface = %name, "quarantined: no local pod programmed on this interface yet, all its traffic is dropped");
    }
    for name in &q.released {
        tracing::info!(interface = %name, "released from quarantine");
    }
    for (name, error) in &q.failed {
        tracing::error!(interface = %name, error = %error, "could not quarantine");
    }
    !q.added.is_empty() || !q.released.is_empty()
}

/// Sweeps the conntrack map every `every`, sending the ends of idle connections to the flow
/// sink. Runs on a blocking thread: a pass over a full map is some hundred thousand syscalls.
/// Also flushes the UDP flows whose Service backend went (sent by the sync loop), as soon as
/// they arrive.
async fn sweep_conntrack(
    map: aya::maps::HashMap<aya::maps::MapData, CtKey, CtEntry>,
    nat: crate::dataplane::services::NatMaps,
    every: Duration,
    ends: tokio::sync::mpsc::Sender<flow_sink::Swept>,
    mut flush: tokio::sync::mpsc::UnboundedReceiver<Vec<GoneBackend>>,
    metrics: Metrics,
) {
    let mut state = Some((map, nat, ct_sweep::ByteMeter::default()));
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while let Some((mut map, mut nat, mut meter)) = state.take() {
        let mut gone = Vec::new();
        tokio::select! {
            _ = tick.tick() => {}
            Some(g) = flush.recv() => gone.extend(g),
        }
        while let Ok(g) = flush.try_recv() {
            gone.extend(g);
        }
        // The maps and the meter go to the blocking thread and come back with the pass.
        let pass = match tokio::task::spawn_blocking(move || {
            let flushed = nat.flush(&mut map, &gone);
            let now = ct_sweep::monotonic_now();
            let pass = ct_sweep::sweep_with_nat(&mut map, Some(&mut nat), now, &mut meter)
                .and_then(|mut pass| {
                    pass.ends.extend(
                        flushed?
                            .iter()
                            .filter_map(|(k, e)| ct_sweep::flushed_end(k, e)),
                    );
                    Ok(pass)
                });
            (map, nat, meter, pass)
        })
        .await
        {
            Ok((map, nat, meter, pass)) => {
                state = Some((map, nat, meter));
                pass
            }
            Err(e) => {
                tracing::error!(error = %e, "conntrack sweep stopped");
                return;
            }
        };
        match pass {
            Ok(s) => {
                metrics
                    .map_entries
                    .with_label_values(&[enforcer_common::maps::CONNTRACK])
                    .set(s.live as i64);
                metrics
                    .map_pressure
                    .with_label_values(&[enforcer_common::maps::CONNTRACK])
                    .set(s.live as f64 / f64::from(enforcer_common::maps::sizes::CONNTRACK));
                let items = s
                    .ends
                    .into_iter()
                    .map(flow_sink::Swept::End)
                    .chain(s.samples.into_iter().map(flow_sink::Swept::Bytes));
                for item in items {
                    if ends.send(item).await.is_err() {
                        return; // the flow sink is gone: the agent is stopping
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "sweeping the conntrack map"),
        }
    }
}

fn sync_once(
    dp: &mut Dataplane,
    opts: &AgentOptions,
    desired: &Desired,
    ctx: &Arc<RwLock<enrich::Context>>,
    metrics: &Metrics,
    flush: &tokio::sync::mpsc::UnboundedSender<Vec<GoneBackend>>,
) -> anyhow::Result<Status> {
    let started = Instant::now();
    let host_ips: Vec<IpAddr> =
        interfaces::host_addresses().context("listing this node's addresses")?;
    let tables: Tables = compile(
        &desired.cluster,
        &NodeInput {
            name: opts.node.clone(),
            host_ips,
            audit: opts.policy_audit_mode,
        },
    );
    metrics
        .sync_duration
        .with_label_values(&["compile"])
        .observe(started.elapsed().as_secs_f64());
    let applying = Instant::now();
    let routes = interfaces::host_routes().context("reading host routes")?;
    let mut ifaces: BTreeMap<PodKey, Iface> = BTreeMap::new();
    let mut pending = Vec::new();
    let mut pending_ips = Vec::new();
    for (pod, plan) in &tables.endpoints {
        let ips: Vec<IpAddr> = plan
            .ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(plan.ipv6.map(IpAddr::V6))
            .collect();
        match interfaces::pod_iface(&routes, &ips) {
            Some(i) => {
                ifaces.insert(pod.clone(), i);
            }
            None => {
                pending.push(pod.to_string());
                // The addresses still without a route: their route appearing is the signal.
                pending_ips.extend(ips.iter().filter(|ip| !routes.contains_key(ip)));
            }
        }
    }
    let mut report = dp
        .sync(&tables, &ifaces)
        .context("writing the datapath maps")?;
    let gone = std::mem::take(&mut report.services.gone_udp_backends);
    if !gone.is_empty() {
        // The sweeper owns the conntrack and NAT maps: it flushes these flows at once.
        let _ = flush.send(gone);
    }
    metrics
        .sync_duration
        .with_label_values(&["apply"])
        .observe(applying.elapsed().as_secs_f64());
    metrics.policies.set(desired.cluster.policies.len() as i64);
    metrics.endpoints.set(report.endpoints as i64);
    metrics
        .service_frontends
        .set(report.services.frontends as i64);
    for (map, entries, max) in dp.map_usage() {
        metrics
            .map_entries
            .with_label_values(&[map])
            .set(entries as i64);
        metrics
            .map_pressure
            .with_label_values(&[map])
            .set(entries as f64 / f64::from(max));
    }
    if !report.attached.is_empty() || !report.detached.is_empty() || report.entries_written > 0 {
        tracing::info!(
            endpoints = report.endpoints,
            attached = ?report.attached,
            detached = ?report.detached,
            entries_written = report.entries_written,
            entries_removed = report.entries_removed,
            revision = report.revision,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "synced"
        );
    }
    for err in &report.errors {
        metrics
            .sync_errors
            .with_label_values(&[err.class.as_str()])
            .inc();
    }
    let endpoints = ifaces
        .iter()
        .map(|(p, i)| {
            (
                p.to_string(),
                EndpointStatus {
                    ifname: i.name.clone(),
                    attached: dp.is_attached(i.ifindex),
                },
            )
        })
        .collect();
    let mut flow_ctx =
        enrich::Context::new(&opts.node, &desired.cluster, tables, dp.endpoint_pods());
    flow_ctx.frontends = dp.frontend_names().clone();
    flow_ctx.rules = dp.rule_refs();
    *ctx.write().expect("flow context lock poisoned") = flow_ctx;
    // After the endpoints: an interface whose pod was just programmed is no candidate.
    quarantine_step(dp, true);
    Ok(Status {
        digest: desired.digest.clone(),
        revision: report.revision,
        endpoints,
        pending,
        pending_ips,
        errors: desired.errors.clone(),
        sync_errors: report.errors.iter().map(ToString::to_string).collect(),
        programs: dp.program_ids(),
        quarantined: dp.quarantined(),
        source: desired.revisions.clone(),
    })
}
