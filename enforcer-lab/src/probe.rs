//! Probing: clients created in the source pod's namespace connect to the destination pod, or
//! to a Service's ClusterIP. All probes of a step run concurrently, so a step costs about one
//! timeout.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use socket2::{Domain, Protocol, Type};
use tokio::time::{timeout, Instant};

use crate::scenario::{Family, Matrix, Probe, ProbeResult, Proto};
use crate::topology::LivePod;

/// Default time a probe may take before it counts as failed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// UDP requests are re-sent this often (up to [`UDP_SENDS`] times) to survive a first packet
/// lost while ARP/ND resolves.
const UDP_RESEND: Duration = Duration::from_millis(200);
const UDP_SENDS: u32 = 3;

/// A client socket created in the source pod's namespace, not yet connected.
fn client_socket(
    from: &LivePod,
    to: SocketAddr,
    protocol: Proto,
) -> anyhow::Result<socket2::Socket> {
    let (ty, proto) = match protocol {
        Proto::Tcp => (Type::STREAM, Protocol::TCP),
        Proto::Udp => (Type::DGRAM, Protocol::UDP),
    };
    let socket = from
        .netns
        .socket(Domain::for_address(to), ty, Some(proto))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Runs one connection attempt with a socket created earlier in the source namespace.
async fn attempt(
    socket: socket2::Socket,
    to: SocketAddr,
    protocol: Proto,
    limit: Duration,
) -> bool {
    match protocol {
        Proto::Tcp => {
            let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
            matches!(timeout(limit, socket.connect(to)).await, Ok(Ok(_)))
        }
        Proto::Udp => {
            let Ok(socket) = tokio::net::UdpSocket::from_std(socket.into()) else {
                return false;
            };
            udp_exchange(&socket, to, limit).await
        }
    }
}

async fn udp_exchange(socket: &tokio::net::UdpSocket, to: SocketAddr, limit: Duration) -> bool {
    if socket.connect(to).await.is_err() {
        return false;
    }
    let deadline = Instant::now() + limit;
    let request = format!("enforcer-lab probe {to} {:?}", Instant::now());
    let mut buf = [0u8; 256];
    let mut sends = 0;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        if sends < UDP_SENDS {
            sends += 1;
            let _ = socket.send(request.as_bytes()).await;
        }
        let wait = if sends < UDP_SENDS {
            UDP_RESEND.min(deadline - now)
        } else {
            deadline - now
        };
        match timeout(wait, socket.recv(&mut buf)).await {
            Ok(Ok(n)) if &buf[..n] == request.as_bytes() => return true,
            Ok(Ok(_)) => {}
            // Port unreachable: nothing listens; a policy drop would be silent.
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionRefused => return false,
            Ok(Err(_)) | Err(_) => {}
        }
    }
}

/// Probes one connection from `from` to `to` (used by the demo traffic generator).
pub async fn connect_once(
    from: &LivePod,
    to: SocketAddr,
    protocol: Proto,
    limit: Duration,
) -> anyhow::Result<bool> {
    let socket = client_socket(from, to, protocol)
        .with_context(|| format!("creating a client socket in pod {}", from.state.key()))?;
    Ok(attempt(socket, to, protocol, limit).await)
}

/// What one probe item connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeTarget {
    /// Every other pod, at its address of the probe's family, once (docs/scenario-format.md
    /// "Pod probes and how they are measured").
    Pods,
    /// A Service's ClusterIP: each client row (`namespace/name`) opens `attempts[row]`
    /// connections, each with a new socket, since the node picks a backend per connection
    /// (docs/scenario-format.md "Service probes"). Rows without attempts are not judged.
    Service {
        ip: IpAddr,
        /// The matrix column, `service/NS/NAME`.
        column: String,
        attempts: BTreeMap<String, usize>,
    },
}

/// The matrix skeleton of a pod probe: every pod pair, self cells and pairs that cannot be
/// judged (IPv6 probe, a pod without IPv6) set to `null`, others to `false` until measured.
fn empty_matrix(pods: &[Arc<LivePod>], family: Family) -> Matrix {
    let mut matrix = Matrix::new();
    for from in pods {
        let row: BTreeMap<String, Option<bool>> = pods
            .iter()
            .map(|to| {
                let judged = from.state.key() != to.state.key()
                    && from.state.ip(family).is_some()
                    && to.state.ip(family).is_some();
                (to.state.key(), judged.then_some(false))
            })
            .collect();
        matrix.insert(from.state.key(), row);
    }
    matrix
}

/// Connections of one cell: (probe index, source row, column) -> (succeeded, failed).
type Tally = BTreeMap<(usize, String, String), (usize, usize)>;

/// One connection to make from a pod.
struct Job {
    probe: usize,
    column: String,
    addr: SocketAddr,
    protocol: Proto,
}

