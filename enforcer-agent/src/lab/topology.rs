//! The lab's network: one node namespace and one namespace per pod, joined by veth pairs,
//! routed like a CNI that uses a link-local gateway (Calico/Cilium style):
//!
//! ```text
//!   pod netns                         node netns (forwarding on; node0 or lo: 10.244.0.1, fd00:10:244::1)
//!   eth0 10.244.1.10/32  <--veth-->   lxcN 169.254.1.1/32, fe80::1/64
//!   default via 169.254.1.1           10.244.1.10/32 dev lxcN src 10.244.0.1
//!   default via fe80::1               fd00:10:244:1::10/128 dev lxcN src fd00:10:244::1
//! ```
//!
//! Everything is created with `ip` and owned by [`Topology`], whose `Drop` removes it unless
//! it was [`Topology::detach`]ed (for `lab up`).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::scenario::{Family, PodSpec};
use crate::netns::Netns;

/// The node's own addresses (on the `node0` dummy interface).
pub const NODE_IPV4: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
pub const NODE_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 1);
/// The interface holding the node's addresses (falls back to `lo` without the dummy driver).
pub const NODE_DEVICE: &str = "node0";
/// Gateway addresses every pod routes through (on each host-side veth).
pub const GATEWAY_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const GATEWAY_IPV6: &str = "fe80::1";
/// Prefix of every namespace the lab creates (`lab down --all` removes all of them).
pub const NETNS_PREFIX: &str = "enf-";

pub fn node_netns_name(instance: &str) -> String {
    format!("{NETNS_PREFIX}{instance}-node")
}

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
    /// Host-side interface in the node namespace.
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

/// A built pod with an open handle on its namespace.
#[derive(Debug)]
pub struct LivePod {
    pub state: PodState,
    pub netns: Netns,
}

/// Runs `ip ARGS...`; the error names the command and carries its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs several `ip` commands in one process inside `netns` (`ip -n NS -batch -`).
fn ip_batch(netns: &str, lines: &[String]) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    {
        let mut stdin = child.stdin.take().expect("stdin was piped");
        stdin
            .write_all(lines.join("\n").as_bytes())
            .context("writing ip -batch input")?;
    }
    let out = child.wait_with_output().context("waiting for ip -batch")?;
    if !out.status.success() {
        bail!(
            "ip -n {netns} -batch failed ({}): {}\ncommands:\n  {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            lines.join("\n  ")
        );
    }
    Ok(())
}

/// Sets a sysctl inside a namespace by writing `/proc/sys` from a thread switched into it
/// (net sysctls resolve against the writing thread's namespace).
fn sysctl(netns: &Netns, key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    netns
        .run(|| std::fs::write(&path, value))?
        .with_context(|| format!("setting {key}={value} in {}", netns.path().display()))
}

/// Deletes a named namespace if it exists; errors are reported, not returned (cleanup path).
pub fn delete_netns(name: &str) {
    if crate::netns::named_path(name).exists() {
        if let Err(err) = ip(&["netns", "del", name]) {
            eprintln!("warning: {err:#}");
        }
    }
}

