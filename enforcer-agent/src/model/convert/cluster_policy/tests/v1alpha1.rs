//! v1alpha1 AdminNetworkPolicy and BaselineAdminNetworkPolicy: converted into the v1alpha2
//! model (FORMAT-CNP section 5), with their own limits, actions and `ports`.

use super::*;

fn anp_with(metadata: &str, spec: &str) -> Result<ClusterPolicy, InvalidObject> {
    let yaml = document(
        "policy.networking.k8s.io/v1alpha1",
        "AdminNetworkPolicy",
        metadata,
        spec,
    );
    admin_network_policy_from_api(&parse::<AdminNetworkPolicyObject>(&yaml))
}

/// An AdminNetworkPolicy named `a`, priority 7, subject every namespace, then `rest`.
fn anp(rest: &str) -> Result<ClusterPolicy, InvalidObject> {
    anp_with(
        "name: a",
        &format!("priority: 7\nsubject: {{namespaces: {{}}}}\n{rest}"),
    )
}

fn banp_with(metadata: &str, rest: &str) -> Result<ClusterPolicy, InvalidObject> {
    let yaml = document(
        "policy.networking.k8s.io/v1alpha1",
        "BaselineAdminNetworkPolicy",
        metadata,
        &format!("subject: {{namespaces: {{}}}}\n{rest}"),
    );
    baseline_admin_network_policy_from_api(&parse::<BaselineAdminNetworkPolicyObject>(&yaml))
}

/// The BaselineAdminNetworkPolicy `default`, subject every namespace, then `rest`.
fn banp(rest: &str) -> Result<ClusterPolicy, InvalidObject> {
    banp_with("name: default", rest)
}

/// One ingress rule of `action` from every namespace with the given `ports`.
fn with_ports(ports: &str) -> Result<ClusterPolicy, InvalidObject> {
    anp(&format!(
        "ingress: [{{action: Allow, from: [{{namespaces: {{}}}}], ports: {ports}}}]"
    ))
}

#[test]
fn an_admin_network_policy_is_the_admin_tier_with_allow_as_accept() {
    let p = anp(
        "ingress: [{name: i, action: Allow, from: [{pods: {namespaceSelector: {matchLabels: {ns: y}}, podSelector: {}}}]}]\negress: [{action: Pass, to: [{namespaces: {}}]}, {action: Deny, to: [{networks: [10.0.0.0/8]}]}]",
    )
    .unwrap();
    assert_eq!(
        p.key,
        ClusterPolicyKey::new(ClusterPolicyKind::AdminNetworkPolicy, "a")
    );
    assert_eq!((p.tier, p.priority), (Tier::Admin, 7));
    assert_eq!(
        p.ingress,
        vec![ClusterRule {
            name: Some("i".into()),
            action: Action::Accept,
            peers: vec![ClusterPeer::Pods {
                namespaces: sel(&[("ns", "y")]),
                pods: LabelSelector::default()
            }],
            protocols: None,
        }]
    );
    let actions: Vec<Action> = p.egress.iter().map(|r| r.action).collect();
    assert_eq!(actions, vec![Action::Pass, Action::Deny]);
}

#[test]
fn each_v1alpha1_port_form_becomes_a_protocols_entry() {
    let p = with_ports(
        "[{portNumber: {port: 80}}, {portNumber: {protocol: UDP, port: 53}}, {portRange: {start: 8000, end: 8080}}, {portRange: {protocol: SCTP, start: 1, end: 2}}, {namedPort: http}]",
    )
    .unwrap();
    let ports = |protocol, start, end| ProtocolMatch::Ports {
        protocol,
        start,
        end,
    };
    assert_eq!(
        p.ingress[0].protocols,
        Some(vec![
            ports(Protocol::Tcp, 80, 80),
            ports(Protocol::Udp, 53, 53),
            ports(Protocol::Tcp, 8000, 8080),
            ports(Protocol::Sctp, 1, 2),
            ProtocolMatch::NamedPort("http".into()),
        ])
    );
    // Absent or empty: every protocol and port.
    assert_eq!(with_ports("[]").unwrap().ingress[0].protocols, None);
}

#[test]
fn v1alpha1_ports_are_validated() {
    let base = "spec.ingress[0].ports[0]";
    assert_invalid(
        with_ports("[{}]"),
        base,
        "exactly one of portNumber, namedPort, portRange",
    );
    assert_invalid(
        with_ports("[{namedPort: a, portNumber: {port: 1}}]"),
        base,
        "found portNumber, namedPort",
    );
    assert_invalid(
        with_ports("[{portNumber: {port: 0}}]"),
        &format!("{base}.portNumber.port"),
        "between 1 and 65535",
    );
    assert_invalid(
        with_ports("[{portNumber: {protocol: TCP}}]"),
        &format!("{base}.portNumber.port"),
        "required",
    );
    assert_invalid(
        with_ports("[{portNumber: {protocol: ICMP, port: 1}}]"),
        &format!("{base}.portNumber.protocol"),
        "unsupported value \"ICMP\"",
    );
    assert_invalid(
        with_ports("[{portRange: {start: 90, end: 80}}]"),
        &format!("{base}.portRange"),
        "must be less than end",
    );
    assert_invalid(
        with_ports("[{portRange: {start: 1, end: 65536}}]"),
        &format!("{base}.portRange.end"),
        "between 1 and 65535",
    );
    let many = list("{portNumber: {port: 80}}", 101);
    assert_invalid(
        with_ports(&many),
        "spec.ingress[0].ports",
        "at most 100 items",
    );
    assert!(with_ports(&list("{portNumber: {port: 80}}", 100)).is_ok());
}

