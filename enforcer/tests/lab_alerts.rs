//! The anomaly detectors on real lab traffic: a steady phase raises no alert; then a deny
//! burst, a first-seen edge and a byte spike (one large transfer, weighed when its connection
//! ends) each raise theirs within its bucket. Short buckets come from an alerts config passed
//! to the lab's agent. Needs root.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use enforcer_agent::netns::Netns;
use enforcer_lab::instance::LabState;

mod common;
use common::{enforcer, lab_name, lab_up, ok, root, scenario};

/// Buckets of 2 s, baselines that follow quickly, two warm-up buckets; the first-seen learning
/// period covers the steady phase's first seconds.
const ALERTS: &str = r#"
port_scan: {window_seconds: 5}
deny_burst: {bucket_seconds: 2, min_count: 15, ewma_alpha: 0.5, warmup_buckets: 2}
first_seen: {learning_seconds: 4}
volume: {bucket_seconds: 2, min_connections: 1000, min_bytes: 500000, ewma_alpha: 0.5, warmup_buckets: 2}
"#;

struct Pod {
    netns: Netns,
    ip: IpAddr,
}

fn pod(state: &LabState, key: &str) -> Pod {
    let p = state
        .pod(key)
        .unwrap_or_else(|| panic!("pod {key} in the lab"));
    Pod {
        netns: Netns::open_named(&p.netns).expect("the pod's namespace"),
        ip: IpAddr::V4(p.ipv4),
    }
}

/// A TCP server in `pod` on `port` that reads each connection to its end (counting nothing:
/// the datapath counts).
fn sink_server(pod: &Pod, port: u16) {
    let listener = pod
        .netns
        .run(|| TcpListener::bind(SocketAddr::new(pod.ip, port)))
        .unwrap()
        .expect("listening in the pod");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
}

/// Connects from `from` to `to:port`, sends `bytes` and closes (FIN both ways).
fn transfer(from: &Pod, to: &Pod, port: u16, bytes: usize) {
    let mut s = from
        .netns
        .run(|| TcpStream::connect_timeout(&SocketAddr::new(to.ip, port), Duration::from_secs(2)))
        .unwrap()
        .expect("an allowed connection");
    s.write_all(&vec![0x5a; bytes]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    // Wait for the server's FIN, so the datapath sees the close complete.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
}

/// `n` UDP datagrams from `from` to `to:53`, each from a new source port: `n` distinct flows,
/// all dropped (x's pods are isolated for ingress).
fn denied_flows(from: &Pod, to: &Pod, n: usize) {
    for _ in 0..n {
        let sock = from
            .netns
            .run(|| UdpSocket::bind(SocketAddr::new(from.ip, 0)))
            .unwrap()
            .unwrap();
        sock.send_to(b"ping", SocketAddr::new(to.ip, 53)).unwrap();
    }
}

fn alerts_in(log: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "alert")
        .collect()
}

