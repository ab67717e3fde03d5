//! Conntrack garbage collection, and the connection ends the datapath cannot report itself.
//!
//! The datapath reports an end when a packet shows it (a RST, the FIN that completes a close,
//! or the next packet of an idle connection). A connection that simply goes quiet sends no
//! such packet: its entry would sit in the LRU map until evicted, its counts never reported.
//! The agent therefore walks the map every few seconds, reports the end of every expired
//! entry the datapath has not reported, and removes expired entries, which also keeps the LRU
//! from evicting live connections to make room for dead ones.
//!
//! What the sweeper reports is the datapath's own record of an end (`flow::ConnEndEvent`, as
//! the programs put it in the ring buffer), so the flow sink reads both alike (`flows::decode`).
//!
//! The same pass meters bytes: what each connection carried since the previous pass
//! ([`ByteMeter`]), so that the volume detector sees a long transfer while it runs, not only
//! when its connection ends. Short connections are metered too: a closed connection's entry
//! stays in the map until a pass removes it, and the pass that removes it meters it first.
//!
//! Removing an entry never lets anything through: the datapath treats an expired entry as
//! absent anyway, so the next packet of that tuple is checked against the policy as new.

/// One entry per conntrack entry, rebuilt every pass: foldhash rather than SipHash (bounded by
/// the conntrack map's size, so chosen keys cost no more than a full map).
type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::mem::size_of;
use std::net::Ipv6Addr;
use std::os::fd::AsFd;

use aya::maps::{HashMap, IterableMap, MapData, MapError};
use enforcer_common::ct::{self, CtEntry, CtKey, Removal};
use enforcer_common::family;
use enforcer_common::flow::{verdict, ConnEndEvent, FlowEvent, EV_F_END};

use super::map_batch;
use super::services::NatMaps;

/// What to do with one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Live: leave it.
    Keep,
    /// Expired and already reported (or closed by the datapath): remove it silently.
    Remove,
    /// Expired and never reported: report this end, then remove it.
    ReportAndRemove(Box<ConnEndEvent>),
}

/// Judges an entry at `now` (`CLOCK_MONOTONIC` ns, the clock of `bpf_ktime_get_ns`). Pure.
pub fn judge(key: &CtKey, e: &CtEntry, now: u64) -> Verdict {
    if live(key, e, now) {
        return Verdict::Keep;
    }
    if e.flags & ct::CT_F_END_REPORTED != 0 {
        return Verdict::Remove;
    }
    Verdict::ReportAndRemove(Box::new(end_event(key, e)))
}

/// Whether the entry is live at `now` (what [`judge`] keeps), without building its end.
fn live(key: &CtKey, e: &CtEntry, now: u64) -> bool {
    now.saturating_sub(e.last_seen_ns) <= ct::idle_timeout(key.proto, e.state)
}

/// The family of a connection whose addresses are both IPv4-mapped (as the datapath keeps IPv4
/// addresses) or not.
fn family_of(a: [u8; 16], b: [u8; 16]) -> u8 {
    let mapped = |a| Ipv6Addr::from(a).to_ipv4_mapped().is_some();
    if mapped(a) && mapped(b) {
        family::IPV4
    } else {
        family::IPV6
    }
}

/// The end of an idle connection, as the datapath would have reported it: the tuple of its
/// first packet, timed at its last packet.
fn end_event(key: &CtKey, e: &CtEntry) -> ConnEndEvent {
    let reason = if e.state == ct::state::CLOSED {
        ct::end::RESET
    } else {
        ct::end::TIMEOUT
    };
    let counts = [e.packets_orig, e.bytes_orig, e.packets_reply, e.bytes_reply];
    conn_event(key, e, e.last_seen_ns, reason, counts)
}

/// The end of a translated flow flushed because its backend left the Service (`None` when its
/// end was reported already).
pub fn flushed_end(key: &CtKey, e: &CtEntry) -> Option<ConnEndEvent> {
    if e.flags & ct::CT_F_END_REPORTED != 0 {
        return None;
    }
    let counts = [e.packets_orig, e.bytes_orig, e.packets_reply, e.bytes_reply];
    Some(conn_event(
        key,
        e,
        e.last_seen_ns,
        ct::end::BACKEND_GONE,
        counts,
    ))
}

