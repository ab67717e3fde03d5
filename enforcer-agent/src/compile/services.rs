//! Service frontends for one node: every ClusterIP port with the backends that a client pod on
//! this node may reach (see `model::service` for how endpoints are derived). The datapath picks
//! one of them per connection and judges the connection on it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::tables::Proto;
use super::NodeInput;
use crate::model::service::{candidates, Backend, EndpointIndex, IpFamily};
use crate::model::{Cluster, Protocol, ServiceKey};

/// A Service address as the datapath matches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct FrontendAddr {
    pub ip: IpAddr,
    pub port: u16,
    /// [`Proto::Tcp`] or [`Proto::Udp`].
    pub proto: Proto,
}

/// One Service port of one family, for this node.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FrontendPlan {
    pub service: ServiceKey,
    /// The Service port's name (`spec.ports[].name`), if it has one.
    pub port_name: Option<String>,
    /// What a client on this node may reach, in address order. Empty: the Service port has no
    /// ready endpoint (for this node, under `internalTrafficPolicy: Local`), and its
    /// connections fail.
    pub backends: Vec<Backend>,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout: Option<u32>,
}

/// What a frontend id stands for, in flow records: the Service port a translated flow was
/// sent to. The dataplane hands out the ids (`dataplane::services`); the flow records name
/// them by this.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FrontendName {
    pub service: ServiceKey,
    pub port_name: Option<String>,
    pub ip: IpAddr,
    pub port: u16,
}

/// Every frontend of the cluster's Services, as seen from `node`. Only TCP and UDP ports are
/// translated; SCTP Services are left to the node's service proxy.
pub fn compile_services(
    cluster: &Cluster,
    node: &NodeInput,
) -> BTreeMap<FrontendAddr, FrontendPlan> {
    let index = EndpointIndex::new(cluster);
    let mut out = BTreeMap::new();
    for svc in cluster.services.values() {
        for ip in &svc.cluster_ips {
            let family = IpFamily::of(ip);
            for port in &svc.ports {
                let proto = match port.protocol {
                    Protocol::Tcp => Proto::Tcp,
                    Protocol::Udp => Proto::Udp,
                    Protocol::Sctp => continue,
                };
                let endpoints = index.endpoints(svc, port, family);
                let backends = candidates(svc, &endpoints, Some(&node.name))
                    .into_iter()
                    .cloned()
                    .collect();
                // Two Services never share a ClusterIP; should they, the first keeps it.
                out.entry(FrontendAddr {
                    ip: *ip,
                    port: port.port,
                    proto,
                })
                .or_insert(FrontendPlan {
                    service: svc.key.clone(),
                    port_name: port.name.clone(),
                    backends,
                    affinity_timeout: svc.affinity_timeout,
                });
            }
        }
    }
    out
}
