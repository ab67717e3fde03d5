//! End to end, in the lab's topology (`cargo xtask bench`, as root): what a connection costs
//! with no filter, with nftables done well, and with the enforcer, interleaved in one run for
//! N = 10, 1,000 and 10,000 policies.
//!
//! - Topology: a node namespace; 2 client pods and 2 server pods, each a namespace on a veth
//!   whose host side is routed (`/32`) as the lab (and routed CNIs) wire pods.
//! - Work: CRR (connect, 32-byte request, 32-byte response, close; 4 threads per client pod,
//!   round-robin over the servers), RR (request/response on one connection per thread) and
//!   stream (one connection per client pod, 64 KiB writes).
//! - Variants, the same N policies expressed for each: `none`; `nftables` (in the node's
//!   forward hook: established/related accepted by conntrack, then a verdict map from the
//!   destination to a check chain for isolated pods, and one concatenated-key interval set
//!   of (source, destination, protocol, port) — the best a classic rule set does: its cost
//!   does not grow with N either); `enforcer` (the agent binary, `ENFORCER_BIN`, with the
//!   policies as manifests).
//! - Figures: per round, each variant's rate and machine-wide CPU time per operation
//!   (`/proc/stat`, the agent's own CPU included) as ratios to `none` in the same round;
//!   medians over the rounds with min–max.
//!
//! `ENFORCER_BENCH_ROUNDS` (default 5) and `ENFORCER_BENCH_SECONDS` (per measurement, default
//! 4) change the length; `ENFORCER_BENCH_N` (say `10,10000`), `ENFORCER_BENCH_WORK` (`crr`,
//! `rr`, `stream`) and `ENFORCER_BENCH_VARIANTS` (`nftables`, `enforcer`; no filter always
//! runs, as the base) narrow it, to profile one case (`perf record -a` alongside).
//! `ENFORCER_BENCH_COMPARE=<another agent binary>` adds the variant `compare`, run like
//! `enforcer` in the same rounds: an A/B of a change to the agent (say, main's build against a
//! branch's) on equal terms, where two runs on this VM would differ more than the change.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use enforcer_agent::netns::Netns;
use enforcer_tests::{median, privileged};

const NODE: &str = "enfb-node";
const PORT: u16 = 8080;
const THREADS_PER_CLIENT: usize = 4;
const MSG: usize = 32;

struct Pod {
    name: String,
    netns: String,
    ip: Ipv4Addr,
}

fn pods() -> (Vec<Pod>, Vec<Pod>) {
    let pod = |name: &str, ip: [u8; 4]| Pod {
        name: name.into(),
        netns: format!("enfb-{name}"),
        ip: Ipv4Addr::from(ip),
    };
    (
        vec![
            pod("client0", [10, 244, 1, 10]),
            pod("client1", [10, 244, 1, 11]),
        ],
        vec![
            pod("server0", [10, 244, 2, 10]),
            pod("server1", [10, 244, 2, 11]),
        ],
    )
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().expect("running a setup command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip_batch(netns: &str, cmds: &[String]) {
    let mut child = Command::new("ip")
        .args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cmds.join("\n").as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "ip -n {netns} -batch: {cmds:?}"
    );
}

fn sysctl(netns: &str, key: &str, value: &str) {
    sh(Command::new("ip").args([
        "netns",
        "exec",
        netns,
        "sysctl",
        "-q",
        "-w",
        &format!("{key}={value}"),
    ]));
}

/// The namespaces and veths, removed on drop.
struct Topology {
    clients: Vec<Pod>,
    servers: Vec<Pod>,
}

