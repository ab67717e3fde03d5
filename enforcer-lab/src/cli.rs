//! `enforcer lab ...`: [`run`] runs a parsed [`LabCommand`] (the arguments are in
//! [`crate::args`]); a lab on an API is brought up by [`crate::api_cli`], the demo run by
//! [`crate::demo`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::args::{
    DownArgs, ExecArgs, LabCommand, LabFlowsArgs, ProbeArgs, RunArgs, StatusArgs, UpArgs,
};
use crate::demo_scenario::demo_scenario;
use crate::instance::{self, resolve_name, AgentStatus, LabState};
use crate::iproute;
use crate::report::{print_nodes, print_pods, print_up_summary};
use crate::run::{interruptible, measure_step, run_scenario, up};
use crate::scenario::{self, compare, Results, Scenario, StepResult};
use crate::services::{cluster_from_yaml, ClusterIpMemory};
use crate::topology::Topology;

/// Runs one `enforcer lab` command. Needs a tokio runtime with timers, I/O and signals (the
/// multi-thread one of `#[tokio::main]`). `lab exec` exits the process with the command's code.
pub async fn run(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Run(args) => cmd_run(args).await,
        LabCommand::Up(args) if args.kubeconfig.is_some() => {
            interruptible(crate::api_cli::up(args)).await
        }
        LabCommand::Up(args) => interruptible(cmd_up(args)).await,
        LabCommand::Wait(args) => crate::api_cli::wait(args).await,
        LabCommand::Controller(args) => crate::kubelet::run(&args.name, &args.agent_args).await,
        LabCommand::Status(args) => cmd_status(args),
        LabCommand::Exec(args) => cmd_exec(args),
        LabCommand::Probe(args) => interruptible(cmd_probe(args)).await,
        LabCommand::Down(args) => cmd_down(args),
        LabCommand::Demo(args) => crate::demo::run_demo(args).await,
    }
}

/// `enforcer flows --lab NAME [--node N]`: the flow sockets of the lab's agents (every node's,
/// or `--node`'s); `None` without `--lab` (the agent's own `--socket`s apply).
pub fn flow_sockets(args: &LabFlowsArgs) -> anyhow::Result<Option<Vec<PathBuf>>> {
    let Some(name) = &args.lab else {
        return Ok(None);
    };
    // A lab's nodes each have an agent: ask them all (or --node's).
    LabState::load(name)?
        .flow_sockets(args.node.as_deref())
        .map(Some)
}

async fn cmd_run(args: RunArgs) -> anyhow::Result<()> {
    let scenario = Scenario::load(&args.scenario)
        .with_context(|| format!("loading scenario {}", args.scenario.display()))?;
    let expected = match &args.expected {
        Some(path) => Some(Results::load(path)?),
        None => scenario.expected.clone(),
    };
    let timeout = Duration::from_millis(args.timeout_ms);
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("r{}", std::process::id()));
    let results = interruptible(run_scenario(
        &scenario,
        &name,
        args.keep,
        timeout,
        &args.nodes,
    ))
    .await?;

    if args.json {
        println!("{}", results.to_json_pretty());
    } else {
        print_tables(&scenario, &results, expected.as_ref());
    }
    if let Some(expected) = expected {
        let cmp = compare(&expected, &results);
        eprintln!("{cmp}");
        if !cmp.is_match() {
            bail!(
                "{} of {} probe results differ from the expected ones",
                cmp.mismatches.len(),
                cmp.judged
            );
        }
    }
    Ok(())
}

fn print_tables(scenario: &Scenario, results: &Results, expected: Option<&Results>) {
    for (i, step) in results.steps.iter().enumerate() {
        let label = scenario.steps.get(i).map(|s| s.label()).unwrap_or("?");
        for probe in &step.probes {
            let exp = scenario::expected_probe(expected, i, &probe.probe());
            println!("step {} ({label})  {}", i + 1, probe.probe());
            println!("{}", scenario::render_matrix(probe, exp));
        }
    }
    println!("legend: . connected  X blocked  - not judged  ! differs from expected");
}

async fn cmd_up(args: UpArgs) -> anyhow::Result<()> {
    let scenario = match &args.scenario {
        Some(dir) => {
            Scenario::load(dir).with_context(|| format!("loading scenario {}", dir.display()))?
        }
        None => demo_scenario(),
    };
    let agent_args: Vec<&str> = args.agent_args.iter().map(String::as_str).collect();
    let state = up(&scenario, &args.name, &agent_args, &args.nodes)
        .await?
        .detach()?;
    print_up_summary(&state);
    Ok(())
}

