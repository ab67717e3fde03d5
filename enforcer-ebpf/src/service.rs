//! Service translation at the client pod's own veth (see `enforcer_common::service`).
//!
//! A pod's packet to a Service port (ClusterIP, port, protocol) gets a backend, chosen at
//! random when its connection opens, and from then on is the packet of a connection to that
//! backend: tracked, judged (the pod's egress, the backend's ingress on its own node) and
//! reported on the backend's address and target port. The node's service NAT (kube-proxy)
//! never sees it: its destination is already the backend when it enters the node. Replies are
//! rewritten back to the Service address as they enter the client pod.
//!
//! A pod that is its own backend (hairpin) gets the packet straight back: as the node's NAT
//! masquerades such a connection, the pod sees it come from another address (here the
//! Service's, with the client's port), so that it does not come from the pod's own address,
//! which the pod's stack would refuse.
//!
//! Per packet, whatever the number of Services or endpoints: one `SVC_FRONTENDS` and one
//! `SVC_BACKENDS` lookup per new connection of a pod (misses for other traffic), one `NAT_FWD`
//! lookup per packet of a translated connection, one `NAT_REV` lookup per reply.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::{bpf_csum_diff, bpf_get_prandom_u32, bpf_redirect_peer},
    programs::TcContext,
};
use enforcer_common::{
    ct::{CT_F_HAIRPIN, CT_F_SERVICE},
    family, proto,
    reason::{counter, DropReason},
    service::{
        Affinity, AffinityKey, BackendAddr, BackendKey, Frontend, FrontendKey, MemberKey, NatEntry,
        NatKey, FE_F_AFFINITY, NAT_F_HAIRPIN,
    },
};

use crate::maps::{NAT_FWD, NAT_REV, SVC_AFFINITY, SVC_BACKENDS, SVC_FRONTENDS, SVC_MEMBERS};
use crate::parse::{Frag, Packet, Tuple};
use crate::report::count;

/// `Packet::nat`: nothing to rewrite.
pub const NAT_NONE: u8 = 0;
/// Rewrite the header from `Packet::wire` to `Packet::out`.
pub const NAT_REWRITE: u8 = 1;
/// Rewrite, then hand the packet back to the pod it came from (hairpin).
pub const NAT_HAIRPIN: u8 = 2;
/// An ICMP error about a translated connection: the quoted packet is rewritten from `wire` to
/// `out` (and the outer address that was the quoted one's peer with it).
pub const NAT_ICMP: u8 = 3;

const ETH_HLEN: usize = 14;

/// Fills `k` with `t` as it travels (`reversed`: the other way).
#[inline(always)]
fn set_key(k: &mut NatKey, ep_id: u32, t: &Tuple, reversed: bool) {
    k.ep_id = ep_id;
    if reversed {
        k.src = t.dst;
        k.dst = t.src;
        k.sport = t.dport;
        k.dport = t.sport;
    } else {
        k.src = t.src;
        k.dst = t.dst;
        k.sport = t.sport;
        k.dport = t.dport;
    }
    k.proto = t.proto;
    crate::mem::zero_pad(&mut k._pad);
}

/// Fills `e` with `t` (`reversed`: the other way).
#[inline(always)]
fn set_entry(e: &mut NatEntry, t: &Tuple, reversed: bool) {
    if reversed {
        e.src = t.dst;
        e.dst = t.src;
        e.sport = t.dport;
        e.dport = t.sport;
    } else {
        e.src = t.src;
        e.dst = t.dst;
        e.sport = t.sport;
        e.dport = t.dport;
    }
}

#[inline(always)]
fn tuple_of(e: &NatEntry, proto: u8) -> Tuple {
    Tuple {
        src: e.src,
        dst: e.dst,
        sport: e.sport,
        dport: e.dport,
        proto,
    }
}

/// Whether the packet can be a client's packet to a Service port: TCP or UDP, with ports.
#[inline(always)]
pub fn translatable(pkt: &Packet) -> bool {
    (pkt.tuple.proto == proto::TCP || pkt.tuple.proto == proto::UDP) && pkt.frag != Frag::Later
}

