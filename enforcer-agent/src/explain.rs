//! `enforcer explain`: would this connection be allowed, and by which rules (or why not)? Both
//! sides are computed from the same compiled tables the kernel reads (the source pod's egress
//! on its node, the destination pod's ingress on its node), with the kernel's own lookup order.

use std::net::IpAddr;

use serde::Serialize;

use crate::compile::{compile, evaluate, Decision, Direction, NodeInput, Verdict};
use crate::model::{Cluster, PodKey};

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

/// One pod's side: compile for the pod's node and evaluate as the kernel would.
fn side(
    cluster: &Cluster,
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
    let tables = compile(
        cluster,
        &NodeInput {
            name: node,
            host_ips: Vec::new(),
            audit: false,
        },
    );
    let v = evaluate(&tables, pod, direction, peer, proto, port);
    let dir = match direction {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    };
    let (rule, reason) = match &v.decision {
        Decision::Rule { id, .. } => {
            let r = tables
                .rule(*id)
                .map(|r| format!("{} {dir}[{}]", r.policy, r.index));
            (
                r.clone(),
                format!("allowed by {}", r.unwrap_or_else(|| format!("rule {id}"))),
            )
        }
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
                v.isolated_by
                    .iter()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                // The namespace label, visible here; `--policy-audit-mode` is the agent's.
                if tables.endpoints.get(pod).is_some_and(|p| p.audit) {
                    " (its namespace is in audit mode: the flow passes, reported as audit)"
                } else {
                    ""
                }
            ),
        ),
    };
    Side {
        pod: Some(pod.to_string()),
        allowed: v.allowed(),
        verdict: Some(v),
        rule,
        reason,
    }
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
        End::Pod(p) => side(cluster, p, Direction::Egress, dst, proto, port),
        End::Ip(ip) => outside(&ip.to_string()),
    };
    let ingress = match to {
        End::Pod(p) => side(cluster, p, Direction::Ingress, src, proto, port),
        End::Ip(ip) => outside(&ip.to_string()),
    };
    Ok(Explanation {
        allowed: egress.allowed && ingress.allowed,
        from: name(from),
        to: name(to),
        port,
        protocol: crate::flows::decode::protocol_name(proto),
        egress,
        ingress,
    })
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
