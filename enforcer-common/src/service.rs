//! Service translation: a pod's connection to a Service address (ClusterIP, port, protocol) is
//! sent to one of the Service's backends, chosen per connection, and judged on that backend.
//!
//! - `SVC_FRONTENDS`: [`FrontendKey`] → [`Frontend`]: the Service ports of every ClusterIP and
//!   where their backends are (`backend_set`, `count`).
//! - `SVC_BACKENDS`: [`BackendKey`] (`backend_set`, index) → [`BackendAddr`].
//! - `NAT_FWD`: [`NatKey`] of a client's packet as it leaves the pod (to the Service) →
//!   [`NatEntry`]: the tuple it is rewritten to (to the backend).
//! - `NAT_REV`: [`NatKey`] of a reply as it travels (from the backend) → [`NatEntry`]: the
//!   tuple the client expects (from the Service).
//!
//! - `SVC_AFFINITY`: [`AffinityKey`] → [`Affinity`]: `sessionAffinity: ClientIP`, each
//!   client's backend (written by the programs); `SVC_MEMBERS`: [`MemberKey`] → `u32` (1):
//!   which backends a set holds, for frontends with affinity (written by the agent).
//!
//! The agent writes the frontends, backends and members; the programs write the NAT maps when they open a translated
//! connection, and the agent's conntrack sweeper removes them with the connection.

/// Key of `SVC_FRONTENDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FrontendKey {
    /// The ClusterIP, network order (IPv4-mapped for IPv4).
    pub addr: [u8; 16],
    /// The Service port, network order.
    pub port: u16,
    /// `proto::TCP` or `proto::UDP`.
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<FrontendKey>() == 20);

/// Value of `SVC_FRONTENDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Frontend {
    /// The agent's id of this Service port (host order), carried by flow events.
    pub id: u32,
    /// Set of `SVC_BACKENDS` entries in force (host order). A new backend list is written
    /// under a fresh set and switched to with one write of this value.
    pub backend_set: u32,
    /// Backends in the set (host order): indexes `0..count`. Zero: the Service has no ready
    /// endpoint (for this node), and its connections are dropped.
    pub count: u32,
    /// `FE_F_*` (host order).
    pub flags: u32,
    /// With [`FE_F_AFFINITY`]: how long a client keeps its backend after its last new
    /// connection, in seconds (host order).
    pub affinity_s: u32,
}
const _: () = assert!(core::mem::size_of::<Frontend>() == 20);

/// `sessionAffinity: ClientIP`: a client's new connections go to the backend its previous
/// one went to, while that backend is still in the set and the affinity has not timed out.
pub const FE_F_AFFINITY: u32 = 1 << 0;

/// Key of `SVC_AFFINITY`: one client of one frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AffinityKey {
    /// [`Frontend::id`] (host order).
    pub frontend: u32,
    /// The client's address, network order (IPv4-mapped for IPv4).
    pub client: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 20);

/// Value of `SVC_AFFINITY`: the client's backend and when it last opened a connection to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Affinity {
    /// `bpf_ktime_get_ns` (host order).
    pub last_ns: u64,
    pub backend: BackendAddr,
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<Affinity>() == 32);

/// Key of `SVC_MEMBERS`: a backend of a backend set (only for frontends with affinity: it
/// tells, in one lookup, whether a client's remembered backend is still in the set).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MemberKey {
    /// Host order.
    pub set: u32,
    pub backend: BackendAddr,
}
const _: () = assert!(core::mem::size_of::<MemberKey>() == 24);

/// Key of `SVC_BACKENDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BackendKey {
    /// Host order.
    pub set: u32,
    /// Host order.
    pub index: u32,
}
const _: () = assert!(core::mem::size_of::<BackendKey>() == 8);

/// Value of `SVC_BACKENDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BackendAddr {
    /// Network order (IPv4-mapped for IPv4).
    pub addr: [u8; 16],
    /// The target port, network order.
    pub port: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<BackendAddr>() == 20);

/// Key of `NAT_FWD` and `NAT_REV`: one endpoint's packet as it travels (not canonical).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NatKey {
    pub ep_id: u32,
    /// Network order (IPv4-mapped for IPv4).
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Network order.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<NatKey>() == 44);

/// Value of `NAT_FWD` and `NAT_REV`: the tuple the packet is rewritten to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatEntry {
    /// Network order (IPv4-mapped for IPv4).
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Network order.
    pub sport: u16,
    pub dport: u16,
    /// [`Frontend::id`] of the Service port (host order).
    pub frontend: u32,
    /// [`Frontend::backend_set`] when the backend was chosen (host order): a connection that
    /// must choose again (its tracking entry is gone) keeps its backend only while the set is
    /// unchanged.
    pub backend_set: u32,
    /// `NAT_F_*`.
    pub flags: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<NatEntry>() == 48);

/// The client is its own backend (hairpin): the packet goes back into the pod with the
/// Service address as its source, without passing the node.
pub const NAT_F_HAIRPIN: u8 = 1 << 0;
