//! Table-driven reachability cases over the base cluster (see `base_cluster_yaml`).

use super::*;

struct Case {
    name: &'static str,
    /// (namespace, name, spec as flow/block YAML)
    policies: &'static [(&'static str, &'static str, &'static str)],
    /// (from, to, IP protocol, port, reachable)
    expect: &'static [(&'static str, &'static str, u8, u16, bool)],
}

fn policies_yaml(policies: &[(&str, &str, &str)]) -> String {
    policies
        .iter()
        .map(|(ns, name, spec)| {
            let spec: String = spec.trim().lines().map(|l| format!("  {l}\n")).collect();
            format!(
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}"
            )
        })
        .collect()
}

const CASES: &[Case] = &[
    Case {
        name: "no policies: everything reachable",
        policies: &[],
        expect: &[("x/a", "x/b", TCP, 80, true), ("z/c", "y/a", UDP, 81, true), ("x/a", "y/a", ICMP, 0, true)],
    },
    Case {
        name: "default deny ingress (policyTypes absent, no rules)",
        policies: &[("x", "deny", "podSelector: {}")],
        expect: &[
            ("x/b", "x/a", TCP, 80, false),
            ("y/a", "x/a", UDP, 81, false),
            ("x/a", "y/a", TCP, 80, true),
            ("y/a", "y/b", TCP, 80, true),
        ],
    },
    Case {
        name: "ingress: [] allows nothing",
        policies: &[("x", "empty", "podSelector: {}\ningress: []")],
        expect: &[("y/a", "x/a", TCP, 80, false), ("x/a", "z/a", TCP, 80, true)],
    },
    Case {
        name: "ingress: [{}] allows everything, every protocol",
        policies: &[("x", "all", "podSelector: {}\ningress: [{}]")],
        expect: &[("y/a", "x/a", TCP, 80, true), ("z/b", "x/c", UDP, 81, true), ("z/b", "x/c", ICMP, 0, true), ("z/b", "x/c", SCTP, 9, true)],
    },
    Case {
        name: "egress present but empty: defaults to Ingress only",
        policies: &[("x", "np", "podSelector: {}\negress: []")],
        expect: &[("x/a", "y/a", TCP, 80, true), ("y/a", "x/a", TCP, 80, false)],
    },
    Case {
        name: "types [Egress]: ingress rules ignored, egress denied",
        policies: &[("x", "np", "podSelector: {}\npolicyTypes: [Egress]\ningress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]")],
        expect: &[("x/a", "y/a", TCP, 80, false), ("x/a", "x/b", TCP, 80, false), ("y/a", "x/a", TCP, 80, true), ("y/c", "x/b", UDP, 80, true)],
    },
    Case {
        name: "both types, egress to same namespace only",
        policies: &[("x", "np", "podSelector: {}\npolicyTypes: [Ingress, Egress]\ningress: [{}]\negress: [{to: [{podSelector: {}}]}]")],
        expect: &[("x/a", "x/b", TCP, 80, true), ("x/a", "y/a", TCP, 80, false), ("y/a", "x/a", TCP, 80, true)],
    },
    Case {
        name: "podSelector peer: own namespace only",
        policies: &[("x", "np", "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]")],
        expect: &[("x/b", "x/a", TCP, 80, true), ("x/c", "x/a", TCP, 80, false), ("y/b", "x/a", TCP, 80, false), ("x/a", "x/b", TCP, 80, true)],
    },
    Case {
        name: "namespaceSelector peer: namespace labels only, never pod labels",
        policies: &[("x", "np", "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]")],
        expect: &[("y/a", "x/a", TCP, 80, true), ("y/c", "x/a", UDP, 81, true), ("z/a", "x/a", TCP, 80, false), ("x/c", "x/a", TCP, 80, false), ("x/b", "x/a", TCP, 80, false)],
    },
    Case {
        name: "namespaceSelector and podSelector in one peer: AND",
        policies: &[("x", "np", "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]")],
        expect: &[("y/b", "x/a", TCP, 80, true), ("y/a", "x/a", TCP, 80, false), ("x/b", "x/a", TCP, 80, false), ("z/b", "x/a", TCP, 80, false)],
    },
    Case {
        name: "namespaceSelector and podSelector in two peers: OR",
        policies: &[("x", "np", "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: b}}}]}]")],
        expect: &[("y/a", "x/a", TCP, 80, true), ("x/b", "x/a", TCP, 80, true), ("z/b", "x/a", TCP, 80, false), ("x/c", "x/a", TCP, 80, false)],
    },
    Case {
        name: "pod selector on a namespace-looking pod label",
        policies: &[("x", "np", "podSelector: {matchLabels: {ns: y}}")],
        expect: &[("y/a", "x/c", TCP, 80, false), ("y/a", "x/a", TCP, 80, true)],
    },
    Case {
        name: "matchExpressions In",
        policies: &[("x", "np", "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}}]}]")],
        expect: &[("x/b", "x/a", TCP, 80, true), ("x/c", "x/a", TCP, 80, true), ("y/b", "x/a", TCP, 80, false)],
    },
    Case {
        name: "matchExpressions NotIn matches pods without the key",
        policies: &[("x", "np", "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{podSelector: {matchExpressions: [{key: tier, operator: NotIn, values: [web]}]}}]}]")],
        expect: &[("x/b", "x/a", TCP, 80, false), ("x/c", "x/a", TCP, 80, true)],
    },
    Case {
        name: "matchExpressions Exists",
        policies: &[("x", "np", "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{podSelector: {matchExpressions: [{key: tier, operator: Exists}]}}]}]")],
        expect: &[("x/b", "x/a", TCP, 80, true), ("x/c", "x/a", TCP, 80, false)],
    },
    Case {
        name: "matchExpressions DoesNotExist",
        policies: &[("x", "np", "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{podSelector: {matchExpressions: [{key: tier, operator: DoesNotExist}]}}]}]")],
        expect: &[("x/b", "x/a", TCP, 80, false), ("x/c", "x/a", TCP, 80, true)],
    },
    Case {
        name: "namespaceSelector matchExpressions NotIn",
        policies: &[("x", "np", "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x, y]}]}}]}]")],
        expect: &[("z/b", "x/a", TCP, 80, true), ("y/b", "x/a", TCP, 80, false), ("x/b", "x/a", TCP, 80, false)],
    },
    Case {
        name: "empty podSelector peer: every pod of the namespace",
        policies: &[("x", "np", "podSelector: {}\ningress: [{from: [{podSelector: {}}]}]")],
        expect: &[("x/b", "x/a", TCP, 80, true), ("x/a", "x/c", UDP, 81, true), ("y/a", "x/a", TCP, 80, false)],
    },
    Case {
        name: "empty namespaceSelector peer: every pod of every namespace",
        policies: &[("x", "np", "podSelector: {}\ningress: [{from: [{namespaceSelector: {}}]}]")],
        expect: &[("x/b", "x/a", TCP, 80, true), ("z/c", "x/a", TCP, 80, true)],
    },
    Case {
        name: "selectors matching nothing allow nothing",
        policies: &[("x", "np", "podSelector: {}\ningress: [{from: [{podSelector: {matchLabels: {pod: nobody}}}, {namespaceSelector: {matchLabels: {ns: nowhere}}}]}]")],
        expect: &[("x/b", "x/a", TCP, 80, false), ("y/a", "x/a", TCP, 80, false)],
    },
    Case {
        name: "policy selecting no pod isolates nothing",
        policies: &[("x", "np", "podSelector: {matchLabels: {pod: nobody}}")],
        expect: &[("y/a", "x/a", TCP, 80, true)],
    },
    Case {
        name: "union of two policies' rules",
        policies: &[
            ("x", "from-b-80", "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]"),
            ("x", "from-c-81", "podSelector: {}\ningress: [{from: [{podSelector: {matchLabels: {pod: c}}}], ports: [{port: 81}]}]"),
        ],
        expect: &[("x/b", "x/a", TCP, 80, true), ("x/b", "x/a", TCP, 81, false), ("x/c", "x/a", TCP, 81, true), ("x/c", "x/a", TCP, 80, false), ("x/c", "x/b", TCP, 81, true), ("x/a", "x/b", TCP, 81, false)],
    },
    Case {
        name: "ipBlock with except: pod addresses inside and outside",
        policies: &[("x", "np", "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.2.0/24, 10.244.3.12/32]}}]}]")],
        expect: &[("x/b", "x/a", TCP, 80, true), ("y/a", "x/a", TCP, 80, false), ("y/c", "x/a", TCP, 80, false), ("z/a", "x/a", TCP, 80, true), ("z/c", "x/a", TCP, 80, false)],
    },
    Case {
        name: "ipBlock of one pod address",
        policies: &[("x", "np", "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{ipBlock: {cidr: 10.244.2.11/32}}]}]")],
        expect: &[("y/b", "x/a", TCP, 80, true), ("y/a", "x/a", TCP, 80, false)],
    },
    Case {
        name: "egress ipBlock",
        policies: &[("x", "np", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress: [{to: [{ipBlock: {cidr: 10.244.2.0/23, except: [10.244.3.0/24]}}], ports: [{port: 80, protocol: UDP}]}]")],
        expect: &[("x/a", "y/b", UDP, 80, true), ("x/a", "y/b", TCP, 80, false), ("x/a", "z/b", UDP, 80, false), ("x/a", "x/b", UDP, 80, false)],
    },
    Case {
        name: "named port resolved on each selected pod (ingress); same name, different numbers",
        policies: &[("x", "np", "podSelector: {}\ningress: [{ports: [{port: http}]}]")],
        expect: &[
            ("y/a", "x/a", TCP, 80, true), ("y/a", "x/a", TCP, 8080, false),
            ("y/a", "x/b", TCP, 8080, true), ("y/a", "x/b", TCP, 80, false),
            ("y/a", "x/c", TCP, 80, false), ("y/a", "x/c", TCP, 8080, false),
        ],
    },
    Case {
        name: "named port with the wrong protocol matches nothing",
        policies: &[("x", "np", "podSelector: {}\ningress: [{ports: [{port: http, protocol: UDP}, {port: serve-81-udp, protocol: TCP}]}]")],
        expect: &[("y/a", "x/a", UDP, 80, false), ("y/a", "x/a", TCP, 80, false), ("y/a", "x/a", TCP, 81, false), ("y/a", "x/a", UDP, 81, false)],
    },
    Case {
        name: "named port per peer (egress)",
        policies: &[("y", "np", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress: [{to: [{namespaceSelector: {matchLabels: {ns: x}}}], ports: [{port: http}, {port: serve-81-udp, protocol: UDP}]}]")],
        expect: &[
            ("y/a", "x/a", TCP, 80, true), ("y/a", "x/a", TCP, 8080, false),
            ("y/a", "x/b", TCP, 8080, true), ("y/a", "x/b", TCP, 80, false),
            ("y/a", "x/c", TCP, 80, false), ("y/a", "x/c", UDP, 81, true),
            ("y/a", "z/a", UDP, 81, false), ("y/a", "y/b", TCP, 80, false),
        ],
    },
    Case {
        name: "endPort range 80-81",
        policies: &[("x", "np", "podSelector: {}\ningress: [{ports: [{port: 80, endPort: 81}]}]")],
        expect: &[("y/a", "x/a", TCP, 79, false), ("y/a", "x/a", TCP, 80, true), ("y/a", "x/a", TCP, 81, true), ("y/a", "x/a", TCP, 82, false), ("y/a", "x/a", UDP, 80, false)],
    },
    Case {
        name: "endPort range 32000-32768",
        policies: &[("x", "np", "podSelector: {}\ningress: [{ports: [{port: 32000, endPort: 32768, protocol: UDP}]}]")],
        expect: &[("y/a", "x/a", UDP, 31999, false), ("y/a", "x/a", UDP, 32000, true), ("y/a", "x/a", UDP, 32500, true), ("y/a", "x/a", UDP, 32768, true), ("y/a", "x/a", UDP, 32769, false), ("y/a", "x/a", TCP, 32000, false)],
    },
    Case {
        name: "endPort range 1-65535",
        policies: &[("x", "np", "podSelector: {}\ningress: [{ports: [{port: 1, endPort: 65535}]}]")],
        expect: &[("y/a", "x/a", TCP, 1, true), ("y/a", "x/a", TCP, 65535, true), ("y/a", "x/a", TCP, 0, false), ("y/a", "x/a", UDP, 80, false), ("y/a", "x/a", ICMP, 0, false)],
    },
    Case {
        name: "protocol defaults to TCP",
        policies: &[("x", "np", "podSelector: {}\ningress: [{ports: [{port: 80}]}]")],
        expect: &[("y/a", "x/a", TCP, 80, true), ("y/a", "x/a", UDP, 80, false), ("y/a", "x/a", SCTP, 80, false), ("y/a", "x/a", TCP, 81, false)],
    },
    Case {
        name: "SCTP entries never match TCP or UDP",
        policies: &[("x", "np", "podSelector: {}\ningress: [{ports: [{port: 80, protocol: SCTP}]}]")],
        expect: &[("y/a", "x/a", SCTP, 80, true), ("y/a", "x/a", TCP, 80, false), ("y/a", "x/a", UDP, 80, false)],
    },
    Case {
        name: "port entry without port: every port of its protocol",
        policies: &[("x", "np", "podSelector: {}\ningress: [{ports: [{protocol: UDP}]}]")],
        expect: &[("y/a", "x/a", UDP, 1234, true), ("y/a", "x/a", UDP, 80, true), ("y/a", "x/a", TCP, 80, false)],
    },
    Case {
        name: "rule without ports allows other protocols; rule with ports does not",
        policies: &[("x", "np", "podSelector: {}\ningress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}, {from: [{podSelector: {matchLabels: {pod: c}}}], ports: [{port: 80}]}]")],
        expect: &[("x/b", "x/a", ICMP, 0, true), ("x/c", "x/a", ICMP, 0, false), ("x/c", "x/a", TCP, 80, true)],
    },
];

#[test]
fn reachability_cases() {
    for case in CASES {
        let (cluster, tables) = compiled(&policies_yaml(case.policies));
        for &(from, to, proto, port, want) in case.expect {
            let got = reach(&cluster, &tables, from, to, proto, port);
            assert_eq!(
                got, want,
                "{}: {from} -> {to} proto {proto} port {port}",
                case.name
            );
        }
    }
}

#[test]
fn ipv4_block_never_matches_ipv6_addresses() {
    let (cluster, tables) = compiled(&policies_yaml(&[
        ("x", "v4", "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{ipBlock: {cidr: 0.0.0.0/0}}]}]"),
        ("x", "v6", "podSelector: {matchLabels: {pod: b}}\ningress: [{from: [{ipBlock: {cidr: \"fd00:10:244:2::/64\"}}]}]"),
    ]));
    let v6_of = |pod: &str| cluster.pods[&pod_key(pod)].ips[1];
    let from = |to: &str, ip: IpAddr| {
        evaluate(&tables, &pod_key(to), Direction::Ingress, ip, TCP, 80).allowed()
    };
    assert!(from("x/a", ipv4_of(&cluster, "y/a")));
    assert!(!from("x/a", v6_of("y/a")));
    assert!(!from("x/a", "2001:db8::1".parse().unwrap()));
    assert!(from("x/b", v6_of("y/a")));
    assert!(!from("x/b", v6_of("z/a")));
    assert!(!from("x/b", ipv4_of(&cluster, "y/a")));
}