/// The record of the connection of `key`/`e` ending (or, with `ct::end::ACTIVE`, sampled) at
/// `ts_ns`, with the counts `[packets, bytes]` of the originator then the responder: filled as
/// the datapath fills the ends it reports (`enforcer-ebpf/src/report.rs`), the tuple of the
/// connection's first packet, no interface.
fn conn_event(key: &CtKey, e: &CtEntry, ts_ns: u64, reason: u8, counts: [u64; 4]) -> ConnEndEvent {
    let lo = (key.addr_lo, key.port_lo);
    let hi = (key.addr_hi, key.port_hi);
    let ((src, sport), (dst, dport)) = if e.flags & ct::CT_F_ORIG_LO != 0 {
        (lo, hi)
    } else {
        (hi, lo)
    };
    ConnEndEvent {
        flow: FlowEvent {
            ts_ns,
            ifindex: 0,
            ep_id: key.ep_id,
            rule: e.rule,
            len: 0,
            src,
            dst,
            // Network order, as in the key and in the datapath's records.
            sport,
            dport,
            family: family_of(src, dst),
            proto: key.proto,
            direction: e.origin_dir,
            verdict: verdict::ALLOWED,
            reason: 0,
            tcp_flags: 0,
            flags: EV_F_END,
            icmp_type: 0,
            peer_identity: 0,
            icmp_code: 0,
            _pad: [0; 3],
            frontend: e.frontend,
        },
        created_ns: e.created_ns,
        packets_orig: counts[0],
        bytes_orig: counts[1],
        packets_reply: counts[2],
        bytes_reply: counts[3],
        end_reason: reason,
        _pad: [0; 7],
    }
}

/// What each connection carried since the previous pass. Remembers, per connection (key and
/// creation time, so a reused tuple is a new connection), the counts it last saw: one entry per
/// conntrack entry at most (about 100 bytes each). Pure.
#[derive(Debug, Default)]
pub struct ByteMeter {
    seen: FastMap<(CtKey, u64), [u64; 4]>,
    /// The previous pass's map, cleared, for the next: a full conntrack map makes these tens
    /// of MiB, which allocated and faulted in anew every pass were a visible share of the
    /// agent's CPU.
    spare: FastMap<(CtKey, u64), [u64; 4]>,
    /// The same for the entries a pass reads (see [`sweep_with_nat`]) and the indices of the
    /// expired ones among them: at thousands of connections a second, a pass finds as many
    /// expired entries as the map holds closed connections, and a buffer grown anew every
    /// pass was most of the agent's page faults.
    entries: Vec<(CtKey, CtEntry)>,
    expired: Vec<usize>,
}

impl ByteMeter {
    /// The entries of one pass (every entry still in the map), at `now`: what connections
    /// carried since the previous pass, as `active` events, one per peer and service port
    /// (connections of one endpoint from one address to one address and port, in one
    /// direction, by one rule and Service; their counts summed, the source port 0: many
    /// ports). The volume detector, the only reader, counts bytes per workload pair, so
    /// nothing it sees is lost, while a node opening thousands of short connections a second
    /// to one Service sends the flow sink a handful of samples per pass, not one per
    /// connection. Connections not in `entries` are forgotten.
    pub fn pass(&mut self, entries: &[(CtKey, CtEntry)], now: u64) -> Vec<ConnEndEvent> {
        let mut seen = std::mem::take(&mut self.spare);
        seen.clear();
        let mut out: Vec<ConnEndEvent> = Vec::new();
        let mut by_peer: FastMap<SampleKey, usize> = FastMap::default();
        for (key, e) in entries {
            let id = (*key, e.created_ns);
            if seen.contains_key(&id) {
                continue; // visited twice (the key walk restarted)
            }
            let total = [e.packets_orig, e.bytes_orig, e.packets_reply, e.bytes_reply];
            let before = self.seen.get(&id).copied().unwrap_or_default();
            let delta: [u64; 4] = std::array::from_fn(|i| total[i].saturating_sub(before[i]));
            if delta[1] + delta[3] > 0 {
                let mut ev = conn_event(key, e, now, ct::end::ACTIVE, delta);
                ev.flow.sport = 0;
                match by_peer.entry(SampleKey::of(&ev)) {
                    std::collections::hash_map::Entry::Occupied(i) => {
                        let sum = &mut out[*i.get()];
                        sum.packets_orig += ev.packets_orig;
                        sum.bytes_orig += ev.bytes_orig;
                        sum.packets_reply += ev.packets_reply;
                        sum.bytes_reply += ev.bytes_reply;
                        sum.created_ns = sum.created_ns.min(ev.created_ns);
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(out.len());
                        out.push(ev);
                    }
                }
            }
            seen.insert(id, total);
        }
        self.spare = std::mem::replace(&mut self.seen, seen);
        out
    }

