//! Conversion tests of cluster policies: every validation rule (with the field path it names),
//! every fail-closed rewrite, the v1alpha2 protocol forms. Here the object, its spec, rules
//! and peers; `tests/protocols.rs` the `protocols` entries, `tests/fail_closed.rs` the
//! rewrites of unknown peers, `tests/v1alpha1.rs` the v1alpha1 kinds, `tests/examples.rs`
//! the lab's example policies.

use super::api::{AdminNetworkPolicyObject, BaselineAdminNetworkPolicyObject};
use super::*;
use crate::model::cluster_policy::{ClusterPeer, ClusterRule, ProtocolMatch};
use crate::model::{Labels, Protocol};

mod examples;
mod fail_closed;
mod protocols;
mod v1alpha1;

/// A selector of `matchLabels` only.
fn sel(labels: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Labels>(),
        match_expressions: vec![],
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// A whole document of `kind` / `api` with the given `metadata` and `spec` (YAML blocks).
fn document(api: &str, kind: &str, metadata: &str, spec: &str) -> String {
    format!(
        "apiVersion: {api}\nkind: {kind}\nmetadata:\n{}spec:\n{}",
        indent(metadata),
        indent(spec)
    )
}

fn parse<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
    serde_yaml::from_str(yaml).expect("fixture matches the API types")
}

/// Admin, priority 10, subject every namespace, and the given extra spec lines.
const HEAD: &str = "tier: Admin\npriority: 10\nsubject: {namespaces: {}}\n";

fn cnp_with(metadata: &str, spec: &str) -> Result<ClusterPolicy, InvalidObject> {
    let yaml = document(
        "policy.networking.k8s.io/v1alpha2",
        "ClusterNetworkPolicy",
        metadata,
        spec,
    );
    cluster_network_policy_from_api(&parse::<ClusterNetworkPolicyObject>(&yaml))
}

/// A ClusterNetworkPolicy named `p` with `spec`.
fn cnp(spec: &str) -> Result<ClusterPolicy, InvalidObject> {
    cnp_with("name: p", spec)
}

/// A ClusterNetworkPolicy named `p` with [`HEAD`] and `rest`.
fn cnp_rules(rest: &str) -> Result<ClusterPolicy, InvalidObject> {
    cnp(&format!("{HEAD}{rest}"))
}

/// Asserts the error names `field` and says `reason` (a part of it).
#[track_caller]
fn assert_invalid(result: Result<ClusterPolicy, InvalidObject>, field: &str, reason: &str) {
    let e = result.expect_err("must be rejected");
    assert_eq!(e.field, field, "{e}");
    assert!(e.reason.contains(reason), "{e}");
}

/// `n` copies of `item` as a YAML flow list.
fn list(item: &str, n: usize) -> String {
    format!("[{}]", vec![item; n].join(", "))
}

#[test]
fn a_policy_of_every_field_converts_to_the_model() {
    let p = cnp(r#"
tier: Baseline
priority: 1000
subject: {pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {app: web}}}}
ingress:
- name: from-y
  action: Accept
  from: [{namespaces: {matchLabels: {ns: y}}}, {pods: {podSelector: {matchLabels: {app: db}}}}]
  protocols:
  - tcp: {destinationPort: {number: 80}}
  - udp: {destinationPort: {range: {start: 5000, end: 5100}}}
  - sctp: {destinationPort: {number: 9003}}
  - destinationNamedPort: web
egress:
- action: Deny
  to: [{networks: ["10.1.2.3/8", "fd00::1/8"]}, {nodes: {matchLabels: {role: infra}}}]