/// The Service port `t` is addressed to, if any.
#[inline(always)]
pub fn frontend_of(t: &Tuple) -> Option<Frontend> {
    let key = FrontendKey {
        addr: t.dst,
        port: t.dport,
        proto: t.proto,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once.
    unsafe { SVC_FRONTENDS.get(&key) }.copied()
}

/// A client packet of a connection translated earlier: `pkt.tuple` becomes the backend's
/// tuple, the header is to be rewritten. Returns the `backend_set` the backend was chosen
/// from.
#[inline(always)]
pub fn forward(ep_id: u32, pkt: &mut Packet) -> Option<u32> {
    set_key(&mut pkt.nat_key, ep_id, &pkt.tuple, false);
    // SAFETY: read at once, before any other map update.
    let e = unsafe { NAT_FWD.get(&pkt.nat_key) }?;
    pkt.wire = pkt.tuple;
    pkt.out = tuple_of(e, pkt.tuple.proto);
    pkt.tuple = pkt.out;
    pkt.frontend = e.frontend;
    pkt.nat = if e.flags & NAT_F_HAIRPIN != 0 { NAT_HAIRPIN } else { NAT_REWRITE };
    Some(e.backend_set)
}

/// A new connection to a Service port: picks a backend (at random, or under session affinity
/// the client's previous one while it is still a backend) and makes `pkt.tuple` the
/// connection to it (the header is rewritten once the packet is allowed). Not inlined: its
/// keys get a frame of their own.
#[inline(never)]
pub fn choose(pkt: &mut Packet, fe: &Frontend) -> Result<(), DropReason> {
    pkt.frontend = fe.id;
    if fe.count == 0 {
        return Err(DropReason::ServiceNoEndpoints);
    }
    let affinity = fe.flags & FE_F_AFFINITY != 0;
    let akey = AffinityKey {
        frontend: fe.id,
        client: pkt.tuple.src,
    };
    let mut b = BackendAddr::default();
    let mut kept = false;
    if affinity {
        if let Some(a) = SVC_AFFINITY.get_ptr_mut(&akey) {
            // SAFETY: a valid pointer into the map value; a racing update only changes which
            // of two live backends the client keeps.
            let a = unsafe { &mut *a };
            let member = MemberKey {
                set: fe.backend_set,
                backend: a.backend,
            };
            let fresh = enforcer_common::ct::elapsed(pkt.now, a.last_ns) <= fe.affinity_s as u64 * 1_000_000_000;
            // SAFETY: only tested for presence.
            if fresh && unsafe { SVC_MEMBERS.get(&member) }.is_some() {
                a.last_ns = pkt.now;
                b = a.backend;
                kept = true;
            }
        }
    }
    if !kept {
        // SAFETY: no preconditions.
        let index = unsafe { bpf_get_prandom_u32() } % fe.count;
        let key = BackendKey {
            set: fe.backend_set,
            index,
        };
        // SAFETY: the value is copied out at once.
        let Some(chosen) = (unsafe { SVC_BACKENDS.get(&key) }).copied() else {
            // The agent writes a set's backends before the frontend that counts them: a
            // missing one is a torn update or a full map. Nothing can answer the connection.
            return Err(DropReason::ServiceNoEndpoints);
        };
        b = chosen;
        if affinity {
            let a = Affinity {
                last_ns: pkt.now,
                backend: b,
                _pad: [0; 4],
            };
            if SVC_AFFINITY.insert(&akey, &a, 0).is_err() {
                count(counter::NAT_INSERT_FAILED);
            }
        }
    }
    pkt.wire = pkt.tuple;
    let hairpin = crate::conntrack::addr_eq(&b.addr, &pkt.tuple.src);
    pkt.out = Tuple {
        // Hairpin: from the Service address (with the client's port), to the pod itself.
        src: if hairpin { pkt.tuple.dst } else { pkt.tuple.src },
        dst: b.addr,
        sport: pkt.tuple.sport,
        dport: b.port,
        proto: pkt.tuple.proto,
    };
    pkt.tuple = pkt.out;
    pkt.nat = if hairpin { NAT_HAIRPIN } else { NAT_REWRITE };
    Ok(())
}

/// Records a new translated connection: its tracking entry's flags (`pkt.ct_entry`, not
/// inserted yet), and both NAT entries.
#[inline(always)]
pub fn remember(ep_id: u32, pkt: &mut Packet) {
    pkt.ct_entry.flags |= CT_F_SERVICE | if pkt.nat == NAT_HAIRPIN { CT_F_HAIRPIN } else { 0 };
    pkt.ct_entry.frontend = pkt.frontend;
    pkt.nat_entry.frontend = pkt.frontend;
    pkt.nat_entry.backend_set = pkt.backend_set;
    pkt.nat_entry.flags = if pkt.nat == NAT_HAIRPIN { NAT_F_HAIRPIN } else { 0 };
    crate::mem::zero_pad(&mut pkt.nat_entry._pad);
    // The client's packets, as they leave the pod, go to the backend...
    set_key(&mut pkt.nat_key, ep_id, &pkt.wire, false);
    set_entry(&mut pkt.nat_entry, &pkt.out, false);
    let fwd = NAT_FWD.insert(&pkt.nat_key, &pkt.nat_entry, 0);
    // ... and the backend's replies come from the Service.
    set_key(&mut pkt.nat_key, ep_id, &pkt.out, true);
    set_entry(&mut pkt.nat_entry, &pkt.wire, true);
    let rev = NAT_REV.insert(&pkt.nat_key, &pkt.nat_entry, 0);
    if fwd.is_err() || rev.is_err() {
        count(counter::NAT_INSERT_FAILED);
    }
    count(counter::SVC_TRANSLATED);
}

/// A reply of a translated connection: rewritten to come from the Service address.
/// `hairpin` from the connection's entry. Without a `NAT_REV` entry (evicted) the reply is
/// left as it is: the client refuses it, as it refuses any stray packet.
#[inline(always)]
pub fn reverse(ep_id: u32, pkt: &mut Packet, hairpin: bool) {
    set_key(&mut pkt.nat_key, ep_id, &pkt.tuple, false);
    // SAFETY: read at once, before any other map update.
    if let Some(e) = unsafe { NAT_REV.get(&pkt.nat_key) } {
        pkt.wire = pkt.tuple;
        pkt.out = tuple_of(e, pkt.tuple.proto);
        pkt.frontend = e.frontend;
        pkt.nat = if hairpin { NAT_HAIRPIN } else { NAT_REWRITE };
    }
}

/// An error the client sends about a packet it got from a Service (it quotes the Service
/// address): quoted and outer addresses become the backend's, as the connection's are.
#[inline(always)]
pub fn icmp_forward(ep_id: u32, pkt: &mut Packet) {
    set_key(&mut pkt.nat_key, ep_id, &pkt.inner, true);
    // SAFETY: read at once, before any other map update.
    if let Some(e) = unsafe { NAT_FWD.get(&pkt.nat_key) } {
        if e.flags & NAT_F_HAIRPIN != 0 {
            return;
        }
        pkt.wire = pkt.inner;
        // The quoted packet travelled backend → client: the reverse of the client's packet.
        pkt.out = Tuple {
            src: e.dst,
            dst: e.src,
            sport: e.dport,
            dport: e.sport,
            proto: pkt.inner.proto,
        };
        pkt.inner = pkt.out;
        pkt.frontend = e.frontend;
        pkt.nat = NAT_ICMP;
    }
}

/// An error the client gets about a packet it sent to a Service (on the way, the packet was
/// the backend's): quoted and outer addresses become the Service's again.
#[inline(always)]
pub fn icmp_reverse(ep_id: u32, pkt: &mut Packet) {
    set_key(&mut pkt.nat_key, ep_id, &pkt.inner, true);
    // SAFETY: read at once, before any other map update.
    if let Some(e) = unsafe { NAT_REV.get(&pkt.nat_key) } {
        pkt.wire = pkt.inner;
        pkt.out = Tuple {
            src: e.dst,
            dst: e.src,
            sport: e.dport,
            dport: e.sport,
            proto: pkt.inner.proto,
        };
        pkt.frontend = e.frontend;
        pkt.nat = NAT_ICMP;
    }
}

/// Rewrites an ICMP error from `pkt.wire` to `pkt.out` (the quoted packet's tuple): the
/// quoted addresses and ports, the quoted IPv4 header's checksum, the outer address that was
/// the quoted packet's peer (a backend reporting about its own connection), and the ICMP
/// checksum over all of it (ICMPv6: with its pseudo-header). The quoted L4 checksum is left:
/// receivers do not check it. Not inlined: a frame of its own.
#[inline(never)]
pub fn rewrite_icmp(ctx: &TcContext, pkt: &mut Packet) -> Result<(), DropReason> {
    let csum = pkt.l4_off as usize + 2;
    let inner_ip = pkt.l4_off as usize + 8;
    let v4 = pkt.family == family::IPV4;
    let (src_off, dst_off) = if v4 { (12, 16) } else { (8, 24) };
    let outer_src_changes = crate::conntrack::addr_eq(&pkt.tuple.src, &pkt.wire.dst)
        && !crate::conntrack::addr_eq(&pkt.wire.dst, &pkt.out.dst);
    let outer_dst_changes = crate::conntrack::addr_eq(&pkt.tuple.dst, &pkt.wire.src)
        && !crate::conntrack::addr_eq(&pkt.wire.src, &pkt.out.src);
    if v4 {
        inner_v4_addr(ctx, inner_ip, src_off, &pkt.wire.src, &pkt.out.src, csum)?;
        inner_v4_addr(ctx, inner_ip, dst_off, &pkt.wire.dst, &pkt.out.dst, csum)?;
        // ICMPv4's checksum does not cover the outer header.
        if outer_src_changes {
            v4_addr(ctx, ETH_HLEN + 12, &pkt.wire.dst, &pkt.out.dst, 0, 0)?;
        }
        if outer_dst_changes {
            v4_addr(ctx, ETH_HLEN + 16, &pkt.wire.src, &pkt.out.src, 0, 0)?;
        }
    } else {
        let (w, o) = (&mut pkt.wire, &mut pkt.out);
        v6_addr(ctx, inner_ip + src_off, &mut w.src, &mut o.src, csum, 0)?;
        v6_addr(ctx, inner_ip + dst_off, &mut w.dst, &mut o.dst, csum, 0)?;
        let pseudo = BPF_F_PSEUDO_HDR as u64;
        if outer_src_changes {
            v6_addr(ctx, ETH_HLEN + 8, &mut w.dst, &mut o.dst, csum, pseudo)?;
        }
        if outer_dst_changes {
            v6_addr(ctx, ETH_HLEN + 24, &mut w.src, &mut o.src, csum, pseudo)?;
        }
    }
    if pkt.inner.proto == proto::TCP || pkt.inner.proto == proto::UDP {
        let l4 = pkt.inner_l4 as usize;
        port(ctx, l4, pkt.wire.sport, pkt.out.sport, csum, 0)?;
        port(ctx, l4 + 2, pkt.wire.dport, pkt.out.dport, csum, 0)?;
    }
    Ok(())
}

/// One address of a quoted IPv4 header: the address, the quoted header's checksum, and the
/// ICMP checksum for both changes.
#[inline(always)]
fn inner_v4_addr(
    ctx: &TcContext,
    inner_ip: usize,
    field: usize,
    old: &[u8; 16],
    new: &[u8; 16],
    icmp_csum: usize,
) -> Result<(), DropReason> {
    let o = u32::from_ne_bytes([old[12], old[13], old[14], old[15]]);
    let n = u32::from_ne_bytes([new[12], new[13], new[14], new[15]]);
    if o == n {
        return Ok(());
    }
    let err = |_| DropReason::Malformed;
    let before: u16 = ctx.load(inner_ip + 10).map_err(err)?;
    ctx.l3_csum_replace(inner_ip + 10, o as u64, n as u64, 4).map_err(err)?;
    let after: u16 = ctx.load(inner_ip + 10).map_err(err)?;
    ctx.l4_csum_replace(icmp_csum, o as u64, n as u64, 4).map_err(err)?;
    ctx.l4_csum_replace(icmp_csum, before as u64, after as u64, 2).map_err(err)?;
    ctx.store(inner_ip + field, &n, 0).map_err(err)
}

/// Rewrites the header from `pkt.wire` to `pkt.out`: addresses (and the IPv4 header
/// checksum), ports, and the L4 checksum (TCP, UDP; a later fragment has neither ports nor
/// an L4 checksum: its first fragment's checksum covers the whole datagram). Not inlined: a
/// frame of its own.
#[inline(never)]
pub fn rewrite(ctx: &TcContext, pkt: &mut Packet) -> Result<(), DropReason> {
    let l4 = pkt.l4_off as usize;
    let csum = if pkt.frag == Frag::Later {
        0
    } else if pkt.tuple.proto == proto::TCP {
        l4 + 16
    } else if pkt.tuple.proto == proto::UDP {
        l4 + 6
    } else {
        0
    };
    // An IPv4 UDP checksum of zero means "none": the helper leaves it so.
    let mangled = if pkt.tuple.proto == proto::UDP { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
    let pseudo = BPF_F_PSEUDO_HDR as u64 | mangled;
    if pkt.family == family::IPV4 {
        v4_addr(ctx, ETH_HLEN + 12, &pkt.wire.src, &pkt.out.src, csum, pseudo)?;
        v4_addr(ctx, ETH_HLEN + 16, &pkt.wire.dst, &pkt.out.dst, csum, pseudo)?;
    } else {
        v6_addr(ctx, ETH_HLEN + 8, &mut pkt.wire.src, &mut pkt.out.src, csum, pseudo)?;
        v6_addr(ctx, ETH_HLEN + 24, &mut pkt.wire.dst, &mut pkt.out.dst, csum, pseudo)?;
    }
    if csum != 0 {
        port(ctx, l4, pkt.wire.sport, pkt.out.sport, csum, mangled)?;
        port(ctx, l4 + 2, pkt.wire.dport, pkt.out.dport, csum, mangled)?;
    }
    Ok(())
}

#[inline(always)]
/// `csum` 0: no L4 checksum to update.
fn v4_addr(
    ctx: &TcContext,
    off: usize,
    old: &[u8; 16],
    new: &[u8; 16],
    csum: usize,
    flags: u64,
) -> Result<(), DropReason> {
    // As the bytes lie in the packet: the checksum helpers take values in network order.
    let o = u32::from_ne_bytes([old[12], old[13], old[14], old[15]]);
    let n = u32::from_ne_bytes([new[12], new[13], new[14], new[15]]);
    if o == n {
        return Ok(());
    }
    if csum != 0 {
        ctx.l4_csum_replace(csum, o as u64, n as u64, flags | 4)
            .map_err(|_| DropReason::Malformed)?;
    }
    ctx.l3_csum_replace(ETH_HLEN + 10, o as u64, n as u64, 4)
        .map_err(|_| DropReason::Malformed)?;
    ctx.store(off, &n, 0).map_err(|_| DropReason::Malformed)
}

#[inline(always)]
fn v6_addr(
    ctx: &TcContext,
    off: usize,
    old: &mut [u8; 16],
    new: &mut [u8; 16],
    csum: usize,
    flags: u64,
) -> Result<(), DropReason> {
    if crate::conntrack::addr_eq(old, new) {
        return Ok(());
    }
    if csum != 0 {
        // SAFETY: both buffers are 16 bytes of the per-CPU scratch slot (map memory).
        let diff = unsafe {
            bpf_csum_diff(
                old.as_mut_ptr() as *mut u32,
                16,
                new.as_mut_ptr() as *mut u32,
                16,
                0,
            )
        };
        // Size 0: `to` is a checksum difference.
        ctx.l4_csum_replace(csum, 0, diff as u32 as u64, flags)
            .map_err(|_| DropReason::Malformed)?;
    }
    ctx.store(off, new, 0).map_err(|_| DropReason::Malformed)
}

#[inline(always)]
fn port(ctx: &TcContext, off: usize, old: u16, new: u16, csum: usize, flags: u64) -> Result<(), DropReason> {
    if old == new {
        return Ok(());
    }
    ctx.l4_csum_replace(csum, old as u64, new as u64, flags | 2)
        .map_err(|_| DropReason::Malformed)?;
    ctx.store(off, &new, 0).map_err(|_| DropReason::Malformed)
}

/// Hands a hairpin packet back to the pod: Ethernet addresses swapped (it now comes from the
/// pod's gateway, the host side), into the pod's end of the veth without crossing the node.
/// Returns the TC action.
#[inline(always)]
pub fn hairpin(ctx: &TcContext, ifindex: u32) -> Result<i32, DropReason> {
    let macs: [u8; 12] = ctx.load(0).map_err(|_| DropReason::Malformed)?;
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    ctx.store(0, &swapped, 0).map_err(|_| DropReason::Malformed)?;
    // SAFETY: no preconditions; called from a tc ingress program, as the helper requires.
    Ok(unsafe { bpf_redirect_peer(ifindex, 0) } as i32)
}
