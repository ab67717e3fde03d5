//! Raw ring-buffer records to typed events (pure).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use enforcer_common::{direction, family, flow, proto, reason::DropReason};

/// A decoded kernel flow event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub ts_ns: u64,
    pub ifindex: u32,
    pub ep_id: u32,
    pub rule: u32,
    pub len: u32,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Host order. For ICMP: type and code.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub egress: bool,
    pub dropped: bool,
    /// The policy denied it, but the pod is in audit mode: it passed.
    pub audit: bool,
    /// `Err(raw)` for a reason this agent does not know (a newer kernel object).
    pub reason: Option<Result<DropReason, u8>>,
    pub tcp_flags: u8,
    /// ICMP/ICMPv6 type and code, for those protocols (not on connection ends).
    pub icmp: Option<(u8, u8)>,
    pub reply: bool,
    pub fragment: bool,
    pub peer_identity: u32,
    /// The Service port the flow was sent to (`service::Frontend::id`; 0: none). `dst` is then
    /// the backend the datapath chose (for a drop with no endpoint: the Service address).
    pub frontend: u32,
    /// Set when the event is a connection's end (the tuple is then its first packet's).
    pub end: Option<ConnEnd>,
}

/// What a connection carried, reported when it ended (or, with reason `active`, since the
/// sweeper's previous pass).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnEnd {
    /// `enforcer_common::ct::end::*`
    pub reason: u8,
    /// When its first packet passed (`CLOCK_MONOTONIC` ns).
    pub created_ns: u64,
    pub packets_orig: u64,
    pub bytes_orig: u64,
    pub packets_reply: u64,
    pub bytes_reply: u64,
}

/// Every name [`ConnEnd::reason_name`] gives.
pub const END_REASONS: &[&str] = &[
    "closed",
    "reset",
    "timeout",
    "active",
    "backend_gone",
    "unknown",
];

impl ConnEnd {
    pub fn reason_name(&self) -> &'static str {
        match self.reason {
            enforcer_common::ct::end::CLOSED => "closed",
            enforcer_common::ct::end::RESET => "reset",
            enforcer_common::ct::end::TIMEOUT => "timeout",
            enforcer_common::ct::end::ACTIVE => "active",
            enforcer_common::ct::end::BACKEND_GONE => "backend_gone",
            _ => "unknown",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("flow event of {got} bytes, expected {expected}")]
    Size { got: usize, expected: usize },
    #[error("flow event with unknown address family {0}")]
    Family(u8),
}

fn addr(fam: u8, a: [u8; 16]) -> Result<IpAddr, DecodeError> {
    match fam {
        family::IPV4 => Ok(IpAddr::V4(Ipv4Addr::new(a[12], a[13], a[14], a[15]))),
        family::IPV6 => Ok(IpAddr::V6(Ipv6Addr::from(a))),
        // Dropped before the IP header was read (e.g. unsupported ethertype).
        0 => Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        f => Err(DecodeError::Family(f)),
    }
}

/// A ring-buffer record: a packet's verdict ([`flow::FlowEvent`]) or, with
/// [`flow::EV_F_END`], a connection's end ([`flow::ConnEndEvent`]).
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let expected = std::mem::size_of::<flow::FlowEvent>();
    if bytes.len() < expected {
        return Err(DecodeError::Size {
            got: bytes.len(),
            expected,
        });
    }
    // SAFETY: the length is checked; FlowEvent is plain old data (any bit pattern is valid);
    // read_unaligned has no alignment requirement.
    let e: flow::FlowEvent =
        unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const flow::FlowEvent) };
    if e.flags & flow::EV_F_END == 0 {
        return event(&e, None);
    }
    let expected = std::mem::size_of::<flow::ConnEndEvent>();
    if bytes.len() < expected {
        return Err(DecodeError::Size {
            got: bytes.len(),
            expected,
        });
    }
    // SAFETY: as above, for the longer record.
    let c: flow::ConnEndEvent =
        unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const flow::ConnEndEvent) };
    decode_end(&c)
}

