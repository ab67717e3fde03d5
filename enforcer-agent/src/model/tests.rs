//! Conversion tests: realistic API objects in, model or a precise error out.

use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;

use super::*;

/// Parses a multi-document YAML stream of Namespaces, Pods, NetworkPolicies, Services,
/// EndpointSlices and cluster policies (ClusterNetworkPolicy, Admin/BaselineAdminNetworkPolicy)
/// into a cluster.
pub(crate) fn cluster_from_yaml(yaml: &str) -> Result<Cluster, InvalidObject> {
    let mut cluster = Cluster::default();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(doc).expect("valid YAML");
        if value.is_null() {
            continue;
        }
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("Namespace") => cluster.insert_namespace(namespace_from_k8s(&parse(value))?),
            Some("Pod") => cluster.insert_pod(pod_from_k8s(&parse(value))?),
            Some("NetworkPolicy") => cluster.insert_policy(network_policy_from_k8s(&parse(value))?),
            Some("Service") => cluster.insert_service(super::service_from_k8s(&parse(value))?),
            Some("EndpointSlice") => {
                cluster.insert_endpoint_slice(super::endpoint_slice_from_k8s(&parse(value))?)
            }
            Some("ClusterNetworkPolicy") => {
                cluster.insert_cluster_policy(cluster_network_policy_from_api(&parse(value))?)
            }
            Some("AdminNetworkPolicy") => {
                cluster.insert_cluster_policy(admin_network_policy_from_api(&parse(value))?)
            }
            Some("BaselineAdminNetworkPolicy") => cluster
                .insert_cluster_policy(baseline_admin_network_policy_from_api(&parse(value))?),
            other => panic!("unexpected kind {other:?}"),
        }
    }
    Ok(cluster)
}

use serde::Deserialize;

fn parse<T: serde::de::DeserializeOwned>(value: serde_yaml::Value) -> T {
    serde_yaml::from_value(value).expect("fixture matches the API schema")
}

fn policy(yaml: &str) -> Result<NetworkPolicy, InvalidObject> {
    let np: net::NetworkPolicy = serde_yaml::from_str(yaml).expect("fixture matches the schema");
    network_policy_from_k8s(&np)
}

fn policy_with_spec(spec: &str) -> Result<NetworkPolicy, InvalidObject> {
    let indented: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    policy(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: np\n  namespace: x\nspec:\n{indented}"
    ))
}

#[test]
fn keys_display_parse_and_serialize_as_strings() {
    let key = PodKey::new("x", "a");
    assert_eq!(key.to_string(), "x/a");
    assert_eq!("x/a".parse::<PodKey>().unwrap(), key);
    assert!("x".parse::<PodKey>().is_err());
    assert!("/a".parse::<PolicyKey>().is_err());
    assert!("x/a/b".parse::<PolicyKey>().is_err());
    assert_eq!(
        serde_json::to_string(&PolicyKey::new("y", "np")).unwrap(),
        "\"y/np\""
    );
}

#[test]
fn namespace_gets_name_label() {
    let ns: core::Namespace = serde_yaml::from_str(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels:\n    ns: x\n",
    )
    .unwrap();
    let ns = namespace_from_k8s(&ns).unwrap();
    assert_eq!(
        ns.labels.get(NAMESPACE_NAME_LABEL).map(String::as_str),
        Some("x")
    );
    assert_eq!(ns.labels.get("ns").map(String::as_str), Some("x"));
    let bare: core::Namespace = serde_yaml::from_str("metadata:\n  name: y\n").unwrap();
    assert_eq!(namespace_from_k8s(&bare).unwrap().labels.len(), 1);
}

