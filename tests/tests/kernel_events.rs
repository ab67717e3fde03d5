//! Flow events: what the kernel reports, rate limiting of drop reports, and the flow record
//! the agent makes of them. (Kernel 6.18; needs root.)

use enforcer_agent::flows::decode::{decode_end, Event};
use enforcer_agent::flows::enrich::Context;
use enforcer_agent::model::PodKey;
use enforcer_common::flow::ConnEndEvent;
use enforcer_common::reason::{counter, DropReason};
use enforcer_tests::packet::*;
use enforcer_tests::{cluster, ip, privileged, tables, Fixture, CLUSTER, DROP, PASS};

const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-in, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 80}]
"#;

#[test]
fn a_drop_is_reported_once_per_flow_and_second_and_counted_always() {
    if !privileged() {
        return;
    }
    let mut f = Fixture::new(POLICY);
    for _ in 0..5 {
        assert_eq!(
            f.ingress(&tcp("10.244.2.12", "10.244.1.10", 40000, 80, SYN)),
            DROP
        );
    }
    let ev = f.drain_events();
    let drops: Vec<_> = ev.iter().filter(|e| e.dropped).collect();
    assert_eq!(drops.len(), 1, "{ev:?}");
    let d = drops[0];
    assert_eq!(d.src, ip("10.244.2.12"));
    assert_eq!(d.dst, ip("10.244.1.10"));
    assert_eq!((d.sport, d.dport, d.proto), (40000, 80, TCP));
    assert!(!d.egress);
    assert_eq!(d.reason, Some(Ok(DropReason::PolicyDenied)));
    assert_eq!(d.tcp_flags, SYN);
    assert_eq!(
        f.counter(counter::DROP_BASE + DropReason::PolicyDenied as u32),
        5
    );
    assert_eq!(f.counter(counter::EVENTS_RATE_LIMITED), 4);
    // Another flow is reported on its own.
    assert_eq!(
        f.ingress(&tcp("10.244.2.12", "10.244.1.10", 40001, 80, SYN)),
        DROP
    );
    assert_eq!(f.drain_events().iter().filter(|e| e.dropped).count(), 1);
}

#[test]
fn a_new_connection_is_reported_once_with_its_rule() {
    if !privileged() {
        return;
    }
    let mut f = Fixture::new(POLICY);
    assert_eq!(
        f.ingress(&tcp("10.244.2.11", "10.244.1.10", 40000, 80, SYN)),
        PASS
    );
    assert_eq!(
        f.ingress(&tcp("10.244.2.11", "10.244.1.10", 40000, 80, ACK)),
        PASS
    );
    let ev = f.drain_events();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(!ev[0].dropped);
    let t = tables(POLICY);
    let rule = t.rule(ev[0].rule).expect("the event names the rule");
    assert_eq!(rule.policy.to_string(), "x/a-in");
    assert_eq!(rule.index, 0);
}

#[test]
fn the_flow_record_names_pods_and_the_isolating_policy() {
    if !privileged() {
        return;
    }
    let mut f = Fixture::new(POLICY);
    assert_eq!(
        f.ingress(&tcp("10.244.2.12", "10.244.1.10", 40000, 80, SYN)),
        DROP
    );
    let ev = f
        .drain_events()
        .into_iter()
        .find(|e| e.dropped)
        .expect("a drop event");
    let t = tables(POLICY);
    let c = cluster(&[CLUSTER, POLICY]);
    let ctx = Context::new("node", &c, t, f.dp.endpoint_pods());
    let rec = ctx.record(
        &ev,
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600),
    );
    let json = serde_json::to_value(&rec).unwrap();
    assert_eq!(json["verdict"], "dropped");
    assert_eq!(json["direction"], "ingress");
    assert_eq!(json["reason"], "policy_denied");
    assert_eq!(json["src"]["namespace"], "y");
    assert_eq!(json["src"]["pod"], "c");
    assert_eq!(json["dst"]["pod"], "a");
    assert_eq!(json["dst"]["port"], 80);
    assert_eq!(json["isolated_by"][0], "x/a-in");
    assert_eq!(json["schema"], "enforcer.flow/v1");
    assert!(
        rec.detail.contains("x/a is isolated for ingress by x/a-in"),
        "{}",
        rec.detail
    );
    assert_eq!(
        f.dp.endpoint_pods().values().next().map(|(p, _)| p.clone()),
        Some(PodKey::new("x", "a"))
    );
}

