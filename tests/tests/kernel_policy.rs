//! New flows against the policy map: isolation per direction, peers, ports, ranges, both
//! families, SCTP, the node, spoofed sources. (Kernel 6.18; needs root.)

use enforcer_common::reason::{counter, DropReason};
use enforcer_tests::packet::*;
use enforcer_tests::{privileged, Fixture, DROP, NODE_IP, PASS};

/// x/a: ingress from y/b on 80/TCP, 53/UDP (named), 9000/SCTP and 8000-8100/TCP; egress to
/// y/c on any port of any protocol.
const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-in, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: b}}
    ports:
    - {port: 80}
    - {port: dns, protocol: UDP}
    - {port: 9000, protocol: SCTP}
    - {port: 8000, endPort: 8100}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-out, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: c}}
"#;

#[test]
fn ingress_allows_only_the_selected_peer_on_the_allowed_ports() {
    if !privileged() {
        return;
    }
    let f = Fixture::new(POLICY);
    assert_eq!(
        f.ingress(&tcp("10.244.2.11", "10.244.1.10", 40000, 80, SYN)),
        PASS
    );
    assert_eq!(
        f.ingress(&tcp("10.244.2.11", "10.244.1.10", 40001, 81, SYN)),
        DROP
    );
    assert_eq!(
        f.ingress(&tcp("10.244.2.12", "10.244.1.10", 40002, 80, SYN)),
        DROP,
        "y/c is not allowed"
    );
    assert_eq!(
        f.ingress(&tcp("10.244.1.11", "10.244.1.10", 40003, 80, SYN)),
        DROP,
        "x/b is not allowed"
    );
    assert_eq!(
        f.ingress(&tcp("192.0.2.1", "10.244.1.10", 40004, 80, SYN)),
        DROP,
        "outside the cluster"
    );
}

#[test]
fn port_ranges_named_ports_and_protocols() {
    if !privileged() {
        return;
    }
    let f = Fixture::new(POLICY);
    for (port, want) in [
        (7999, DROP),
        (8000, PASS),
        (8050, PASS),
        (8100, PASS),
        (8101, DROP),
    ] {
        assert_eq!(
            f.ingress(&tcp(
                "10.244.2.11",
                "10.244.1.10",
                41000 + port % 100,
                port,
                SYN
            )),
            want,
            "TCP {port}"
        );
    }
    assert_eq!(
        f.ingress(&udp("10.244.2.11", "10.244.1.10", 5353, 53)),
        PASS,
        "named UDP port"
    );
    assert_eq!(
        f.ingress(&udp("10.244.2.11", "10.244.1.10", 5353, 80)),
        DROP,
        "80 is TCP only"
    );
    assert_eq!(
        f.ingress(&tcp("10.244.2.11", "10.244.1.10", 5353, 53, SYN)),
        DROP,
        "dns is UDP only"
    );
    let sctp = |dport| {
        eth(&ip(
            enforcer_tests::ip("10.244.2.11"),
            enforcer_tests::ip("10.244.1.10"),
            SCTP,
            &sctp_hdr(7000, dport),
            &IpOpts::default(),
        ))
    };
    assert_eq!(f.ingress(&sctp(9000)), PASS, "SCTP 9000");
    assert_eq!(f.ingress(&sctp(80)), DROP, "SCTP 80 is not TCP 80");
}

#[test]
fn ipv6_follows_the_same_policy() {
    if !privileged() {
        return;
    }
    let f = Fixture::new(POLICY);
    assert_eq!(
        f.ingress(&tcp(
            "fd00:10:244:2::11",
            "fd00:10:244:1::10",
            40000,
            80,
            SYN
        )),
        PASS
    );
    assert_eq!(
        f.ingress(&tcp(
            "fd00:10:244:2::12",
            "fd00:10:244:1::10",
            40000,
            80,
            SYN
        )),
        DROP
    );
    assert_eq!(
        f.egress(&tcp(
            "fd00:10:244:1::10",
            "fd00:10:244:2::12",
            40000,
            443,
            SYN
        )),
        PASS
    );
    assert_eq!(
        f.egress(&tcp(
            "fd00:10:244:1::10",
            "fd00:10:244:2::11",
            40000,
            443,
            SYN
        )),
        DROP
    );
}