    pub fn connections(&self) -> usize {
        self.seen.len()
    }
}

/// What byte samples are summed by: everything of a sample but its source port and counts.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct SampleKey {
    ep_id: u32,
    src: [u8; 16],
    dst: [u8; 16],
    dport: u16,
    proto: u8,
    direction: u8,
    rule: u32,
    frontend: u32,
}

impl SampleKey {
    fn of(ev: &ConnEndEvent) -> Self {
        let f = &ev.flow;
        SampleKey {
            ep_id: f.ep_id,
            src: f.src,
            dst: f.dst,
            dport: f.dport,
            proto: f.proto,
            direction: f.direction,
            rule: f.rule,
            frontend: f.frontend,
        }
    }
}

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub live: usize,
    pub removed: usize,
    /// Ends reported by this pass (also among `removed`).
    pub ends: Vec<ConnEndEvent>,
    /// What connections carried since the previous pass (see [`ByteMeter`]).
    pub samples: Vec<ConnEndEvent>,
}

/// The current `CLOCK_MONOTONIC` time in ns.
pub fn monotonic_now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The remover program (`programs::CT_REMOVE`, see `enforcer-ebpf/src/remove.rs`) on a file
/// descriptor of its own: removes a batch of expired entries in one syscall, each only if its
/// stamps are still those the pass read.
pub struct Remover {
    fd: aya::programs::ProgramFd,
    frame: Vec<u8>,
}

/// The Ethernet header's room before the records (the test run wants a frame).
const FRAME_HEAD: usize = 14;

impl Remover {
    pub fn new(fd: aya::programs::ProgramFd) -> Self {
        Remover {
            fd,
            frame: Vec::with_capacity(FRAME_HEAD + ct::REMOVALS_PER_RUN * size_of::<Removal>()),
        }
    }

    /// Removes what `batch` (at most `ct::REMOVALS_PER_RUN`) names, writing each outcome.
    pub fn run(&mut self, batch: &mut [Removal]) -> std::io::Result<()> {
        assert!(batch.len() <= ct::REMOVALS_PER_RUN);
        self.frame.clear();
        self.frame.resize(FRAME_HEAD, 0);
        for r in batch.iter() {
            // SAFETY: `Removal` is plain data without implicit padding (its size is asserted
            // to be its fields'), so its bytes are all initialised.
            let bytes = unsafe {
                std::slice::from_raw_parts(r as *const Removal as *const u8, size_of::<Removal>())
            };
            self.frame.extend_from_slice(bytes);
        }
        map_batch::test_run(self.fd.as_fd(), &mut self.frame)?;
        for (i, r) in batch.iter_mut().enumerate() {
            let at = FRAME_HEAD + i * size_of::<Removal>();
            // SAFETY: the frame holds a whole record at `at` (it was written above and the
            // program only overwrites outcomes); any bytes are a valid `Removal`.
            *r = unsafe { std::ptr::read_unaligned(self.frame[at..].as_ptr() as *const Removal) };
        }
        Ok(())
    }
}

/// One pass over the conntrack map at `now`.
pub fn sweep(
    map: &mut HashMap<MapData, CtKey, CtEntry>,
    now: u64,
    meter: &mut ByteMeter,
) -> Result<Sweep, MapError> {
    sweep_with_nat(map, None, None, now, meter)
}

/// One pass, also removing the NAT entries of the translated connections it removes; with a
/// `remover`, expired entries go a batch per syscall (else one each).
pub fn sweep_with_nat(
    map: &mut HashMap<MapData, CtKey, CtEntry>,
    nat: Option<&mut NatMaps>,
    remover: Option<&mut Remover>,
    now: u64,
    meter: &mut ByteMeter,
) -> Result<Sweep, MapError> {
    let mut out = Sweep::default();
    // Read the whole map first, a few thousand entries per syscall: removing entries while
    // walking would restart the walk.
    let mut all = std::mem::take(&mut meter.entries);
    all.clear();
    map_batch::lookup_all(map.map(), BATCH, &mut all)
        .map_err(syscall_error("bpf_map_lookup_batch"))?;
    let mut expired = std::mem::take(&mut meter.expired);
    expired.clear();
    for (i, (key, e)) in all.iter().enumerate() {
        if live(key, e, now) {
            out.live += 1;
        } else {
            expired.push(i);
        }
    }
    out.samples = meter.pass(&all, now);
    let result = match remover {
        Some(remover) => remove_in_batches(remover, nat, &all, &expired, now, &mut out),
        None => remove_expired(map, nat, &all, &expired, now, &mut out),
    };
    meter.entries = all;
    meter.expired = expired;
    result.map(|()| out)
}

