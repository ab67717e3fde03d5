//! Fragments, as a reassembling firewall would judge them: later fragments follow their first
//! fragment's verdict; reordered ones (later fragments first) reach the pod and their first
//! fragment still decides; nothing leaves a pod isolated for egress without a judged first
//! fragment; tiny first fragments and later fragments overlapping the judged header are
//! dropped with their datagram (RFC 1858, RFC 3128); IPv4 and IPv6, extension headers before
//! and after the fragment header. (Kernel 6.18; needs root.)

use enforcer_agent::flows::enrich::Context;
use enforcer_common::reason::{counter, DropReason};
use enforcer_tests::packet::*;
use enforcer_tests::{cluster, ip as addr, privileged, tables, Fixture, CLUSTER, DROP, PASS};

/// x/a accepts y/b on 80/TCP, 53/UDP and 9000/SCTP; y/c on everything (a rule without ports).
/// Its egress is not isolated.
const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-in, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 80}, {port: 53, protocol: UDP}, {port: 9000, protocol: SCTP}]
  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: c}}}]
"#;

/// x/a may send to y/b on 53/UDP only.
const EGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-out, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 53, protocol: UDP}]
"#;

const A4: &str = "10.244.1.10";
const A6: &str = "fd00:10:244:1::10";
const B4: &str = "10.244.2.11";
const B6: &str = "fd00:10:244:2::11";

/// (x/a, y/b) in each family.
const FAMILIES: [(&str, &str); 2] = [(A4, B4), (A6, B6)];

fn first(id: u32) -> Frag {
    Frag {
        offset: 0,
        more: true,
        id,
    }
}

/// A later fragment at `offset` (8-byte units).
fn at(offset: u16, id: u32) -> Frag {
    Frag {
        offset,
        more: offset < 100,
        id,
    }
}

/// A fragment of protocol `proto` carrying `payload`, with IPv6 extension headers `ext` before
/// the fragment header.
fn frag(src: &str, dst: &str, proto: u8, payload: &[u8], f: Frag, ext: &[u8]) -> Vec<u8> {
    let o = IpOpts {
        frag: Some(f),
        ipv6_ext: ext.to_vec(),
        ..Default::default()
    };
    eth(&ip(addr(src), addr(dst), proto, payload, &o))
}

/// A first UDP fragment: header and 64 bytes.
fn udp_first(src: &str, dst: &str, dport: u16, id: u32) -> Vec<u8> {
    frag(
        src,
        dst,
        UDP,
        &udp_hdr(5000, dport, &[0u8; 64]),
        first(id),
        &[],
    )
}

/// A later fragment of 64 bytes.
fn later(src: &str, dst: &str, proto: u8, f: Frag) -> Vec<u8> {
    frag(src, dst, proto, &[0u8; 64], f, &[])
}

/// A TCP header with `options` bytes of NOPs (data offset 5 + options / 4) and `data`.
fn tcp_with(dport: u16, options: usize, data: usize) -> Vec<u8> {
    let mut h = tcp_hdr(40000, dport, SYN);
    h[12] = ((5 + options / 4) as u8) << 4;
    h.extend(std::iter::repeat_n(1u8, options));
    h.extend(std::iter::repeat_n(0u8, data));
    h
}

fn drops(f: &Fixture, r: DropReason) -> u64 {
    f.counter(counter::DROP_BASE + r as u32)
}

/// Sends each packet in turn (into the pod with `Fixture::ingress`, out of it with
/// `Fixture::egress`) and checks its verdict (`what` names it, after `peer`, in a failure).
fn in_turn(send: impl Fn(&[u8]) -> u32, peer: &str, steps: &[(Vec<u8>, u32, &str)]) {
    for (pkt, verdict, what) in steps {
        assert_eq!(send(pkt), *verdict, "{peer}: {what}");
    }
}