#[test]
fn pod_ips_ports_and_node() {
    let pod: core::Pod = serde_yaml::from_str(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec:
  nodeName: node-1
  containers:
  - name: c80
    image: agnhost
    ports:
    - {containerPort: 80, name: serve-80-tcp}
    - {containerPort: 80, name: serve-80-udp, protocol: UDP}
  - name: c81
    image: agnhost
    ports:
    - {containerPort: 81, protocol: SCTP}
status:
  podIP: 10.244.1.10
  podIPs: [{ip: 10.244.1.10}, {ip: "fd00:10:244:1::10"}]
"#,
    )
    .unwrap();
    let pod = pod_from_k8s(&pod).unwrap();
    assert_eq!(pod.key, PodKey::new("x", "a"));
    assert_eq!(
        pod.ips,
        vec![
            "10.244.1.10".parse::<IpAddr>().unwrap(),
            "fd00:10:244:1::10".parse().unwrap()
        ]
    );
    assert_eq!(pod.node.as_deref(), Some("node-1"));
    assert_eq!(pod.named_port("serve-80-tcp", Protocol::Tcp), Some(80));
    assert_eq!(pod.named_port("serve-80-tcp", Protocol::Udp), None);
    assert_eq!(pod.named_port("serve-80-udp", Protocol::Udp), Some(80));
    assert_eq!(
        pod.ports[2],
        ContainerPort {
            name: None,
            number: 81,
            protocol: Protocol::Sctp
        }
    );

    // podIP alone, no node, no namespace (kubectl's default).
    let pod: core::Pod = serde_yaml::from_str(
        "metadata: {name: b}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.1}\n",
    )
    .unwrap();
    let pod = pod_from_k8s(&pod).unwrap();
    assert_eq!(pod.key.to_string(), "default/b");
    assert_eq!(pod.ips, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(pod.node, None);
}

#[test]
fn the_owner_is_the_controller_and_a_deployments_replicaset_is_its_deployment() {
    let owner = |yaml: &str| {
        let pod: core::Pod = serde_yaml::from_str(yaml).unwrap();
        pod_from_k8s(&pod)
            .unwrap()
            .owner
            .map(|o| format!("{}/{}", o.kind, o.name))
    };
    assert_eq!(
        owner(
            r#"
metadata:
  name: web-7d9f8b-x2x4k
  labels: {app: web, pod-template-hash: 7d9f8b}
  ownerReferences:
  - {apiVersion: apps/v1, kind: ReplicaSet, name: web-7d9f8b, uid: r1, controller: true}
"#
        ),
        Some("Deployment/web".into())
    );
    // A ReplicaSet of its own (no matching hash): the ReplicaSet.
    assert_eq!(
        owner(
            r#"
metadata:
  name: rs-abcde
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: rs, uid: r1, controller: true}]
"#
        ),
        Some("ReplicaSet/rs".into())
    );
    // The controller wins over other owners.
    assert_eq!(
        owner(
            r#"
metadata:
  name: db-0
  ownerReferences:
  - {apiVersion: v1, kind: ConfigMap, name: cm, uid: c1}
  - {apiVersion: apps/v1, kind: StatefulSet, name: db, uid: s1, controller: true}
"#
        ),
        Some("StatefulSet/db".into())
    );
    assert_eq!(
        owner(
            "metadata: {name: bare}
"
        ),
        None
    );
}

#[test]
fn host_network_and_finished_pods_have_no_addresses() {
    for extra in [
        "spec: {hostNetwork: true, containers: [{name: c}]}",
        "status: {phase: Succeeded}",
        "status: {phase: Failed}",
    ] {
        let yaml = format!("metadata: {{name: a, namespace: x}}\n{extra}");
        let mut pod: core::Pod = serde_yaml::from_str(&yaml).unwrap();
        let status = pod.status.get_or_insert_with(Default::default);
        status.pod_ip = Some("10.0.0.1".into());
        assert_eq!(
            pod_from_k8s(&pod).unwrap().ips,
            Vec::<IpAddr>::new(),
            "{extra}"
        );
        pod.status.as_mut().unwrap().phase = Some("Running".into());
        if let Some(spec) = pod.spec.as_mut() {
            spec.host_network = None;
        }
        assert_eq!(pod_from_k8s(&pod).unwrap().ips.len(), 1, "{extra}");
    }
}

