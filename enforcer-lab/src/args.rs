//! The arguments of `enforcer lab ...`: [`LabCommand`] and one struct per subcommand, parsed by
//! clap. The commands are in [`crate::cli`] (a lab on an API's in [`crate::api_cli`], the demo in
//! [`crate::demo`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

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

/// The lab's flags of `enforcer flows` (flattened next to the agent library's
/// `enforcer_agent::flows::client::FlowsArgs` by the binary's `lab` feature): ask a lab's
/// agents instead of the local one. [`crate::cli::flow_sockets`] resolves them to sockets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct LabFlowsArgs {
    /// The flows of a lab (`enforcer lab`): every node's agent, merged.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["socket", "file"])]
    pub lab: Option<String>,
    /// With --lab: only this node's agent.
    #[arg(long, value_name = "NODE", requires = "lab")]
    pub node: Option<String>,
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

    /// `enforcer flows` as the binary mounts it with the lab: the agent's flags and the lab's.
    #[derive(Debug, Parser)]
    struct Flows {
        #[command(flatten)]
        args: enforcer_agent::flows::client::FlowsArgs,
        #[command(flatten)]
        lab: LabFlowsArgs,
    }

    fn flows(args: &str) -> Result<Flows, clap::Error> {
        Flows::try_parse_from(std::iter::once("flows").chain(args.split_whitespace()))
    }

    #[test]
    fn flows_of_a_lab() {
        let f = flows("--lab demo --node node-a --verdict dropped -f").unwrap();
        assert_eq!(
            (f.lab.lab.as_deref(), f.lab.node.as_deref()),
            (Some("demo"), Some("node-a"))
        );
        assert!(f.args.follow);
        assert_eq!(f.args.filter.include.verdict.len(), 1);
        assert_eq!(flows("").unwrap().lab, LabFlowsArgs::default());
        // --not before --lab negates nothing: refused, not applied to the flag after it.
        let a = flows("--not --namespace x --lab demo").unwrap();
        assert_eq!(a.args.filter.exclude.namespace, ["x"]);
        for bad in [
            "--node node-a",
            "--lab demo --socket /tmp/x.sock",
            "--lab demo --file flows.jsonl",
            "--not --lab demo --namespace x",
        ] {
            assert!(flows(bad).is_err(), "`{bad}` should be rejected");
        }
    }
}
