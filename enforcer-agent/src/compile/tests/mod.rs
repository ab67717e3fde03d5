//! Compiler tests: realistic objects in, reachability (through the kernel emulation) and table
//! contents out.

use std::net::IpAddr;

use super::*;
use crate::model::tests::cluster_from_yaml;
use crate::model::{Cluster, PolicyKey};

mod cases;
mod incremental;
mod oracle;
mod oracle_tiers;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const SCTP: u8 = 132;

const HOST_IP: &str = "192.168.1.5";

/// The upstream e2e model: namespaces x, y, z (labels `ns: <name>`) with pods a, b, c, each
/// dual-stack and serving 80/81 over TCP/UDP by name. Variations used by the named-port and
/// selector cases: x/a has `http` = 80, x/b has `http` = 8080 and `tier: web`, x/c has no
/// `http` and the namespace-looking label `ns: y`.
fn base_cluster_yaml() -> String {
    let mut out = String::new();
    for (n, ns) in ["x", "y", "z"].iter().enumerate() {
        let n = n + 1;
        out += &format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    kubernetes.io/metadata.name: {ns}\n    ns: {ns}\n"
        );
        for (h, pod) in ["a", "b", "c"].iter().enumerate() {
            let h = h + 10;
            let (extra_labels, extra_ports) = match (*ns, *pod) {
                ("x", "a") => ("", "    - {name: http, containerPort: 80}\n"),
                ("x", "b") => (
                    "    tier: web\n",
                    "    - {name: http, containerPort: 8080}\n",
                ),
                ("x", "c") => ("    ns: y\n", ""),
                _ => ("", ""),
            };
            out += &format!(
                r#"---
apiVersion: v1
kind: Pod
metadata:
  name: {pod}
  namespace: {ns}
  labels:
    pod: {pod}
{extra_labels}spec:
  containers:
  - name: cont-80-tcp
    image: registry.k8s.io/e2e-test-images/agnhost:2.47
    ports:
    - {{name: serve-80-tcp, containerPort: 80}}
    - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}
    - {{name: serve-81-tcp, containerPort: 81, protocol: TCP}}
    - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}
{extra_ports}status:
  phase: Running
  podIP: 10.244.{n}.{h}
  podIPs:
  - ip: 10.244.{n}.{h}
  - ip: fd00:10:244:{n}::{h}
"#
            );
        }
    }
    out
}

fn node() -> NodeInput {
    NodeInput {
        name: "node-1".into(),
        host_ips: vec![HOST_IP.parse().unwrap()],
        audit: false,
    }
}

/// The base cluster plus `policies` (a YAML stream), compiled for `node()`.
fn compiled(policies: &str) -> (Cluster, Tables) {
    let cluster = cluster_from_yaml(&format!("{}\n---\n{policies}", base_cluster_yaml()))
        .unwrap_or_else(|e| panic!("fixture: {e}"));
    let tables = compile(&cluster, &node());
    (cluster, tables)
}

fn pod_key(s: &str) -> PodKey {
    s.parse().unwrap()
}

fn ipv4_of(cluster: &Cluster, pod: &str) -> IpAddr {
    cluster.pods[&pod_key(pod)].ips[0]
}

/// Whether `from` can open a connection to `to`: egress at the source, ingress at the
/// destination (both local here), each through the kernel emulation.
fn reach(cluster: &Cluster, tables: &Tables, from: &str, to: &str, proto: u8, port: u16) -> bool {
    let (src, dst) = (ipv4_of(cluster, from), ipv4_of(cluster, to));
    evaluate(tables, &pod_key(from), Direction::Egress, dst, proto, port).allowed()
        && evaluate(tables, &pod_key(to), Direction::Ingress, src, proto, port).allowed()
}

#[test]
fn audit_mode_comes_from_the_namespace_label_or_the_node_setting() {
    let (mut cluster, tables) = compiled("");
    assert!(
        tables.endpoints.values().all(|p| !p.audit),
        "off by default"
    );
    let mut all = node();
    all.audit = true;
    assert!(compile(&cluster, &all).endpoints.values().all(|p| p.audit));
    let ns = cluster.namespaces.keys().next().unwrap().clone();
    cluster
        .namespaces
        .get_mut(&ns)
        .unwrap()
        .labels
        .insert(crate::compile::AUDIT_LABEL.into(), "true".into());
    let t = compile(&cluster, &node());
    assert!(!t.endpoints.is_empty());
    for (pod, plan) in &t.endpoints {
        assert_eq!(plan.audit, pod.namespace == ns, "{pod}");
    }
}

