//! `enforcer lab ...`: arguments and command implementations.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use crate::instance::{self, AgentStatus, Lab, LabState};
use crate::placement::Placement;
use crate::probe::measure_step;
use crate::scenario::{self, compare, Probe, Results, Scenario, StepResult};
use crate::services::{cluster_from_yaml, scenario_has_services, ClusterIpMemory};
use crate::topology::{self, Topology};

/// Subcommands of `enforcer lab`.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Run a scenario (docs/scenario-format.md) against the agent in network namespaces; compare
    /// with expected.json.
    Run(RunArgs),
    /// Bring up a scenario's first step (or the built-in demo) with its agent and leave it
    /// running; with --kubeconfig, a lab that follows a Kubernetes API's pods and Services.
    Up(UpArgs),
    /// Wait until a lab on an API (`up --kubeconfig`) has applied the API's current state.
    Wait(WaitArgs),
    /// Plays kubelet and kube-proxy for a lab on an API (started by `up --kubeconfig`).
    #[command(hide = true)]
    Controller(ControllerArgs),
    /// Show the nodes, pods, interfaces, addresses and agents of a running lab.
    Status(StatusArgs),
    /// Run a command inside a pod's network namespace of a running lab.
    Exec(ExecArgs),
    /// Probe every pod pair of a running lab and print the matrices.
    Probe(ProbeArgs),
    /// Remove a running lab (agent, namespaces, pins, state).
    Down(DownArgs),
    /// Run the built-in demo: traffic every 2 s and the agent's flow log, until Ctrl-C.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Scenario directory.
    pub scenario: PathBuf,
    /// Print the results as JSON (expected.json format) on stdout.
    #[arg(long)]
    pub json: bool,
    /// Compare with this file instead of SCENARIO/expected.json.
    #[arg(long, value_name = "FILE")]
    pub expected: Option<PathBuf>,
    /// Leave the lab (and its agent) running at the end; remove it later with `lab down`.
    #[arg(long)]
    pub keep: bool,
    /// Instance name (default: r<pid>).
    #[arg(long)]
    pub name: Option<String>,
    /// Time a probe may take before it counts as failed.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Spread the pods that name no node (spec.nodeName) over these nodes, e.g.
    /// `--nodes node-a,node-b`: one node namespace and agent each, the same pod on the same
    /// node in every step.
    #[arg(long, value_delimiter = ',', value_name = "NODE,...")]
    pub nodes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Scenario directory (default: the built-in demo).
    pub scenario: Option<PathBuf>,
    /// Instance name.
    #[arg(long, default_value = "demo")]
    pub name: String,
    /// An extra argument for the lab's agent (repeatable), e.g.
    /// `--agent-arg=--alerts-config=alerts.yaml`.
    #[arg(long = "agent-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
    /// Spread the pods that name no node over these nodes (as `lab run --nodes`); with
    /// --kubeconfig, the API's nodes this lab plays.
    #[arg(long, value_delimiter = ',', value_name = "NODE,...")]
    pub nodes: Vec<String>,
    /// Take the cluster from this Kubernetes API instead of a scenario: for each of --nodes,
    /// a node namespace and an agent watching the API (`--node`); the API's pods scheduled to
    /// those nodes get network namespaces with their `status.podIPs`, serving their container
    /// ports, and its Services get kube-proxy's NAT. Follow changes with `lab wait`.
    #[arg(long, value_name = "FILE", conflicts_with = "scenario")]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Instance name (default: the only running instance, else `demo`).
    #[arg(long)]
    pub name: Option<String>,
    /// Give up (exit status 1, saying what is missing) after this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    #[arg(long)]
    pub name: String,
    /// Extra arguments for the agents.
    #[arg(long = "agent-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Instance name (default: the only running instance, else `demo`).
    #[arg(long)]
    pub name: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Pod as NAMESPACE/NAME.
    pub pod: String,
    /// Instance name (default: the only running instance, else `demo`).
    #[arg(long)]
    pub name: Option<String>,
    /// Command and arguments (after `--`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// probes.yaml (default: the probes of the scenario/demo the lab was brought up with).
    pub probes: Option<PathBuf>,
    /// Instance name (default: the only running instance, else `demo`).
    #[arg(long)]
    pub name: Option<String>,
    /// Print JSON (expected.json format, one step).
    #[arg(long)]
    pub json: bool,
    /// Time a probe may take before it counts as failed.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Instance name (default: the only running instance, else `demo`).
    #[arg(long, conflicts_with = "all")]
    pub name: Option<String>,
    /// Remove every lab instance and every enf-* network namespace.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Instance name.
    #[arg(long, default_value = "demo")]
    pub name: String,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
}

/// The built-in demo scenario.
pub const DEMO_CLUSTER: &str = include_str!("demo/cluster.yaml");
pub const DEMO_POLICIES: &str = include_str!("demo/policies.yaml");
pub const DEMO_PROBES: &str = include_str!("demo/probes.yaml");

pub fn demo_scenario() -> Scenario {
    Scenario::from_strs("demo", DEMO_CLUSTER, DEMO_POLICIES, DEMO_PROBES)
        .expect("the built-in demo scenario is valid (checked by a unit test)")
}

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

/// Runs `fut`, abandoning it (which drops, and so removes, any lab it owns) on SIGINT/SIGTERM.
pub(crate) async fn interruptible<T>(
    fut: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        res = fut => res,
        _ = tokio::signal::ctrl_c() => bail!("interrupted (SIGINT); lab resources removed"),
        _ = term.recv() => bail!("terminated (SIGTERM); lab resources removed"),
    }
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

