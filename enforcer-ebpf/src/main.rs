//! The enforcer's kernel programs: NetworkPolicy enforcement at the host-side veth of each
//! local pod (tcx). They only look things up: the agent precomputes every decision it can.
//!
//! Per packet:
//! 1. the endpoint (local pod) of the interface, its isolation flags and policy set;
//! 2. parse; ARP/ND/MLD pass; a pod's packet must come from the pod's own address;
//! 3. later fragments follow their first fragment's verdict; reordered ones (no first fragment
//!    yet) may enter a pod, never leave one isolated for egress; none may overlap the header
//!    its datagram was judged on (see "Fragments" below);
//! 4. ICMP errors pass only when they relate to a tracked connection (or the direction is not
//!    isolated);
//! 5. conntrack: packets of a tracked connection pass (re-checked once after a policy change);
//! 6. a pod's new connection to a Service port is translated to a backend (see `service`): from
//!    here on it is a connection to that backend;
//! 7. a new flow: the node itself always passes; otherwise a direction without policy passes,
//!    and one with policy takes the verdict of the first entry that holds the flow (a fixed
//!    number of probes, whatever the number of policies and tiers), or its default on a miss
//!    (isolated: deny; only cluster policies: allow); allowed flows are tracked;
//! 8. an allowed packet of a translated connection is rewritten (to the backend, or for a
//!    reply back to the Service address).
#![no_std]
#![no_main]

mod conntrack;
mod maps;
mod mem;
mod parse;
mod policy;
mod remove;
mod report;
mod service;

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::classifier,
    programs::TcContext,
};
use enforcer_common::{
    ct::{
        FragEntry, FragKey, CT_F_HAIRPIN, CT_F_SERVICE, FRAG_HEADLESS, FRAG_NAT_HAIRPIN, FRAG_NAT_REWRITE,
        FRAG_NO_LATER,
    },
    direction,
    endpoint::{
        EndpointInfo, F_AUDIT, F_EGRESS_ISOLATED, F_EGRESS_TIERED, F_HAS_V4, F_HAS_V6, F_INGRESS_ISOLATED,
        F_INGRESS_TIERED,
    },
    family,
    flow::{verdict, EV_F_FRAGMENT, EV_F_REPLY},
    policy::{identity, RULE_DENY},
    reason::{counter, DropReason},
};

use maps::{CONFIG, CONNTRACK, ENDPOINTS, FRAGMENTS};
use parse::{Frag, Kind, Packet};
use report::{count, Report};
use service::{NAT_HAIRPIN, NAT_ICMP, NAT_NONE, NAT_REWRITE};

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
    pkt.reset();
    #[cfg(feature = "upgrade-variant")]
    if let Some(seen) = maps::UPGRADE_VARIANT.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *seen += 1 };
    }
    let mut rep = Report {
        // SAFETY: the context's skb pointer is valid for the whole program run.
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        ep_id: 0,
        direction: dir,
        len: ctx.len(),
        peer_identity: 0,
        flags: 0,
        rule: 0,
    };
    let verdict = match try_handle(ctx, dir, pkt, &mut rep) {
        Ok(()) => finish(ctx, dir, pkt, &rep),
        Err(reason) => Err(reason),
    };
    match verdict {
        Ok(action) => {
            count(counter::ALLOWED);
            action
        }
        Err(reason) => {
            report::drop_event(pkt, &rep, reason);
            TC_ACT_SHOT
        }
    }
}

/// An allowed packet: rewritten when its connection is translated, and handed back to the
/// pod when it is a hairpin (only pod egress, the tc ingress hook, can do that).
#[inline(always)]
fn finish(ctx: &TcContext, dir: u8, pkt: &mut Packet, rep: &Report) -> Result<i32, DropReason> {
    if pkt.nat == NAT_NONE {
        return Ok(TC_ACT_UNSPEC);
    }
    if pkt.nat == NAT_ICMP {
        service::rewrite_icmp(ctx, pkt)?;
        return Ok(TC_ACT_UNSPEC);
    }
    service::rewrite(ctx, pkt)?;
    if pkt.nat == NAT_HAIRPIN && dir == direction::EGRESS {
        return service::hairpin(ctx, rep.ifindex);
    }
    Ok(TC_ACT_UNSPEC)
}

