//! The lab's network: the node namespaces ([`crate::nodes`]) and one namespace per pod, each
//! pod joined to its node by a veth pair, routed like a CNI that uses a link-local gateway
//! (Calico/Cilium style):
//!
//! ```text
//!   pod netns                         its node's netns (forwarding on; node address N)
//!   eth0 10.244.1.10/32  <--veth-->   lxcI 169.254.1.1/32, fe80::1/64
//!   default via 169.254.1.1           10.244.1.10/32 dev lxcI src N
//!   default via fe80::1               fd00:10:244:1::10/128 dev lxcI src N6
//!                                     every other node: 10.244.1.10/32 via N dev eth0
//! ```
//!
//! Everything is created with `ip` and owned by [`Topology`], whose `Drop` removes it unless
//! it was [`Topology::detach`]ed (for `lab up`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{bail, Context};
use enforcer_agent::netns::Netns;
use serde::{Deserialize, Serialize};

use crate::iproute::{delete_netns, ip, ip_batch, ip_batch_with, sysctl, NETNS_PREFIX};
use crate::nodes::{self, NodeLayout, NodeSpec, UPLINK};
use crate::placement::DEFAULT_NODE;
use crate::scenario::{Family, PodSpec};

pub use crate::nodes::{node_netns_name, NODE_DEVICE, NODE_IPV4, NODE_IPV6};

/// Gateway addresses every pod routes through (on each host-side veth).
pub const GATEWAY_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const GATEWAY_IPV6: &str = "fe80::1";

pub fn pod_netns_name(instance: &str, index: u32) -> String {
    format!("{NETNS_PREFIX}{instance}-p{index}")
}

/// A pod as built: persisted in `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodState {
    pub namespace: String,
    pub name: String,
    pub index: u32,
    pub netns: String,
    /// The node it runs on.
    #[serde(default = "default_node")]
    pub node: String,
    /// Host-side interface in its node's namespace.
    pub ifname: String,
    pub ipv4: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
}

impl PodState {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn ip(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::IPv4 => Some(IpAddr::V4(self.ipv4)),
            Family::IPv6 => self.ipv6.map(IpAddr::V6),
        }
    }

    pub fn addr(&self, family: Family, port: u16) -> Option<SocketAddr> {
        self.ip(family).map(|ip| SocketAddr::new(ip, port))
    }
}

fn default_node() -> String {
    DEFAULT_NODE.to_owned()
}

/// A built pod with an open handle on its namespace.
#[derive(Debug)]
pub struct LivePod {
    pub state: PodState,
    pub netns: Netns,
}

/// One lab network; removed on drop unless detached.
#[derive(Debug)]
pub struct Topology {
    instance: String,
    layout: NodeLayout,
    pods: BTreeMap<String, Arc<LivePod>>,
    next_index: u32,
    armed: bool,
}

impl Topology {
    /// Today's single node (no fabric); see [`Topology::create_layout`].
    pub fn create(instance: &str) -> anyhow::Result<Self> {
        Self::create_layout(instance, NodeLayout::single(instance))
    }

    /// Creates the fabric (if any) and every node's namespace. A namespace of the same name
    /// left by an earlier run is an error (run `lab down` first).
    pub fn create_layout(instance: &str, layout: NodeLayout) -> anyhow::Result<Self> {
        let names = layout
            .nodes
            .iter()
            .map(|n| n.netns.clone())
            .chain(layout.fabric.clone());
        for name in names {
            if enforcer_agent::netns::named_path(&name).exists() {
                bail!("network namespace {name} already exists; remove it with `enforcer lab down --name {instance}`");
            }
        }
        // Armed from the start: on a failure below, dropping it removes whatever of the layout
        // was created (none of its namespaces existed before, checked above).
        let topo = Self {
            instance: instance.to_owned(),
            layout: layout.clone(),
            pods: BTreeMap::new(),
            next_index: 1,
            armed: true,
        };
        if let Some(fabric) = &layout.fabric {
            nodes::create_fabric(fabric)?;
        }
        for node in &layout.nodes {
            nodes::create_node(node, layout.fabric.as_deref())?;
        }
        Ok(topo)
    }

