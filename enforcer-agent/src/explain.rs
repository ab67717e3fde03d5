//! `enforcer explain`: would this connection be allowed, and by which rules (or why not)? Both
//! sides are computed from the same compiled tables the kernel reads (the source pod's egress
//! on its node, the destination pod's ingress on its node), with the kernel's own lookup order.
//! A connection to a Service is explained for each backend the client's node may send it to,
//! at the backend's target port, as the datapath judges it.

use std::net::IpAddr;

use serde::Serialize;

use crate::compile::{compile, evaluate, Decision, Direction, NodeInput, Verdict};
use crate::model::service::{candidates, EndpointIndex, IpFamily};
use crate::model::{Cluster, PodKey, Protocol, ServiceKey};

/// The key of [`Cluster::nodes`] under which addresses that belong to every node are kept
/// (`enforcer explain --node-ip`, for manifests without Node objects).
pub const ANY_NODE: &str = "";

/// One end of the connection to explain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    Pod(PodKey),
    Ip(IpAddr),
}

/// Why one side allows or denies.
#[derive(Clone, Debug, Serialize)]
pub struct Side {
    /// The pod whose policy this side is (`None`: not a pod, nothing enforced there).
    pub pod: Option<String>,
    pub allowed: bool,
    pub verdict: Option<Verdict>,
    /// The rule that allows it, as `policy direction[index]`.
    pub rule: Option<String>,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    pub allowed: bool,
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: String,
    /// The source's egress.
    pub egress: Side,
    /// The destination's ingress.
    pub ingress: Side,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExplainError {
    #[error("no pod {0} in the cluster")]
    NoSuchPod(String),
    #[error("pod {pod} has no {family} address")]
    NoAddress { pod: String, family: &'static str },
    #[error("no Service {0} in the cluster")]
    NoSuchService(String),
    #[error("Service {service} has no {family} ClusterIP")]
    NoClusterIp {
        service: String,
        family: &'static str,
    },
    #[error("Service {service} has no port {port}/{protocol}")]
    NoServicePort {
        service: String,
        port: u16,
        protocol: String,
    },
}

fn pod_ip(cluster: &Cluster, pod: &PodKey, v6: bool) -> Result<IpAddr, ExplainError> {
    let p = cluster
        .pods
        .get(pod)
        .ok_or_else(|| ExplainError::NoSuchPod(pod.to_string()))?;
    p.ips
        .iter()
        .copied()
        .find(|ip| ip.is_ipv6() == v6)
        .ok_or(ExplainError::NoAddress {
            pod: pod.to_string(),
            family: if v6 { "IPv6" } else { "IPv4" },
        })
}

/// The tables compiled for each node an explanation looks at (a Service's backends share
/// nodes: each is compiled once).
type NodeTables = std::collections::BTreeMap<String, crate::compile::Tables>;

/// The tables the kernel of `node` reads ("" for a pod without a node).
fn tables_for<'t>(
    cluster: &Cluster,
    cache: &'t mut NodeTables,
    node: &str,
) -> &'t crate::compile::Tables {
    cache
        .entry(node.to_owned())
        .or_insert_with(|| compile_for(cluster, node))
}

fn compile_for(cluster: &Cluster, node: &str) -> crate::compile::Tables {
    // The pod's node is always allowed to and from its pods (kubelet probes): its addresses
    // from its Node object, and those given for every node. A pod without a node (standalone
    // manifests) is on whichever node reads it: every known node address counts.
    let host_ips: Vec<IpAddr> = if node.is_empty() {
        cluster.nodes.values().flatten().copied().collect()
    } else {
        [node, ANY_NODE]
            .iter()
            .filter_map(|n| cluster.nodes.get(*n))
            .flatten()
            .copied()
            .collect()
    };
    compile(
        cluster,
        &NodeInput {
            name: node.to_owned(),
            host_ips,
            audit: false,
        },
    )
}

