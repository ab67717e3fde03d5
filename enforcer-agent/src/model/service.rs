//! Services and EndpointSlices as plain data, and the endpoints of a Service port as the
//! EndpointSlice controller and kube-proxy derive them.
//!
//! For a Service S, one of its ports P and a family F, the endpoints are pairs (backend
//! address, target port):
//! - S has a selector: every ready pod of S's namespace that the selector selects and that has
//!   an address of F. A numeric `targetPort` is the target port; a named one is the number of
//!   the pod's container port with that name and P's protocol, so it may differ per backend,
//!   and a pod without such a port is not an endpoint of P.
//! - S has no selector: every ready endpoint of S's EndpointSlices (label
//!   `kubernetes.io/service-name`) of address type F, at the `port` of the slice's port whose
//!   name and protocol are P's (S's own `targetPort` is not used, as in kube-proxy).
//!
//! A client's candidates are all endpoints under `internalTrafficPolicy: Cluster`, and only
//! those on the client's node under `Local` (none there: the connection fails).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{Cluster, Labels, Pod, PodKey, Protocol};

pub mod convert;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum IpFamily {
    #[serde(rename = "IPv4")]
    V4,
    #[serde(rename = "IPv6")]
    V6,
}

impl IpFamily {
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }
}

namespaced_key!(
    /// A Service's identity, written `namespace/name`.
    ServiceKey
);
namespaced_key!(
    /// An EndpointSlice's identity, written `namespace/name`.
    SliceKey
);

/// `spec.internalTrafficPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    /// Only endpoints on the client's node.
    Local,
}

/// A validated `v1` Service with a virtual address (types ClusterIP, NodePort, LoadBalancer).
/// Headless Services and ExternalName Services have no `cluster_ips`: nothing to translate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub key: ServiceKey,
    /// `spec.clusterIPs` (at most one per family); empty for a headless Service.
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.selector`; `None` (absent or empty) = endpoints come from EndpointSlices.
    pub selector: Option<Labels>,
    pub ports: Vec<ServicePort>,
    pub internal_traffic: TrafficPolicy,
    /// `sessionAffinity: ClientIP`: how long (seconds) a client keeps its backend
    /// (`sessionAffinityConfig.clientIP.timeoutSeconds`, 10800 by default). `None`: no
    /// affinity.
    pub affinity_timeout: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
    /// Defaults to `port`, as the API server does.
    pub target: TargetPort,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// The name of a container port of each backend pod.
    Name(String),
}

/// A validated `discovery.k8s.io/v1` EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    pub key: SliceKey,
    /// The Service it belongs to (`kubernetes.io/service-name`), in the slice's namespace.
    pub service: Option<String>,
    /// `addressType`; `None` for FQDN (never used for translation).
    pub family: Option<IpFamily>,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: Option<String>,
    /// `None`: every port (only meaningful for selector-less Services of a single port).
    pub port: Option<u16>,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready`; absent = ready, as the API defines it.
    pub ready: bool,
    pub node: Option<String>,
}

/// One endpoint of a Service port: where a connection to the Service may be sent.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Backend {
    pub ip: IpAddr,
    /// The target port (host order).
    pub port: u16,
    /// The pod with that address, when there is one (a selector-less Service may point
    /// anywhere).
    pub pod: Option<PodKey>,
    /// The node the endpoint runs on, when known.
    pub node: Option<String>,
}

impl Service {
    pub fn cluster_ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.cluster_ips
            .iter()
            .copied()
            .find(|ip| IpFamily::of(ip) == family)
    }

    pub fn port(&self, port: u16, protocol: Protocol) -> Option<&ServicePort> {
        self.ports
            .iter()
            .find(|p| p.port == port && p.protocol == protocol)
    }
}

/// What endpoint derivation looks up, indexed once per cluster snapshot (derivation is then
/// proportional to the Service's own pods and slices, not to the cluster). Both indexes are
/// built on first use: only Services without a selector read slices and the pods at their
/// addresses, and a compile that recompiles a few Services with selectors (most changes) pays
/// for neither.
pub struct EndpointIndex<'a> {
    cluster: &'a Cluster,
    pod_by_ip: std::cell::OnceCell<BTreeMap<IpAddr, &'a Pod>>,
    slices_by_service: std::cell::OnceCell<BTreeMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>>,
}

