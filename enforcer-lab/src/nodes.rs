//! The lab's nodes: one network namespace per node, and, when there are several nodes or
//! Services, a **fabric** joining them (a bridge in a namespace of its own, like the L2 network
//! kind's nodes share). Pods are routed between nodes directly, kindnet-style without
//! encapsulation: each node has a /32 (/128) route to every remote pod via that pod's node.
//!
//! ```text
//!   node netns enf-<inst>-node.<name>            fabric netns enf-<inst>-fabric
//!   eth0 10.244.0.K/24, fd00:10:244::K/64 <--veth--> vK  --- br0 --- (other nodes)
//!   10.96.0.0/16, fd00:10:96::/48 dev eth0         (Service ranges: the node's own
//!                                                   connections reach its kube-proxy NAT)
//!   <remote pod>/32 via 10.244.0.<its node> dev eth0
//! ```
//!
//! K is 1 for the default node and 2, 3, ... for the others ([`node_index`]). A lab whose only
//! node is the default node and that has no Services is today's layout: `enf-<inst>-node`,
//! the node's addresses 10.244.0.1 / fd00:10:244::1 on a `node0` dummy (or `lo`), no fabric.
//! A single default node with Services keeps its name and gets the fabric for its uplink.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Context;
use enforcer_agent::netns::Netns;
use serde::{Deserialize, Serialize};

use crate::iproute::{ip, ip_batch, sysctl, NETNS_PREFIX};
use crate::kube_proxy::{SERVICE_CIDR_V4, SERVICE_CIDR_V6};
use crate::placement::{node_index, Placement, DEFAULT_NODE};

/// The single node's addresses in today's layout (the default node's in every layout).
pub const NODE_IPV4: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
pub const NODE_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 1);
/// The interface holding a lone node's addresses (falls back to `lo` without the dummy driver).
pub const NODE_DEVICE: &str = "node0";
/// A node's interface on the fabric.
pub const UPLINK: &str = "eth0";
const BRIDGE: &str = "br0";

/// Today's single-node namespace name (also the single default node's with Services).
pub fn node_netns_name(instance: &str) -> String {
    format!("{NETNS_PREFIX}{instance}-node")
}

/// A node's namespace in a lab of several nodes. Node names are DNS labels (no `.`) and
/// instance names have no `.` either, so the name splits back unambiguously.
pub fn cluster_node_netns_name(instance: &str, node: &str) -> String {
    format!("{NETNS_PREFIX}{instance}-node.{node}")
}

pub fn fabric_netns_name(instance: &str) -> String {
    format!("{NETNS_PREFIX}{instance}-fabric")
}

/// One node as built: persisted in `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub name: String,
    pub netns: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// The address index K (10.244.0.K).
    pub index: u8,
}

/// Every node of a lab and whether they share a fabric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLayout {
    pub nodes: Vec<NodeSpec>,
    /// The fabric's namespace; `None` in today's single-node layout.
    pub fabric: Option<String>,
}

impl NodeLayout {
    /// The nodes `placement` needs; `services`: the lab plays kube-proxy (the Service routes
    /// need an uplink, so even a single node gets the fabric).
    pub fn new(instance: &str, placement: &Placement, services: bool) -> Self {
        let single = placement.is_single();
        let names = placement.nodes();
        let nodes = names
            .iter()
            .map(|name| {
                let index = node_index(names, name).expect("every planned node has an index");
                let netns = if single {
                    node_netns_name(instance)
                } else {
                    cluster_node_netns_name(instance, name)
                };
                NodeSpec {
                    name: name.clone(),
                    netns,
                    ipv4: Ipv4Addr::new(10, 244, 0, index),
                    ipv6: Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, u16::from(index)),
                    index,
                }
            })
            .collect();
        Self {
            nodes,
            fabric: (!single || services).then(|| fabric_netns_name(instance)),
        }
    }

    /// The nodes of a lab that takes its cluster from an API (`lab up --kubeconfig`): each
    /// named node gets its own namespace, and the fabric is always there (kube-proxy's
    /// Service routes need an uplink even on one node).
    pub fn named(instance: &str, names: &[String]) -> Self {
        let nodes = names
            .iter()
            .map(|name| {
                let index = node_index(names, name).expect("every listed node has an index");
                NodeSpec {
                    name: name.clone(),
                    netns: cluster_node_netns_name(instance, name),
                    ipv4: Ipv4Addr::new(10, 244, 0, index),
                    ipv6: Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, u16::from(index)),
                    index,
                }
            })
            .collect();
        Self {
            nodes,
            fabric: Some(fabric_netns_name(instance)),
        }
    }

    /// Today's layout: one default node, no fabric.
    pub fn single(instance: &str) -> Self {
        Self {
            nodes: vec![NodeSpec {
                name: DEFAULT_NODE.to_owned(),
                netns: node_netns_name(instance),
                ipv4: NODE_IPV4,
                ipv6: NODE_IPV6,
                index: 1,
            }],
            fabric: None,
        }
    }

    /// One node and no fabric: names, paths and manifests as today.
    pub fn is_single(&self) -> bool {
        self.nodes.len() == 1 && self.nodes[0].name == DEFAULT_NODE
    }

    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// Creates the fabric: a namespace with one bridge (no addresses; IPv6 off, no multicast