/// One pod's side: the tables of the pod's node, evaluated as the kernel would.
fn side(
    cluster: &Cluster,
    cache: &mut NodeTables,
    pod: &PodKey,
    direction: Direction,
    peer: IpAddr,
    proto: u8,
    port: u16,
) -> Side {
    let node = cluster
        .pods
        .get(pod)
        .and_then(|p| p.node.clone())
        .unwrap_or_default();
    let tables = tables_for(cluster, cache, &node);
    let v = evaluate(tables, pod, direction, peer, proto, port);
    let dir = match direction {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    };
    // An entry a staged policy would change: the rule in force, and the staged effect.
    let id_of = |d: &Decision| match d {
        Decision::Rule { id, .. } | Decision::DeniedBy { id, .. } => *id,
        _ => 0,
    };
    let staged = tables.staged_entry(id_of(&v.decision)).cloned();
    let mut decision = v.decision.clone();
    if let Some(e) = &staged {
        let enforced = e
            .enforced
            .as_ref()
            .and_then(|r| tables.rules.iter().position(|x| x == r));
        let id = enforced.map_or(0, |i| i as u32 + 1);
        decision = match decision {
            Decision::Rule { allow, .. } => Decision::Rule { id, allow },
            Decision::DeniedBy { entry, .. } => Decision::DeniedBy { id, entry },
            other => other,
        };
    }
    let (rule, mut reason) = match &decision {
        Decision::Rule { id: 0, .. } => (None, no_tier_decides(pod, dir, &v)),
        Decision::Rule { id, .. } => {
            let r = tables.rule(*id).map(|r| r.to_string());
            (
                r.clone(),
                format!("allowed by {}", r.unwrap_or_else(|| format!("rule {id}"))),
            )
        }
        Decision::DeniedBy { id: 0, .. } => (
            None,
            format!(
                "{pod} is isolated for {dir} by {} and no rule allows {peer} on this port{}",
                names(&v.isolated_by),
                audit_note(tables, pod)
            ),
        ),
        Decision::DeniedBy { id, .. } => {
            let r = tables.rule(*id).map(|r| r.to_string());
            (
                r.clone(),
                format!(
                    "denied by {}{}",
                    r.unwrap_or_else(|| format!("rule {id}")),
                    audit_note(tables, pod)
                ),
            )
        }
        Decision::Unmatched => (None, no_tier_decides(pod, dir, &v)),
        Decision::NotIsolated => (
            None,
            format!(
                "{pod} is not isolated for {dir}: no policy of type {} selects it",
                capital(dir)
            ),
        ),
        Decision::Host => (None, "the peer is the pod's node: always allowed".into()),
        Decision::NotLocal => (
            None,
            format!("{pod} has no address: nothing is enforced for it"),
        ),
        Decision::Denied => (
            None,
            format!(
                "{pod} is isolated for {dir} by {} and no rule allows {peer} on this port{}",
                names(&v.isolated_by),
                audit_note(tables, pod)
            ),
        ),
    };
    if let Some(e) = &staged {
        let would = if e.would_allow { "allow" } else { "deny" };
        reason.push_str(&match &e.rule {
            Some(r) => format!("; staged {r} would {would} it"),
            None => format!(
                "; staged {} would {would} it (it isolates {pod} and none of its rules allows this)",
                e.policy
            ),
        });
    }
    Side {
        pod: Some(pod.to_string()),
        allowed: v.allowed(),
        verdict: Some(v),
        rule,
        reason,
    }
}

fn names<T: std::fmt::Display>(keys: &std::collections::BTreeSet<T>) -> String {
    keys.iter()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The namespace label, visible here; `--policy-audit-mode` is the agent's.
fn audit_note(tables: &crate::compile::Tables, pod: &PodKey) -> &'static str {
    if tables.endpoints.get(pod).is_some_and(|p| p.audit) {
        " (its namespace is in audit mode: the flow passes, reported as audit)"
    } else {
        ""
    }
}

/// A direction with cluster policies where no tier decided: the Kubernetes default.
fn no_tier_decides(pod: &PodKey, dir: &str, v: &crate::compile::Verdict) -> String {
    if v.tiered_by.is_empty() {
        return format!("no policy in force isolates {pod} for {dir}: allowed by default");
    }
    format!(
        "no rule of {} decides and no NetworkPolicy isolates {pod} for {dir}: allowed by default",
        names(&v.tiered_by)
    )
}

