//! A model of what the datapath must decide for a frame at x/a's veth, written from the
//! protocols and from the documented design (docs/design.md section 4, the fragment rules in
//! `enforcer-ebpf/src/main.rs`), as plain Rust over the frame's bytes: no shared code with the
//! kernel program, so a parsing slip in either shows as a disagreement.
//!
//! State lives across the packets of one input, as in the kernel: connections (one entry per
//! pair of ends and protocol, found from either direction) and fragment records (a datagram's
//! first fragment's verdict, or the offsets of later fragments that came first). The kernel's
//! maps are emptied before each input, so both start alike.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use enforcer_common::proto;
use enforcer_common::reason::DropReason;

use super::policy::{self, Identity};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop(DropReason),
}

/// What the model predicts for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    Sure(Verdict),
    /// The model makes no claim (and stops following the input: its state could differ from
    /// the kernel's from here on).
    Unsure(&'static str),
}

/// Addresses as the datapath keys them (IPv4 mapped into IPv6), ports in host order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Tuple {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Plain,
    /// ARP, neighbour discovery, MLD: never judged.
    LinkControl,
    /// An ICMP error, with the tuple of the packet it quotes.
    IcmpError(Tuple),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    None,
    /// Offset 0, more fragments: `hdr_end` is where the bytes its verdict depends on end,
    /// counted from the start of the fragmentable part.
    First {
        hdr_end: usize,
    },
    /// Offset (bytes) in the datagram's fragmentable part.
    Later {
        offset: usize,
    },
}

/// A datagram's fragments: the kernel groups them by identification and addresses, and for
/// IPv4 by protocol (part of IPv4's reassembly key; IPv6's next header is only a claim).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Datagram {
    pub ingress: bool,
    pub id: u32,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub proto: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub v6: bool,
    pub kind: Kind,
    pub tuple: Tuple,
    pub tcp_flags: u8,
    pub fragment: Fragment,
    pub datagram: Option<Datagram>,
}

/// A parse that failed: why, and, when the packet was already known to be a first fragment,
/// its datagram (which is dropped with it).
#[derive(Clone, Copy, Debug)]
pub struct Failed {
    pub reason: DropReason,
    pub first_of: Option<Datagram>,
}

fn bytes<const N: usize>(f: &[u8], at: usize) -> Result<[u8; N], DropReason> {
    f.get(at..at + N)
        .map(|b| b.try_into().expect("N bytes"))
        .ok_or(DropReason::Malformed)
}

fn be16(f: &[u8], at: usize) -> Result<u16, DropReason> {
    bytes::<2>(f, at).map(u16::from_be_bytes)
}

fn mapped(a: [u8; 4]) -> [u8; 16] {
    Ipv4Addr::from(a).to_ipv6_mapped().octets()
}

/// The least a first fragment must hold of protocol `p`'s header for its verdict (ports,
/// TCP's flags and data offset, ICMP's type and identifier): RFC 1858's tiny fragments. A
/// later fragment starting below it would overwrite that header.
pub fn min_header(p: u8) -> usize {
    match p {
        proto::TCP => 20,
        proto::SCTP => 12,
        proto::UDP | proto::ICMP | proto::ICMPV6 => 8,
        _ => 0,
    }
}

fn has_ports(p: u8) -> bool {
    matches!(p, proto::TCP | proto::UDP | proto::SCTP)
}

/// The IPv6 headers the datapath walks over (RFC 8200 4; mobility, RFC 6275); anything else is
/// the upper layer.
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTH: u8 = 51;
const DEST_OPTS: u8 = 60;
const MOBILITY: u8 = 135;
/// Next-header values examined before giving up on a chain (`extension_header_limit`).
const HEADER_CHAIN_LIMIT: usize = 8;

/// The IP layer of a frame: where the upper-layer header starts, the fragment position and,
/// for fragments, where the IP packet ends by its own length field.
struct Ip {
    v6: bool,
    src: [u8; 16],
    dst: [u8; 16],
    proto: u8,
    l4: usize,
    fragment: Option<(bool, u32, usize)>, // (first, id, offset in bytes)
    /// Start of the fragmentable part (fragments only).
    frag_start: usize,
    ip_end: usize,
}