#[test]
fn later_fragments_follow_the_first_fragment() {
    if !privileged() {
        return;
    }
    let f = Fixture::new(POLICY);
    for (a, b) in FAMILIES {
        in_turn(
            |p| f.ingress(p),
            b,
            &[
                (udp_first(b, a, 53, 7), PASS, "allowed first"),
                (later(b, a, UDP, at(9, 7)), PASS, "its later fragment"),
                (udp_first(b, a, 54, 8), DROP, "denied first"),
                (later(b, a, UDP, at(9, 8)), DROP, "its later fragment"),
                // A second first fragment with the same id replaces the first one's verdict:
                // an allowed one then a denied one (other ports) leaves the datagram dropped.
                (udp_first(b, a, 53, 9), PASS, "allowed first"),
                (udp_first(b, a, 54, 9), DROP, "another first"),
                (
                    later(b, a, UDP, at(9, 9)),
                    DROP,
                    "follows the last first fragment",
                ),
            ],
        );
    }
    assert_eq!(drops(&f, DropReason::FragmentOfDropped), 4);
    assert_eq!(f.counter(counter::FRAG_HEADLESS_PASSED), 0);
}

/// Reordering on the way into a pod: later fragments that come before their first fragment
/// pass (the pod's kernel holds them until the first fragment, judged when it comes, passes
/// or not); a first fragment that the policy drops still takes the rest of its datagram with
/// it.
#[test]
fn reordered_fragments_enter_and_their_first_fragment_decides() {
    if !privileged() {
        return;
    }
    let f = Fixture::new(POLICY);
    for (a, b) in FAMILIES {
        in_turn(
            |p| f.ingress(p),
            b,
            &[
                // Allowed datagram, last fragment first, then the middle one, then the first.
                (later(b, a, UDP, at(200, 20)), PASS, "last"),
                (later(b, a, UDP, at(9, 20)), PASS, "middle"),
                (udp_first(b, a, 53, 20), PASS, "first"),
                (
                    later(b, a, UDP, at(18, 20)),
                    PASS,
                    "one more after the first",
                ),
                // Denied datagram, reversed.
                (later(b, a, UDP, at(9, 21)), PASS, "later"),
                (udp_first(b, a, 54, 21), DROP, "denied first"),
                (later(b, a, UDP, at(18, 21)), DROP, "after the denied first"),
            ],
        );
    }
    assert_eq!(f.counter(counter::FRAG_HEADLESS_PASSED), 6);
    assert_eq!(drops(&f, DropReason::PolicyDenied), 2);
    assert_eq!(drops(&f, DropReason::FragmentOfDropped), 2);
    assert_eq!(drops(&f, DropReason::FragmentWithoutHead), 0);
}

/// Leaving a pod isolated for egress, a later fragment needs an allowed first fragment: a
/// headless one would carry its payload to a destination nobody judged (and a pod's own
/// stack sends its first fragment first). Without egress isolation it passes.
#[test]
fn headless_fragments_never_leave_a_pod_isolated_for_egress() {
    if !privileged() {
        return;
    }
    let f = Fixture::new(EGRESS);
    for (a, b) in FAMILIES {
        in_turn(
            |p| f.egress(p),
            a,
            &[
                (later(a, b, UDP, at(9, 30)), DROP, "no first fragment yet"),
                (udp_first(a, b, 53, 30), PASS, "allowed first"),
                (later(a, b, UDP, at(18, 30)), PASS, "after it"),
                (udp_first(a, b, 54, 31), DROP, "denied first"),
                (later(a, b, UDP, at(9, 31)), DROP, "after it"),
            ],
        );
    }
    assert_eq!(drops(&f, DropReason::FragmentWithoutHead), 2);
    assert_eq!(drops(&f, DropReason::FragmentOfDropped), 2);
    assert_eq!(f.counter(counter::FRAG_HEADLESS_PASSED), 0);

    let open = Fixture::new(POLICY);
    for (a, b) in FAMILIES {
        assert_eq!(
            open.egress(&later(a, b, UDP, at(9, 32))),
            PASS,
            "{a}: egress not isolated"
        );
    }
    assert_eq!(open.counter(counter::FRAG_HEADLESS_PASSED), 2);
}

