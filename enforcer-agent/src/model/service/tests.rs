use std::net::IpAddr;

use super::*;
use crate::model::{pod_from_k8s, Cluster};

fn pod(yaml: &str) -> Pod {
    pod_from_k8s(&serde_yaml::from_str(yaml).unwrap()).unwrap()
}

fn service(yaml: &str) -> Service {
    convert::service_from_k8s(&serde_yaml::from_str(yaml).unwrap()).unwrap()
}

fn service_err(yaml: &str) -> String {
    convert::service_from_k8s(&serde_yaml::from_str(yaml).unwrap())
        .unwrap_err()
        .to_string()
}

fn slice(yaml: &str) -> EndpointSlice {
    convert::endpoint_slice_from_k8s(&serde_yaml::from_str(yaml).unwrap()).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Two backends whose named port `api` is 8080 on one and 9090 on the other, a third pod
/// without that name, one pod that is not ready and one of another namespace.
fn cluster() -> Cluster {
    let mut c = Cluster::default();
    for p in [
        "metadata: {name: a, namespace: y, labels: {app: api}}
spec: {nodeName: node-a, containers: [{name: c, ports: [{containerPort: 8080, name: api}]}]}
status: {podIPs: [{ip: 10.244.2.10}, {ip: 'fd00:10:244:2::10'}]}",
        "metadata: {name: b, namespace: y, labels: {app: api}}
spec: {nodeName: node-b, containers: [{name: c, ports: [{containerPort: 9090, name: api}, {containerPort: 53, name: dns, protocol: UDP}]}]}
status: {podIPs: [{ip: 10.244.2.11}]}",
        "metadata: {name: c, namespace: y, labels: {app: api}}
spec: {nodeName: node-b, containers: [{name: c, ports: [{containerPort: 7070, name: other}]}]}
status: {podIPs: [{ip: 10.244.2.12}]}",
        "metadata: {name: d, namespace: y, labels: {app: api}}
spec: {nodeName: node-a, containers: [{name: c, ports: [{containerPort: 8080, name: api}]}]}
status: {podIPs: [{ip: 10.244.2.13}], conditions: [{type: Ready, status: 'False'}]}",
        "metadata: {name: a, namespace: z, labels: {app: api}}
spec: {nodeName: node-a, containers: [{name: c, ports: [{containerPort: 8080, name: api}]}]}
status: {podIPs: [{ip: 10.244.3.10}]}",
    ] {
        c.insert_pod(pod(p));
    }
    c
}

fn backends(
    c: &Cluster,
    svc: &Service,
    port: u16,
    proto: Protocol,
    f: IpFamily,
) -> Vec<(IpAddr, u16)> {
    let index = EndpointIndex::new(c);
    index
        .endpoints(svc, svc.port(port, proto).unwrap(), f)
        .into_iter()
        .map(|b| (b.ip, b.port))
        .collect()
}

#[test]
fn a_named_target_port_resolves_per_backend_and_skips_pods_without_it() {
    let c = cluster();
    let svc = service(
        "metadata: {name: api, namespace: y}
spec: {clusterIP: 10.96.2.10, selector: {app: api}, ports: [{port: 80, targetPort: api}]}",
    );
    assert_eq!(
        backends(&c, &svc, 80, Protocol::Tcp, IpFamily::V4),
        vec![(ip("10.244.2.10"), 8080), (ip("10.244.2.11"), 9090)],
        "not y/c (no port named api), not y/d (not ready), not z/a (other namespace)"
    );
    assert_eq!(
        backends(&c, &svc, 80, Protocol::Tcp, IpFamily::V6),
        vec![(ip("fd00:10:244:2::10"), 8080)]
    );
}

#[test]
fn a_named_target_port_matches_the_protocol_too() {
    let c = cluster();
    let svc = service(
        "metadata: {name: dns, namespace: y}
spec: {clusterIP: 10.96.2.11, selector: {app: api}, ports: [{name: a, port: 53, targetPort: dns, protocol: UDP}, {name: b, port: 53, targetPort: dns}]}",
    );
    assert_eq!(
        backends(&c, &svc, 53, Protocol::Udp, IpFamily::V4),
        vec![(ip("10.244.2.11"), 53)]
    );
    assert!(backends(&c, &svc, 53, Protocol::Tcp, IpFamily::V4).is_empty());
}

#[test]
fn a_numeric_target_port_defaults_to_the_port() {
    let svc = service(
        "metadata: {name: web, namespace: y}
spec: {clusterIP: 10.96.2.12, selector: {app: api}, ports: [{port: 8080}]}",
    );
    assert_eq!(svc.ports[0].target, TargetPort::Number(8080));
    assert_eq!(
        backends(&cluster(), &svc, 8080, Protocol::Tcp, IpFamily::V4).len(),
        3
    );
}

#[test]
fn a_selectorless_service_uses_its_slices_ports_and_ready_endpoints() {
    let mut c = cluster();
    let svc = service(
        "metadata: {name: ext, namespace: y}
spec: {clusterIP: 10.96.2.13, ports: [{name: http, port: 80, targetPort: 1234}]}",
    );
    assert!(svc.selector.is_none());
    c.insert_endpoint_slice(slice(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-1, namespace: y, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.244.3.10]
  nodeName: node-a
- addresses: [10.244.2.12]
  conditions: {ready: false}
- addresses: [192.0.2.7]",
    ));
    // A slice of another Service, and one whose port name does not match.
    c.insert_endpoint_slice(slice(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: other, namespace: y, labels: {kubernetes.io/service-name: other}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.244.2.10]}]",
    ));
    c.insert_endpoint_slice(slice(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-2, namespace: y, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
ports: [{name: metrics, port: 9100}]
endpoints: [{addresses: [10.244.2.11]}]",
    ));
    let index = EndpointIndex::new(&c);
    let eps = index.endpoints(&svc, &svc.ports[0], IpFamily::V4);
    assert_eq!(
        eps.iter().map(|b| (b.ip, b.port)).collect::<Vec<_>>(),
        vec![(ip("10.244.3.10"), 8080), (ip("192.0.2.7"), 8080)],
        "the slice port (8080), not the Service's targetPort; not the unready endpoint"
    );
    assert_eq!(
        eps[0].pod,
        Some(PodKey::new("z", "a")),
        "a pod of another namespace"
    );
    assert_eq!(eps[1].pod, None);
}

