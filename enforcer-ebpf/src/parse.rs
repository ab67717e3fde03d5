//! Packet parsing: Ethernet, IPv4 (with options), IPv6 (with a bounded walk of extension
//! headers), the ports of TCP/UDP/SCTP, ICMP/ICMPv6 types and, for ICMP errors, the tuple of the
//! packet the error is about.
//!
//! Every read goes through [`load`]: in place when the bytes are in the skb's linear data
//! (bounds-checked against `data_end`, which the verifier enforces), otherwise through
//! `bpf_skb_load_bytes`, which copies from paged data too and fails on a short packet; so no
//! non-linear skb has headers we would silently miss. A read that fails is `Malformed`: the
//! packet is dropped, never passed unchecked.

use aya_ebpf::programs::TcContext;
use enforcer_common::{
    ct::{CtEntry, CtKey},
    family, proto,
    reason::DropReason,
    service::{NatEntry, NatKey},
};

use crate::mem::store;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_ARP: u16 = 0x0806;

/// IPv6 extension headers walked before giving up (`ExtensionHeaderLimit`).
const MAX_EXT_HEADERS: usize = 8;

const NH_HOPOPTS: u8 = 0;
const NH_ROUTING: u8 = 43;
const NH_FRAGMENT: u8 = 44;
const NH_AUTH: u8 = 51;
const NH_DSTOPTS: u8 = 60;
const NH_MOBILITY: u8 = 135;

/// What kind of packet this is, beyond its tuple.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An ordinary packet (its ports, if any, are in the tuple).
    Plain,
    /// ARP, IPv6 neighbour discovery or MLD: link control that never leaves the link.
    LinkControl,
    /// An ICMP/ICMPv6 error; `inner` holds the tuple of the packet it reports on.
    IcmpError,
}

/// Fragment position of the packet.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    None,
    /// Offset zero with more fragments: carries the L4 header, all of it (or it is dropped as
    /// `TinyFragment`).
    First,
    /// Offset non-zero: no L4 header; follows the first fragment's verdict (`main`).
    Later,
}

/// A connection tuple; addresses IPv4-mapped for IPv4, ports in network order. Aligned to 8
/// bytes so that the compiler copies and clears it a word at a time: at the alignment of its
/// fields (1) the BPF target copies byte by byte and clears through a byte-loop `memset`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct Tuple {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

