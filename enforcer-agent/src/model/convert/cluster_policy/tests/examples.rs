//! The lab's example policies (`examples-cnp/*/policies.yaml` of the scenario format, copied
//! into `examples/`): every ClusterNetworkPolicy of them parses and converts to the model
//! their comments describe.

use serde::Deserialize;

use super::*;

/// The ClusterNetworkPolicies of a multi-document file, converted, in file order.
fn cluster_policies(yaml: &str) -> Vec<ClusterPolicy> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| v.get("kind").and_then(|k| k.as_str()) == Some("ClusterNetworkPolicy"))
        .map(|v| {
            let o: ClusterNetworkPolicyObject = serde_yaml::from_value(v).expect("the API types");
            cluster_network_policy_from_api(&o).expect("a valid policy")
        })
        .collect()
}

fn only(yaml: &str) -> ClusterPolicy {
    let mut policies = cluster_policies(yaml);
    assert_eq!(policies.len(), 1);
    policies.remove(0)
}

fn ns(name: &str) -> ClusterPeer {
    ClusterPeer::Namespaces(sel(&[("ns", name)]))
}

fn tcp(port: u16) -> ProtocolMatch {
    ProtocolMatch::Ports {
        protocol: Protocol::Tcp,
        start: port,
        end: port,
    }
}

#[test]
fn admin_deny_overrides_networkpolicy_allow() {
    let p = only(include_str!(
        "examples/admin-deny-overrides-networkpolicy-allow.yaml"
    ));
    assert_eq!(p.key.name, "deny-y-b-to-x-on-80");
    assert_eq!((p.tier, p.priority), (Tier::Admin, 10));
    assert_eq!(p.subject, Subject::Namespaces(sel(&[("ns", "x")])));
    assert!(p.egress.is_empty());
    assert_eq!(
        p.ingress,
        vec![ClusterRule {
            name: Some("no-80-from-y-b".into()),
            action: Action::Deny,
            peers: vec![ClusterPeer::Pods {
                namespaces: sel(&[("ns", "y")]),
                pods: sel(&[("pod", "b")])
            }],
            protocols: Some(vec![tcp(80)]),
        }]
    );
}

#[test]
fn admin_pass_to_networkpolicy() {
    let p = only(include_str!("examples/admin-pass-to-networkpolicy.yaml"));
    assert_eq!((p.tier, p.priority), (Tier::Admin, 30));
    assert!(p.ingress.is_empty());
    let rules: Vec<(Option<&str>, Action, &[ClusterPeer])> = p
        .egress
        .iter()
        .map(|r| (r.name.as_deref(), r.action, r.peers.as_slice()))
        .collect();
    assert_eq!(
        rules,
        vec![
            (Some("delegate-x"), Action::Pass, &[ns("x")][..]),
            (
                Some("nothing-else"),
                Action::Deny,
                &[ClusterPeer::Namespaces(LabelSelector::default())][..]
            ),
        ]
    );
    assert!(p.egress.iter().all(|r| r.protocols.is_none()));
}

#[test]
fn admin_priority_with_named_port() {
    let policies = cluster_policies(include_str!("examples/admin-priority-with-named-port.yaml"));
    let summary: Vec<(&str, u32, Action, Option<Vec<ProtocolMatch>>)> = policies
        .iter()
        .map(|p| {
            assert_eq!(p.ingress.len(), 1);
            assert_eq!(p.ingress[0].peers, vec![ns("z")]);
            let r = &p.ingress[0];
            (
                p.key.name.as_str(),
                p.priority,
                r.action,
                r.protocols.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("z-to-x-deny", 20, Action::Deny, None),
            (
                "z-to-x-http",
                10,
                Action::Accept,
                Some(vec![ProtocolMatch::NamedPort("http".into())])
            ),
        ]
    );
}

#[test]
fn baseline_deny_where_no_networkpolicy() {
    let p = only(include_str!(
        "examples/baseline-deny-where-no-networkpolicy.yaml"
    ));
    assert_eq!((p.tier, p.priority), (Tier::Baseline, 10));
    assert_eq!(p.subject, Subject::Namespaces(sel(&[("ns", "z")])));
    assert_eq!(
        p.ingress,
        vec![
            ClusterRule {
                name: Some("web-from-x".into()),
                action: Action::Accept,
                peers: vec![ns("x")],
                protocols: Some(vec![tcp(80)]),
            },
            ClusterRule {
                name: Some("default-deny".into()),
                action: Action::Deny,
                peers: vec![ClusterPeer::Namespaces(LabelSelector::default())],
                protocols: None,
            },
        ]
    );
}