/// Records made under one context share parts (pods, rules, sentences, times) across events:
/// each is still exactly the record a fresh context makes of its event, whatever came before
/// (allowed by a rule, allowed without isolation, dropped, each direction, ends; times within
/// one millisecond and across).
#[test]
fn records_made_under_one_context_are_those_of_a_fresh_context() {
    if !privileged() {
        return;
    }
    // Two rules, so that two sentences "allowed by" are made.
    let policy = format!(
        "{POLICY}  - from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{matchLabels: {{pod: c}}}}}}]\n    ports: [{{port: 81}}]\n"
    );
    let mut f = Fixture::new(&policy);
    let (a, b, c) = ("10.244.1.10", "10.244.2.11", "10.244.2.12");
    for (pkt, ingress, verdict) in [
        (tcp(b, a, 40000, 80, SYN), true, PASS),
        (tcp(c, a, 40001, 80, SYN), true, DROP),
        (tcp(a, c, 40002, 443, SYN), false, PASS),
        (udp(a, b, 40003, 53), false, PASS),
        (tcp(c, a, 40004, 81, SYN), true, PASS),
        (tcp(b, a, 40005, 80, RST), true, PASS),
        (tcp(b, a, 40006, 81, SYN), true, DROP),
    ] {
        let got = if ingress {
            f.ingress(&pkt)
        } else {
            f.egress(&pkt)
        };
        assert_eq!(got, verdict);
    }
    let events = f.drain_events();
    assert!(events.len() >= 7, "{events:?}");
    let c = cluster(&[CLUSTER, &policy]);
    let fresh = || Context::new("node", &c, tables(&policy), f.dp.endpoint_pods());
    let shared = fresh();
    let t0 = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_767_225_600_000);
    // Twice over, so that every part was made before it is reused.
    for (i, ev) in events.iter().chain(events.iter()).enumerate() {
        let t = t0 + std::time::Duration::from_micros(300 * i as u64);
        let want = serde_json::to_value(fresh().record(ev, t)).unwrap();
        let got = serde_json::to_value(shared.record(ev, t)).unwrap();
        assert_eq!(got, want, "event {i}: {ev:?}");
    }
}

/// A whole TCP connection into x/a: its end is reported once, when the second FIN passes, with
/// the packets and bytes of each side, the originator as source and the rule that allowed it.
#[test]
fn a_closed_connection_reports_its_end_with_counts() {
    if !privileged() {
        return;
    }
    let mut f = Fixture::new(POLICY);
    let (b, a) = ("10.244.2.11", "10.244.1.10");
    let syn = tcp(b, a, 40000, 80, SYN);
    let synack = tcp(a, b, 80, 40000, SYN | ACK);
    let ack = tcp(b, a, 40000, 80, ACK);
    let fin_b = tcp(b, a, 40000, 80, FIN | ACK);
    let fin_a = tcp(a, b, 80, 40000, FIN | ACK);
    assert_eq!(f.ingress(&syn), PASS);
    assert_eq!(f.egress(&synack), PASS);
    assert_eq!(f.ingress(&ack), PASS);
    assert_eq!(f.ingress(&fin_b), PASS);
    assert!(
        f.drain_events().iter().all(|e| e.end.is_none()),
        "not over yet"
    );
    assert_eq!(f.egress(&fin_a), PASS);
    // The last ACK passes (the entry lives on while closing) and reports nothing more.
    assert_eq!(f.ingress(&ack), PASS);
    let ev = f.drain_events();
    let ends: Vec<_> = ev.iter().filter(|e| e.end.is_some()).collect();
    assert_eq!(ends.len(), 1, "{ev:?}");
    let e = ends[0];
    assert_eq!((e.src, e.dst), (ip(b), ip(a)));
    assert_eq!((e.sport, e.dport, e.proto), (40000, 80, TCP));
    assert!(!e.egress && !e.dropped, "opened into the pod, allowed");
    assert_eq!(
        tables(POLICY).rule(e.rule).unwrap().policy.to_string(),
        "x/a-in"
    );
    let c = e.end.unwrap();
    assert_eq!(c.reason_name(), "closed");
    let len = |p: &[u8]| p.len() as u64;
    assert_eq!(
        (c.packets_orig, c.bytes_orig),
        (3, len(&syn) + len(&ack) + len(&fin_b))
    );
    assert_eq!(
        (c.packets_reply, c.bytes_reply),
        (2, len(&synack) + len(&fin_a))
    );
    assert!(e.ts_ns >= c.created_ns);
}

