//! Connection tracking and fragment tracking.

/// TCP/flow states of a [`CtEntry`].
pub mod state {
    /// Originator sent a SYN, no answer yet.
    pub const SYN_SENT: u8 = 1;
    /// Traffic seen both ways (or a non-TCP flow).
    pub const ESTABLISHED: u8 = 2;
    /// A FIN was seen; the entry expires quickly.
    pub const CLOSING: u8 = 3;
    /// A RST was seen, or both FINs: the connection is over.
    pub const CLOSED: u8 = 4;
    /// Both FINs seen, then an ACK without a FIN: the close is acknowledged, and only a
    /// retransmitted FIN (its ACK lost on the way) can still come. A FIN puts the entry back
    /// in `CLOSING`.
    pub const FIN_ACKED: u8 = 5;
}

/// Idle timeouts, in nanoseconds.
pub mod timeout {
    const S: u64 = 1_000_000_000;
    pub const TCP_SYN: u64 = 60 * S;
    pub const TCP_ESTABLISHED: u64 = 6 * 3600 * S;
    pub const TCP_CLOSING: u64 = 10 * S;
    /// A retransmitted FIN comes after one, two, four ... RTOs (200 ms at least): two seconds
    /// cover three. A closed connection's entry is then gone long before `TCP_CLOSING`: at
    /// thousands of connections a second, a table of live connections rather than one five
    /// times larger of finished ones (each lookup a cache miss more likely, each pass of the
    /// sweeper longer, and the LRU evicting live entries once it fills).
    pub const TCP_FIN_ACKED: u64 = 2 * S;
    /// After a RST or a completed close, the tuple must open anew (a late duplicate packet
    /// is re-checked against the policy, not waved through).
    pub const TCP_CLOSED: u64 = 0;
    pub const UDP: u64 = 120 * S;
    pub const OTHER: u64 = 60 * S;
    /// How long a datagram's fragment record stands (its first fragment's verdict, or the
    /// later fragments that passed before it): as long as the kernel keeps an incomplete
    /// datagram by default (`ipfrag_time` 30 s, `ip6frag_time` 60 s).
    pub const FRAGMENT: u64 = 60 * S;
}

/// The time from `then` to `now` (`CLOCK_MONOTONIC` ns), zero when `then` is later. Another
/// CPU may stamp an entry with its own, later, clock reading between this packet's reading and
/// its look at the entry: a plain subtraction then wraps to ~584 years and a busy connection
/// looks expired (it was reported ended and its next packet judged as a new flow).
#[inline(always)]
pub const fn elapsed(now: u64, then: u64) -> u64 {
    now.saturating_sub(then)
}

/// The idle timeout of a connection of protocol `proto` in state `state`.
#[inline(always)]
pub const fn idle_timeout(proto: u8, state: u8) -> u64 {
    if proto == crate::proto::TCP {
        match state {
            state::SYN_SENT => timeout::TCP_SYN,
            state::CLOSING => timeout::TCP_CLOSING,
            state::FIN_ACKED => timeout::TCP_FIN_ACKED,
            state::CLOSED => timeout::TCP_CLOSED,
            _ => timeout::TCP_ESTABLISHED,
        }
    } else if proto == crate::proto::UDP {
        timeout::UDP
    } else {
        timeout::OTHER
    }
}

/// Key of `CONNTRACK`: a connection of one endpoint, with its two ends in a canonical order
/// (the lower `(addr, port)` first) so that both directions find the same entry in one lookup.
/// IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    /// Endpoint id (host order).
    pub ep_id: u32,
    /// Lower end's address, network order.
    pub addr_lo: [u8; 16],
    /// Higher end's address, network order.
    pub addr_hi: [u8; 16],
    /// Lower end's port, network order (ICMP echo: identifier on the requester's side).
    pub port_lo: u16,
    /// Higher end's port, network order.
    pub port_hi: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 44);

/// The originator of the connection is the lower end of the key.
pub const CT_F_ORIG_LO: u8 = 1 << 0;
/// FIN seen from the lower end.
pub const CT_F_FIN_LO: u8 = 1 << 1;
/// FIN seen from the higher end.
pub const CT_F_FIN_HI: u8 = 1 << 2;
/// A packet was seen from the responder (the connection is answered).
pub const CT_F_REPLIED: u8 = 1 << 3;
/// The connection's end was reported (by the datapath on a RST or the second FIN, or when it
/// found the entry expired): whoever removes the entry later does not report it again.
pub const CT_F_END_REPORTED: u8 = 1 << 4;
/// A connection to a Service, translated by the datapath: the key holds the backend, and
/// `NAT_REV` the Service address the client's replies must come from.
pub const CT_F_SERVICE: u8 = 1 << 5;
/// A translated connection of a pod to itself through its Service (see
/// `service::NAT_F_HAIRPIN`): both directions are rewritten at the pod's egress hook.
pub const CT_F_HAIRPIN: u8 = 1 << 6;

/// Why a connection ended (`ConnEndEvent::end_reason`).
pub mod end {
    /// Both ends sent a FIN.
    pub const CLOSED: u8 = 1;
    /// A RST.
    pub const RESET: u8 = 2;
    /// No packet for the protocol's idle timeout.
    pub const TIMEOUT: u8 = 3;
    /// Not an end (the agent's sweeper only): what a connection carried since the previous
    /// sweep, for the volume detector.
    pub const ACTIVE: u8 = 4;
    /// The Service endpoint a UDP flow was translated to is gone (the agent flushes such
    /// flows, as kube-proxy flushes their conntrack entries): its next datagram chooses a live
    /// backend.
    pub const BACKEND_GONE: u8 = 5;
}