#[test]
fn port_range_decomposition() {
    let p = |port, len| PortPrefix { port, len };
    let cases: [(u16, u16, Vec<PortPrefix>); 7] = [
        (80, 80, vec![p(80, 16)]),
        (80, 81, vec![p(80, 15)]),
        (79, 81, vec![p(79, 16), p(80, 15)]),
        (0, 65535, vec![PortPrefix::ALL]),
        (32000, 32768, vec![p(32000, 8), p(32256, 7), p(32768, 16)]),
        (65535, 65535, vec![p(65535, 16)]),
        (
            1,
            65535,
            (0..16).map(|i| p(1 << i, 16 - i as u8)).collect::<Vec<_>>(),
        ),
    ];
    for (lo, hi, want) in cases {
        let got = port_range_prefixes(lo, hi);
        assert_eq!(got, want, "{lo}-{hi}");
    }
    // Exhaustive coverage on a few awkward ranges: each port inside is covered exactly once.
    for (lo, hi) in [
        (1u16, 65535u16),
        (32000, 32768),
        (3, 1027),
        (65534, 65535),
        (0, 0),
    ] {
        let got = port_range_prefixes(lo, hi);
        for port in 0..=u16::MAX {
            let hits = got.iter().filter(|pp| pp.contains(port)).count();
            assert_eq!(
                hits,
                usize::from((lo..=hi).contains(&port)),
                "{lo}-{hi} port {port}"
            );
        }
    }
}

#[test]
fn prefixes_hold_pods_hosts_blocks_and_defaults() {
    let mut cluster = cluster_from_yaml(&format!(
        "{}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np, namespace: z}}\nspec:\n  podSelector: {{}}\n  egress:\n  - to: [{{ipBlock: {{cidr: 10.0.0.1/8, except: [10.1.0.0/16]}}}}]\n",
        base_cluster_yaml()
    ))
    .unwrap();
    // z/c lives on another node: not an endpoint, but its addresses are identities.
    std::sync::Arc::make_mut(cluster.pods.get_mut(&pod_key("z/c")).unwrap()).node =
        Some("node-2".into());
    // A pod without an address yet is not an endpoint.
    let mut pending = (*cluster.pods[&pod_key("z/b")]).clone();
    pending.key = pod_key("z/pending");
    pending.ips.clear();
    cluster.insert_pod(pending);
    let mut node = node();
    node.host_ips.push("10.244.3.10".parse().unwrap()); // also z/a's address: the pod wins

    let tables = compile(&cluster, &node);
    let owner = |s: &str| tables.prefixes.get(&s.parse::<IpNet>().unwrap()).cloned();
    assert_eq!(owner("0.0.0.0/0"), Some(PrefixOwner::Cidr));
    assert_eq!(owner("::/0"), Some(PrefixOwner::Cidr));
    assert_eq!(owner("10.0.0.0/8"), Some(PrefixOwner::Cidr));
    assert_eq!(owner("10.1.0.0/16"), Some(PrefixOwner::Cidr));
    assert_eq!(owner("192.168.1.5/32"), Some(PrefixOwner::Host));
    assert_eq!(
        owner("10.244.3.10/32"),
        Some(PrefixOwner::Pod(pod_key("z/a")))
    );
    assert_eq!(
        owner("10.244.3.12/32"),
        Some(PrefixOwner::Pod(pod_key("z/c")))
    );
    assert_eq!(
        owner("fd00:10:244:3::12/128"),
        Some(PrefixOwner::Pod(pod_key("z/c")))
    );
    assert_eq!(tables.prefixes.len(), 2 + 2 + 1 + 9 * 2);

    let endpoints: Vec<String> = tables.endpoints.keys().map(|k| k.to_string()).collect();
    assert_eq!(
        endpoints,
        ["x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b"]
    );
    let xa = &tables.endpoints[&pod_key("x/a")];
    assert_eq!(xa.ipv4, Some("10.244.1.10".parse().unwrap()));
    assert_eq!(xa.ipv6, Some("fd00:10:244:1::10".parse().unwrap()));
}

