//! The kernel side as the agent sees it: load and pin the programs and maps, attach to pods'
//! host-side veths (tcx), and write the difference between compiled tables and map contents.
//!
//! Update order (so that no packet sees half a policy):
//! 1. new identities (exact addresses and prefixes; fresh ids, referenced by nothing yet);
//! 2. per endpoint: the complete new entry set under its other set id, then one `ENDPOINTS`
//!    write switches set, flags and addresses together, then the old set is deleted;
//! 3. Service frontends and their backends (see [`services`] for their own order);
//! 4. the policy revision is bumped, so tracked connections are re-checked once;
//! 5. stale identity prefixes are removed.
//!
//! Between 1 and 2 an address that moved to a new, more specific prefix has no entries yet:
//! it is denied for that instant, never allowed more than either policy allows.

pub mod bpffs;
pub mod ct_sweep;
pub mod entries;
pub mod interfaces;
pub mod services;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::{
    links::{FdLink, LinkOrder, PinnedLink},
    tc::TcAttachOptions,
    ProgramError, SchedClassifier, TcAttachType,
};
use aya::{Ebpf, EbpfLoader};
use enforcer_common::{
    ct::{CtEntry, CtKey},
    endpoint::EndpointInfo,
    maps as names,
    policy::{Config, PolicyKey},
    reason::counter,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::compile::tables::Tables;
use crate::model::PodKey;
use entries::{Identities, PolicyEntries};
pub use interfaces::Iface;

/// The `IDENTITY_ADDR` key of a /32 or /128 prefix (IPv4-mapped for IPv4).
fn exact_addr(net: &IpNet) -> Option<[u8; 16]> {
    match net {
        IpNet::V4(n) if n.prefix_len() == 32 => Some(n.addr().to_ipv6_mapped().octets()),
        IpNet::V6(n) if n.prefix_len() == 128 => Some(n.addr().octets()),
        _ => None,
    }
}

/// The kernel object, built by the one eBPF build step (see xtask).
pub static BPF_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/enforcer.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("preparing bpffs at {path}")]
    Bpffs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF object (pins under {pin_dir})")]
    Load {
        pin_dir: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("the eBPF object has no map {name} (its name in enforcer-ebpf and enforcer_common::maps differ)")]
    MissingMap { name: &'static str },
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map {name}: {op}")]
    Map {
        name: &'static str,
        op: &'static str,
        #[source]
        source: MapError,
    },
    #[error("attaching {program} to {ifname}")]
    Attach {
        program: &'static str,
        ifname: String,
        #[source]
        source: ProgramError,
    },
    #[error("pinning the {program} link of {ifname} at {path}")]
    PinLink {
        program: &'static str,
        ifname: String,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

type Result<T> = std::result::Result<T, DataplaneError>;

fn map_err(name: &'static str, op: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, op, source }
}

/// What one endpoint looks like in the maps.
#[derive(Debug, Clone)]
struct EndpointState {
    pod: Option<PodKey>,
    ifname: String,
    info: EndpointInfo,
    entries: PolicyEntries,
    attached: bool,
}

/// What `sync` did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SyncReport {
    pub identities_added: usize,
    pub identities_removed: usize,
    pub entries_written: usize,
    pub entries_removed: usize,
    pub endpoints: usize,
    pub attached: Vec<String>,
    pub detached: Vec<String>,
    pub revision: u32,
    pub services: services::ServiceSync,
}

pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    endpoints_map: HashMap<MapData, u32, EndpointInfo>,
    id_addr: HashMap<MapData, [u8; 16], u32>,
    id_v4: LpmTrie<MapData, [u8; 4], u32>,
    id_v6: LpmTrie<MapData, [u8; 16], u32>,
    policy_exact: HashMap<MapData, PolicyKey, u32>,
    policy_ranges: LpmTrie<MapData, PolicyKey, u32>,
    config: Array<MapData, Config>,
    counters: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    conntrack: Option<HashMap<MapData, CtKey, CtEntry>>,
    nat: Option<services::NatMaps>,
    services: services::ServiceMaps,
    ids: Identities,
    /// By ifindex.
    endpoints: BTreeMap<u32, EndpointState>,
    next_ep_id: u32,
    revision: u32,
}