- {action: Accept, to: [{domainNames: [example.com, "*.example.org"]}]}
- {action: Pass, to: [{namespaces: {}}], protocols: [{tcp: {}}]}
"#)
    .unwrap();
    assert_eq!(
        p.key,
        ClusterPolicyKey::new(ClusterPolicyKind::ClusterNetworkPolicy, "p")
    );
    assert_eq!((p.tier, p.priority), (Tier::Baseline, 1000));
    assert_eq!(
        p.subject,
        Subject::Pods {
            namespaces: sel(&[("ns", "x")]),
            pods: sel(&[("app", "web")])
        }
    );
    let ports = |protocol, start, end| ProtocolMatch::Ports {
        protocol,
        start,
        end,
    };
    assert_eq!(
        p.ingress,
        vec![ClusterRule {
            name: Some("from-y".into()),
            action: Action::Accept,
            peers: vec![
                ClusterPeer::Namespaces(sel(&[("ns", "y")])),
                ClusterPeer::Pods {
                    namespaces: LabelSelector::default(),
                    pods: sel(&[("app", "db")])
                },
            ],
            protocols: Some(vec![
                ports(Protocol::Tcp, 80, 80),
                ports(Protocol::Udp, 5000, 5100),
                ports(Protocol::Sctp, 9003, 9003),
                ProtocolMatch::NamedPort("web".into()),
            ]),
        }]
    );
    let nets = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
    assert_eq!(
        p.egress,
        vec![
            ClusterRule {
                name: None,
                action: Action::Deny,
                peers: vec![
                    ClusterPeer::Networks(nets),
                    ClusterPeer::Nodes(sel(&[("role", "infra")])),
                ],
                protocols: None,
            },
            ClusterRule {
                name: None,
                action: Action::Accept,
                peers: vec![ClusterPeer::DomainNames(vec![
                    "example.com".into(),
                    "*.example.org".into()
                ])],
                protocols: None,
            },
            ClusterRule {
                name: None,
                action: Action::Pass,
                peers: vec![ClusterPeer::Namespaces(LabelSelector::default())],
                // `tcp` without destinationPort: every TCP port.
                protocols: Some(vec![ports(Protocol::Tcp, 0, 65535)]),
            },
        ]
    );
}

#[test]
fn a_policy_without_rules_has_none() {
    let p = cnp(HEAD).unwrap();
    assert!(p.ingress.is_empty() && p.egress.is_empty());
    assert_eq!(p.subject, Subject::Namespaces(LabelSelector::default()));
}

#[test]
fn metadata_needs_a_valid_name_and_no_namespace() {
    assert_invalid(
        cnp_with("labels: {a: b}", HEAD),
        "metadata.name",
        "required",
    );
    assert_invalid(
        cnp_with("name: Not_A_Name", HEAD),
        "metadata.name",
        "not a valid name",
    );
    let e = cnp_with("name: p\nnamespace: x", HEAD).unwrap_err();
    assert_eq!(
        (e.kind, e.name.as_str(), e.field.as_str()),
        ("ClusterNetworkPolicy", "p", "metadata.namespace")
    );
    assert!(e.reason.contains("cluster-scoped"), "{e}");
}

#[test]
fn spec_tier_and_priority_are_required_and_bounded() {
    let no_spec = parse::<ClusterNetworkPolicyObject>("metadata: {name: p}\n");
    assert_invalid(
        cluster_network_policy_from_api(&no_spec),
        "spec",
        "required",
    );
    assert_invalid(
        cnp("priority: 1\nsubject: {namespaces: {}}"),
        "spec.tier",
        "required",
    );
    assert_invalid(
        cnp("tier: NetworkPolicy\npriority: 1\nsubject: {namespaces: {}}"),
        "spec.tier",
        "unsupported value \"NetworkPolicy\"",
    );
    assert_invalid(
        cnp("tier: Admin\nsubject: {namespaces: {}}"),
        "spec.priority",
        "required",
    );
    for bad in ["-1", "1001", "4294967296"] {
        assert_invalid(
            cnp(&format!(
                "tier: Admin\npriority: {bad}\nsubject: {{namespaces: {{}}}}"
            )),
            "spec.priority",
            "between 0 and 1000",
        );
    }
    for good in [0, 1000] {
        let spec = format!("tier: Admin\npriority: {good}\nsubject: {{namespaces: {{}}}}");
        assert_eq!(cnp(&spec).unwrap().priority, good);
    }
}