#[test]
fn a_reset_connection_reports_its_end_once() {
    if !privileged() {
        return;
    }
    let mut f = Fixture::new(POLICY);
    let (b, a) = ("10.244.2.11", "10.244.1.10");
    assert_eq!(f.ingress(&tcp(b, a, 40000, 80, SYN)), PASS);
    assert_eq!(f.egress(&tcp(a, b, 80, 40000, RST | ACK)), PASS);
    let ev = f.drain_events();
    let ends: Vec<_> = ev.iter().filter_map(|e| e.end).collect();
    assert_eq!(ends.len(), 1, "{ev:?}");
    assert_eq!(ends[0].reason_name(), "reset");
    assert_eq!((ends[0].packets_orig, ends[0].packets_reply), (1, 1));
    // At once (within the coarse clock's tick): the tuple is over, its next packet is judged
    // as a new flow, not waved through as the reset connection's.
    assert_eq!(f.ingress(&tcp(b, a, 40000, 80, ACK)), PASS);
    let ev = f.drain_events();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(ev[0].end.is_none() && !ev[0].dropped, "a new flow: {ev:?}");
}

/// Idle connections are the agent's to report: the sweeper finds them expired, reports each
/// end once with its counts, and removes every expired entry; live ones stay.
#[test]
fn the_sweeper_reports_idle_connections_and_removes_expired_entries() {
    use enforcer_agent::dataplane::ct_sweep;
    use enforcer_common::ct::timeout;
    if !privileged() {
        return;
    }
    let mut f = Fixture::new(POLICY);
    let (b, a) = ("10.244.2.11", "10.244.1.10");
    // A UDP exchange (x/a is not isolated for egress: its DNS query is allowed) ...
    assert_eq!(f.egress(&udp(a, b, 40000, 53)), PASS);
    assert_eq!(f.ingress(&udp(b, a, 53, 40000)), PASS);
    // ... a TCP connection reset (reported by the datapath) ...
    assert_eq!(f.ingress(&tcp(b, a, 40001, 80, SYN)), PASS);
    assert_eq!(f.egress(&tcp(a, b, 80, 40001, RST | ACK)), PASS);
    // ... and an established TCP connection.
    assert_eq!(f.ingress(&tcp(b, a, 40002, 80, SYN)), PASS);
    assert_eq!(f.egress(&tcp(a, b, 80, 40002, SYN | ACK)), PASS);
    let reported_by_kernel = f.drain_events().iter().filter(|e| e.end.is_some()).count();
    assert_eq!(reported_by_kernel, 1, "the reset");
    let mut ct = f.dp.take_conntrack().expect("the conntrack map");
    let mut meter = ct_sweep::ByteMeter::default();
    // The sweeper reports in the datapath's record, which the agent decodes.
    let decoded = |records: &[ConnEndEvent]| -> Vec<Event> {
        records.iter().map(|c| decode_end(c).unwrap()).collect()
    };

    let now = ct_sweep::monotonic_now();
    let pass = ct_sweep::sweep(&mut ct, now, &mut meter).unwrap();
    assert_eq!(
        (pass.live, pass.removed),
        (2, 1),
        "the reset entry is removed, silently"
    );
    assert!(pass.ends.is_empty());
    // Every connection's bytes so far are sampled once, the reset one included: the two TCP
    // connections from b to a:80 in one sample (summed, source port 0), the UDP one in another.
    assert_eq!(pass.samples.len(), 2, "{:?}", pass.samples);
    let samples = decoded(&pass.samples);
    let udp_sample = samples
        .iter()
        .find(|e| e.proto == UDP)
        .unwrap()
        .end
        .unwrap();
    assert_eq!((udp_sample.packets_orig, udp_sample.packets_reply), (1, 1));
    assert_eq!(udp_sample.reason_name(), "active");
    let tcp_sample = samples.iter().find(|e| e.proto != UDP).unwrap();
    assert_eq!(
        (
            tcp_sample.src,
            tcp_sample.sport,
            tcp_sample.dst,
            tcp_sample.dport
        ),
        (ip(b), 0, ip(a), 80)
    );
    let tcp_counts = tcp_sample.end.unwrap();
    assert_eq!((tcp_counts.packets_orig, tcp_counts.packets_reply), (2, 2));
    let quiet = ct_sweep::sweep(&mut ct, now, &mut meter).unwrap();
    assert!(
        quiet.samples.is_empty(),
        "nothing new carried: {:?}",
        quiet.samples
    );

    // Past the UDP timeout: the query's end is reported; the TCP connection lives on.
    let pass = ct_sweep::sweep(&mut ct, now + timeout::UDP + 1_000_000_000, &mut meter).unwrap();
    assert_eq!((pass.live, pass.removed), (1, 1));
    assert_eq!(pass.ends.len(), 1);
    let e = &decoded(&pass.ends)[0];
    assert_eq!(
        (e.src, e.dst, e.sport, e.dport, e.proto),
        (ip(a), ip(b), 40000, 53, UDP)
    );
    assert!(e.egress);
    let c = e.end.unwrap();
    assert_eq!(
        (c.reason_name(), c.packets_orig, c.packets_reply),
        ("timeout", 1, 1)
    );
    // Its next packet is a new flow, checked again (and reported as new).
    assert_eq!(f.egress(&udp(a, b, 40000, 53)), PASS);
    let ev = f.drain_events();
    assert_eq!(
        ev.iter().filter(|e| !e.dropped && e.end.is_none()).count(),
        1,
        "{ev:?}"
    );
    let pass = ct_sweep::sweep(&mut ct, ct_sweep::monotonic_now(), &mut meter).unwrap();
    assert_eq!((pass.live, pass.removed), (2, 0));
    assert_eq!(
        pass.samples.len(),
        1,
        "the new UDP flow: {:?}",
        pass.samples
    );
}