#[test]
fn isolation_per_direction() {
    let (_, tables) = compiled(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  ingress: [{}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: both, namespace: x}
spec:
  podSelector: {}
  egress: [{}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: defaulted, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  egress: []
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: other-namespace-selects-nothing-here, namespace: y}
spec:
  podSelector: {matchLabels: {pod: a}}
"#,
    );
    let iso = |pod: &str| {
        let plan = &tables.endpoints[&pod_key(pod)];
        let names = |s: &std::collections::BTreeSet<PolicyKey>| {
            s.iter().map(|k| k.to_string()).collect::<Vec<_>>()
        };
        (
            names(&plan.ingress_isolated_by),
            names(&plan.egress_isolated_by),
        )
    };
    assert_eq!(
        iso("x/a"),
        (
            vec!["x/both".to_string()],
            vec!["x/both".into(), "x/egress-only".into()]
        )
    );
    assert_eq!(
        iso("x/b"),
        (
            vec!["x/both".to_string(), "x/defaulted".into()],
            vec!["x/both".into()]
        )
    );
    assert_eq!(
        iso("y/a"),
        (
            vec!["y/other-namespace-selects-nothing-here".to_string()],
            vec![]
        )
    );
    assert_eq!(iso("y/b"), (vec![], vec![]));
    assert!(!tables.endpoints[&pod_key("z/a")].ingress_isolated());
}

#[test]
fn rule_ids_and_lowest_id_wins() {
    let (cluster, tables) = compiled(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-second, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: c}}}]
  - from: [{podSelector: {matchLabels: {pod: b}}}]
  egress: [{ports: [{port: 53, protocol: UDP}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-first, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
  egress: [{}]
"#,
    );
    let refs: Vec<(String, Direction, usize)> = tables
        .rules
        .iter()
        .map(|r| (r.policy.to_string(), r.direction, r.index))
        .collect();
    assert_eq!(
        refs,
        vec![
            ("x/a-first".to_string(), Direction::Ingress, 0),
            ("x/b-second".to_string(), Direction::Ingress, 0),
            ("x/b-second".to_string(), Direction::Ingress, 1),
            ("x/b-second".to_string(), Direction::Egress, 0),
        ]
    );
    assert_eq!(tables.rule(0), None);
    assert_eq!(tables.rule(4).unwrap().direction, Direction::Egress);
    let from_b = evaluate(
        &tables,
        &pod_key("x/a"),
        Direction::Ingress,
        ipv4_of(&cluster, "x/b"),
        TCP,
        80,
    );
    assert!(
        matches!(from_b.decision, Decision::Rule { id: 1, .. }),
        "{from_b:?}"
    );
    let from_c = evaluate(
        &tables,
        &pod_key("x/a"),
        Direction::Ingress,
        ipv4_of(&cluster, "x/c"),
        TCP,
        80,
    );
    assert!(
        matches!(from_c.decision, Decision::Rule { id: 2, .. }),
        "{from_c:?}"
    );
    let dns = evaluate(
        &tables,
        &pod_key("x/a"),
        Direction::Egress,
        "8.8.8.8".parse().unwrap(),
        UDP,
        53,
    );
    assert!(
        matches!(dns.decision, Decision::Rule { id: 4, .. }),
        "{dns:?}"
    );
    let denied = evaluate(
        &tables,
        &pod_key("x/a"),
        Direction::Ingress,
        ipv4_of(&cluster, "y/b"),
        TCP,
        80,
    );
    assert_eq!(denied.decision, Decision::Denied);
    assert_eq!(denied.isolated_by.len(), 2);
    assert_eq!(denied.peer_owner, Some(PrefixOwner::Pod(pod_key("y/b"))));
    // Deterministic: compiling twice gives the same tables.
    assert_eq!(compile(&cluster, &node()), tables);
}

#[test]
fn host_is_always_allowed_and_not_local_is_reported() {
    let (_, tables) = compiled(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress]}\n",
    );
    let host: IpAddr = HOST_IP.parse().unwrap();
    for dir in [Direction::Ingress, Direction::Egress] {
        let v = evaluate(&tables, &pod_key("x/a"), dir, host, TCP, 10250);
        assert_eq!(v.decision, Decision::Host);
        let v = evaluate(
            &tables,
            &pod_key("x/a"),
            dir,
            "192.168.1.6".parse().unwrap(),
            TCP,
            10250,
        );
        assert_eq!(v.decision, Decision::Denied);
    }
    let v = evaluate(&tables, &pod_key("w/a"), Direction::Ingress, host, TCP, 80);
    assert_eq!(v.decision, Decision::NotLocal);
    let v = evaluate(&tables, &pod_key("y/a"), Direction::Ingress, host, TCP, 80);
    assert_eq!(v.decision, Decision::NotIsolated);
}

