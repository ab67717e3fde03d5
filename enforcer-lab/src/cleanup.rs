//! Stopping agents and removing instances left running by `lab up` (`lab down`), including
//! leftovers of a crashed run found only by their namespace names.

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use crate::iproute::{delete_netns, list_netns, NETNS_PREFIX};
use crate::nodes::{fabric_netns_name, node_netns_name};
use crate::state::{LabPaths, LabState, STATE_ROOT};

pub(crate) fn stop_children<'a>(children: impl IntoIterator<Item = &'a mut Child>) {
    let mut running: Vec<&mut Child> = children
        .into_iter()
        .filter_map(|c| (!matches!(c.try_wait(), Ok(Some(_)))).then_some(c))
        .collect();
    terminate_pids(&running.iter().map(|c| c.id()).collect::<Vec<_>>());
    for child in &mut running {
        let _ = child.wait();
    }
}

/// SIGTERM to all, then SIGKILL to those still there after 3 s (all at once: several agents
/// stop in the time of one).
pub(crate) fn terminate_pids(pids: &[u32]) {
    let signal_all = |sig| {
        for pid in pids {
            // SAFETY: plain syscall with integer arguments.
            unsafe { libc::kill(*pid as libc::pid_t, sig) };
        }
    };
    let wait_all = |rounds| {
        for _ in 0..rounds {
            if !pids.iter().any(|p| pid_alive(*p)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    };
    signal_all(libc::SIGTERM);
    if !wait_all(60) {
        signal_all(libc::SIGKILL);
        wait_all(40);
    }
}

/// Whether a process exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 (after the parenthesised command name) is the state; Z = zombie.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Whether `pid` is the agent writing `status_file` (guards against a recycled pid).
pub fn is_lab_agent(pid: u32, status_file: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&cmdline);
    cmdline.contains("agent") && cmdline.contains(&*status_file.to_string_lossy())
}

/// Live `enforcer lab controller --name <name>` processes (a lab on an API). Stopped before
/// the agents, so that it does not build anything again meanwhile.
fn controllers_of(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.windows(2)
                .any(|w| w == [b"lab".as_slice(), b"controller"])
                && args
                    .windows(2)
                    .any(|w| w[0] == b"--name" && w[1] == name.as_bytes())
        })
        .filter(|pid| pid_alive(*pid))
        .collect()
}

/// Live `enforcer agent` processes whose `--status-file` lies under `dir`.
fn agents_writing_under(dir: &Path) -> Vec<u32> {
    let prefix = format!("{}/", dir.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.iter().any(|a| *a == b"agent")
                && args
                    .windows(2)
                    .any(|w| w[0] == b"--status-file" && w[1].starts_with(prefix.as_bytes()))
        })
        .filter(|pid| pid_alive(*pid))
        .collect()
}

pub(crate) fn remove_pins(pin_dir: &Path) {
    if pin_dir.exists() {
        if let Err(err) = std::fs::remove_dir_all(pin_dir) {
            eprintln!("warning: removing {}: {err}", pin_dir.display());
        }
    }
}

/// Removes an instance left running (`lab down`): every node's agent, the pod, node and
/// fabric namespaces (in that order: pods' veth peers live in the node namespaces, nodes'
/// uplinks in the fabric), every pin, the state directory. Returns whether anything was found.
pub fn down_instance(name: &str) -> bool {
    let paths = LabPaths::new(name);
    let state = LabState::load(name).ok();
    let mut found = false;
    let controllers = controllers_of(name);
    if !controllers.is_empty() {
        found = true;
        terminate_pids(&controllers);
    }
    // Read after the controller stopped: it may have started agents since.
    let state = LabState::load(name).ok().or(state);
    let mut agents: Vec<(u32, &Path)> = Vec::new();
    if let Some(s) = &state {
        if let Some(pid) = s.agent_pid {
            let status = s.nodes.first().map(|n| n.paths.status_file.as_path());
            agents.push((pid, status.unwrap_or(&s.paths.status_file)));
        }
        for n in &s.nodes {
            if let Some(pid) = n.agent_pid {
                agents.push((pid, &n.paths.status_file));
            }
        }
    }
    let mut pids: Vec<u32> = agents
        .iter()
        .filter(|(pid, status)| pid_alive(*pid) && is_lab_agent(*pid, status))
        .map(|(pid, _)| *pid)
        .collect();
    // Agents whose state.json is gone (a crashed run) are still known by their status file,
    // which lies in this instance's state directory.
    pids.extend(agents_writing_under(&paths.state_dir));
    found |= !agents.is_empty() || !pids.is_empty();
    pids.sort();
    pids.dedup();
    terminate_pids(&pids);

    let mut names: Vec<String> = state
        .iter()
        .flat_map(|s| {
            s.pods
                .iter()
                .map(|p| p.netns.clone())
                .chain(s.nodes.iter().map(|n| n.spec.netns.clone()))
                .chain(s.fabric.clone())
        })
        .collect();
    names.extend(list_netns(&format!("{NETNS_PREFIX}{name}-")));
    names.sort();
    names.dedup();
    let node = node_netns_name(name);
    let is_node = |n: &str| n == node || n.starts_with(&format!("{node}."));
    let fabric = fabric_netns_name(name);
    let pods = names.iter().filter(|n| !is_node(n) && **n != fabric);
    let nodes = names.iter().filter(|n| is_node(n));
    for ns in pods
        .chain(nodes)
        .chain(names.iter().filter(|n| **n == fabric))
    {
        if enforcer_agent::netns::named_path(ns).exists() {
            found = true;
            delete_netns(ns);
        }
    }
    if paths.pin_dir.exists() {
        found = true;
        remove_pins(&paths.pin_dir);
    }
    if paths.state_dir.exists() {
        found = true;
        let _ = std::fs::remove_dir_all(&paths.state_dir);
    }
    found
}

/// The instance a lab namespace belongs to: `enf-<inst>-node`, `enf-<inst>-node.<node>`,
/// `enf-<inst>-fabric`, `enf-<inst>-p<N>`.
pub fn instance_of_netns(ns: &str) -> Option<&str> {
    let rest = ns.strip_prefix(NETNS_PREFIX)?;
    // Node names may contain "-p", so the node forms are recognised first.
    if let Some((head, _node)) = rest.rsplit_once('.') {
        return head.strip_suffix("-node");
    }
    if let Some(inst) = rest.strip_suffix("-node") {
        return Some(inst);
    }
    if let Some(inst) = rest.strip_suffix("-fabric") {
        return Some(inst);
    }
    let (inst, index) = rest.rsplit_once("-p")?;
    index.chars().all(|c| c.is_ascii_digit()).then_some(inst)
}

/// Every instance name known from state directories or `enf-*` namespaces.
pub fn all_instances() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(STATE_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for ns in list_netns(NETNS_PREFIX) {
        if let Some(inst) = instance_of_netns(&ns) {
            names.push(inst.to_owned());
        }
    }
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_split_back_into_instances() {
        assert_eq!(instance_of_netns("enf-demo-node"), Some("demo"));
        assert_eq!(instance_of_netns("enf-r12-node.node-prod"), Some("r12"));
        assert_eq!(instance_of_netns("enf-my-node-node.lab"), Some("my-node"));
        assert_eq!(instance_of_netns("enf-r12-fabric"), Some("r12"));
        assert_eq!(instance_of_netns("enf-a-b-p17"), Some("a-b"));
        assert_eq!(instance_of_netns("enf-x-pod"), None);
        assert_eq!(instance_of_netns("other"), None);
    }
}