/// The next packet of an idle connection finds its entry expired: the datapath reports the old
/// connection's end (timed at its last packet) before checking the packet as a new flow.
#[test]
fn a_packet_after_the_idle_timeout_reports_the_old_connections_end_first() {
    use enforcer_agent::dataplane::ct_sweep;
    use enforcer_common::ct::timeout;
    if !privileged() {
        return;
    }
    let mut f = Fixture::new(POLICY);
    let (a, b) = ("10.244.1.10", "10.244.2.11");
    assert_eq!(f.egress(&udp(a, b, 40000, 53)), PASS);
    assert_eq!(f.ingress(&udp(b, a, 53, 40000)), PASS);
    assert_eq!(f.egress(&udp(a, b, 40000, 53)), PASS);
    f.drain_events();
    // Age the entry past the UDP timeout, as if the connection had been quiet that long.
    let mut ct = f.dp.take_conntrack().expect("the conntrack map");
    let (key, mut entry) = ct.iter().next().expect("one entry").unwrap();
    let idle_since = ct_sweep::monotonic_now() - timeout::UDP - 1_000_000_000;
    entry.created_ns = idle_since - 5_000_000_000;
    entry.last_seen_ns = idle_since;
    ct.insert(key, entry, 0).unwrap();

    assert_eq!(
        f.egress(&udp(a, b, 40000, 53)),
        PASS,
        "allowed again, as a new flow"
    );
    let ev = f.drain_events();
    assert_eq!(ev.len(), 2, "{ev:?}");
    let end = ev[0].end.expect("the old connection's end comes first");
    assert_eq!(end.reason_name(), "timeout");
    assert_eq!((end.packets_orig, end.packets_reply), (2, 1));
    assert_eq!(
        (ev[0].ts_ns, end.created_ns),
        (idle_since, idle_since - 5_000_000_000)
    );
    assert!(
        ev[1].end.is_none() && !ev[1].dropped,
        "then the new connection"
    );
    // The sweeper does not report it again; the new entry is live.
    let mut meter = ct_sweep::ByteMeter::default();
    let pass = ct_sweep::sweep(&mut ct, ct_sweep::monotonic_now(), &mut meter).unwrap();
    assert_eq!((pass.live, pass.removed, pass.ends.len()), (1, 0, 0));
}