/// Value of `CONNTRACK`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntry {
    /// First packet time, `bpf_ktime_get_ns` (host order).
    pub created_ns: u64,
    /// Last packet time, `bpf_ktime_get_ns` (host order).
    pub last_seen_ns: u64,
    /// Packets and bytes in the originating direction.
    pub packets_orig: u64,
    pub bytes_orig: u64,
    /// Packets and bytes in the reply direction.
    pub packets_reply: u64,
    pub bytes_reply: u64,
    /// Policy revision the connection was last checked under.
    pub revision: u32,
    /// Rule that allowed it (0 when allowed without a rule: not isolated, or the host).
    pub rule: u32,
    /// `state::*`.
    pub state: u8,
    /// Direction of the first packet, as the pod sees it (`direction::*`).
    pub origin_dir: u8,
    /// `CT_F_*` flags.
    pub flags: u8,
    pub _pad: u8,
    /// `service::Frontend::id` of a translated connection (0: none), host order. Zero in
    /// entries written before Services existed: the layout is unchanged.
    pub frontend: u32,
}
const _: () = assert!(core::mem::size_of::<CtEntry>() == 64);

/// One conntrack entry for the agent's sweeper to remove, as the remover program
/// (`programs::CT_REMOVE`, run with `BPF_PROG_TEST_RUN` and never attached) reads it from its
/// test packet: the program removes the entry only if it still has the stamps the sweeper read,
/// so that an entry a packet renewed since (or a new connection that took the tuple) stays, and
/// writes what it did into `outcome`. [`REMOVALS_PER_RUN`] of them follow an Ethernet header's
/// 14 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Removal {
    pub key: CtKey,
    /// `removal::*`, written by the program.
    pub outcome: u32,
    pub created_ns: u64,
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Removal>() == 64);

/// Removals in one run: a test packet holds at most about a page.
pub const REMOVALS_PER_RUN: usize = 48;

/// `Removal::outcome`.
pub mod removal {
    /// Not looked at (the record is past the packet's end).
    pub const NONE: u32 = 0;
    /// Removed.
    pub const REMOVED: u32 = 1;
    /// Kept: the entry's stamps changed since the sweeper read them.
    pub const RENEWED: u32 = 2;
    /// Not in the map (the datapath or the LRU removed it).
    pub const GONE: u32 = 3;
}

/// Key of `FRAGMENTS`: one datagram of one endpoint, as it travels, identified as the
/// receiving kernel reassembles it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    pub ep_id: u32,
    /// IPv4 identification (16 bits, zero-extended) or IPv6 fragment identification, as read
    /// from the packet (network order).
    pub id: u32,
    /// Source and destination, network order (IPv4-mapped for IPv4).
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// IPv4: the protocol (part of IPv4's reassembly key). IPv6: 0, because IPv6 reassembles
    /// on addresses and identification only and takes the next header from the first
    /// fragment: a later fragment's next header is a claim nobody checks.
    pub proto: u8,
    pub direction: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 44);

/// `FragEntry::verdict` of a datagram whose first fragment has not been seen yet: later
/// fragments passed (into a pod, where the receiving kernel holds them until the first
/// fragment is judged), the lowest of them at `FragEntry::min_later`.
pub const FRAG_HEADLESS: u8 = 0xff;

/// `FragEntry::min_later` when no later fragment passed before the first fragment.
pub const FRAG_NO_LATER: u16 = u16::MAX;

/// Value of `FRAGMENTS`: what happened to the datagram's first fragment (or, before it
/// arrives, to its later fragments).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragEntry {
    /// When the record was written (first fragment, or first headless later fragment).
    pub first_seen_ns: u64,
    /// Source and destination port of the first fragment, network order (for reports).
    pub sport: u16,
    pub dport: u16,
    /// `flow::verdict::ALLOWED` or `DROPPED` (the first fragment's), or [`FRAG_HEADLESS`].
    pub verdict: u8,
    /// `reason::DropReason` of the first fragment when it was dropped.
    pub reason: u8,
    /// `FRAG_NAT_*`: how the first fragment's addresses were rewritten (Service
    /// translation); later fragments get the same addresses.
    pub nat: u8,
    pub _pad: u8,
    /// The first fragment's addresses after translation (when `nat` is set), network order.
    pub nat_src: [u8; 16],
    pub nat_dst: [u8; 16],
    /// `service::Frontend::id` of a translated datagram (host order).
    pub frontend: u32,
    /// Bytes of the fragmentable part the first fragment's verdict was judged on (IPv6
    /// extension headers after the fragment header, the L4 header, an ICMP error's quoted
    /// header): a later fragment starting below this offset overlaps them and is dropped.
    pub hdr_end: u16,
    /// Lowest offset (bytes) of a later fragment that passed before the first fragment
    /// ([`FRAG_NO_LATER`]: none). A first fragment whose `hdr_end` exceeds it is dropped.
    pub min_later: u16,
}
const _: () = assert!(core::mem::size_of::<FragEntry>() == 56);

/// The datagram's addresses were translated (`FragEntry::nat_src`/`nat_dst`).
pub const FRAG_NAT_REWRITE: u8 = 1 << 0;
/// ... and it goes back into the pod it came from (hairpin).
pub const FRAG_NAT_HAIRPIN: u8 = 1 << 1;
