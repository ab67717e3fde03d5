//! Flow events: what the kernel reports, rate limiting of drop reports, and the flow record
//! the agent makes of them. (Kernel 6.18; needs root.)

use enforcer_agent::flows::enrich::Context;
use enforcer_agent::model::PodKey;
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
    let rec = ctx.record(&ev, "2026-01-01T00:00:00.000Z".into());
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
