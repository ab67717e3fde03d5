//! The enforcer's kernel programs: NetworkPolicy enforcement at the host-side veth of each
//! local pod (tcx). They only look things up: the agent precomputes every decision it can.
//!
//! Per packet:
//! 1. the endpoint (local pod) of the interface, its isolation flags and policy set;
//! 2. parse; ARP/ND/MLD pass; a pod's packet must come from the pod's own address;
//! 3. later fragments follow their first fragment's verdict;
//! 4. ICMP errors pass only when they relate to a tracked connection (or the direction is not
//!    isolated);
//! 5. conntrack: packets of a tracked connection pass (re-checked once after a policy change);
//! 6. a new flow: the node itself always passes; otherwise a non-isolated direction passes and
//!    an isolated one needs an allow entry for the peer's identity (a fixed number of probes);
//!    allowed flows are tracked.
#![no_std]
#![no_main]

mod conntrack;
mod maps;
mod parse;
mod policy;
mod report;

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::classifier, programs::TcContext};
use enforcer_common::{
    ct::{FragEntry, FragKey},
    direction,
    endpoint::{EndpointInfo, F_AUDIT, F_EGRESS_ISOLATED, F_HAS_V4, F_HAS_V6, F_INGRESS_ISOLATED},
    family,
    flow::{verdict, EV_F_FRAGMENT, EV_F_REPLY},
    policy::identity,
    reason::{counter, DropReason},
};

use maps::{CONFIG, CONNTRACK, ENDPOINTS, FRAGMENTS};
use parse::{Frag, Kind, Packet};
use report::{count, Report};

/// tcx: continue with the next program (if any), otherwise pass. Allowing with "next" rather
/// than "pass" keeps programs of other tools attached to the same hook in the loop.
const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_SHOT: i32 = 2;

/// Packets leaving the pod. Hook: tcx ingress of the pod's host-side veth (the packet travels
/// from the pod into the node).
#[classifier]
pub fn pod_egress(ctx: TcContext) -> i32 {
    handle(&ctx, direction::EGRESS)
}

/// Packets entering the pod. Hook: tcx egress of the pod's host-side veth (the packet travels
/// from the node into the pod).
#[classifier]
pub fn pod_ingress(ctx: TcContext) -> i32 {
    handle(&ctx, direction::INGRESS)
}

