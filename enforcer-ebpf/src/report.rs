//! Counters and flow events.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use enforcer_common::{
    ct::{CtEntry, CtKey},
    flow::{verdict, ConnEndEvent, FlowEvent, FlowKey, DROP_REPORT_INTERVAL_NS, EV_F_END},
    reason::{counter, DropReason},
};

use crate::maps::{COUNTERS, DROP_RATELIMIT, FLOW_EVENTS};
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
}

/// Reports a drop, at most once per `DROP_REPORT_INTERVAL_NS` per flow; the rest are counted.
#[inline(always)]
pub fn drop_event(pkt: &Packet, r: &Report, reason: DropReason) {
    count(counter::DROP_BASE + reason as u32);
    let now = unsafe { bpf_ktime_get_ns() };
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
            if now.wrapping_sub(*last) < DROP_REPORT_INTERVAL_NS {
                count(counter::EVENTS_RATE_LIMITED);
                return;
            }
            *last = now;
        }
    } else {
        let _ = DROP_RATELIMIT.insert(&key, &now, 0);
    }
    emit(pkt, r, verdict::DROPPED, reason as u8, 0, now);
}

/// Reports a new flow the policy denies that passes in audit mode (once per connection).
#[inline(always)]
pub fn audit_event(pkt: &Packet, r: &Report) {
    count(counter::AUDITED);
    let now = unsafe { bpf_ktime_get_ns() };
    emit(pkt, r, verdict::AUDIT, DropReason::PolicyDenied as u8, 0, now);
}

/// Reports a newly allowed connection (once per connection).
#[inline(always)]
pub fn allow_event(pkt: &Packet, r: &Report, rule: u32) {
    let now = unsafe { bpf_ktime_get_ns() };
    emit(pkt, r, verdict::ALLOWED, 0, rule, now);
}

#[inline(always)]
fn emit(pkt: &Packet, r: &Report, verdict: u8, reason: u8, rule: u32, now: u64) {
    let Some(mut entry) = FLOW_EVENTS.reserve::<FlowEvent>(0) else {
        // Lost events are counted, never waited for: the verdict does not depend on them.
        count(counter::EVENTS_LOST);
        return;
    };
    entry.write(FlowEvent {
        ts_ns: now,
        ifindex: r.ifindex,
        ep_id: r.ep_id,
        rule,
        len: r.len,
        src: pkt.tuple.src,
        dst: pkt.tuple.dst,
        sport: pkt.tuple.sport,
        dport: pkt.tuple.dport,
        family: pkt.family,
        proto: pkt.tuple.proto,
        direction: r.direction,
        verdict,
        reason,
        tcp_flags: pkt.tcp_flags,
        flags: r.flags,
        icmp_type: pkt.icmp_type,
        peer_identity: r.peer_identity,
        icmp_code: pkt.icmp_code,
        _pad: [0; 7],
    });
    entry.submit(0);
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
    entry.write(ConnEndEvent {
        flow: FlowEvent {
            ts_ns: now,
            ifindex,
            ep_id: key.ep_id,
            rule: e.rule,
            len: 0,
            src: orig.src,
            dst: orig.dst,
            sport: orig.sport,
            dport: orig.dport,
            family,
            proto: orig.proto,
            direction: e.origin_dir,
            verdict: verdict::ALLOWED,
            reason: 0,
            tcp_flags: 0,
            flags: EV_F_END,
            icmp_type: 0,
            peer_identity: 0,
            icmp_code: 0,
            _pad: [0; 7],
        },
        created_ns: e.created_ns,
        packets_orig: e.packets_orig,
        bytes_orig: e.bytes_orig,
        packets_reply: e.packets_reply,
        bytes_reply: e.bytes_reply,
        end_reason,
        _pad: [0; 7],
    });
    entry.submit(0);
}
