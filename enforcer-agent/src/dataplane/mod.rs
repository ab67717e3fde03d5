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
pub mod layout;
mod links;
mod map_batch;
mod policy_maps;
pub mod quarantine;
mod report;
pub mod services;
mod test_run;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aya::maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::{ProgramError, SchedClassifier};
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
use report::is_not_found;
pub use report::{SyncError, SyncErrorClass, SyncReport};

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
    #[error("the maps pinned under {pin_dir} have a layout this agent does not know, so it adopts nothing and changes nothing (the datapath in force stays as it is): {}. Run the agent version that pinned them, or remove {pin_dir} to start over (pods are unenforced until the new agent attaches)", problems.join("; "))]
    Layout {
        pin_dir: PathBuf,
        problems: Vec<String>,
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
    /// The plan these entries were made from (`None`: not programmed by this agent yet). The
    /// same plan again, with the same identities and rule ids, needs nothing written.
    plan: Option<Arc<crate::compile::EndpointPlan>>,
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
    /// The stable rule ids the endpoints in force were written with (by compiler position).
    last_rule_ids: Vec<u32>,
    /// By ifindex.
    endpoints: BTreeMap<u32, EndpointState>,
    next_ep_id: u32,
    revision: u32,
    /// Entries whose removal failed, by policy set: retried at every sync.
    leftovers: Vec<(u32, PolicyEntries)>,
    rules: entries::RuleIds,
    /// Interfaces without an endpoint that carry the programs (all their traffic dropped),
    /// by ifindex: see [`quarantine`].
    quarantined: BTreeMap<u32, String>,
    quarantine_prefixes: Vec<String>,
    /// The interface names the last quarantine poll saw.
    quarantine_seen: Vec<String>,
}