/// A stray RST from an allowed peer is a new flow each time (reported as such), never an end.
/// Two CPUs handle one connection's two directions at once: one may stamp the entry with a
/// clock reading later than the one the other took for its packet. That packet must see a live
/// connection (it was found "idle for 584 years": a false end, then judged as a new flow).
#[test]
fn an_entry_stamped_later_than_the_packets_clock_is_live() {
    use enforcer_agent::dataplane::ct_sweep;
    if !privileged() {
        return;
    }
    let mut f = Fixture::new(POLICY);
    let (a, b) = ("10.244.1.10", "10.244.2.11");
    assert_eq!(f.ingress(&tcp(b, a, 40000, 80, SYN)), PASS);
    assert_eq!(f.egress(&tcp(a, b, 80, 40000, SYN | ACK)), PASS);
    f.drain_events();
    let mut ct = f.dp.take_conntrack().expect("the conntrack map");
    let (key, mut entry) = ct.iter().next().expect("one entry").unwrap();
    entry.last_seen_ns = ct_sweep::monotonic_now() + 2_000_000_000;
    ct.insert(key, entry, 0).unwrap();

    assert_eq!(f.ingress(&tcp(b, a, 40000, 80, ACK)), PASS);
    assert_eq!(f.egress(&tcp(a, b, 80, 40000, ACK)), PASS);
    let ev = f.drain_events();
    assert!(ev.is_empty(), "no end, no new flow: {ev:?}");
    let (_, after) = ct.iter().next().expect("one entry").unwrap();
    assert_eq!(
        (after.packets_orig, after.packets_reply),
        (2, 2),
        "both packets counted on the same connection"
    );
}

#[test]
fn a_flow_that_starts_with_a_reset_reports_no_end() {
    if !privileged() {
        return;
    }
    let mut f = Fixture::new(POLICY);
    for _ in 0..3 {
        assert_eq!(
            f.ingress(&tcp("10.244.2.11", "10.244.1.10", 40000, 80, RST)),
            PASS
        );
    }
    let ev = f.drain_events();
    assert_eq!(ev.len(), 3, "{ev:?}");
    assert!(ev.iter().all(|e| e.end.is_none() && !e.dropped), "{ev:?}");
}

/// x's namespace in audit mode, with x/a's ingress policy.
const AUDITED: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x, policy.enforcer.dev/audit: "true"}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-in, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 80}]
"#;

