//! A lab instance: its topology, its agent process and its state directory
//! (`/run/enforcer-lab/<name>/`), plus tearing down instances left running by `lab up`.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::scenario::{PodSpec, Step};
use super::topology::{self, PodState, Topology};

/// Where lab instances keep their state.
pub const STATE_ROOT: &str = "/run/enforcer-lab";
/// bpffs directory under which each instance's agent pins its objects.
pub const PIN_ROOT: &str = "/sys/fs/bpf/enforcer";
/// How long to wait for the agent to take a new state into account.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(20);
const APPLY_POLL: Duration = Duration::from_millis(50);

/// Files and folders of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPaths {
    pub state_dir: PathBuf,
    pub state_file: PathBuf,
    pub manifests_dir: PathBuf,
    pub status_file: PathBuf,
    pub flow_log: PathBuf,
    pub agent_log: PathBuf,
    pub pin_dir: PathBuf,
}

impl LabPaths {
    pub fn new(instance: &str) -> Self {
        let state_dir = Path::new(STATE_ROOT).join(instance);
        Self {
            state_file: state_dir.join("state.json"),
            manifests_dir: state_dir.join("manifests"),
            status_file: state_dir.join("status.json"),
            flow_log: state_dir.join("flows.jsonl"),
            agent_log: state_dir.join("agent.log"),
            pin_dir: Path::new(PIN_ROOT).join(instance),
            state_dir,
        }
    }
}

/// `state.json`: everything `lab status/exec/probe/down` need to find a running instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub node_netns: String,
    pub agent_pid: Option<u32>,
    pub paths: LabPaths,
    pub pods: Vec<PodState>,
    /// A probes file for `lab probe` (the scenario's first step, or the demo's).
    #[serde(default)]
    pub probes_file: Option<PathBuf>,
}

impl LabState {
    pub fn load(instance: &str) -> anyhow::Result<Self> {
        let path = LabPaths::new(instance).state_file;
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is lab instance {instance:?} up? see `enforcer lab status`)",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn pod(&self, key: &str) -> Option<&PodState> {
        self.pods.iter().find(|p| p.key() == key)
    }
}

/// What `status.json` (written by the agent after each apply) holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentStatus {
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default)]
    pub endpoints: std::collections::BTreeMap<String, EndpointStatus>,
    #[serde(default)]
    pub pending: Vec<String>,
    #[serde(default)]
    pub errors: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EndpointStatus {
    #[serde(default)]
    pub ifname: Option<String>,
    #[serde(default)]
    pub attached: bool,
}

/// A running lab; everything it created is removed on drop unless [`Lab::detach`]ed.
#[derive(Debug)]
pub struct Lab {
    pub name: String,
    pub paths: LabPaths,
    pub topo: Topology,
    agent: Option<Child>,
    probes_file: Option<PathBuf>,
    armed: bool,
}