impl<'a> EndpointIndex<'a> {
    pub fn new(cluster: &'a Cluster) -> Self {
        Self {
            cluster,
            pod_by_ip: std::cell::OnceCell::new(),
            slices_by_service: std::cell::OnceCell::new(),
        }
    }

    /// The slices of every Service, by (namespace, Service name).
    fn slices_by_service(&self) -> &BTreeMap<(&'a str, &'a str), Vec<&'a EndpointSlice>> {
        self.slices_by_service.get_or_init(|| {
            let mut by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
            for slice in self.cluster.endpoint_slices.values() {
                if let Some(svc) = &slice.service {
                    by_service
                        .entry((slice.key.namespace.as_str(), svc.as_str()))
                        .or_default()
                        .push(slice);
                }
            }
            by_service
        })
    }

    /// The pod that holds `ip`, if any.
    pub fn pod_with_ip(&self, ip: IpAddr) -> Option<&'a Pod> {
        self.pod_by_ip
            .get_or_init(|| {
                let mut by_ip = BTreeMap::new();
                for pod in self.cluster.pods.values() {
                    for ip in &pod.ips {
                        // The first pod (in key order) keeps an address two pods claim.
                        by_ip.entry(*ip).or_insert(&**pod);
                    }
                }
                by_ip
            })
            .get(&ip)
            .copied()
    }

    /// The endpoints of port `port` of `svc` in `family`, in address order without
    /// duplicates.
    pub fn endpoints(&self, svc: &Service, port: &ServicePort, family: IpFamily) -> Vec<Backend> {
        let mut out = BTreeSet::new();
        match &svc.selector {
            Some(selector) => {
                let namespace = svc.key.namespace.as_str();
                // Keyed by namespace first: a namespace's pods are one range.
                let selected = self
                    .cluster
                    .pods
                    .range(super::PodKey::new(namespace, "")..)
                    .take_while(|(k, _)| k.namespace == namespace)
                    .map(|(_, p)| p)
                    .filter(|p| {
                        p.ready && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                    });
                for pod in selected {
                    let Some(ip) = pod
                        .ips
                        .iter()
                        .copied()
                        .find(|ip| IpFamily::of(ip) == family)
                    else {
                        continue;
                    };
                    let target = match &port.target {
                        TargetPort::Number(n) => Some(*n),
                        TargetPort::Name(name) => pod.named_port(name, port.protocol),
                    };
                    if let Some(t) = target {
                        out.insert(Backend {
                            ip,
                            port: t,
                            pod: Some(pod.key.clone()),
                            node: pod.node.clone(),
                        });
                    }
                }
            }
            None => {
                let slices = self
                    .slices_by_service()
                    .get(&(svc.key.namespace.as_str(), svc.key.name.as_str()))
                    .into_iter()
                    .flatten()
                    .filter(|s| s.family == Some(family));
                for slice in slices {
                    // kube-proxy matches a slice port to the Service port by name and protocol.
                    let Some(t) = slice
                        .ports
                        .iter()
                        .find(|sp| sp.name == port.name && sp.protocol == port.protocol)
                        .and_then(|sp| sp.port)
                    else {
                        continue;
                    };
                    for ep in slice.endpoints.iter().filter(|e| e.ready) {
                        let addrs = ep.addresses.iter().copied();
                        for ip in addrs.filter(|ip| IpFamily::of(ip) == family) {
                            let pod = self.pod_with_ip(ip);
                            out.insert(Backend {
                                ip,
                                port: t,
                                node: ep.node.clone().or_else(|| pod.and_then(|p| p.node.clone())),
                                pod: pod.map(|p| p.key.clone()),
                            });
                        }
                    }
                }
            }
        }
        out.into_iter().collect()
    }
}

/// The endpoints a client on `client_node` may reach: all of them, or under
/// `internalTrafficPolicy: Local` those on the client's node. An endpoint without a node is
/// on every node (standalone manifests name no nodes).
pub fn candidates<'a>(
    svc: &Service,
    endpoints: &'a [Backend],
    client_node: Option<&str>,
) -> Vec<&'a Backend> {
    endpoints
        .iter()
        .filter(|b| match svc.internal_traffic {
            TrafficPolicy::Cluster => true,
            TrafficPolicy::Local => match (b.node.as_deref(), client_node) {
                (Some(b), Some(c)) => b == c,
                _ => true,
            },
        })
        .collect()
}

#[cfg(test)]
mod tests;
