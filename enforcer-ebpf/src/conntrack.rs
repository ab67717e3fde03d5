//! Connection tracking: one LRU entry per connection and endpoint, found from either
//! direction with one lookup (the key orders the two ends canonically).

use enforcer_common::{
    ct::{self, state, CtEntry, CtKey},
    proto,
};

use crate::parse::{Packet, Tuple, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// Reads 16 bytes as two big-endian words (no memcmp on this target).
#[inline(always)]
fn words(a: &[u8; 16]) -> (u64, u64) {
    // SAFETY: both reads are within the 16-byte array; read_unaligned has no alignment needs.
    unsafe {
        let p = a.as_ptr() as *const u64;
        (
            u64::from_be(core::ptr::read_unaligned(p)),
            u64::from_be(core::ptr::read_unaligned(p.add(1))),
        )
    }
}

#[inline(always)]
pub fn addr_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    words(a) == words(b)
}

/// The connection's first packet as a tuple (its originator as source).
#[inline(always)]
pub fn origin_tuple(key: &CtKey, e: &CtEntry) -> Tuple {
    if e.flags & ct::CT_F_ORIG_LO != 0 {
        Tuple {
            src: key.addr_lo,
            dst: key.addr_hi,
            sport: key.port_lo,
            dport: key.port_hi,
            proto: key.proto,
        }
    } else {
        Tuple {
            src: key.addr_hi,
            dst: key.addr_lo,
            sport: key.port_hi,
            dport: key.port_lo,
            proto: key.proto,
        }
    }
}

#[inline(always)]
pub fn expired(e: &CtEntry, p: u8, now: u64) -> bool {
    // A reset connection is over whatever the clocks say: with the coarse clock, a packet in
    // the same tick as the RST would otherwise find it idle for 0 ns, "not expired".
    (p == proto::TCP && e.state == state::CLOSED) || ct::elapsed(now, e.last_seen_ns) > ct::idle_timeout(p, e.state)
}

/// Whether `pkt` opens a new connection on the tuple of a closing one: a SYN (no ACK, no
/// RST) after a FIN. Such a packet never belongs to the old connection (every segment after
/// the handshake carries an ACK), so it is the port used again: a client reusing its port, or
/// a pod opening directly the tuple its translated connection to a Service just closed. Taken
/// as the old connection's packet, it would pass unjudged, and its replies would be
/// translated back as the old connection's were. A retransmitted SYN of a connection still
/// opening (SYN_SENT, or ESTABLISHED when the SYN-ACK was lost past this hook) stays with it.
#[inline(always)]
pub fn reopens(e: &CtEntry, pkt: &Packet) -> bool {
    pkt.tuple.proto == proto::TCP
        && pkt.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
        && (e.state == state::CLOSING || e.state == state::FIN_ACKED)
}

/// The canonical key of a tuple written into `k` (scratch memory: the key does not fit on the
/// stack next to the rest); returns whether the tuple's source is the key's lower end.
#[inline(always)]
pub fn key_into(k: &mut CtKey, ep_id: u32, t: &Tuple) -> bool {
    let s = words(&t.src);
    let d = words(&t.dst);
    let src_lo = (s.0, s.1, u16::from_be(t.sport)) <= (d.0, d.1, u16::from_be(t.dport));
    k.ep_id = ep_id;
    if src_lo {
        k.addr_lo = t.src;
        k.addr_hi = t.dst;
        k.port_lo = t.sport;
        k.port_hi = t.dport;
    } else {
        k.addr_lo = t.dst;
        k.addr_hi = t.src;
        k.port_lo = t.dport;
        k.port_hi = t.sport;
    }
    k.proto = t.proto;
    crate::mem::zero_pad(&mut k._pad);
    src_lo
}

/// Writes a fresh entry into `e` for a connection whose first packet has protocol `p` and
/// TCP flags `f`.
#[allow(clippy::too_many_arguments, reason = "the fields of a new entry")]
#[inline(always)]
pub fn new_entry(e: &mut CtEntry, p: u8, f: u8, src_lo: bool, dir: u8, rule: u32, rev: u32, now: u64, len: u32) {
    let st = if p != proto::TCP {
        state::ESTABLISHED
    } else if f & TCP_RST != 0 {
        // A RST never opens anything; the entry only records that the flow was allowed.
        state::CLOSED
    } else if f & TCP_FIN != 0 {
        state::CLOSING
    } else if f & TCP_SYN != 0 && f & TCP_ACK == 0 {
        state::SYN_SENT
    } else {
        // Mid-stream (e.g. the agent's conntrack was lost): allowed by policy, so track it.
        state::ESTABLISHED
    };
    e.created_ns = now;
    e.last_seen_ns = now;
    e.packets_orig = 1;
    e.bytes_orig = len as u64;
    e.packets_reply = 0;
    e.bytes_reply = 0;
    e.revision = rev;
    e.rule = rule;
    e.state = st;
    e.origin_dir = dir;
    // A flow that starts with a RST never opened: its allow event is all there is to say.
    e.flags = if src_lo { ct::CT_F_ORIG_LO } else { 0 }
        | if st == state::CLOSED { ct::CT_F_END_REPORTED } else { 0 };
    e._pad = 0;
    e.frontend = 0;
}

/// Accounts a packet of a tracked connection and advances the TCP state. Returns the
/// `ct::end::*` reason when this packet ends the connection (the first RST, or the FIN that
/// completes the close) and the end is not reported yet, else 0.
#[inline(always)]
pub fn track(e: &mut CtEntry, pkt: &Packet, from_lo: bool, is_reply: bool, now: u64, len: u32) -> u8 {
    // Never backwards: `now` may be a coarse reading (a tick behind the precise one that
    // stamped the connection's start) or older than another CPU's stamp.
    if now > e.last_seen_ns {
        e.last_seen_ns = now;
    }
    if is_reply {
        e.packets_reply += 1;
        e.bytes_reply += len as u64;
        e.flags |= ct::CT_F_REPLIED;
    } else {
        e.packets_orig += 1;
        e.bytes_orig += len as u64;
    }
    if pkt.tuple.proto != proto::TCP {
        return 0;
    }
    let f = pkt.tcp_flags;
    let mut ended = 0;
    if f & TCP_RST != 0 {
        e.state = state::CLOSED;
        ended = ct::end::RESET;
    } else if f & TCP_FIN != 0 {
        e.flags |= if from_lo { ct::CT_F_FIN_LO } else { ct::CT_F_FIN_HI };
        e.state = state::CLOSING;
        if e.flags & (ct::CT_F_FIN_LO | ct::CT_F_FIN_HI) == ct::CT_F_FIN_LO | ct::CT_F_FIN_HI {
            ended = ct::end::CLOSED;
        }
    } else if is_reply && e.state == state::SYN_SENT {
        e.state = state::ESTABLISHED;
    } else if e.state == state::CLOSING
        && f & TCP_ACK != 0
        && e.flags & (ct::CT_F_FIN_LO | ct::CT_F_FIN_HI) == ct::CT_F_FIN_LO | ct::CT_F_FIN_HI
    {
        // The ACK after both FINs: the close is acknowledged (see `state::FIN_ACKED`).
        e.state = state::FIN_ACKED;
    }
    if ended != 0 && e.flags & ct::CT_F_END_REPORTED == 0 {
        // The final ACK after the FINs still passes (the entry lives on in CLOSING); it is
        // not in the counts.
        e.flags |= ct::CT_F_END_REPORTED;
        return ended;
    }
    0
}