/// Audit mode: what the policy denies passes, is tracked (replies pass) and is reported once per
/// connection as AUDIT with the isolating policy; what the policy allows is reported as allowed;
/// other drop reasons still drop.
#[test]
fn audit_mode_passes_and_reports_what_the_policy_denies() {
    if !privileged() {
        return;
    }
    let mut f = Fixture::new(AUDITED);
    let (c, a) = ("10.244.2.12", "10.244.1.10");
    assert_eq!(
        f.ingress(&tcp(c, a, 40000, 80, SYN)),
        PASS,
        "denied by policy, audited"
    );
    assert_eq!(
        f.egress(&tcp(a, c, 80, 40000, SYN | ACK)),
        PASS,
        "its reply"
    );
    assert_eq!(f.ingress(&tcp(c, a, 40000, 80, ACK)), PASS);
    assert_eq!(
        f.ingress(&tcp("10.244.2.11", a, 40001, 80, SYN)),
        PASS,
        "allowed by policy"
    );
    assert_eq!(
        f.egress(&tcp("10.244.9.9", c, 80, 40000, ACK)),
        DROP,
        "a spoofed source is no policy question: dropped in audit mode too"
    );
    let ev = f.drain_events();
    let audited: Vec<_> = ev.iter().filter(|e| e.audit).collect();
    assert_eq!(audited.len(), 1, "once per connection: {ev:?}");
    let e = audited[0];
    assert!(!e.dropped);
    assert_eq!(e.reason, Some(Ok(DropReason::PolicyDenied)));
    assert_eq!(f.counter(counter::AUDITED), 1);
    assert_eq!(
        ev.iter().filter(|e| !e.audit && !e.dropped).count(),
        1,
        "the allowed connection: {ev:?}"
    );

    let ctx = Context::new(
        "node",
        &cluster(&[CLUSTER, AUDITED]),
        tables(AUDITED),
        f.dp.endpoint_pods(),
    );
    let rec = ctx.record(
        e,
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600),
    );
    assert_eq!(rec.verdict, "audit");
    assert_eq!(rec.isolated_by, ["x/a-in"]);
    assert!(
        rec.detail.starts_with("audit mode: passed"),
        "{}",
        rec.detail
    );
}

/// An ICMP drop names its message: type, code and the usual name (both families).
#[test]
fn icmp_records_carry_the_message_type() {
    if !privileged() {
        return;
    }
    let mut f = Fixture::new(POLICY);
    let o = IpOpts::default();
    let (c, a) = (ip("10.244.2.12"), ip("10.244.1.10"));
    assert_eq!(
        f.ingress(&eth(&enforcer_tests::packet::ip(
            c,
            a,
            ICMP,
            &echo(false, true, 9),
            &o
        ))),
        DROP
    );
    let ev = f.drain_events();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].icmp, Some((8, 0)));
    let ctx = Context::new(
        "node",
        &cluster(&[CLUSTER, POLICY]),
        tables(POLICY),
        f.dp.endpoint_pods(),
    );
    let rec = ctx.record(
        &ev[0],
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600),
    );
    let icmp = rec.icmp.expect("an ICMP record");
    assert_eq!(
        (icmp.kind, icmp.code, icmp.name.as_deref()),
        (8, 0, Some("echo-request"))
    );
    assert_eq!(rec.src.port, None, "the echo identifier is no port");
    // A TCP record has none.
    assert_eq!(
        f.ingress(&tcp("10.244.2.12", "10.244.1.10", 40000, 80, SYN)),
        DROP
    );
    assert_eq!(f.drain_events()[0].icmp, None);
}