impl Lab {
    /// Creates the state directory and the node namespace.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        validate_name(name)?;
        let paths = LabPaths::new(name);
        if paths.state_dir.exists() {
            bail!(
                "lab instance {name:?} already exists ({}); remove it with `enforcer lab down --name {name}`",
                paths.state_dir.display()
            );
        }
        std::fs::create_dir_all(&paths.manifests_dir)
            .with_context(|| format!("creating {}", paths.manifests_dir.display()))?;
        let topo = match Topology::create(name) {
            Ok(t) => t,
            Err(err) => {
                let _ = std::fs::remove_dir_all(&paths.state_dir);
                return Err(err);
            }
        };
        Ok(Self {
            name: name.to_owned(),
            paths,
            topo,
            agent: None,
            probes_file: None,
            armed: true,
        })
    }

    pub fn state(&self) -> LabState {
        LabState {
            name: self.name.clone(),
            node_netns: self.topo.node_netns().to_owned(),
            agent_pid: self.agent.as_ref().map(|c| c.id()),
            paths: self.paths.clone(),
            pods: self.topo.pod_states(),
            probes_file: self.probes_file.clone(),
        }
    }

    /// Writes `state.json` (atomically).
    pub fn save_state(&self) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(&self.state()).expect("state serializes");
        write_atomic(&self.paths.state_file, json.as_bytes())
    }

    pub fn set_probes_file(&mut self, contents: &str) -> anyhow::Result<()> {
        let path = self.paths.state_dir.join("probes.yaml");
        write_atomic(&path, contents.as_bytes())?;
        self.probes_file = Some(path);
        Ok(())
    }

    /// Builds the pods of a step (keeping pods that already exist).
    pub fn sync_pods(&mut self, pods: &[PodSpec]) -> anyhow::Result<()> {
        self.topo.sync_pods(pods)?;
        self.save_state()
    }

    /// Starts the agent (this binary's `agent` subcommand) for this instance. With `detach`
    /// it runs in its own session so it outlives this process.
    pub fn start_agent(&mut self, detach: bool, extra_args: &[&str]) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("finding the enforcer binary")?;
        let log = std::fs::File::create(&self.paths.agent_log)
            .with_context(|| format!("creating {}", self.paths.agent_log.display()))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("agent")
            .arg("--manifests")
            .arg(&self.paths.manifests_dir)
            .args(["--node", "lab", "--netns"])
            .arg(crate::netns::named_path(self.topo.node_netns()))
            .arg("--pin-dir")
            .arg(&self.paths.pin_dir)
            .arg("--status-file")
            .arg(&self.paths.status_file)
            .arg("--flow-log")
            .arg(&self.paths.flow_log)
            .arg("--flow-socket")
            .arg(self.paths.state_dir.join("flows.sock"))
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if detach {
            use std::os::unix::process::CommandExt;
            // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the agent ({} agent ...)", exe.display()))?;
        self.agent = Some(child);
        self.save_state()
    }

    /// Writes a step's manifests and waits until the agent reports it applied them.
    pub async fn apply(&mut self, step: &Step) -> anyhow::Result<AgentStatus> {
        write_atomic(
            &self.paths.manifests_dir.join("cluster.yaml"),
            step.cluster_yaml.as_bytes(),
        )?;
        write_atomic(
            &self.paths.manifests_dir.join("policies.yaml"),
            step.policies_yaml.as_bytes(),
        )?;
        let digest = crate::source::manifests::digest_dir(&self.paths.manifests_dir)
            .with_context(|| format!("digesting {}", self.paths.manifests_dir.display()))?;
        let deadline = tokio::time::Instant::now() + APPLY_TIMEOUT;
        let mut last: Option<AgentStatus> = None;
        loop {
            if let Some(child) = self.agent.as_mut() {
                if let Some(exit) = child.try_wait().context("checking the agent process")? {
                    bail!(
                        "the agent exited ({exit}) before applying step {}; agent.log tail:\n{}",
                        step.label(),
                        log_tail(&self.paths.agent_log, 40)
                    );
                }
            }
            if let Ok(text) = std::fs::read_to_string(&self.paths.status_file) {
                if let Ok(status) = serde_json::from_str::<AgentStatus>(&text) {
                    if status.digest.as_deref() == Some(digest.as_str())
                        && status.pending.is_empty()
                    {
                        self.check_endpoints(&status);
                        return Ok(status);
                    }
                    last = Some(status);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let status = last
                    .map(|s| serde_json::to_string(&s).expect("status serializes"))
                    .unwrap_or_else(|| format!("no readable {}", self.paths.status_file.display()));
                bail!(
                    "the agent did not apply step {} within {}s (waiting for digest {digest} and no pending endpoints)\nlast status: {status}\nagent.log tail:\n{}",
                    step.label(),
                    APPLY_TIMEOUT.as_secs(),
                    log_tail(&self.paths.agent_log, 40)
                );
            }
            tokio::time::sleep(APPLY_POLL).await;
        }
    }

    /// Warns about pods the agent does not report as attached (their results would show
    /// unenforced traffic).
    fn check_endpoints(&self, status: &AgentStatus) {
        let (mut detached, mut unlisted) = (Vec::new(), Vec::new());
        for pod in self.topo.pod_states() {
            match status.endpoints.get(&pod.key()) {
                Some(ep) if ep.attached => {}
                Some(_) => detached.push(pod.key()),
                None => unlisted.push(pod.key()),
            }
        }
        if !detached.is_empty() {
            eprintln!(
                "warning: the agent reports these pods as not attached: {}",
                detached.join(", ")
            );
        }
        if !unlisted.is_empty() {
            eprintln!(
                "warning: the agent's status does not list these pods: {}",
                unlisted.join(", ")
            );
        }
        for err in &status.errors {
            eprintln!("warning: agent reports: {err}");
        }
    }

    /// The agent's pid, if this lab started one.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(|c| c.id())
    }

    /// Leaves the instance running after this process exits (`lab up`).
    pub fn detach(mut self) -> anyhow::Result<LabState> {
        self.save_state()?;
        let state = self.state();
        self.armed = false;
        // Dropping the Child neither kills nor waits; the agent is re-parented to init.
        self.agent = None;
        self.topo.detach();
        Ok(state)
    }

    /// Stops the agent and removes everything now.
    pub fn teardown(&mut self) {
        if let Some(mut child) = self.agent.take() {
            stop_child(&mut child);
        }
        self.topo.teardown();
        remove_pins(&self.paths.pin_dir);
        let _ = std::fs::remove_dir_all(&self.paths.state_dir);
        self.armed = false;
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.armed {
            self.teardown();
        }
    }
}

