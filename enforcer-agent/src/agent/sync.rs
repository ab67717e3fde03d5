//! One sync of the agent: the desired state compiled for this node, the pods' interfaces
//! found, the datapath programmed, the flow sink's attribution context replaced.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use anyhow::Context as _;

use super::{AgentOptions, Desired, EndpointStatus, Status};
use crate::compile::{Compiler, NodeInput, Tables};
use crate::dataplane::services::GoneBackend;
use crate::dataplane::{interfaces, Dataplane, Iface};
use crate::flows::enrich;
use crate::metrics::Metrics;
use crate::model::PodKey;

/// One sync: compile the desired state for this node, find the local pods' interfaces,
/// program the datapath, and give the flow sink the tables the records are attributed with.
pub(super) fn sync_once(
    dp: &mut Dataplane,
    compiler: &mut Compiler,
    opts: &AgentOptions,
    desired: &Desired,
    ctx: &Arc<RwLock<enrich::Context>>,
    metrics: &Metrics,
    flush: &tokio::sync::mpsc::UnboundedSender<Vec<GoneBackend>>,
) -> anyhow::Result<Status> {
    let started = Instant::now();
    let tables = compile_for_node(compiler, opts, desired)?;
    metrics
        .sync_duration
        .with_label_values(&["compile"])
        .observe(started.elapsed().as_secs_f64());
    let applying = Instant::now();
    let found = find_interfaces(&tables)?;
    let mut report = dp
        .sync(&tables, &found.ifaces)
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
    record_sync_metrics(dp, desired, &report, metrics);
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
    let endpoints = endpoint_statuses(dp, &found.ifaces);
    publish_flow_context(dp, opts, desired, tables, ctx);
    // After the endpoints: an interface whose pod was just programmed is no candidate.
    quarantine_step(dp, true);
    Ok(Status {
        digest: desired.digest.clone(),
        revision: report.revision,
        endpoints,
        pending: found.pending,
        pending_ips: found.pending_ips,
        errors: desired.errors.clone(),
        sync_errors: report.errors.iter().map(ToString::to_string).collect(),
        programs: dp.program_ids(),
        quarantined: dp.quarantined(),
        source: desired.revisions.clone(),
    })
}

/// One quarantine pass (see [`crate::dataplane::quarantine`]), logged; returns whether it
/// changed anything (the status then needs writing again).
pub(super) fn quarantine_step(dp: &mut Dataplane, full: bool) -> bool {
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

/// The tables this node's kernel reads, for the desired state and this node's addresses.
fn compile_for_node(
    compiler: &mut Compiler,
    opts: &AgentOptions,
    desired: &Desired,
) -> anyhow::Result<Tables> {
    let host_ips: Vec<IpAddr> =
        interfaces::host_addresses().context("listing this node's addresses")?;
    Ok(compiler.compile(
        &desired.cluster,
        &NodeInput {
            name: opts.node.clone(),
            host_ips,
            audit: opts.policy_audit_mode,
        },
    ))
}

/// The local pods' host interfaces, found by their host routes, and the pods without one yet.
struct FoundInterfaces {
    ifaces: BTreeMap<PodKey, Iface>,
    pending: Vec<String>,
    /// The waiting pods' addresses still without a route: their route appearing is the signal.
    pending_ips: Vec<IpAddr>,
}

fn find_interfaces(tables: &Tables) -> anyhow::Result<FoundInterfaces> {
    let routes = interfaces::host_routes().context("reading host routes")?;
    let mut found = FoundInterfaces {
        ifaces: BTreeMap::new(),
        pending: Vec::new(),
        pending_ips: Vec::new(),
    };
    for (pod, plan) in &tables.endpoints {
        let ips: Vec<IpAddr> = plan
            .ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(plan.ipv6.map(IpAddr::V6))
            .collect();
        match interfaces::pod_iface(&routes, &ips) {
            Some(i) => {
                found.ifaces.insert(pod.clone(), i);
            }
            None => {
                found.pending.push(pod.to_string());
                found
                    .pending_ips
                    .extend(ips.iter().filter(|ip| !routes.contains_key(ip)));
            }
        }
    }
    Ok(found)
}

/// What the sync programmed, as metrics: policies, endpoints, Service frontends, map usage and
/// the errors by class.
fn record_sync_metrics(
    dp: &Dataplane,
    desired: &Desired,
    report: &crate::dataplane::SyncReport,
    metrics: &Metrics,
) {
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
    for err in &report.errors {
        metrics
            .sync_errors
            .with_label_values(&[err.class.as_str()])
            .inc();
    }
}

/// Each enforced pod's interface and whether the programs are on it (the status file).
fn endpoint_statuses(
    dp: &Dataplane,
    ifaces: &BTreeMap<PodKey, Iface>,
) -> BTreeMap<String, EndpointStatus> {
    ifaces
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
        .collect()
}

/// The flow sink attributes records with what was just programmed: the cluster, the tables,
/// the endpoints' pods, the Service frontends and the rules' ids.
fn publish_flow_context(
    dp: &Dataplane,
    opts: &AgentOptions,
    desired: &Desired,
    tables: Tables,
    ctx: &Arc<RwLock<enrich::Context>>,
) {
    let mut flow_ctx =
        enrich::Context::new(&opts.node, &desired.cluster, tables, dp.endpoint_pods());
    flow_ctx.frontends = dp.frontend_names();
    flow_ctx.rules = dp.rule_refs();
    flow_ctx.staged = dp.staged_refs();
    *ctx.write().expect("flow context lock poisoned") = flow_ctx;
}
