//! Crafted packets: Ethernet + IPv4/IPv6 (options, extension headers, fragments) + L4.

use std::net::IpAddr;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;
pub const SCTP: u8 = 132;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;

/// Fragment fields: offset in 8-byte units, more-fragments flag, identification.
#[derive(Clone, Copy, Debug)]
pub struct Frag {
    pub offset: u16,
    pub more: bool,
    pub id: u32,
}

/// Everything about the IP layer beyond addresses and protocol.
#[derive(Clone, Debug, Default)]
pub struct IpOpts {
    /// IPv4 options bytes (padded to 4 bytes by the builder).
    pub ipv4_options: Vec<u8>,
    /// IPv6 extension headers by type (0 hop-by-hop, 43 routing, 60 destination options;
    /// 8 bytes each), in order, before the upper-layer header or the fragment header.
    pub ipv6_ext: Vec<u8>,
    pub frag: Option<Frag>,
}

pub fn tcp_hdr(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = flags;
    h[14..16].copy_from_slice(&65535u16.to_be_bytes());
    h
}

pub fn udp_hdr(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// SCTP common header (ports, tag, checksum) and nothing else.
pub fn sctp_hdr(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 12];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h
}

/// ICMP/ICMPv6 echo request or reply.
pub fn echo(v6: bool, request: bool, id: u16) -> Vec<u8> {
    let ty = match (v6, request) {
        (false, true) => 8,
        (false, false) => 0,
        (true, true) => 128,
        (true, false) => 129,
    };
    let mut h = vec![ty, 0, 0, 0];
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&1u16.to_be_bytes());
    h
}

/// An ICMP error (v4: destination unreachable/port unreachable; v6: destination unreachable)
/// quoting `inner` (an IP packet without Ethernet header).
pub fn icmp_error(v6: bool, inner: &[u8]) -> Vec<u8> {
    let mut h = if v6 {
        vec![1, 4, 0, 0, 0, 0, 0, 0]
    } else {
        vec![3, 3, 0, 0, 0, 0, 0, 0]
    };
    h.extend_from_slice(inner);
    h
}

/// ICMPv6 neighbour solicitation (type 135), body zeroed.
pub fn neighbour_solicitation() -> Vec<u8> {
    let mut h = vec![135, 0, 0, 0];
    h.extend_from_slice(&[0u8; 20]);
    h
}

/// An IP packet (no Ethernet header).
pub fn ip(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8], o: &IpOpts) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut opts = o.ipv4_options.clone();
            while !opts.len().is_multiple_of(4) {
                opts.push(0);
            }
            let ihl = 5 + opts.len() / 4;
            let total = ihl * 4 + l4.len();
            let mut h = vec![0u8; 20];
            h[0] = 0x40 | ihl as u8;
            h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            let (id, fo) = match o.frag {
                Some(f) => (f.id as u16, f.offset | if f.more { 0x2000 } else { 0 }),
                None => (0x1234, 0x4000), // DF
            };
            h[4..6].copy_from_slice(&id.to_be_bytes());
            h[6..8].copy_from_slice(&fo.to_be_bytes());
            h[8] = 64;
            h[9] = proto;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            h.extend_from_slice(&opts);
            let sum = checksum(&h);
            h[10..12].copy_from_slice(&sum.to_be_bytes());
            h.extend_from_slice(l4);
            h
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            // Chain: extension headers, then the fragment header, then the payload.
            let mut chain: Vec<(u8, Vec<u8>)> =
                o.ipv6_ext.iter().map(|&t| (t, vec![0u8; 8])).collect();
            if let Some(f) = o.frag {
                let mut fh = vec![0u8; 8];
                let fo = (f.offset << 3) | u16::from(f.more);
                fh[2..4].copy_from_slice(&fo.to_be_bytes());
                fh[4..8].copy_from_slice(&f.id.to_be_bytes());
                chain.push((44, fh));
            }
            let mut body = Vec::new();
            for i in 0..chain.len() {
                let next = chain.get(i + 1).map_or(proto, |(t, _)| *t);
                let mut hdr = chain[i].1.clone();
                hdr[0] = next;
                body.extend_from_slice(&hdr);
            }
            body.extend_from_slice(l4);
            let first = chain.first().map_or(proto, |(t, _)| *t);
            let mut h = vec![0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&(body.len() as u16).to_be_bytes());
            h[6] = first;
            h[7] = 64;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
            h.extend_from_slice(&body);
            h
        }
        _ => panic!("mixed address families"),
    }
}