#[inline(always)]
fn try_handle(ctx: &TcContext, dir: u8, pkt: &mut Packet, rep: &mut Report) -> Result<(), DropReason> {
    // SAFETY: the map value is copied out at once.
    let ep = unsafe { ENDPOINTS.get(&rep.ifindex) }.copied().ok_or(DropReason::UnknownEndpoint)?;
    rep.ep_id = ep.ep_id;
    if let Err(reason) = parse::parse(ctx, pkt) {
        // A first fragment dropped as tiny or malformed takes its datagram with it.
        if pkt.frag == Frag::First {
            let _ = remember_first_fragment(&ep, dir, pkt, Err(reason));
        }
        return Err(reason);
    }
    if pkt.kind == Kind::LinkControl {
        count(counter::LINK_CONTROL);
        return Ok(());
    }
    if dir == direction::EGRESS && !source_is_pod(&ep, pkt) {
        return Err(DropReason::SpoofedSource);
    }
    // Whether policy can deny anything in this direction: a NetworkPolicy isolates it, or
    // cluster policies apply to it.
    let isolated = ep.flags & dir_flags(dir) != 0;
    if pkt.frag == Frag::Later {
        rep.flags |= EV_F_FRAGMENT;
        return follow_first_fragment(&ep, dir, pkt, isolated);
    }
    let result = decide(&ep, dir, pkt, rep, isolated);
    if pkt.frag == Frag::First {
        return remember_first_fragment(&ep, dir, pkt, result);
    }
    result
}

/// The endpoint flags that make a direction judged: isolated by a NetworkPolicy, or with
/// cluster policies.
#[inline(always)]
fn dir_flags(dir: u8) -> u32 {
    if dir == direction::INGRESS {
        F_INGRESS_ISOLATED | F_INGRESS_TIERED
    } else {
        F_EGRESS_ISOLATED | F_EGRESS_TIERED
    }
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
    if pkt.kind == Kind::IcmpError {
        let peer = if dir == direction::EGRESS { pkt.tuple.dst } else { pkt.tuple.src };
        let ident = policy::identity_of(pkt.family, &peer);
        rep.peer_identity = ident;
        // An error about a translated connection is translated with it: the client sends and
        // gets errors about the Service address, the rest of the path sees the backend.
        if dir == direction::EGRESS {
            service::icmp_forward(ep.ep_id, pkt);
        }
        // An error never opens a connection: it passes when it is about one of ours.
        conntrack::key_into(&mut pkt.ct_key, ep.ep_id, &pkt.inner);
        // SAFETY: the flags are copied out at once.
        if let Some(flags) = unsafe { CONNTRACK.get(&pkt.ct_key) }.map(|e| e.flags) {
            if dir == direction::INGRESS && flags & CT_F_SERVICE != 0 && flags & CT_F_HAIRPIN == 0 {
                service::icmp_reverse(ep.ep_id, pkt);
            }
            return Ok(());
        }
        if !isolated || ident == identity::HOST {
            return Ok(());
        }
        return Err(DropReason::IcmpErrorUnrelated);
    }

    // The coarse clock (one tick's resolution) on the established path: idle timeouts are
    // seconds, and a precise read costs a third of an established packet on a VM's clock. A
    // new connection reads the precise clock (`new_flow`) for its start and its record.
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    pkt.now = unsafe { bpf_ktime_get_coarse_ns() };
    pkt.revision = revision();
    pkt.backend_set = 0;
    if let Some(done) = established(ep, pkt, rep) {
        return done;
    }

    // Not tracked. A pod's packet to a Service port becomes a packet to a backend.
    if dir == direction::EGRESS && service::translatable(pkt) {
        if let Some(set) = service::forward(ep.ep_id, pkt) {
            if let Some(done) = established(ep, pkt, rep) {
                return done;
            }
            // Translated before, but no longer tracked (a closed connection's port used
            // again, an evicted entry): the backend stands while the Service's backends are
            // unchanged; otherwise the connection chooses again, or, with the Service gone,
            // is an ordinary flow to that address.
            match service::frontend_of(&pkt.wire) {
                // Keeps the translation `forward` made.
                Some(fe) if fe.backend_set == set => pkt.backend_set = set,
                found => {
                    pkt.tuple = pkt.wire;
                    pkt.nat = NAT_NONE;
                    if let Some(fe) = found {
                        service::choose(pkt, &fe)?;
                        pkt.backend_set = fe.backend_set;
                    }
                }
            }
        } else if let Some(fe) = service::frontend_of(&pkt.tuple) {
            service::choose(pkt, &fe)?;
            pkt.backend_set = fe.backend_set;
        }
    }
    new_flow(ep, pkt, rep)
}

