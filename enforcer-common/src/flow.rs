//! Flow events: what the programs report to the agent over the `FLOW_EVENTS` ring buffer.

pub mod verdict {
    pub const ALLOWED: u8 = 0;
    pub const DROPPED: u8 = 1;
    /// The policy denies the flow, but the pod is in audit mode: it passed.
    pub const AUDIT: u8 = 2;
}

/// How often (at most) one flow's drops are reported: the rest are only counted.
pub const DROP_REPORT_INTERVAL_NS: u64 = 1_000_000_000;

/// `is_reply`/flags bits of [`FlowEvent::flags`].
pub const EV_F_REPLY: u8 = 1 << 0;
/// The packet was a non-first fragment.
pub const EV_F_FRAGMENT: u8 = 1 << 1;
/// The record is a [`ConnEndEvent`] (a connection ended), not a packet's verdict.
pub const EV_F_END: u8 = 1 << 2;

/// Key of `DROP_RATELIMIT`: one flow of one endpoint as it travels (not canonical).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub ep_id: u32,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub direction: u8,
    pub reason: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 44);

/// A flow event. Addresses are IPv4-mapped for IPv4; ports in network order (for ICMP:
/// `sport` = type, `dport` = code).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC), host order.
    pub ts_ns: u64,
    /// Host-side veth the packet passed.
    pub ifindex: u32,
    /// Endpoint id of the local pod.
    pub ep_id: u32,
    /// Rule that decided (0: none; for a drop, no rule allowed it).
    pub rule: u32,
    /// Packet length in bytes.
    pub len: u32,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// `family::*`
    pub family: u8,
    pub proto: u8,
    /// `direction::*` as the pod sees it.
    pub direction: u8,
    /// `verdict::*`
    pub verdict: u8,
    /// `reason::DropReason` as u8 (0 for allowed).
    pub reason: u8,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    /// `EV_F_*` bits.
    pub flags: u8,
    /// ICMP/ICMPv6 type (0 for other protocols; for ICMPv4 also 0 = echo reply: see
    /// `proto`).
    pub icmp_type: u8,
    /// Peer identity found for the packet.
    pub peer_identity: u32,
    /// ICMP/ICMPv6 code.
    pub icmp_code: u8,
    pub _pad: [u8; 3],
    /// `service::Frontend::id` when the flow went to a Service and was translated (0: none;
    /// `dst` is then the backend), host order.
    pub frontend: u32,
}
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 80);

/// A connection's end, with what it carried. `flow` describes the connection's first packet
/// (its originator as `src`, `direction` as the pod saw that packet, `rule` that allowed it,
/// `flags` with [`EV_F_END`], `len` 0); `flow.ts_ns` is when it ended (for a timeout: its last
/// packet).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnEndEvent {
    pub flow: FlowEvent,
    /// First packet time (`bpf_ktime_get_ns`).
    pub created_ns: u64,
    /// Originator → responder.
    pub packets_orig: u64,
    pub bytes_orig: u64,
    /// Responder → originator.
    pub packets_reply: u64,
    pub bytes_reply: u64,
    /// `ct::end::*`
    pub end_reason: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<ConnEndEvent>() == 128);