fn validate_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 24
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        bail!("invalid lab name {name:?}: use 1-24 characters [A-Za-z0-9_-]");
    }
    Ok(())
}

/// Writes `path` via a temporary name in the same directory (not ending in `.yaml`) and a
/// rename, so readers never see half a file.
pub fn write_atomic(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().expect("state files live in a directory");
    let name = path
        .file_name()
        .expect("state files have a name")
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// The last `lines` lines of a log file (for error messages).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return format!("  (cannot read {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let mut text = String::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_string(&mut text).is_err() {
        return format!("  (cannot read {})", path.display());
    }
    let all: Vec<&str> = text.lines().collect();
    let tail = &all[all.len().saturating_sub(lines)..];
    if tail.is_empty() {
        return "  (empty)".into();
    }
    tail.iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = child.id();
    terminate_pid(pid);
    let _ = child.wait();
}

/// SIGTERM, then SIGKILL after 3 s.
fn terminate_pid(pid: u32) {
    let pid = pid as libc::pid_t;
    // SAFETY: plain syscall with integer arguments.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    for _ in 0..60 {
        if !pid_alive(pid as u32) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    for _ in 0..40 {
        if !pid_alive(pid as u32) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
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

/// Whether `pid` is this instance's agent (guards against a recycled pid).
pub fn is_lab_agent(pid: u32, paths: &LabPaths) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&cmdline);
    cmdline.contains("agent") && cmdline.contains(&*paths.status_file.to_string_lossy())
}

fn remove_pins(pin_dir: &Path) {
    if pin_dir.exists() {
        if let Err(err) = std::fs::remove_dir_all(pin_dir) {
            eprintln!("warning: removing {}: {err}", pin_dir.display());
        }
    }
}

/// Removes an instance left running (`lab down`): agent, namespaces, pins, state directory.
/// Returns whether anything was found.
pub fn down_instance(name: &str) -> bool {
    let paths = LabPaths::new(name);
    let state = LabState::load(name).ok();
    let mut found = false;
    if let Some(pid) = state.as_ref().and_then(|s| s.agent_pid) {
        found = true;
        if pid_alive(pid) && is_lab_agent(pid, &paths) {
            terminate_pid(pid);
        }
    }
    let mut names: Vec<String> = state
        .iter()
        .flat_map(|s| s.pods.iter().map(|p| p.netns.clone()))
        .collect();
    names.extend(topology::list_netns(&format!(
        "{}{name}-",
        topology::NETNS_PREFIX
    )));
    names.sort();
    names.dedup();
    // Pods first: their veth peers live in the node namespace.
    let node = topology::node_netns_name(name);
    for ns in names.iter().filter(|n| **n != node) {
        found = true;
        topology::delete_netns(ns);
    }
    if crate::netns::named_path(&node).exists() {
        found = true;
        topology::delete_netns(&node);
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

/// Every instance name known from state directories or `enf-*` namespaces.
pub fn all_instances() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(STATE_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for ns in topology::list_netns(topology::NETNS_PREFIX) {
        let rest = &ns[topology::NETNS_PREFIX.len()..];
        if let Some(inst) = rest.strip_suffix("-node") {
            names.push(inst.to_owned());
        } else if let Some((inst, _)) = rest.rsplit_once("-p") {
            names.push(inst.to_owned());
        }
    }
    names.sort();
    names.dedup();
    names
}