/// A pass reads the whole map in batches (more entries than one batch holds, here), removes
/// exactly the expired entries.
#[test]
fn a_sweep_reads_a_map_larger_than_a_batch_and_removes_exactly_the_expired() {
    use enforcer_agent::dataplane::ct_sweep;
    use enforcer_common::ct::{state, timeout, CtEntry, CtKey};
    if !privileged() {
        return;
    }
    let mut f = Fixture::new(POLICY);
    let mut ct = f.dp.take_conntrack().expect("the conntrack map");
    let now = ct_sweep::monotonic_now();
    let key = |i: u32| CtKey {
        ep_id: 1,
        addr_lo: std::net::Ipv4Addr::from(0x0af4_0000 + i)
            .to_ipv6_mapped()
            .octets(),
        addr_hi: std::net::Ipv4Addr::new(10, 244, 1, 10)
            .to_ipv6_mapped()
            .octets(),
        port_lo: 40000u16.to_be(),
        port_hi: 53u16.to_be(),
        proto: UDP,
        _pad: [0; 3],
    };
    // 10,000 UDP flows; every third idle past the timeout (and already reported, so removed
    // silently), the rest live.
    let n = 10_000u32;
    for i in 0..n {
        let idle = i % 3 == 0;
        let last = if idle {
            now - timeout::UDP - 1_000_000_000
        } else {
            now
        };
        let e = CtEntry {
            created_ns: last,
            last_seen_ns: last,
            packets_orig: 1,
            state: state::ESTABLISHED,
            flags: if idle {
                enforcer_common::ct::CT_F_END_REPORTED
            } else {
                0
            },
            ..Default::default()
        };
        ct.insert(key(i), e, 0).unwrap();
    }
    let expired = (0..n).filter(|i| i % 3 == 0).count();
    let mut meter = ct_sweep::ByteMeter::default();
    let pass = ct_sweep::sweep(&mut ct, now, &mut meter).unwrap();
    assert_eq!((pass.live, pass.removed), (n as usize - expired, expired));
    assert!(pass.ends.is_empty(), "all reported already");
    assert_eq!(meter.connections(), n as usize, "every entry was read once");
    let left: Vec<CtKey> = ct.keys().map(|k| k.unwrap()).collect();
    assert_eq!(left.len(), n as usize - expired);
    assert!(left.iter().all(|k| {
        let i = u32::from_be_bytes(k.addr_lo[12..].try_into().unwrap()) - 0x0af4_0000;
        i % 3 != 0
    }));
    // A second pass finds nothing more to remove.
    let again = ct_sweep::sweep(&mut ct, now, &mut meter).unwrap();
    assert_eq!((again.live, again.removed), (n as usize - expired, 0));
}

/// After both FINs, the ACK of the close leaves the entry only a short linger (for a FIN
/// retransmitted because that ACK was lost); a retransmitted FIN still passes and puts the
/// entry back in the longer closing linger.
#[test]
fn an_acknowledged_close_lingers_briefly_and_a_retransmitted_fin_still_passes() {
    use enforcer_agent::dataplane::ct_sweep;
    use enforcer_common::ct::{state, timeout};
    if !privileged() {
        return;
    }
    let mut f = Fixture::new(POLICY);
    let (b, a) = ("10.244.2.11", "10.244.1.10");
    assert_eq!(f.ingress(&tcp(b, a, 40000, 80, SYN)), PASS);
    assert_eq!(f.egress(&tcp(a, b, 80, 40000, SYN | ACK)), PASS);
    assert_eq!(f.ingress(&tcp(b, a, 40000, 80, ACK)), PASS);
    assert_eq!(f.ingress(&tcp(b, a, 40000, 80, FIN | ACK)), PASS);
    let mut ct = f.dp.take_conntrack().expect("the conntrack map");
    let state_now = |ct: &aya::maps::HashMap<_, _, enforcer_common::ct::CtEntry>| {
        let (_, e): (enforcer_common::ct::CtKey, _) = ct.iter().next().unwrap().unwrap();
        e.state
    };
    assert_eq!(state_now(&ct), state::CLOSING, "one FIN");
    assert_eq!(f.egress(&tcp(a, b, 80, 40000, FIN | ACK)), PASS);
    assert_eq!(
        state_now(&ct),
        state::CLOSING,
        "both FINs, not acknowledged yet"
    );
    assert_eq!(f.ingress(&tcp(b, a, 40000, 80, ACK)), PASS);
    assert_eq!(state_now(&ct), state::FIN_ACKED);
    // The pod's FIN again (the ACK was lost): it passes, in the reply direction.
    assert_eq!(f.egress(&tcp(a, b, 80, 40000, FIN | ACK)), PASS);
    assert_eq!(state_now(&ct), state::CLOSING);
    assert_eq!(f.ingress(&tcp(b, a, 40000, 80, ACK)), PASS);
    assert_eq!(state_now(&ct), state::FIN_ACKED);
    // Past the short linger the sweeper removes it; a closing entry would have stayed.
    let later = ct_sweep::monotonic_now() + timeout::TCP_FIN_ACKED + 500_000_000;
    assert!(later < ct_sweep::monotonic_now() + timeout::TCP_CLOSING);
    let mut meter = ct_sweep::ByteMeter::default();
    let pass = ct_sweep::sweep(&mut ct, later, &mut meter).unwrap();
    assert_eq!((pass.live, pass.removed), (0, 1));
    assert!(
        pass.ends.is_empty(),
        "its end was reported when the second FIN passed"
    );
    let ev = f.drain_events();
    assert_eq!(ev.iter().filter(|e| e.end.is_some()).count(), 1, "{ev:?}");
    assert!(ev.iter().all(|e| !e.dropped), "{ev:?}");
}

