//! The agent killed (SIGKILL) and started again 20 times under traffic, on the demo lab: no
//! allowed connection fails, no denied one passes, a long-lived connection survives, and each
//! new agent puts its own programs in force on the links in place (once it has adopted them,
//! the old agent's programs are unloaded: no link still runs them). Needs root.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use enforcer_agent::netns::Netns;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

mod common;
use common::{lab_name, lab_up, root, state_json};

const KILLS: usize = 20;

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

/// Whether a program with kernel id `id` is loaded.
fn loaded(id: u64) -> bool {
    aya::programs::loaded_programs()
        .flatten()
        .any(|p| u64::from(p.id()) == id)
}

/// The ids of the programs the agent writing `status` put on the links.
fn program_ids(status: &std::path::Path) -> Vec<u64> {
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

fn attached(status: &std::path::Path, pods: usize) -> bool {
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

#[test]
fn sigkill_under_traffic_20_times() {
    if !root() {
        return;
    }
    let name = lab_name("k");
    let _down = lab_up(None, &name, &[]);
    let st = state_json(&name);
    let pods = st["pods"].as_array().unwrap().len();
    let status = PathBuf::from(st["paths"]["status_file"].as_str().unwrap());
    let mut pid = st["agent_pid"].as_u64().unwrap() as u32;
    let cmdline = agent_cmdline(pid);

    // prod/backend serves 8080 (echo); prod/frontend may reach it, dev/debug may not.
    let backend: SocketAddr = "10.244.1.11:8080".parse().unwrap();
    let server = pod_netns(&st, "prod/backend")
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
    let frontend = pod_netns(&st, "prod/frontend");
    let debug = pod_netns(&st, "dev/debug");
    let mut long_lived = connect(&frontend, backend, Duration::from_secs(2))
        .expect("prod/frontend reaches prod/backend:8080");
    long_lived
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert!(
        connect(&debug, backend, Duration::from_millis(500)).is_err(),
        "dev/debug is denied before the test starts"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (tries, allowed_failed, denied_passed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let prober = {
        let (stop, tries, af, dp) = (
            stop.clone(),
            tries.clone(),
            allowed_failed.clone(),
            denied_passed.clone(),
        );
        let (frontend, debug) = (pod_netns(&st, "prod/frontend"), pod_netns(&st, "dev/debug"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                tries.fetch_add(1, Ordering::Relaxed);
                if connect(&frontend, backend, Duration::from_secs(1)).is_err() {
                    af.fetch_add(1, Ordering::Relaxed);
                }
                if connect(&debug, backend, Duration::from_millis(100)).is_ok() {
                    dp.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let mut restarts = Vec::new();
    for round in 0..KILLS {
        let old = program_ids(&status);
        // SAFETY: kill has no memory preconditions; the pid is the lab's agent.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
        while std::path::Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s.contains(") Z"))
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let killed = Instant::now();
        let _ = std::fs::remove_file(&status);
        // Traffic meanwhile is judged by the pinned datapath alone.
        std::thread::sleep(Duration::from_millis(200));
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(st["paths"]["agent_log"].as_str().unwrap())
            .unwrap();
        let child = Command::new(&cmdline[0])
            .args(&cmdline[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !attached(&status, pods) {
            assert!(
                Instant::now() < deadline,
                "round {round}: the new agent attached every pod"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        restarts.push(killed.elapsed() - Duration::from_millis(200));
        // The old agent's programs are gone: no link runs them any more (they were replaced
        // in place by the new agent's, which are on the links).
        let new = program_ids(&status);
        assert!(
            new.iter().all(|id| !old.contains(id)),
            "round {round}: new programs"
        );
        let deadline = Instant::now() + Duration::from_secs(3);
        while old.iter().any(|id| loaded(*id)) {
            assert!(
                Instant::now() < deadline,
                "round {round}: the old agent's programs {old:?} are still loaded: a link still runs them"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The long-lived connection still carries data.
        long_lived.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        long_lived
            .read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("round {round}: the long-lived connection: {e}"));
        assert_eq!(&buf, b"ping");
        // Leave the child to the lab (`lab down` stops it); reap nothing here.
        std::mem::forget(child);
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    prober.join().unwrap();
    restarts.sort();
    eprintln!(
        "{KILLS} SIGKILLs under traffic: {} probe rounds, {} allowed failed, {} denied passed; start to all pods attached: median {:.0} ms, max {:.0} ms",
        tries.load(Ordering::Relaxed),
        allowed_failed.load(Ordering::Relaxed),
        denied_passed.load(Ordering::Relaxed),
        restarts[KILLS / 2].as_secs_f64() * 1e3,
        restarts[KILLS - 1].as_secs_f64() * 1e3
    );
    assert_eq!(
        allowed_failed.load(Ordering::Relaxed),
        0,
        "allowed connections failed"
    );
    assert_eq!(
        denied_passed.load(Ordering::Relaxed),
        0,
        "denied connections passed"
    );
    assert!(
        tries.load(Ordering::Relaxed) > 2 * KILLS as u64,
        "the prober ran throughout"
    );
}
