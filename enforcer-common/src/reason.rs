//! Why a packet was dropped, and the datapath's counters.

/// Drop reasons. Carried as a plain `u8` in records; userspace converts with the checked
/// `TryFrom<u8>` so that an unknown kernel value never becomes an invalid enum.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The pod is isolated in this direction and no policy rule allows the flow.
    PolicyDenied = 1,
    /// A packet from the pod whose source address is not the pod's.
    SpoofedSource = 2,
    /// A header is truncated or malformed: dropped rather than passed unchecked.
    Malformed = 3,
    /// A later fragment whose first fragment was not seen (or is forgotten), leaving a pod
    /// isolated for egress. (Into a pod such a fragment passes: see
    /// `counter::FRAG_HEADLESS_PASSED`.)
    FragmentWithoutHead = 4,
    /// An ethertype other than IPv4, IPv6 and ARP (VLAN tags included).
    UnsupportedEthertype = 5,
    /// More IPv6 extension headers than the datapath walks.
    ExtensionHeaderLimit = 6,
    /// An ICMP error that relates to no tracked connection, in an isolated direction.
    IcmpErrorUnrelated = 7,
    /// An established connection that the policy in force no longer allows.
    Revoked = 8,
    /// The program runs on an interface the agent has not configured (fails closed).
    UnknownEndpoint = 9,
    /// The first fragment of this datagram was dropped; later fragments follow it.
    FragmentOfDropped = 10,
    /// A connection to a Service port with no ready endpoint (for this node, under
    /// `internalTrafficPolicy: Local`): nothing could answer it.
    ServiceNoEndpoints = 11,
    /// A first fragment that does not hold the whole header its verdict depends on (TCP: 20
    /// bytes or the data offset's length if longer; UDP 8; SCTP 12; ICMP 8; an ICMP error's
    /// quoted header and 8 bytes; IPv6: every extension header before it): the rest would
    /// come in later fragments, unjudged (RFC 1858, RFC 7112).
    TinyFragment = 12,
    /// A later fragment that overlaps the header its datagram's first fragment was judged on
    /// (e.g. IPv4 TCP at offset 1 or 2), which could change the ports or TCP flags after
    /// the verdict (RFC 1858, RFC 3128); or a first fragment that such a fragment, passed
    /// before it, overlaps. The rest of the datagram is dropped with it.
    FragmentOverlap = 13,
}

impl DropReason {
    pub const ALL: [DropReason; 13] = [
        DropReason::PolicyDenied,
        DropReason::SpoofedSource,
        DropReason::Malformed,
        DropReason::FragmentWithoutHead,
        DropReason::UnsupportedEthertype,
        DropReason::ExtensionHeaderLimit,
        DropReason::IcmpErrorUnrelated,
        DropReason::Revoked,
        DropReason::UnknownEndpoint,
        DropReason::FragmentOfDropped,
        DropReason::ServiceNoEndpoints,
        DropReason::TinyFragment,
        DropReason::FragmentOverlap,
    ];

    /// Stable snake_case name (logs, metrics labels, JSON).
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::PolicyDenied => "policy_denied",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::Malformed => "malformed",
            DropReason::FragmentWithoutHead => "fragment_without_head",
            DropReason::UnsupportedEthertype => "unsupported_ethertype",
            DropReason::ExtensionHeaderLimit => "extension_header_limit",
            DropReason::IcmpErrorUnrelated => "icmp_error_unrelated",
            DropReason::Revoked => "revoked",
            DropReason::UnknownEndpoint => "unknown_endpoint",
            DropReason::FragmentOfDropped => "fragment_of_dropped",
            DropReason::ServiceNoEndpoints => "service_no_endpoints",
            DropReason::TinyFragment => "tiny_fragment",
            DropReason::FragmentOverlap => "fragment_overlap",
        }
    }
}

impl TryFrom<u8> for DropReason {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        let mut i = 0;
        while i < DropReason::ALL.len() {
            if DropReason::ALL[i] as u8 == v {
                return Ok(DropReason::ALL[i]);
            }
            i += 1;
        }
        Err(v)
    }
}

/// Indexes of the per-CPU `COUNTERS` array. Drops are counted at `DROP_BASE + reason`.
pub mod counter {
    /// Packets allowed (all paths).
    pub const ALLOWED: u32 = 0;
    /// New connections allowed and tracked.
    pub const CT_CREATED: u32 = 1;
    /// Conntrack insert failures (the packet's verdict stands; its replies are re-checked).
    pub const CT_INSERT_FAILED: u32 = 2;
    /// Fragment-map insert failures (later fragments then find no head: see
    /// `FRAG_HEADLESS_PASSED` and `DropReason::FragmentWithoutHead`).
    pub const FRAG_INSERT_FAILED: u32 = 3;
    /// Flow events lost because the ring buffer was full.
    pub const EVENTS_LOST: u32 = 4;
    /// Drop reports suppressed by the per-flow rate limit.
    pub const EVENTS_RATE_LIMITED: u32 = 5;
    /// Established connections re-checked after a policy change.
    pub const CT_RECHECKED: u32 = 6;
    /// ARP / IPv6 neighbour discovery passed without policy.
    pub const LINK_CONTROL: u32 = 7;
    /// New flows the policy denies that passed because the pod is in audit mode.
    pub const AUDITED: u32 = 8;
    /// New connections to a Service translated to a backend.
    pub const SVC_TRANSLATED: u32 = 9;
    /// `NAT_FWD`/`NAT_REV` insert failures (the connection passes; its next packets choose a
    /// backend again and its replies are not rewritten: it fails, never opens more).
    pub const NAT_INSERT_FAILED: u32 = 10;
    /// Later fragments passed with no recorded first fragment (reordered on the way into a
    /// pod, or in a direction that is not isolated): the receiving kernel holds them and
    /// delivers nothing unless the first fragment, judged when it comes, passes.
    pub const FRAG_HEADLESS_PASSED: u32 = 11;
    /// `COUNTERS[DROP_BASE + reason]` counts drops by reason.
    pub const DROP_BASE: u32 = 16;
    pub const LEN: u32 = 32;
    const _: () = assert!(DROP_BASE as usize + super::DropReason::ALL.len() < LEN as usize);
}
