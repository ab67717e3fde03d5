//! The Service maps as the agent sees them: frontends and their backend sets (written by the
//! agent), and the NAT entries of translated connections (written by the programs, removed by
//! the conntrack sweeper with their connection).
//!
//! Update order, per frontend (so that no connection sees half a backend list): the new list
//! is written under a fresh backend set, then one `SVC_FRONTENDS` write switches the frontend
//! to it (with its count), then the old set is deleted. A frontend that goes is deleted before
//! its set. Frontend ids are kept for as long as the agent runs and never reused, so that an
//! event still in flight names the Service it was about.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};

use aya::maps::{HashMap, MapData, MapError};
use enforcer_common::ct::{CtEntry, CtKey, CT_F_ORIG_LO, CT_F_SERVICE};
use enforcer_common::maps as names;
use enforcer_common::service::{
    BackendAddr, BackendKey, Frontend, FrontendKey, MemberKey, NatEntry, NatKey, FE_F_AFFINITY,
};

use super::{map_err, Result};
use crate::compile::services::{FrontendAddr, FrontendName, FrontendPlan, Frontends};
use imbl::ordmap::DiffItem;
use std::sync::Arc;

/// The 16-byte form of an address (IPv4-mapped for IPv4), as the maps hold it.
pub fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The address of a 16-byte map address.
pub fn addr_of(a: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(a);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

pub fn frontend_key(f: &FrontendAddr) -> FrontendKey {
    FrontendKey {
        addr: addr16(f.ip),
        port: f.port.to_be(),
        proto: f.proto.to_kernel(),
        _pad: 0,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FrontendState {
    id: u32,
    set: u32,
    backends: Vec<BackendAddr>,
    /// Affinity timeout (seconds); the set's members are in `SVC_MEMBERS` when set.
    affinity: Option<u32>,
}

/// What a sync of the Service maps did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServiceSync {
    pub frontends: usize,
    pub frontends_written: usize,
    pub frontends_removed: usize,
    pub backends_written: usize,
    /// Backends of UDP frontends that this sync removed: their flows are to be flushed
    /// ([`NatMaps::flush`]).
    #[serde(skip)]
    pub gone_udp_backends: Vec<GoneBackend>,
}

/// A backend that left a frontend: (frontend id, address, target port in network order).
pub type GoneBackend = (u32, [u8; 16], u16);

/// Each frontend's id, backends and affinity, as `ServiceMaps::sync` wants them.
type Desired = BTreeMap<FrontendKey, (u32, Vec<BackendAddr>, Option<u32>)>;

pub struct ServiceMaps {
    frontends: HashMap<MapData, FrontendKey, Frontend>,
    backends: HashMap<MapData, BackendKey, BackendAddr>,
    members: HashMap<MapData, MemberKey, u32>,
    state: BTreeMap<FrontendKey, FrontendState>,
    /// Every id handed out while this agent runs (removed frontends included); shared with
    /// the flow enrichment, copied only when it changes.
    names: Arc<BTreeMap<u32, FrontendName>>,
    ids: BTreeMap<FrontendKey, u32>,
    next_id: u32,
    next_set: u32,
    /// The plans the maps were last made to hold: the next sync writes the difference to them
    /// (`None` after an adoption or a failed sync: it compares every frontend).
    last: Option<Frontends>,
}

impl ServiceMaps {
    /// Opens the maps and adopts what an earlier agent left in them.
    pub fn adopt(
        frontends: HashMap<MapData, FrontendKey, Frontend>,
        backends: HashMap<MapData, BackendKey, BackendAddr>,
        members: HashMap<MapData, MemberKey, u32>,
    ) -> Result<Self> {
        let mut all_backends: BTreeMap<BackendKey, BackendAddr> = BTreeMap::new();
        for item in backends.iter() {
            let (k, v) = item.map_err(map_err(names::SVC_BACKENDS, "read"))?;
            all_backends.insert(k, v);
        }
        let mut state = BTreeMap::new();
        let (mut next_id, mut next_set) = (1, 1);
        for item in frontends.iter() {
            let (k, fe) = item.map_err(map_err(names::SVC_FRONTENDS, "read"))?;
            let list = (0..fe.count)
                .filter_map(|index| {
                    all_backends
                        .get(&BackendKey {
                            set: fe.backend_set,
                            index,
                        })
                        .copied()
                })
                .collect();
            next_id = next_id.max(fe.id + 1);
            next_set = next_set.max(fe.backend_set + 1);
            state.insert(
                k,
                FrontendState {
                    id: fe.id,
                    set: fe.backend_set,
                    backends: list,
                    affinity: (fe.flags & FE_F_AFFINITY != 0).then_some(fe.affinity_s),
                },
            );
        }
        let mut all_members = Vec::new();
        for item in members.iter() {
            let (k, _) = item.map_err(map_err(names::SVC_MEMBERS, "read"))?;
            all_members.push(k);
        }
        let ids = state.iter().map(|(k, s)| (*k, s.id)).collect();
        let mut maps = Self {
            frontends,
            backends,
            members,
            state,
            names: Arc::default(),
            ids,
            next_id,
            next_set,
            last: None,
        };
        // Backends of sets no frontend uses are leftovers of an interrupted update.
        let in_use: std::collections::BTreeSet<u32> = maps.state.values().map(|s| s.set).collect();
        for k in all_backends.keys().filter(|k| !in_use.contains(&k.set)) {
            let _ = maps.backends.remove(k);
        }
        for k in all_members.iter().filter(|k| !in_use.contains(&k.set)) {
            let _ = maps.members.remove(k);
        }
        Ok(maps)
    }

    /// The Service each frontend id stands for.
    pub fn names(&self) -> &Arc<BTreeMap<u32, FrontendName>> {
        &self.names
    }

    /// Frontends in the map.
    pub fn len(&self) -> usize {
        self.state.len()
    }

    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    /// Makes the maps hold exactly `plans`: each changed frontend gets a complete new backend
    /// set before its frontend entry switches to it (a packet sees the old set or the new one),
    /// then the old set and the frontends that are gone are removed.
    pub fn sync(&mut self, plans: &Frontends) -> Result<ServiceSync> {
        let result = match self.last.take() {
            Some(last) => self.sync_difference(&last, plans),
            None => self.sync_all(plans),
        };
        if result.is_ok() {
            self.last = Some(plans.clone());
        }
        result
    }

    /// [`Self::sync`] by every frontend.
    fn sync_all(&mut self, plans: &Frontends) -> Result<ServiceSync> {
        let mut report = ServiceSync::default();
        let mut desired = Desired::new();
        for (addr, plan) in plans {
            let (key, wanted) = self.desired(addr, plan);
            desired.insert(key, wanted);
        }
        for (key, (id, backends, affinity)) in &desired {
            self.write_if_changed(key, *id, backends, *affinity, &mut report)?;
        }
        self.remove_gone(&desired, &mut report);
        report.frontends = self.state.len();
        Ok(report)
    }

    /// [`Self::sync`] by the frontends that differ from those last synced (what the two plan
    /// maps share is not looked at).
    fn sync_difference(&mut self, last: &Frontends, plans: &Frontends) -> Result<ServiceSync> {
        let mut report = ServiceSync::default();
        for change in last.diff(plans) {
            match change {
                DiffItem::Add(addr, plan)
                | DiffItem::Update {
                    new: (addr, plan), ..
                } => {
                    let (key, (id, backends, affinity)) = self.desired(addr, plan);
                    self.write_if_changed(&key, id, &backends, affinity, &mut report)?;
                }
                DiffItem::Remove(addr, _) => self.remove_frontend(frontend_key(addr), &mut report),
            }
        }
        report.frontends = self.state.len();
        Ok(report)
    }

    fn write_if_changed(
        &mut self,
        key: &FrontendKey,
        id: u32,
        backends: &[BackendAddr],
        affinity: Option<u32>,
        report: &mut ServiceSync,
    ) -> Result<()> {
        let unchanged = self
            .state
            .get(key)
            .is_some_and(|s| s.id == id && s.backends == backends && s.affinity == affinity);
        if unchanged {
            return Ok(());
        }
        self.write_frontend(key, id, backends, affinity, report)
    }

    /// A frontend's key, id (kept while it exists, allocated when new), backends and
    /// affinity; also records what its id stands for (flow attribution).
    fn desired(
        &mut self,
        addr: &FrontendAddr,
        plan: &FrontendPlan,
    ) -> (FrontendKey, (u32, Vec<BackendAddr>, Option<u32>)) {
        let key = frontend_key(addr);
        let backends: Vec<BackendAddr> = plan
            .backends
            .iter()
            .map(|b| BackendAddr {
                addr: addr16(b.ip),
                port: b.port.to_be(),
                _pad: [0; 2],
            })
            .collect();
        let id = *self.ids.entry(key).or_insert_with(|| {
            let id = self.next_id;
            self.next_id += 1;
            id
        });
        let name = FrontendName {
            service: plan.service.clone(),
            port_name: plan.port_name.clone(),
            ip: addr.ip,
            port: addr.port,
        };
        if self.names.get(&id) != Some(&name) {
            Arc::make_mut(&mut self.names).insert(id, name);
        }
        (key, (id, backends, plan.affinity_timeout))
    }

    /// Writes a new backend set for `key`, switches its frontend to it, and removes the set
    /// it replaces (the UDP flows to backends that left are reported for flushing).
    fn write_frontend(
        &mut self,
        key: &FrontendKey,
        id: u32,
        backends: &[BackendAddr],
        affinity: Option<u32>,
        report: &mut ServiceSync,
    ) -> Result<()> {
        let set = self.next_set;
        self.next_set = self.next_set.wrapping_add(1).max(1);
        for (index, b) in backends.iter().enumerate() {
            self.backends
                .insert(
                    BackendKey {
                        set,
                        index: index as u32,
                    },
                    *b,
                    0,
                )
                .map_err(map_err(names::SVC_BACKENDS, "insert"))?;
        }
        if affinity.is_some() {
            for b in backends {
                self.members
                    .insert(MemberKey { set, backend: *b }, 1, 0)
                    .map_err(map_err(names::SVC_MEMBERS, "insert"))?;
            }
        }
        report.backends_written += backends.len();
        self.frontends
            .insert(
                *key,
                Frontend {
                    id,
                    backend_set: set,
                    count: backends.len() as u32,
                    flags: if affinity.is_some() { FE_F_AFFINITY } else { 0 },
                    affinity_s: affinity.unwrap_or(0),
                },
                0,
            )
            .map_err(map_err(names::SVC_FRONTENDS, "insert"))?;
        report.frontends_written += 1;
        let old = self.state.insert(
            *key,
            FrontendState {
                id,
                set,
                backends: backends.to_vec(),
                affinity,
            },
        );
        if let Some(old) = old {
            if key.proto == enforcer_common::proto::UDP {
                report.gone_udp_backends.extend(
                    old.backends
                        .iter()
                        .filter(|b| !backends.contains(b))
                        .map(|b| (old.id, b.addr, b.port)),
                );
            }
            self.remove_set(&old);
        }
        Ok(())
    }

    /// Removes the frontends not in `desired`, with their backend sets.
    fn remove_gone(&mut self, desired: &Desired, report: &mut ServiceSync) {
        let gone: Vec<FrontendKey> = self
            .state
            .keys()
            .filter(|k| !desired.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            self.remove_frontend(key, report);
        }
    }

    /// Removes one frontend, with its backend set.
    fn remove_frontend(&mut self, key: FrontendKey, report: &mut ServiceSync) {
        let _ = self.frontends.remove(&key);
        if let Some(old) = self.state.remove(&key) {
            if key.proto == enforcer_common::proto::UDP {
                report
                    .gone_udp_backends
                    .extend(old.backends.iter().map(|b| (old.id, b.addr, b.port)));
            }
            self.remove_set(&old);
            report.frontends_removed += 1;
        }
    }

    fn remove_set(&mut self, s: &FrontendState) {
        for index in 0..s.backends.len() as u32 {
            let _ = self.backends.remove(&BackendKey { set: s.set, index });
        }
        if s.affinity.is_some() {
            for b in &s.backends {
                let _ = self.members.remove(&MemberKey {
                    set: s.set,
                    backend: *b,
                });
            }
        }
    }
}

/// The NAT entries of translated connections, for the sweeper to remove with them.
pub struct NatMaps {
    pub fwd: HashMap<MapData, NatKey, NatEntry>,
    pub rev: HashMap<MapData, NatKey, NatEntry>,
}

impl NatMaps {
    /// Removes the NAT entries of a translated connection whose tracking entry goes: its
    /// reply entry is keyed by the reverse of the connection's first packet (as translated),
    /// and its value is the reverse of the client's packet, the key of its forward entry.
    pub fn forget(&mut self, key: &CtKey, e: &CtEntry) -> std::result::Result<(), MapError> {
        if e.flags & CT_F_SERVICE == 0 {
            return Ok(());
        }
        let (lo, hi) = ((key.addr_lo, key.port_lo), (key.addr_hi, key.port_hi));
        let ((src, sport), (dst, dport)) = if e.flags & CT_F_ORIG_LO != 0 {
            (lo, hi)
        } else {
            (hi, lo)
        };
        let rev_key = NatKey {
            ep_id: key.ep_id,
            src: dst,
            dst: src,
            sport: dport,
            dport: sport,
            proto: key.proto,
            _pad: [0; 3],
        };
        let rev = match self.rev.get(&rev_key, 0) {
            Ok(v) => Some(v),
            Err(MapError::KeyNotFound) => None,
            Err(e) => return Err(e),
        };
        if let Some(r) = rev {
            let fwd_key = reversed_key(key.ep_id, &r, key.proto);
            ignore_missing(self.fwd.remove(&fwd_key))?;
            ignore_missing(self.rev.remove(&rev_key))?;
        }
        Ok(())
    }
}

/// The conntrack key of a connection (its ends in canonical order, as the datapath keys it)
/// and whether `src` is its lower end.
pub fn ct_key(
    ep_id: u32,
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    proto: u8,
) -> (CtKey, bool) {
    let src_lo = (src, u16::from_be(sport)) <= (dst, u16::from_be(dport));
    let ((addr_lo, port_lo), (addr_hi, port_hi)) = if src_lo {
        ((src, sport), (dst, dport))
    } else {
        ((dst, dport), (src, sport))
    };
    (
        CtKey {
            ep_id,
            addr_lo,
            addr_hi,
            port_lo,
            port_hi,
            proto,
            _pad: [0; 3],
        },
        src_lo,
    )
}

impl NatMaps {
    /// Flushes the translated flows whose backend left its frontend (`gone`): their tracking
    /// and NAT entries go, so that the next datagram chooses a live backend, as kube-proxy
    /// flushes the conntrack entries of a removed UDP endpoint. Returns each flushed tracking
    /// entry (for its end record). The walk is bounded like the sweeper's.
    pub fn flush(
        &mut self,
        conntrack: &mut HashMap<MapData, CtKey, CtEntry>,
        gone: &[GoneBackend],
    ) -> std::result::Result<Vec<(CtKey, CtEntry)>, MapError> {
        if gone.is_empty() {
            return Ok(Vec::new());
        }
        let gone: std::collections::BTreeSet<GoneBackend> = gone.iter().copied().collect();
        let bound = 2 * names::sizes::NAT as usize;
        let mut doomed = Vec::new();
        for item in self.fwd.iter().take(bound) {
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(e),
            };
            if gone.contains(&(v.frontend, v.dst, v.dport)) {
                doomed.push((k, v));
            }
        }
        let mut ended = Vec::new();
        for (k, v) in doomed {
            let (key, _) = ct_key(k.ep_id, v.src, v.dst, v.sport, v.dport, k.proto);
            match conntrack.get(&key, 0) {
                Ok(e) => {
                    ignore_missing(conntrack.remove(&key))?;
                    ended.push((key, e));
                }
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e),
            }
            ignore_missing(self.rev.remove(&reversed_key(k.ep_id, &v, k.proto)))?;
            ignore_missing(self.fwd.remove(&k))?;
        }
        Ok(ended)
    }
}

/// The NAT key of the packet that travels the other way from the tuple `e` holds: a forward
/// entry's value gives its reply's key, a reply entry's value its forward key.
fn reversed_key(ep_id: u32, e: &NatEntry, proto: u8) -> NatKey {
    NatKey {
        ep_id,
        src: e.dst,
        dst: e.src,
        sport: e.dport,
        dport: e.sport,
        proto,
        _pad: [0; 3],
    }
}

fn ignore_missing(r: std::result::Result<(), MapError>) -> std::result::Result<(), MapError> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(e),
    }
}