    /// Re-opens the namespaces of a running lab (from its `state.json`); the result does not
    /// own them (dropping it removes nothing).
    pub fn attach(instance: &str, layout: &NodeLayout, pods: &[PodState]) -> anyhow::Result<Self> {
        for node in &layout.nodes {
            Netns::open_named(&node.netns)
                .with_context(|| format!("opening node {}'s namespace", node.name))?;
        }
        let mut map = BTreeMap::new();
        for pod in pods {
            let netns = Netns::open_named(&pod.netns)?;
            map.insert(
                pod.key(),
                Arc::new(LivePod {
                    state: pod.clone(),
                    netns,
                }),
            );
        }
        Ok(Self {
            instance: instance.to_owned(),
            layout: layout.clone(),
            next_index: pods.iter().map(|p| p.index + 1).max().unwrap_or(1),
            pods: map,
            armed: false,
        })
    }

    /// The first node's namespace (the only one in a single-node lab).
    pub fn node_netns(&self) -> &str {
        &self.layout.nodes[0].netns
    }

    pub fn layout(&self) -> &NodeLayout {
        &self.layout
    }

    pub fn next_index(&self) -> u32 {
        self.next_index
    }

    /// Pods in `namespace/name` order.
    pub fn pods(&self) -> Vec<Arc<LivePod>> {
        self.pods.values().cloned().collect()
    }

    pub fn pod(&self, key: &str) -> Option<&Arc<LivePod>> {
        self.pods.get(key)
    }

    pub fn pod_states(&self) -> Vec<PodState> {
        self.pods.values().map(|p| p.state.clone()).collect()
    }

