//! Unknown peers (`{}`, or a field of a newer API version), rewritten fail-closed as the
//! API prescribes.

use super::*;

#[test]
fn an_unknown_peer_is_dropped_from_an_accept_rule() {
    let p = cnp_rules(
        "ingress: [{action: Accept, from: [{serviceAccounts: {name: x}}, {namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 80}}}]}]\negress: [{action: Accept, to: [{}]}]",
    )
    .unwrap();
    assert_eq!(
        p.ingress[0].peers,
        vec![ClusterPeer::Namespaces(LabelSelector::default())]
    );
    assert!(
        p.ingress[0].protocols.is_some(),
        "the rest of the rule stays"
    );
    // All unknown: an Accept that matches nothing.
    assert_eq!(p.egress[0].action, Action::Accept);
    assert!(p.egress[0].peers.is_empty());
}

#[test]
fn a_deny_or_pass_rule_with_an_unknown_peer_denies_everything() {
    for action in ["Deny", "Pass"] {
        let p = cnp_rules(&format!(
            "egress:\n- name: r\n  action: {action}\n  to: [{{namespaces: {{}}}}, {{futurePeer: {{x: 1}}}}]\n  protocols: [{{tcp: {{destinationPort: {{number: 80}}}}}}]"
        ))
        .unwrap();
        assert_eq!(
            p.egress,
            vec![ClusterRule {
                name: Some("r".into()),
                action: Action::Deny,
                peers: vec![ClusterPeer::All],
                protocols: None,
            }],
            "{action}"
        );
    }
    // Validation still applies to the rest of the rule.
    assert_invalid(
        cnp_rules("ingress: [{action: Pass, from: [{}, {namespaces: {}, pods: {}}]}]"),
        "spec.ingress[0].from[1]",
        "exactly one field",
    );
}