impl Dataplane {
    /// Loads the programs with every map pinned under `pin_dir` (reusing pins that exist, so a
    /// restarted agent adopts the datapath in force) and reads back what the maps hold.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        Self::open_with_sizes(pin_dir, &[])
    }

    /// Like [`Dataplane::open`], with other sizes for some maps (by name): tests use tiny
    /// conntrack and fragment maps to check what happens when they are full. Sizes only apply
    /// to maps that are not pinned yet.
    pub fn open_with_sizes(pin_dir: &Path, sizes: &[(&'static str, u32)]) -> Result<Self> {
        bpffs::ensure_dir(pin_dir).map_err(|source| DataplaneError::Bpffs {
            path: pin_dir.into(),
            source,
        })?;
        let mut loader = EbpfLoader::new();
        let pins: Vec<(&'static str, PathBuf)> =
            names::ALL.iter().map(|n| (*n, pin_dir.join(n))).collect();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        for &(name, size) in sizes {
            loader.map_max_entries(name, size);
        }
        let mut ebpf = loader
            .load(BPF_OBJECT)
            .map_err(|source| DataplaneError::Load {
                pin_dir: pin_dir.into(),
                source: Box::new(source),
            })?;
        // A map the object names differently would have been pinned by its own name at the
        // root of bpffs, outside `pin_dir`, and shared by every datapath on the machine.
        if let Some(name) = names::ALL.into_iter().find(|n| ebpf.map(n).is_none()) {
            return Err(DataplaneError::MissingMap { name });
        }
        for name in [names::programs::POD_EGRESS, names::programs::POD_INGRESS] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .expect("the object defines both programs")
                .try_into()
                .map_err(|source| DataplaneError::Program { name, source })?;
            prog.load()
                .map_err(|source| DataplaneError::Program { name, source })?;
        }
        let mut take = |name: &'static str| {
            ebpf.take_map(name)
                .expect("the object defines every map in names::ALL")
        };
        let endpoints_map =
            HashMap::try_from(take(names::ENDPOINTS)).map_err(map_err(names::ENDPOINTS, "open"))?;
        let id_addr = HashMap::try_from(take(names::IDENTITY_ADDR))
            .map_err(map_err(names::IDENTITY_ADDR, "open"))?;
        let id_v4 = LpmTrie::try_from(take(names::IDENTITY_V4))
            .map_err(map_err(names::IDENTITY_V4, "open"))?;
        let id_v6 = LpmTrie::try_from(take(names::IDENTITY_V6))
            .map_err(map_err(names::IDENTITY_V6, "open"))?;
        let policy_exact = HashMap::try_from(take(names::POLICY_EXACT))
            .map_err(map_err(names::POLICY_EXACT, "open"))?;
        let policy_ranges = LpmTrie::try_from(take(names::POLICY_RANGES))
            .map_err(map_err(names::POLICY_RANGES, "open"))?;
        let config =
            Array::try_from(take(names::CONFIG)).map_err(map_err(names::CONFIG, "open"))?;
        let counters = PerCpuArray::try_from(take(names::COUNTERS))
            .map_err(map_err(names::COUNTERS, "open"))?;
        let events = RingBuf::try_from(take(names::FLOW_EVENTS))
            .map_err(map_err(names::FLOW_EVENTS, "open"))?;
        let conntrack =
            HashMap::try_from(take(names::CONNTRACK)).map_err(map_err(names::CONNTRACK, "open"))?;
        let nat = services::NatMaps {
            fwd: HashMap::try_from(take(names::NAT_FWD))
                .map_err(map_err(names::NAT_FWD, "open"))?,
            rev: HashMap::try_from(take(names::NAT_REV))
                .map_err(map_err(names::NAT_REV, "open"))?,
        };
        let service_maps = services::ServiceMaps::adopt(
            HashMap::try_from(take(names::SVC_FRONTENDS))
                .map_err(map_err(names::SVC_FRONTENDS, "open"))?,
            HashMap::try_from(take(names::SVC_BACKENDS))
                .map_err(map_err(names::SVC_BACKENDS, "open"))?,
            HashMap::try_from(take(names::SVC_MEMBERS))
                .map_err(map_err(names::SVC_MEMBERS, "open"))?,
        )?;

        let mut dp = Dataplane {
            ebpf,
            pin_dir: pin_dir.into(),
            endpoints_map,
            id_addr,
            id_v4,
            id_v6,
            policy_exact,
            policy_ranges,
            config,
            counters,
            events: Some(events),
            conntrack: Some(conntrack),
            nat: Some(nat),
            services: service_maps,
            ids: Identities::default(),
            endpoints: BTreeMap::new(),
            next_ep_id: 1,
            revision: 0,
        };
        dp.adopt()?;
        Ok(dp)
    }

    /// Reads the pinned state left by an earlier agent.
    fn adopt(&mut self) -> Result<()> {
        let mut existing = BTreeMap::new();
        for item in self.id_v4.iter() {
            let (k, id) = item.map_err(map_err(names::IDENTITY_V4, "read"))?;
            if let Ok(net) = Ipv4Net::new(Ipv4Addr::from(k.data()), k.prefix_len() as u8) {
                existing.insert(IpNet::V4(net), id);
            }
        }
        for item in self.id_v6.iter() {
            let (k, id) = item.map_err(map_err(names::IDENTITY_V6, "read"))?;
            if let Ok(net) = Ipv6Net::new(Ipv6Addr::from(k.data()), k.prefix_len() as u8) {
                existing.insert(IpNet::V6(net), id);
            }
        }
        for item in self.id_addr.iter() {
            let (a, id) = item.map_err(map_err(names::IDENTITY_ADDR, "read"))?;
            let ip = Ipv6Addr::from(a);
            let net = match ip.to_ipv4_mapped() {
                Some(v4) => IpNet::V4(Ipv4Net::from(v4)),
                None => IpNet::V6(Ipv6Net::from(ip)),
            };
            existing.insert(net, id);
        }
        self.ids = Identities::adopt(existing);
        let mut by_set: BTreeMap<u32, PolicyEntries> = BTreeMap::new();
        for item in self.policy_exact.iter() {
            let (mut key, rule) = item.map_err(map_err(names::POLICY_EXACT, "read"))?;
            let set = u32::from_be_bytes(key.set);
            key.set = [0; 4];
            by_set.entry(set).or_default().exact.insert(key, rule);
        }
        for item in self.policy_ranges.iter() {
            let (k, rule) = item.map_err(map_err(names::POLICY_RANGES, "read"))?;
            let mut key = k.data();
            let set = u32::from_be_bytes(key.set);
            key.set = [0; 4];
            by_set
                .entry(set)
                .or_default()
                .ranges
                .insert((k.prefix_len(), key), rule);
        }
        let mut eps = Vec::new();
        for item in self.endpoints_map.iter() {
            eps.push(item.map_err(map_err(names::ENDPOINTS, "read"))?);
        }
        for (ifindex, info) in eps {
            let entries = by_set.remove(&info.policy_set).unwrap_or_default();
            let attached = self
                .link_path(ifindex, names::programs::POD_EGRESS)
                .exists();
            self.next_ep_id = self.next_ep_id.max(info.ep_id + 1);
            self.endpoints.insert(
                ifindex,
                EndpointState {
                    pod: None,
                    ifname: String::new(),
                    info,
                    entries,
                    attached,
                },
            );
        }
        // Entries of sets no endpoint uses are leftovers of an interrupted update.
        for (set, entries) in by_set {
            self.remove_entries(set, &entries);
        }
        self.revision = self.config.get(&0, 0).map(|c| c.revision).unwrap_or(0);
        Ok(())
    }

    fn link_path(&self, ifindex: u32, program: &str) -> PathBuf {
        self.pin_dir
            .join("links")
            .join(format!("{ifindex}-{program}"))
    }

    /// The flow-event ring buffer (once: the flow reader owns it).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// The conntrack map (once: the sweeper owns it; see [`ct_sweep`]).
    pub fn take_conntrack(&mut self) -> Option<HashMap<MapData, CtKey, CtEntry>> {
        self.conntrack.take()
    }

    /// The NAT maps (once: the conntrack sweeper removes their entries with their
    /// connections).
    pub fn take_nat(&mut self) -> Option<services::NatMaps> {
        self.nat.take()
    }

    /// What each Service frontend id stands for (flow enrichment).
    pub fn frontend_names(&self) -> &BTreeMap<u32, services::FrontendName> {
        self.services.names()
    }

    /// The counters summed over CPUs, by `enforcer_common::reason::counter` index.
    pub fn counters(&self) -> Vec<u64> {
        (0..counter::LEN)
            .map(|i| {
                self.counters
                    .get(&i, 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0)
            })
            .collect()
    }

    pub fn revision(&self) -> u32 {
        self.revision
    }

    /// Entries the agent keeps in each map it writes, with the map's size: (name, entries, max).
    pub fn map_usage(&self) -> Vec<(&'static str, usize, u32)> {
        use enforcer_common::maps::sizes;
        let (mut exact, mut ranges) = (0, 0);
        for e in self.endpoints.values() {
            exact += e.entries.exact.len();
            ranges += e.entries.ranges.len();
        }
        let addrs = self
            .ids
            .by_prefix
            .keys()
            .filter(|n| n.prefix_len() == n.max_prefix_len())
            .count();
        vec![
            (names::ENDPOINTS, self.endpoints.len(), sizes::ENDPOINTS),
            (names::IDENTITY_ADDR, addrs, sizes::IDENTITY),
            (
                names::IDENTITY_V4,
                self.ids
                    .by_prefix
                    .keys()
                    .filter(|n| matches!(n, IpNet::V4(v) if v.prefix_len() < 32))
                    .count(),
                sizes::IDENTITY,
            ),
            (
                names::IDENTITY_V6,
                self.ids
                    .by_prefix
                    .keys()
                    .filter(|n| matches!(n, IpNet::V6(v) if v.prefix_len() < 128))
                    .count(),
                sizes::IDENTITY,
            ),
            (names::POLICY_EXACT, exact, sizes::POLICY_EXACT),
            (names::POLICY_RANGES, ranges, sizes::POLICY_RANGES),
            (
                names::SVC_FRONTENDS,
                self.services.len(),
                sizes::SVC_FRONTENDS,
            ),
        ]
    }

    /// The endpoint id and pod of every endpoint, for flow enrichment.
    pub fn endpoint_pods(&self) -> BTreeMap<u32, (PodKey, String)> {
        self.endpoints
            .values()
            .filter_map(|e| Some((e.info.ep_id, (e.pod.clone()?, e.ifname.clone()))))
            .collect()
    }

    /// Makes the maps and attachments match `tables` for the local pods whose interfaces are
    /// known (`ifaces`). Pods without an interface are left out (reported as pending by the
    /// caller) and picked up by a later sync.
    pub fn sync(
        &mut self,
        tables: &Tables,
        ifaces: &BTreeMap<PodKey, Iface>,
    ) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        let mut changed = false;

        // 1. identities: add new prefixes and changed ids.
        let ids = self.ids.assign(tables);
        for (net, &id) in &ids {
            if self.ids.by_prefix.get(net) != Some(&id) {
                self.insert_identity(net, id)?;
                report.identities_added += 1;
                changed = true;
            }
        }

        // 2. endpoints.
        let mut keep = BTreeMap::new();
        for (pod, plan) in &tables.endpoints {
            let Some(iface) = ifaces.get(pod) else {
                continue;
            };
            keep.insert(iface.ifindex, ());
            let desired = entries::policy_entries(plan, &ids);
            let state = match self.endpoints.remove(&iface.ifindex) {
                Some(s) => s,
                None => {
                    let ep_id = self.next_ep_id;
                    self.next_ep_id += 1;
                    EndpointState {
                        pod: None,
                        ifname: iface.name.clone(),
                        // Parity 1 "in force" with no entries: the first write goes to parity 0.
                        info: EndpointInfo {
                            ep_id,
                            policy_set: entries::set_id(ep_id, 1),
                            ..Default::default()
                        },
                        entries: PolicyEntries::default(),
                        attached: false,
                    }
                }
            };
            let mut state = state;
            state.pod = Some(pod.clone());
            state.ifname = iface.name.clone();
            let ep_id = state.info.ep_id;
            let mut set = state.info.policy_set;
            let entries_changed = desired != state.entries || !state.attached;
            if entries_changed {
                set = entries::set_id(ep_id, set ^ 1);
                self.write_entries(set, &desired)?;
                report.entries_written += desired.len();
            }
            let info = entries::endpoint_info(plan, &desired, ep_id, set);
            if info != state.info || !state.attached {
                self.endpoints_map
                    .insert(iface.ifindex, info, 0)
                    .map_err(map_err(names::ENDPOINTS, "insert"))?;
                changed = true;
            }
            if entries_changed {
                let old_set = state.info.policy_set;
                report.entries_removed += self.remove_entries(old_set, &state.entries);
            }
            state.info = info;
            state.entries = desired;
            if !state.attached {
                self.attach(iface)?;
                state.attached = true;
                report.attached.push(iface.name.clone());
            }
            self.endpoints.insert(iface.ifindex, state);
        }

        // Endpoints that are gone: detach, then forget their record and entries.
        let gone: Vec<u32> = self
            .endpoints
            .keys()
            .filter(|i| !keep.contains_key(i))
            .copied()
            .collect();
        for ifindex in gone {
            let state = self.endpoints.remove(&ifindex).expect("listed above");
            self.detach(ifindex);
            let _ = self.endpoints_map.remove(&ifindex);
            report.entries_removed += self.remove_entries(state.info.policy_set, &state.entries);
            report.detached.push(if state.ifname.is_empty() {
                ifindex.to_string()
            } else {
                state.ifname
            });
            changed = true;
        }

        // 3. Service frontends.
        report.services = self.services.sync(&tables.services)?;

        // 4. revision: tracked connections get re-checked against what is now in force.
        if changed || report.entries_written > 0 {
            self.revision = self.revision.wrapping_add(1);
            self.config
                .set(
                    0,
                    Config {
                        revision: self.revision,
                        flags: 0,
                    },
                    0,
                )
                .map_err(map_err(names::CONFIG, "set"))?;
        }

        // 5. stale prefixes.
        let stale: Vec<IpNet> = self
            .ids
            .by_prefix
            .keys()
            .filter(|n| !ids.contains_key(n))
            .copied()
            .collect();
        for net in &stale {
            self.remove_identity(net);
        }
        report.identities_removed = stale.len();
        self.ids.by_prefix = ids;
        report.endpoints = self.endpoints.len();
        report.revision = self.revision;
        Ok(report)
    }

    /// Exact addresses go to the hash map, shorter prefixes to the family's trie.
    fn insert_identity(&mut self, net: &IpNet, id: u32) -> Result<()> {
        if let Some(addr) = exact_addr(net) {
            return self
                .id_addr
                .insert(addr, id, 0)
                .map_err(map_err(names::IDENTITY_ADDR, "insert"));
        }
        match net {
            IpNet::V4(n) => self
                .id_v4
                .insert(
                    &Key::new(n.prefix_len() as u32, n.network().octets()),
                    id,
                    0,
                )
                .map_err(map_err(names::IDENTITY_V4, "insert")),
            IpNet::V6(n) => self
                .id_v6
                .insert(
                    &Key::new(n.prefix_len() as u32, n.network().octets()),
                    id,
                    0,
                )
                .map_err(map_err(names::IDENTITY_V6, "insert")),
        }
    }

    fn remove_identity(&mut self, net: &IpNet) {
        if let Some(addr) = exact_addr(net) {
            let _ = self.id_addr.remove(&addr);
            return;
        }
        let _ = match net {
            IpNet::V4(n) => self
                .id_v4
                .remove(&Key::new(n.prefix_len() as u32, n.network().octets())),
            IpNet::V6(n) => self
                .id_v6
                .remove(&Key::new(n.prefix_len() as u32, n.network().octets())),
        };
    }

    fn write_entries(&mut self, set: u32, entries: &PolicyEntries) -> Result<()> {
        for (&key, &rule) in &entries.exact {
            let key = PolicyKey {
                set: set.to_be_bytes(),
                ..key
            };
            self.policy_exact
                .insert(key, rule, 0)
                .map_err(map_err(names::POLICY_EXACT, "insert"))?;
        }
        for (&(len, key), &rule) in &entries.ranges {
            let key = PolicyKey {
                set: set.to_be_bytes(),
                ..key
            };
            self.policy_ranges
                .insert(&Key::new(len, key), rule, 0)
                .map_err(map_err(names::POLICY_RANGES, "insert"))?;
        }
        Ok(())
    }

    fn remove_entries(&mut self, set: u32, entries: &PolicyEntries) -> usize {
        for &key in entries.exact.keys() {
            let _ = self.policy_exact.remove(&PolicyKey {
                set: set.to_be_bytes(),
                ..key
            });
        }
        for &(len, key) in entries.ranges.keys() {
            let key = PolicyKey {
                set: set.to_be_bytes(),
                ..key
            };
            let _ = self.policy_ranges.remove(&Key::new(len, key));
        }
        entries.len()
    }

    /// Attaches both programs to a host-side veth and pins the links, so the datapath stays
    /// in force when the agent exits.
    fn attach(&mut self, iface: &Iface) -> Result<()> {
        std::fs::create_dir_all(self.pin_dir.join("links")).map_err(|source| {
            DataplaneError::Bpffs {
                path: self.pin_dir.join("links"),
                source,
            }
        })?;
        for (program, hook) in [
            (names::programs::POD_EGRESS, TcAttachType::Ingress),
            (names::programs::POD_INGRESS, TcAttachType::Egress),
        ] {
            let path = self.link_path(iface.ifindex, program);
            if path.exists() {
                // A pinned link of an earlier agent (or an earlier interface with this index):
                // replace it so the current program is the one in force.
                if let Ok(old) = PinnedLink::from_pin(&path) {
                    let _ = old.unpin();
                }
            }
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(program)
                .expect("loaded in open")
                .try_into()
                .map_err(|source| DataplaneError::Program {
                    name: program,
                    source,
                })?;
            let id = prog
                .attach_with_options(
                    &iface.name,
                    hook,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|source| DataplaneError::Attach {
                    program,
                    ifname: iface.name.clone(),
                    source,
                })?;
            let link = prog
                .take_link(id)
                .map_err(|source| DataplaneError::Attach {
                    program,
                    ifname: iface.name.clone(),
                    source,
                })?;
            let fd: FdLink = link
                .try_into()
                .map_err(
                    |e: aya::programs::links::LinkError| DataplaneError::PinLink {
                        program,
                        ifname: iface.name.clone(),
                        path: path.clone(),
                        source: Box::new(e),
                    },
                )?;
            fd.pin(&path).map_err(|e| DataplaneError::PinLink {
                program,
                ifname: iface.name.clone(),
                path: path.clone(),
                source: Box::new(e),
            })?;
        }
        Ok(())
    }

    /// Detaches from an interface (which may already be gone, taking its links with it).
    fn detach(&mut self, ifindex: u32) {
        for program in [names::programs::POD_EGRESS, names::programs::POD_INGRESS] {
            let path = self.link_path(ifindex, program);
            if let Ok(link) = PinnedLink::from_pin(&path) {
                // Unpinning drops the last reference: the kernel detaches the program.
                let _ = link.unpin();
            }
        }
    }

    /// Looks up the identity the kernel would find for an address (tests, explain).
    pub fn identity_of(&self, ip: IpAddr) -> Option<u32> {
        if let Ok(id) = self
            .id_addr
            .get(&exact_addr(&IpNet::from(ip)).expect("a host prefix"), 0)
        {
            return Some(id);
        }
        match ip {
            IpAddr::V4(a) => self.id_v4.get(&Key::new(32, a.octets()), 0).ok(),
            IpAddr::V6(a) => self.id_v6.get(&Key::new(128, a.octets()), 0).ok(),
        }
    }

    /// The loaded program, for test runs and benchmarks.
    pub fn program(&self, name: &str) -> Option<&SchedClassifier> {
        self.ebpf.program(name).and_then(|p| p.try_into().ok())
    }

    /// Writes an endpoint record for an arbitrary ifindex without attaching (test runs use the
    /// loopback's ifindex 1, where `BPF_PROG_TEST_RUN` runs packets).
    pub fn sync_for_test_run(
        &mut self,
        tables: &Tables,
        pod: &PodKey,
        ifindex: u32,
    ) -> Result<SyncReport> {
        let ifaces = BTreeMap::from([(
            pod.clone(),
            Iface {
                name: String::from("lo"),
                ifindex,
            },
        )]);
        // Mark as attached so sync does not try to attach to the loopback.
        if let Some(s) = self.endpoints.get_mut(&ifindex) {
            s.attached = true;
        } else {
            let ep_id = self.next_ep_id;
            self.next_ep_id += 1;
            self.endpoints.insert(
                ifindex,
                EndpointState {
                    pod: Some(pod.clone()),
                    ifname: "lo".into(),
                    info: EndpointInfo {
                        ep_id,
                        policy_set: entries::set_id(ep_id, 1),
                        ..Default::default()
                    },
                    entries: PolicyEntries::default(),
                    attached: true,
                },
            );
        }
        self.sync(tables, &ifaces)
    }
}