/// snooping, no netfilter on bridged frames: it only switches frames between the nodes).
pub fn create_fabric(name: &str) -> anyhow::Result<Netns> {
    ip(&["netns", "add", name])?;
    let ns = Netns::open_named(name)?;
    for (key, value) in [
        ("net.ipv6.conf.all.disable_ipv6", "1"),
        ("net.ipv6.conf.default.disable_ipv6", "1"),
    ] {
        sysctl(&ns, key, value)?;
    }
    // br_netfilter's sysctls exist only where it is built; without them nothing is hooked.
    for key in [
        "net.bridge.bridge-nf-call-iptables",
        "net.bridge.bridge-nf-call-ip6tables",
    ] {
        let _ = sysctl(&ns, key, "0");
    }
    ip_batch(
        name,
        &[
            "link set lo up".into(),
            format!("link add {BRIDGE} type bridge mcast_snooping 0"),
            format!("link set {BRIDGE} up"),
        ],
    )
    .with_context(|| format!("setting up the fabric {name}"))?;
    Ok(ns)
}

/// Creates a node's namespace with forwarding on and its addresses: on the fabric uplink when
/// there is a fabric, else on `node0` (or `lo`) as in today's layout.
pub fn create_node(node: &NodeSpec, fabric: Option<&str>) -> anyhow::Result<Netns> {
    let name = &node.netns;
    ip(&["netns", "add", name])?;
    let ns = Netns::open_named(name)?;
    for (key, value) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
        ("net.ipv6.conf.all.accept_dad", "0"),
        ("net.ipv6.conf.default.accept_dad", "0"),
        ("net.ipv6.conf.default.accept_ra", "0"),
    ] {
        sysctl(&ns, key, value)?;
    }
    let (v4, v6) = (node.ipv4, node.ipv6);
    match fabric {
        Some(fabric) => {
            let port = format!("v{}", node.index);
            ip_batch(
                name,
                &[
                    "link set lo up".into(),
                    format!("link add {UPLINK} type veth peer name {port} netns {fabric}"),
                    format!("addr add {v4}/24 dev {UPLINK}"),
                    format!("addr add {v6}/64 dev {UPLINK} nodad"),
                    format!("link set {UPLINK} up"),
                    format!("route add {SERVICE_CIDR_V4} dev {UPLINK} src {v4}"),
                    format!("route add {SERVICE_CIDR_V6} dev {UPLINK} src {v6}"),
                ],
            )
            .with_context(|| format!("setting up node {} in {name}", node.name))?;
            ip_batch(fabric, &[format!("link set {port} master {BRIDGE} up")])
                .with_context(|| format!("attaching node {} to the fabric", node.name))?;
        }
        None => {
            // Kernels built without the dummy driver get the node addresses on lo instead.
            let dev = match ip(&["-n", name, "link", "add", NODE_DEVICE, "type", "dummy"]) {
                Ok(()) => NODE_DEVICE,
                Err(err) => {
                    tracing::debug!(error = %err, "no dummy interface; node addresses go on lo");
                    "lo"
                }
            };
            ip_batch(
                name,
                &[
                    "link set lo up".into(),
                    format!("addr add {v4}/32 dev {dev}"),
                    format!("addr add {v6}/128 dev {dev} nodad"),
                    format!("link set {dev} up"),
                ],
            )
            .with_context(|| format!("setting up node namespace {name}"))?;
        }
    }
    Ok(ns)
}