/// The one place where a decision becomes a TC action. Every error fails closed: the packet
/// is dropped, counted by reason and reported (rate-limited per flow).
#[inline(always)]
fn handle(ctx: &TcContext, dir: u8) -> i32 {
    // The parsed packet lives in a per-CPU scratch slot: the 512-byte BPF stack cannot hold
    // it next to the lookup keys.
    let Some(pkt) = maps::SCRATCH.get_ptr_mut(0) else {
        return TC_ACT_SHOT; // unreachable: a one-slot per-CPU array always has slot 0
    };
    // SAFETY: per-CPU slot, used by this program run only (no preemption within a run).
    let pkt = unsafe { &mut *pkt };
    *pkt = Packet::new();
    let mut rep = Report {
        // SAFETY: the context's skb pointer is valid for the whole program run.
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        ep_id: 0,
        direction: dir,
        len: ctx.len(),
        peer_identity: 0,
        flags: 0,
    };
    match try_handle(ctx, dir, pkt, &mut rep) {
        Ok(()) => {
            count(counter::ALLOWED);
            TC_ACT_UNSPEC
        }
        Err(reason) => {
            report::drop_event(pkt, &rep, reason);
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn try_handle(ctx: &TcContext, dir: u8, pkt: &mut Packet, rep: &mut Report) -> Result<(), DropReason> {
    // SAFETY: the map value is copied out at once.
    let ep = unsafe { ENDPOINTS.get(&rep.ifindex) }.copied().ok_or(DropReason::UnknownEndpoint)?;
    rep.ep_id = ep.ep_id;
    parse::parse(ctx, pkt)?;
    if pkt.kind == Kind::LinkControl {
        count(counter::LINK_CONTROL);
        return Ok(());
    }
    if dir == direction::EGRESS && !source_is_pod(&ep, pkt) {
        return Err(DropReason::SpoofedSource);
    }
    let isolated = ep.flags
        & if dir == direction::INGRESS { F_INGRESS_ISOLATED } else { F_EGRESS_ISOLATED }
        != 0;
    if pkt.frag == Frag::Later {
        rep.flags |= EV_F_FRAGMENT;
        return follow_first_fragment(&ep, dir, pkt, isolated);
    }
    let result = decide(&ep, dir, pkt, rep, isolated);
    if pkt.frag == Frag::First {
        remember_first_fragment(&ep, dir, pkt, &result);
    }
    result
}

#[inline(always)]
fn source_is_pod(ep: &EndpointInfo, pkt: &Packet) -> bool {
    let s = &pkt.tuple.src;
    if pkt.family == family::IPV4 {
        ep.flags & F_HAS_V4 != 0 && s[12..16] == ep.ipv4[..]
    } else {
        ep.flags & F_HAS_V6 != 0 && conntrack::addr_eq(s, &ep.ipv6)
    }
}

#[inline(always)]
fn revision() -> u32 {
    CONFIG.get(0).map(|c| c.revision).unwrap_or(0)
}

#[inline(always)]
fn decide(
    ep: &EndpointInfo,
    dir: u8,
    pkt: &mut Packet,
    rep: &mut Report,
    isolated: bool,
) -> Result<(), DropReason> {
    // The peer's identity is only needed off the established path (new flows, ICMP errors,
    // re-checks): one LPM lookup saved on most packets.
    let peer = if dir == direction::EGRESS { pkt.tuple.dst } else { pkt.tuple.src };

    if pkt.kind == Kind::IcmpError {
        let ident = policy::identity_of(pkt.family, &peer);
        rep.peer_identity = ident;
        // An error never opens a connection: it passes when it is about one of ours.
        let (key, _) = conntrack::key_of(ep.ep_id, &pkt.inner);
        // SAFETY: only tested for presence.
        if unsafe { CONNTRACK.get(&key) }.is_some() || !isolated || ident == identity::HOST {
            return Ok(());
        }
        return Err(DropReason::IcmpErrorUnrelated);
    }

    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let rev = revision();
    let (key, from_lo) = conntrack::key_of(ep.ep_id, &pkt.tuple);
    if let Some(e) = CONNTRACK.get_ptr_mut(&key) {
        // SAFETY: a valid pointer into the map value; concurrent updates of the counters are
        // benign races (statistics), state changes are single-byte stores.
        let e = unsafe { &mut *e };
        if !conntrack::expired(e, pkt.tuple.proto, now) {
            let is_reply = from_lo != (e.flags & enforcer_common::ct::CT_F_ORIG_LO != 0);
            if is_reply {
                rep.flags |= EV_F_REPLY;
            }
            if e.revision != rev {
                // The policy changed since this connection was allowed: check its first packet
                // again, as the pod's side saw it, under the policy now in force.
                count(counter::CT_RECHECKED);
                let orig = conntrack::origin_tuple(&key, e);
                let odir = e.origin_dir;
                let opeer = if odir == direction::EGRESS { &orig.dst } else { &orig.src };
                let oisolated = ep.flags
                    & if odir == direction::INGRESS { F_INGRESS_ISOLATED } else { F_EGRESS_ISOLATED }
                    != 0;
                let oident = policy::identity_of(pkt.family, opeer);
                match check(ep, odir, oident, orig.proto, orig.dport, oisolated) {
                    Some(rule) => {
                        e.revision = rev;
                        e.rule = rule;
                    }
                    // Audit mode: the connection goes on, as it would without policy.
                    None if ep.flags & F_AUDIT != 0 => {
                        e.revision = rev;
                        e.rule = 0;
                    }
                    None => {
                        let _ = CONNTRACK.remove(&key);
                        return Err(DropReason::Revoked);
                    }
                }
            }
            let ended = conntrack::track(e, pkt, from_lo, is_reply, now, rep.len);
            if ended != 0 {
                report::end_event(&key, e, rep.ifindex, pkt.family, ended, now);
            }
            return Ok(());
        }
        if e.flags & enforcer_common::ct::CT_F_END_REPORTED == 0 {
            // An idle connection found expired by its next packet, which is about to be
            // checked as a new flow (and may replace the entry): report its end first.
            e.flags |= enforcer_common::ct::CT_F_END_REPORTED;
            report::end_event(&key, e, rep.ifindex, pkt.family, enforcer_common::ct::end::TIMEOUT, e.last_seen_ns);
        }
    }

    let ident = policy::identity_of(pkt.family, &peer);
    rep.peer_identity = ident;
    let (rule, audited) = match check(ep, dir, ident, pkt.tuple.proto, pkt.tuple.dport, isolated) {
        Some(rule) => (rule, false),
        // Audit mode: what the policy would drop passes, is tracked (its replies pass as they
        // would without policy) and is reported once per connection as AUDIT.
        None if ep.flags & F_AUDIT != 0 => (0, true),
        None => return Err(DropReason::PolicyDenied),
    };
    let entry = conntrack::new_entry(pkt, from_lo, dir, rule, rev, now, rep.len);
    if CONNTRACK.insert(&key, &entry, 0).is_err() {
        // The packet was allowed and passes; its replies will be checked as new flows.
        count(counter::CT_INSERT_FAILED);
    } else {
        count(counter::CT_CREATED);
    }
    if audited {
        report::audit_event(pkt, rep);
    } else {
        report::allow_event(pkt, rep, rule);
    }
    Ok(())
}

/// Whether a new flow may pass, and the rule that allows it (0 without a rule). `dport` is
/// in network order.
#[inline(always)]
fn check(ep: &EndpointInfo, dir: u8, ident: u32, proto: u8, dport: u16, isolated: bool) -> Option<u32> {
    // Traffic between a pod and its own node (kubelet probes) is always allowed.
    if ident == identity::HOST || !isolated {
        return Some(0);
    }
    policy::allowed_by(ep.flags, ep.policy_set, dir, ident, proto, u16::from_be(dport))
}

#[inline(always)]
fn frag_key(ep: &EndpointInfo, dir: u8, pkt: &Packet) -> FragKey {
    FragKey {
        ep_id: ep.ep_id,
        id: pkt.frag_id,
        src: pkt.tuple.src,
        dst: pkt.tuple.dst,
        proto: pkt.tuple.proto,
        direction: dir,
        _pad: [0; 2],
    }
}

#[inline(always)]
fn remember_first_fragment(ep: &EndpointInfo, dir: u8, pkt: &Packet, result: &Result<(), DropReason>) {
    let entry = FragEntry {
        // SAFETY: no preconditions.
        first_seen_ns: unsafe { bpf_ktime_get_ns() },
        sport: pkt.tuple.sport,
        dport: pkt.tuple.dport,
        verdict: if result.is_ok() { verdict::ALLOWED } else { verdict::DROPPED },
        reason: match result {
            Ok(()) => 0,
            Err(r) => *r as u8,
        },
        _pad: [0; 2],
    };
    if FRAGMENTS.insert(&frag_key(ep, dir, pkt), &entry, 0).is_err() {
        // Its later fragments will find no head: dropped where the direction is isolated.
        count(counter::FRAG_INSERT_FAILED);
    }
}

#[inline(always)]
fn follow_first_fragment(ep: &EndpointInfo, dir: u8, pkt: &mut Packet, isolated: bool) -> Result<(), DropReason> {
    // SAFETY: the value is copied out at once.
    let head = unsafe { FRAGMENTS.get(&frag_key(ep, dir, pkt)) }.copied();
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    match head {
        Some(h) if now.wrapping_sub(h.first_seen_ns) <= enforcer_common::ct::timeout::FRAGMENT => {
            pkt.tuple.sport = h.sport;
            pkt.tuple.dport = h.dport;
            if h.verdict == verdict::ALLOWED {
                Ok(())
            } else {
                Err(DropReason::FragmentOfDropped)
            }
        }
        // No decided first fragment: never into (or out of) an isolated pod.
        _ if isolated => Err(DropReason::FragmentWithoutHead),
        _ => Ok(()),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