/// A first fragment must hold the whole header its verdict depends on; otherwise it is
/// dropped, and so is the rest of its datagram.
#[test]
fn tiny_first_fragments_are_dropped_with_their_datagram() {
    if !privileged() {
        return;
    }
    let f = Fixture::new(POLICY);
    let c4 = "10.244.2.12";
    let mut n = 0;
    let mut tiny = |pkt: Vec<u8>, what: &str| {
        assert_eq!(f.ingress(&pkt), DROP, "{what}");
        n += 1;
    };
    for (a, b) in FAMILIES {
        // TCP: 8 bytes (ports and sequence number, the RFC 1858 attack) and 16 bytes.
        tiny(
            frag(b, a, TCP, &tcp_hdr(40000, 80, SYN)[..8], first(40), &[]),
            "TCP, 8 bytes",
        );
        tiny(
            frag(b, a, TCP, &tcp_hdr(40000, 80, SYN)[..16], first(41), &[]),
            "TCP, 16 bytes",
        );
        // A data offset of 8 (12 bytes of options) and only 24 bytes.
        tiny(
            frag(b, a, TCP, &tcp_with(80, 12, 0)[..24], first(42), &[]),
            "TCP, 24 of 32 header bytes",
        );
        // UDP with only its ports; SCTP without its checksum.
        tiny(
            frag(b, a, UDP, &udp_hdr(5000, 53, &[])[..4], first(43), &[]),
            "UDP, 4 bytes",
        );
        tiny(
            frag(b, a, SCTP, &sctp_hdr(5000, 9000)[..8], first(44), &[]),
            "SCTP, 8 bytes",
        );
        // After other extension headers (IPv6; ignored for IPv4).
        tiny(
            frag(
                b,
                a,
                TCP,
                &tcp_hdr(40000, 80, SYN)[..8],
                first(45),
                &[0, 60],
            ),
            "TCP, 8 bytes, after extension headers",
        );
        // Bytes past the IP packet's end (in the frame) are not part of the datagram.
        let mut padded = frag(b, a, TCP, &tcp_hdr(40000, 80, SYN)[..8], first(46), &[]);
        padded.extend_from_slice(&[0u8; 32]);
        tiny(padded, "TCP, 8 bytes, frame padded");
    }
    // ICMP echo from y/c (a rule without ports), 4 bytes.
    tiny(
        frag(c4, A4, ICMP, &echo(false, true, 1)[..4], first(47), &[]),
        "ICMP echo, 4 bytes",
    );
    // IPv6: an extension header after the fragment header (in the fragmentable part) with
    // only 8 bytes of TCP behind it.
    let mut chain = vec![TCP, 0, 1, 4, 0, 0, 0, 0];
    chain.extend_from_slice(&tcp_hdr(40000, 80, SYN)[..8]);
    tiny(
        frag(B6, A6, 60, &chain, first(48), &[]),
        "IPv6, destination options then 8 bytes of TCP",
    );
    assert_eq!(drops(&f, DropReason::TinyFragment), n);

    // Their later fragments (here the classic second half at offset 1) follow.
    for (a, b) in FAMILIES {
        assert_eq!(
            f.ingress(&frag(b, a, TCP, &[0u8; 16], at(1, 40), &[])),
            DROP,
            "{b}: after a tiny first fragment"
        );
    }
    assert_eq!(drops(&f, DropReason::FragmentOfDropped), 2);

    // Whole headers pass.
    for (a, b) in FAMILIES {
        let whole = [
            frag(b, a, TCP, &tcp_with(80, 0, 4), first(50), &[]),
            frag(b, a, TCP, &tcp_with(80, 12, 0), first(51), &[]),
            frag(b, a, UDP, &udp_hdr(5000, 53, &[]), first(52), &[]),
            frag(b, a, SCTP, &sctp_hdr(5000, 9000), first(53), &[]),
            frag(b, a, TCP, &tcp_with(80, 0, 4), first(54), &[0, 60]),
        ];
        for (i, p) in whole.iter().enumerate() {
            assert_eq!(f.ingress(p), PASS, "{b}: whole header #{i}");
        }
    }
    assert_eq!(
        f.ingress(&frag(c4, A4, ICMP, &echo(false, true, 1), first(55), &[])),
        PASS
    );
}