/// [`remove_expired`] through the remover program, `ct::REMOVALS_PER_RUN` entries a syscall:
/// an entry whose stamps changed since the pass read it stays in the map (live).
fn remove_in_batches(
    remover: &mut Remover,
    mut nat: Option<&mut NatMaps>,
    all: &[(CtKey, CtEntry)],
    expired: &[usize],
    now: u64,
    out: &mut Sweep,
) -> Result<(), MapError> {
    let mut batch: Vec<Removal> = Vec::with_capacity(ct::REMOVALS_PER_RUN);
    for chunk in expired.chunks(ct::REMOVALS_PER_RUN) {
        batch.clear();
        batch.extend(chunk.iter().map(|&i| {
            let (key, e) = &all[i];
            Removal {
                key: *key,
                outcome: ct::removal::NONE,
                created_ns: e.created_ns,
                last_seen_ns: e.last_seen_ns,
            }
        }));
        remover
            .run(&mut batch)
            .map_err(syscall_error("bpf_prog_test_run"))?;
        for (r, &i) in batch.iter().zip(chunk) {
            let (key, seen) = &all[i];
            match r.outcome {
                ct::removal::REMOVED => {}
                ct::removal::RENEWED => {
                    out.live += 1;
                    continue;
                }
                _ => continue, // gone already (the datapath, or the LRU)
            }
            count_removed(nat.as_deref_mut(), key, seen, now, out)?;
        }
    }
    Ok(())
}

/// Removes the expired entries `expired` (indices into `all`, as a pass read them), counting
/// them and their ends into `out`.
fn remove_expired(
    map: &mut HashMap<MapData, CtKey, CtEntry>,
    mut nat: Option<&mut NatMaps>,
    all: &[(CtKey, CtEntry)],
    expired: &[usize],
    now: u64,
    out: &mut Sweep,
) -> Result<(), MapError> {
    for &i in expired {
        let (key, seen) = all[i];
        // Removed and read back in one syscall. A packet may have renewed the entry (or a
        // new connection taken the tuple) since the pass read it: such an entry goes back
        // (unless the datapath has made a new one meanwhile, which is then the newer).
        let taken: Option<CtEntry> = map_batch::take(map.map(), &key)
            .map_err(syscall_error("bpf_map_lookup_and_delete_elem"))?;
        match taken {
            None => continue, // gone already (the datapath, or the LRU)
            Some(now_e)
                if now_e.last_seen_ns != seen.last_seen_ns
                    || now_e.created_ns != seen.created_ns =>
            {
                // An error is EEXIST: the datapath's newer entry stands.
                let _ = map.insert(key, now_e, BPF_NOEXIST);
                out.live += 1;
                continue;
            }
            Some(_) => {}
        }
        count_removed(nat.as_deref_mut(), &key, &seen, now, out)?;
    }
    Ok(())
}

/// What follows an entry's removal, either way: its NAT entries go with it, and it is counted
/// (its end reported, if the datapath has not).
fn count_removed(
    nat: Option<&mut NatMaps>,
    key: &CtKey,
    seen: &CtEntry,
    now: u64,
    out: &mut Sweep,
) -> Result<(), MapError> {
    if let Some(nat) = nat {
        nat.forget(key, seen)?;
    }
    out.removed += 1;
    if let Verdict::ReportAndRemove(ev) = judge(key, seen, now) {
        out.ends.push(*ev);
    }
    Ok(())
}

/// A failed `bpf(2)` command as the map API reports it.
fn syscall_error(call: &'static str) -> impl FnOnce(std::io::Error) -> MapError {
    move |io_error| MapError::SyscallError(aya::sys::SyscallError { call, io_error })
}

/// Entries per syscall of a pass's read.
const BATCH: usize = 4096;
/// `bpf_map_update_elem` flag: only if the key is absent.
const BPF_NOEXIST: u64 = 1;

