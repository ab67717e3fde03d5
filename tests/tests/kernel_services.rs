//! Service translation in the datapath: a pod's connection to a ClusterIP port goes to a
//! backend at its target port, is judged on that backend, and its replies come back from the
//! Service address; both families; checksums stay valid; no endpoint fails; a pod that is its
//! own backend gets its packets straight back (hairpin). Needs root (kernel 6.18 here).

use enforcer_agent::dataplane::services::addr16;
use enforcer_common::reason::{counter, DropReason};
use enforcer_tests::packet::{seen, tcp, udp, with_l4_checksum, ACK, FIN, SYN};
use enforcer_tests::{ip, privileged, Fixture, DROP, PASS, REDIRECT};

/// y/web: ClusterIPs 10.96.2.10 and fd00:10:96:2::10, backend y/b (the only pod labelled
/// pod=b in y), 80/TCP → 8080 and 53/UDP → 5353. y/empty: no endpoint. x/self: backend x/a
/// itself (the local pod), 90/TCP → 80.
const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: y}
spec:
  clusterIP: 10.96.2.10
  clusterIPs: [10.96.2.10, "fd00:10:96:2::10"]
  ipFamilies: [IPv4, IPv6]
  selector: {pod: b}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: dns, port: 53, targetPort: 5353, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: y}
spec: {clusterIP: 10.96.2.11, selector: {pod: nobody}, ports: [{port: 81}]}
---
apiVersion: v1
kind: Service
metadata: {name: self, namespace: x}
spec: {clusterIP: 10.96.1.20, selector: {pod: a}, ports: [{port: 90, targetPort: 80}]}
"#;

fn fixture(policies: &str) -> Fixture {
    Fixture::new(&format!("{SERVICES}\n---\n{policies}"))
}

fn syn(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    with_l4_checksum(tcp(src, dst, sport, dport, SYN))
}

#[test]
fn a_service_connection_goes_to_its_backend_and_its_replies_come_from_the_service() {
    if !privileged() {
        return;
    }
    let mut f = fixture("");
    let (verdict, out) = f.egress_out(&syn("10.244.1.10", "10.96.2.10", 40000, 80));
    assert_eq!(verdict, PASS);
    let s = seen(&out);
    assert_eq!((s.src, s.sport), (ip("10.244.1.10"), 40000));
    assert_eq!(
        (s.dst, s.dport),
        (ip("10.244.2.11"), 8080),
        "the backend at its target port"
    );
    assert!(s.ip_checksum_ok && s.l4_checksum_ok, "{s:?}");

    let reply = with_l4_checksum(tcp("10.244.2.11", "10.244.1.10", 8080, 40000, SYN | ACK));
    let (verdict, out) = f.ingress_out(&reply);
    assert_eq!(verdict, PASS);
    let s = seen(&out);
    assert_eq!(
        (s.src, s.sport),
        (ip("10.96.2.10"), 80),
        "the reply comes from the Service"
    );
    assert_eq!((s.dst, s.dport), (ip("10.244.1.10"), 40000));
    assert!(s.ip_checksum_ok && s.l4_checksum_ok, "{s:?}");

    // The rest of the connection follows the same backend.
    let (verdict, out) = f.egress_out(&with_l4_checksum(tcp(
        "10.244.1.10",
        "10.96.2.10",
        40000,
        80,
        ACK,
    )));
    assert_eq!(verdict, PASS);
    assert_eq!(seen(&out).dst, ip("10.244.2.11"));
    assert_eq!(f.counter(counter::SVC_TRANSLATED), 1);

    let events = f.drain_events();
    let opened: Vec<_> = events
        .iter()
        .filter(|e| e.end.is_none() && !e.reply)
        .collect();
    assert_eq!(opened.len(), 1, "{events:?}");
    assert_eq!(opened[0].dst, ip("10.244.2.11"));
    assert_eq!(opened[0].dport, 8080);
    let names = f.dp.frontend_names();
    let name = names
        .get(&opened[0].frontend)
        .expect("the event names its Service port");
    assert_eq!(name.service.to_string(), "y/web");
    assert_eq!((name.ip, name.port), (ip("10.96.2.10"), 80));
}