/// No later fragment may start inside the header its datagram was judged on, whichever comes
/// first: the receiver could otherwise rebuild other ports or TCP flags than those judged.
#[test]
fn later_fragments_overlapping_the_judged_header_are_dropped() {
    if !privileged() {
        return;
    }
    let f = Fixture::new(POLICY);
    let tcp_first = |b: &str, a: &str, options: usize, id: u32| {
        frag(b, a, TCP, &tcp_with(80, options, 4), first(id), &[])
    };
    let piece = |b: &str, a: &str, proto: u8, off: u16, id: u32| {
        frag(b, a, proto, &[0u8; 16], at(off, id), &[])
    };
    let mut overlaps = 0;
    for (a, b) in FAMILIES {
        // TCP at offset 1 and 2 (bytes 8 and 16: flags, data offset, window...), first
        // fragment first: dropped, and the datagram with them.
        for (off, id) in [(1, 60), (2, 61)] {
            assert_eq!(f.ingress(&tcp_first(b, a, 0, id)), PASS, "{b}: first");
            assert_eq!(
                f.ingress(&piece(b, a, TCP, off, id)),
                DROP,
                "{b}: TCP at offset {off}"
            );
            overlaps += 1;
            assert_eq!(
                f.ingress(&piece(b, a, TCP, 3, id)),
                DROP,
                "{b}: the rest of an overlapped datagram"
            );
        }
        // Offset 3 (byte 24) is past a 20-byte header...
        assert_eq!(f.ingress(&tcp_first(b, a, 0, 62)), PASS);
        assert_eq!(f.ingress(&piece(b, a, TCP, 3, 62)), PASS, "{b}: offset 3");
        // ... but not past a 32-byte one (data offset 8): options are header too.
        assert_eq!(f.ingress(&tcp_first(b, a, 12, 63)), PASS);
        assert_eq!(
            f.ingress(&piece(b, a, TCP, 3, 63)),
            DROP,
            "{b}: offset 3 in TCP options"
        );
        overlaps += 1;
        assert_eq!(f.ingress(&tcp_first(b, a, 12, 64)), PASS);
        assert_eq!(f.ingress(&piece(b, a, TCP, 4, 64)), PASS, "{b}: offset 4");
        // With no first fragment yet: dropped at once (the protocol's least header).
        assert_eq!(
            f.ingress(&piece(b, a, TCP, 1, 65)),
            DROP,
            "{b}: headless TCP at offset 1"
        );
        overlaps += 1;
        // The receiver never got it: the first fragment may still pass.
        assert_eq!(f.ingress(&tcp_first(b, a, 0, 65)), PASS);
        // SCTP's 12-byte common header: offset 1 overlaps it.
        assert_eq!(
            f.ingress(&frag(b, a, SCTP, &sctp_hdr(5000, 9000), first(66), &[])),
            PASS
        );
        assert_eq!(f.ingress(&piece(b, a, SCTP, 1, 66)), DROP, "{b}: SCTP at 1");
        overlaps += 1;
        // UDP's 8 bytes end where offset 1 begins.
        assert_eq!(f.ingress(&udp_first(b, a, 53, 67)), PASS);
        assert_eq!(f.ingress(&piece(b, a, UDP, 1, 67)), PASS, "{b}: UDP at 1");
    }

    // IPv6 reassembles on addresses and identification only: a later fragment's next header
    // is a claim. One that says UDP at offset 1 of a TCP datagram overlaps its header...
    assert_eq!(f.ingress(&tcp_first(B6, A6, 0, 70)), PASS);
    assert_eq!(
        f.ingress(&piece(B6, A6, UDP, 1, 70)),
        DROP,
        "a UDP claim inside a TCP header"
    );
    overlaps += 1;
    // ... and when it comes first, it passes (nothing says it overlaps yet) but the first
    // fragment is then dropped: the datagram cannot complete.
    assert_eq!(
        f.ingress(&piece(B6, A6, UDP, 1, 71)),
        PASS,
        "headless UDP claim"
    );
    assert_eq!(
        f.ingress(&tcp_first(B6, A6, 0, 71)),
        DROP,
        "its TCP first fragment"
    );
    overlaps += 1;
    assert_eq!(f.ingress(&piece(B6, A6, TCP, 5, 71)), DROP, "the rest");
    // IPv4 reassembles per protocol: a UDP fragment is not part of a TCP datagram.
    assert_eq!(f.ingress(&tcp_first(B4, A4, 0, 72)), PASS);
    assert_eq!(f.ingress(&piece(B4, A4, UDP, 1, 72)), PASS);
    assert_eq!(drops(&f, DropReason::FragmentOverlap), overlaps);
}