/// Waits up to `within` for an alert of `kind` from `source`.
fn wait_for(
    log: &std::path::Path,
    kind: &str,
    source: &str,
    within: Duration,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        if let Some(a) = alerts_in(log)
            .into_iter()
            .find(|a| a["kind"] == kind && a["source"] == source)
        {
            return a;
        }
        assert!(
            start.elapsed() < within,
            "no {kind} alert from {source} within {within:?}; alerts: {:#?}",
            alerts_in(log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn steady_traffic_is_quiet_and_each_anomaly_alerts_within_its_window() {
    if !root() {
        return;
    }
    let name = lab_name("al");
    let config = std::env::temp_dir().join(format!("{name}-alerts.yaml"));
    std::fs::write(&config, ALERTS).unwrap();
    let _down = lab_up(
        Some(&scenario("default-deny-ingress")),
        &name,
        &[
            &format!("--agent-arg=--alerts-config={}", config.display()),
            "--agent-arg=--conntrack-sweep-interval=500ms",
        ],
    );
    let state = LabState::load(&name).expect("the lab's state");
    let log = state.paths.flow_log.clone();
    let (ya, yb, zb, xa) = (
        pod(&state, "y/a"),
        pod(&state, "y/b"),
        pod(&state, "z/b"),
        pod(&state, "x/a"),
    );
    sink_server(&zb, 9000);
    sink_server(&yb, 9001);

    // Steady phase, 10 s (5 buckets): every 500 ms y/a sends 4 kB to z/b and one datagram
    // that x/a's isolation drops.
    let steady_until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < steady_until {
        transfer(&ya, &zb, 9000, 4096);
        denied_flows(&ya, &xa, 1);
        std::thread::sleep(Duration::from_millis(500));
    }
    // The sweeper and the sink have had time to catch up with the last steady flows.
    std::thread::sleep(Duration::from_millis(500));
    let quiet = alerts_in(&log);
    assert!(quiet.is_empty(), "steady traffic raised alerts: {quiet:#?}");
    let flows = std::fs::read_to_string(&log).unwrap();
    assert!(
        flows.contains("\"reason\":\"policy_denied\""),
        "the steady drops are in the flow log"
    );

    // A deny burst: 60 denied flows at once, against a baseline of 4 a bucket.
    denied_flows(&ya, &xa, 60);
    let a = wait_for(&log, "deny_burst", "y/a", Duration::from_secs(3));
    assert!(
        a["evidence"]["counts"]["denied"].as_u64().unwrap() >= 15,
        "{a}"
    );

    // A first-seen edge: y/a has never talked to y/b.
    transfer(&ya, &yb, 9001, 100);
    let a = wait_for(&log, "first_seen_edge", "y/a", Duration::from_secs(3));
    assert_eq!(a["target"], "y/b", "{a}");

    // A byte spike: 2 MB to z/b over a connection that stays open, against ~10 kB a bucket.
    // The agent's conntrack sweep (every 500 ms here) samples the bytes while it runs: the
    // alert comes before the connection ends.
    let mut open = ya
        .netns
        .run(|| TcpStream::connect_timeout(&SocketAddr::new(zb.ip, 9000), Duration::from_secs(2)))
        .unwrap()
        .expect("an allowed connection");
    open.write_all(&vec![0x5a; 2_000_000]).unwrap();
    let a = wait_for(&log, "volume_spike", "y/a", Duration::from_secs(3));
    assert_eq!(a["target"], "z/b", "{a}");
    assert!(
        a["evidence"]["counts"]["bytes"].as_u64().unwrap() >= 2_000_000,
        "{a}"
    );
    open.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = open.read_to_end(&mut Vec::new());
    drop(open);

    // No port scan: y/a reached one port on each of three peers.
    assert!(
        !alerts_in(&log).iter().any(|a| a["kind"] == "port_scan"),
        "{:#?}",
        alerts_in(&log)
    );

    // The connection ends are in the agent's memory, with what each connection carried.
    let socket = state.paths.state_dir.join("flows.sock");
    let out = ok(
        &enforcer(&[
            "flows",
            "--socket",
            socket.to_str().unwrap(),
            "--event",
            "end",
            "--from-pod",
            "y/a",
            "--to-port",
            "9000",
            "--all",
            "--output",
            "jsonl",
        ]),
        "enforcer flows --event end",
    );
    let ends: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(ends.len() >= 15, "one end per steady transfer: {out}");
    for e in &ends {
        assert_eq!(e["end"]["reason"], "closed", "{e}");
        assert_eq!(
            (&e["src"]["pod"], &e["dst"]["pod"]),
            (&"a".into(), &"b".into()),
            "{e}"
        );
        assert!(e["end"]["packets_received"].as_u64().unwrap() >= 2, "{e}");
    }
    assert!(
        ends.iter()
            .any(|e| e["end"]["bytes_sent"].as_u64().unwrap() > 2_000_000),
        "the large transfer's end carries its bytes: {out}"
    );
    let _ = std::fs::remove_file(&config);
}
