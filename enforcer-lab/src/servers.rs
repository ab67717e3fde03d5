//! Listeners inside pod namespaces: a TCP accept loop and a UDP echo loop per pod and per
//! probed (port, protocol, family), and on each Service backend per target port a Service
//! probe can reach (docs/scenario-format.md "What the lab provides").

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use socket2::{Domain, Protocol, SockAddr, Type};
use tokio::task::JoinHandle;

use crate::scenario::{Family, Probe, Proto};
use crate::topology::LivePod;

/// What one listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub port: u16,
    pub protocol: Proto,
    pub family: Family,
}

impl From<&Probe> for Endpoint {
    fn from(p: &Probe) -> Self {
        Self {
            port: p.port,
            protocol: p.protocol,
            family: p.family(),
        }
    }
}

/// The distinct endpoints every pod serves for a list of probes (its pod probes).
pub fn endpoints_for(probes: &[Probe]) -> Vec<Endpoint> {
    probes
        .iter()
        .filter(|p| p.service.is_none())
        .map(Endpoint::from)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Running listeners; aborted on drop, or stopped (and waited for) with [`ServerSet::stop`].
#[derive(Debug, Default)]
pub struct ServerSet {
    tasks: Vec<JoinHandle<()>>,
}

impl ServerSet {
    /// Starts a listener for every endpoint in every pod (IPv6 endpoints only in pods with an
    /// IPv6 address). Must run inside a tokio runtime.
    pub fn start(pods: &[Arc<LivePod>], endpoints: &[Endpoint]) -> anyhow::Result<Self> {
        Self::start_with(pods, endpoints, &BTreeMap::new())
    }

    /// As [`ServerSet::start`], plus `extra[pod]` on that pod (a Service's backends).
    pub fn start_with(
        pods: &[Arc<LivePod>],
        endpoints: &[Endpoint],
        extra: &BTreeMap<String, BTreeSet<Endpoint>>,
    ) -> anyhow::Result<Self> {
        let mut set = Self::default();
        for pod in pods {
            let mut all: BTreeSet<Endpoint> = endpoints.iter().copied().collect();
            if let Some(more) = extra.get(&pod.state.key()) {
                all.extend(more.iter().copied());
            }
            for ep in &all {
                let Some(addr) = pod.state.addr(ep.family, ep.port) else {
                    continue;
                };
                let task = match ep.protocol {
                    Proto::Tcp => tcp_server(pod, addr),
                    Proto::Udp => udp_server(pod, addr),
                }
                .with_context(|| {
                    format!(
                        "starting {}/{} server on {addr} in pod {}",
                        ep.port,
                        ep.protocol,
                        pod.state.key()
                    )
                })?;
                set.tasks.push(task);
            }
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Stops every listener and waits until their sockets are closed, so the same addresses
    /// can be bound again right away.
    pub async fn stop(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl Drop for ServerSet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn bound_socket(pod: &LivePod, addr: SocketAddr, ty: Type) -> anyhow::Result<socket2::Socket> {
    let domain = Domain::for_address(addr);
    let proto = if ty == Type::STREAM {
        Protocol::TCP
    } else {
        Protocol::UDP
    };
    let socket = pod.netns.socket(domain, ty, Some(proto))?;
    socket.set_reuse_address(true)?;
    // Lets `lab probe` listen next to `lab demo`'s servers on the same pod and port.
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(addr))?;
    Ok(socket)
}

fn tcp_server(pod: &LivePod, addr: SocketAddr) -> anyhow::Result<JoinHandle<()>> {
    let socket = bound_socket(pod, addr, Type::STREAM)?;
    socket.listen(1024)?;
    let listener = tokio::net::TcpListener::from_std(socket.into())?;
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                // The probe only needs the handshake; closing right away is enough.
                Ok((stream, _)) => drop(stream),
                Err(err) => {
                    tracing::debug!(%addr, error = %err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    }))
}

fn udp_server(pod: &LivePod, addr: SocketAddr) -> anyhow::Result<JoinHandle<()>> {
    let socket = bound_socket(pod, addr, Type::DGRAM)?;
    let socket = tokio::net::UdpSocket::from_std(socket.into())?;
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            match socket.recv_from(&mut buf).await {
                Ok((n, peer)) => {
                    let _ = socket.send_to(&buf[..n], peer).await;
                }
                Err(err) => {
                    // ICMP errors for earlier replies surface here; keep serving.
                    tracing::debug!(%addr, error = %err, "udp recv failed");
                }
            }
        }
    }))
}