impl Topology {
    fn build() -> Topology {
        let (clients, servers) = pods();
        let t = Topology { clients, servers };
        t.remove();
        sh(Command::new("ip").args(["netns", "add", NODE]));
        sysctl(NODE, "net.ipv4.ip_forward", "1");
        for (i, pod) in t.clients.iter().chain(&t.servers).enumerate() {
            sh(Command::new("ip").args(["netns", "add", &pod.netns]));
            // Client ports are reused quickly: CRR opens far more connections than the
            // ephemeral range holds in TIME_WAIT.
            sysctl(&pod.netns, "net.ipv4.tcp_tw_reuse", "1");
            sysctl(&pod.netns, "net.ipv4.ip_local_port_range", "1024 65000");
            let lxc = format!("lxc{i}");
            ip_batch(
                NODE,
                &[
                    format!(
                        "link add {lxc} type veth peer name eth0 netns {}",
                        pod.netns
                    ),
                    format!("addr add 169.254.1.1/32 dev {lxc}"),
                    format!("link set {lxc} up"),
                    format!("route add {}/32 dev {lxc}", pod.ip),
                ],
            );
            ip_batch(
                &pod.netns,
                &[
                    "link set lo up".into(),
                    format!("addr add {}/32 dev eth0", pod.ip),
                    "link set eth0 up".into(),
                    "route add 169.254.1.1 dev eth0 scope link".into(),
                    "route add default via 169.254.1.1 dev eth0".into(),
                ],
            );
        }
        t
    }

    fn remove(&self) {
        for ns in self
            .clients
            .iter()
            .chain(&self.servers)
            .map(|p| p.netns.as_str())
            .chain([NODE])
        {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Servers: per server pod, threads that accept and answer each request in kind, reading
/// until the peer closes. Live for the whole run (they detach; the namespaces' removal ends
/// them with the process).
fn start_servers(servers: &[Pod], received: Arc<AtomicU64>) {
    for pod in servers {
        let ns = Netns::open_named(&pod.netns).unwrap();
        let listener = ns
            .run(|| TcpListener::bind(SocketAddr::from((pod.ip, PORT))))
            .unwrap()
            .expect("binding the server");
        for _ in 0..THREADS_PER_CLIENT * 2 {
            let listener = listener.try_clone().unwrap();
            let received = received.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                for conn in listener.incoming() {
                    let Ok(mut conn) = conn else { continue };
                    let _ = conn.set_nodelay(true);
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        received.fetch_add(n as u64, Ordering::Relaxed);
                        // A request is answered; a stream's data is only counted.
                        if n == MSG && conn.write_all(&buf[..MSG]).is_err() {
                            break;
                        }
                    }
                }
            });
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Work {
    Crr,
    Rr,
    Stream,
}

impl Work {
    const ALL: [Work; 3] = [Work::Crr, Work::Rr, Work::Stream];
}

fn request(conn: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = [7u8; MSG];
    conn.write_all(&buf)?;
    conn.read_exact(&mut buf)
}

/// Runs `work` for `secs` from every client pod; returns operations (connections,
/// transactions, or bytes for the stream) and failures.
fn drive(t: &Topology, work: Work, secs: f64, received: &AtomicU64) -> (u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let (ops, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let before = received.load(Ordering::Relaxed);
    let threads = if work == Work::Stream {
        1
    } else {
        THREADS_PER_CLIENT
    };
    let mut handles = Vec::new();
    for (c, client) in t.clients.iter().enumerate() {
        for th in 0..threads {
            let ns = Netns::open_named(&client.netns).unwrap();
            let targets: Vec<SocketAddr> = t
                .servers
                .iter()
                .map(|s| SocketAddr::from((s.ip, PORT)))
                .collect();
            let (stop, ops, failed) = (stop.clone(), ops.clone(), failed.clone());
            handles.push(std::thread::spawn(move || {
                let _in = ns.enter().unwrap();
                let mut k = c + th;
                let timeout = Duration::from_secs(2);
                let connect = |k: usize| -> std::io::Result<TcpStream> {
                    let conn = TcpStream::connect_timeout(&targets[k % targets.len()], timeout)?;
                    conn.set_nodelay(true)?;
                    conn.set_read_timeout(Some(timeout))?;
                    Ok(conn)
                };
                match work {
                    Work::Crr => {
                        while !stop.load(Ordering::Relaxed) {
                            k += 1;
                            match connect(k).and_then(|mut c| request(&mut c)) {
                                Ok(()) => ops.fetch_add(1, Ordering::Relaxed),
                                Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                    }
                    Work::Rr => {
                        let Ok(mut conn) = connect(k) else {
                            failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        };
                        while !stop.load(Ordering::Relaxed) {
                            match request(&mut conn) {
                                Ok(()) => ops.fetch_add(1, Ordering::Relaxed),
                                Err(_) => {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    return;
                                }
                            };
                        }
                    }
                    Work::Stream => {
                        let Ok(mut conn) = connect(k) else {
                            failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        };
                        let buf = vec![1u8; 64 * 1024];
                        while !stop.load(Ordering::Relaxed) {
                            if conn.write_all(&buf).is_err() {
                                failed.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        }
                    }
                }
            }));
        }
    }
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let n = if work == Work::Stream {
        received.load(Ordering::Relaxed) - before
    } else {
        ops.load(Ordering::Relaxed)
    };
    (n, failed.load(Ordering::Relaxed))
}

/// Busy and total jiffies of the whole machine (`/proc/stat`).
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle and iowait are not work.
    (total - v[3] - v[4], total)
}

/// The N policies, as the filler of the datapath benchmark: policy 0 lets the clients reach
/// the servers on PORT; the others allow other peers (ipBlocks) on other ports.
fn filler(i: usize) -> (String, u16, u16) {
    let cidr = format!(
        "172.{}.{}.{}/{}",
        16 + (i >> 16),
        (i >> 8) & 255,
        (i & 63) << 2,
        if i.is_multiple_of(3) { 30 } else { 32 }
    );
    let port = 1000 + (i % 5000) as u16;
    (cidr, port, port + (i % 7) as u16)
}

fn manifests(t: &Topology, n: usize) -> String {
    let mut s = String::new();
    for ns in ["clients", "servers"] {
        let _ = write!(
            s,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{kubernetes.io/metadata.name: {ns}}}}}\n"
        );
    }
    for (ns, pods) in [("clients", &t.clients), ("servers", &t.servers)] {
        for p in pods {
            let _ = write!(
                s,
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: {ns}, labels: {{role: {ns}}}}}\nspec: {{nodeName: bench, containers: [{{name: c, image: x, ports: [{{containerPort: {PORT}}}]}}]}}\nstatus: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n",
                p.name,
                ip = p.ip
            );
        }
    }
    let _ = write!(
        s,
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p0, namespace: servers}}\nspec:\n  podSelector: {{}}\n  ingress:\n  - from: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: clients}}}}}}]\n    ports: [{{port: {PORT}}}]\n"
    );
    for i in 1..n {
        let (cidr, port, end) = filler(i);
        let _ = write!(
            s,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{i}, namespace: servers}}\nspec:\n  podSelector: {{}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: {cidr}}}}}]\n    ports: [{{port: {port}, endPort: {end}}}]\n"
        );
    }
    s
}