#[test]
fn egress_named_ports_are_per_peer_entries() {
    let (cluster, tables) = compiled(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: to-http, namespace: y}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress:
  - ports: [{port: http}]
"#,
    );
    let plan = &tables.endpoints[&pod_key("y/a")];
    let mut entries: Vec<(String, PortPrefix)> = plan
        .allows
        .keys()
        .map(|a| match a.peer {
            Peer::Prefix(p) => (p.to_string(), a.ports),
            Peer::Any => panic!("an egress named port has no any-peer entry: {a:?}"),
        })
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        vec![
            ("10.244.1.10/32".to_string(), PortPrefix::single(80)),
            ("10.244.1.11/32".to_string(), PortPrefix::single(8080)),
            ("fd00:10:244:1::10/128".to_string(), PortPrefix::single(80)),
            (
                "fd00:10:244:1::11/128".to_string(),
                PortPrefix::single(8080)
            ),
        ]
    );
    assert!(reach(&cluster, &tables, "y/a", "x/a", TCP, 80));
    let external = evaluate(
        &tables,
        &pod_key("y/a"),
        Direction::Egress,
        "1.1.1.1".parse().unwrap(),
        TCP,
        80,
    );
    assert!(!external.allowed());
}

#[test]
fn policy_in_namespace_without_object_and_pods_elsewhere() {
    // A standalone manifest without Namespace objects: namespaceSelector still sees the
    // kubernetes.io/metadata.name label the API server would have set.
    let cluster = cluster_from_yaml(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: solo, labels: {pod: a}}
status: {podIP: 10.9.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: other}
status: {podIP: 10.9.0.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: solo}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: other}}}]
"#,
    )
    .unwrap();
    let tables = compile(&cluster, &node());
    let from = |ip: &str| {
        evaluate(
            &tables,
            &pod_key("solo/a"),
            Direction::Ingress,
            ip.parse().unwrap(),
            TCP,
            80,
        )
        .allowed()
    };
    assert!(from("10.9.0.2"));
    assert!(!from("10.9.0.3"));
}

#[test]
fn service_frontends_per_family_port_and_node() {
    let services = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: y}
spec:
  clusterIPs: [10.96.2.10, "fd00:10:96:2::10"]
  selector: {pod: a}
  ports: [{name: http, port: 80, targetPort: serve-80-tcp}, {name: dns, port: 53, protocol: UDP, targetPort: 81}, {name: s, port: 9, protocol: SCTP}]
---
apiVersion: v1
kind: Service
metadata: {name: local, namespace: z}
spec: {clusterIP: 10.96.3.10, selector: {pod: b}, internalTrafficPolicy: Local, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: z}
spec: {clusterIP: None, selector: {pod: b}, ports: [{port: 80}]}
"#;
    let (_, tables) = compiled(services);
    let fe = |ip: &str, port: u16, proto: Proto| {
        tables
            .services
            .get(&services::FrontendAddr {
                ip: ip.parse().unwrap(),
                port,
                proto,
            })
            .unwrap_or_else(|| panic!("frontend {ip}:{port}"))
    };
    let http = fe("10.96.2.10", 80, Proto::Tcp);
    assert_eq!(http.service.to_string(), "y/web");
    assert_eq!(
        http.backends
            .iter()
            .map(|b| (b.ip, b.port))
            .collect::<Vec<_>>(),
        vec![("10.244.2.10".parse().unwrap(), 80)],
        "the named target port of y/a"
    );
    let v6 = fe("fd00:10:96:2::10", 53, Proto::Udp);
    assert_eq!(
        v6.backends[0].ip,
        "fd00:10:244:2::10".parse::<IpAddr>().unwrap()
    );
    assert_eq!(v6.backends[0].port, 81);
    assert_eq!(
        tables.services.len(),
        5,
        "SCTP and headless are not translated: {:?}",
        tables.services.keys().collect::<Vec<_>>()
    );
    // Pods without a node are on every node, so z/b backs z/local here; on a named node
    // elsewhere it would not.
    assert_eq!(fe("10.96.3.10", 80, Proto::Tcp).backends.len(), 1);
    let mut cluster =
        cluster_from_yaml(&format!("{}\n---\n{services}", base_cluster_yaml())).unwrap();
    std::sync::Arc::make_mut(cluster.pods.get_mut(&pod_key("z/b")).unwrap()).node =
        Some("node-2".into());
    let elsewhere = compile(&cluster, &node());
    let local = &elsewhere.services[&services::FrontendAddr {
        ip: "10.96.3.10".parse().unwrap(),
        port: 80,
        proto: Proto::Tcp,
    }];
    assert!(
        local.backends.is_empty(),
        "internalTrafficPolicy Local: none on this node"
    );
}
