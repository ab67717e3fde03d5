//! The local pod behind a host-side veth.

/// The pod's ingress is isolated: only what the policy map allows may enter.
pub const F_INGRESS_ISOLATED: u32 = 1 << 0;
/// The pod's egress is isolated: only what the policy map allows may leave.
pub const F_EGRESS_ISOLATED: u32 = 1 << 1;
/// `ipv4` holds the pod's IPv4 address.
pub const F_HAS_V4: u32 = 1 << 2;
/// `ipv6` holds the pod's IPv6 address.
pub const F_HAS_V6: u32 = 1 << 3;
/// Some of the pod's entries are wide port ranges in `POLICY_RANGES`.
pub const F_WIDE_PORT_RANGES: u32 = 1 << 4;
/// Some entries allow any peer (identity `ANY`). The kernel skips probes for kinds of entry
/// an endpoint does not have: fewer lookups, same answer.
pub const F_ANY_PEER: u32 = 1 << 5;
/// Some entries allow every port of one protocol (port 0).
pub const F_ALL_PORTS: u32 = 1 << 6;
/// Some entries allow any protocol (rules without ports).
pub const F_ANY_PROTO: u32 = 1 << 7;
/// Policy audit mode: a new flow that the policy denies passes (and is tracked) and is
/// reported with the `AUDIT` verdict. Other drop reasons (spoofing, malformed packets, ...)
/// still drop.
pub const F_AUDIT: u32 = 1 << 8;
/// Cluster policies apply to the pod's ingress: its entries are looked up even when it is not
/// isolated, and an entry may deny ([`crate::policy::RULE_DENY`]). A miss then allows unless
/// the direction is also isolated.
pub const F_INGRESS_TIERED: u32 = 1 << 9;
/// Cluster policies apply to the pod's egress (as [`F_INGRESS_TIERED`]).
pub const F_EGRESS_TIERED: u32 = 1 << 10;

/// Value of the `ENDPOINTS` map (key: ifindex of the host-side veth, u32 host order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointInfo {
    /// Agent-assigned endpoint id (host order); scopes conntrack entries and flow events.
    pub ep_id: u32,
    /// Id of the policy entry set in force for this pod (host order). The agent writes a
    /// complete new set under another id and then switches this field, so that a packet sees
    /// either the old or the new policy, never half of one.
    pub policy_set: u32,
    /// `F_*` flags.
    pub flags: u32,
    /// The pod's IPv4 address, network order (valid with `F_HAS_V4`).
    pub ipv4: [u8; 4],
    /// The pod's IPv6 address, network order (valid with `F_HAS_V6`).
    pub ipv6: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 32);