fn capital(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn outside(what: &str) -> Side {
    Side {
        pod: None,
        allowed: true,
        verdict: None,
        rule: None,
        reason: format!("{what} is not a pod: no policy applies on that side"),
    }
}

/// Explains a new connection `from` → `to` on `port`/`proto` (IP protocol number).
pub fn explain(
    cluster: &Cluster,
    from: &End,
    to: &End,
    proto: u8,
    port: u16,
    v6: bool,
) -> Result<Explanation, ExplainError> {
    explain_cached(cluster, &mut NodeTables::new(), from, to, proto, port, v6)
}

fn explain_cached(
    cluster: &Cluster,
    cache: &mut NodeTables,
    from: &End,
    to: &End,
    proto: u8,
    port: u16,
    v6: bool,
) -> Result<Explanation, ExplainError> {
    let ip_of = |e: &End| match e {
        End::Pod(p) => pod_ip(cluster, p, v6),
        End::Ip(ip) => Ok(*ip),
    };
    let (src, dst) = (ip_of(from)?, ip_of(to)?);
    let name = |e: &End| match e {
        End::Pod(p) => p.to_string(),
        End::Ip(ip) => ip.to_string(),
    };
    let egress = match from {
        End::Pod(p) => side(cluster, cache, p, Direction::Egress, dst, proto, port),
        End::Ip(ip) => outside(&ip.to_string()),
    };
    let ingress = match to {
        End::Pod(p) => side(cluster, cache, p, Direction::Ingress, src, proto, port),
        End::Ip(ip) => outside(&ip.to_string()),
    };
    Ok(Explanation {
        allowed: egress.allowed && ingress.allowed,
        from: name(from),
        to: name(to),
        port,
        protocol: enforcer_common::proto::Display(proto).to_string(),
        egress,
        ingress,
    })
}

/// A connection to a Service, explained for each backend it may reach.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceExplanation {
    pub from: String,
    pub service: String,
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: String,
    /// `allowed` (every backend), `denied` (none), `depends_on_backend` (the datapath picks
    /// one at random per connection), or `no_endpoints` (the connection fails).
    pub verdict: &'static str,
    /// One per backend the client's node may send the connection to, at its target port.
    pub backends: Vec<Explanation>,
}

/// Explains a new connection of pod `from` to Service `svc` on its port `port`/`proto`.
pub fn explain_service(
    cluster: &Cluster,
    from: &PodKey,
    svc: &ServiceKey,
    proto: u8,
    port: u16,
    v6: bool,
) -> Result<ServiceExplanation, ExplainError> {
    let family = if v6 { IpFamily::V6 } else { IpFamily::V4 };
    let client = cluster
        .pods
        .get(from)
        .ok_or_else(|| ExplainError::NoSuchPod(from.to_string()))?;
    let client_ip = pod_ip(cluster, from, v6)?;
    let service = cluster
        .services
        .get(svc)
        .ok_or_else(|| ExplainError::NoSuchService(svc.to_string()))?;
    let ip = service
        .cluster_ip(family)
        .ok_or(ExplainError::NoClusterIp {
            service: svc.to_string(),
            family: family.as_str(),
        })?;
    let protocol = enforcer_common::proto::Display(proto).to_string();
    let sp = Protocol::from_k8s(&protocol)
        .and_then(|p| service.port(port, p))
        .ok_or_else(|| ExplainError::NoServicePort {
            service: svc.to_string(),
            port,
            protocol: protocol.clone(),
        })?;
    let endpoints = EndpointIndex::new(cluster).endpoints(service, sp, family);
    let mut backends = Vec::new();
    let mut cache = NodeTables::new();
    for b in candidates(service, &endpoints, client.node.as_deref()) {
        let to = match &b.pod {
            Some(p) => End::Pod(p.clone()),
            None => End::Ip(b.ip),
        };
        let from = End::Pod(from.clone());
        let mut e = explain_cached(cluster, &mut cache, &from, &to, proto, b.port, v6)?;
        if b.ip == client_ip {
            // The datapath hands a hairpin connection straight back to the pod, from the
            // Service address: only the pod's egress applies (kube-proxy would masquerade it
            // to the node's address, which the pod's ingress always allows).
            e.ingress = Side {
                pod: e.ingress.pod.clone(),
                allowed: true,
                verdict: None,
                rule: None,
                reason: "hairpin: the pod reaches itself through the Service; its ingress policy does not apply".into(),
            };
            e.allowed = e.egress.allowed;
        }
        backends.push(e);
    }
    let allowed = backends.iter().filter(|e| e.allowed).count();
    let verdict = match (backends.len(), allowed) {
        (0, _) => "no_endpoints",
        (n, a) if a == n => "allowed",
        (_, 0) => "denied",
        _ => "depends_on_backend",
    };
    Ok(ServiceExplanation {
        from: from.to_string(),
        service: svc.to_string(),
        ip,
        port,
        protocol,
        verdict,
        backends,
    })
}

