//! What the commands print about a running lab: `lab up`'s summary, and the tables of its nodes
//! and pods (`lab up`, `lab status`).

use crate::instance::{self, LabState};

/// What `lab up` (and `lab run --keep`) print: the nodes, the pods, where the agents log, and
/// commands to try.
pub fn print_up_summary(state: &LabState) {
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
pub fn print_nodes(state: &LabState) {
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

pub fn print_pods(state: &LabState) {
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