#[test]
fn the_subject_has_exactly_one_field() {
    let head = "tier: Admin\npriority: 1\n";
    assert_invalid(cnp(head), "spec.subject", "required");
    assert_invalid(
        cnp(&format!("{head}subject: {{}}")),
        "spec.subject",
        "exactly one of `namespaces` and `pods`",
    );
    assert_invalid(
        cnp(&format!("{head}subject: {{serviceAccounts: {{}}}}")),
        "spec.subject",
        "unknown serviceAccounts",
    );
    assert_invalid(
        cnp(&format!(
            "{head}subject: {{namespaces: {{}}, pods: {{podSelector: {{}}}}}}"
        )),
        "spec.subject",
        "not both",
    );
    assert_invalid(
        cnp(&format!(
            "{head}subject: {{namespaces: {{matchLabels: {{'bad key!': x}}}}}}"
        )),
        "spec.subject.namespaces.matchLabels",
        "not a valid label key",
    );
}

#[test]
fn at_most_25_rules_per_direction() {
    let rule = "{action: Deny, to: [{namespaces: {}}]}";
    assert_eq!(
        cnp_rules(&format!("egress: {}", list(rule, 25)))
            .unwrap()
            .egress
            .len(),
        25
    );
    assert_invalid(
        cnp_rules(&format!("egress: {}", list(rule, 26))),
        "spec.egress",
        "at most 25 items",
    );
    let rule = "{action: Deny, from: [{namespaces: {}}]}";
    assert_invalid(
        cnp_rules(&format!("ingress: {}", list(rule, 26))),
        "spec.ingress",
        "at most 25 items",
    );
}

#[test]
fn a_rule_has_1_to_25_peers() {
    assert_invalid(
        cnp_rules("ingress: [{action: Deny}]"),
        "spec.ingress[0].from",
        "required",
    );
    assert_invalid(
        cnp_rules("egress: [{action: Deny, to: []}]"),
        "spec.egress[0].to",
        "at least 1 item",
    );
    let peers = list("{namespaces: {}}", 26);
    assert_invalid(
        cnp_rules(&format!("ingress: [{{action: Deny, from: {peers}}}]")),
        "spec.ingress[0].from",
        "at most 25 items",
    );
}

#[test]
fn a_peer_has_at_most_one_field() {
    assert_invalid(
        cnp_rules("egress: [{action: Deny, to: [{namespaces: {}}, {namespaces: {}, networks: [10.0.0.0/8]}]}]"),
        "spec.egress[0].to[1]",
        "found namespaces, networks",
    );
}

#[test]
fn rule_names_and_actions_are_checked() {
    let long = "n".repeat(101);
    assert_invalid(
        cnp_rules(&format!(
            "ingress: [{{name: {long}, action: Deny, from: [{{namespaces: {{}}}}]}}]"
        )),
        "spec.ingress[0].name",
        "more than 100 characters",
    );
    assert_invalid(
        cnp_rules("ingress: [{from: [{namespaces: {}}]}]"),
        "spec.ingress[0].action",
        "required",
    );
    // v1alpha1's spelling is not v1alpha2's.
    assert_invalid(
        cnp_rules("egress: [{action: Allow, to: [{namespaces: {}}]}]"),
        "spec.egress[0].action",
        "unsupported value \"Allow\": supported values: \"Accept\", \"Deny\", \"Pass\"",
    );
}