#[test]
fn policy_types_defaulting() {
    // (spec, ingress, egress)
    let cases = [
        ("podSelector: {}", true, false),
        ("podSelector: {}\ningress: [{}]", true, false),
        ("podSelector: {}\negress: []", true, false),
        ("podSelector: {}\negress: [{}]", true, true),
        (
            "podSelector: {}\ningress: []\negress: [{to: [{podSelector: {}}]}]",
            true,
            true,
        ),
        ("podSelector: {}\npolicyTypes: []\negress: [{}]", true, true),
        ("podSelector: {}\npolicyTypes: [Egress]", false, true),
        (
            "podSelector: {}\npolicyTypes: [Egress]\ningress: [{}]",
            false,
            true,
        ),
        (
            "podSelector: {}\npolicyTypes: [Ingress, Egress]",
            true,
            true,
        ),
        (
            "podSelector: {}\npolicyTypes: [Ingress]\negress: [{}]",
            true,
            false,
        ),
    ];
    for (spec, ingress, egress) in cases {
        let p = policy_with_spec(spec).unwrap();
        assert_eq!(p.types, PolicyTypes { ingress, egress }, "{spec}");
    }
    let p = policy_with_spec("podSelector: {}\npolicyTypes: [Egress]\ningress: [{}]").unwrap();
    assert!(p.effective_ingress().is_empty());
    assert_eq!(
        p.ingress.as_ref().map(Vec::len),
        Some(1),
        "the rule list is kept as written"
    );
}

#[test]
fn rules_peers_and_ports_convert() {
    let p = policy_with_spec(
        r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [b]}]}
  - namespaceSelector: {matchLabels: {ns: y}}
    podSelector: {matchExpressions: [{key: pod, operator: Exists}]}
  - ipBlock: {cidr: 10.244.1.77/16, except: [10.244.2.0/24]}
  ports:
  - port: 80
  - {protocol: UDP, port: serve-81-udp}
  - {protocol: SCTP, port: 30000, endPort: 30010}
  - protocol: UDP
- {}
"#,
    )
    .unwrap();
    let rules = p.ingress.as_ref().unwrap();
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[1], Rule::default());
    assert_eq!(
        rules[0].peers[2],
        PeerSpec::IpBlock {
            cidr: "10.244.0.0/16".parse().unwrap(),
            except: vec!["10.244.2.0/24".parse().unwrap()]
        }
    );
    assert!(matches!(
        &rules[0].peers[1],
        PeerSpec::Selector {
            namespace: Some(_),
            pod: Some(_)
        }
    ));
    assert_eq!(
        rules[0].ports,
        vec![
            PortSpec {
                protocol: Protocol::Tcp,
                port: Some(PortRef::Number(80)),
                end_port: None
            },
            PortSpec {
                protocol: Protocol::Udp,
                port: Some(PortRef::Name("serve-81-udp".into())),
                end_port: None
            },
            PortSpec {
                protocol: Protocol::Sctp,
                port: Some(PortRef::Number(30000)),
                end_port: Some(30010)
            },
            PortSpec {
                protocol: Protocol::Udp,
                port: None,
                end_port: None
            },
        ]
    );
}

#[test]
fn selector_operators() {
    let labels = |pairs: &[(&str, &str)]| -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let key = || "env".to_string();
    let vals = || vec!["prod".to_string(), "stage".to_string()];
    let prod = labels(&[("env", "prod")]);
    let dev = labels(&[("env", "dev")]);
    let none = labels(&[("other", "x")]);
    // (requirement, matches prod, matches dev, matches key absent)
    let cases = [
        (
            Requirement::In {
                key: key(),
                values: vals(),
            },
            true,
            false,
            false,
        ),
        (
            Requirement::NotIn {
                key: key(),
                values: vals(),
            },
            false,
            true,
            true,
        ),
        (Requirement::Exists { key: key() }, true, true, false),
        (Requirement::DoesNotExist { key: key() }, false, false, true),
    ];
    for (req, p, d, n) in cases {
        assert_eq!(
            (req.matches(&prod), req.matches(&dev), req.matches(&none)),
            (p, d, n),
            "{req:?}"
        );
    }
    assert!(LabelSelector::default().matches(&none));
    assert!(LabelSelector::default().matches(&Labels::new()));
    let sel = LabelSelector {
        match_labels: labels(&[("env", "prod")]),
        match_expressions: vec![Requirement::Exists {
            key: "other".into(),
        }],
    };
    assert!(!sel.matches(&prod), "terms are AND-ed");
    assert!(sel.matches(&labels(&[("env", "prod"), ("other", "")])));
}