#[repr(C)]
pub struct Packet {
    pub family: u8,
    pub kind: Kind,
    pub frag: Frag,
    /// Fragment identification (IPv4: 16 bits zero-extended), network order.
    pub frag_id: u32,
    pub tcp_flags: u8,
    /// ICMP/ICMPv6 type and code (for reports).
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub tuple: Tuple,
    /// Valid for `Kind::IcmpError`.
    pub inner: Tuple,
    /// Offset of the L4 header (0 for a later fragment: it has none).
    pub l4_off: u16,
    /// For a fragment: frame offset of its fragmentable part (IPv4: right after the IP
    /// header; IPv6: right after the fragment header); 0 otherwise.
    pub frag_start: u16,
    /// For a later fragment: its offset in the datagram's fragmentable part, in bytes.
    pub frag_off: u16,
    /// For a first fragment: frame offset where the bytes its verdict depends on end (the IPv6
    /// header chain, the L4 header, an ICMP error's quoted header); it must hold all of them.
    pub l4_end: u32,
    /// For a fragment: frame offset where the IP packet ends by its own length field (a frame
    /// may be longer).
    pub ip_end: u32,
    /// For `Kind::IcmpError`: offset of the quoted packet's L4 header.
    pub inner_l4: u16,
    /// Service translation of this packet (`service::NAT_*`): its header still holds `wire`,
    /// and is rewritten to `out` once the packet is allowed.
    pub nat: u8,
    pub wire: Tuple,
    pub out: Tuple,
    /// The Service port the packet went to (`service::Frontend::id`), for reports.
    pub frontend: u32,
    /// Room for NAT map keys and values: the 512-byte stack cannot hold them next to the
    /// rest of a program run.
    pub nat_key: NatKey,
    pub nat_entry: NatEntry,
    /// Likewise for the conntrack key and a new entry.
    pub ct_key: CtKey,
    pub ct_entry: CtEntry,
    /// This run's clock, policy revision and (for a new translated connection) the backend
    /// set its backend came from.
    pub now: u64,
    pub revision: u32,
    pub backend_set: u32,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Bytes `off..off + size_of::<T>()` of the frame. Read in place when they are in the skb's
/// linear part (the usual case for headers: no helper call, no copy), otherwise copied by
/// `bpf_skb_load_bytes`, which reads paged data too and fails on a short packet. Either way
/// the same bytes.
#[inline(always)]
fn load<T>(ctx: &TcContext, off: usize) -> Result<T, DropReason> {
    let start = ctx.data();
    if start + off + core::mem::size_of::<T>() <= ctx.data_end() {
        // SAFETY: the bytes are within the linear packet data (checked just above, and by the
        // verifier); an unaligned read has no alignment needs.
        return Ok(unsafe { core::ptr::read_unaligned((start + off) as *const T) });
    }
    ctx.load::<T>(off).map_err(|_| DropReason::Malformed)
}

/// Writes the IPv4-mapped form (`::ffff:a.b.c.d`) of IPv4 address `a` into a tuple's address,
/// in three word stores (as an array expression it becomes a call to a byte-loop `memset` for
/// the zero prefix, and byte stores for the rest).
#[inline(always)]
fn set_mapped_v4(dst: &mut [u8; 16], a: [u8; 4]) {
    let p = dst.as_mut_ptr();
    // SAFETY: `dst` is a `Tuple` address: 16 bytes at an 8-aligned offset of an 8-aligned
    // struct, so the word stores are in bounds and aligned.
    unsafe {
        core::ptr::write(p as *mut u64, 0);
        core::ptr::write(p.add(8) as *mut u32, u32::from_ne_bytes([0, 0, 0xff, 0xff]));
        core::ptr::write(p.add(12) as *mut u32, u32::from_ne_bytes(a));
    }
}


/// The least a first fragment must hold of protocol `p`'s header (its ports, TCP's flags and
/// data offset, an ICMP type and echo identifier), and so the offset below which a later
/// fragment would overlap it. TCP's data offset can ask for more, an ICMP error for its
/// quoted header (see `first_fragment_header`).
#[inline(always)]
pub fn min_l4_header(p: u8) -> u16 {
    match p {
        proto::TCP => 20,
        proto::SCTP => 12,
        proto::UDP | proto::ICMP | proto::ICMPV6 => 8,
        _ => 0,
    }
}

/// Protocols whose first four L4 bytes are source and destination port.
#[inline(always)]
pub fn has_ports(p: u8) -> bool {
    p == proto::TCP || p == proto::UDP || p == proto::SCTP
}

impl Tuple {
    /// Zeroes every field, in word stores (see [`crate::mem`]).
    #[inline(always)]
    pub fn clear(&mut self) {
        let p = self as *mut Tuple as *mut u64;
        // SAFETY: a `Tuple` is 40 bytes, 8-aligned: five aligned words.
        unsafe {
            for i in 0..5 {
                core::ptr::write_volatile(p.add(i), 0);
            }
        }
    }
}
const _: () = assert!(core::mem::size_of::<Tuple>() == 40);

impl Packet {
    /// Clears what one run reads before writing. Field by field: a whole `Packet` built on the
    /// stack would take most of the 512 bytes. The scratch parts (`nat_key`, `nat_entry`,
    /// `ct_key`, `ct_entry`, `wire`, `out`) are always written before they are read, and so
    /// are `frag_off`, `l4_end` and `ip_end` (by `parse`, for the packets that use them), and
    /// `inner` (cleared by `parse` when the packet is an ICMP error: only those read it).
    #[inline(always)]
    pub fn reset(&mut self) {
        store(&mut self.family, 0);
        store(&mut self.kind, Kind::Plain);
        store(&mut self.frag, Frag::None);
        store(&mut self.frag_id, 0);
        store(&mut self.tcp_flags, 0);
        store(&mut self.icmp_type, 0);
        store(&mut self.icmp_code, 0);
        self.tuple.clear();
        store(&mut self.l4_off, 0);
        store(&mut self.frag_start, 0);
        store(&mut self.inner_l4, 0);
        store(&mut self.nat, 0);
        store(&mut self.frontend, 0);
        store(&mut self.backend_set, 0);
    }
}

/// Parses the packet into `pkt` (which keeps what was parsed when an error is returned, for
/// the drop report). ARP and IPv6 ND/MLD come back as `Kind::LinkControl`. Not inlined: its
/// header copies get a stack frame of their own, apart from the lookups'.
#[inline(never)]
pub fn parse(ctx: &TcContext, pkt: &mut Packet) -> Result<(), DropReason> {
    let ethertype = u16::from_be(load::<u16>(ctx, 12)?);
    let l4 = match ethertype {
        ETH_P_IP => parse_ipv4(ctx, pkt)?,
        ETH_P_IPV6 => parse_ipv6(ctx, pkt)?,
        ETH_P_ARP => {
            pkt.kind = Kind::LinkControl;
            return Ok(());
        }
        // VLAN tags (0x8100, 0x88a8) included: a pod has no business sending tagged frames,
        // and an IP packet behind a tag must not bypass the policy.
        _ => return Err(DropReason::UnsupportedEthertype),
    };
    if pkt.frag == Frag::Later {
        return Ok(());
    }
    if pkt.frag == Frag::First {
        first_fragment_header(ctx, pkt, l4)?;
    }
    parse_l4(ctx, pkt, l4)?;
    // An ICMP error is judged on the packet it quotes: a first fragment must hold its header
    // and the 8 bytes after it.
    if pkt.frag == Frag::First && pkt.kind == Kind::IcmpError {
        pkt.l4_end = pkt.inner_l4 as u32 + 8;
        if pkt.l4_end > pkt.ip_end {
            return Err(DropReason::TinyFragment);
        }
    }
    Ok(())
}

/// A first fragment must hold every byte its verdict depends on: what it lacks would come in
/// a later fragment, never judged (tiny fragments, RFC 1858 and RFC 3128; IPv6's whole header
/// chain, RFC 7112). Judged against the IP length, not the frame's: bytes past the packet's
/// end are not part of the datagram. Checked before `parse_l4` reads the header, so a short
/// one is a tiny fragment, not malformed. Sets `l4_end`. Not inlined, and only called for
/// first fragments: the other packets' path stays as it was.
#[inline(never)]
fn first_fragment_header(ctx: &TcContext, pkt: &mut Packet, l4: usize) -> Result<(), DropReason> {
    let p = pkt.tuple.proto;
    let mut end = l4 as u32 + min_l4_header(p) as u32;
    if end > pkt.ip_end {
        // For the report: its ports, when it holds them.
        if has_ports(p) && l4 as u32 + 4 <= pkt.ip_end {
            let ports = load::<[u16; 2]>(ctx, l4)?;
            pkt.tuple.sport = ports[0];
            pkt.tuple.dport = ports[1];
        }
        return Err(DropReason::TinyFragment);
    }
    if p == proto::TCP {
        // The whole header as its data offset gives it (options included), at least 20.
        let doff = (load::<u8>(ctx, l4 + 12)? >> 4) as u32;
        if doff > 5 {
            end = l4 as u32 + doff * 4;
            if end > pkt.ip_end {
                return Err(DropReason::TinyFragment);
            }
        }
    }
    pkt.l4_end = end;
    Ok(())
}

/// Returns the L4 offset.
#[inline(always)]
fn parse_ipv4(ctx: &TcContext, pkt: &mut Packet) -> Result<usize, DropReason> {
    // One copy of the fixed header: each load is a helper call.
    let h = load::<[u8; 20]>(ctx, ETH_HLEN)?;
    let ihl = (h[0] & 0x0f) as usize;
    if h[0] >> 4 != 4 || ihl < 5 {
        return Err(DropReason::Malformed);
    }
    let frag_off = u16::from_be_bytes([h[6], h[7]]);
    let offset = frag_off & 0x1fff;
    let more = frag_off & 0x2000 != 0;
    pkt.family = family::IPV4;
    pkt.tuple.proto = h[9];
    set_mapped_v4(&mut pkt.tuple.src, [h[12], h[13], h[14], h[15]]);
    set_mapped_v4(&mut pkt.tuple.dst, [h[16], h[17], h[18], h[19]]);
    if offset != 0 || more {
        pkt.frag_id = u16::from_ne_bytes([h[4], h[5]]) as u32;
        pkt.frag = if offset != 0 { Frag::Later } else { Frag::First };
        pkt.frag_off = offset << 3;
        pkt.frag_start = (ETH_HLEN + ihl * 4) as u16;
        pkt.ip_end = ETH_HLEN as u32 + u16::from_be_bytes([h[2], h[3]]) as u32;
    }
    // Options (ihl > 5) are skipped by length, never interpreted: nothing in them changes
    // which policy applies.
    Ok(ETH_HLEN + ihl * 4)
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, pkt: &mut Packet) -> Result<usize, DropReason> {
    let h = load::<[u8; 8]>(ctx, ETH_HLEN)?;
    if h[0] >> 4 != 6 {
        return Err(DropReason::Malformed);
    }
    pkt.family = family::IPV6;
    pkt.tuple.src = load::<[u8; 16]>(ctx, ETH_HLEN + 8)?;
    pkt.tuple.dst = load::<[u8; 16]>(ctx, ETH_HLEN + 24)?;
    if v4_mapped(&pkt.tuple.src) || v4_mapped(&pkt.tuple.dst) {
        return Err(DropReason::Malformed);
    }
    let mut nh = h[6];
    let mut off = ETH_HLEN + 40;
    // Bounded walk: the verifier needs a bound, and so do we (a chain longer than this is
    // dropped, not skipped).
    for _ in 0..MAX_EXT_HEADERS {
        match nh {
            NH_HOPOPTS | NH_ROUTING | NH_DSTOPTS | NH_MOBILITY => {
                let hdr = load::<[u8; 2]>(ctx, off)?;
                nh = hdr[0];
                off += (hdr[1] as usize + 1) * 8;
            }
            NH_AUTH => {
                let hdr = load::<[u8; 2]>(ctx, off)?;
                nh = hdr[0];
                off += (hdr[1] as usize + 2) * 4;
            }
            NH_FRAGMENT => {
                let hdr = load::<[u8; 8]>(ctx, off)?;
                nh = hdr[0];
                let fo = u16::from_be_bytes([hdr[2], hdr[3]]);
                let offset = fo >> 3;
                let more = fo & 1 != 0;
                off += 8;
                // A second fragment header: no stack sends one (RFC 8200 4.1), and what a
                // receiver makes of a datagram reassembled twice is nothing to judge on.
                if pkt.frag_start != 0 {
                    return Err(DropReason::Malformed);
                }
                pkt.frag_start = off as u16;
                // An atomic fragment (offset 0, no more) is a whole datagram: parse it as such.
                if offset != 0 || more {
                    pkt.frag_id = u32::from_ne_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
                    pkt.frag = if offset != 0 { Frag::Later } else { Frag::First };
                    pkt.frag_off = fo & 0xfff8;
                    pkt.ip_end = ETH_HLEN as u32 + 40 + u16::from_be_bytes([h[4], h[5]]) as u32;
                }
                if offset != 0 {
                    pkt.tuple.proto = nh;
                    return Ok(off);
                }
            }
            _ => {
                pkt.tuple.proto = nh;
                return Ok(off);
            }
        }
    }
    Err(DropReason::ExtensionHeaderLimit)
}

#[inline(always)]
fn parse_l4(ctx: &TcContext, pkt: &mut Packet, l4: usize) -> Result<(), DropReason> {
    let p = pkt.tuple.proto;
    pkt.l4_off = l4 as u16;
    if p == proto::TCP {
        let h = load::<[u8; 14]>(ctx, l4)?;
        pkt.tuple.sport = u16::from_ne_bytes([h[0], h[1]]);
        pkt.tuple.dport = u16::from_ne_bytes([h[2], h[3]]);
        pkt.tcp_flags = h[13];
        return Ok(());
    }
    if has_ports(p) {
        let ports = load::<[u16; 2]>(ctx, l4)?;
        pkt.tuple.sport = ports[0];
        pkt.tuple.dport = ports[1];
        return Ok(());
    }
    if p == proto::ICMP && pkt.family == family::IPV4 {
        let hdr = load::<[u8; 8]>(ctx, l4)?;
        pkt.icmp_type = hdr[0];
        pkt.icmp_code = hdr[1];
        match hdr[0] {
            // Echo request / reply: the identifier plays the requester's port, so that the
            // reply finds the request's connection.
            8 => pkt.tuple.sport = u16::from_ne_bytes([hdr[4], hdr[5]]),
            0 => pkt.tuple.dport = u16::from_ne_bytes([hdr[4], hdr[5]]),
            // Destination unreachable, source quench, redirect, time exceeded, parameter
            // problem: errors about an earlier packet, whose header follows.
            3 | 4 | 5 | 11 | 12 => {
                pkt.kind = Kind::IcmpError;
                pkt.inner.clear();
                parse_inner_ipv4(ctx, pkt, l4 + 8)?;
            }
            _ => {}
        }
        return Ok(());
    }
    if p == proto::ICMPV6 && pkt.family == family::IPV6 {
        let hdr = load::<[u8; 8]>(ctx, l4)?;
        pkt.icmp_type = hdr[0];
        pkt.icmp_code = hdr[1];
        match hdr[0] {
            128 => pkt.tuple.sport = u16::from_ne_bytes([hdr[4], hdr[5]]),
            129 => pkt.tuple.dport = u16::from_ne_bytes([hdr[4], hdr[5]]),
            1..=4 => {
                pkt.kind = Kind::IcmpError;
                pkt.inner.clear();
                parse_inner_ipv6(ctx, pkt, l4 + 8)?;
            }
            // MLD (130-132, 143) and neighbour discovery (133-137), unfragmented: link
            // control in fragments is not link control (RFC 6980 has nodes ignore it), and
            // passing it without policy would pass its datagram's later fragments too.
            130..=137 | 143 if pkt.frag == Frag::None => pkt.kind = Kind::LinkControl,
            _ => {}
        }
    }
    // Other protocols have no ports: only rules without ports can allow them.
    Ok(())
}

#[inline(always)]
fn parse_inner_ipv4(ctx: &TcContext, pkt: &mut Packet, off: usize) -> Result<(), DropReason> {
    let vihl = load::<u8>(ctx, off)?;
    let ihl = (vihl & 0x0f) as usize;
    if vihl >> 4 != 4 || ihl < 5 {
        return Err(DropReason::Malformed);
    }
    pkt.inner.proto = load::<u8>(ctx, off + 9)?;
    set_mapped_v4(&mut pkt.inner.src, load::<[u8; 4]>(ctx, off + 12)?);
    set_mapped_v4(&mut pkt.inner.dst, load::<[u8; 4]>(ctx, off + 16)?);
    inner_ports(ctx, pkt, off + ihl * 4, 8)
}

#[inline(always)]
fn parse_inner_ipv6(ctx: &TcContext, pkt: &mut Packet, off: usize) -> Result<(), DropReason> {
    pkt.inner.proto = load::<u8>(ctx, off + 6)?;
    pkt.inner.src = load::<[u8; 16]>(ctx, off + 8)?;
    pkt.inner.dst = load::<[u8; 16]>(ctx, off + 24)?;
    if v4_mapped(&pkt.inner.src) || v4_mapped(&pkt.inner.dst) {
        return Err(DropReason::Malformed);
    }
    inner_ports(ctx, pkt, off + 40, 128)
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`). None belongs on the wire (RFC 4291
/// 2.5.5.2; Linux's IPv6 input drops one as a source), and the datapath keeps IPv4 addresses
/// in exactly this form: an IPv6 packet carrying one would be judged as the IPv4 address's
/// owner (the node's, allowed everywhere; a pod's, allowed by its policies) and could match
/// an IPv4 connection's conntrack entry. Such packets are malformed.
#[inline(always)]
fn v4_mapped(a: &[u8; 16]) -> bool {
    a[..10] == [0u8; 10] && a[10] == 0xff && a[11] == 0xff
}

/// Ports of the packet inside an ICMP error (its first 8 L4 bytes are always quoted).
#[inline(always)]
fn inner_ports(ctx: &TcContext, pkt: &mut Packet, l4: usize, echo: u8) -> Result<(), DropReason> {
    let p = pkt.inner.proto;
    pkt.inner_l4 = l4 as u16;
    if has_ports(p) {
        let ports = load::<[u16; 2]>(ctx, l4)?;
        pkt.inner.sport = ports[0];
        pkt.inner.dport = ports[1];
    } else if p == proto::ICMP || p == proto::ICMPV6 {
        let hdr = load::<[u8; 8]>(ctx, l4)?;
        if hdr[0] == echo {
            pkt.inner.sport = u16::from_ne_bytes([hdr[4], hdr[5]]);
        }
    }
    Ok(())
}