fn nft_ruleset(t: &Topology, n: usize) -> String {
    let mut allow = Vec::new();
    for c in &t.clients {
        for srv in &t.servers {
            allow.push(format!("{} . {} . tcp . {PORT}", c.ip, srv.ip));
        }
    }
    for i in 1..n {
        let (cidr, port, end) = filler(i);
        for srv in &t.servers {
            let ports = if port == end {
                port.to_string()
            } else {
                format!("{port}-{end}")
            };
            allow.push(format!("{cidr} . {} . tcp . {ports}", srv.ip));
        }
    }
    let isolated: Vec<String> = t
        .servers
        .iter()
        .map(|s| format!("{} : jump isolated", s.ip))
        .collect();
    format!(
        "table inet enfbench {{
  set allow {{
    type ipv4_addr . ipv4_addr . inet_proto . inet_service
    flags interval
    elements = {{ {} }}
  }}
  map isolate {{
    type ipv4_addr : verdict
    elements = {{ {} }}
  }}
  chain isolated {{
    ip saddr . ip daddr . meta l4proto . th dport @allow accept
    drop
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    ct state established,related accept
    ip daddr vmap @isolate
  }}
}}
",
        allow.join(", "),
        isolated.join(", ")
    )
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    None,
    Nftables,
    Enforcer,
    /// Another agent binary (`ENFORCER_BENCH_COMPARE`, say main's build), to A/B a change to
    /// the agent within one run.
    Compare,
}