/// All namespaces under /run/netns whose name starts with `prefix`.
pub fn list_netns(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(crate::netns::NETNS_RUN_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// One lab network; removed on drop unless detached.
#[derive(Debug)]
pub struct Topology {
    instance: String,
    node_name: String,
    node: Option<Netns>,
    pods: BTreeMap<String, Arc<LivePod>>,
    next_index: u32,
    armed: bool,
}

impl Topology {
    /// Creates the node namespace. A namespace of the same name left by an earlier run is an
    /// error (run `lab down` first).
    pub fn create(instance: &str) -> anyhow::Result<Self> {
        let node_name = node_netns_name(instance);
        if crate::netns::named_path(&node_name).exists() {
            bail!("network namespace {node_name} already exists; remove it with `enforcer lab down --name {instance}`");
        }
        let mut topo = Self {
            instance: instance.to_owned(),
            node_name: node_name.clone(),
            node: None,
            pods: BTreeMap::new(),
            next_index: 1,
            armed: true,
        };
        ip(&["netns", "add", &node_name])?;
        let node = Netns::open_named(&node_name)?;
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_ra", "0"),
        ] {
            sysctl(&node, key, value)?;
        }
        topo.node = Some(node);
        // Kernels built without the dummy driver get the node addresses on lo instead.
        let node_dev = match ip(&[
            "-n",
            &node_name,
            "link",
            "add",
            NODE_DEVICE,
            "type",
            "dummy",
        ]) {
            Ok(()) => NODE_DEVICE,
            Err(err) => {
                tracing::debug!(error = %err, "no dummy interface; node addresses go on lo");
                "lo"
            }
        };
        ip_batch(
            &node_name,
            &[
                "link set lo up".into(),
                format!("addr add {NODE_IPV4}/32 dev {node_dev}"),
                format!("addr add {NODE_IPV6}/128 dev {node_dev} nodad"),
                format!("link set {node_dev} up"),
            ],
        )
        .with_context(|| format!("setting up node namespace {node_name}"))?;
        Ok(topo)
    }

    /// Re-opens the namespaces of a running lab (from its `state.json`); the result does not
    /// own them (dropping it removes nothing).
    pub fn attach(instance: &str, pods: &[PodState]) -> anyhow::Result<Self> {
        let node_name = node_netns_name(instance);
        let node = Netns::open_named(&node_name)?;
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
            node_name,
            node: Some(node),
            next_index: pods.iter().map(|p| p.index + 1).max().unwrap_or(1),
            pods: map,
            armed: false,
        })
    }

    pub fn node_netns(&self) -> &str {
        &self.node_name
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

    /// Makes the set of pods match `specs`: pods that disappeared (or whose addresses changed)
    /// are removed, new ones are added; pods present before keep their namespace.
    pub fn sync_pods(&mut self, specs: &[PodSpec]) -> anyhow::Result<()> {
        let stale: Vec<String> = self
            .pods
            .iter()
            .filter(|(key, pod)| {
                !specs.iter().any(|s| {
                    &s.key() == *key && s.ipv4 == pod.state.ipv4 && s.ipv6 == pod.state.ipv6
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

    /// Builds one pod: namespace, veth pair, addresses and routes on both sides.
    pub fn add_pod(&mut self, spec: &PodSpec) -> anyhow::Result<()> {
        let index = self.next_index;
        self.next_index += 1;
        let netns_name = pod_netns_name(&self.instance, index);
        let ifname = format!("lxc{index}");
        let key = spec.key();
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
            ifname: ifname.clone(),
            ipv4: spec.ipv4,
            ipv6: spec.ipv6,
        };
        let live = Arc::new(LivePod { state, netns });
        self.pods.insert(key.clone(), live.clone());
        self.configure_pod(&live, spec)
            .with_context(|| format!("building pod {key} in {netns_name}"))
    }

    fn configure_pod(&self, pod: &LivePod, spec: &PodSpec) -> anyhow::Result<()> {
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
        let mut node_cmds = vec![
            format!("link add {ifname} type veth peer name eth0 netns {podns}"),
            format!("addr add {GATEWAY_IPV4}/32 dev {ifname}"),
            format!("addr add {GATEWAY_IPV6}/64 dev {ifname} nodad"),
            format!("link set {ifname} up"),
            format!("route add {}/32 dev {ifname} src {NODE_IPV4}", spec.ipv4),
        ];
        let mut pod_cmds = vec![
            "link set lo up".to_string(),
            format!("addr add {}/32 dev eth0", spec.ipv4),
        ];
        if let Some(v6) = spec.ipv6 {
            node_cmds.push(format!("route add {v6}/128 dev {ifname} src {NODE_IPV6}"));
            pod_cmds.push(format!("addr add {v6}/128 dev eth0 nodad"));
        }
        pod_cmds.extend([
            "link set eth0 up".to_string(),
            format!("route add {GATEWAY_IPV4} dev eth0 scope link"),
            format!("route add default via {GATEWAY_IPV4} dev eth0"),
        ]);
        if spec.ipv6.is_some() {
            pod_cmds.push(format!("route add ::/0 via {GATEWAY_IPV6} dev eth0"));
        }
        ip_batch(&self.node_name, &node_cmds)?;
        ip_batch(podns, &pod_cmds)?;
        Ok(())
    }

    /// Removes one pod: the veth pair first (so nothing lingers in the node namespace even if
    /// something still holds the pod namespace open), then the namespace.
    pub fn remove_pod(&mut self, key: &str) {
        if let Some(pod) = self.pods.remove(key) {
            let _ = ip(&["-n", &self.node_name, "link", "del", &pod.state.ifname]);
            delete_netns(&pod.state.netns);
        }
    }

    /// Removes everything now (idempotent).
    pub fn teardown(&mut self) {
        let keys: Vec<String> = self.pods.keys().cloned().collect();
        for key in keys {
            self.remove_pod(&key);
        }
        self.node = None;
        delete_netns(&self.node_name);
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