    /// Makes the set of pods match `specs`: pods that disappeared (or whose addresses or node
    /// changed) are removed, new ones are added; pods present before keep their namespace.
    /// A spec without a node goes to the default node.
    pub fn sync_pods(&mut self, specs: &[PodSpec]) -> anyhow::Result<()> {
        let stale: Vec<String> = self
            .pods
            .iter()
            .filter(|(key, pod)| {
                !specs.iter().any(|s| {
                    &s.key() == *key
                        && s.ipv4 == pod.state.ipv4
                        && s.ipv6 == pod.state.ipv6
                        && s.node.as_deref().unwrap_or(DEFAULT_NODE) == pod.state.node
                })
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            self.remove_pod(&key);
        }
        for spec in specs {
            if !self.pods.contains_key(&spec.key()) {
                self.add_pod(spec)?;
            }
        }
        Ok(())
    }

    /// Builds one pod: namespace, veth pair to its node, addresses and routes on both sides,
    /// and a route to it on every other node.
    pub fn add_pod(&mut self, spec: &PodSpec) -> anyhow::Result<()> {
        let key = spec.key();
        let node_name = spec.node.as_deref().unwrap_or(DEFAULT_NODE);
        let node = self.layout.node(node_name).cloned().with_context(|| {
            format!("pod {key} is placed on node {node_name:?}, which this lab does not have")
        })?;
        let index = self.next_index;
        self.next_index += 1;
        let netns_name = pod_netns_name(&self.instance, index);
        let ifname = format!("lxc{index}");
        ip(&["netns", "add", &netns_name]).with_context(|| format!("creating pod {key}"))?;
        // Own the namespace before configuring it, so a failure below still removes it.
        let netns = match Netns::open_named(&netns_name) {
            Ok(n) => n,
            Err(err) => {
                delete_netns(&netns_name);
                return Err(err.into());
            }
        };
        let state = PodState {
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            index,
            netns: netns_name.clone(),
            node: node.name.clone(),
            ifname: ifname.clone(),
            ipv4: spec.ipv4,
            ipv6: spec.ipv6,
        };
        let live = Arc::new(LivePod { state, netns });
        self.pods.insert(key.clone(), live.clone());
        self.configure_pod(&live, &node)
            .with_context(|| format!("building pod {key} in {netns_name} on node {}", node.name))
    }

    fn configure_pod(&self, pod: &LivePod, node: &NodeSpec) -> anyhow::Result<()> {
        for (key, value) in [
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_ra", "0"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            sysctl(&pod.netns, key, value)?;
        }
        let ifname = &pod.state.ifname;
        let podns = &pod.state.netns;
        let (v4, node_v4, node_v6) = (pod.state.ipv4, node.ipv4, node.ipv6);
        let mut node_cmds = vec![
            format!("link add {ifname} type veth peer name eth0 netns {podns}"),
            format!("addr add {GATEWAY_IPV4}/32 dev {ifname}"),
            format!("addr add {GATEWAY_IPV6}/64 dev {ifname} nodad"),
            format!("link set {ifname} up"),
            format!("route add {v4}/32 dev {ifname} src {node_v4}"),
        ];
        let mut pod_cmds = vec![
            "link set lo up".to_string(),
            format!("addr add {v4}/32 dev eth0"),
        ];
        if let Some(v6) = pod.state.ipv6 {
            node_cmds.push(format!("route add {v6}/128 dev {ifname} src {node_v6}"));
            pod_cmds.push(format!("addr add {v6}/128 dev eth0 nodad"));
        }
        pod_cmds.extend([
            "link set eth0 up".to_string(),
            format!("route add {GATEWAY_IPV4} dev eth0 scope link"),
            format!("route add default via {GATEWAY_IPV4} dev eth0"),
        ]);
        if pod.state.ipv6.is_some() {
            pod_cmds.push(format!("route add ::/0 via {GATEWAY_IPV6} dev eth0"));
        }
        ip_batch(&node.netns, &node_cmds)?;
        ip_batch(podns, &pod_cmds)?;
        // `replace`: an address may come back on another node after its pod was removed.
        let mut remote = vec![format!("route replace {v4}/32 via {node_v4} dev {UPLINK}")];
        if let Some(v6) = pod.state.ipv6 {
            remote.push(format!("route replace {v6}/128 via {node_v6} dev {UPLINK}"));
        }
        for other in self.layout.nodes.iter().filter(|n| n.name != node.name) {
            ip_batch(&other.netns, &remote)
                .with_context(|| format!("routing to the pod from node {}", other.name))?;
        }
        Ok(())
    }

    /// Removes one pod: the veth pair and the other nodes' routes first (so nothing lingers in
    /// the node namespaces even if something still holds the pod namespace open), then the
    /// namespace.
    pub fn remove_pod(&mut self, key: &str) {
        if let Some(pod) = self.pods.remove(key) {
            let st = &pod.state;
            if let Some(node) = self.layout.node(&st.node) {
                let _ = ip(&["-n", &node.netns, "link", "del", &st.ifname]);
            }
            let mut routes = vec![format!("route del {}/32", st.ipv4)];
            if let Some(v6) = st.ipv6 {
                routes.push(format!("route del {v6}/128"));
            }
            for other in self.layout.nodes.iter().filter(|n| n.name != st.node) {
                let _ = ip_batch_with(&other.netns, &routes, true);
            }
            delete_netns(&st.netns);
        }
    }

    /// Removes everything now (idempotent): pods, then nodes, then the fabric.
    pub fn teardown(&mut self) {
        let keys: Vec<String> = self.pods.keys().cloned().collect();
        for key in keys {
            self.remove_pod(&key);
        }
        for node in &self.layout.nodes {
            delete_netns(&node.netns);
        }
        if let Some(fabric) = &self.layout.fabric {
            delete_netns(fabric);
        }
        self.armed = false;
    }

    /// Leaves everything in place when dropped (`lab up`).
    pub fn detach(&mut self) {
        self.armed = false;
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if self.armed {
            self.teardown();
        }
    }
}
