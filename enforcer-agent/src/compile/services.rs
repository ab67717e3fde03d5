//! Service frontends for one node: every ClusterIP port with the backends that a client pod on
//! this node may reach (see `model::service` for how endpoints are derived). The datapath picks
//! one of them per connection and judges the connection on it.

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

/// Every frontend of a cluster's Services: a persistent map, so that a compile that recompiles
/// a few Services hands on the rest shared, and the dataplane finds what changed by a diff.
pub type Frontends = crate::model::Map<FrontendAddr, FrontendPlan>;

/// Every frontend of the cluster's Services, as seen from `node`. Only TCP and UDP ports are
/// translated; SCTP Services are left to the node's service proxy.
pub fn compile_services(cluster: &Cluster, node: &NodeInput) -> Frontends {
    compile_services_checked(cluster, node).0
}

/// [`compile_services`], and whether two frontends claimed one address (a ClusterIP and port
/// two Services share, which the API server does not allocate): the first in key order keeps
/// it, which an edit of one Service's frontends could not tell ([`update_services`]).
pub(crate) fn compile_services_checked(cluster: &Cluster, node: &NodeInput) -> (Frontends, bool) {
    let index = EndpointIndex::new(cluster);
    let mut out = Frontends::new();
    let mut collided = false;
    for svc in cluster.services.values() {
        for (addr, plan) in frontends_of(svc, &index, node) {
            // Two Services never share a ClusterIP; should they, the first keeps it.
            match out.entry(addr) {
                imbl::ordmap::Entry::Vacant(v) => {
                    v.insert(plan);
                }
                imbl::ordmap::Entry::Occupied(_) => collided = true,
            }
        }
    }
    (out, collided)
}

/// The previous compile's frontends with those of the Services in `stale` compiled again
/// (removed first, as the previous Services `before` had them, then added as `cluster` has
/// them); equal to [`compile_services`] when `stale` holds every Service whose frontends may
/// have changed and no two frontends claim one address. `None` when one would (the caller
/// compiles them all).
pub(crate) fn update_services(
    previous: &Frontends,
    before: &crate::model::Map<ServiceKey, crate::model::Service>,
    cluster: &Cluster,
    node: &NodeInput,
    stale: &std::collections::BTreeSet<ServiceKey>,
) -> Option<Frontends> {
    let mut out = previous.clone();
    for key in stale {
        let Some(svc) = before.get(key) else { continue };
        for addr in addresses_of(svc) {
            if out.get(&addr).is_some_and(|plan| plan.service == *key) {
                out.remove(&addr);
            }
        }
    }
    let index = EndpointIndex::new(cluster);
    for key in stale {
        let Some(svc) = cluster.services.get(key) else {
            continue;
        };
        for (addr, plan) in frontends_of(svc, &index, node) {
            if out.contains_key(&addr) {
                return None;
            }
            out.insert(addr, plan);
        }
    }
    Some(out)
}

/// The frontend addresses of a Service (its translated ports on each ClusterIP).
fn addresses_of(svc: &crate::model::Service) -> impl Iterator<Item = FrontendAddr> + '_ {
    svc.cluster_ips.iter().flat_map(move |ip| {
        svc.ports.iter().filter_map(move |port| {
            let proto = match port.protocol {
                Protocol::Tcp => Proto::Tcp,
                Protocol::Udp => Proto::Udp,
                Protocol::Sctp => return None,
            };
            Some(FrontendAddr {
                ip: *ip,
                port: port.port,
                proto,
            })
        })
    })
}

/// The frontends of one Service, in its ClusterIPs' and ports' order.
fn frontends_of(
    svc: &crate::model::Service,
    index: &EndpointIndex<'_>,
    node: &NodeInput,
) -> Vec<(FrontendAddr, FrontendPlan)> {
    let mut out = Vec::new();
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
            out.push((
                FrontendAddr {
                    ip: *ip,
                    port: port.port,
                    proto,
                },
                FrontendPlan {
                    service: svc.key.clone(),
                    port_name: port.name.clone(),
                    backends,
                    affinity_timeout: svc.affinity_timeout,
                },
            ));
        }
    }
    out
}
