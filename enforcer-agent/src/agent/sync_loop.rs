//! The sync loop: when to sync (a watch event, a change of the manifests folder, a pod's
//! interface appearing, a retry), and what to do with each sync's outcome (readiness, metrics,
//! logs, the status file). One sync itself is [`super::sync::sync_once`].

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::sync::{quarantine_step, sync_once};
use super::{write_status, AgentOptions, Desired, Source, Status};
use crate::dataplane::services::GoneBackend;
use crate::dataplane::{interfaces, Dataplane};
use crate::flows::enrich;
use crate::metrics::http::Ready;
use crate::metrics::Metrics;
use crate::source::manifests::stat_signature;

/// What the sync loop remembers from one turn to the next.
pub(super) struct LoopState {
    /// The manifests folder's metadata when last looked at (standalone mode).
    last_signature: Option<Vec<(PathBuf, u64, Option<std::time::SystemTime>)>>,
    /// Something changed since the last sync: the next turn syncs.
    dirty: bool,
    /// When the pending change was first noticed (for the propagation delay).
    noticed: Option<Instant>,
    counters_copied: Instant,
    /// The kernel's lost-events counter as last passed on to the flow sink.
    lost_seen: u64,
    /// Since the last sync that left pods waiting for their interface or parts not
    /// programmed (`None`: nothing to retry).
    pending_since: Option<Instant>,
    /// The addresses of the waiting pods (their host route appearing is the signal).
    pending_ips: Vec<IpAddr>,
    pending_backoff: Duration,
    /// The waiting pods already logged.
    pending_logged: std::collections::BTreeSet<String>,
    /// The API has not answered for longer than the grace period (reported not ready).
    went_stale: bool,
    /// The invalid objects and the programming errors last logged (each logged on a change).
    last_errors: Vec<String>,
    last_sync_errors: Vec<String>,
    /// When the last sync ended and how long it took (see [`SyncLoop::run`]).
    last_sync: Option<(Instant, Duration)>,
    /// Kept across syncs: a change recompiles only the local pods it can affect.
    compiler: crate::compile::Compiler,
}

/// How long a watch event waits for others of its burst before the sync.
const SETTLE: Duration = Duration::from_millis(5);
/// The longest a sync waits for the previous one's duration to pass (see [`SyncLoop::run`]).
const MAX_SPACING: Duration = Duration::from_secs(1);

impl LoopState {
    pub(super) fn new(dp: &Dataplane, metrics: &Metrics) -> Self {
        for class in crate::dataplane::SyncErrorClass::ALL {
            // Every class shows, at 0, before the first failure.
            metrics.sync_errors.with_label_values(&[class.as_str()]);
        }
        LoopState {
            last_signature: None,
            dirty: true,
            noticed: Some(Instant::now()),
            counters_copied: Instant::now(),
            // Events lost before this agent started are not this stream's gap.
            lost_seen: dp.counters()[enforcer_common::reason::counter::EVENTS_LOST as usize],
            pending_since: None,
            pending_ips: Vec::new(),
            pending_backoff: Duration::from_millis(500),
            pending_logged: Default::default(),
            went_stale: false,
            last_errors: Vec::new(),
            last_sync_errors: Vec::new(),
            last_sync: None,
            compiler: crate::compile::Compiler::default(),
        }
    }
}

/// The sync loop and what it works with.
pub(super) struct SyncLoop<'a> {
    pub(super) state: LoopState,
    pub(super) opts: &'a AgentOptions,
    pub(super) dp: Dataplane,
    pub(super) source: Source,
    pub(super) ctx: Arc<RwLock<enrich::Context>>,
    pub(super) metrics: Metrics,
    pub(super) ready: Ready,
    pub(super) lost: tokio::sync::mpsc::UnboundedSender<u64>,
    pub(super) flush: tokio::sync::mpsc::UnboundedSender<Vec<GoneBackend>>,
}