#[test]
fn v1alpha1_allows_100_rules_and_peers() {
    let rule = "{action: Deny, from: [{namespaces: {}}]}";
    assert_eq!(
        anp(&format!("ingress: {}", list(rule, 100)))
            .unwrap()
            .ingress
            .len(),
        100
    );
    assert_invalid(
        anp(&format!("ingress: {}", list(rule, 101))),
        "spec.ingress",
        "at most 100 items",
    );
    let peers = list("{namespaces: {}}", 101);
    assert_invalid(
        anp(&format!("egress: [{{action: Deny, to: {peers}}}]")),
        "spec.egress[0].to",
        "at most 100 items",
    );
}

#[test]
fn admin_network_policy_checks() {
    assert_invalid(
        anp_with("name: a", "subject: {namespaces: {}}"),
        "spec.priority",
        "required",
    );
    assert_invalid(
        anp_with("name: a", "priority: 1001\nsubject: {namespaces: {}}"),
        "spec.priority",
        "between 0 and 1000",
    );
    assert_invalid(
        anp_with(
            "name: a\nnamespace: x",
            "priority: 1\nsubject: {namespaces: {}}",
        ),
        "metadata.namespace",
        "cluster-scoped",
    );
    assert_invalid(
        anp("egress: [{action: Accept, to: [{namespaces: {}}]}]"),
        "spec.egress[0].action",
        "supported values: \"Allow\", \"Deny\", \"Pass\"",
    );
    assert_invalid(
        anp("egress: [{action: Deny, to: [{domainNames: [example.com]}]}]"),
        "spec.egress[0].to[0].domainNames",
        "only allowed in Allow rules",
    );
    assert_invalid(
        anp("egress: [{action: Deny, to: [{networks: [10.0.0.0/8]}], ports: [{namedPort: web}]}]"),
        "spec.egress[0].ports[0].namedPort",
        "no named ports",
    );
}

#[test]
fn an_admin_network_policy_fails_closed_on_unknown_peers() {
    let p = anp(
        "ingress: [{action: Pass, from: [{newPeer: {}}], ports: [{portNumber: {port: 80}}]}, {action: Allow, from: [{newPeer: {}}]}]",
    )
    .unwrap();
    assert_eq!(
        (
            &p.ingress[0].action,
            &p.ingress[0].peers,
            &p.ingress[0].protocols
        ),
        (&Action::Deny, &vec![ClusterPeer::All], &None)
    );
    assert_eq!(p.ingress[1].action, Action::Accept);
    assert!(p.ingress[1].peers.is_empty());
}

#[test]
fn a_baseline_admin_network_policy_is_the_baseline_tier_at_priority_0() {
    let p = banp(
        "egress: [{action: Allow, to: [{nodes: {}}], ports: [{portNumber: {port: 443}}]}, {action: Deny, to: [{networks: ['::/0']}]}]",
    )
    .unwrap();
    assert_eq!(
        p.key,
        ClusterPolicyKey::new(ClusterPolicyKind::BaselineAdminNetworkPolicy, "default")
    );
    assert_eq!((p.tier, p.priority), (Tier::Baseline, 0));
    assert_eq!(
        p.egress[0].protocols,
        Some(vec![ProtocolMatch::Ports {
            protocol: Protocol::Tcp,
            start: 443,
            end: 443
        }])
    );
    assert_eq!(p.egress[1].action, Action::Deny);
}

#[test]
fn baseline_admin_network_policy_checks() {
    assert_invalid(
        banp_with("name: other", ""),
        "metadata.name",
        "must be \"default\"",
    );
    assert_invalid(
        banp("ingress: [{action: Pass, from: [{namespaces: {}}]}]"),
        "spec.ingress[0].action",
        "supported values: \"Allow\", \"Deny\"",
    );
    assert_invalid(
        banp("egress: [{action: Allow, to: [{domainNames: [example.com]}]}]"),
        "spec.egress[0].to[0].domainNames",
        "no `domainNames`",
    );
    assert_invalid(
        banp("ingress: [{action: Deny, from: [{networks: [10.0.0.0/8]}]}]"),
        "spec.ingress[0].from[0].networks",
        "ingress peers",
    );
    let e = banp_with("name: default\nnamespace: x", "").unwrap_err();
    assert_eq!(
        (e.kind, e.field.as_str()),
        ("BaselineAdminNetworkPolicy", "metadata.namespace")
    );
}
