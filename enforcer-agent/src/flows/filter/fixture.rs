//! Small builders of flow records for the tests of the `flows` modules.

use super::*;
use crate::flows::enrich::RuleAttribution;

/// `end("prod/backend", "10.0.0.2", Some(8080))`; `"-"` for an end outside the cluster.
pub fn end(pod: &str, ip: &str, port: Option<u16>) -> FlowEnd {
    let (namespace, pod) = match pod.split_once('/') {
        Some((ns, p)) => (Some(ns.into()), Some(p.into())),
        None => (None, None),
    };
    FlowEnd {
        ip: ip.parse().unwrap(),
        port,
        namespace,
        pod,
        labels: Default::default(),
        workload: None,
        service: None,
    }
}

pub fn labelled(mut e: FlowEnd, labels: &[(&str, &str)]) -> FlowEnd {
    e.labels = std::sync::Arc::new(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    e
}

/// A TCP SYN dropped at `prod/backend`'s ingress by `prod/default-deny-ingress`.
pub fn dropped(src: FlowEnd, dst: FlowEnd) -> FlowRecord {
    FlowRecord {
        schema: crate::flows::enrich::SCHEMA.into(),
        time: "2024-11-23T18:40:48.822Z".into(),
        node: "node-1".into(),
        verdict: "dropped".into(),
        direction: Direction::Ingress,
        reason: Some("policy_denied".into()),
        protocol: "TCP".into(),
        tcp_flags: "SYN".into(),
        icmp: None,
        length: 60,
        interface: Some("lxc1".into()),
        isolated_by: vec!["prod/default-deny-ingress".into()],
        end: None,
        staged: None,
        detail: "isolated".into(),
        ..with_ends(src, dst)
    }
}

/// A TCP SYN allowed by `prod/backend-from-frontend` ingress rule 0.
pub fn allowed(src: FlowEnd, dst: FlowEnd) -> FlowRecord {
    FlowRecord {
        verdict: "allowed".into(),
        reason: None,
        isolated_by: Vec::new(),
        end: None,
        rule: Some(std::sync::Arc::new(RuleAttribution {
            policy: "prod/backend-from-frontend".into(),
            direction: Direction::Ingress,
            index: 0,
            tier: None,
            action: None,
            name: None,
        })),
        detail: "allowed".into(),
        ..dropped(src, dst)
    }
}

fn with_ends(src: FlowEnd, dst: FlowEnd) -> FlowRecord {
    FlowRecord {
        src,
        dst,
        ..probe()
    }
}

/// The usual pair: `dev/debug:41234 -> prod/backend:8080`.
pub fn debug_to_backend() -> (FlowEnd, FlowEnd) {
    (
        labelled(
            end("dev/debug", "10.244.1.5", Some(41234)),
            &[("app", "debug")],
        ),
        labelled(
            end("prod/backend", "10.244.2.7", Some(8080)),
            &[("app", "backend"), ("tier", "api")],
        ),
    )
}
