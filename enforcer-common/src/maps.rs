//! Kernel object names: each constant is the map's name in the ELF object, in the kernel and
//! the file name of its pin. At most 15 characters (kernel names are 16 bytes with the NUL).
//! A layout change of a key or value means a new name, so an old pin is never misread.

/// `ifindex (u32, host order)` → [`crate::endpoint::EndpointInfo`]: the local pod behind a
/// host-side veth. Written by the agent before it attaches the programs; read per packet.
pub const ENDPOINTS: &str = "ENDPOINTS";
/// Hash `address` (16 bytes, IPv4-mapped for IPv4) → identity (u32, host order): the exact
/// addresses (/32, /128: pods, the node). Looked up first, in constant time; the tries below
/// only hold shorter prefixes. Written by the agent; read per new flow.
pub const IDENTITY_ADDR: &str = "IDENTITY_ADDR";
/// LPM trie `IPv4 prefix` → identity (u32, host order), for prefixes shorter than /32.
pub const IDENTITY_V4: &str = "IDENTITY_V4";
/// LPM trie `IPv6 prefix` → identity (u32, host order), for prefixes shorter than /128.
pub const IDENTITY_V6: &str = "IDENTITY_V6";
/// Hash [`crate::policy::PolicyKey`] → rule id (u32, host order): what is allowed, for single
/// ports, port 0 = every port of the protocol, and `proto::ANY`. Port ranges of up to 256 ports
/// are expanded into single ports. Written by the agent; read per new flow (constant time).
pub const POLICY_EXACT: &str = "POLICY_EXACT";
/// LPM trie [`crate::policy::PolicyKey`] → rule id: port ranges too wide to expand, as port
/// prefixes. Only probed for endpoints with `F_WIDE_PORT_RANGES`.
pub const POLICY_RANGES: &str = "POLICY_RANGES";
/// LRU hash [`crate::ct::CtKey`] → [`crate::ct::CtEntry`]: connection tracking, written by
/// the programs; the agent removes expired entries (reporting their end) and may flush it.
pub const CONNTRACK: &str = "CONNTRACK_V2";
/// LRU hash [`crate::ct::FragKey`] → [`crate::ct::FragEntry`]: the verdict of a datagram's
/// first fragment (and its Service translation and judged header length), which its later
/// fragments follow; or the later fragments that passed before their first fragment.
/// V3: `FragEntry` gained `hdr_end`/`min_later` and the IPv6 key no longer holds a protocol.
pub const FRAGMENTS: &str = "FRAGMENTS_V3";
/// Hash [`crate::service::FrontendKey`] → [`crate::service::Frontend`]: every Service port of
/// every ClusterIP. Written by the agent; read per new connection of a pod.
pub const SVC_FRONTENDS: &str = "SVC_FRONTENDS";
/// Hash [`crate::service::BackendKey`] → [`crate::service::BackendAddr`]: each frontend's
/// backends for this node. Written by the agent; read per new connection to a Service.
pub const SVC_BACKENDS: &str = "SVC_BACKENDS";
/// LRU hash [`crate::service::NatKey`] → [`crate::service::NatEntry`]: client packets of
/// translated connections (to the Service) → the backend. Written by the programs.
pub const NAT_FWD: &str = "NAT_FWD";
/// LRU hash [`crate::service::NatKey`] → [`crate::service::NatEntry`]: replies of translated
/// connections (from the backend) → the Service address. Written by the programs.
pub const NAT_REV: &str = "NAT_REV";
/// LRU hash [`crate::service::AffinityKey`] → [`crate::service::Affinity`]: each client's
/// backend of a Service with `sessionAffinity: ClientIP`. Written by the programs.
pub const SVC_AFFINITY: &str = "SVC_AFFINITY";
/// Hash [`crate::service::MemberKey`] → u32 (1): the backends of each backend set of a
/// frontend with affinity. Written by the agent; read per new connection with affinity.
pub const SVC_MEMBERS: &str = "SVC_MEMBERS";
/// Array of one [`crate::policy::Config`]: the policy revision in force.
pub const CONFIG: &str = "CONFIG";
/// LRU hash [`crate::flow::FlowKey`] → last report time (u64 ns): rate-limits drop reports.
pub const DROP_RATELIMIT: &str = "DROP_RATELIMIT";
/// Ring buffer of [`crate::flow::FlowEvent`].
pub const FLOW_EVENTS: &str = "FLOW_EVENTS";
/// Per-CPU array of u64 counters, indexed by [`crate::reason::Counter`].
pub const COUNTERS: &str = "COUNTERS";

/// Hash map name (16 bytes, NUL-padded) → layout version (u32): what the other pinned maps'
/// bytes mean, so that an agent never adopts a map whose layout it does not know (the kernel
/// can only say their sizes). Written by the agent; never read by the programs. Its own layout
/// never changes.
pub const LAYOUT: &str = "LAYOUT";

/// Every map that is pinned (all of them).
pub const ALL: [&str; 19] = [
    ENDPOINTS,
    IDENTITY_ADDR,
    IDENTITY_V4,
    IDENTITY_V6,
    POLICY_EXACT,
    POLICY_RANGES,
    CONNTRACK,
    FRAGMENTS,
    CONFIG,
    DROP_RATELIMIT,
    FLOW_EVENTS,
    COUNTERS,
    SVC_FRONTENDS,
    SVC_BACKENDS,
    NAT_FWD,
    NAT_REV,
    SVC_AFFINITY,
    SVC_MEMBERS,
    LAYOUT,
];

/// Program names (the ELF section functions).
pub mod programs {
    /// Packets leaving the pod: attached at TC ingress of the host-side veth.
    pub const POD_EGRESS: &str = "pod_egress";
    /// Packets entering the pod: attached at TC egress of the host-side veth.
    pub const POD_INGRESS: &str = "pod_ingress";
    /// The conntrack sweeper's remover (`ct::Removal`): loaded, run by the agent with
    /// `BPF_PROG_TEST_RUN`, never attached.
    pub const CT_REMOVE: &str = "ct_remove";
}

/// Sizes of the maps (entries).
pub mod sizes {
    pub const ENDPOINTS: u32 = 16_384;
    pub const IDENTITY: u32 = 1_048_576;
    pub const POLICY_EXACT: u32 = 4_194_304;
    pub const POLICY_RANGES: u32 = 1_048_576;
    pub const CONNTRACK: u32 = 262_144;
    pub const FRAGMENTS: u32 = 16_384;
    pub const DROP_RATELIMIT: u32 = 65_536;
    pub const SVC_FRONTENDS: u32 = 65_536;
    /// Twice the backends in force: a changed list is written before the old one goes.
    pub const SVC_BACKENDS: u32 = 524_288;
    /// One entry per translated connection, like conntrack.
    pub const NAT: u32 = CONNTRACK;
    pub const SVC_AFFINITY: u32 = 262_144;
    pub const SVC_MEMBERS: u32 = SVC_BACKENDS;
    /// Bytes of the flow-event ring buffer (a power of two, multiple of the page size).
    pub const FLOW_EVENTS_BYTES: u32 = 4 * 1024 * 1024;
    pub const LAYOUT: u32 = 64;
}