/// IPv6 fragment headers behind other extension headers, and extension headers behind the
/// fragment header (in the fragmentable part, whose header the first fragment carries).
#[test]
fn ipv6_fragments_with_extension_headers() {
    if !privileged() {
        return;
    }
    let f = Fixture::new(POLICY);
    // Hop-by-hop and destination options before the fragment header; reversed order.
    let ext = [0, 60];
    let udp = |dport, id| {
        frag(
            B6,
            A6,
            UDP,
            &udp_hdr(5000, dport, &[0u8; 64]),
            first(id),
            &ext,
        )
    };
    let rest = |id| frag(B6, A6, UDP, &[0u8; 64], at(9, id), &ext);
    assert_eq!(f.ingress(&rest(80)), PASS, "later fragment first");
    assert_eq!(f.ingress(&udp(53, 80)), PASS, "allowed first fragment");
    assert_eq!(f.ingress(&udp(54, 81)), DROP, "denied first fragment");
    assert_eq!(f.ingress(&rest(81)), DROP, "its later fragment");

    // Destination options (8 bytes) after the fragment header, then TCP: the judged header
    // ends at byte 28 of the fragmentable part.
    let mut chain = vec![TCP, 0, 1, 4, 0, 0, 0, 0];
    chain.extend_from_slice(&tcp_with(80, 0, 4));
    let head = |id| frag(B6, A6, 60, &chain, first(id), &[]);
    let piece = |off, id| frag(B6, A6, 60, &[0u8; 16], at(off, id), &[]);
    assert_eq!(f.ingress(&head(82)), PASS);
    assert_eq!(f.ingress(&piece(3, 82)), DROP, "byte 24: inside TCP");
    assert_eq!(f.ingress(&head(83)), PASS);
    assert_eq!(f.ingress(&piece(4, 83)), PASS, "byte 32: past it");
    // Reversed: the overlapping fragment passes first, its first fragment is dropped.
    assert_eq!(f.ingress(&piece(3, 84)), PASS);
    assert_eq!(
        f.ingress(&head(84)),
        DROP,
        "overlapped by a fragment already passed"
    );
    // Reversed without overlap: both pass.
    assert_eq!(f.ingress(&piece(4, 85)), PASS);
    assert_eq!(f.ingress(&head(85)), PASS);
    assert_eq!(drops(&f, DropReason::FragmentOverlap), 2);

    // A second fragment header (an atomic one, then a real one) is malformed.
    let two = frag(
        B6,
        A6,
        UDP,
        &udp_hdr(5000, 53, &[0u8; 64]),
        first(86),
        &[44],
    );
    assert_eq!(f.ingress(&two), DROP);
    assert_eq!(drops(&f, DropReason::Malformed), 1);
}

/// Drops of fragments are reported with their reason; the flow record names it.
#[test]
fn fragment_drops_are_reported_with_their_reason() {
    if !privileged() {
        return;
    }
    let mut f = Fixture::new(POLICY);
    let tiny = frag(B4, A4, TCP, &tcp_hdr(40000, 80, SYN)[..8], first(90), &[]);
    assert_eq!(f.ingress(&tiny), DROP);
    assert_eq!(
        f.ingress(&frag(B4, A4, TCP, &tcp_with(80, 0, 4), first(91), &[])),
        PASS
    );
    assert_eq!(
        f.ingress(&frag(B4, A4, TCP, &[0u8; 16], at(1, 91), &[])),
        DROP
    );
    let events = f.drain_events();
    let drops: Vec<_> = events.iter().filter(|e| e.dropped).collect();
    assert_eq!(drops.len(), 2, "{events:?}");
    assert_eq!(drops[0].reason, Some(Ok(DropReason::TinyFragment)));
    assert!(!drops[0].fragment, "a first fragment");
    assert_eq!(drops[0].dport, 80);
    assert_eq!(drops[1].reason, Some(Ok(DropReason::FragmentOverlap)));
    assert!(drops[1].fragment, "a later fragment");
    assert_eq!(
        (drops[1].sport, drops[1].dport),
        (40000, 80),
        "the ports of its first fragment"
    );

    let c = cluster(&[CLUSTER, POLICY]);
    let ctx = Context::new("node", &c, tables(POLICY), f.dp.endpoint_pods());
    let tiny = serde_json::to_value(ctx.record(
        drops[0],
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600),
    ))
    .unwrap();
    assert_eq!(tiny["reason"], "tiny_fragment");
    assert_eq!(tiny["verdict"], "dropped");
    let overlap = serde_json::to_value(ctx.record(
        drops[1],
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600),
    ))
    .unwrap();
    assert_eq!(overlap["reason"], "fragment_overlap");
    assert_eq!(overlap["fragment"], true);
    assert_eq!(overlap["src"]["pod"], "b");
}
