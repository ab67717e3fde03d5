//! The agent replaced under traffic on the demo lab, two ways:
//! - killed (SIGKILL) and started again 20 times;
//! - upgraded and downgraded between two builds whose kernel programs differ (the built-in
//!   object and enforcer-ebpf's `upgrade-variant` build, through `--bpf-object`), stopped the
//!   way a DaemonSet rollout stops it (SIGTERM).
//!
//! Either way: no allowed connection fails, no denied one passes, a long-lived connection
//! survives, and each new agent puts its own programs in force on the links in place (once it
//! has adopted them, the old agent's programs are unloaded: no link still runs them). Needs
//! root.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use enforcer_agent::netns::Netns;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

mod common;
use common::{lab_name, lab_up, root, state_json, Down};

#[path = "../../xtask/src/ebpf_build.rs"]
#[allow(dead_code, reason = "shared with xtask, which uses more of it")]
mod ebpf_build;

const KILLS: usize = 20;

/// prod/backend serves 8080 (echo); prod/frontend may reach it, dev/debug may not.
const BACKEND: &str = "10.244.1.11:8080";

fn pod_netns(state: &serde_json::Value, key: &str) -> Netns {
    let pod = state["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            format!(
                "{}/{}",
                p["namespace"].as_str().unwrap(),
                p["name"].as_str().unwrap()
            ) == key
        })
        .unwrap_or_else(|| panic!("no pod {key}"));
    Netns::open_named(pod["netns"].as_str().unwrap()).unwrap()
}

/// A TCP connection from inside `netns`.
fn connect(netns: &Netns, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let socket = netns
        .socket(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .map_err(std::io::Error::other)?;
    socket.connect_timeout(&SockAddr::from(to), timeout)?;
    Ok(socket.into())
}

/// The program with kernel id `id`, if it is loaded.
fn program(id: u64) -> Option<aya::programs::ProgramInfo> {
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| u64::from(p.id()) == id)
}

/// The names of the maps the program `id` uses.
fn map_names(id: u64) -> BTreeSet<String> {
    let ids = program(id)
        .and_then(|p| p.map_ids().ok().flatten())
        .unwrap_or_default();
    aya::maps::loaded_maps()
        .flatten()
        .filter(|m| ids.contains(&m.id()))
        .filter_map(|m| m.name_as_str().map(str::to_owned))
        .collect()
}