/// A connection's end: from the ring buffer, or from the conntrack sweeper
/// (`dataplane::ct_sweep`), which reports the ends of idle connections in the same record.
pub fn decode_end(c: &flow::ConnEndEvent) -> Result<Event, DecodeError> {
    let end = ConnEnd {
        reason: c.end_reason,
        created_ns: c.created_ns,
        packets_orig: c.packets_orig,
        bytes_orig: c.bytes_orig,
        packets_reply: c.packets_reply,
        bytes_reply: c.bytes_reply,
    };
    event(&c.flow, Some(end))
}

fn event(e: &flow::FlowEvent, end: Option<ConnEnd>) -> Result<Event, DecodeError> {
    Ok(Event {
        ts_ns: e.ts_ns,
        ifindex: e.ifindex,
        ep_id: e.ep_id,
        rule: e.rule,
        len: e.len,
        src: addr(e.family, e.src)?,
        dst: addr(e.family, e.dst)?,
        // Network order in the record (for ICMP echo: the identifier).
        sport: u16::from_be(e.sport),
        dport: u16::from_be(e.dport),
        proto: e.proto,
        egress: e.direction == direction::EGRESS,
        dropped: e.verdict == flow::verdict::DROPPED,
        audit: e.verdict == flow::verdict::AUDIT,
        reason: (e.reason != 0).then(|| DropReason::try_from(e.reason)),
        tcp_flags: e.tcp_flags,
        icmp: (matches!(e.proto, proto::ICMP | proto::ICMPV6) && end.is_none())
            .then_some((e.icmp_type, e.icmp_code)),
        reply: e.flags & flow::EV_F_REPLY != 0,
        fragment: e.flags & flow::EV_F_FRAGMENT != 0,
        peer_identity: e.peer_identity,
        frontend: e.frontend,
        end,
    })
}

/// The usual name of an ICMP (`v6 = false`) or ICMPv6 message type, if it has one.
pub fn icmp_type_name(v6: bool, t: u8) -> Option<&'static str> {
    Some(match (v6, t) {
        (false, 0) | (true, 129) => "echo-reply",
        (false, 8) | (true, 128) => "echo-request",
        (false, 3) | (true, 1) => "destination-unreachable",
        (false, 11) | (true, 3) => "time-exceeded",
        (false, 12) | (true, 4) => "parameter-problem",
        (false, 5) => "redirect",
        (false, 4) => "source-quench",
        (false, 13) => "timestamp-request",
        (false, 14) => "timestamp-reply",
        (true, 2) => "packet-too-big",
        _ => return None,
    })
}

/// The TCP flags records name, in the order they name them.
const TCP_FLAG_NAMES: [(u8, &str); 6] = [
    (0x02, "SYN"),
    (0x10, "ACK"),
    (0x01, "FIN"),
    (0x04, "RST"),
    (0x08, "PSH"),
    (0x20, "URG"),
];