impl SyncLoop<'_> {
    /// Turns every 100 ms, on a watch event, every 20 ms while pods wait for their interface;
    /// syncs when something changed. Returns on SIGINT or SIGTERM.
    ///
    /// A watch event syncs after [`SETTLE`] (a burst of events, say a Deployment's pods,
    /// becomes one sync), but no sooner than the previous sync's own duration after it ended
    /// (at most [`MAX_SPACING`]): a lone change is enforced a few milliseconds after it
    /// arrives, while under continuous churn the agent spends at most about half its time
    /// recompiling, each sync taking in everything that came meanwhile.
    pub(super) async fn run(&mut self, mut sigterm: tokio::signal::unix::Signal) {
        let changed = match &self.source {
            Source::Kube(k) => Some(k.changed.clone()),
            Source::Folder(_) => None,
        };
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // While pods wait for their interface, their routes are looked at every 20 ms (a route
        // table read, no recompile), so a new pod is enforced soon after its CNI built it.
        let mut pending_tick = tokio::time::interval(Duration::from_millis(20));
        pending_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // With quarantine on, interface names are polled every 10 ms (one procfs read; names
        // are resolved only when they changed), so a new pod's veth carries nothing unfiltered
        // for longer than that and an attach.
        self.dp
            .set_quarantine_prefixes(self.opts.quarantine_prefixes.clone());
        let quarantining = !self.opts.quarantine_prefixes.is_empty();
        let mut quarantine_tick = tokio::time::interval(Duration::from_millis(10));
        quarantine_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = pending_tick.tick(), if self.state.pending_since.is_some() => {}
                _ = quarantine_tick.tick(), if quarantining => {}
                _ = async { match &changed { Some(n) => n.notified().await, None => std::future::pending().await } } => {
                    // The propagation delay counts from here, the wait included.
                    self.state.noticed.get_or_insert_with(Instant::now);
                    let mut at = tokio::time::Instant::now() + SETTLE;
                    if let Some((ended, took)) = self.state.last_sync {
                        at = at.max((ended + took.min(MAX_SPACING)).into());
                    }
                    tokio::time::sleep_until(at).await;
                    self.state.dirty = true;
                }
                _ = tokio::signal::ctrl_c() => break,
                _ = sigterm.recv() => break,
            }
            self.turn();
        }
    }

    /// One turn: look for changes, copy the kernel's counters, and sync if anything changed.
    fn turn(&mut self) {
        if quarantine_step(&mut self.dp, false) {
            self.state.dirty = true;
        }
        self.poll_manifests();
        self.poll_pending_interfaces();
        self.watch_source_staleness();
        self.copy_kernel_counters();
        let state = &mut self.state;
        if state.dirty && state.noticed.is_none() {
            state.noticed = Some(Instant::now());
        }
        if !state.dirty {
            return;
        }
        state.dirty = false;
        let started = Instant::now();
        let desired = match self.source.snapshot() {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reading the desired state");
                return;
            }
        };
        self.log_invalid_objects(&desired);
        let result = sync_once(
            &mut self.dp,
            &mut self.state.compiler,
            self.opts,
            &desired,
            &self.ctx,
            &self.metrics,
            &self.flush,
        );
        self.state.last_sync = Some((Instant::now(), started.elapsed()));
        match result {
            Ok(status) => self.synced(&status),
            Err(e) => {
                // The maps keep their last state; retry on the next tick.
                tracing::error!(error = %format!("{e:#}"), "sync failed; enforcing the previous state");
                self.state.pending_since = Some(Instant::now());
            }
        }
    }

    /// Standalone: a change of the manifests folder's metadata marks the state dirty.
    /// Polling the metadata is cheap; the content is read only on a change.
    fn poll_manifests(&mut self) {
        let Some(dir) = &self.opts.manifests else {
            return;
        };
        match stat_signature(dir) {
            Ok(s) if self.state.last_signature.as_ref() != Some(&s) => {
                self.state.last_signature = Some(s);
                self.state.dirty = true;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the manifests folder")
            }
        }
    }

    /// Pods whose interface is missing: re-checked as soon as a host route to one of their
    /// addresses appears (reading the route tables is cheap; a recompile is not), and
    /// otherwise with a backoff from 0.5 s to 8 s.
    fn poll_pending_interfaces(&mut self) {
        let state = &mut self.state;
        let Some(since) = state.pending_since else {
            return;
        };
        let appeared = !state.pending_ips.is_empty()
            && interfaces::host_routes()
                .map(|r| state.pending_ips.iter().any(|ip| r.contains_key(ip)))
                .unwrap_or(false);
        if appeared || since.elapsed() > state.pending_backoff {
            state.dirty = true;
            state.pending_backoff = (state.pending_backoff * 2).min(Duration::from_secs(8));
        }
    }

    /// The API as source: not ready while its watches have failed for longer than the grace
    /// period; ready again after the first sync once they answer.
    fn watch_source_staleness(&mut self) {
        let Source::Kube(k) = &self.source else {
            return;
        };
        let stale = k.stale_for().unwrap_or_default();
        self.metrics.source_stale.set(stale.as_secs_f64());
        if stale > self.opts.source_stale_grace && !self.state.went_stale {
            tracing::error!(
                stale_s = stale.as_secs(),
                "the Kubernetes API has not answered a watch for longer than the grace period: not ready (the last state stays enforced)"
            );
            self.ready.unset();
            self.state.went_stale = true;
        } else if stale.is_zero() && self.state.went_stale {
            // Back: ready again once the next sync has applied what changed meanwhile.
            self.state.went_stale = false;
            self.state.dirty = true;
        }
    }

    /// Once a second: the kernel's counters into the metrics, and the events it lost since
    /// the last look to the flow sink (which marks the gap in the flow stream).
    fn copy_kernel_counters(&mut self) {
        let state = &mut self.state;
        if state.counters_copied.elapsed() < Duration::from_secs(1) {
            return;
        }
        let counters = self.dp.counters();
        self.metrics.set_kernel_counters(&counters);
        let lost = counters[enforcer_common::reason::counter::EVENTS_LOST as usize];
        if lost > state.lost_seen {
            let _ = self.lost.send(lost - state.lost_seen);
            state.lost_seen = lost;
        }
        state.counters_copied = Instant::now();
    }

    /// The invalid objects of the desired state, logged when they change.
    fn log_invalid_objects(&mut self, desired: &Desired) {
        if desired.errors != self.state.last_errors {
            for e in &desired.errors {
                tracing::error!(error = %e, "invalid object (not applied)");
            }
            self.state.last_errors = desired.errors.clone();
        }
    }

    /// After a sync: readiness, metrics, the waiting pods, the retry and the status file.
    fn synced(&mut self, status: &Status) {
        self.log_sync_errors(status);
        self.update_readiness(status);
        if let Some(t) = self.state.noticed.take() {
            self.metrics
                .propagation_delay
                .observe(t.elapsed().as_secs_f64());
        }
        self.metrics
            .pending_endpoints
            .set(status.pending.len() as i64);
        self.metrics.invalid_objects.set(status.errors.len() as i64);
        self.log_pending_pods(status);
        self.schedule_retry(status);
        if let Some(path) = &self.opts.status_file {
            if let Err(e) = write_status(path, status) {
                tracing::warn!(error = %format!("{e:#}"), "status file");
            }
        }
    }

    /// What could not be programmed, logged when it changes (and its end).
    fn log_sync_errors(&mut self, status: &Status) {
        let last = &mut self.state.last_sync_errors;
        if status.sync_errors != *last {
            for e in &status.sync_errors {
                tracing::error!(error = %e, "sync: could not program (the previous state stays in force; retried)");
            }
            if status.sync_errors.is_empty() && !last.is_empty() {
                tracing::info!("sync: everything programmed again");
            }
            *last = status.sync_errors.clone();
        }
    }

    /// A datapath that cannot be programmed is not ready, though what it could program (and
    /// everything it could not change) stays in force; nor is an agent whose API has been
    /// silent for longer than the grace period.
    fn update_readiness(&self, status: &Status) {
        let stale = match &self.source {
            Source::Kube(k) => k.stale_for().unwrap_or_default(),
            Source::Folder(_) => Duration::ZERO,
        };
        if !status.sync_errors.is_empty() {
            self.ready.unset();
        } else if stale <= self.opts.source_stale_grace {
            self.ready.set();
        }
    }

    /// Each pod that waits for its interface is logged once, and once when it is enforced.
    fn log_pending_pods(&mut self, status: &Status) {
        let logged = &mut self.state.pending_logged;
        for pod in status.pending.iter().filter(|p| !logged.contains(*p)) {
            tracing::warn!(pod = %pod, "no host route to the pod's addresses yet: not enforced until its interface appears");
        }
        for pod in logged.iter().filter(|p| !status.pending.contains(p)) {
            tracing::info!(pod = %pod, "the pod's interface appeared: enforced");
        }
        *logged = status.pending.iter().cloned().collect();
    }

    /// Pending pods and failed parts are tried again with the backoff; a clean sync resets it.
    fn schedule_retry(&mut self, status: &Status) {
        let state = &mut self.state;
        if status.pending.is_empty() && status.sync_errors.is_empty() {
            state.pending_since = None;
            state.pending_backoff = Duration::from_millis(500);
        } else {
            state.pending_since = Some(Instant::now());
        }
        state.pending_ips = status.pending_ips.clone();
    }
}