fn probes_yaml(probes: &[Probe]) -> String {
    // Serialized as written: Service probes keep their `service` key.
    serde_yaml::to_string(probes).expect("probes serialize")
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

/// Builds the first step of `scenario` with detached agents and waits until they applied it.
pub(crate) async fn up(
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

pub(crate) fn print_up_summary(state: &LabState) {
    let name = &state.name;
    if state.nodes.len() > 1 {
        println!("lab {name:?} is up ({} nodes)", state.nodes.len());
    } else {
        println!("lab {name:?} is up (node namespace {})", state.node_netns);
    }
    print_nodes(state);
    print_pods(state);
    match state.agent_pid {
        Some(pid) if state.nodes.len() <= 1 => {
            println!("agent: pid {pid}, log {}", state.paths.agent_log.display())
        }
        Some(_) => {}
        None => println!("agent: not started"),
    }
    match &state.kubeconfig {
        Some(kubeconfig) => println!(
            "cluster:   the API of {} (change it, then `enforcer lab wait --name {name}`)",
            kubeconfig.display()
        ),
        None => println!(
            "manifests: {} (edit and save: the agents re-apply)",
            state.paths.manifests_dir.display()
        ),
    }
    if state.nodes.len() <= 1 {
        println!("flow log:  {}", state.paths.flow_log.display());
    }
    println!();
    println!("try:");
    if let Some(pod) = state.pods.first() {
        let other = state.pods.get(1).unwrap_or(pod);
        println!(
            "  enforcer lab exec {} --name {name} -- ping -c1 {}",
            pod.key(),
            other.ipv4
        );
    }
    println!("  enforcer lab probe --name {name}");
    println!("  enforcer lab status --name {name}");
    println!("  enforcer flows --lab {name} --follow");
    println!("  enforcer lab down --name {name}");
}

/// The nodes with their addresses and agents (a single-node lab shows its one node).
fn print_nodes(state: &LabState) {
    if state.nodes.is_empty() {
        return;
    }
    let width = state
        .nodes
        .iter()
        .map(|n| n.spec.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "  {:width$}  {:24}  {:11}  {:16}  AGENT",
        "NODE", "NETNS", "IPv4", "IPv6"
    );
    for n in &state.nodes {
        let agent = match n.agent_pid {
            Some(pid) if instance::pid_alive(pid) => {
                format!("pid {pid} (running), log {}", n.paths.agent_log.display())
            }
            Some(pid) => format!(
                "pid {pid} (NOT running), log {}",
                n.paths.agent_log.display()
            ),
            None => "none".into(),
        };
        println!(
            "  {:width$}  {:24}  {:11}  {:16}  {agent}",
            n.spec.name,
            n.spec.netns,
            n.spec.ipv4.to_string(),
            n.spec.ipv6.to_string()
        );
    }
}

fn print_pods(state: &LabState) {
    let width = state
        .pods
        .iter()
        .map(|p| p.key().len())
        .max()
        .unwrap_or(3)
        .max(3);
    let node_width = state
        .pods
        .iter()
        .map(|p| p.node.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "  {:width$}  {:node_width$}  {:16}  {:7}  {:15}  IPv6",
        "POD", "NODE", "NETNS", "IFACE", "IPv4"
    );
    for p in &state.pods {
        let v6 = p.ipv6.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "  {:width$}  {:node_width$}  {:16}  {:7}  {:15}  {v6}",
            p.key(),
            p.node,
            p.netns,
            p.ifname,
            p.ipv4.to_string()
        );
    }
}

/// `--name` when given; else the only instance there is; else `demo`.
pub(crate) fn resolve_name(name: Option<String>) -> String {
    name.unwrap_or_else(|| {
        let all = instance::all_instances();
        if all.len() == 1 {
            all[0].clone()
        } else {
            "demo".to_owned()
        }
    })
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
        for ns in topology::list_netns(topology::NETNS_PREFIX) {
            topology::delete_netns(&ns);
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(subcommand)]
        cmd: LabCommand,
    }

    fn parse(args: &[&str]) -> LabCommand {
        Wrapper::try_parse_from(std::iter::once("lab").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .cmd
    }

    #[test]
    fn parses_every_subcommand() {
        let LabCommand::Run(run) = parse(&["run", "sc", "--json", "--keep", "--timeout-ms", "500"])
        else {
            panic!("not run")
        };
        assert_eq!(
            (run.scenario, run.json, run.keep, run.timeout_ms),
            ("sc".into(), true, true, 500)
        );
        let LabCommand::Exec(exec) =
            parse(&["exec", "x/a", "--name", "n", "--", "ip", "-br", "addr"])
        else {
            panic!("not exec")
        };
        assert_eq!(exec.pod, "x/a");
        assert_eq!(exec.name.as_deref(), Some("n"));
        assert_eq!(exec.command, ["ip", "-br", "addr"]);
        let LabCommand::Up(up) = parse(&["up"]) else {
            panic!("not up")
        };
        assert_eq!((up.scenario, up.name.as_str()), (None, "demo"));
        assert!(matches!(
            parse(&["down", "--all"]),
            LabCommand::Down(DownArgs { all: true, .. })
        ));
        assert!(matches!(
            parse(&["probe", "p.yaml", "--json"]),
            LabCommand::Probe(ProbeArgs { json: true, .. })
        ));
        assert!(matches!(parse(&["status"]), LabCommand::Status(_)));
        assert!(matches!(
            parse(&["demo", "--duration", "5"]),
            LabCommand::Demo(DemoArgs {
                duration: Some(5),
                ..
            })
        ));
        assert!(Wrapper::try_parse_from(["lab", "down", "--all", "--name", "x"]).is_err());
    }
}