fn cmd_status(args: StatusArgs) -> anyhow::Result<()> {
    let name = resolve_name(args.name);
    let state = LabState::load(&name)?;
    // (node, agent alive, agent status) for every node; today's layout has one.
    let agents: Vec<(String, bool, Option<AgentStatus>, std::path::PathBuf)> =
        if state.nodes.is_empty() {
            vec![(
                crate::placement::DEFAULT_NODE.to_owned(),
                state.agent_pid.is_some_and(instance::pid_alive),
                AgentStatus::read(&state.paths.status_file),
                state.paths.agent_log.clone(),
            )]
        } else {
            state
                .nodes
                .iter()
                .map(|n| {
                    (
                        n.spec.name.clone(),
                        n.agent_pid.is_some_and(instance::pid_alive),
                        AgentStatus::read(&n.paths.status_file),
                        n.paths.agent_log.clone(),
                    )
                })
                .collect()
        };
    if args.json {
        let nodes: Vec<serde_json::Value> = agents
            .iter()
            .map(|(node, alive, st, _)| {
                serde_json::json!({"node": node, "agent_alive": alive, "agent_status": st})
            })
            .collect();
        let out = serde_json::json!({
            "lab": state,
            "agent_alive": agents.first().map(|a| a.1),
            "agent_status": agents.first().map(|a| &a.2),
            "agents": nodes,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("json values serialize")
        );
        return Ok(());
    }
    println!(
        "lab {name:?} ({} node(s), state {}{})",
        agents.len(),
        state.paths.state_dir.display(),
        if state.kube_proxy {
            ", kube-proxy on every node"
        } else {
            ""
        }
    );
    print_nodes(&state);
    print_pods(&state);
    for (node, alive, st, log) in &agents {
        if state.nodes.is_empty() {
            match state.agent_pid {
                Some(pid) => println!(
                    "agent: pid {pid} ({})",
                    if *alive { "running" } else { "NOT running" }
                ),
                None => println!("agent: none"),
            }
        }
        if let Some(st) = st {
            let attached = st.endpoints.values().filter(|e| e.attached).count();
            println!(
                "node {node}: agent status: digest {}, {attached}/{} endpoints attached, {} pending, {} errors",
                st.digest.as_deref().unwrap_or("-"),
                st.endpoints.len(),
                st.pending.len(),
                st.errors.len()
            );
            for err in &st.errors {
                println!("  error: {err}");
            }
        }
        if !alive {
            println!(
                "node {node}: agent.log tail:\n{}",
                instance::log_tail(log, 10)
            );
        }
    }
    Ok(())
}

fn cmd_exec(args: ExecArgs) -> anyhow::Result<()> {
    let name = resolve_name(args.name);
    let state = LabState::load(&name)?;
    let pod = state.pod(&args.pod).with_context(|| {
        let known: Vec<String> = state.pods.iter().map(|p| p.key()).collect();
        format!(
            "no pod {:?} in lab {name:?} (pods: {})",
            args.pod,
            known.join(", ")
        )
    })?;
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &pod.netns])
        .args(&args.command)
        .status()
        .with_context(|| {
            format!(
                "running ip netns exec {} {}",
                pod.netns,
                args.command.join(" ")
            )
        })?;
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(1));
    std::process::exit(code);
}

async fn cmd_probe(args: ProbeArgs) -> anyhow::Result<()> {
    let name = resolve_name(args.name);
    let state = LabState::load(&name)?;
    let path = args
        .probes
        .or_else(|| state.probes_file.clone())
        .context("no probes file given and the lab has none recorded")?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let probes = scenario::parse_probes(&path, &text)?;
    let topo = Topology::attach(&name, &state.layout(), &state.pods)?;
    let pods = topo.pods();
    // The Services as the agents and kube-proxy last saw them (or the API holds them).
    let cluster = match &state.kubeconfig {
        Some(kubeconfig) => crate::api_cli::cluster_from_api(kubeconfig).await?,
        None => {
            let manifest = state.paths.manifests_dir.join("cluster.yaml");
            let cluster_yaml = std::fs::read_to_string(&manifest).unwrap_or_default();
            cluster_from_yaml(&[&cluster_yaml]).0
        }
    };
    let memory = ClusterIpMemory(state.cluster_ips.clone());
    let results = measure_step(
        &pods,
        &probes,
        &cluster,
        &memory,
        Duration::from_millis(args.timeout_ms),
    )
    .await?;
    let results = Results {
        steps: vec![StepResult { probes: results }],
    };
    if args.json {
        println!("{}", results.to_json_pretty());
    } else {
        for probe in &results.steps[0].probes {
            println!("{}", probe.probe());
            println!("{}", scenario::render_matrix(probe, None));
        }
        println!("legend: . connected  X blocked  - not judged");
    }
    Ok(())
}

fn cmd_down(args: DownArgs) -> anyhow::Result<()> {
    if args.all {
        let names = instance::all_instances();
        for name in &names {
            instance::down_instance(name);
            println!("removed lab {name:?}");
        }
        for ns in iproute::list_netns(iproute::NETNS_PREFIX) {
            iproute::delete_netns(&ns);
            println!("removed network namespace {ns}");
        }
        if names.is_empty() {
            println!("no lab instances found");
        }
        return Ok(());
    }
    let name = resolve_name(args.name);
    if instance::down_instance(&name) {
        println!("removed lab {name:?}");
    } else {
        println!("no lab {name:?} found");
    }
    Ok(())
}