#[test]
fn invalid_policies_name_the_field() {
    // (spec, field, reason fragment)
    let cases = [
        ("podSelector: {matchExpressions: [{key: a, operator: In}]}", "spec.podSelector.matchExpressions[0].values", "must be specified"),
        ("podSelector: {matchExpressions: [{key: a, operator: NotIn, values: []}]}", "spec.podSelector.matchExpressions[0].values", "must be specified"),
        ("podSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}", "spec.podSelector.matchExpressions[0].values", "may not be specified"),
        ("podSelector: {matchExpressions: [{key: a, operator: DoesNotExist, values: [x]}]}", "spec.podSelector.matchExpressions[0].values", "may not be specified"),
        ("podSelector: {matchExpressions: [{key: a, operator: Equals, values: [x]}]}", "spec.podSelector.matchExpressions[0].operator", "operator"),
        ("podSelector: {matchLabels: {\"bad key!\": x}}", "spec.podSelector.matchLabels", "label key"),
        ("podSelector: {}\ningress: [{from: [{}]}]", "spec.ingress[0].from[0]", "must specify a peer"),
        ("podSelector: {}\negress: [{}, {to: [{podSelector: {}}, {ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]", "spec.egress[1].to[1]", "more than 1 peer"),
        ("podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, namespaceSelector: {}}]}]", "spec.ingress[0].from[0]", "more than 1 peer"),
        ("podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.0.0.0}}]}]", "spec.ingress[0].from[0].ipBlock.cidr", "not a valid CIDR"),
        ("podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]", "spec.ingress[0].from[0].ipBlock.cidr", "not a valid CIDR"),
        ("podSelector: {}\ningress: [{from: [{ipBlock: {cidr: \"\"}}]}]", "spec.ingress[0].from[0].ipBlock.cidr", "required"),
        ("podSelector: {}\ningress: [{from: [{podSelector: {}}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 11.0.0.0/16]}}]}]", "spec.ingress[0].from[1].ipBlock.except[1]", "strict subset"),
        ("podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]}]", "spec.ingress[0].from[0].ipBlock.except[0]", "strict subset"),
        ("podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [\"fd00::/64\"]}}]}]", "spec.ingress[0].from[0].ipBlock.except[0]", "strict subset"),
        ("podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [garbage]}}]}]", "spec.ingress[0].from[0].ipBlock.except[0]", "not a valid CIDR"),
        ("podSelector: {}\ningress: [{ports: [{protocol: ICMP}]}]", "spec.ingress[0].ports[0].protocol", "unsupported value"),
        ("podSelector: {}\ningress: [{ports: [{protocol: tcp}]}]", "spec.ingress[0].ports[0].protocol", "unsupported value"),
        ("podSelector: {}\ningress: [{ports: [{port: 0}]}]", "spec.ingress[0].ports[0].port", "between 1 and 65535"),
        ("podSelector: {}\ningress: [{ports: [{port: 65536}]}]", "spec.ingress[0].ports[0].port", "between 1 and 65535"),
        ("podSelector: {}\ningress: [{ports: [{port: Http}]}]", "spec.ingress[0].ports[0].port", "alpha-numeric"),
        ("podSelector: {}\ningress: [{ports: [{port: \"1234\"}]}]", "spec.ingress[0].ports[0].port", "at least one letter"),
        ("podSelector: {}\ningress: [{ports: [{port: -http}]}]", "spec.ingress[0].ports[0].port", "hyphen"),
        ("podSelector: {}\ningress: [{ports: [{port: my--http}]}]", "spec.ingress[0].ports[0].port", "consecutive"),
        ("podSelector: {}\ningress: [{ports: [{port: a-very-long-port-name}]}]", "spec.ingress[0].ports[0].port", "15 characters"),
        ("podSelector: {}\ningress: [{ports: [{endPort: 90}]}]", "spec.ingress[0].ports[0].endPort", "not specified"),
        ("podSelector: {}\ningress: [{ports: [{port: http, endPort: 90}]}]", "spec.ingress[0].ports[0].endPort", "non-numeric"),
        ("podSelector: {}\ningress: [{ports: [{port: 91, endPort: 90}]}]", "spec.ingress[0].ports[0].endPort", "greater than or equal"),
        ("podSelector: {}\ningress: [{ports: [{port: 91, endPort: 70000}]}]", "spec.ingress[0].ports[0].endPort", "between 1 and 65535"),
        ("podSelector: {}\npolicyTypes: [Ingress, Sideways]", "spec.policyTypes[1]", "unsupported value"),
        ("podSelector: {}\npolicyTypes: [Ingress, Egress, Ingress]", "spec.policyTypes", "at most 2"),
        ("podSelector: {}\negress: [{to: [{namespaceSelector: {matchExpressions: [{key: ns, operator: In}]}}]}]", "spec.egress[0].to[0].namespaceSelector.matchExpressions[0].values", "must be specified"),
    ];
    for (spec, field, reason) in cases {
        let err = policy_with_spec(spec).expect_err(spec);
        assert_eq!(err.kind, "NetworkPolicy");
        assert_eq!(err.name, "x/np");
        assert_eq!(err.field, field, "{spec}");
        assert!(err.reason.contains(reason), "{spec}: {}", err.reason);
    }
}