/// The sweeper's remover program removes expired entries a batch per run, each only if it
/// still has the stamps the pass read: an entry a packet renewed since (or a new connection
/// that took the tuple) stays, one already gone is said to be gone. A pass over more entries
/// than one run holds removes and reports them all.
#[test]
fn the_remover_takes_expired_entries_and_leaves_renewed_ones() {
    use enforcer_agent::dataplane::ct_sweep;
    use enforcer_common::ct::{removal, timeout, CtKey, Removal, REMOVALS_PER_RUN};
    if !privileged() {
        return;
    }
    let mut f = Fixture::new(POLICY);
    let (b, a) = ("10.244.2.11", "10.244.1.10");
    let flows = REMOVALS_PER_RUN as u16 + 12;
    for p in 0..flows {
        assert_eq!(f.egress(&udp(a, b, 41000 + p, 53)), PASS);
    }
    f.drain_events();
    let mut ct = f.dp.take_conntrack().expect("the conntrack map");
    let mut remover = f.dp.remover().expect("the remover program");
    let entries: Vec<(CtKey, enforcer_common::ct::CtEntry)> =
        ct.iter().map(|r| r.expect("readable entry")).collect();
    assert_eq!(entries.len(), flows as usize);

    let removal_of = |(k, e): &(CtKey, enforcer_common::ct::CtEntry)| Removal {
        key: *k,
        outcome: removal::NONE,
        created_ns: e.created_ns,
        last_seen_ns: e.last_seen_ns,
    };
    let mut stale = removal_of(&entries[0]);
    stale.last_seen_ns -= 1; // the entry has been renewed since this was read
    let mut missing = removal_of(&entries[1]);
    missing.key.port_lo ^= 0xffff;
    let mut batch = vec![stale, removal_of(&entries[1]), missing];
    remover.run(&mut batch).expect("the remover runs");
    assert_eq!(
        batch.iter().map(|r| r.outcome).collect::<Vec<_>>(),
        [removal::RENEWED, removal::REMOVED, removal::GONE]
    );
    assert!(ct.get(&entries[0].0, 0).is_ok(), "the renewed entry stays");
    assert!(
        ct.get(&entries[1].0, 0).is_err(),
        "the unchanged one is removed"
    );

    // A whole pass past the UDP timeout: the rest, in two runs, each end reported once.
    let mut meter = ct_sweep::ByteMeter::default();
    let later = ct_sweep::monotonic_now() + timeout::UDP + 1_000_000_000;
    let pass =
        ct_sweep::sweep_with_nat(&mut ct, None, Some(&mut remover), later, &mut meter).unwrap();
    assert_eq!((pass.live, pass.removed), (0, flows as usize - 1));
    assert_eq!(pass.ends.len(), flows as usize - 1);
    assert_eq!(ct.iter().count(), 0, "nothing left");
}
