//! Propagation to the first packet: two pods of the agent's node (network namespaces and
//! veths of the test's own, under a node namespace the agent is pointed at with `--netns`),
//! a policy on one that allows the other on one UDP port, flipped between two ports through
//! the API, and a prober that sends to both ports all the time: a change's propagation is the
//! time from the write to the API to the send time of the first datagram that reaches the
//! newly allowed port (the first packet that saw the change).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use enforcer_agent::netns::Netns;
use serde_json::{json, Value};

pub const NODE_NETNS: &str = "enfp-node";
const CLIENT: (&str, [u8; 4]) = ("enfp-a", [10, 244, 9, 10]);
const SERVER: (&str, [u8; 4]) = ("enfp-b", [10, 244, 9, 11]);
/// The two ports the policy alternates between.
pub const PORTS: [u16; 2] = [9000, 9001];
/// How often the prober sends to each port.
const EVERY: Duration = Duration::from_micros(200);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The node namespace and the two pods, removed on drop.
pub struct LocalPods;

impl LocalPods {
    pub fn build() -> LocalPods {
        let t = LocalPods;
        t.remove();
        ip(&["netns", "add", NODE_NETNS]);
        ip(&[
            "netns",
            "exec",
            NODE_NETNS,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
        ]);
        ip(&["-n", NODE_NETNS, "link", "set", "lo", "up"]);
        for (i, (name, addr)) in [CLIENT, SERVER].into_iter().enumerate() {
            let addr = Ipv4Addr::from(addr).to_string();
            let lxc = format!("lxc{i}");
            ip(&["netns", "add", name]);
            ip(&[
                "-n", NODE_NETNS, "link", "add", &lxc, "type", "veth", "peer", "name", "eth0",
                "netns", name,
            ]);
            ip(&[
                "-n",
                NODE_NETNS,
                "addr",
                "add",
                "169.254.1.1/32",
                "dev",
                &lxc,
            ]);
            ip(&["-n", NODE_NETNS, "link", "set", &lxc, "up"]);
            ip(&[
                "-n",
                NODE_NETNS,
                "route",
                "add",
                &format!("{addr}/32"),
                "dev",
                &lxc,
            ]);
            ip(&["-n", name, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                name,
                "addr",
                "add",
                &format!("{addr}/32"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", name, "link", "set", "eth0", "up"]);
            ip(&[
                "-n",
                name,
                "route",
                "add",
                "169.254.1.1",
                "dev",
                "eth0",
                "scope",
                "link",
            ]);
            ip(&[
                "-n",
                name,
                "route",
                "add",
                "default",
                "via",
                "169.254.1.1",
                "dev",
                "eth0",
            ]);
        }
        t
    }

    fn remove(&self) {
        for ns in [CLIENT.0, SERVER.0, NODE_NETNS] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

impl Drop for LocalPods {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Offers the API double (`url`, on the host's loopback) at the same address inside the node
/// namespace, where the agent runs and the host's loopback leads nowhere: each connection is
/// forwarded as it is. Runs on the caller's tokio runtime.
pub fn offer_api(url: &str) {
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .parse()
        .expect("the double's address");
    let node = Netns::open_named(NODE_NETNS).expect("the node's namespace");
    let listener = node
        .run(|| std::net::TcpListener::bind(addr))
        .unwrap()
        .expect("listening in the node's namespace");
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut upstream) = tokio::net::TcpStream::connect(addr).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut upstream).await;
                }
            });
        }
    });
}

/// The two pods as the API holds them (namespace `ns`, scheduled to `node`).
pub fn pods(ns: &str, node: &str) -> Vec<Value> {
    [("probe-a", CLIENT.1), ("probe-b", SERVER.1)]
        .into_iter()
        .map(|(name, addr)| {
            let addr = Ipv4Addr::from(addr).to_string();
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "pause"}]},
                "status": {"phase": "Running", "podIP": addr, "podIPs": [{"ip": addr}],
                           "conditions": [{"type": "Ready", "status": "True"}]},
            })
        })
        .collect()
}

/// The policy on probe-b: probe-a may send to `port` (UDP).
pub fn policy(ns: &str, port: u16) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "probe", "namespace": ns},
        "spec": {
            "podSelector": {"matchLabels": {"app": "probe-b"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "probe-a"}}}],
                         "ports": [{"port": port, "protocol": "UDP"}]}],
        },
    })
}

/// The prober: a sender in probe-a to both ports of probe-b, each datagram its send time (ns
/// since `base`), and a receiver in probe-b handing on (port, send time) of what arrives.
/// Stops on drop.
pub struct Prober {
    stop: Arc<AtomicBool>,
    pub base: Instant,
    arrived: mpsc::Receiver<(u16, u64)>,
}

impl Prober {
    pub fn start() -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let base = Instant::now();
        let (tx, arrived) = mpsc::channel();
        let server = Netns::open_named(SERVER.0).expect("probe-b's namespace");
        let client = Netns::open_named(CLIENT.0).expect("probe-a's namespace");
        for port in PORTS {
            let sock = server
                .run(|| UdpSocket::bind(SocketAddr::from((SERVER.1, port))))
                .unwrap()
                .expect("binding the receiver");
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let (tx, stop) = (tx.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 8];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((8, _)) = sock.recv_from(&mut buf) {
                        if tx.send((port, u64::from_le_bytes(buf))).is_err() {
                            return;
                        }
                    }
                }
            });
        }
        let sock = client
            .run(|| UdpSocket::bind(SocketAddr::from((CLIENT.1, 0))))
            .unwrap()
            .expect("binding the sender");
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            let mut next = Instant::now();
            while !stop2.load(Ordering::Relaxed) {
                for port in PORTS {
                    let sent = base.elapsed().as_nanos() as u64;
                    // A dropped datagram is what a denied port gets: nothing to report.
                    let _ = sock.send_to(&sent.to_le_bytes(), SocketAddr::from((SERVER.1, port)));
                }
                next += EVERY;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        });
        Prober {
            stop,
            base,
            arrived,
        }
    }

    /// Waits for the first datagram to `port` sent at or after `since` (ns since `base`) to
    /// arrive, and returns its send time; `None` after `within`.
    pub fn first_after(&self, port: u16, since: u64, within: Duration) -> Option<u64> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.arrived.recv_timeout(left) {
                Ok((p, sent)) if p == port && sent >= since => return Some(sent),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