fn ipv4(f: &[u8]) -> Result<Ip, DropReason> {
    let h = bytes::<20>(f, 14)?;
    let ihl = (h[0] & 0x0f) as usize;
    if h[0] >> 4 != 4 || ihl < 5 {
        return Err(DropReason::Malformed);
    }
    let fo = u16::from_be_bytes([h[6], h[7]]);
    let (offset, more) = ((fo & 0x1fff) as usize * 8, fo & 0x2000 != 0);
    let l4 = 14 + ihl * 4;
    // Options are skipped by length: nothing in them changes which policy applies.
    Ok(Ip {
        v6: false,
        src: mapped([h[12], h[13], h[14], h[15]]),
        dst: mapped([h[16], h[17], h[18], h[19]]),
        proto: h[9],
        l4,
        fragment: (offset != 0 || more).then(|| {
            (
                offset == 0,
                u32::from(u16::from_be_bytes([h[4], h[5]])),
                offset,
            )
        }),
        frag_start: l4,
        ip_end: 14 + u16::from_be_bytes([h[2], h[3]]) as usize,
    })
}

/// IPv6 and its header chain. A fragment header ends the walk for a later fragment (what
/// follows is payload); a first fragment's chain goes on, and all of it must be in the first
/// fragment (RFC 7112). An atomic fragment (offset 0, no more) is a whole datagram.
fn ipv6(f: &[u8], first_of: &mut Option<Datagram>, ingress: bool) -> Result<Ip, DropReason> {
    let h = bytes::<8>(f, 14)?;
    if h[0] >> 4 != 6 {
        return Err(DropReason::Malformed);
    }
    let src = bytes::<16>(f, 22)?;
    let dst = bytes::<16>(f, 38)?;
    // IPv4-mapped addresses belong on no wire, and the datapath keeps IPv4 in that form.
    if v4_mapped(&src) || v4_mapped(&dst) {
        return Err(DropReason::Malformed);
    }
    let ip_end = 54 + u16::from_be_bytes([h[4], h[5]]) as usize;
    let mut ip = Ip {
        v6: true,
        src,
        dst,
        proto: 0,
        l4: 0,
        fragment: None,
        frag_start: 0,
        ip_end,
    };
    let mut next = h[6];
    let mut off = 54;
    let mut seen_fragment_header = false;
    for _ in 0..HEADER_CHAIN_LIMIT {
        match next {
            HOP_BY_HOP | ROUTING | DEST_OPTS | MOBILITY => {
                let e = bytes::<2>(f, off)?;
                next = e[0];
                off += (e[1] as usize + 1) * 8;
            }
            AUTH => {
                let e = bytes::<2>(f, off)?;
                next = e[0];
                off += (e[1] as usize + 2) * 4;
            }
            FRAGMENT => {
                let e = bytes::<8>(f, off)?;
                next = e[0];
                off += 8;
                // Two fragment headers: reassembled twice, nothing a verdict can rest on.
                if seen_fragment_header {
                    return Err(DropReason::Malformed);
                }
                seen_fragment_header = true;
                ip.frag_start = off;
                let fo = u16::from_be_bytes([e[2], e[3]]);
                let (offset, more) = ((fo & 0xfff8) as usize, fo & 1 != 0);
                if offset != 0 || more {
                    let id = u32::from_be_bytes([e[4], e[5], e[6], e[7]]);
                    ip.fragment = Some((offset == 0, id, offset));
                    if offset == 0 {
                        *first_of = Some(Datagram {
                            ingress,
                            id,
                            src,
                            dst,
                            proto: 0,
                        });
                    }
                }
                if offset != 0 {
                    ip.proto = next;
                    ip.l4 = off;
                    return Ok(ip);
                }
            }
            upper => {
                ip.proto = upper;
                ip.l4 = off;
                return Ok(ip);
            }
        }
    }
    Err(DropReason::ExtensionHeaderLimit)
}

/// `::ffff:a.b.c.d`.
fn v4_mapped(a: &[u8; 16]) -> bool {
    Ipv6Addr::from(*a).to_ipv4_mapped().is_some()
}