/// An Ethernet frame around an IP packet.
pub fn eth(ip_packet: &[u8]) -> Vec<u8> {
    let ethertype: u16 = if ip_packet.first().is_some_and(|b| b >> 4 == 6) {
        0x86dd
    } else {
        0x0800
    };
    frame(ethertype, ip_packet)
}

pub fn frame(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A complete TCP frame.
pub fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    eth(&ip(
        src.parse().unwrap(),
        dst.parse().unwrap(),
        TCP,
        &tcp_hdr(sport, dport, flags),
        &IpOpts::default(),
    ))
}

/// A complete UDP frame.
pub fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    eth(&ip(
        src.parse().unwrap(),
        dst.parse().unwrap(),
        UDP,
        &udp_hdr(sport, dport, b"ping"),
        &IpOpts::default(),
    ))
}

pub fn checksum(b: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in b.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The addresses, ports and checksum state of a plain frame (Ethernet, IPv4 without options
/// or IPv6 without extension headers, then TCP or UDP), as a test reads a rewritten packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// The IPv4 header checksum verifies (always true for IPv6).
    pub ip_checksum_ok: bool,
    /// The TCP/UDP checksum verifies over the pseudo-header.
    pub l4_checksum_ok: bool,
    /// Ethernet destination and source.
    pub macs: ([u8; 6], [u8; 6]),
}

fn l4_offset(f: &[u8]) -> (usize, bool) {
    let v6 = f[14] >> 4 == 6;
    (if v6 { 14 + 40 } else { 14 + 20 }, v6)
}

fn pseudo_sum(f: &[u8], l4_len: usize) -> Vec<u8> {
    let (_, v6) = l4_offset(f);
    let mut p = Vec::new();
    if v6 {
        p.extend_from_slice(&f[22..54]);
        p.extend_from_slice(&(l4_len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, f[20]]);
    } else {
        p.extend_from_slice(&f[26..34]);
        p.extend_from_slice(&[0, f[23]]);
        p.extend_from_slice(&(l4_len as u16).to_be_bytes());
    }
    p
}

fn l4_csum_at(proto: u8) -> usize {
    if proto == TCP {
        16
    } else {
        6
    }
}

/// Fills in the TCP or UDP checksum of a plain frame (the builders leave it zero).
pub fn with_l4_checksum(mut f: Vec<u8>) -> Vec<u8> {
    let (l4, v6) = l4_offset(&f);
    let proto = if v6 { f[20] } else { f[23] };
    let at = l4 + l4_csum_at(proto);
    f[at] = 0;
    f[at + 1] = 0;
    let mut data = pseudo_sum(&f, f.len() - l4);
    data.extend_from_slice(&f[l4..]);
    let sum = checksum(&data);
    f[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    f
}

/// Reads a plain frame back.
pub fn seen(f: &[u8]) -> Seen {
    let (l4, v6) = l4_offset(f);
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        (
            <[u8; 16]>::try_from(&f[22..38]).unwrap().into(),
            <[u8; 16]>::try_from(&f[38..54]).unwrap().into(),
        )
    } else {
        (
            <[u8; 4]>::try_from(&f[26..30]).unwrap().into(),
            <[u8; 4]>::try_from(&f[30..34]).unwrap().into(),
        )
    };
    let mut data = pseudo_sum(f, f.len() - l4);
    data.extend_from_slice(&f[l4..]);
    Seen {
        src,
        dst,
        sport: u16::from_be_bytes([f[l4], f[l4 + 1]]),
        dport: u16::from_be_bytes([f[l4 + 2], f[l4 + 3]]),
        ip_checksum_ok: v6 || checksum(&f[14..34]) == 0,
        l4_checksum_ok: checksum(&data) == 0,
        macs: (
            <[u8; 6]>::try_from(&f[0..6]).unwrap(),
            <[u8; 6]>::try_from(&f[6..12]).unwrap(),
        ),
    }
}