#[test]
fn egress_is_isolated_independently_of_ingress() {
    if !privileged() {
        return;
    }
    let f = Fixture::new(POLICY);
    assert_eq!(
        f.egress(&tcp("10.244.1.10", "10.244.2.12", 40000, 1234, SYN)),
        PASS,
        "to y/c any port"
    );
    assert_eq!(
        f.egress(&udp("10.244.1.10", "10.244.2.12", 40000, 9)),
        PASS,
        "any protocol"
    );
    assert_eq!(
        f.egress(&tcp("10.244.1.10", "10.244.2.11", 40000, 80, SYN)),
        DROP,
        "y/b not allowed"
    );
    assert_eq!(
        f.egress(&tcp("10.244.1.10", "198.51.100.7", 40000, 80, SYN)),
        DROP,
        "world not allowed"
    );
}

#[test]
fn a_pod_without_policies_is_not_isolated() {
    if !privileged() {
        return;
    }
    let f = Fixture::new("");
    assert_eq!(
        f.ingress(&tcp("10.244.2.12", "10.244.1.10", 40000, 81, SYN)),
        PASS
    );
    assert_eq!(
        f.egress(&udp("10.244.1.10", "198.51.100.7", 40000, 53)),
        PASS
    );
}

#[test]
fn the_node_itself_is_always_allowed() {
    if !privileged() {
        return;
    }
    let f = Fixture::new(POLICY);
    assert_eq!(
        f.ingress(&tcp(NODE_IP, "10.244.1.10", 40000, 8080, SYN)),
        PASS,
        "kubelet probe"
    );
    assert_eq!(
        f.egress(&tcp("10.244.1.10", NODE_IP, 40000, 10250, SYN)),
        PASS
    );
}

#[test]
fn a_packet_from_the_pod_with_another_source_is_dropped() {
    if !privileged() {
        return;
    }
    let mut f = Fixture::new("");
    assert_eq!(
        f.egress(&tcp("10.244.1.99", "10.244.2.12", 40000, 80, SYN)),
        DROP
    );
    assert_eq!(
        f.egress(&tcp(
            "fd00:10:244:1::99",
            "fd00:10:244:2::12",
            40000,
            80,
            SYN
        )),
        DROP
    );
    assert_eq!(
        f.counter(counter::DROP_BASE + DropReason::SpoofedSource as u32),
        2
    );
    let ev = f.drain_events();
    assert!(ev
        .iter()
        .filter(|e| e.dropped)
        .all(|e| e.reason == Some(Ok(DropReason::SpoofedSource))));
}

#[test]
fn wide_port_ranges_are_matched_by_prefix() {
    if !privileged() {
        return;
    }
    let wide = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-wide, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 1000, endPort: 40000}, {port: 50000, endPort: 50001, protocol: UDP}]
"#;
    let f = Fixture::new(wide);
    for (port, want) in [
        (999, DROP),
        (1000, PASS),
        (4096, PASS),
        (32768, PASS),
        (40000, PASS),
        (40001, DROP),
    ] {
        assert_eq!(
            f.ingress(&tcp("10.244.2.11", "10.244.1.10", 7000, port, SYN)),
            want,
            "TCP {port}"
        );
    }
    assert_eq!(
        f.ingress(&udp("10.244.2.11", "10.244.1.10", 7000, 50001)),
        PASS
    );
    assert_eq!(
        f.ingress(&udp("10.244.2.11", "10.244.1.10", 7000, 4096)),
        DROP,
        "the wide range is TCP"
    );
    assert_eq!(
        f.ingress(&tcp("10.244.2.12", "10.244.1.10", 7000, 4096, SYN)),
        DROP,
        "other peer"
    );
}