/// A packet of a tracked connection: passes (re-checked once after a policy change), and a
/// reply of a translated connection gets the Service address back. `None` when the packet's
/// tuple is not tracked, or its entry expired, or a SYN opens that closing connection's tuple
/// again (the old connection's end is then reported).
/// Not inlined (like [`new_flow`]): each gets a stack frame of its own, which the 512-byte
/// stack could not hold inlined together.
#[inline(never)]
fn established(ep: &EndpointInfo, pkt: &mut Packet, rep: &mut Report) -> Option<Result<(), DropReason>> {
    let from_lo = conntrack::key_into(&mut pkt.ct_key, ep.ep_id, &pkt.tuple);
    let e = CONNTRACK.get_ptr_mut(&pkt.ct_key)?;
    // SAFETY: a valid pointer into the map value; concurrent updates of the counters are
    // benign races (statistics), state changes are single-byte stores.
    let e = unsafe { &mut *e };
    let (now, rev) = (pkt.now, pkt.revision);
    let reopened = conntrack::reopens(e, pkt);
    if !reopened && !conntrack::expired(e, pkt.tuple.proto, now) {
        let is_reply = from_lo != (e.flags & enforcer_common::ct::CT_F_ORIG_LO != 0);
        if is_reply {
            rep.flags |= EV_F_REPLY;
        }
        if e.revision != rev {
            // The policy changed since this connection was allowed: check its first packet
            // again, as the pod's side saw it, under the policy now in force.
            count(counter::CT_RECHECKED);
            let orig = conntrack::origin_tuple(&pkt.ct_key, e);
            let odir = e.origin_dir;
            let opeer = if odir == direction::EGRESS { &orig.dst } else { &orig.src };
            let oident = policy::identity_of(pkt.family, opeer);
            match check(ep, odir, oident, orig.proto, orig.dport) {
                Ok(rule) => {
                    e.revision = rev;
                    e.rule = rule;
                }
                // Audit mode: the connection goes on, as it would without policy.
                Err(_) if ep.flags & F_AUDIT != 0 => {
                    e.revision = rev;
                    e.rule = 0;
                }
                Err(_) => {
                    let _ = CONNTRACK.remove(&pkt.ct_key);
                    return Some(Err(DropReason::Revoked));
                }
            }
        }
        let ended = conntrack::track(e, pkt, from_lo, is_reply, now, rep.len);
        if ended != 0 {
            report::end_event(&pkt.ct_key, e, rep.ifindex, pkt.family, ended, e.last_seen_ns);
        }
        if is_reply && e.flags & CT_F_SERVICE != 0 {
            service::reverse(ep.ep_id, pkt, e.flags & CT_F_HAIRPIN != 0);
        }
        return Some(Ok(()));
    }
    if e.flags & enforcer_common::ct::CT_F_END_REPORTED == 0 {
        // An idle connection found expired by its next packet, or a closing one whose tuple
        // opens again, which is about to be checked as a new flow (and may replace the
        // entry): report its end first.
        e.flags |= enforcer_common::ct::CT_F_END_REPORTED;
        let why = if reopened { enforcer_common::ct::end::CLOSED } else { enforcer_common::ct::end::TIMEOUT };
        report::end_event(&pkt.ct_key, e, rep.ifindex, pkt.family, why, e.last_seen_ns);
    }
    None
}