#[test]
fn internal_traffic_local_keeps_the_clients_node() {
    let c = cluster();
    let svc = service(
        "metadata: {name: api, namespace: y}
spec: {clusterIP: 10.96.2.10, selector: {app: api}, internalTrafficPolicy: Local, ports: [{port: 80, targetPort: api}]}",
    );
    let index = EndpointIndex::new(&c);
    let eps = index.endpoints(&svc, &svc.ports[0], IpFamily::V4);
    let on = |node| {
        candidates(&svc, &eps, Some(node))
            .iter()
            .map(|b| b.ip)
            .collect::<Vec<_>>()
    };
    assert_eq!(on("node-a"), vec![ip("10.244.2.10")]);
    assert_eq!(on("node-b"), vec![ip("10.244.2.11")]);
    assert!(on("node-c").is_empty(), "no fallback to other nodes");
}

#[test]
fn session_affinity_defaults_its_timeout() {
    let s = service(
        "metadata: {name: s, namespace: y}
spec: {clusterIP: 10.96.0.1, sessionAffinity: ClientIP, ports: [{port: 80}]}",
    );
    assert_eq!(s.affinity_timeout, Some(10_800));
    let none = service(
        "metadata: {name: s, namespace: y}
spec: {clusterIP: 10.96.0.1, sessionAffinity: None, ports: [{port: 80}]}",
    );
    assert_eq!(none.affinity_timeout, None);
}

#[test]
fn headless_and_dual_stack_addresses() {
    let headless = service(
        "metadata: {name: h, namespace: y}
spec: {clusterIP: None, clusterIPs: [None], selector: {app: api}, ports: [{port: 80}]}",
    );
    assert!(headless.cluster_ips.is_empty());
    let dual = service(
        "metadata: {name: d, namespace: y}
spec: {clusterIP: 'fd00:10:96:2::10', clusterIPs: ['fd00:10:96:2::10', 10.96.2.10], ipFamilies: [IPv6, IPv4], selector: {app: api}, ports: [{port: 80}]}",
    );
    assert_eq!(dual.cluster_ip(IpFamily::V4), Some(ip("10.96.2.10")));
    assert_eq!(dual.cluster_ip(IpFamily::V6), Some(ip("fd00:10:96:2::10")));
}

#[test]
fn invalid_services_name_the_field() {
    for (yaml, field) in [
        (
            "metadata: {name: s, namespace: y}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}, {port: 81}]}",
            "spec.ports[0].name",
        ),
        (
            "metadata: {name: s, namespace: y}
spec: {clusterIP: 10.96.0.1, ports: [{name: a, port: 80}, {name: b, port: 80}]}",
            "spec.ports[1]",
        ),
        (
            "metadata: {name: s, namespace: y}
spec: {clusterIP: 10.96.0.1, ports: [{port: 0}]}",
            "spec.ports[0].port",
        ),
        (
            "metadata: {name: s, namespace: y}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80, targetPort: Bad_Name}]}",
            "spec.ports[0].targetPort",
        ),
        (
            "metadata: {name: s, namespace: y}
spec: {clusterIPs: [10.96.0.1, 10.96.0.2], ports: [{port: 80}]}",
            "spec.clusterIPs[1]",
        ),
        (
            "metadata: {name: s, namespace: y}
spec: {clusterIP: 10.96.0.1, internalTrafficPolicy: Nearby, ports: [{port: 80}]}",
            "spec.internalTrafficPolicy",
        ),
        (
            "metadata: {name: s, namespace: y}
spec: {clusterIP: 10.96.0.999, ports: [{port: 80}]}",
            "spec.clusterIPs[0]",
        ),
        (
            "metadata: {name: s, namespace: y}
spec: {clusterIP: 10.96.0.1, sessionAffinity: Cookie, ports: [{port: 80}]}",
            "spec.sessionAffinity",
        ),
        (
            "metadata: {name: s, namespace: y}
spec: {clusterIP: 10.96.0.1, sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}, ports: [{port: 80}]}",
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        ),
    ] {
        let err = service_err(yaml);
        assert!(err.contains(field), "{err} should name {field}");
    }
}

#[test]
fn slices_of_the_wrong_family_or_fqdn() {
    let err = convert::endpoint_slice_from_k8s(
        &serde_yaml::from_str(
            "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s, namespace: y}
addressType: IPv6
endpoints: [{addresses: [10.0.0.1]}]",
        )
        .unwrap(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("endpoints[0].addresses[0]"),
        "{err}"
    );
    let fqdn = convert::endpoint_slice_from_k8s(
        &serde_yaml::from_str(
            "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s, namespace: y}
addressType: FQDN
endpoints: [{addresses: [example.internal]}]",
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(fqdn.family, None);
    assert!(fqdn.endpoints.is_empty());
}
