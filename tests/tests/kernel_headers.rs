//! Header cases that must never skip policy: IPv4 options, IPv6 extension headers, unknown
//! protocols, truncated headers, other ethertypes (fragments: `kernel_fragments.rs`).
//! (Kernel 6.18; needs root.)

use enforcer_common::reason::{counter, DropReason};
use enforcer_tests::packet::*;
use enforcer_tests::{ip as addr, privileged, Fixture, DROP, PASS};

/// x/a accepts y/b on 80/TCP and 53/UDP; y/c on everything (a rule without ports).
const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-in, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 80}, {port: 53, protocol: UDP}]
  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: c}}}]
"#;

#[test]
fn ipv4_options_are_skipped_by_length_and_ports_still_decide() {
    if !privileged() {
        return;
    }
    let f = Fixture::new(POLICY);
    // Record route (7), 11 bytes, padded: IHL 8.
    let o = IpOpts {
        ipv4_options: vec![7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0],
        ..Default::default()
    };
    let pkt = |dport| {
        eth(&ip(
            addr("10.244.2.11"),
            addr("10.244.1.10"),
            TCP,
            &tcp_hdr(1000, dport, SYN),
            &o,
        ))
    };
    assert_eq!(f.ingress(&pkt(80)), PASS);
    assert_eq!(f.ingress(&pkt(22)), DROP);
}

#[test]
fn ipv6_extension_headers_are_walked_and_ports_still_decide() {
    if !privileged() {
        return;
    }
    let f = Fixture::new(POLICY);
    let o = IpOpts {
        ipv6_ext: vec![0, 60, 43],
        ..Default::default()
    };
    let pkt = |dport| {
        eth(&ip(
            addr("fd00:10:244:2::11"),
            addr("fd00:10:244:1::10"),
            TCP,
            &tcp_hdr(1000, dport, SYN),
            &o,
        ))
    };
    assert_eq!(f.ingress(&pkt(80)), PASS);
    assert_eq!(f.ingress(&pkt(22)), DROP);
    // A chain longer than the walk is dropped, not skipped.
    let long = IpOpts {
        ipv6_ext: vec![60; 9],
        ..Default::default()
    };
    let pkt = eth(&ip(
        addr("fd00:10:244:2::11"),
        addr("fd00:10:244:1::10"),
        TCP,
        &tcp_hdr(1000, 80, SYN),
        &long,
    ));
    assert_eq!(f.ingress(&pkt), DROP);
    assert_eq!(
        f.counter(counter::DROP_BASE + DropReason::ExtensionHeaderLimit as u32),
        1
    );
}

#[test]
fn unknown_protocols_need_a_rule_without_ports() {
    if !privileged() {
        return;
    }
    let f = Fixture::new(POLICY);
    let o = IpOpts::default();
    let gre = |src: &str| eth(&ip(addr(src), addr("10.244.1.10"), 47, &[0u8; 8], &o));
    assert_eq!(
        f.ingress(&gre("10.244.2.11")),
        DROP,
        "y/b only has port rules"
    );
    assert_eq!(
        f.ingress(&gre("10.244.2.12")),
        PASS,
        "y/c has a rule without ports"
    );
    let icmp = |src: &str| {
        eth(&ip(
            addr(src),
            addr("10.244.1.10"),
            ICMP,
            &echo(false, true, 1),
            &o,
        ))
    };
    assert_eq!(f.ingress(&icmp("10.244.2.11")), DROP);
    assert_eq!(f.ingress(&icmp("10.244.2.12")), PASS);
}

#[test]
fn truncated_headers_are_dropped_as_malformed() {
    if !privileged() {
        return;
    }
    let f = Fixture::new("");
    let full = tcp("10.244.2.11", "10.244.1.10", 1000, 80, SYN);
    assert_eq!(
        f.ingress(&full[..14 + 20 + 2]),
        DROP,
        "TCP header cut after 2 bytes"
    );
    // (BPF_PROG_TEST_RUN itself refuses frames shorter than Ethernet + IPv4 header.)
    let mut long_ihl = full.clone();
    long_ihl[14] = 0x4f;
    assert_eq!(
        f.ingress(&long_ihl),
        DROP,
        "IHL claims 60 bytes of header: the ports are past the end"
    );
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x44;
    assert_eq!(f.ingress(&bad_ihl), DROP, "IHL below 5");
    assert_eq!(
        f.counter(counter::DROP_BASE + DropReason::Malformed as u32),
        3
    );
    assert_eq!(
        f.ingress(&full),
        PASS,
        "not isolated: the whole packet passes"
    );
}

#[test]
fn arp_and_neighbour_discovery_pass_other_ethertypes_are_dropped() {
    if !privileged() {
        return;
    }
    let f = Fixture::new(POLICY);
    assert_eq!(f.ingress(&frame(0x0806, &[0u8; 28])), PASS, "ARP");
    assert_eq!(
        f.egress(&frame(0x0806, &[0u8; 28])),
        PASS,
        "ARP from the pod"
    );
    let ns = eth(&ip(
        addr("fe80::1"),
        addr("ff02::1:ff00:10"),
        ICMPV6,
        &neighbour_solicitation(),
        &IpOpts::default(),
    ));
    assert_eq!(f.ingress(&ns), PASS, "neighbour solicitation");
    let ns_out = eth(&ip(
        addr("fe80::2"),
        addr("ff02::1:ff00:1"),
        ICMPV6,
        &neighbour_solicitation(),
        &IpOpts::default(),
    ));
    assert_eq!(f.egress(&ns_out), PASS, "from the pod's link-local address");
    let vlan = frame(0x8100, &tcp("10.244.2.11", "10.244.1.10", 1, 80, SYN)[12..]);
    assert_eq!(
        f.ingress(&vlan),
        DROP,
        "VLAN-tagged IP must not bypass policy"
    );
    assert_eq!(f.ingress(&frame(0x88cc, &[0u8; 40])), DROP, "LLDP");
    assert_eq!(
        f.counter(counter::DROP_BASE + DropReason::UnsupportedEthertype as u32),
        2
    );
}