/// The ids of the programs the agent writing `status` put on the links.
fn program_ids(status: &Path) -> Vec<u64> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(status).unwrap()).unwrap();
    let ids: Vec<u64> = v["programs"]
        .as_object()
        .map(|m| m.values().filter_map(|x| x.as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(ids.len(), 2, "the status names both programs: {v}");
    ids
}

fn agent_cmdline(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn attached(status: &Path, pods: usize) -> bool {
    let Ok(text) = std::fs::read_to_string(status) else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    v["endpoints"]
        .as_object()
        .is_some_and(|e| e.values().filter(|x| x["attached"] == true).count() == pods)
}

/// The demo lab with a server on prod/backend and a long-lived connection to it.
struct Lab {
    _down: Down,
    state: serde_json::Value,
    pods: usize,
    status: PathBuf,
    agent_pid: u32,
    /// How the lab started its agent.
    cmdline: Vec<String>,
    long_lived: TcpStream,
}

impl Lab {
    fn up(tag: &str) -> Lab {
        let name = lab_name(tag);
        let down = lab_up(None, &name, &[]);
        let state = state_json(&name);
        let agent_pid = state["agent_pid"].as_u64().unwrap() as u32;
        serve_echo(&state);
        let backend: SocketAddr = BACKEND.parse().unwrap();
        let long_lived = connect(
            &pod_netns(&state, "prod/frontend"),
            backend,
            Duration::from_secs(2),
        )
        .expect("prod/frontend reaches prod/backend:8080");
        long_lived
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        assert!(
            connect(
                &pod_netns(&state, "dev/debug"),
                backend,
                Duration::from_millis(500)
            )
            .is_err(),
            "dev/debug is denied before the test starts"
        );
        Lab {
            _down: down,
            pods: state["pods"].as_array().unwrap().len(),
            status: PathBuf::from(state["paths"]["status_file"].as_str().unwrap()),
            cmdline: agent_cmdline(agent_pid),
            agent_pid,
            state,
            long_lived,
        }
    }

    /// Stops the agent with `signal` and waits until it is gone.
    fn stop_agent(&self, signal: i32) {
        let pid = self.agent_pid;
        // SAFETY: kill has no memory preconditions; the pid is the lab's agent.
        assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s.contains(") Z"))
        {
            assert!(Instant::now() < deadline, "the agent {pid} exited");
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = std::fs::remove_file(&self.status);
    }

    /// Starts an agent with the lab's command line and `extra` arguments, and waits until it
    /// has attached every pod.
    fn start_agent(&mut self, extra: &[&str], round: &str) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.state["paths"]["agent_log"].as_str().unwrap())
            .unwrap();
        let child = Command::new(&self.cmdline[0])
            .args(&self.cmdline[1..])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent_pid = child.id();
        // Left to the lab (`lab down` stops it); reaped by nobody here.
        std::mem::forget(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !attached(&self.status, self.pods) {
            assert!(
                Instant::now() < deadline,
                "{round}: the new agent attached every pod"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The old agent's programs `old` are gone: no link runs them any more (they were replaced
    /// in place by the new agent's, which are on the links); the long-lived connection still
    /// carries data.
    fn check_replaced(&mut self, old: &[u64], round: &str) {
        let new = program_ids(&self.status);
        assert!(
            new.iter().all(|id| !old.contains(id)),
            "{round}: new programs"
        );
        let deadline = Instant::now() + Duration::from_secs(3);
        while old.iter().any(|id| program(*id).is_some()) {
            assert!(
                Instant::now() < deadline,
                "{round}: the old agent's programs {old:?} are still loaded: a link still runs them"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.long_lived.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        self.long_lived
            .read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("{round}: the long-lived connection: {e}"));
        assert_eq!(&buf, b"ping");
    }
}

fn serve_echo(state: &serde_json::Value) {
    let backend: SocketAddr = BACKEND.parse().unwrap();
    let server = pod_netns(state, "prod/backend")
        .socket(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .unwrap();
    server.set_reuse_address(true).unwrap();
    server.bind(&SockAddr::from(backend)).unwrap();
    server.listen(128).unwrap();
    let listener: std::net::TcpListener = Socket::into(server);
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// New connections, over and over, from a pod that may reach the backend and one that may
/// not, counting wrong verdicts.
struct Prober {
    stop: Arc<AtomicBool>,
    tries: Arc<AtomicU64>,
    allowed_failed: Arc<AtomicU64>,
    denied_passed: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Prober {
    fn start(state: &serde_json::Value) -> Prober {
        let mut p = Prober {
            stop: Arc::default(),
            tries: Arc::default(),
            allowed_failed: Arc::default(),
            denied_passed: Arc::default(),
            thread: None,
        };
        let (stop, tries, af, dp) = (
            p.stop.clone(),
            p.tries.clone(),
            p.allowed_failed.clone(),
            p.denied_passed.clone(),
        );
        let (frontend, debug) = (
            pod_netns(state, "prod/frontend"),
            pod_netns(state, "dev/debug"),
        );
        let backend: SocketAddr = BACKEND.parse().unwrap();
        p.thread = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                tries.fetch_add(1, Ordering::Relaxed);
                if connect(&frontend, backend, Duration::from_secs(1)).is_err() {
                    af.fetch_add(1, Ordering::Relaxed);
                }
                if connect(&debug, backend, Duration::from_millis(100)).is_ok() {
                    dp.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        p
    }

    /// Stops probing and asserts that no verdict was wrong; returns the rounds probed.
    fn finish(mut self, min_rounds: u64) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let tries = self.tries.load(Ordering::Relaxed);
        let (af, dp) = (
            self.allowed_failed.load(Ordering::Relaxed),
            self.denied_passed.load(Ordering::Relaxed),
        );
        eprintln!("{tries} probe rounds: {af} allowed failed, {dp} denied passed");
        assert_eq!(af, 0, "allowed connections failed");
        assert_eq!(dp, 0, "denied connections passed");
        assert!(tries > min_rounds, "the prober ran throughout");
        tries
    }
}

#[test]
fn sigkill_under_traffic_20_times() {
    if !root() {
        return;
    }
    let mut lab = Lab::up("k");
    let prober = Prober::start(&lab.state);
    let mut restarts = Vec::new();
    for round in 0..KILLS {
        let round = format!("round {round}");
        let old = program_ids(&lab.status);
        lab.stop_agent(libc::SIGKILL);
        let killed = Instant::now();
        // Traffic meanwhile is judged by the pinned datapath alone.
        std::thread::sleep(Duration::from_millis(200));
        lab.start_agent(&[], &round);
        restarts.push(killed.elapsed() - Duration::from_millis(200));
        lab.check_replaced(&old, &round);
        std::thread::sleep(Duration::from_millis(200));
    }
    prober.finish(2 * KILLS as u64);
    restarts.sort();
    eprintln!(
        "{KILLS} SIGKILLs under traffic; start to all pods attached: median {:.0} ms, max {:.0} ms",
        restarts[KILLS / 2].as_secs_f64() * 1e3,
        restarts[KILLS - 1].as_secs_f64() * 1e3
    );
}

/// The `upgrade-variant` build of enforcer-ebpf (built on first use, then cached by cargo).
fn variant_object() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let obj = ebpf_build::build_ebpf_with(
        workspace,
        &workspace.join("target/bpf-upgrade-variant"),
        &["upgrade-variant"],
    )
    .expect("building enforcer-ebpf with --features upgrade-variant");
    assert_ne!(
        std::fs::read(&obj).unwrap(),
        enforcer_agent::dataplane::BPF_OBJECT,
        "the variant is another build"
    );
    obj
}

#[test]
fn upgrade_and_downgrade_between_two_builds_under_traffic() {
    if !root() {
        return;
    }
    let variant = variant_object();
    let variant = variant.to_str().unwrap();
    let mut lab = Lab::up("u");
    // The tags (hashes of the instructions) of each build's two programs.
    let tags = |ids: &[u64]| -> BTreeSet<u64> {
        ids.iter()
            .map(|id| {
                program(*id)
                    .expect("a program on the links is loaded")
                    .tag()
            })
            .collect()
    };
    let built_in = tags(&program_ids(&lab.status));
    let mut variant_tags = None;
    let prober = Prober::start(&lab.state);
    // The lab starts on the built-in build; then N-1 (the variant) → N → N-1 → N → N-1.
    for (step, to_variant) in [true, false, true, false, true].into_iter().enumerate() {
        let round = format!(
            "step {step} (to the {} build)",
            if to_variant { "variant" } else { "built-in" }
        );
        let old = program_ids(&lab.status);
        lab.stop_agent(libc::SIGTERM);
        let extra: &[&str] = if to_variant {
            &["--bpf-object", variant]
        } else {
            &[]
        };
        lab.start_agent(extra, &round);
        lab.check_replaced(&old, &round);
        let new = program_ids(&lab.status);
        let now = tags(&new);
        if to_variant {
            assert_ne!(now, built_in, "{round}: the variant's programs differ");
            assert_eq!(
                variant_tags.get_or_insert_with(|| now.clone()),
                &now,
                "{round}: the same variant programs as before"
            );
        } else {
            assert_eq!(now, built_in, "{round}: the built-in programs are back");
        }
        for id in &new {
            assert_eq!(
                map_names(*id).contains("UPGRADE_VARIANT"),
                to_variant,
                "{round}: program {id} is the expected build's: {:?}",
                map_names(*id)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    prober.finish(10);
}
