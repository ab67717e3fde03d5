//! Counters and flow events.

use aya_ebpf::helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use enforcer_common::{
    ct::{CtEntry, CtKey},
    flow::{verdict, ConnEndEvent, FlowEvent, FlowKey, DROP_REPORT_INTERVAL_NS, EV_F_END},
    reason::{counter, DropReason},
};

use crate::maps::{COUNTERS, DROP_RATELIMIT, FLOW_EVENTS};
use crate::mem::zero_pad;
use crate::parse::Packet;

#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *c += 1 };
    }
}

/// What to put in an event besides the packet.
pub struct Report {
    pub ifindex: u32,
    pub ep_id: u32,
    pub direction: u8,
    pub len: u32,
    pub peer_identity: u32,
    pub flags: u8,
    /// The rule a drop or an audited flow is reported with: the one that denied it (0: none).
    pub rule: u32,
}

/// Reports a drop, at most once per `DROP_REPORT_INTERVAL_NS` per flow; the rest are counted.
/// Not inlined: its key gets a stack frame of its own.
#[inline(never)]
pub fn drop_event(pkt: &Packet, r: &Report, reason: DropReason) {
    count(counter::DROP_BASE + reason as u32);
    // The rate limit needs no more than the coarse clock (one tick against a second); the
    // precise one is read only for a drop that is reported.
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let key = FlowKey {
        ep_id: r.ep_id,
        src: pkt.tuple.src,
        dst: pkt.tuple.dst,
        sport: pkt.tuple.sport,
        dport: pkt.tuple.dport,
        proto: pkt.tuple.proto,
        direction: r.direction,
        reason: reason as u8,
        _pad: 0,
    };
    if let Some(last) = DROP_RATELIMIT.get_ptr_mut(&key) {
        // SAFETY: a valid map value pointer; a racing writer can only make us report twice.
        unsafe {
            if enforcer_common::ct::elapsed(now, *last) < DROP_REPORT_INTERVAL_NS {
                count(counter::EVENTS_RATE_LIMITED);
                return;
            }
            *last = now;
        }
    } else {
        let _ = DROP_RATELIMIT.insert(&key, &now, 0);
    }
    // SAFETY: no preconditions.
    emit(pkt, r, verdict::DROPPED, reason as u8, r.rule, unsafe { bpf_ktime_get_ns() });
}

/// Reports a new flow the policy denies that passes in audit mode (once per connection), at
/// `pkt.now` (the new flow's precise reading).
#[inline(always)]
pub fn audit_event(pkt: &Packet, r: &Report) {
    count(counter::AUDITED);
    emit(pkt, r, verdict::AUDIT, DropReason::PolicyDenied as u8, r.rule, pkt.now);
}

/// Reports a newly allowed connection (once per connection), at `pkt.now` (the new flow's
/// precise reading).
#[inline(always)]
pub fn allow_event(pkt: &Packet, r: &Report, rule: u32) {
    emit(pkt, r, verdict::ALLOWED, 0, rule, pkt.now);
}

/// Writes the common part of an event straight into its ring-buffer slot (a whole event built
/// on the stack first would not fit next to the rest of the program's locals).
#[allow(clippy::too_many_arguments, reason = "one event's fields")]
#[inline(always)]
fn fill(
    ev: &mut FlowEvent,
    now: u64,
    ifindex: u32,
    ep_id: u32,
    rule: u32,
    len: u32,
    t: &crate::parse::Tuple,
    family: u8,
) {
    ev.ts_ns = now;
    ev.ifindex = ifindex;
    ev.ep_id = ep_id;
    ev.rule = rule;
    ev.len = len;
    ev.src = t.src;
    ev.dst = t.dst;
    ev.sport = t.sport;
    ev.dport = t.dport;
    ev.family = family;
    ev.proto = t.proto;
}

/// `bpf_ringbuf_submit` flag (UAPI `BPF_RB_NO_WAKEUP`): nobody is woken. By default the
/// kernel wakes a reader that has caught up at every submit: on a busy node a wakeup, and two
/// context switches, per event. A forced wakeup is worse: it raises an irq_work (in a VM a
/// self-IPI, microseconds) at every submit. The agent instead reads the ring every
/// `flow_sink::READ_EVERY` (10 ms), which the 4 MiB ring covers up to ~5 M events/s.
const RB_NO_WAKEUP: u64 = 1;

#[inline(always)]
fn emit(pkt: &Packet, r: &Report, verdict: u8, reason: u8, rule: u32, now: u64) {
    let Some(mut entry) = FLOW_EVENTS.reserve::<FlowEvent>(0) else {
        // Lost events are counted, never waited for: the verdict does not depend on them.
        count(counter::EVENTS_LOST);
        return;
    };
    // SAFETY: the slot is reserved for a FlowEvent; every field is written before submit.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill(ev, now, r.ifindex, r.ep_id, rule, r.len, &pkt.tuple, pkt.family);
    ev.direction = r.direction;
    ev.verdict = verdict;
    ev.reason = reason;
    ev.tcp_flags = pkt.tcp_flags;
    ev.flags = r.flags;
    ev.icmp_type = pkt.icmp_type;
    ev.peer_identity = r.peer_identity;
    ev.icmp_code = pkt.icmp_code;
    zero_pad(&mut ev._pad);
    ev.frontend = pkt.frontend;
    entry.submit(RB_NO_WAKEUP);
}

/// Reports the end of a connection with its counts. `family` is the packet's; `now` the time
/// it ended.
#[inline(always)]
pub fn end_event(key: &CtKey, e: &CtEntry, ifindex: u32, family: u8, end_reason: u8, now: u64) {
    let Some(mut entry) = FLOW_EVENTS.reserve::<ConnEndEvent>(0) else {
        count(counter::EVENTS_LOST);
        return;
    };
    let orig = crate::conntrack::origin_tuple(key, e);
    // SAFETY: the slot is reserved for a ConnEndEvent; every field is written before submit.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill(&mut ev.flow, now, ifindex, key.ep_id, e.rule, 0, &orig, family);
    ev.flow.direction = e.origin_dir;
    ev.flow.verdict = verdict::ALLOWED;
    ev.flow.reason = 0;
    ev.flow.tcp_flags = 0;
    ev.flow.flags = EV_F_END;
    ev.flow.icmp_type = 0;
    ev.flow.peer_identity = 0;
    ev.flow.icmp_code = 0;
    zero_pad(&mut ev.flow._pad);
    ev.flow.frontend = e.frontend;
    ev.created_ns = e.created_ns;
    ev.packets_orig = e.packets_orig;
    ev.bytes_orig = e.bytes_orig;
    ev.packets_reply = e.packets_reply;
    ev.bytes_reply = e.bytes_reply;
    ev.end_reason = end_reason;
    zero_pad(&mut ev._pad);
    entry.submit(RB_NO_WAKEUP);
}
