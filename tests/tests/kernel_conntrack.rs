//! Connection tracking: replies of allowed connections pass, closed connections expire, and a
//! policy change re-checks established connections. (Kernel 6.18; needs root.)

use enforcer_common::reason::{counter, DropReason};
use enforcer_tests::packet::*;
use enforcer_tests::{privileged, Fixture, DROP, PASS};

/// x/a may talk to y/b:80 but accepts nothing.
const CLIENT_ONLY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-client, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 80}]
"#;

/// x/a accepts y/b on 80.
const SERVER: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-server, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 80}]
"#;

/// x/a accepts nothing.
const DENY_ALL: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-server, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: []
"#;

const A: &str = "10.244.1.10";
const B: &str = "10.244.2.11";

#[test]
fn replies_of_an_allowed_connection_pass_and_new_connections_are_checked() {
    if !privileged() {
        return;
    }
    let f = Fixture::new(CLIENT_ONLY);
    assert_eq!(f.egress(&tcp(A, B, 40000, 80, SYN)), PASS);
    assert_eq!(f.ingress(&tcp(B, A, 80, 40000, SYN | ACK)), PASS, "reply");
    assert_eq!(f.egress(&tcp(A, B, 40000, 80, ACK)), PASS);
    assert_eq!(f.ingress(&tcp(B, A, 80, 40000, ACK)), PASS, "reply data");
    assert_eq!(
        f.ingress(&tcp(B, A, 80, 40001, SYN)),
        DROP,
        "other port pair: a new connection"
    );
    assert_eq!(
        f.ingress(&tcp(B, A, 40000, 80, SYN)),
        DROP,
        "b connecting to a"
    );
    // UDP and ICMP echo the same way.
    assert_eq!(
        f.egress(&udp(A, B, 5000, 80)),
        DROP,
        "egress rule is TCP only"
    );
    assert_eq!(f.counter(counter::CT_CREATED), 1);
}

#[test]
fn icmp_echo_replies_pass_and_unrelated_echo_is_denied() {
    if !privileged() {
        return;
    }
    let any_egress = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  egress: [{}]
"#;
    let f = Fixture::new(any_egress);
    let a = enforcer_tests::ip(A);
    let b = enforcer_tests::ip(B);
    let o = IpOpts::default();
    assert_eq!(
        f.egress(&eth(&ip(a, b, ICMP, &echo(false, true, 77), &o))),
        PASS
    );
    assert_eq!(
        f.ingress(&eth(&ip(b, a, ICMP, &echo(false, false, 77), &o))),
        PASS,
        "echo reply"
    );
    assert_eq!(
        f.ingress(&eth(&ip(b, a, ICMP, &echo(false, true, 78), &o))),
        DROP,
        "echo request into a"
    );
    let a6 = enforcer_tests::ip("fd00:10:244:1::10");
    let b6 = enforcer_tests::ip("fd00:10:244:2::11");
    assert_eq!(
        f.egress(&eth(&ip(a6, b6, ICMPV6, &echo(true, true, 9), &o))),
        PASS
    );
    assert_eq!(
        f.ingress(&eth(&ip(b6, a6, ICMPV6, &echo(true, false, 9), &o))),
        PASS
    );
    assert_eq!(
        f.ingress(&eth(&ip(b6, a6, ICMPV6, &echo(true, true, 10), &o))),
        DROP
    );
}

#[test]
fn icmp_errors_pass_only_for_tracked_connections() {
    if !privileged() {
        return;
    }
    let mut f = Fixture::new(CLIENT_ONLY);
    let a = enforcer_tests::ip(A);
    let b = enforcer_tests::ip(B);
    let o = IpOpts::default();
    assert_eq!(f.egress(&tcp(A, B, 40000, 80, SYN)), PASS);
    let quoted = ip(a, b, TCP, &tcp_hdr(40000, 80, SYN)[..8], &o);
    assert_eq!(
        f.ingress(&eth(&ip(b, a, ICMP, &icmp_error(false, &quoted), &o))),
        PASS,
        "related"
    );
    let unrelated = ip(a, b, TCP, &tcp_hdr(40999, 80, SYN)[..8], &o);
    assert_eq!(
        f.ingress(&eth(&ip(b, a, ICMP, &icmp_error(false, &unrelated), &o))),
        DROP
    );
    let ev = f.drain_events();
    assert!(
        ev.iter()
            .any(|e| e.dropped && e.reason == Some(Ok(DropReason::IcmpErrorUnrelated))),
        "{ev:?}"
    );
    // IPv6: packet too big / unreachable about a tracked connection.
    let a6 = enforcer_tests::ip("fd00:10:244:1::10");
    let b6 = enforcer_tests::ip("fd00:10:244:2::11");
    assert_eq!(
        f.egress(&tcp(
            "fd00:10:244:1::10",
            "fd00:10:244:2::11",
            40000,
            80,
            SYN
        )),
        PASS
    );
    let quoted6 = ip(a6, b6, TCP, &tcp_hdr(40000, 80, SYN)[..8], &o);
    assert_eq!(
        f.ingress(&eth(&ip(b6, a6, ICMPV6, &icmp_error(true, &quoted6), &o))),
        PASS
    );
    let unrelated6 = ip(a6, b6, TCP, &tcp_hdr(1, 80, SYN)[..8], &o);
    assert_eq!(
        f.ingress(&eth(&ip(
            b6,
            a6,
            ICMPV6,
            &icmp_error(true, &unrelated6),
            &o
        ))),
        DROP
    );
}

