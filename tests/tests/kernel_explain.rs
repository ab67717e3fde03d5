//! `explain` agrees with the datapath: for many flows, the compiler-side evaluation (what
//! `enforcer explain` shows) and the real program (BPF_PROG_TEST_RUN) give the same verdict,
//! and the rule the kernel reports for an allowed flow is the rule `explain` names.
//! (Kernel 6.18; needs root.)

use enforcer_agent::compile::{evaluate, Decision, Direction};
use enforcer_agent::model::PodKey;
use enforcer_tests::packet::*;
use enforcer_tests::{ip as addr, privileged, tables, Fixture, PASS};

/// Overlapping rules of every kind: selectors, ipBlocks with except, named ports, narrow and
/// wide ranges, rules without ports, any-peer rules, both directions.
const POLICIES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p1, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 80}, {port: dns, protocol: UDP}, {port: 8000, endPort: 8100}]
  - from: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.2.11/32]}}]
    ports: [{port: 1000, endPort: 40000}]
  - ports: [{port: 9000, protocol: SCTP}, {protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p2, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: c}}}]
  egress:
  - to: [{ipBlock: {cidr: 10.244.2.0/24}}]
    ports: [{port: 443}, {port: 30000, endPort: 32767}]
  - to: [{podSelector: {matchLabels: {pod: b}}}]
"#;

#[test]
fn explain_and_the_datapath_agree_on_verdicts_and_rules() {
    if !privileged() {
        return;
    }
    let t = tables(POLICIES);
    let me = PodKey::new("x", "a");
    let peers = [
        "10.244.2.11",
        "10.244.2.12",
        "10.244.1.11",
        "10.244.3.99",
        "192.0.2.1",
        "fd00:10:244:2::11",
        "fd00:10:244:2::12",
    ];
    let ports = [
        53u16, 80, 443, 999, 1000, 8050, 9000, 30000, 32767, 40000, 40001,
    ];
    let protos = [TCP, UDP, SCTP, ICMP, 47];
    let mut sport = 10_000u16;
    let mut checked = 0;
    for peer in peers {
        let v6 = peer.contains(':');
        let me_ip = if v6 {
            addr("fd00:10:244:1::10")
        } else {
            addr("10.244.1.10")
        };
        for dir in [Direction::Ingress, Direction::Egress] {
            // A fresh datapath per peer and direction: a flow allowed one way must not make
            // the other way a reply (that is conntrack working, not the policy).
            let mut f = Fixture::new(POLICIES);
            for proto in protos {
                let proto = if proto == ICMP && v6 { ICMPV6 } else { proto };
                // A protocol without ports has one flow per address pair: probe it once.
                let ports = if proto == 47 { &ports[..1] } else { &ports[..] };
                for &port in ports {
                    sport += 1;
                    let (src, dst) = match dir {
                        Direction::Ingress => (addr(peer), me_ip),
                        Direction::Egress => (me_ip, addr(peer)),
                    };
                    let l4 = match proto {
                        TCP => tcp_hdr(sport, port, SYN),
                        UDP => udp_hdr(sport, port, b"x"),
                        SCTP => sctp_hdr(sport, port),
                        ICMP | ICMPV6 => echo(v6, true, sport),
                        _ => vec![0u8; 8],
                    };
                    let pkt = eth(&ip_packet(src, dst, proto, &l4));
                    let kernel = match dir {
                        Direction::Ingress => f.ingress(&pkt),
                        Direction::Egress => f.egress(&pkt),
                    } == PASS;
                    let verdict = evaluate(&t, &me, dir, addr(peer), proto, port);
                    let what = format!("{dir:?} peer {peer} proto {proto} port {port}");
                    assert_eq!(kernel, verdict.allowed(), "{what}: {verdict:?}");
                    let events = f.drain_events();
                    if let Decision::Rule { id, .. } = verdict.decision {
                        let ev = events
                            .iter()
                            .find(|e| !e.dropped)
                            .expect("an allowed-connection event");
                        assert_eq!(
                            ev.rule,
                            id,
                            "{what}: the kernel reports rule {} ({:?}), explain names {id} ({:?})",
                            ev.rule,
                            t.rule(ev.rule),
                            t.rule(id)
                        );
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(
        checked,
        peers.len() * 2 * ((protos.len() - 1) * ports.len() + 1)
    );
}

fn ip_packet(src: std::net::IpAddr, dst: std::net::IpAddr, proto: u8, l4: &[u8]) -> Vec<u8> {
    ip(src, dst, proto, l4, &IpOpts::default())
}