/// The tuple of the packet an ICMP error quotes (its IP header and first 8 L4 bytes).
fn quoted(f: &[u8], at: usize, v6: bool) -> Result<(Tuple, usize), DropReason> {
    let (mut t, l4) = if v6 {
        // The quoted header's chain is not walked: its next header is taken as the protocol.
        let t = Tuple {
            proto: bytes::<1>(f, at + 6)?[0],
            src: bytes::<16>(f, at + 8)?,
            dst: bytes::<16>(f, at + 24)?,
            ..Tuple::default()
        };
        if v4_mapped(&t.src) || v4_mapped(&t.dst) {
            return Err(DropReason::Malformed);
        }
        (t, at + 40)
    } else {
        let vihl = bytes::<1>(f, at)?[0];
        let ihl = (vihl & 0x0f) as usize;
        if vihl >> 4 != 4 || ihl < 5 {
            return Err(DropReason::Malformed);
        }
        let t = Tuple {
            proto: bytes::<1>(f, at + 9)?[0],
            src: mapped(bytes::<4>(f, at + 12)?),
            dst: mapped(bytes::<4>(f, at + 16)?),
            ..Tuple::default()
        };
        (t, at + ihl * 4)
    };
    if has_ports(t.proto) {
        t.sport = be16(f, l4)?;
        t.dport = be16(f, l4 + 2)?;
    } else if t.proto == proto::ICMP || t.proto == proto::ICMPV6 {
        let h = bytes::<8>(f, l4)?;
        // A quoted echo request: its identifier is the connection's port, as it was tracked.
        if h[0] == if v6 { 128 } else { 8 } {
            t.sport = u16::from_be_bytes([h[4], h[5]]);
        }
    }
    Ok((t, l4))
}

/// Parses a frame seen at x/a's veth (`ingress`: entering the pod).
pub fn parse(f: &[u8], ingress: bool) -> Result<Parsed, Failed> {
    let mut first_of = None;
    let result = parse_into(f, ingress, &mut first_of);
    result.map_err(|reason| Failed { reason, first_of })
}

fn parse_into(
    f: &[u8],
    ingress: bool,
    first_of: &mut Option<Datagram>,
) -> Result<Parsed, DropReason> {
    let ip = match be16(f, 12)? {
        0x0800 => {
            let ip = ipv4(f)?;
            if let Some((true, id, _)) = ip.fragment {
                *first_of = Some(Datagram {
                    ingress,
                    id,
                    src: ip.src,
                    dst: ip.dst,
                    proto: ip.proto,
                });
            }
            ip
        }
        0x86dd => ipv6(f, first_of, ingress)?,
        0x0806 => {
            return Ok(Parsed {
                v6: false,
                kind: Kind::LinkControl,
                tuple: Tuple::default(),
                tcp_flags: 0,
                fragment: Fragment::None,
                datagram: None,
            })
        }
        // VLAN tags included: a tagged frame must not carry an IP packet past the policy.
        _ => return Err(DropReason::UnsupportedEthertype),
    };
    let p = ip.proto;
    let mut parsed = Parsed {
        v6: ip.v6,
        kind: Kind::Plain,
        tuple: Tuple {
            src: ip.src,
            dst: ip.dst,
            proto: p,
            ..Tuple::default()
        },
        tcp_flags: 0,
        fragment: Fragment::None,
        datagram: ip.fragment.map(|(_, id, _)| Datagram {
            ingress,
            id,
            src: ip.src,
            dst: ip.dst,
            proto: if ip.v6 { 0 } else { p },
        }),
    };
    let l4 = ip.l4;
    match ip.fragment {
        Some((false, _, offset)) => {
            // No upper-layer header: it follows its first fragment.
            parsed.fragment = Fragment::Later { offset };
            return Ok(parsed);
        }
        Some((true, _, _)) => {
            // A first fragment must hold its whole judged header within the IP length.
            let mut end = l4 + min_header(p);
            if end > ip.ip_end {
                if has_ports(p) && l4 + 4 <= ip.ip_end {
                    // (Its ports are read for the report: a frame too short for them fails.)
                    bytes::<4>(f, l4)?;
                }
                return Err(DropReason::TinyFragment);
            }
            if p == proto::TCP {
                let doff = (bytes::<1>(f, l4 + 12)?[0] >> 4) as usize;
                if doff > 5 {
                    end = l4 + doff * 4;
                    if end > ip.ip_end {
                        return Err(DropReason::TinyFragment);
                    }
                }
            }
            parsed.fragment = Fragment::First {
                hdr_end: end - ip.frag_start,
            };
        }
        None => {}
    }
    let t = &mut parsed.tuple;
    if p == proto::TCP {
        let h = bytes::<14>(f, l4)?;
        t.sport = u16::from_be_bytes([h[0], h[1]]);
        t.dport = u16::from_be_bytes([h[2], h[3]]);
        parsed.tcp_flags = h[13];
    } else if has_ports(p) {
        t.sport = be16(f, l4)?;
        t.dport = be16(f, l4 + 2)?;
    } else if (p == proto::ICMP && !ip.v6) || (p == proto::ICMPV6 && ip.v6) {
        let h = bytes::<8>(f, l4)?;
        let id = u16::from_be_bytes([h[4], h[5]]);
        let error = match (ip.v6, h[0]) {
            // Echo: the identifier is the requester's port, so a reply finds its request.
            (false, 8) | (true, 128) => {
                t.sport = id;
                false
            }
            (false, 0) | (true, 129) => {
                t.dport = id;
                false
            }
            (false, 3 | 4 | 5 | 11 | 12) | (true, 1..=4) => true,
            // MLD and neighbour discovery, only unfragmented: in a fragment it is not link
            // control (RFC 6980), and passing it would pass its datagram's other fragments.
            (true, 130..=137 | 143) if parsed.fragment == Fragment::None => {
                parsed.kind = Kind::LinkControl;
                false
            }
            _ => false,
        };
        if error {
            let (inner, inner_l4) = quoted(f, l4 + 8, ip.v6)?;
            parsed.kind = Kind::IcmpError(inner);
            if let Fragment::First { hdr_end } = &mut parsed.fragment {
                // Judged on the quoted packet: its header and 8 bytes must be here.
                let end = inner_l4 + 8;
                if end > ip.ip_end {
                    return Err(DropReason::TinyFragment);
                }
                *hdr_end = end - ip.frag_start;
            }
        }
    }
    Ok(parsed)
}