/// Checks the pinned layouts, then loads `object` with its maps on the pins of `pin_dir`
/// (`sizes`: other sizes for maps not pinned yet) and both programs into the kernel.
fn load_object(pin_dir: &Path, object: &[u8], sizes: &[(&'static str, u32)]) -> Result<Ebpf> {
    bpffs::ensure_dir(pin_dir).map_err(|source| DataplaneError::Bpffs {
        path: pin_dir.into(),
        source,
    })?;
    layout::check(pin_dir, object)?;
    let mut loader = EbpfLoader::new();
    let pins: Vec<(&'static str, PathBuf)> =
        names::ALL.iter().map(|n| (*n, pin_dir.join(n))).collect();
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    for &(name, size) in sizes {
        loader.map_max_entries(name, size);
    }
    let mut ebpf = loader.load(object).map_err(|source| DataplaneError::Load {
        pin_dir: pin_dir.into(),
        source: Box::new(source),
    })?;
    // A map the object names differently would have been pinned by its own name at the
    // root of bpffs, outside `pin_dir`, and shared by every datapath on the machine.
    if let Some(name) = names::ALL.into_iter().find(|n| ebpf.map(n).is_none()) {
        return Err(DataplaneError::MissingMap { name });
    }
    for name in [
        names::programs::POD_EGRESS,
        names::programs::POD_INGRESS,
        names::programs::CT_REMOVE,
    ] {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .expect("the object defines the programs")
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })?;
        prog.load()
            .map_err(|source| DataplaneError::Program { name, source })?;
    }
    Ok(ebpf)
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
        Self::load(pin_dir, BPF_OBJECT, sizes)
    }

    /// Like [`Dataplane::open`], with the programs and maps of another build of
    /// `enforcer-ebpf` than the one built in (`enforcer agent --bpf-object`). Its pinned maps
    /// are checked against its own layout, as the built-in object's would be.
    pub fn open_object(pin_dir: &Path, object: &[u8]) -> Result<Self> {
        Self::load(pin_dir, object, &[])
    }

    /// Loads `object` on the pins of `pin_dir`, takes its maps, and adopts what an earlier
    /// agent left in them.
    fn load(pin_dir: &Path, object: &[u8], sizes: &[(&'static str, u32)]) -> Result<Self> {
        let mut ebpf = load_object(pin_dir, object, sizes)?;
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

        let mut layout_map =
            HashMap::try_from(take(names::LAYOUT)).map_err(map_err(names::LAYOUT, "open"))?;
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
            last_rule_ids: Vec::new(),
            endpoints: BTreeMap::new(),
            next_ep_id: 1,
            revision: 0,
            leftovers: Vec::new(),
            rules: entries::RuleIds::default(),
            quarantined: BTreeMap::new(),
            quarantine_prefixes: Vec::new(),
            quarantine_seen: Vec::new(),
        };
        dp.adopt()?;
        layout::write(&mut layout_map).map_err(map_err(names::LAYOUT, "write"))?;
        for path in layout::sweep(pin_dir) {
            tracing::info!(path = %path.display(), "removed a pin this agent does not use");
        }
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
        // Rule ids in the pinned entries may still be named by events in flight: new ones
        // start above them.
        let largest_rule = by_set
            .values()
            .flat_map(|e| e.exact.values().chain(e.ranges.values()))
            .map(|r| r & !enforcer_common::policy::RULE_DENY)
            .max()
            .unwrap_or(0);
        self.rules = entries::RuleIds::starting_after(largest_rule);
        for (ifindex, info) in eps {
            let entries = by_set.remove(&info.policy_set).unwrap_or_default();
            // This agent's programs go in force on the links it adopts, in place; a pod counts
            // as attached only with both directions live.
            let attached = self.refresh_links(ifindex);
            self.next_ep_id = self.next_ep_id.max(info.ep_id + 1);
            self.endpoints.insert(
                ifindex,
                EndpointState {
                    pod: None,
                    ifname: String::new(),
                    info,
                    entries,
                    attached,
                    plan: None,
                },
            );
        }
        self.adopt_unclaimed_links();
        // Entries of sets no endpoint uses are leftovers of an interrupted update.
        for (set, entries) in by_set {
            self.remove_entries(set, &entries);
        }
        self.revision = self.config.get(&0, 0).map(|c| c.revision).unwrap_or(0);
        Ok(())
    }

    /// The flow-event ring buffer (once: the flow reader owns it).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// The conntrack map (once: the sweeper owns it; see [`ct_sweep`]).
    pub fn take_conntrack(&mut self) -> Option<HashMap<MapData, CtKey, CtEntry>> {
        self.conntrack.take()
    }

    /// The conntrack sweeper's remover program (see [`ct_sweep::Remover`]), on a file
    /// descriptor of its own.
    pub fn remover(&self) -> Result<ct_sweep::Remover> {
        let name = names::programs::CT_REMOVE;
        let fd = self
            .program_fd(name)?
            .try_clone()
            .map_err(|e| DataplaneError::Program {
                name,
                source: aya::programs::ProgramError::SyscallError(aya::sys::SyscallError {
                    call: "dup",
                    io_error: e,
                }),
            })?;
        Ok(ct_sweep::Remover::new(fd))
    }

    /// The NAT maps (once: the conntrack sweeper removes their entries with their
    /// connections).
    pub fn take_nat(&mut self) -> Option<services::NatMaps> {
        self.nat.take()
    }

    /// What each Service frontend id stands for (flow enrichment).
    pub fn frontend_names(&self) -> Arc<BTreeMap<u32, crate::compile::services::FrontendName>> {
        self.services.names().clone()
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
        let ids = self.ids.counts;
        vec![
            (names::ENDPOINTS, self.endpoints.len(), sizes::ENDPOINTS),
            (names::IDENTITY_ADDR, ids.addresses, sizes::IDENTITY),
            (names::IDENTITY_V4, ids.v4, sizes::IDENTITY),
            (names::IDENTITY_V6, ids.v6, sizes::IDENTITY),
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
    ///
    /// The order is what makes every packet see a consistent state: identities before the
    /// entries that name them; each endpoint's complete new entry set before its switch to
    /// it; the revision (which makes tracked connections be re-checked) only after every
    /// entry is in place; stale identities last, once no entry names them.
    pub fn sync(
        &mut self,
        tables: &Tables,
        ifaces: &BTreeMap<PodKey, Iface>,
    ) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        self.retry_leftovers(&mut report);
        let assigned = self.ids.assign(tables);
        // An address whose identity changed (it became or stopped being this node's) changes
        // the entries that name it, whatever plan they come from.
        let ids_moved = assigned
            .differing
            .iter()
            .any(|(net, _)| self.ids.by_prefix.contains_key(net));
        let mut changed = self.add_identities(&assigned.differing, &mut report);
        let (programmed, ep_changed) =
            self.sync_endpoints(tables, ifaces, &assigned.ids, ids_moved, &mut report);
        changed |= ep_changed;
        changed |= self.remove_gone_endpoints(&programmed, &mut report);
        match self.services.sync(&tables.services) {
            Ok(s) => report.services = s,
            Err(e) => report.fail(SyncErrorClass::of(&e), None, &e),
        }
        if changed || report.entries_written > 0 {
            self.bump_revision()?;
        }
        report.identities_removed = self.remove_stale_identities(&assigned.missing);
        self.ids
            .in_force(assigned.ids, assigned.counts, &tables.prefixes);
        report.endpoints = self.endpoints.len();
        report.revision = self.revision;
        Ok(report)
    }

    /// Writes new prefixes and changed ids. One that cannot be written leaves its addresses
    /// unknown to the datapath (matched by no peer rule: fails closed). Returns whether any
    /// was written.
    fn add_identities(&mut self, differing: &[(IpNet, u32)], report: &mut SyncReport) -> bool {
        let mut changed = false;
        for &(net, id) in differing {
            match self.insert_identity(&net, id) {
                Ok(()) => {
                    report.identities_added += 1;
                    changed = true;
                }
                Err(e) => report.fail(SyncErrorClass::of(&e), None, &e),
            }
        }
        changed
    }

    /// Programs each local pod with an interface, each on its own: one that fails keeps its
    /// previous state in force (and is retried at the next sync), the others go on. Returns
    /// the ifindexes of the pods' interfaces and whether any endpoint changed.
    fn sync_endpoints(
        &mut self,
        tables: &Tables,
        ifaces: &BTreeMap<PodKey, Iface>,
        ids: &entries::IdTable,
        ids_moved: bool,
        report: &mut SyncReport,
    ) -> (BTreeSet<u32>, bool) {
        let rule_ids = self.rules.assign(tables);
        let same_ids = !ids_moved && rule_ids == self.last_rule_ids;
        let mut programmed = BTreeSet::new();
        let mut changed = false;
        for (pod, plan) in &tables.endpoints {
            let Some(iface) = ifaces.get(pod) else {
                continue;
            };
            programmed.insert(iface.ifindex);
            // The plan the compiler handed on unchanged: its entries are what is in force.
            let in_force = self.endpoints.get(&iface.ifindex).is_some_and(|s| {
                s.attached
                    && s.pod.as_ref() == Some(pod)
                    && s.ifname == iface.name
                    && s.plan.as_ref().is_some_and(|p| Arc::ptr_eq(p, plan))
            });
            if same_ids && in_force {
                continue;
            }
            let desired = entries::policy_entries_stable(plan, ids, &rule_ids);
            let state = match self.endpoints.remove(&iface.ifindex) {
                Some(s) => s,
                None => self.new_endpoint(iface),
            };
            match self.sync_endpoint(pod, plan, iface, desired, state, report) {
                Ok((mut state, ep_changed)) => {
                    changed |= ep_changed;
                    state.plan = Some(plan.clone());
                    self.endpoints.insert(iface.ifindex, state);
                }
                Err(failure) => {
                    let (state, err) = *failure;
                    report.fail(SyncErrorClass::of(&err), Some(pod), &err);
                    if let Some(state) = state {
                        self.endpoints.insert(iface.ifindex, state);
                    }
                }
            }
        }
        self.last_rule_ids = rule_ids;
        (programmed, changed)
    }

    /// Endpoints that are not in `programmed` any more: detached (or left in quarantine),
    /// then their record and entries removed. A record whose removal fails is kept, so that
    /// it is tried again at the next sync. Returns whether any went.
    fn remove_gone_endpoints(
        &mut self,
        programmed: &BTreeSet<u32>,
        report: &mut SyncReport,
    ) -> bool {
        let gone: Vec<u32> = self
            .endpoints
            .keys()
            .filter(|i| !programmed.contains(i))
            .copied()
            .collect();
        let mut changed = false;
        for ifindex in gone {
            let state = self.endpoints.remove(&ifindex).expect("listed above");
            // Removing the endpoint record first would leave its links dropping everything:
            // what a quarantined interface does, so they stay while it is one.
            if !self.keep_in_quarantine(ifindex, &state.ifname) {
                self.detach(ifindex);
            }
            if let Err(e) = self.endpoints_map.remove(&ifindex) {
                if !is_not_found(&e) {
                    let e = map_err(names::ENDPOINTS, "remove")(e);
                    report.fail(SyncErrorClass::MapDelete, state.pod.as_ref(), &e);
                    self.endpoints.insert(ifindex, state);
                    continue;
                }
            }
            self.remove_entries_tracked(state.info.policy_set, &state.entries, report);
            report.detached.push(if state.ifname.is_empty() {
                ifindex.to_string()
            } else {
                state.ifname
            });
            changed = true;
        }
        changed
    }

    /// A new revision: tracked connections get re-checked against what is now in force.
    fn bump_revision(&mut self) -> Result<()> {
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
            .map_err(map_err(names::CONFIG, "set"))
    }

    /// Removes the prefixes no longer in `ids` (no entry names them any more); returns how
    /// many.
    fn remove_stale_identities(&mut self, stale: &[IpNet]) -> usize {
        for net in stale {
            self.remove_identity(net);
        }
        stale.len()
    }

    /// The rule each stable rule id in the maps stands for (flow attribution).
    /// Stable id -> staged entry (an entry a staged policy would change), for flow records.
    pub fn staged_refs(&self) -> BTreeMap<u32, crate::compile::tables::StagedEntry> {
        self.rules.staged()
    }

    pub fn rule_refs(&self) -> Arc<BTreeMap<u32, crate::compile::tables::RuleRef>> {
        self.rules.rules()
    }

    /// The kernel ids of this agent's two programs (what its links run).
    pub fn program_ids(&self) -> BTreeMap<&'static str, u32> {
        [names::programs::POD_EGRESS, names::programs::POD_INGRESS]
            .into_iter()
            .filter_map(|name| {
                let prog: &SchedClassifier = self.ebpf.program(name)?.try_into().ok()?;
                Some((name, prog.info().ok()?.id()))
            })
            .collect()
    }

    /// Whether both programs are attached to the interface `ifindex`.
    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.endpoints.get(&ifindex).is_some_and(|e| e.attached)
    }
}
