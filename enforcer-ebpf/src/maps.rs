//! The maps. Each static's name is the kernel map name and the pin file name; the same string
//! is a const in `enforcer_common::maps`, which documents key, value, writer and reader.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{lpm_trie::LpmTrie, Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use enforcer_common::{
    ct::{CtEntry, CtKey, FragEntry, FragKey},
    endpoint::EndpointInfo,
    flow::FlowKey,
    maps::sizes,
    policy::{Config, PolicyKey},
    reason::counter,
    service::{Affinity, AffinityKey, BackendAddr, BackendKey, Frontend, FrontendKey, MemberKey, NatEntry, NatKey},
};

/// Map name → layout version of each pinned map. Written by the agent, never read here.
#[map]
pub static LAYOUT: HashMap<[u8; 16], u32> = HashMap::pinned(sizes::LAYOUT, 0);

/// ifindex of the host-side veth → the local pod. Written by the agent.
#[map]
pub static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(sizes::ENDPOINTS, 0);

/// Exact address (IPv4-mapped for IPv4) → identity. Written by the agent.
#[map]
pub static IDENTITY_ADDR: HashMap<[u8; 16], u32> =
    HashMap::pinned(sizes::IDENTITY, BPF_F_NO_PREALLOC);

/// IPv4 prefix (shorter than /32) → identity. Written by the agent.
#[map]
pub static IDENTITY_V4: LpmTrie<[u8; 4], u32> = LpmTrie::pinned(sizes::IDENTITY, 0);

/// IPv6 prefix (shorter than /128) → identity. Written by the agent.
#[map]
pub static IDENTITY_V6: LpmTrie<[u8; 16], u32> = LpmTrie::pinned(sizes::IDENTITY, 0);

/// (policy set, direction, protocol, identity, port or 0) → rule id. Written by the agent.
/// Not preallocated: most deployments use a small part of it.
#[map]
pub static POLICY_EXACT: HashMap<PolicyKey, u32> =
    HashMap::pinned(sizes::POLICY_EXACT, BPF_F_NO_PREALLOC);

/// (policy set, direction, protocol, identity, port prefix) → rule id, for wide port ranges.
#[map]
pub static POLICY_RANGES: LpmTrie<PolicyKey, u32> = LpmTrie::pinned(sizes::POLICY_RANGES, 0);

/// Connections. LRU so that a full table evicts the coldest entry instead of refusing new
/// connections; an evicted connection's next packet is checked as new (fails closed).
#[map(name = "CONNTRACK_V2")]
pub static CONNTRACK: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(sizes::CONNTRACK, 0);

/// First-fragment verdicts (and headless later fragments) of fragmented datagrams.
#[map(name = "FRAGMENTS_V3")]
pub static FRAGMENTS: LruHashMap<FragKey, FragEntry> = LruHashMap::pinned(sizes::FRAGMENTS, 0);

/// Global settings: the policy revision.
#[map]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

/// Last drop report per flow, for the report rate limit.
#[map]
pub static DROP_RATELIMIT: LruHashMap<FlowKey, u64> =
    LruHashMap::pinned(sizes::DROP_RATELIMIT, 0);

/// Flow events for the agent.
#[map]
pub static FLOW_EVENTS: RingBuf = RingBuf::pinned(sizes::FLOW_EVENTS_BYTES, 0);

/// Per-CPU scratch space for the parsed packet (not pinned: it holds nothing between runs).
#[map]
pub static SCRATCH: PerCpuArray<crate::parse::Packet> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU counters, indexed by `enforcer_common::reason::counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::LEN, 0);

/// Only in the `upgrade-variant` build: packets seen, so that its programs differ from the
/// default build's (not pinned: no agent adopts it).
#[cfg(feature = "upgrade-variant")]
#[map]
pub static UPGRADE_VARIANT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// (ClusterIP, port, protocol) → the Service port's backend set. Written by the agent.
#[map]
pub static SVC_FRONTENDS: HashMap<FrontendKey, Frontend> =
    HashMap::pinned(sizes::SVC_FRONTENDS, BPF_F_NO_PREALLOC);

/// (backend set, index) → backend address and target port. Written by the agent.
#[map]
pub static SVC_BACKENDS: HashMap<BackendKey, BackendAddr> =
    HashMap::pinned(sizes::SVC_BACKENDS, BPF_F_NO_PREALLOC);

/// A client's packet to a Service (as it leaves the pod) → the tuple to the backend. LRU like
/// conntrack: an evicted entry's connection chooses again (its tracking entry says nothing
/// about the Service).
#[map]
pub static NAT_FWD: LruHashMap<NatKey, NatEntry> = LruHashMap::pinned(sizes::NAT, 0);

/// A reply from a backend (as it travels to the client) → the tuple from the Service.
#[map]
pub static NAT_REV: LruHashMap<NatKey, NatEntry> = LruHashMap::pinned(sizes::NAT, 0);

/// (frontend, client address) → the client's backend under `sessionAffinity: ClientIP`. LRU:
/// a forgotten client simply chooses again.
#[map]
pub static SVC_AFFINITY: LruHashMap<AffinityKey, Affinity> =
    LruHashMap::pinned(sizes::SVC_AFFINITY, 0);

/// (backend set, backend) → 1, for the sets of frontends with affinity. Written by the agent.
#[map]
pub static SVC_MEMBERS: HashMap<MemberKey, u32> =
    HashMap::pinned(sizes::SVC_MEMBERS, BPF_F_NO_PREALLOC);