/// A connection's key: its two ends in canonical order (the lower (address, port) first) and
/// the protocol, so that both directions find it.
fn conn_key(t: &Tuple) -> Tuple {
    if (t.src, t.sport) <= (t.dst, t.dport) {
        *t
    } else {
        Tuple {
            src: t.dst,
            dst: t.src,
            sport: t.dport,
            dport: t.sport,
            proto: t.proto,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conn {
    Open,
    /// A FIN was seen: a SYN without ACK on its tuple opens a new connection.
    Closing,
    /// Reset, or opened by a RST: its next packet is a new flow (closed timeout 0).
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Record {
    /// Its first fragment's verdict and judged header length.
    Head { allowed: bool, hdr_end: usize },
    /// Later fragments passed before any first fragment; the lowest offset among them.
    Headless { min_later: usize },
}

#[derive(Default, Debug)]
pub struct Model {
    conns: HashMap<Tuple, Conn>,
    fragments: HashMap<Datagram, Record>,
}

fn addr(b: [u8; 16], v6: bool) -> IpAddr {
    let a = Ipv6Addr::from(b);
    match (v6, a.to_ipv4_mapped()) {
        (false, Some(v4)) => IpAddr::V4(v4),
        _ => IpAddr::V6(a),
    }
}

impl Model {
    /// Whether a packet of this tuple belongs to an open connection (either direction).
    pub fn tracks(&self, t: &Tuple) -> bool {
        matches!(
            self.conns.get(&conn_key(t)),
            Some(Conn::Open | Conn::Closing)
        )
    }

    /// The verdict for a frame, updating the model's state as the kernel updates its maps.
    pub fn packet(&mut self, f: &[u8], ingress: bool) -> Prediction {
        let p = match parse(f, ingress) {
            Ok(p) => p,
            Err(failed) => {
                // A first fragment dropped as tiny or malformed takes its datagram with it.
                if let Some(d) = failed.first_of {
                    self.fragments.insert(
                        d,
                        Record::Head {
                            allowed: false,
                            hdr_end: 0,
                        },
                    );
                }
                return Prediction::Sure(Verdict::Drop(failed.reason));
            }
        };
        if p.kind == Kind::LinkControl {
            return Prediction::Sure(Verdict::Pass);
        }
        let pod = if p.v6 {
            policy::POD_V6.octets()
        } else {
            policy::POD_V4.to_ipv6_mapped().octets()
        };
        if !ingress && p.tuple.src != pod {
            // A pod sends from its own address or not at all.
            return Prediction::Sure(Verdict::Drop(DropReason::SpoofedSource));
        }
        let peer = addr(if ingress { p.tuple.src } else { p.tuple.dst }, p.v6);
        let Some(who) = policy::identity(peer) else {
            return Prediction::Unsure("an IPv4-mapped peer address in an IPv6 packet");
        };
        // Both directions of x/a are isolated under the fixed policy.
        let isolated = true;
        let d = p.datagram;
        match p.fragment {
            Fragment::Later { offset } => Prediction::Sure(self.later_fragment(
                d.expect("a fragment has a datagram"),
                offset,
                p.tuple.proto,
                ingress,
                isolated,
            )),
            Fragment::First { hdr_end } => {
                let v = self.judge(&p, ingress, peer, who, isolated);
                Prediction::Sure(self.first_fragment(d.expect("a fragment"), v, hdr_end))
            }
            Fragment::None => Prediction::Sure(self.judge(&p, ingress, peer, who, isolated)),
        }
    }

    /// An unfragmented packet or a first fragment.
    fn judge(
        &mut self,
        p: &Parsed,
        ingress: bool,
        peer: IpAddr,
        who: Identity,
        isolated: bool,
    ) -> Verdict {
        if let Kind::IcmpError(inner) = p.kind {
            // An error never opens anything: it passes when it is about a connection of ours
            // (one the datapath still holds, open or closed), when the direction is open, or
            // when the node sends it.
            if self.conns.contains_key(&conn_key(&inner)) || !isolated || who == Identity::Node {
                return Verdict::Pass;
            }
            return Verdict::Drop(DropReason::IcmpErrorUnrelated);
        }
        let key = conn_key(&p.tuple);
        let tcp = p.tuple.proto == proto::TCP;
        const FIN: u8 = 0x01;
        const SYN: u8 = 0x02;
        const RST: u8 = 0x04;
        const ACK: u8 = 0x10;
        let tracked = self.conns.get(&key).copied();
        // A SYN (no ACK) after a FIN is a new connection on the old one's tuple.
        let reopened =
            tracked == Some(Conn::Closing) && tcp && p.tcp_flags & (SYN | ACK | RST) == SYN;
        if matches!(tracked, Some(Conn::Open | Conn::Closing)) && !reopened {
            // A tracked connection passes; a RST closes it at once, a FIN starts its close.
            if tcp && p.tcp_flags & RST != 0 {
                self.conns.insert(key, Conn::Closed);
            } else if tcp && p.tcp_flags & FIN != 0 {
                self.conns.insert(key, Conn::Closing);
            }
            return Verdict::Pass;
        }
        let allowed = !isolated || policy::allows(ingress, peer, who, p.tuple.proto, p.tuple.dport);
        if !allowed {
            return Verdict::Drop(DropReason::PolicyDenied);
        }
        let state = if tcp && p.tcp_flags & RST != 0 {
            Conn::Closed
        } else if tcp && p.tcp_flags & FIN != 0 {
            Conn::Closing
        } else {
            Conn::Open
        };
        self.conns.insert(key, state);
        Verdict::Pass
    }

    /// Records a first fragment's verdict for its later fragments; a later fragment that
    /// already passed and starts inside the header just judged drops it.
    fn first_fragment(&mut self, d: Datagram, v: Verdict, hdr_end: usize) -> Verdict {
        let mut v = v;
        if let Some(Record::Headless { min_later }) = self.fragments.get(&d) {
            if *min_later < hdr_end && v == Verdict::Pass {
                v = Verdict::Drop(DropReason::FragmentOverlap);
            }
        }
        self.fragments.insert(
            d,
            Record::Head {
                allowed: v == Verdict::Pass,
                hdr_end,
            },
        );
        v
    }

    fn later_fragment(
        &mut self,
        d: Datagram,
        offset: usize,
        claimed: u8,
        ingress: bool,
        isolated: bool,
    ) -> Verdict {
        // Below the least header of the protocol it claims, a later fragment overlaps the
        // header of any first fragment of its datagram.
        let floor = min_header(claimed);
        if let Some(Record::Head { allowed, hdr_end }) = self.fragments.get(&d).copied() {
            if !allowed {
                return Verdict::Drop(DropReason::FragmentOfDropped);
            }
            if offset < floor || offset < hdr_end {
                self.fragments.insert(
                    d,
                    Record::Head {
                        allowed: false,
                        hdr_end,
                    },
                );
                return Verdict::Drop(DropReason::FragmentOverlap);
            }
            return Verdict::Pass;
        }
        if offset < floor {
            return Verdict::Drop(DropReason::FragmentOverlap);
        }
        // No judged first fragment: the receiving pod's kernel holds it until one passes, but
        // nothing unjudged leaves a pod isolated for egress.
        if isolated && !ingress {
            return Verdict::Drop(DropReason::FragmentWithoutHead);
        }
        let min_later = match self.fragments.get(&d) {
            Some(Record::Headless { min_later }) => (*min_later).min(offset),
            _ => offset,
        };
        self.fragments.insert(d, Record::Headless { min_later });
        Verdict::Pass
    }
}
