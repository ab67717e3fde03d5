//! Frames from a structured description that `arbitrary` fills in from the fuzzer's bytes.
//! Most descriptions make well-formed packets of the flows the policy is about (its peers, its
//! ports, fragments of one datagram), so the fuzzer gets past the parser and into the policy
//! and fragment logic; the damage options (truncation, lengths that lie, stray bytes) then
//! take them apart. The model judges the bytes, not this description.

use std::net::IpAddr;

use arbitrary::Arbitrary;
use enforcer_common::proto;
use enforcer_tests::packet::checksum;

use super::policy::{PEERS_V4, PEERS_V6, POD_V4, POD_V6};

/// Ports the policy names, their neighbours, and some others.
const PORTS: [u16; 12] = [
    80, 53, 9000, 443, 8000, 8500, 8999, 9001, 7999, 40000, 1234, 0,
];

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Port {
    Known(u8),
    Any(u16),
}

impl Port {
    fn get(self) -> u16 {
        match self {
            Port::Known(i) => PORTS[i as usize % PORTS.len()],
            Port::Any(p) => p,
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub enum L4 {
    Tcp {
        sport: Port,
        dport: Port,
        flags: u8,
        /// Data offset in 32-bit words above 5 (options, zero-filled).
        extra_words: u8,
    },
    Udp {
        sport: Port,
        dport: Port,
    },
    Sctp {
        sport: Port,
        dport: Port,
    },
    /// ICMP for IPv4, ICMPv6 for IPv6.
    Icmp(Icmp),
    /// Any protocol number, with a few bytes behind it.
    Other(u8),
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Icmp {
    EchoRequest(u16),
    EchoReply(u16),
    /// An error quoting a packet (of x/a's flows, or the other way round).
    Error {
        code: u8,
        quote: Box<Quote>,
    },
    /// Neighbour discovery or MLD (IPv6; type 130 + n % 14).
    LinkControl(u8),
    Any {
        kind: u8,
        code: u8,
    },
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Quote {
    /// The quoted packet was sent by x/a (an error about x/a's packet comes back to it).
    pub from_pod: bool,
    pub proto: QuotedProto,
    pub sport: Port,
    pub dport: Port,
    /// Bytes of the quoted L4 header kept (the rest of the quote is cut off).
    pub keep: Option<u8>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum QuotedProto {
    Tcp,
    Udp,
    Sctp,
    EchoRequest,
    Other(u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum FragSpec {
    None,
    /// Offset 0, more fragments; `id` picks one of a few datagrams.
    First {
        id: u8,
    },
    /// `offset` in 8-byte units.
    Later {
        id: u8,
        offset: Offset,
        more: bool,
    },
    /// IPv6: a fragment header with offset 0 and no more fragments (a whole datagram).
    Atomic,
}

/// A later fragment's offset (8-byte units): mostly small, where it can overlap the header of
/// its datagram's first fragment (a TCP header ends at 20 bytes, 2.5 units).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Offset {
    /// 1 to 8 units.
    Small(u8),
    Any(u16),
}

impl Offset {
    fn units(self) -> u16 {
        match self {
            Offset::Small(n) => 1 + (n % 8) as u16,
            Offset::Any(n) => n & 0x1fff,
        }
    }
}

/// How a packet relates to the one before it in the input: the fuzzer would seldom repeat
/// every address, port and fragment id by chance, and a reply, a reset or the other
/// fragments of a datagram need exactly that.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Own,
    /// Same direction, peer, family, ports and datagram as the packet before.
    Same,
    /// The other direction of the packet before (ports swapped, echo request → reply).
    Reply,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct ExtHeader {
    /// Hop-by-hop, routing, destination options, mobility, AH, another fragment header, or
    /// any number.
    pub kind: u8,
    /// Length field (units of 8 bytes, AH: 4), kept small.
    pub len: u8,
    /// Behind the fragment header (in the fragmentable part) rather than before it.
    pub behind_fragment: bool,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Damage {
    None,
    /// The frame cut to this many bytes.
    Truncate(u16),
    /// Bytes overwritten (offset modulo the frame's length).
    Bytes(Vec<(u16, u8)>),
    /// The IP length field set to this (IPv4 total length, IPv6 payload length).
    IpLength(u16),
    /// The ethertype replaced.
    Ethertype(u16),
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Spec {
    pub link: Link,
    /// Entering x/a (else leaving it).
    pub ingress: bool,
    pub v6: bool,
    /// Index into the peers of its family; past them, `raw` is the peer's address.
    pub peer: u8,
    pub raw: [u8; 16],
    /// The source of a packet leaving x/a is not x/a's address (spoofed) when this is set.
    pub spoof: bool,
    pub l4: L4,
    pub frag: FragSpec,
    /// Bytes of IPv4 options (up to 40, NOP-filled; a random one is written in the middle).
    pub options: u8,
    pub option_byte: u8,
    pub ext: Vec<ExtHeader>,
    /// Payload bytes after the L4 header.
    pub payload: u8,
    /// Bytes of the L4 header and payload kept, the IP length following (a tiny fragment,
    /// a short header).
    pub keep_l4: Option<u8>,
    pub damage: Damage,
}

fn peer(s: &Spec) -> IpAddr {
    if s.v6 {
        match PEERS_V6.get(s.peer as usize) {
            Some(a) => IpAddr::V6(*a),
            None if (s.peer as usize).is_multiple_of(4) => IpAddr::V6(s.raw.into()),
            None => IpAddr::V6(PEERS_V6[s.peer as usize % PEERS_V6.len()]),
        }
    } else {
        match PEERS_V4.get(s.peer as usize) {
            Some(a) => IpAddr::V4(*a),
            None if (s.peer as usize).is_multiple_of(4) => {
                IpAddr::V4([s.raw[0], s.raw[1], s.raw[2], s.raw[3]].into())
            }
            None => IpAddr::V4(PEERS_V4[s.peer as usize % PEERS_V4.len()]),
        }
    }
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn ports(h: &mut Vec<u8>, sport: u16, dport: u16) {
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
}

/// A minimal IP header (no options, no extension headers) for a quoted packet.
fn ip_header(v6: bool, src: &[u8], dst: &[u8], p: u8, len: usize) -> Vec<u8> {
    if v6 {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&(len as u16).to_be_bytes());
        h.extend_from_slice(&[p, 64]);
        h.extend_from_slice(src);
        h.extend_from_slice(dst);
        h
    } else {
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&((20 + len) as u16).to_be_bytes());
        h.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, p, 0, 0]);
        h.extend_from_slice(src);
        h.extend_from_slice(dst);
        let sum = checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h
    }
}

fn quote(v6: bool, q: &Quote, pod: &[u8], peer: &[u8]) -> Vec<u8> {
    let (src, dst) = if q.from_pod { (pod, peer) } else { (peer, pod) };
    let (p, mut l4) = match q.proto {
        QuotedProto::Tcp => {
            let mut h = Vec::new();
            ports(&mut h, q.sport.get(), q.dport.get());
            h.extend_from_slice(&[0, 0, 0, 1]);
            (proto::TCP, h)
        }
        QuotedProto::Udp => {
            let mut h = Vec::new();
            ports(&mut h, q.sport.get(), q.dport.get());
            h.extend_from_slice(&[0, 8, 0, 0]);
            (proto::UDP, h)
        }
        QuotedProto::Sctp => {
            let mut h = Vec::new();
            ports(&mut h, q.sport.get(), q.dport.get());
            h.extend_from_slice(&[0, 0, 0, 0]);
            (proto::SCTP, h)
        }
        QuotedProto::EchoRequest => {
            let mut h = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
            h.extend_from_slice(&q.sport.get().to_be_bytes());
            h.extend_from_slice(&[0, 1]);
            (if v6 { proto::ICMPV6 } else { proto::ICMP }, h)
        }
        QuotedProto::Other(p) => (p, vec![0; 8]),
    };
    if let Some(k) = q.keep {
        l4.truncate(k as usize);
    }
    let mut out = ip_header(v6, src, dst, p, 8);
    out.extend_from_slice(&l4);
    out
}

/// The L4 header and payload, and the protocol number.
fn l4(s: &Spec, pod: &[u8], peer: &[u8]) -> (u8, Vec<u8>) {
    let (p, mut h) = match &s.l4 {
        L4::Tcp {
            sport,
            dport,
            flags,
            extra_words,
        } => {
            let words = 5 + (extra_words % 11) as usize;
            let mut h = Vec::new();
            ports(&mut h, sport.get(), dport.get());
            h.extend_from_slice(&[
                0,
                0,
                0,
                1,
                0,
                0,
                0,
                0,
                (words as u8) << 4,
                *flags,
                0xff,
                0xff,
            ]);
            h.extend_from_slice(&[0, 0, 0, 0]);
            h.resize(words * 4, 1); // NOP options
            (proto::TCP, h)
        }
        L4::Udp { sport, dport } => {
            let mut h = Vec::new();
            ports(&mut h, sport.get(), dport.get());
            let len = 8 + s.payload as u16;
            h.extend_from_slice(&len.to_be_bytes());
            h.extend_from_slice(&[0, 0]);
            (proto::UDP, h)
        }
        L4::Sctp { sport, dport } => {
            let mut h = Vec::new();
            ports(&mut h, sport.get(), dport.get());
            h.extend_from_slice(&[0; 8]);
            (proto::SCTP, h)
        }
        L4::Icmp(icmp) => {
            let p = if s.v6 { proto::ICMPV6 } else { proto::ICMP };
            let h = match icmp {
                Icmp::EchoRequest(id) | Icmp::EchoReply(id) => {
                    let request = matches!(icmp, Icmp::EchoRequest(_));
                    let t = match (s.v6, request) {
                        (false, true) => 8,
                        (false, false) => 0,
                        (true, true) => 128,
                        (true, false) => 129,
                    };
                    let mut h = vec![t, 0, 0, 0];
                    h.extend_from_slice(&id.to_be_bytes());
                    h.extend_from_slice(&[0, 1]);
                    h
                }
                Icmp::Error { code, quote: q } => {
                    let errors: &[u8] = if s.v6 {
                        &[1, 2, 3, 4]
                    } else {
                        &[3, 4, 5, 11, 12]
                    };
                    let t = errors[*code as usize % errors.len()];
                    let mut h = vec![t, code % 16, 0, 0, 0, 0, 0, 0];
                    h.extend_from_slice(&quote(s.v6, q, pod, peer));
                    h
                }
                Icmp::LinkControl(n) => {
                    let mut h = vec![130 + n % 14, 0, 0, 0];
                    h.extend_from_slice(&[0; 20]);
                    h
                }
                Icmp::Any { kind, code } => vec![*kind, *code, 0, 0, 0, 0, 0, 0],
            };
            (p, h)
        }
        L4::Other(p) => (*p, vec![0xab; 8]),
    };
    h.extend(std::iter::repeat_n(0x5a, s.payload as usize));
    if let Some(k) = s.keep_l4 {
        h.truncate(k as usize);
    }
    (p, h)
}

const EXT_KINDS: [u8; 6] = [0, 43, 60, 135, 51, 44];

fn ext_kind(e: &ExtHeader) -> u8 {
    match EXT_KINDS.get(e.kind as usize) {
        Some(k) => *k,
        None if e.kind >= 128 => e.kind,
        None => EXT_KINDS[e.kind as usize % EXT_KINDS.len()],
    }
}

fn ext_bytes(kind: u8, e: &ExtHeader) -> Vec<u8> {
    let len = e.len % 3;
    let size = match kind {
        51 => (len as usize + 2) * 4,
        44 => 8,
        _ => (len as usize + 1) * 8,
    };
    let mut h = vec![0u8; size];
    h[1] = if kind == 44 { 0 } else { len };
    h
}

/// Fragment identification: one of four datagrams.
fn frag_id(id: u8) -> u32 {
    0x1000 + (id % 4) as u32
}

fn swapped(l4: &L4) -> L4 {
    match l4.clone() {
        L4::Tcp {
            sport,
            dport,
            flags,
            extra_words,
        } => L4::Tcp {
            sport: dport,
            dport: sport,
            flags,
            extra_words,
        },
        L4::Udp { sport, dport } => L4::Udp {
            sport: dport,
            dport: sport,
        },
        L4::Sctp { sport, dport } => L4::Sctp {
            sport: dport,
            dport: sport,
        },
        L4::Icmp(Icmp::EchoRequest(id)) => L4::Icmp(Icmp::EchoReply(id)),
        L4::Icmp(Icmp::EchoReply(id)) => L4::Icmp(Icmp::EchoRequest(id)),
        other => other,
    }
}

fn frag_of(f: FragSpec) -> Option<u8> {
    match f {
        FragSpec::First { id } | FragSpec::Later { id, .. } => Some(id),
        _ => None,
    }
}

/// The specs with their links to the packet before resolved into plain specs.
pub fn resolve(specs: &[Spec]) -> Vec<Spec> {
    let mut out: Vec<Spec> = Vec::with_capacity(specs.len());
    for s in specs {
        let mut e = s.clone();
        if let (Some(prev), Link::Same | Link::Reply) = (out.last(), s.link) {
            let reply = s.link == Link::Reply;
            e.v6 = prev.v6;
            e.peer = prev.peer;
            e.raw = prev.raw;
            e.spoof = prev.spoof && s.spoof;
            e.ingress = prev.ingress != reply;
            let mut l4 = if reply {
                swapped(&prev.l4)
            } else {
                prev.l4.clone()
            };
            // Its own TCP flags: a SYN's answer, a reset, a FIN.
            if let (L4::Tcp { flags, .. }, L4::Tcp { flags: own, .. }) = (&mut l4, &s.l4) {
                *flags = *own;
            }
            e.l4 = l4;
            // Another fragment of the same datagram.
            if let (Some(id), false) = (frag_of(prev.frag), reply) {
                e.frag = match s.frag {
                    FragSpec::First { .. } => FragSpec::First { id },
                    FragSpec::Later { offset, more, .. } => FragSpec::Later { id, offset, more },
                    other => other,
                };
            }
        }
        out.push(e);
    }
    out
}

/// The frame a spec describes.
pub fn frame(s: &Spec) -> Vec<u8> {
    let pod = if s.v6 {
        IpAddr::V6(POD_V6)
    } else {
        IpAddr::V4(POD_V4)
    };
    let peer = peer(s);
    let (pod_b, peer_b) = (octets(pod), octets(peer));
    let (mut src, dst) = if s.ingress {
        (peer_b.clone(), pod_b.clone())
    } else {
        (pod_b.clone(), peer_b.clone())
    };
    if s.spoof {
        let last = src.len() - 1;
        src[last] ^= 1;
    }
    let (p, l4) = l4(s, &pod_b, &peer_b);
    let mut ip = if s.v6 {
        ipv6(s, &src, &dst, p, &l4)
    } else {
        ipv4(s, &src, &dst, p, &l4)
    };
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&if s.v6 { 0x86ddu16 } else { 0x0800 }.to_be_bytes());
    match &s.damage {
        Damage::IpLength(n) => {
            if s.v6 {
                ip[4..6].copy_from_slice(&n.to_be_bytes());
            } else {
                ip[2..4].copy_from_slice(&n.to_be_bytes());
            }
        }
        Damage::Ethertype(t) => f[12..14].copy_from_slice(&t.to_be_bytes()),
        _ => {}
    }
    f.extend_from_slice(&ip);
    match &s.damage {
        Damage::Truncate(n) => f.truncate(*n as usize),
        Damage::Bytes(b) => {
            let len = f.len();
            for (at, v) in b.iter().take(4) {
                f[*at as usize % len] = *v;
            }
        }
        _ => {}
    }
    f
}

fn ipv4(s: &Spec, src: &[u8], dst: &[u8], p: u8, l4: &[u8]) -> Vec<u8> {
    let mut opts = vec![1u8; (s.options % 41) as usize];
    while !opts.len().is_multiple_of(4) {
        opts.push(0);
    }
    if let Some(mid) = opts.len().checked_sub(1).map(|l| l / 2) {
        opts[mid] = s.option_byte;
    }
    let ihl = 5 + opts.len() / 4;
    let (id, fo) = match s.frag {
        FragSpec::First { id } => (frag_id(id), 0x2000),
        FragSpec::Later { id, offset, more } => {
            (frag_id(id), offset.units() | if more { 0x2000 } else { 0 })
        }
        FragSpec::None | FragSpec::Atomic => (0x1234, 0x4000), // DF
    };
    let mut h = vec![0x40 | ihl as u8, 0];
    h.extend_from_slice(&((ihl * 4 + l4.len()) as u16).to_be_bytes());
    h.extend_from_slice(&(id as u16).to_be_bytes());
    h.extend_from_slice(&fo.to_be_bytes());
    h.extend_from_slice(&[64, p, 0, 0]);
    h.extend_from_slice(src);
    h.extend_from_slice(dst);
    h.extend_from_slice(&opts);
    let sum = checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h.extend_from_slice(l4);
    h
}

fn ipv6(s: &Spec, src: &[u8], dst: &[u8], p: u8, l4: &[u8]) -> Vec<u8> {
    // The chain: extension headers before the fragment header, the fragment header, those
    // behind it, then the upper layer.
    let mut chain: Vec<(u8, Vec<u8>)> = Vec::new();
    let exts: Vec<_> = s.ext.iter().take(10).collect();
    for e in exts.iter().filter(|e| !e.behind_fragment) {
        let k = ext_kind(e);
        chain.push((k, ext_bytes(k, e)));
    }
    let frag = match s.frag {
        FragSpec::None => None,
        FragSpec::First { id } => Some((0u16, true, frag_id(id))),
        FragSpec::Later { id, offset, more } => Some((offset.units(), more, frag_id(id))),
        FragSpec::Atomic => Some((0, false, 0x2222)),
    };
    if let Some((offset, more, id)) = frag {
        let mut fh = vec![0u8; 8];
        fh[2..4].copy_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
        fh[4..8].copy_from_slice(&id.to_be_bytes());
        chain.push((44, fh));
    }
    for e in exts.iter().filter(|e| e.behind_fragment) {
        let k = ext_kind(e);
        chain.push((k, ext_bytes(k, e)));
    }
    let mut body = Vec::new();
    for i in 0..chain.len() {
        let next = chain.get(i + 1).map_or(p, |(k, _)| *k);
        let mut h = chain[i].1.clone();
        h[0] = next;
        body.extend_from_slice(&h);
    }
    body.extend_from_slice(l4);
    let first = chain.first().map_or(p, |(k, _)| *k);
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&[first, 64]);
    h.extend_from_slice(src);
    h.extend_from_slice(dst);
    h.extend_from_slice(&body);
    h
}
