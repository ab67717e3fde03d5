//! Cluster policy tiers in the real datapath: for many flows, the program's verdict
//! (BPF_PROG_TEST_RUN) equals what `explain`'s evaluation of the compiled tables says, over
//! Admin Accept/Deny/Pass, NetworkPolicy isolation, Baseline rules, named ports, networks,
//! equal priorities, both families; an allowed flow's event names the rule `explain` names,
//! and a denied flow's drop event names the denying rule. A few verdicts are also pinned by
//! hand, from the API's evaluation order. (Kernel 6.18; needs root.)

use enforcer_agent::compile::{evaluate, Decision, Direction};
use enforcer_agent::model::PodKey;
use enforcer_tests::packet::*;
use enforcer_tests::{ip as addr, privileged, tables, Fixture, PASS};

/// x/a is the local pod (http = 80/TCP, dns = 53/UDP); y/b, y/c, x/b are peers.
const POLICIES: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: admin-guard}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress:
  - name: y-c-web
    action: Accept
    from: [{pods: {namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: c}}}}]
    protocols: [{destinationNamedPort: http}]
  - name: y-to-np
    action: Pass
    from: [{namespaces: {matchLabels: {ns: y}}}]
    protocols: [{tcp: {destinationPort: {range: {start: 1000, end: 40000}}}}]
  - name: no-y
    action: Deny
    from: [{namespaces: {matchLabels: {ns: y}}}]
  egress:
  - name: no-metadata
    action: Deny
    to: [{networks: ["10.244.2.12/32", "fd00:10:244:2::12/128"]}]
    protocols: [{tcp: {destinationPort: {number: 443}}}, {udp: {destinationPort: {number: 53}}}]
  - name: pass-wide
    action: Pass
    to: [{networks: ["10.244.0.0/16"]}]
    protocols: [{tcp: {destinationPort: {range: {start: 30000, end: 32767}}}}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: admin-tie}
spec:
  tier: Admin
  priority: 10
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {pod: a}}}}
  ingress:
  - action: Accept
    from: [{namespaces: {}}]
    protocols: [{udp: {destinationPort: {number: 53}}}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: baseline}
spec:
  tier: Baseline
  priority: 5
  subject: {namespaces: {}}
  ingress:
  - action: Accept
    from: [{namespaces: {}}]
    protocols: [{tcp: {destinationPort: {number: 80}}}]
  - action: Deny
    from: [{namespaces: {}}]
  egress:
  - action: Deny
    to: [{networks: ["0.0.0.0/0", "::/0"]}]
    protocols: [{sctp: {destinationPort: {number: 9000}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-np, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.244.2.0/24}}]
    ports: [{port: 443}, {port: 30000, endPort: 31000}, {protocol: UDP}]
  - to: [{podSelector: {}}]
"#;

const PEERS: [&str; 7] = [
    "10.244.2.11",
    "10.244.2.12",
    "10.244.1.11",
    "10.244.3.99",
    "192.0.2.1",
    "fd00:10:244:2::11",
    "fd00:10:244:2::12",
];
const PORTS: [u16; 11] = [
    53, 80, 443, 999, 1000, 8050, 9000, 30000, 31500, 40000, 40001,
];

struct Probe {
    dir: Direction,
    peer: &'static str,
    proto: u8,
    port: u16,
}

/// Sends the first packet of `p` through a fresh datapath; returns the verdict and events.
fn run(
    f: &mut Fixture,
    p: &Probe,
    sport: u16,
) -> (bool, Vec<enforcer_agent::flows::decode::Event>) {
    let v6 = p.peer.contains(':');
    let me = if v6 {
        addr("fd00:10:244:1::10")
    } else {
        addr("10.244.1.10")
    };
    let (src, dst) = match p.dir {
        Direction::Ingress => (addr(p.peer), me),
        Direction::Egress => (me, addr(p.peer)),
    };
    let l4 = match p.proto {
        TCP => tcp_hdr(sport, p.port, SYN),
        UDP => udp_hdr(sport, p.port, b"x"),
        SCTP => sctp_hdr(sport, p.port),
        ICMP | ICMPV6 => echo(v6, true, sport),
        _ => vec![0u8; 8],
    };
    let pkt = eth(&ip(src, dst, p.proto, &l4, &IpOpts::default()));
    let pass = match p.dir {
        Direction::Ingress => f.ingress(&pkt),
        Direction::Egress => f.egress(&pkt),
    } == PASS;
    (pass, f.drain_events())
}