/// A Service explanation for humans.
pub fn render_service(e: &ServiceExplanation) -> String {
    let n = e.backends.len();
    let allowed = e.backends.iter().filter(|b| b.allowed).count();
    let head = match e.verdict {
        "allowed" => "ALLOWED",
        "denied" => "DENIED",
        "no_endpoints" => "FAILS",
        _ => "DEPENDS",
    };
    let mut out = format!(
        "{head} {} -> service {} ({}/{}): ",
        e.from,
        e.service,
        fmt_ip_port(e.ip, e.port),
        e.protocol
    );
    if n == 0 {
        out += "no ready endpoint for this client's node: the connection fails\n";
        return out;
    }
    out += &format!("{allowed} of {n} backends allowed\n");
    for b in &e.backends {
        out += &format!("  backend {} port {}\n", b.to, b.port);
        for line in render(b).lines().skip(1) {
            out += &format!("  {line}\n");
        }
    }
    out
}

fn fmt_ip_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// The explanation for humans.
pub fn render(e: &Explanation) -> String {
    let mark = |ok: bool| if ok { "ALLOWED" } else { "DENIED " };
    format!(
        "{} {} -> {} :{}/{}\n  egress  of {:<20} {}  {}\n  ingress of {:<20} {}  {}\n",
        if e.allowed { "ALLOWED" } else { "DENIED" },
        e.from,
        e.to,
        e.port,
        e.protocol,
        e.egress.pod.as_deref().unwrap_or(&e.from),
        mark(e.egress.allowed),
        e.egress.reason,
        e.ingress.pod.as_deref().unwrap_or(&e.to),
        mark(e.ingress.allowed),
        e.ingress.reason,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::manifests::parse_file;
    use crate::source::objects::cluster_of;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: prod, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, ports: [{containerPort: 8080, name: http}]}]}
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: prod, labels: {app: db}}
spec: {nodeName: n2, containers: [{name: c}]}
status: {podIP: 10.0.2.1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-in, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: db}}}], ports: [{port: http}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-out, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Egress]
  egress: [{ports: [{port: 8080}]}]
"#;

    fn cluster() -> Cluster {
        let (objs, errs) = parse_file(CLUSTER);
        assert!(errs.is_empty());
        let objs: Vec<_> = objs
            .into_iter()
            .map(|(_, o)| o.convert().unwrap())
            .collect();
        cluster_of(objs.iter())
    }

    fn pod(s: &str) -> End {
        End::Pod(s.parse().unwrap())
    }

    #[test]
    fn both_sides_name_their_rules() {
        let e = explain(
            &cluster(),
            &pod("prod/db"),
            &pod("prod/web"),
            6,
            8080,
            false,
        )
        .unwrap();
        assert!(e.allowed);
        assert_eq!(e.egress.rule.as_deref(), Some("prod/db-out egress[0]"));
        assert_eq!(e.ingress.rule.as_deref(), Some("prod/web-in ingress[0]"));
        assert!(render(&e).starts_with("ALLOWED prod/db -> prod/web :8080/TCP"));
    }

    #[test]
    fn a_denied_side_names_the_isolating_policies() {
        let e = explain(
            &cluster(),
            &pod("prod/web"),
            &pod("prod/db"),
            6,
            5432,
            false,
        )
        .unwrap();
        assert!(e.allowed);
        assert!(e.egress.allowed, "web's egress is not isolated");
        assert!(e.ingress.allowed, "db's ingress is not isolated");
        let e = explain(
            &cluster(),
            &pod("prod/db"),
            &pod("prod/web"),
            6,
            9090,
            false,
        )
        .unwrap();
        assert!(!e.allowed);
        assert!(!e.egress.allowed && !e.ingress.allowed);
        assert!(
            e.ingress
                .reason
                .contains("isolated for ingress by prod/web-in"),
            "{}",
            e.ingress.reason
        );
        assert!(
            e.egress
                .reason
                .contains("isolated for egress by prod/db-out"),
            "{}",
            e.egress.reason
        );
    }

    const SERVICES: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: prod, labels: {app: web}}
