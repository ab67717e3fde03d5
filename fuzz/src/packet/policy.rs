//! The fixed policy the packet target runs under, and the model's reading of it: which peer
//! may reach x/a (and which x/a may reach) on what, written out by hand from the policies'
//! Kubernetes meaning, not from the compiled tables.
//!
//! The cluster is the kernel tests' (`enforcer_tests::CLUSTER`): x/a is the local pod
//! (10.244.1.10, fd00:10:244:1::10), x/b, y/b and y/c are pods on another node, 10.244.0.1 is
//! the node. Both directions of x/a are isolated.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use enforcer_common::proto;

/// Ingress: y/b on the named port `http` (80/TCP), 53/UDP, 9000/SCTP; y/c on everything;
/// 192.168.0.0/16 but not 192.168.1.0/24 on 443/TCP. Egress: y/b on 53/UDP; y/c on everything;
/// any IPv4 address outside 10.0.0.0/8 on 8000-8999/TCP (a range wider than 256 ports: the
/// range trie).
pub const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-in, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: http}, {port: 53, protocol: UDP}, {port: 9000, protocol: SCTP}]
  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: c}}}]
  - from: [{ipBlock: {cidr: 192.168.0.0/16, except: [192.168.1.0/24]}}]
    ports: [{port: 443}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-out, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 53, protocol: UDP}]
  - to: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: c}}}]
  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]
    ports: [{port: 8000, endPort: 8999}]
"#;

pub const POD_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
pub const POD_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 0x10);

/// Peers the builder picks from (the last ones of each family are outside every rule).
pub const PEERS_V4: [Ipv4Addr; 9] = [
    Ipv4Addr::new(10, 244, 2, 11), // y/b
    Ipv4Addr::new(10, 244, 2, 12), // y/c
    Ipv4Addr::new(10, 244, 1, 11), // x/b
    Ipv4Addr::new(10, 244, 0, 1),  // the node
    Ipv4Addr::new(192, 168, 5, 5), // in the ingress ipBlock
    Ipv4Addr::new(192, 168, 1, 7), // in its except
    Ipv4Addr::new(8, 8, 8, 8),     // the world (egress 8000-8999)
    Ipv4Addr::new(10, 9, 9, 9),    // in the egress except
    Ipv4Addr::new(10, 244, 1, 10), // x/a itself
];
pub const PEERS_V6: [Ipv6Addr; 6] = [
    Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 0x11), // y/b
    Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 0x12), // y/c
    Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 0x11), // x/b
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),       // the world
    Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 0x10), // x/a itself
    // y/b's IPv4 address, IPv4-mapped (see `identity`)
    Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x0af4, 0x020b),
];

/// Who a peer address is, as far as the policy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    Node,
    YB,
    YC,
    /// Anything no rule names as a pod or the node: other pods, the world.
    Other,
}

/// The identity of a peer address as the policy means it, or `None` where the model does not
/// claim to know: an IPv4-mapped address in an IPv6 packet (`::ffff:a.b.c.d`), which the
/// parser already refuses as malformed (it would otherwise get the IPv4 owner's identity:
/// the bug this target found, tests/tests/kernel_v4_mapped.rs).
pub fn identity(peer: IpAddr) -> Option<Identity> {
    let v4 = match peer {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => return None,
        IpAddr::V6(a) => {
            return Some(match PEERS_V6.iter().position(|p| *p == a) {
                Some(0) => Identity::YB,
                Some(1) => Identity::YC,
                _ => Identity::Other,
            })
        }
    };
    Some(match v4.octets() {
        [10, 244, 0, 1] => Identity::Node,
        [10, 244, 2, 11] => Identity::YB,
        [10, 244, 2, 12] => Identity::YC,
        _ => Identity::Other,
    })
}

fn in_v4(a: IpAddr, net: [u8; 4], bits: u32) -> bool {
    let IpAddr::V4(a) = a else { return false };
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    u32::from(a) & mask == u32::from_be_bytes(net) & mask
}

/// Whether the policy allows a new flow of x/a with `peer` (identity `who`) on `proto` and
/// destination port `dport` (host order; 0 for protocols without ports).
pub fn allows(ingress: bool, peer: IpAddr, who: Identity, p: u8, dport: u16) -> bool {
    if who == Identity::Node {
        // The node is always allowed (kubelet probes).
        return true;
    }
    if who == Identity::YC {
        return true; // a rule without ports: every protocol
    }
    let (tcp, udp, sctp) = (p == proto::TCP, p == proto::UDP, p == proto::SCTP);
    if ingress {
        (who == Identity::YB
            && ((tcp && dport == 80) || (udp && dport == 53) || (sctp && dport == 9000)))
            || (in_v4(peer, [192, 168, 0, 0], 16)
                && !in_v4(peer, [192, 168, 1, 0], 24)
                && tcp
                && dport == 443)
    } else {
        (who == Identity::YB && udp && dport == 53)
            || (matches!(peer, IpAddr::V4(_))
                && !in_v4(peer, [10, 0, 0, 0], 8)
                && tcp
                && (8000..=8999).contains(&dport))
    }
}

/// Whether any peer at all may open a flow on `proto`/`dport` in this direction: the weakest
/// claim of the policy, which no parsing trick may get around.
pub fn any_peer_allows(ingress: bool, p: u8, dport: u16) -> bool {
    // y/c may use anything, so this only says something for the other peers' rules; the
    // invariant checks use it with peers other than y/c and the node.
    let world = IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8));
    let block = IpAddr::V4(Ipv4Addr::new(192, 168, 5, 5));
    let yb = IpAddr::V4(Ipv4Addr::new(10, 244, 2, 11));
    allows(ingress, yb, Identity::YB, p, dport)
        || allows(ingress, world, Identity::Other, p, dport)
        || allows(ingress, block, Identity::Other, p, dport)
}