/// A packet that opens a connection (`pkt.tuple`, translated if it goes to a Service): the
/// policy decides; an allowed one is tracked and reported.
#[inline(never)]
fn new_flow(ep: &EndpointInfo, pkt: &mut Packet, rep: &mut Report) -> Result<(), DropReason> {
    let dir = rep.direction;
    let peer = if dir == direction::EGRESS { pkt.tuple.dst } else { pkt.tuple.src };
    let ident = policy::identity_of(pkt.family, &peer);
    rep.peer_identity = ident;
    let (rule, audited) = match check(ep, dir, ident, pkt.tuple.proto, pkt.tuple.dport) {
        Ok(rule) => (rule, false),
        // Audit mode: what the policy would drop passes, is tracked (its replies pass as they
        // would without policy) and is reported once per connection as AUDIT.
        Err(rule) if ep.flags & F_AUDIT != 0 => {
            rep.rule = rule;
            (0, true)
        }
        Err(rule) => {
            // The drop's report names the rule that denied it (0: a NetworkPolicy's isolation).
            rep.rule = rule;
            return Err(DropReason::PolicyDenied);
        }
    };
    // An allowed connection starts now, precisely: its record's time and its duration.
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    pkt.now = unsafe { bpf_ktime_get_ns() };
    let from_lo = conntrack::key_into(&mut pkt.ct_key, ep.ep_id, &pkt.tuple);
    conntrack::new_entry(
        &mut pkt.ct_entry,
        pkt.tuple.proto,
        pkt.tcp_flags,
        from_lo,
        dir,
        rule,
        pkt.revision,
        pkt.now,
        rep.len,
    );
    if pkt.nat != NAT_NONE {
        service::remember(ep.ep_id, pkt);
    }
    if CONNTRACK.insert(&pkt.ct_key, &pkt.ct_entry, 0).is_err() {
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

/// Whether a new flow may pass: `Ok` with the rule that allows it, `Err` with the rule that
/// denies it (0 without a rule: the default, or a NetworkPolicy's isolation). `dport` is in
/// network order.
#[inline(always)]
fn check(ep: &EndpointInfo, dir: u8, ident: u32, proto: u8, dport: u16) -> Result<u32, u32> {
    let (isolated, tiered) = if dir == direction::INGRESS {
        (F_INGRESS_ISOLATED, F_INGRESS_TIERED)
    } else {
        (F_EGRESS_ISOLATED, F_EGRESS_TIERED)
    };
    // Traffic between a pod and its own node (kubelet probes) is always allowed.
    if ident == identity::HOST || ep.flags & (isolated | tiered) == 0 {
        return Ok(0);
    }
    match policy::lookup(ep.flags, ep.policy_set, dir, ident, proto, u16::from_be(dport)) {
        Some(v) if v & RULE_DENY != 0 => Err(v & !RULE_DENY),
        Some(rule) => Ok(rule),
        // No entry: what the direction does by default. Isolated by a NetworkPolicy it denies;
        // otherwise (only cluster policies apply) it allows.
        None if ep.flags & isolated != 0 => Err(0),
        None => Ok(0),
    }
}

// Fragments.
//
// A tc hook cannot hold a packet back, so a later fragment that arrives before its first
// fragment (reordered in the network) can only be dropped, passed, or left to be judged after
// the kernel reassembled the datagram (netfilter's defrag in the node's namespace: a copy of
// every fragmented datagram, reassembly on the forwarding path and new fragments after it,
// and judgment by another hook). Dropping it drops legitimate datagrams. Passing it is safe
// where the receiving kernel reassembles: it holds the fragment, and delivers nothing of the
// datagram unless the first fragment, which is judged here, passes too. So:
//
// - a first fragment is judged on its ports like any packet, must hold the whole header its
//   verdict depends on (`parse`: `TinyFragment`), and its verdict, allowed or dropped, is
//   recorded for its later fragments, with the length of that header;
// - a later fragment of an allowed datagram passes (translated as its first fragment was),
//   one of a dropped datagram is dropped;
// - a later fragment with no recorded first fragment passes into a pod (the pod's kernel
//   holds it; counted as `FRAG_HEADLESS_PASSED`) and where the direction is not isolated,
//   but never leaves a pod isolated for egress (`FragmentWithoutHead`): its payload would
//   reach the wire of a destination nobody judged, and a pod's own stack sends its first
//   fragment first;
// - no later fragment may overlap the header its datagram was judged on (`FragmentOverlap`,
//   RFC 1858 / RFC 3128): statelessly below the protocol's minimal header (IPv4 TCP at
//   offset 1 or 2), against the recorded header length when the first fragment came first,
//   and, when later fragments came first, the first fragment is dropped if one of them
//   starts inside its header. A dropped overlap marks the datagram dropped.
//
// The result is never weaker than judging the reassembled datagram: what reaches an
// application was reassembled around a first fragment judged here, whose header no later
// fragment could change.

/// The key of a datagram's fragments: its addresses as they travel (before any translation),
/// as the receiving kernel groups them (see `FragKey::proto`).
#[inline(always)]
fn frag_key(ep: &EndpointInfo, dir: u8, pkt: &Packet) -> FragKey {
    let t = if pkt.nat != NAT_NONE { &pkt.wire } else { &pkt.tuple };
    FragKey {
        ep_id: ep.ep_id,
        id: pkt.frag_id,
        src: t.src,
        dst: t.dst,
        proto: if pkt.family == family::IPV4 { pkt.tuple.proto } else { 0 },
        direction: dir,
        _pad: [0; 2],
    }
}

#[inline(always)]
fn fresh(e: &FragEntry, now: u64) -> bool {
    enforcer_common::ct::elapsed(now, e.first_seen_ns) <= enforcer_common::ct::timeout::FRAGMENT
}

/// Records a first fragment's verdict and returns the packet's: `result`, unless later
/// fragments that passed before it overlap its header (then it is dropped, and its datagram
/// with it). Not inlined: its key and value get their own stack frame, apart from the
/// policy path's.
#[inline(never)]
fn remember_first_fragment(
    ep: &EndpointInfo,
    dir: u8,
    pkt: &Packet,
    result: Result<(), DropReason>,
) -> Result<(), DropReason> {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut entry = FragEntry {
        first_seen_ns: now,
        sport: pkt.tuple.sport,
        dport: pkt.tuple.dport,
        verdict: if result.is_ok() { verdict::ALLOWED } else { verdict::DROPPED },
        reason: match result {
            Ok(()) => 0,
            Err(r) => r as u8,
        },
        nat: match pkt.nat {
            NAT_REWRITE => FRAG_NAT_REWRITE,
            NAT_HAIRPIN => FRAG_NAT_REWRITE | FRAG_NAT_HAIRPIN,
            _ => 0,
        },
        _pad: 0,
        nat_src: pkt.out.src,
        nat_dst: pkt.out.dst,
        frontend: pkt.frontend,
        hdr_end: pkt.l4_end.saturating_sub(pkt.frag_start as u32) as u16,
        min_later: FRAG_NO_LATER,
    };
    let key = frag_key(ep, dir, pkt);
    // The usual case, nothing recorded for this datagram yet: one map operation, as before.
    if FRAGMENTS.insert(&key, &entry, BPF_NOEXIST as u64).is_ok() {
        return result;
    }
    // A record exists: later fragments that came first, or an earlier first fragment with
    // this identification (a duplicate, or the id used again), which this one replaces, in
    // place. (A failed insert costs about what a successful one does: LRU maps take a free
    // node before they look.)
    let mut result = result;
    let Some(old) = FRAGMENTS.get_ptr_mut(&key) else {
        // Evicted meanwhile.
        if FRAGMENTS.insert(&key, &entry, BPF_ANY as u64).is_err() {
            // Its later fragments will find no head: see `follow_first_fragment`.
            count(counter::FRAG_INSERT_FAILED);
        }
        return result;
    };
    // SAFETY: a valid pointer into the map value (see `follow_first_fragment` on races).
    let old = unsafe { &mut *old };
    if old.verdict == FRAG_HEADLESS && fresh(old, now) && old.min_later < entry.hdr_end && result.is_ok() {
        // A fragment already passed starts inside the header just judged: the receiver
        // could rebuild a different one.
        result = Err(DropReason::FragmentOverlap);
        entry.verdict = verdict::DROPPED;
        entry.reason = DropReason::FragmentOverlap as u8;
    }
    *old = entry;
    result
}

#[inline(never)]
fn follow_first_fragment(ep: &EndpointInfo, dir: u8, pkt: &mut Packet, isolated: bool) -> Result<(), DropReason> {
    let key = frag_key(ep, dir, pkt);
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let off = pkt.frag_off;
    // Below the least header of the protocol it claims, a later fragment overlaps the header
    // of any first fragment of its datagram. IPv4's protocol is part of the reassembly key;
    // IPv6's next header is only a claim, checked against the first fragment's own header.
    let floor = parse::min_l4_header(pkt.tuple.proto);
    let head = FRAGMENTS.get_ptr_mut(&key);
    if let Some(h) = head {
        // SAFETY: a valid pointer into the map value; racing writers of one datagram's record
        // can at worst lose a `min_later` update or an overlap mark (the receiver discards
        // overlapping datagrams itself).
        let h = unsafe { &mut *h };
        if fresh(h, now) && h.verdict != FRAG_HEADLESS {
            pkt.tuple.sport = h.sport;
            pkt.tuple.dport = h.dport;
            if h.verdict != verdict::ALLOWED {
                return Err(DropReason::FragmentOfDropped);
            }
            if off < floor || off < h.hdr_end {
                // The datagram's other fragments go with it: it can no longer be rebuilt as
                // judged.
                h.verdict = verdict::DROPPED;
                h.reason = DropReason::FragmentOverlap as u8;
                return Err(DropReason::FragmentOverlap);
            }
            if h.nat & FRAG_NAT_REWRITE != 0 {
                // The same translation as the first fragment: addresses only (a later
                // fragment has no ports; the first one's checksum covers the datagram).
                pkt.wire = pkt.tuple;
                pkt.out = pkt.tuple;
                pkt.out.src = h.nat_src;
                pkt.out.dst = h.nat_dst;
                pkt.frontend = h.frontend;
                pkt.nat = if h.nat & FRAG_NAT_HAIRPIN != 0 { NAT_HAIRPIN } else { NAT_REWRITE };
            }
            return Ok(());
        }
    }
    // No first fragment recorded (not seen yet, forgotten, or only later fragments so far).
    if off < floor {
        return Err(DropReason::FragmentOverlap);
    }
    if isolated && dir == direction::EGRESS {
        return Err(DropReason::FragmentWithoutHead);
    }
    headless(&key, head, off, now);
    count(counter::FRAG_HEADLESS_PASSED);
    Ok(())
}

/// Notes a later fragment that passed before its first fragment: the first fragment is then
/// checked against the lowest such offset (`remember_first_fragment`).
#[inline(always)]
fn headless(key: &FragKey, head: Option<*mut FragEntry>, off: u16, now: u64) {
    if let Some(h) = head {
        // SAFETY: as in `follow_first_fragment`.
        let h = unsafe { &mut *h };
        if h.verdict == FRAG_HEADLESS && fresh(h, now) {
            if off < h.min_later {
                h.min_later = off;
            }
            return;
        }
    }
    let entry = FragEntry {
        first_seen_ns: now,
        sport: 0,
        dport: 0,
        verdict: FRAG_HEADLESS,
        reason: 0,
        nat: 0,
        _pad: 0,
        nat_src: [0; 16],
        nat_dst: [0; 16],
        frontend: 0,
        hdr_end: 0,
        min_later: off,
    };
    if FRAGMENTS.insert(key, &entry, BPF_ANY as u64).is_err() {
        // Its first fragment will not be checked against it; the receiving kernel still
        // discards a datagram whose fragments overlap (Linux since 4.19, RFC 5722).
        count(counter::FRAG_INSERT_FAILED);
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