spec: {nodeName: n2, containers: [{name: c, ports: [{containerPort: 9090, name: http}]}]}
status: {podIP: 10.0.2.2}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80, targetPort: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: local, namespace: prod}
spec: {clusterIP: 10.96.0.11, selector: {app: web}, internalTrafficPolicy: Local, ports: [{port: 80, targetPort: http}]}
"#;

    fn with_services() -> Cluster {
        let (objs, errs) = parse_file(&format!("{CLUSTER}\n---\n{SERVICES}"));
        assert!(errs.is_empty());
        let objs: Vec<_> = objs
            .into_iter()
            .map(|(_, o)| o.convert().unwrap())
            .collect();
        cluster_of(objs.iter())
    }

    #[test]
    fn a_service_is_explained_per_backend_at_its_target_port() {
        let c = with_services();
        let db: PodKey = "prod/db".parse().unwrap();
        let e = explain_service(&c, &db, &"prod/web".parse().unwrap(), 6, 80, false).unwrap();
        // prod/web: 8080 (its named port http), allowed both ways; prod/api: 9090, which
        // db's egress (8080 only) does not allow.
        assert_eq!(e.verdict, "depends_on_backend");
        let ports: Vec<(String, u16, bool)> = e
            .backends
            .iter()
            .map(|b| (b.to.clone(), b.port, b.allowed))
            .collect();
        assert_eq!(
            ports,
            vec![
                ("prod/web".into(), 8080, true),
                ("prod/api".into(), 9090, false)
            ]
        );
        let text = render_service(&e);
        assert!(
            text.starts_with("DEPENDS prod/db -> service prod/web (10.96.0.10:80/TCP): 1 of 2"),
            "{text}"
        );
        // internalTrafficPolicy Local: only the backend on db's node (n2) is a candidate.
        let local = explain_service(&c, &db, &"prod/local".parse().unwrap(), 6, 80, false).unwrap();
        assert_eq!(local.backends.len(), 1);
        assert_eq!(local.backends[0].to, "prod/api");
        assert!(matches!(
            explain_service(&c, &db, &"prod/web".parse().unwrap(), 6, 81, false),
            Err(ExplainError::NoServicePort { .. })
        ));
    }

    #[test]
    fn the_pods_node_is_always_allowed() {
        let mut c = cluster();
        c.nodes
            .insert("n1".into(), vec!["192.168.0.1".parse().unwrap()]);
        let e = explain(
            &c,
            &End::Ip("192.168.0.1".parse().unwrap()),
            &pod("prod/web"),
            6,
            9999,
            false,
        )
        .unwrap();
        assert!(e.allowed, "{}", e.ingress.reason);
        assert!(e.ingress.reason.contains("node"), "{}", e.ingress.reason);
        // Another node's address is just an address.
        c.nodes
            .insert("n9".into(), vec!["192.168.0.9".parse().unwrap()]);
        let e = explain(
            &c,
            &End::Ip("192.168.0.9".parse().unwrap()),
            &pod("prod/web"),
            6,
            9999,
            false,
        )
        .unwrap();
        assert!(!e.allowed);
    }

    #[test]
    fn ip_ends_and_errors() {
        let e = explain(
            &cluster(),
            &End::Ip("192.0.2.7".parse().unwrap()),
            &pod("prod/web"),
            6,
            8080,
            false,
        )
        .unwrap();
        assert!(!e.allowed && e.egress.allowed && e.egress.pod.is_none());
        assert_eq!(
            explain(
                &cluster(),
                &pod("prod/nope"),
                &pod("prod/web"),
                6,
                80,
                false
            )
            .unwrap_err(),
            ExplainError::NoSuchPod("prod/nope".into())
        );
        assert!(matches!(
            explain(&cluster(), &pod("prod/db"), &pod("prod/web"), 6, 80, true),
            Err(ExplainError::NoAddress { .. })
        ));
    }
}