#[test]
fn ipv6_and_udp_are_translated_both_ways_with_valid_checksums() {
    if !privileged() {
        return;
    }
    let f = fixture("");
    let q = with_l4_checksum(udp("fd00:10:244:1::10", "fd00:10:96:2::10", 5000, 53));
    let (verdict, out) = f.egress_out(&q);
    assert_eq!(verdict, PASS);
    let s = seen(&out);
    assert_eq!((s.dst, s.dport), (ip("fd00:10:244:2::11"), 5353));
    assert!(s.l4_checksum_ok, "{s:?}");
    let a = with_l4_checksum(udp("fd00:10:244:2::11", "fd00:10:244:1::10", 5353, 5000));
    let (verdict, out) = f.ingress_out(&a);
    assert_eq!(verdict, PASS);
    let s = seen(&out);
    assert_eq!((s.src, s.sport), (ip("fd00:10:96:2::10"), 53));
    assert!(s.l4_checksum_ok, "{s:?}");

    // IPv4 UDP too, and a datagram without a checksum keeps having none.
    let (verdict, out) = f.egress_out(&with_l4_checksum(udp(
        "10.244.1.10",
        "10.96.2.10",
        5001,
        53,
    )));
    assert_eq!(verdict, PASS);
    let s = seen(&out);
    assert_eq!((s.dst, s.dport), (ip("10.244.2.11"), 5353));
    assert!(s.ip_checksum_ok && s.l4_checksum_ok, "{s:?}");
    let (verdict, out) = f.egress_out(&udp("10.244.1.10", "10.96.2.10", 5002, 53));
    assert_eq!(verdict, PASS);
    assert_eq!(&out[40..42], &[0, 0], "a zero UDP checksum stays zero");
}

/// x/a may only reach the pods labelled pod=b of namespace y, on port 8080.
const EGRESS_TO_BACKENDS_8080: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: to-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 8080}]
"#;

#[test]
fn egress_policy_judges_the_backend_and_its_target_port() {
    if !privileged() {
        return;
    }
    let f = fixture(EGRESS_TO_BACKENDS_8080);
    assert_eq!(
        f.egress(&syn("10.244.1.10", "10.96.2.10", 40001, 80)),
        PASS,
        "Service 80 → 8080"
    );
    assert_eq!(
        f.egress(&syn("10.244.1.10", "10.244.2.11", 40002, 80)),
        DROP,
        "the same backend on port 80 directly"
    );

    let port_80_only = EGRESS_TO_BACKENDS_8080.replace("port: 8080", "port: 80");
    let f = fixture(&port_80_only);
    assert_eq!(
        f.egress(&syn("10.244.1.10", "10.96.2.10", 40003, 80)),
        DROP,
        "the Service port is not what the policy sees"
    );

    let service_range = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: to-services, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.96.0.0/16}}]}]
"#;
    let mut f = fixture(service_range);
    assert_eq!(
        f.egress(&syn("10.244.1.10", "10.96.2.10", 40004, 80)),
        DROP,
        "an ipBlock of the Service range allows nothing through a Service"
    );
    let events = f.drain_events();
    let drop = events.iter().find(|e| e.dropped).expect("a drop event");
    assert_eq!(drop.reason, Some(Ok(DropReason::PolicyDenied)));
    assert_eq!(
        (drop.dst, drop.dport),
        (ip("10.244.2.11"), 8080),
        "reported on the backend"
    );
    assert_ne!(drop.frontend, 0);

    let pod_range = service_range.replace("10.96.0.0/16", "10.244.0.0/16");
    let f = fixture(&pod_range);
    assert_eq!(f.egress(&syn("10.244.1.10", "10.96.2.10", 40005, 80)), PASS);
}

#[test]
fn a_service_port_without_endpoints_fails_and_says_why() {
    if !privileged() {
        return;
    }
    let mut f = fixture("");
    assert_eq!(f.egress(&syn("10.244.1.10", "10.96.2.11", 40010, 81)), DROP);
    let events = f.drain_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].reason, Some(Ok(DropReason::ServiceNoEndpoints)));
    assert_eq!(events[0].dst, ip("10.96.2.11"));
    // A port the Service does not have is no Service traffic: an ordinary flow to that address.
    assert_eq!(
        f.egress(&syn("10.244.1.10", "10.96.2.10", 40011, 443)),
        PASS
    );
}