/// What a variant left running.
enum Active {
    Nothing,
    Agent { child: Child, pins: PathBuf },
}

fn bin() -> PathBuf {
    std::env::var_os("ENFORCER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/enforcer"))
}

fn compare_bin() -> Option<PathBuf> {
    std::env::var_os("ENFORCER_BENCH_COMPARE").map(PathBuf::from)
}

fn attached(status: &Path, pods: usize) -> bool {
    std::fs::read_to_string(status)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            let e = v["endpoints"].as_object()?.clone();
            Some(e.values().filter(|x| x["attached"] == true).count() == pods)
        })
        .unwrap_or(false)
}

fn start(variant: Variant, t: &Topology, n: usize, work_dir: &Path) -> Active {
    match variant {
        Variant::None => Active::Nothing,
        Variant::Nftables => {
            let file = work_dir.join("ruleset.nft");
            std::fs::write(&file, nft_ruleset(t, n)).unwrap();
            sh(Command::new("ip")
                .args(["netns", "exec", NODE, "nft", "-f"])
                .arg(&file));
            Active::Nothing
        }
        Variant::Enforcer | Variant::Compare => {
            let bin = match variant {
                Variant::Compare => compare_bin().expect("set with the variant"),
                _ => bin(),
            };
            let dir = work_dir.join("manifests");
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cluster.yaml"), manifests(t, n)).unwrap();
            let pins = PathBuf::from("/sys/fs/bpf/enforcer/bench");
            let _ = std::fs::remove_dir_all(&pins);
            let status = work_dir.join("status.json");
            let _ = std::fs::remove_file(&status);
            let child = Command::new(&bin)
                .args(["agent", "--node", "bench", "--netns"])
                .arg(format!("/run/netns/{NODE}"))
                .arg("--manifests")
                .arg(&dir)
                .arg("--pin-dir")
                .arg(&pins)
                .arg("--status-file")
                .arg(&status)
                .arg("--flow-socket")
                .arg(work_dir.join("flows.sock"))
                .args(["--no-metrics", "--flow-log", "/dev/null"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            let deadline = Instant::now() + Duration::from_secs(60);
            while !attached(&status, t.clients.len() + t.servers.len()) {
                assert!(Instant::now() < deadline, "the agent attached every pod");
                std::thread::sleep(Duration::from_millis(20));
            }
            Active::Agent { child, pins }
        }
    }
}

fn stop(variant: Variant, active: Active) {
    if variant == Variant::Nftables {
        sh(Command::new("ip").args([
            "netns", "exec", NODE, "nft", "delete", "table", "inet", "enfbench",
        ]));
    }
    if let Active::Agent { mut child, pins } = active {
        // SAFETY: kill has no memory preconditions; the pid is our child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
        // Unpinning the links detaches the programs.
        let _ = std::fs::remove_dir_all(&pins);
    }
}

/// One measurement: rate (per second) and CPU seconds per operation.
#[derive(Clone, Copy, Default)]
struct Sample {
    rate: f64,
    cpu_per_op: f64,
}

fn measure(t: &Topology, work: Work, secs: f64, received: &AtomicU64) -> Sample {
    // Warm-up: the first connections through a new rule set fill caches.
    drive(t, work, 0.3, received);
    let (b0, t0) = cpu_jiffies();
    let started = Instant::now();
    let (ops, failed) = drive(t, work, secs, received);
    let elapsed = started.elapsed().as_secs_f64();
    let (b1, t1) = cpu_jiffies();
    assert_eq!(failed, 0, "{work:?}: operations failed");
    // Jiffies of all CPUs; their share of the wall time is the CPU seconds used.
    let cpu_s = (b1 - b0) as f64 / (t1 - t0).max(1) as f64 * elapsed * cores() as f64;
    Sample {
        rate: ops as f64 / elapsed,
        cpu_per_op: cpu_s / ops.max(1) as f64,
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn env_or(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if !privileged() {
        return;
    }
    let rounds = env_or("ENFORCER_BENCH_ROUNDS", 5.0) as usize;
    let secs = env_or("ENFORCER_BENCH_SECONDS", 4.0);
    assert!(
        bin().exists(),
        "the agent binary {} (set ENFORCER_BIN)",
        bin().display()
    );
    let work_dir = std::env::temp_dir().join(format!("enforcer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir).unwrap();
    let topo = Topology::build();
    let received = Arc::new(AtomicU64::new(0));
    start_servers(&topo.servers, received.clone());
    if let Some(c) = compare_bin() {
        assert!(c.exists(), "ENFORCER_BENCH_COMPARE: no {}", c.display());
    }
    let variants: Vec<Variant> = [
        Variant::None,
        Variant::Nftables,
        Variant::Enforcer,
        Variant::Compare,
    ]
    .into_iter()
    .filter(|v| *v != Variant::Compare || compare_bin().is_some())
    .filter(|v| *v == Variant::None || selected("ENFORCER_BENCH_VARIANTS", &format!("{v:?}")))
    .collect();
    let works: Vec<Work> = Work::ALL
        .into_iter()
        .filter(|w| selected("ENFORCER_BENCH_WORK", &format!("{w:?}")))
        .collect();
    assert!(
        !works.is_empty(),
        "ENFORCER_BENCH_WORK selects none of crr, rr, stream"
    );
    println!(
        "end to end, {} client pods x {THREADS_PER_CLIENT} threads -> {} server pods; {rounds} rounds of {secs} s; ratios to no filter in the same round, median (min-max); CPU: whole machine per operation",
        topo.clients.len(),
        topo.servers.len()
    );
    for n in [10, 1_000, 10_000] {
        if !selected("ENFORCER_BENCH_N", &n.to_string()) {
            continue;
        }
        // [variant][work] -> per-round ratios (rate, cpu)
        let mut ratios = vec![vec![(Vec::new(), Vec::new()); works.len()]; variants.len()];
        let mut absolute = vec![vec![Vec::new(); works.len()]; variants.len()];
        for round in 0..rounds {
            // Interleaved, and the order rotates so that no variant always runs first.
            let mut base = vec![Sample::default(); works.len()];
            let order: Vec<usize> = (0..variants.len())
                .map(|i| (i + round) % variants.len())
                .collect();
            let mut samples = vec![vec![Sample::default(); works.len()]; variants.len()];
            for &v in &order {
                let active = start(variants[v], &topo, n, &work_dir);
                for (w, &work) in works.iter().enumerate() {
                    samples[v][w] = measure(&topo, work, secs, &received);
                }
                stop(variants[v], active);
            }
            for (w, b) in base.iter_mut().enumerate() {
                *b = samples[0][w];
            }
            for v in 0..variants.len() {
                for w in 0..works.len() {
                    let s = samples[v][w];
                    ratios[v][w].0.push(s.rate / base[w].rate);
                    ratios[v][w].1.push(s.cpu_per_op / base[w].cpu_per_op);
                    absolute[v][w].push(s.rate);
                }
            }
        }
        println!("\nN = {n} policies");
        let mut head = String::from("| variant |");
        for w in &works {
            let _ = write!(head, " {w:?} | CPU/op |");
        }
        println!("{head} {:?}/s |", works[0]);
        println!("| --- |{} ---: |", " ---: | ---: |".repeat(works.len()));
        for (v, variant) in variants.iter().enumerate() {
            let mut row = format!("| {variant:?} |");
            for (rate, cpu) in &ratios[v] {
                let _ = write!(row, " {} | {} |", spread(rate), spread(cpu));
            }
            let _ = write!(row, " {:.0} |", median(absolute[v][0].clone()));
            println!("{row}");
        }
    }
    drop(topo);
    let _ = std::fs::remove_dir_all(&work_dir);
}

/// Whether `name` is in the comma-separated list of the environment variable `var` (case
/// does not matter); every name is when it is unset.
fn selected(var: &str, name: &str) -> bool {
    match std::env::var(var) {
        Ok(list) => list.split(',').any(|x| x.trim().eq_ignore_ascii_case(name)),
        Err(_) => true,
    }
}

fn spread(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.2}× ({lo:.2}–{hi:.2})", median(v.to_vec()))
}