#[test]
fn a_reset_connection_expires_and_its_late_packets_are_checked_as_new() {
    if !privileged() {
        return;
    }
    let f = Fixture::new(CLIENT_ONLY);
    assert_eq!(f.egress(&tcp(A, B, 40000, 80, SYN)), PASS);
    assert_eq!(f.ingress(&tcp(B, A, 80, 40000, SYN | ACK)), PASS);
    assert_eq!(f.egress(&tcp(A, B, 40000, 80, RST)), PASS);
    assert_eq!(
        f.ingress(&tcp(B, A, 80, 40000, ACK)),
        DROP,
        "the connection is over"
    );
}

#[test]
fn a_closed_connection_lingers_only_briefly() {
    if !privileged() {
        return;
    }
    let f = Fixture::new(CLIENT_ONLY);
    assert_eq!(f.egress(&tcp(A, B, 40000, 80, SYN)), PASS);
    assert_eq!(f.ingress(&tcp(B, A, 80, 40000, SYN | ACK)), PASS);
    assert_eq!(f.egress(&tcp(A, B, 40000, 80, FIN | ACK)), PASS);
    // The peer's FIN and the last ACK still pass while the connection is closing.
    assert_eq!(f.ingress(&tcp(B, A, 80, 40000, FIN | ACK)), PASS);
    assert_eq!(f.egress(&tcp(A, B, 40000, 80, ACK)), PASS);
}

#[test]
fn revoking_a_policy_stops_established_connections_at_their_next_packet() {
    if !privileged() {
        return;
    }
    let mut f = Fixture::new(SERVER);
    assert_eq!(f.ingress(&tcp(B, A, 40000, 80, SYN)), PASS);
    assert_eq!(f.egress(&tcp(A, B, 80, 40000, SYN | ACK)), PASS);
    assert_eq!(f.ingress(&tcp(B, A, 40000, 80, ACK)), PASS);
    f.drain_events();
    f.apply(DENY_ALL);
    assert_eq!(f.ingress(&tcp(B, A, 40000, 80, ACK)), DROP, "revoked");
    let ev = f.drain_events();
    assert!(
        ev.iter().any(|e| e.reason == Some(Ok(DropReason::Revoked))),
        "{ev:?}"
    );
    // The entry is gone: b's next packet is a new flow, denied; a's egress is not isolated.
    assert_eq!(f.ingress(&tcp(B, A, 40000, 80, ACK)), DROP);
    assert_eq!(f.egress(&tcp(A, B, 80, 40000, ACK)), PASS);
}

#[test]
fn a_policy_change_that_still_allows_keeps_the_connection() {
    if !privileged() {
        return;
    }
    let mut f = Fixture::new(SERVER);
    assert_eq!(f.ingress(&tcp(B, A, 40000, 80, SYN)), PASS);
    let wider = SERVER.replace("ports: [{port: 80}]", "ports: [{port: 80}, {port: 81}]");
    f.apply(&wider);
    assert_eq!(f.ingress(&tcp(B, A, 40000, 80, ACK)), PASS);
    assert!(f.counter(counter::CT_RECHECKED) >= 1);
}

#[test]
fn a_full_conntrack_table_fails_closed() {
    if !privileged() {
        return;
    }
    // 32 entries for 256 connections: most early connections are evicted.
    let f = Fixture::with_sizes(CLIENT_ONLY, &[(enforcer_common::maps::CONNTRACK, 32)]);
    for sport in 0..256u16 {
        assert_eq!(
            f.egress(&tcp(A, B, 20000 + sport, 80, SYN)),
            PASS,
            "new connections still open"
        );
    }
    let mut passed = 0;
    for sport in 0..256u16 {
        if f.ingress(&tcp(B, A, 80, 20000 + sport, SYN | ACK)) == PASS {
            passed += 1;
        }
    }
    // An evicted connection's reply is checked as a new flow into an isolated pod: denied.
    // Only connections still tracked may answer; nothing denied gets through.
    assert!(passed <= 32, "{passed} replies passed with 32 entries");
    assert!(passed > 0, "the most recent connections are still tracked");
    assert!(f.counter(counter::DROP_BASE + DropReason::PolicyDenied as u32) >= 256 - 32);
}

/// A SYN on the tuple of a closing connection opens a new one, judged by policy: here the
/// reverse of a connection x/a accepted, which x/a may not open itself. Taken as the old
/// connection's packet, it would pass as that connection's reply.
#[test]
fn a_syn_on_a_closed_connections_tuple_is_a_new_connection() {
    if !privileged() {
        return;
    }
    let egress_none = format!(
        "{SERVER}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: a-no-egress, namespace: x}}\n\
         spec: {{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress]}}\n"
    );
    let f = Fixture::new(&egress_none);
    assert_eq!(f.ingress(&tcp(B, A, 40000, 80, SYN)), PASS);
    assert_eq!(f.egress(&tcp(A, B, 80, 40000, SYN | ACK)), PASS, "reply");
    assert_eq!(f.ingress(&tcp(B, A, 40000, 80, FIN | ACK)), PASS);
    assert_eq!(f.egress(&tcp(A, B, 80, 40000, FIN | ACK)), PASS, "reply");
    assert_eq!(f.ingress(&tcp(B, A, 40000, 80, ACK)), PASS);
    assert_eq!(
        f.egress(&tcp(A, B, 80, 40000, SYN)),
        DROP,
        "x/a opening the same tuple is judged: no egress allowed"
    );
    // b opening it again is allowed, as a new connection.
    assert_eq!(f.ingress(&tcp(B, A, 40000, 80, SYN)), PASS);
    assert_eq!(f.counter(counter::CT_CREATED), 2);
}