#[test]
fn valid_edge_cases_are_accepted() {
    let ok = [
        // Host bits set and leading zeros are accepted by the API server's sloppy parser.
        ("podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.1.2.3/8, except: [10.1.2.3/24]}}]}]", "10.0.0.0/8"),
        ("podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 010.0.0.0/8}}]}]", "10.0.0.0/8"),
        ("podSelector: {}\ningress: [{from: [{ipBlock: {cidr: \"fd00::1/64\", except: [\"fd00::/65\"]}}]}]", "fd00::/64"),
        ("podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 0.0.0.0/0}}], ports: [{port: 1, endPort: 65535}, {port: a1-b2}]}]", "0.0.0.0/0"),
    ];
    for (spec, cidr) in ok {
        let p = policy_with_spec(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
        let peer = &p.ingress.as_ref().unwrap()[0].peers[0];
        assert!(
            matches!(peer, PeerSpec::IpBlock { cidr: c, .. } if c.to_string() == cidr),
            "{peer:?}"
        );
    }
    let p = policy_with_spec("podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.1.2.3/8, except: [10.1.2.3/24]}}]}]").unwrap();
    assert!(
        matches!(&p.ingress.unwrap()[0].peers[0], PeerSpec::IpBlock { except, .. } if except[0].to_string() == "10.1.2.0/24")
    );
}

#[test]
fn invalid_pods_and_namespaces_name_the_field() {
    let cases = [
        ("metadata: {name: a, namespace: x}\nstatus: {podIPs: [{ip: 10.0.0.1}, {ip: nope}]}", "status.podIPs[1].ip"),
        ("metadata: {name: a, namespace: x}\nstatus: {podIP: 300.0.0.1}", "status.podIP"),
        ("metadata: {name: a, namespace: x}\nspec: {containers: [{name: c}, {name: d, ports: [{containerPort: 0}]}]}", "spec.containers[1].ports[0].containerPort"),
        ("metadata: {name: a, namespace: x}\nspec: {containers: [{name: c, ports: [{containerPort: 80, protocol: ICMP}]}]}", "spec.containers[0].ports[0].protocol"),
        ("metadata: {name: a, namespace: x}\nspec: {containers: [{name: c, ports: [{containerPort: 80, name: HTTP}]}]}", "spec.containers[0].ports[0].name"),
        ("metadata: {name: a, namespace: x, labels: {pod: \"-bad\"}}", "metadata.labels.pod"),
    ];
    for (yaml, field) in cases {
        let pod: core::Pod = serde_yaml::from_str(yaml).unwrap();
        let err = pod_from_k8s(&pod).expect_err(yaml);
        assert_eq!(
            (err.kind, err.name.as_str(), err.field.as_str()),
            ("Pod", "x/a", field),
            "{yaml}"
        );
    }
    let pod: core::Pod = serde_yaml::from_str("metadata: {namespace: x}").unwrap();
    assert_eq!(pod_from_k8s(&pod).unwrap_err().field, "metadata.name");
    let ns: core::Namespace =
        serde_yaml::from_str("metadata: {name: x, labels: {a: \"b c\"}}").unwrap();
    let err = namespace_from_k8s(&ns).unwrap_err();
    assert_eq!(
        (err.kind, err.field.as_str()),
        ("Namespace", "metadata.labels.a")
    );
    assert!(
        err.to_string()
            .starts_with("Namespace x: metadata.labels.a: "),
        "{err}"
    );
}

#[test]
fn cluster_from_yaml_reads_streams() {
    let cluster = cluster_from_yaml(
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n# comment only\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nstatus: {podIP: 10.244.1.10}\n",
    )
    .unwrap();
    assert_eq!(cluster.namespaces.len(), 1);
    assert_eq!(cluster.pods.len(), 1);
}