#[test]
fn a_pod_reaching_itself_through_its_service_gets_the_packets_back() {
    if !privileged() {
        return;
    }
    let f = fixture("");
    let pkt = syn("10.244.1.10", "10.96.1.20", 40020, 90);
    let (verdict, out) = f.egress_out(&pkt);
    assert_eq!(verdict, REDIRECT, "handed back into the pod");
    let s = seen(&out);
    assert_eq!(
        (s.src, s.sport),
        (ip("10.96.1.20"), 40020),
        "from the Service address"
    );
    assert_eq!(
        (s.dst, s.dport),
        (ip("10.244.1.10"), 80),
        "to itself at the target port"
    );
    assert!(s.ip_checksum_ok && s.l4_checksum_ok, "{s:?}");
    let before = seen(&pkt);
    assert_eq!(
        s.macs,
        (before.macs.1, before.macs.0),
        "Ethernet addresses swapped"
    );

    // The pod answers the Service address; that goes back in as the Service's reply.
    let answer = with_l4_checksum(tcp("10.244.1.10", "10.96.1.20", 80, 40020, SYN | ACK));
    let (verdict, out) = f.egress_out(&answer);
    assert_eq!(verdict, REDIRECT);
    let s = seen(&out);
    assert_eq!((s.src, s.sport), (ip("10.96.1.20"), 90));
    assert_eq!((s.dst, s.dport), (ip("10.244.1.10"), 40020));
    assert!(s.ip_checksum_ok && s.l4_checksum_ok, "{s:?}");
}

#[test]
fn a_policy_change_revokes_a_translated_connection_at_its_next_packet() {
    if !privileged() {
        return;
    }
    let mut f = fixture("");
    assert_eq!(f.egress(&syn("10.244.1.10", "10.96.2.10", 40030, 80)), PASS);
    let deny_all = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Egress]}
"#;
    f.apply(&format!("{SERVICES}\n---\n{deny_all}"));
    let next = with_l4_checksum(tcp("10.244.1.10", "10.96.2.10", 40030, 80, ACK));
    assert_eq!(f.egress(&next), DROP);
    let events = f.drain_events();
    assert!(
        events
            .iter()
            .any(|e| e.reason == Some(Ok(DropReason::Revoked)) && e.dst == ip("10.244.2.11")),
        "{events:?}"
    );
}

#[test]
fn udp_flows_to_a_backend_that_left_are_flushed_and_choose_again() {
    if !privileged() {
        return;
    }
    let mut f = fixture("");
    let q = with_l4_checksum(udp("10.244.1.10", "10.96.2.10", 5000, 53));
    let (_, out) = f.egress_out(&q);
    assert_eq!(seen(&out).dst, ip("10.244.2.11"));
    // y/web now selects y/c instead of y/b.
    let moved = SERVICES.replacen("selector: {pod: b}", "selector: {pod: c}", 1);
    let report = f.apply_report(&moved);
    let gone = report.services.gone_udp_backends.clone();
    assert!(
        gone.iter().any(
            |(_, addr, port)| *addr == addr16(ip("10.244.2.11")) && u16::from_be(*port) == 5353
        ),
        "{gone:?}"
    );
    // Until flushed, the flow keeps its backend (as a kube-proxy conntrack entry would).
    let (_, out) = f.egress_out(&q);
    assert_eq!(seen(&out).dst, ip("10.244.2.11"));
    let mut ct = f.dp.take_conntrack().unwrap();
    let mut nat = f.dp.take_nat().unwrap();
    let flushed = nat.flush(&mut ct, &gone).unwrap();
    assert_eq!(flushed.len(), 1, "the one flow to y/b");
    let (_, out) = f.egress_out(&q);
    assert_eq!(
        seen(&out).dst,
        ip("10.244.2.12"),
        "the next datagram goes to the live backend"
    );
}

/// y/sticky and y/spread: backends y/b and y/c (pod in [b, c]) at 8080; sticky with
/// `sessionAffinity: ClientIP`.
const TWO_BACKENDS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: y}
spec:
  clusterIP: 10.96.2.30
  selector: {pod: b}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: spread, namespace: y}
spec: {clusterIP: 10.96.2.31, selector: {pod: b}, ports: [{port: 80, targetPort: 8080}]}
"#;

/// The backends that `connections` new connections (source ports from `first_port`) reach.
fn backends_seen(
    f: &Fixture,
    vip: &str,
    first_port: u16,
    connections: u16,
) -> std::collections::BTreeSet<std::net::IpAddr> {
    (0..connections)
        .map(|i| {
            let (verdict, out) = f.egress_out(&syn("10.244.1.10", vip, first_port + i, 80));
            assert_eq!(verdict, PASS);
            seen(&out).dst
        })
        .collect()
}