#[test]
fn networks_are_1_to_25_distinct_cidrs_canonicalised() {
    let rule = |networks: &str| {
        cnp_rules(&format!(
            "egress: [{{action: Deny, to: [{{networks: {networks}}}]}}]"
        ))
    };
    let field = "spec.egress[0].to[0].networks";
    assert_invalid(rule("[]"), field, "at least 1 item");
    let many: Vec<String> = (0..26).map(|i| format!("10.{i}.0.0/16")).collect();
    assert_invalid(
        rule(&format!("[{}]", many.join(", "))),
        field,
        "at most 25 items",
    );
    for bad in [
        "10.0.0.0/33",
        "10.0.0.0",
        "010.0.0.0/8",
        "10.0.0.0/08",
        "10.0.0.0/",
        "fd00::/129",
        "fe80::1%eth0/64",
        "::ffff:10.1.2.3/120",
        "nope",
    ] {
        assert_invalid(
            rule(&format!("[10.0.0.0/8, '{bad}']")),
            "spec.egress[0].to[0].networks[1]",
            "not a valid CIDR",
        );
    }
    assert_invalid(
        rule("[10.0.0.0/8, 10.0.0.0/8]"),
        "spec.egress[0].to[0].networks[1]",
        "duplicate",
    );
    let p = rule("['10.244.1.10/24', 'fd00::1/64', '0.0.0.0/0', '::/0']").unwrap();
    let expected = ["10.244.1.0/24", "fd00::/64", "0.0.0.0/0", "::/0"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(p.egress[0].peers, vec![ClusterPeer::Networks(expected)]);
}

#[test]
fn ingress_peers_are_namespaces_and_pods_only() {
    for peer in [
        "{networks: [10.0.0.0/8]}",
        "{nodes: {}}",
        "{domainNames: [example.com]}",
    ] {
        let e = cnp_rules(&format!("ingress: [{{action: Accept, from: [{peer}]}}]")).unwrap_err();
        assert!(e.field.starts_with("spec.ingress[0].from[0]."), "{e}");
        assert!(e.reason.contains("ingress peers"), "{e}");
    }
}

#[test]
fn domain_names_only_in_accept_rules_and_of_the_crd_pattern() {
    for action in ["Deny", "Pass"] {
        assert_invalid(
            cnp_rules(&format!(
                "egress: [{{action: {action}, to: [{{domainNames: [example.com]}}]}}]"
            )),
            "spec.egress[0].to[0].domainNames",
            "only allowed in Accept rules",
        );
    }
    for bad in [
        "localhost",
        "*example.com",
        "a.*.example.com",
        "-a.example.com",
        "a..b",
    ] {
        assert_invalid(
            cnp_rules(&format!(
                "egress: [{{action: Accept, to: [{{domainNames: ['{bad}']}}]}}]"
            )),
            "spec.egress[0].to[0].domainNames[0]",
            "not a domain name",
        );
    }
    let good = "['*.example.com', 'a.b_c.example.com.', '1.2']";
    assert!(cnp_rules(&format!(
        "egress: [{{action: Accept, to: [{{domainNames: {good}}}]}}]"
    ))
    .is_ok());
}

#[test]
fn cluster_policy_from_api_dispatches_on_the_kind() {
    let cnp = parse::<ClusterNetworkPolicyObject>(&document(
        "policy.networking.k8s.io/v1alpha2",
        "ClusterNetworkPolicy",
        "name: c",
        HEAD,
    ));
    let anp = parse::<AdminNetworkPolicyObject>(
        "metadata: {name: a}\nspec: {priority: 5, subject: {namespaces: {}}}\n",
    );
    let banp = parse::<BaselineAdminNetworkPolicyObject>(
        "metadata: {name: default}\nspec: {subject: {namespaces: {}}}\n",
    );
    for (o, kind, tier) in [
        (
            ClusterPolicyObject::ClusterNetworkPolicy(cnp),
            ClusterPolicyKind::ClusterNetworkPolicy,
            Tier::Admin,
        ),
        (
            ClusterPolicyObject::AdminNetworkPolicy(anp),
            ClusterPolicyKind::AdminNetworkPolicy,
            Tier::Admin,
        ),
        (
            ClusterPolicyObject::BaselineAdminNetworkPolicy(banp),
            ClusterPolicyKind::BaselineAdminNetworkPolicy,
            Tier::Baseline,
        ),
    ] {
        assert_eq!(o.kind(), kind);
        let p = cluster_policy_from_api(&o).unwrap();
        assert_eq!((p.key.kind, p.tier), (kind, tier));
        assert_eq!(Some(&p.key.name), o.metadata().name.as_ref());
    }
}
