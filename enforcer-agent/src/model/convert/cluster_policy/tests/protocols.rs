//! v1alpha2 `protocols`: entries, ports, ranges, and named ports beside address peers.

use super::*;

#[test]
fn protocols_empty_counts_as_absent_and_at_most_25() {
    let p =
        cnp_rules("ingress: [{action: Deny, from: [{namespaces: {}}], protocols: []}]").unwrap();
    assert_eq!(p.ingress[0].protocols, None);
    let entries = list("{tcp: {destinationPort: {number: 80}}}", 26);
    assert_invalid(
        cnp_rules(&format!(
            "ingress: [{{action: Deny, from: [{{namespaces: {{}}}}], protocols: {entries}}}]"
        )),
        "spec.ingress[0].protocols",
        "at most 25 items",
    );
}

/// One ingress rule with a single `protocols` entry.
fn with_protocol(entry: &str) -> Result<ClusterPolicy, InvalidObject> {
    cnp_rules(&format!(
        "ingress: [{{action: Accept, from: [{{namespaces: {{}}}}], protocols: [{entry}]}}]"
    ))
}

#[test]
fn a_protocols_entry_has_exactly_one_field() {
    let field = "spec.ingress[0].protocols[0]";
    assert_invalid(with_protocol("{}"), field, "exactly one of tcp, udp, sctp");
    assert_invalid(with_protocol("{icmp: {}}"), field, "found unknown icmp");
    assert_invalid(
        with_protocol("{tcp: {}, destinationNamedPort: web}"),
        field,
        "found tcp, destinationNamedPort",
    );
}

#[test]
fn port_numbers_and_ranges_are_checked() {
    let base = "spec.ingress[0].protocols[0]";
    for bad in ["0", "65536", "-80"] {
        assert_invalid(
            with_protocol(&format!("{{tcp: {{destinationPort: {{number: {bad}}}}}}}")),
            &format!("{base}.tcp.destinationPort.number"),
            "between 1 and 65535",
        );
    }
    for (start, end) in [(100, 100), (200, 100)] {
        assert_invalid(
            with_protocol(&format!(
                "{{udp: {{destinationPort: {{range: {{start: {start}, end: {end}}}}}}}}}"
            )),
            &format!("{base}.udp.destinationPort.range"),
            "must be less than end",
        );
    }
    assert_invalid(
        with_protocol("{udp: {destinationPort: {range: {start: 0, end: 10}}}}"),
        &format!("{base}.udp.destinationPort.range.start"),
        "between 1 and 65535",
    );
    assert_invalid(
        with_protocol("{sctp: {destinationPort: {range: {start: 1}}}}"),
        &format!("{base}.sctp.destinationPort.range.end"),
        "required",
    );
    assert_invalid(
        with_protocol("{tcp: {destinationPort: {}}}"),
        &format!("{base}.tcp.destinationPort"),
        "exactly one of number, range",
    );
    assert_invalid(
        with_protocol("{tcp: {destinationPort: {number: 1, range: {start: 1, end: 2}}}}"),
        &format!("{base}.tcp.destinationPort"),
        "found number, range",
    );
    let p = with_protocol("{udp: {destinationPort: {range: {start: 1, end: 65535}}}}").unwrap();
    assert_eq!(
        p.ingress[0].protocols,
        Some(vec![ProtocolMatch::Ports {
            protocol: Protocol::Udp,
            start: 1,
            end: 65535
        }])
    );
}

#[test]
fn no_named_port_beside_networks_nodes_or_domain_names() {
    for (action, peer) in [
        ("Deny", "{networks: [10.0.0.0/8]}"),
        ("Deny", "{nodes: {}}"),
        ("Accept", "{domainNames: [example.com]}"),
    ] {
        assert_invalid(
            cnp_rules(&format!(
                "egress: [{{action: {action}, to: [{{namespaces: {{}}}}, {peer}], protocols: [{{tcp: {{}}}}, {{destinationNamedPort: web}}]}}]"
            )),
            "spec.egress[0].protocols[1].destinationNamedPort",
            "no named ports",
        );
    }
    // Beside pod peers, a named port is what it is for.
    assert!(cnp_rules(
        "egress: [{action: Deny, to: [{pods: {podSelector: {}}}], protocols: [{destinationNamedPort: web}]}]"
    )
    .is_ok());
}