/// The set flags of `f` by name, `|`-separated (`SYN|ACK`); flags without a name are left out.
pub fn tcp_flags_text(f: u8) -> std::borrow::Cow<'static, str> {
    const NAMES: [(u8, &str); 6] = TCP_FLAG_NAMES;
    /// Every combination of the six flags, made once: each TCP record names its flags.
    static TEXTS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        (0..64u8)
            .map(|i| {
                let f = (0..6)
                    .filter(|b| i & (1 << b) != 0)
                    .fold(0u8, |f, b| f | NAMES[b].0);
                NAMES
                    .iter()
                    .filter(|(b, _)| f & b != 0)
                    .map(|(_, n)| *n)
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect()
    });
    // The index of `f`'s named flags in TEXTS (bit i of the index: NAMES[i]).
    let index = NAMES
        .iter()
        .enumerate()
        .filter(|(_, (b, _))| f & b != 0)
        .fold(0usize, |i, (n, _)| i | 1 << n);
    std::borrow::Cow::Borrowed(TEXTS[index].as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of flag texts says what joining the flag names says, for every flags byte.
    #[test]
    fn tcp_flags_text_names_the_set_flags_in_order() {
        for f in 0..=255u8 {
            let want: Vec<_> = TCP_FLAG_NAMES
                .iter()
                .filter(|(b, _)| f & b != 0)
                .map(|(_, n)| *n)
                .collect();
            assert_eq!(tcp_flags_text(f), want.join("|"), "flags {f:#04x}");
        }
        assert_eq!(tcp_flags_text(0x12), "SYN|ACK");
        assert_eq!(tcp_flags_text(0xc0), "");
    }

    fn raw(e: flow::FlowEvent) -> Vec<u8> {
        // SAFETY: FlowEvent is repr(C) plain data.
        unsafe {
            std::slice::from_raw_parts(
                &e as *const _ as *const u8,
                std::mem::size_of::<flow::FlowEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_a_v4_drop() {
        let mut src = [0u8; 16];
        src[10] = 0xff;
        src[11] = 0xff;
        src[12..].copy_from_slice(&[10, 244, 1, 10]);
        let mut dst = src;
        dst[15] = 11;
        let e = decode(&raw(flow::FlowEvent {
            ts_ns: 5,
            src,
            dst,
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            family: family::IPV4,
            proto: proto::TCP,
            direction: direction::INGRESS,
            verdict: flow::verdict::DROPPED,
            reason: DropReason::PolicyDenied as u8,
            tcp_flags: 0x02,
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(e.src, "10.244.1.10".parse::<IpAddr>().unwrap());
        assert_eq!(e.dst, "10.244.1.11".parse::<IpAddr>().unwrap());
        assert_eq!((e.sport, e.dport), (40000, 80));
        assert!(e.dropped && !e.egress);
        assert_eq!(e.reason, Some(Ok(DropReason::PolicyDenied)));
        assert_eq!(tcp_flags_text(e.tcp_flags), "SYN");
    }

    #[test]
    fn decodes_a_connection_end_and_rejects_a_truncated_one() {
        let end = flow::ConnEndEvent {
            flow: flow::FlowEvent {
                ts_ns: 9_000,
                family: family::IPV6,
                proto: proto::TCP,
                direction: direction::EGRESS,
                flags: flow::EV_F_END,
                rule: 7,
                ..Default::default()
            },
            created_ns: 1_000,
            packets_orig: 5,
            bytes_orig: 600,
            packets_reply: 4,
            bytes_reply: 3_000,
            end_reason: enforcer_common::ct::end::CLOSED,
            _pad: [0; 7],
        };
        // SAFETY: ConnEndEvent is repr(C) plain data.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                &end as *const _ as *const u8,
                std::mem::size_of::<flow::ConnEndEvent>(),
            )
        }
        .to_vec();
        let e = decode(&bytes).unwrap();
        let c = e.end.expect("an end event");
        assert_eq!(
            (c.packets_orig, c.bytes_orig, c.packets_reply, c.bytes_reply),
            (5, 600, 4, 3_000)
        );
        assert_eq!(c.reason_name(), "closed");
        assert_eq!((c.created_ns, e.ts_ns, e.rule), (1_000, 9_000, 7));
        assert!(e.egress && !e.dropped);
        // The flag says "end" but the record is only as long as a verdict: not guessed at.
        assert!(matches!(
            decode(&bytes[..std::mem::size_of::<flow::FlowEvent>()]),
            Err(DecodeError::Size { .. })
        ));
        // A verdict event has no end.
        assert_eq!(decode(&raw(end.flow.with_flags(0))).unwrap().end, None);
    }

    trait WithFlags {
        fn with_flags(self, f: u8) -> Self;
    }
    impl WithFlags for flow::FlowEvent {
        fn with_flags(mut self, f: u8) -> Self {
            self.flags = f;
            self
        }
    }

    #[test]
    fn unknown_reason_stays_a_number_and_short_records_fail() {
        let e = decode(&raw(flow::FlowEvent {
            family: family::IPV6,
            reason: 200,
            verdict: 1,
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(e.reason, Some(Err(200)));
        assert!(matches!(decode(&[0u8; 10]), Err(DecodeError::Size { .. })));
        assert_eq!(
            decode(&raw(flow::FlowEvent {
                family: 9,
                ..Default::default()
            })),
            Err(DecodeError::Family(9))
        );
    }
}