#[test]
fn the_datapath_and_explain_agree_on_tiers() {
    if !privileged() {
        return;
    }
    let t = tables(POLICIES);
    let me = PodKey::new("x", "a");
    let plan = &t.endpoints[&me];
    assert_eq!(
        plan.ingress_tiered_by.len(),
        3,
        "{:?}",
        plan.ingress_tiered_by
    );
    assert_eq!(
        plan.egress_tiered_by.len(),
        2,
        "{:?}",
        plan.egress_tiered_by
    );
    assert!(!plan.denies.is_empty());

    let protos = [TCP, UDP, SCTP, ICMP, 47];
    let (mut sport, mut checked, mut denied_by_rule) = (10_000u16, 0, 0);
    for peer in PEERS {
        let v6 = peer.contains(':');
        for dir in [Direction::Ingress, Direction::Egress] {
            let mut f = Fixture::new(POLICIES);
            for proto in protos {
                let proto = if proto == ICMP && v6 { ICMPV6 } else { proto };
                let ports = if proto == 47 { &PORTS[..1] } else { &PORTS[..] };
                for &port in ports {
                    sport += 1;
                    let probe = Probe {
                        dir,
                        peer,
                        proto,
                        port,
                    };
                    let (kernel, events) = run(&mut f, &probe, sport);
                    let verdict = evaluate(&t, &me, dir, addr(peer), proto, port);
                    let what = format!("{dir:?} peer {peer} proto {proto} port {port}");
                    assert_eq!(kernel, verdict.allowed(), "{what}: {verdict:?}");
                    match verdict.decision {
                        Decision::Rule { id, .. } => {
                            let ev = events.iter().find(|e| !e.dropped).expect("an allow event");
                            assert_eq!(
                                ev.rule,
                                id,
                                "{what}: kernel {:?}, explain {:?}",
                                t.rule(ev.rule),
                                t.rule(id)
                            );
                        }
                        Decision::DeniedBy { id, .. } => {
                            let ev = events.iter().find(|e| e.dropped).expect("a drop event");
                            assert_eq!(
                                ev.rule,
                                id,
                                "{what}: kernel {:?}, explain {:?}",
                                t.rule(ev.rule),
                                t.rule(id)
                            );
                            if id != 0 {
                                denied_by_rule += 1;
                            }
                        }
                        _ => {}
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(
        checked,
        PEERS.len() * 2 * ((protos.len() - 1) * PORTS.len() + 1)
    );
    assert!(
        denied_by_rule > 20,
        "{denied_by_rule} drops named a cluster policy rule"
    );
}

/// Verdicts worked out by hand from the API's evaluation order.
#[test]
fn verdicts_follow_the_evaluation_order() {
    if !privileged() {
        return;
    }
    let cases = [
        // Admin Accept on the named port (80/TCP on x/a) beats the Deny written after it.
        (Direction::Ingress, "10.244.2.12", TCP, 80, true),
        // y/b is not y/c: Admin Deny of everything from y.
        (Direction::Ingress, "10.244.2.11", TCP, 80, false),
        // Admin Pass from y on 1000-40000: no NetworkPolicy isolates ingress, so the Baseline
        // decides: its Deny (only 80 is accepted).
        (Direction::Ingress, "10.244.2.11", TCP, 8050, false),
        // Equal priorities 10 (admin-guard, admin-tie): by name, admin-guard first, whose Deny
        // of y matches before admin-tie's Accept of 53/UDP.
        (Direction::Ingress, "10.244.2.11", UDP, 53, false),
        // From x/b (not in y): admin-tie accepts 53/UDP.
        (Direction::Ingress, "10.244.1.11", UDP, 53, true),
        // From x/b on 80: no Admin rule, no ingress isolation, Baseline accepts 80.
        (Direction::Ingress, "10.244.1.11", TCP, 80, true),
        // From x/b on 443: Baseline Deny.
        (Direction::Ingress, "10.244.1.11", TCP, 443, false),
        // From outside the cluster: no tier names it (namespaces peers are pods): allowed.
        (Direction::Ingress, "192.0.2.1", TCP, 443, true),
        // Egress 443 to y/c: Admin Deny, though the NetworkPolicy allows it.
        (Direction::Egress, "10.244.2.12", TCP, 443, false),
        (Direction::Egress, "fd00:10:244:2::12", TCP, 443, false),
        // Egress 443 to y/b: the NetworkPolicy allows it (ipBlock 10.244.2.0/24).
        (Direction::Egress, "10.244.2.11", TCP, 443, true),
        // Egress 31500 to y/b: Admin Pass; the NetworkPolicy isolates egress and allows only
        // 30000-31000 to the block: denied, finally (the Baseline is not consulted).
        (Direction::Egress, "10.244.2.11", TCP, 31500, false),
        (Direction::Egress, "10.244.2.11", TCP, 30000, true),
        // Egress SCTP 9000 to a pod of x: the NetworkPolicy (podSelector {}) allows it, and
        // the Baseline's Deny is never consulted for an isolated pod.
        (Direction::Egress, "10.244.1.11", SCTP, 9000, true),
        // Egress to outside: the NetworkPolicy isolates and allows nothing there.
        (Direction::Egress, "192.0.2.1", TCP, 80, false),
    ];
    let mut sport = 20_000;
    for (dir, peer, proto, port, want) in cases {
        let mut f = Fixture::new(POLICIES);
        sport += 1;
        let (got, _) = run(
            &mut f,
            &Probe {
                dir,
                peer,
                proto,
                port,
            },
            sport,
        );
        assert_eq!(got, want, "{dir:?} {peer} proto {proto} port {port}");
    }
}

/// A staged Admin Deny and a staged NetworkPolicy: nothing they would deny is dropped, the
/// events name entries that stand for their effect, and promoting the Deny (removing the
/// annotation) revokes a connection it opened while staged.
#[test]
fn staged_policies_change_nothing_but_are_reported_and_promotion_revokes() {
    if !privileged() {
        return;
    }
    const STAGED: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata:
  name: staged-deny
  annotations: {policy.enforcer.dev/mode: audit}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress:
  - {name: no-y-web, action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}], protocols: [{tcp: {destinationPort: {number: 80}}}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: staged-np
  namespace: x
  annotations: {policy.enforcer.dev/mode: audit}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: 443}]}]
"#;
    let mut f = Fixture::new(STAGED);
    let probe = |dir, peer, port| Probe {
        dir,
        peer,
        proto: TCP,
        port,
    };
    // Ingress from y/b on 80: allowed (the Deny is staged), reported as its effect.
    let (pass, events) = run(
        &mut f,
        &probe(Direction::Ingress, "10.244.2.11", 80),
        30_001,
    );
    assert!(pass, "a staged Deny drops nothing");
    let staged = f.dp.staged_refs();
    let ev = events.iter().find(|e| !e.dropped).expect("an allow event");
    let entry = staged
        .get(&ev.rule)
        .expect("the event's id stands for a staged entry");
    assert_eq!(entry.policy.to_string(), "ClusterNetworkPolicy/staged-deny");
    assert!(entry.enforced_allows && !entry.would_allow);
    assert_eq!(
        entry.rule.as_ref().and_then(|r| r.name.as_deref()),
        Some("no-y-web")
    );
    // Its flow record: verdict audit, the staged policy and rule, what it would become.
    let mut ctx = enforcer_agent::flows::enrich::Context::new(
        "node",
        &enforcer_tests::cluster(&[enforcer_tests::CLUSTER, STAGED]),
        tables(STAGED),
        f.dp.endpoint_pods(),
    );
    ctx.rules = f.dp.rule_refs();
    ctx.staged = f.dp.staged_refs();
    let rec = ctx.record(
        ev,
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600),
    );
    assert_eq!(rec.verdict, "audit");
    let s = rec.staged.as_ref().expect("a staged block");
    assert_eq!(
        (s.policy.as_str(), s.would_be.as_str(), s.tier.as_deref()),
        ("ClusterNetworkPolicy/staged-deny", "denied", Some("admin"))
    );
    assert_eq!(s.rule.as_ref().map(|r| r.index), Some(0));
    assert!(rec.detail.contains("staged admin ClusterNetworkPolicy/staged-deny ingress rule 0 \"no-y-web\" (Deny) would deny it"), "{}", rec.detail);
    // Egress to y/b on 80: allowed; the staged NetworkPolicy would isolate and deny it.
    let (pass, events) = run(&mut f, &probe(Direction::Egress, "10.244.2.11", 80), 30_002);
    assert!(pass);
    let ev = events.iter().find(|e| !e.dropped).expect("an allow event");
    let entry = &staged[&ev.rule];
    assert_eq!(entry.policy.to_string(), "x/staged-np");
    assert!(!entry.would_allow && entry.rule.is_none(), "{entry:?}");
    // Egress on 443: the staged policy would allow it too: nothing to report.
    let (pass, events) = run(
        &mut f,
        &probe(Direction::Egress, "10.244.2.11", 443),
        30_003,
    );
    assert!(pass);
    let ev = events.iter().find(|e| !e.dropped).expect("an allow event");
    assert!(!staged.contains_key(&ev.rule), "443 is allowed either way");

    // Promotion: the same Deny without the annotation. The connection opened on 80 while it
    // was staged is revoked at its next packet.
    f.apply(&STAGED.replace(
        "  annotations: {policy.enforcer.dev/mode: audit}\nspec:\n  tier",
        "spec:\n  tier",
    ));
    let me = addr("10.244.1.10");
    let next = eth(&ip(
        addr("10.244.2.11"),
        me,
        TCP,
        &tcp_hdr(30_001, 80, ACK),
        &IpOpts::default(),
    ));
    assert_ne!(
        f.ingress(&next),
        PASS,
        "the promoted Deny revokes the open connection"
    );
    let (pass, _) = run(
        &mut f,
        &probe(Direction::Ingress, "10.244.2.11", 80),
        30_004,
    );
    assert!(!pass, "and denies new ones");
}
