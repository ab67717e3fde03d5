//! Running a scenario's lab: build it, apply each step and measure its probes (`lab run`), or
//! bring its first step up and leave it running (`lab up`, the demo). Whatever was built is
//! removed on failure and, through [`interruptible`], on Ctrl-C.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use enforcer_agent::model::Cluster;

use crate::instance::Lab;
use crate::placement::Placement;
use crate::probe::run_probes;
use crate::report::print_up_summary;
use crate::scenario::{self, Probe, ProbeResult, Results, Scenario, StepResult};
use crate::servers::{self, ServerSet};
use crate::services::{scenario_has_services, ClusterIpMemory, StepServices};
use crate::topology::LivePod;

/// Runs `fut`, abandoning it (which drops, and so removes, any lab it owns) on SIGINT/SIGTERM.
pub async fn interruptible<T>(fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        res = fut => res,
        _ = tokio::signal::ctrl_c() => bail!("interrupted (SIGINT); lab resources removed"),
        _ = term.recv() => bail!("terminated (SIGTERM); lab resources removed"),
    }
}

/// Creates the lab of `steps`: their pods' nodes (spread over `spread` when given), and
/// kube-proxy when a step has Services.
fn create_lab(steps: &[scenario::Step], name: &str, spread: &[String]) -> anyhow::Result<Lab> {
    let placement = Placement::plan(steps, spread).context("placing the pods on nodes")?;
    Lab::create(name, placement, scenario_has_services(steps))
}

/// Builds the lab, runs every step, and returns the measured results. The lab is removed when
/// this returns (or is abandoned), unless `keep`.
pub async fn run_scenario(
    scenario: &Scenario,
    name: &str,
    keep: bool,
    timeout: Duration,
    spread: &[String],
) -> anyhow::Result<Results> {
    let mut lab = create_lab(&scenario.steps, name, spread)?;
    lab.sync_pods(&scenario.steps[0].pods)?;
    lab.start_agent(keep, &[])?;
    let mut results = Results::default();
    for (i, step) in scenario.steps.iter().enumerate() {
        let started = Instant::now();
        lab.sync_pods(&step.pods)
            .with_context(|| format!("building the pods of step {}", step.label()))?;
        lab.apply(step).await?;
        let applied = started.elapsed();
        let pods = lab.topo.pods();
        let probes = measure_step(
            &pods,
            &step.probes,
            lab.cluster(),
            lab.cluster_ips(),
            timeout,
        )
        .await
        .with_context(|| format!("probing step {}", step.label()))?;
        eprintln!(
            "step {} ({}): {} pods on {} node(s), {} policies, {} services; agents applied in {:.2}s; {} probes in {:.2}s",
            i + 1,
            step.label(),
            pods.len(),
            lab.topo.layout().nodes.len(),
            step.policy_count,
            lab.cluster().services.len(),
            applied.as_secs_f64(),
            step.probes.len(),
            (started.elapsed() - applied).as_secs_f64()
        );
        results.steps.push(StepResult { probes });
    }
    if keep {
        lab.set_probes_file(&probes_yaml(
            &scenario.steps[scenario.steps.len() - 1].probes,
        ))?;
        let state = lab.detach()?;
        eprintln!("kept lab {name:?}; remove it with `enforcer lab down --name {name}`");
        print_up_summary(&state);
    }
    Ok(results)
}

/// Builds the first step of `scenario` with detached agents and waits until they applied it.
pub async fn up(
    scenario: &Scenario,
    name: &str,
    agent_args: &[&str],
    spread: &[String],
) -> anyhow::Result<Lab> {
    let step = &scenario.steps[0];
    let mut lab = create_lab(&scenario.steps[..1], name, spread)?;
    lab.sync_pods(&step.pods)?;
    lab.start_agent(true, agent_args)?;
    lab.set_probes_file(&probes_yaml(&step.probes))?;
    lab.apply(step).await?;
    lab.save_state()?;
    Ok(lab)
}

fn probes_yaml(probes: &[Probe]) -> String {
    // Serialized as written: Service probes keep their `service` key.
    serde_yaml::to_string(probes).expect("probes serialize")
}

/// Measures one step of a running lab: starts the servers it needs (every pod serves the pod
/// probes' ports, every Service backend its reachable target ports), runs every probe at
/// once, stops the servers. `cluster` is the model of the step's manifests.
pub async fn measure_step(
    pods: &[Arc<LivePod>],
    probes: &[Probe],
    cluster: &Cluster,
    cluster_ips: &ClusterIpMemory,
    limit: Duration,
) -> anyhow::Result<Vec<ProbeResult>> {
    let services = StepServices::new(cluster);
    let targets = services.targets(probes, pods, cluster_ips)?;
    let servers = ServerSet::start_with(
        pods,
        &servers::endpoints_for(probes),
        &services.backend_endpoints(probes),
    )?;
    let results = run_probes(pods, probes, &targets, limit).await;
    servers.stop().await;
    results
}