/// Runs every probe, all at once, and returns one result per probe in the probes' order:
/// pod probes for every ordered pair of distinct pods, Service probes for every pod with an
/// address of the family. A cell is `true` when all its connections succeed, `false` when
/// all fail, and `null` when they disagree. Servers must already be listening. `targets`
/// gives each probe's target (missing ones are pod probes).
pub async fn run_probes(
    pods: &[Arc<LivePod>],
    probes: &[Probe],
    targets: &[ProbeTarget],
    limit: Duration,
) -> anyhow::Result<Vec<ProbeResult>> {
    let target = |i: usize| targets.get(i).unwrap_or(&ProbeTarget::Pods);
    let mut results: Vec<ProbeResult> = probes
        .iter()
        .enumerate()
        .map(|(i, p)| empty_result(pods, p, target(i)))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for from in pods {
        let from_key = from.state.key();
        let jobs = jobs_of(pods, probes, &target, &results, &from_key);
        let sockets = client_sockets(from, &jobs)?;
        for (job, socket) in jobs.into_iter().zip(sockets) {
            let from_key = from_key.clone();
            tasks.spawn(async move {
                let ok = attempt(socket, job.addr, job.protocol, limit).await;
                ((job.probe, from_key, job.column), ok)
            });
        }
    }
    let mut tally = Tally::new();
    while let Some(joined) = tasks.join_next().await {
        let (cell, ok) = joined.context("probe task failed")?;
        let counts = tally.entry(cell).or_default();
        if ok {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
    }
    fill_cells(&mut results, tally);
    Ok(results)
}

/// A probe's result before any connection: its judged cells `Some(false)` (a Service probe's
/// too, for the pods that try it), the others `None`.
fn empty_result(pods: &[Arc<LivePod>], p: &Probe, target: &ProbeTarget) -> ProbeResult {
    let matrix = match target {
        ProbeTarget::Pods => empty_matrix(pods, p.family()),
        ProbeTarget::Service {
            column, attempts, ..
        } => pods
            .iter()
            .map(|from| {
                let key = from.state.key();
                let cell = attempts.get(&key).map(|_| false);
                (key, BTreeMap::from([(column.clone(), cell)]))
            })
            .collect(),
    };
    ProbeResult {
        family: p.family,
        matrix,
        port: p.port,
        protocol: p.protocol,
        service: p.service.clone(),
    }
}

/// The connections pod `from_key` makes: one per judged pod cell, and a Service probe's
/// attempts.
fn jobs_of<'a>(
    pods: &[Arc<LivePod>],
    probes: &[Probe],
    target: &impl Fn(usize) -> &'a ProbeTarget,
    results: &[ProbeResult],
    from_key: &str,
) -> Vec<Job> {
    let mut jobs: Vec<Job> = Vec::new();
    for (i, probe) in probes.iter().enumerate() {
        match target(i) {
            ProbeTarget::Pods => {
                for to in pods {
                    if results[i].matrix[from_key][&to.state.key()].is_none() {
                        continue;
                    }
                    let addr = to
                        .state
                        .addr(probe.family(), probe.port)
                        .expect("judged cells have an address of the probe's family");
                    jobs.push(Job {
                        probe: i,
                        column: to.state.key(),
                        addr,
                        protocol: probe.protocol,
                    });
                }
            }
            ProbeTarget::Service {
                ip,
                column,
                attempts,
            } => {
                for _ in 0..attempts.get(from_key).copied().unwrap_or(0) {
                    jobs.push(Job {
                        probe: i,
                        column: column.clone(),
                        addr: SocketAddr::new(*ip, probe.port),
                        protocol: probe.protocol,
                    });
                }
            }
        }
    }
    jobs
}

/// Creates the client sockets of a pod, non-blocking, with one switch into its namespace.
fn client_sockets(from: &LivePod, jobs: &[Job]) -> anyhow::Result<Vec<socket2::Socket>> {
    let sockets = from.netns.run(|| {
        jobs.iter()
            .map(|job| {
                let (ty, p) = match job.protocol {
                    Proto::Tcp => (Type::STREAM, Protocol::TCP),
                    Proto::Udp => (Type::DGRAM, Protocol::UDP),
                };
                let s = socket2::Socket::new(Domain::for_address(job.addr), ty, Some(p))?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .collect::<std::io::Result<Vec<_>>>()
    })?;
    sockets.with_context(|| format!("creating client sockets in pod {}", from.state.key()))
}

/// A cell is `true` when all its connections succeeded, `false` when all failed, `null` when
/// they disagree.
fn fill_cells(results: &mut [ProbeResult], tally: Tally) {
    for ((i, from, to), (succeeded, failed)) in tally {
        if let Some(cell) = results[i]
            .matrix
            .get_mut(&from)
            .and_then(|row| row.get_mut(&to))
        {
            *cell = match (succeeded, failed) {
                (_, 0) => Some(true),
                (0, _) => Some(false),
                _ => None,
            };
        }
    }
}