#[test]
fn client_ip_affinity_keeps_a_clients_backend_while_it_is_one() {
    if !privileged() {
        return;
    }
    // y/c labelled pod=b too (and which=c): both Services select y/b and y/c.
    let y_c = |labels: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: c, namespace: y, labels: {{{labels}}}}}\nspec: {{nodeName: other, containers: [{{name: c}}]}}\nstatus: {{podIP: 10.244.2.12, podIPs: [{{ip: 10.244.2.12}}]}}\n")
    };
    let mut f = Fixture::new(&format!("{TWO_BACKENDS}\n---\n{}", y_c("pod: b, which: c")));
    let spread = backends_seen(&f, "10.96.2.31", 42000, 40);
    assert_eq!(
        spread.len(),
        2,
        "without affinity, connections spread: {spread:?}"
    );
    let sticky = backends_seen(&f, "10.96.2.30", 43000, 40);
    assert_eq!(sticky.len(), 1, "with affinity, one backend: {sticky:?}");
    let kept = *sticky.iter().next().unwrap();
    // The client's backend leaves the Service: its next connections go to the other one.
    let without_kept = if kept == ip("10.244.2.11") {
        format!(
            "{}\n---\n{}",
            TWO_BACKENDS.replacen("selector: {pod: b}", "selector: {pod: b, which: c}", 1),
            y_c("pod: b, which: c")
        )
    } else {
        format!("{TWO_BACKENDS}\n---\n{}", y_c("pod: c, which: c"))
    };
    f.apply(&without_kept);
    let after = backends_seen(&f, "10.96.2.30", 44000, 5);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(
        *after.iter().next().unwrap(),
        kept,
        "a backend that left is not kept"
    );
}

/// Fills in the ICMP (IPv4) or ICMPv6 checksum of a frame without extension headers.
fn with_icmp_checksum(mut f: Vec<u8>) -> Vec<u8> {
    let at = icmp_offset(&f);
    f[at + 2] = 0;
    f[at + 3] = 0;
    let sum = enforcer_tests::packet::checksum(&icmp_sum_input(&f));
    f[at + 2..at + 4].copy_from_slice(&sum.to_be_bytes());
    f
}

fn icmp_offset(f: &[u8]) -> usize {
    if f[14] >> 4 == 6 {
        14 + 40
    } else {
        14 + 20
    }
}

fn icmp_sum_input(f: &[u8]) -> Vec<u8> {
    let at = icmp_offset(f);
    let mut data = Vec::new();
    if f[14] >> 4 == 6 {
        data.extend_from_slice(&f[22..54]);
        data.extend_from_slice(&((f.len() - at) as u32).to_be_bytes());
        data.extend_from_slice(&[0, 0, 0, 58]);
    }
    data.extend_from_slice(&f[at..]);
    data
}

fn icmp_checksum_ok(f: &[u8]) -> bool {
    enforcer_tests::packet::checksum(&icmp_sum_input(f)) == 0
}

fn addr_at(f: &[u8], off: usize, v6: bool) -> std::net::IpAddr {
    if v6 {
        <[u8; 16]>::try_from(&f[off..off + 16]).unwrap().into()
    } else {
        <[u8; 4]>::try_from(&f[off..off + 4]).unwrap().into()
    }
}

#[test]
fn icmp_errors_about_a_translated_connection_are_translated_with_it() {
    use enforcer_tests::packet::{eth, icmp_error, ip as ip_pkt, tcp_hdr, IpOpts, ICMP, ICMPV6};
    if !privileged() {
        return;
    }
    let f = fixture("");
    for v6 in [false, true] {
        let (client, vip, backend) = if v6 {
            ("fd00:10:244:1::10", "fd00:10:96:2::10", "fd00:10:244:2::11")
        } else {
            ("10.244.1.10", "10.96.2.10", "10.244.2.11")
        };
        let sport = 45000 + u16::from(v6);
        assert_eq!(f.egress(&syn(client, vip, sport, 80)), PASS);
        // The backend reports about the client's packet as it reached it (to the backend).
        let quoted = ip_pkt(
            ip(client),
            ip(backend),
            6,
            &tcp_hdr(sport, 8080, SYN),
            &IpOpts::default(),
        );
        let proto = if v6 { ICMPV6 } else { ICMP };
        let err = with_icmp_checksum(eth(&ip_pkt(
            ip(backend),
            ip(client),
            proto,
            &icmp_error(v6, &quoted),
            &IpOpts::default(),
        )));
        let (verdict, out) = f.ingress_out(&err);
        assert_eq!(verdict, PASS);
        let inner_ip = icmp_offset(&out) + 8;
        let (outer_src, inner_dst, inner_l4) = if v6 {
            (
                addr_at(&out, 22, true),
                addr_at(&out, inner_ip + 24, true),
                inner_ip + 40,
            )
        } else {
            (
                addr_at(&out, 26, false),
                addr_at(&out, inner_ip + 16, false),
                inner_ip + 20,
            )
        };
        assert_eq!(outer_src, ip(vip), "the error comes from the Service");
        assert_eq!(
            inner_dst,
            ip(vip),
            "about the client's packet to the Service"
        );
        assert_eq!(
            u16::from_be_bytes([out[inner_l4 + 2], out[inner_l4 + 3]]),
            80
        );
        assert!(icmp_checksum_ok(&out), "ICMP checksum (v6: {v6})");
        if !v6 {
            assert_eq!(
                enforcer_tests::packet::checksum(&out[inner_ip..inner_ip + 20]),
                0,
                "the quoted IPv4 header's checksum"
            );
            assert_eq!(
                enforcer_tests::packet::checksum(&out[14..34]),
                0,
                "the outer header's"
            );
        }
    }
}