#[cfg(test)]
mod tests {
    use super::*;
    use enforcer_common::{direction, proto};
    use std::net::{IpAddr, Ipv4Addr};

    const S: u64 = 1_000_000_000;

    fn mapped(v4: [u8; 4]) -> [u8; 16] {
        Ipv4Addr::from(v4).to_ipv6_mapped().octets()
    }

    /// An address of a record, as `flows::decode` reads it.
    fn ip(ev: &ConnEndEvent, a: [u8; 16]) -> IpAddr {
        match ev.flow.family {
            family::IPV4 => IpAddr::V4(Ipv4Addr::new(a[12], a[13], a[14], a[15])),
            _ => IpAddr::V6(Ipv6Addr::from(a)),
        }
    }

    /// (source, source port, destination, destination port) of a record, in host order.
    fn tuple(ev: &ConnEndEvent) -> (IpAddr, u16, IpAddr, u16) {
        let f = &ev.flow;
        (
            ip(ev, f.src),
            u16::from_be(f.sport),
            ip(ev, f.dst),
            u16::from_be(f.dport),
        )
    }

    fn udp_key() -> CtKey {
        CtKey {
            ep_id: 3,
            addr_lo: mapped([10, 244, 1, 10]),
            addr_hi: mapped([10, 244, 2, 11]),
            port_lo: 53u16.to_be(),
            port_hi: 40000u16.to_be(),
            proto: proto::UDP,
            _pad: [0; 3],
        }
    }

    fn entry(last_seen_s: u64) -> CtEntry {
        CtEntry {
            created_ns: S,
            last_seen_ns: last_seen_s * S,
            packets_orig: 3,
            bytes_orig: 210,
            packets_reply: 2,
            bytes_reply: 400,
            rule: 9,
            state: ct::state::ESTABLISHED,
            // The higher end (10.244.2.11:40000) asked; the pod (ep 3) answered.
            origin_dir: direction::INGRESS,
            flags: ct::CT_F_REPLIED,
            ..Default::default()
        }
    }

    #[test]
    fn a_live_connection_is_kept() {
        assert_eq!(
            judge(&udp_key(), &entry(100), 100 * S + ct::timeout::UDP),
            Verdict::Keep
        );
    }

    #[test]
    fn an_idle_connection_ends_by_timeout_with_its_counts_and_its_originator_as_source() {
        let now = 100 * S + ct::timeout::UDP + 1;
        let Verdict::ReportAndRemove(ev) = judge(&udp_key(), &entry(100), now) else {
            panic!("expired and unreported");
        };
        let addr = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(ev.flow.family, family::IPV4);
        assert_eq!(
            tuple(&ev),
            (addr("10.244.2.11"), 40000, addr("10.244.1.10"), 53)
        );
        assert_eq!(ev.flow.direction, direction::INGRESS);
        assert_eq!(ev.flow.verdict, verdict::ALLOWED);
        assert_eq!(ev.flow.flags, EV_F_END);
        assert_eq!(
            (ev.flow.ep_id, ev.flow.rule, ev.flow.ts_ns),
            (3, 9, 100 * S)
        );
        assert_eq!(ev.end_reason, ct::end::TIMEOUT);
        assert_eq!(
            (
                ev.packets_orig,
                ev.bytes_orig,
                ev.packets_reply,
                ev.bytes_reply,
                ev.created_ns
            ),
            (3, 210, 2, 400, S)
        );
    }

    #[test]
    fn an_end_the_datapath_reported_is_removed_silently() {
        let mut e = entry(100);
        e.flags |= ct::CT_F_END_REPORTED;
        assert_eq!(
            judge(&udp_key(), &e, 100 * S + ct::timeout::UDP + 1),
            Verdict::Remove
        );
    }