#[test]
fn a_client_port_used_again_keeps_its_backend_only_while_the_backends_are_unchanged() {
    if !privileged() {
        return;
    }
    let mut f = fixture("");
    let open_and_reset = |f: &Fixture| {
        let (verdict, out) = f.egress_out(&syn("10.244.1.10", "10.96.2.10", 46000, 80));
        assert_eq!(verdict, PASS);
        let reset = with_l4_checksum(tcp(
            "10.244.1.10",
            "10.96.2.10",
            46000,
            80,
            enforcer_tests::packet::RST,
        ));
        assert_eq!(f.egress(&reset), PASS);
        seen(&out).dst
    };
    assert_eq!(open_and_reset(&f), ip("10.244.2.11"));
    // The closed connection's port opens again: same backend set, same backend.
    assert_eq!(open_and_reset(&f), ip("10.244.2.11"));
    // y/web moves to y/c: the port's next connection chooses among the new backends.
    f.apply(&SERVICES.replacen("selector: {pod: b}", "selector: {pod: c}", 1));
    assert_eq!(open_and_reset(&f), ip("10.244.2.12"));
}

/// The tuple of a closed translated connection, opened again directly (the client's port
/// used again, to the backend's own address) is a new connection of its own: judged, reported,
/// and its replies are not translated back to the Service address, which the client's stack
/// would refuse (it answers a SYN-ACK from an address it never called with a reset).
#[test]
fn a_direct_connection_on_a_closed_service_connections_tuple_is_not_translated() {
    if !privileged() {
        return;
    }
    let mut f = fixture("");
    let (a, b, svc) = ("10.244.1.10", "10.244.2.11", "10.96.2.10");
    let seg = |src, dst, sport, dport, flags| with_l4_checksum(tcp(src, dst, sport, dport, flags));
    // Through the Service, closed both ways and the last ACK sent.
    assert_eq!(f.egress(&seg(a, svc, 46100, 80, SYN)), PASS);
    assert_eq!(f.ingress(&seg(b, a, 8080, 46100, SYN | ACK)), PASS);
    assert_eq!(f.egress(&seg(a, svc, 46100, 80, FIN | ACK)), PASS);
    assert_eq!(f.ingress(&seg(b, a, 8080, 46100, FIN | ACK)), PASS);
    assert_eq!(f.egress(&seg(a, svc, 46100, 80, ACK)), PASS);
    f.drain_events();

    // The same port, straight to the backend.
    let (verdict, out) = f.egress_out(&seg(a, b, 46100, 8080, SYN));
    assert_eq!(verdict, PASS);
    assert_eq!((seen(&out).dst, seen(&out).dport), (ip(b), 8080));
    let (verdict, out) = f.ingress_out(&seg(b, a, 8080, 46100, SYN | ACK));
    assert_eq!(verdict, PASS);
    let s = seen(&out);
    assert_eq!(
        (s.src, s.sport),
        (ip(b), 8080),
        "the direct connection's reply comes from the backend, untranslated"
    );
    let events = f.drain_events();
    let opened: Vec<_> = events
        .iter()
        .filter(|e| e.end.is_none() && !e.reply)
        .collect();
    assert_eq!(
        opened.len(),
        1,
        "the direct connection is reported: {events:?}"
    );
    assert_eq!(
        opened[0].frontend, 0,
        "not a Service connection: {events:?}"
    );
}