    #[test]
    fn timeouts_follow_protocol_and_tcp_state() {
        let mut key = udp_key();
        key.proto = proto::TCP;
        let mut e = entry(100);
        e.state = ct::state::SYN_SENT;
        assert_eq!(judge(&key, &e, 100 * S + 59 * S), Verdict::Keep);
        assert!(matches!(
            judge(&key, &e, 100 * S + 61 * S),
            Verdict::ReportAndRemove(_)
        ));
        e.state = ct::state::ESTABLISHED;
        assert_eq!(
            judge(&key, &e, 100 * S + 3600 * S),
            Verdict::Keep,
            "an hour idle is fine"
        );
        // A RST the datapath could not report (ring buffer full) still ends as a reset.
        e.state = ct::state::CLOSED;
        let Verdict::ReportAndRemove(ev) = judge(&key, &e, 100 * S + 1) else {
            panic!("closed entries expire at once");
        };
        assert_eq!(ev.end_reason, ct::end::RESET);
        key.proto = proto::ICMP;
        e.state = ct::state::ESTABLISHED;
        assert_eq!(judge(&key, &e, 100 * S + 59 * S), Verdict::Keep);
        assert!(matches!(
            judge(&key, &e, 100 * S + 61 * S),
            Verdict::ReportAndRemove(_)
        ));
    }

    #[test]
    fn v6_addresses_stay_v6() {
        let mut key = udp_key();
        key.addr_lo = "fd00::a".parse::<Ipv6Addr>().unwrap().octets();
        key.addr_hi = "fd00::b".parse::<Ipv6Addr>().unwrap().octets();
        let mut e = entry(1);
        e.flags |= ct::CT_F_ORIG_LO;
        let Verdict::ReportAndRemove(ev) = judge(&key, &e, 1_000 * S) else {
            panic!()
        };
        assert_eq!(ev.flow.family, family::IPV6);
        let (src, sport, _, dport) = tuple(&ev);
        assert_eq!(src, "fd00::a".parse::<IpAddr>().unwrap());
        assert_eq!((sport, dport), (53, 40000));
    }

    #[test]
    fn the_meter_reports_what_each_connection_carried_since_the_last_pass() {
        let mut meter = ByteMeter::default();
        let key = udp_key();
        let mut e = entry(100);
        let first = meter.pass(&[(key, e)], 100 * S);
        assert_eq!(first.len(), 1);
        let c = first[0];
        assert_eq!(c.end_reason, ct::end::ACTIVE);
        assert_eq!(
            (c.bytes_orig, c.bytes_reply),
            (210, 400),
            "all of it, the first time"
        );
        assert_eq!(first[0].flow.ts_ns, 100 * S);
        assert!(meter.pass(&[(key, e)], 105 * S).is_empty(), "nothing new");
        e.bytes_orig += 1_000;
        e.packets_orig += 1;
        let next = meter.pass(&[(key, e), (key, e)], 110 * S);
        assert_eq!(next.len(), 1, "a connection visited twice counts once");
        let c = next[0];
        assert_eq!((c.packets_orig, c.bytes_orig, c.bytes_reply), (1, 1_000, 0));
        // The same tuple reused by a new connection starts from zero.
        e.created_ns += 1;
        let reused = meter.pass(&[(key, e)], 115 * S);
        assert_eq!(reused[0].bytes_orig, 1_210);
        assert_eq!(meter.connections(), 1, "the old connection is forgotten");
        assert!(meter.pass(&[], 120 * S).is_empty());
        assert_eq!(meter.connections(), 0);
    }

    #[test]
    fn connections_to_one_peer_port_are_sampled_together_others_apart() {
        let mut meter = ByteMeter::default();
        let key = udp_key();
        let e = entry(100);
        // Two more connections from the same client to the same port, from other ports ...
        let from_port = |p: u16| CtKey {
            port_hi: p.to_be(),
            ..key
        };
        // ... one to another port of the pod, one of another rule.
        let other_port = CtKey {
            port_lo: 54u16.to_be(),
            ..key
        };
        let other_rule = CtEntry { rule: 10, ..e };
        let pass = meter.pass(
            &[
                (key, e),
                (from_port(40001), e),
                (from_port(40002), e),
                (other_port, e),
                (from_port(40003), other_rule),
            ],
            100 * S,
        );
        assert_eq!(pass.len(), 3, "{pass:?}");
        let sum = pass
            .iter()
            .find(|s| s.packets_orig == 9)
            .expect("the three summed");
        assert_eq!(
            (sum.bytes_orig, sum.packets_reply, sum.bytes_reply),
            (630, 6, 1200)
        );
        assert_eq!(sum.flow.sport, 0, "many source ports");
        assert_eq!(u16::from_be(sum.flow.dport), 53);
        assert!(pass.iter().all(|s| s.end_reason == ct::end::ACTIVE));
        assert_eq!(
            meter.connections(),
            5,
            "each connection is metered on its own"
        );
    }
}
