//! Conversion from k8s-openapi objects, with the API server's defaulting and validation
//! (`pkg/apis/networking/validation`, `pkg/apis/networking/v1/defaults.go`): whatever the API
//! server would reject is rejected here, naming the object, the field and the reason.

use std::collections::BTreeMap;
use std::net::IpAddr;

mod cluster_policy;
mod policy;

pub use cluster_policy::{
    admin_network_policy_from_api, api as cluster_policy_api,
    baseline_admin_network_policy_from_api, cluster_network_policy_from_api,
    cluster_policy_from_api,
};
pub use policy::network_policy_from_k8s;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;

use super::{
    ContainerPort, LabelSelector, Labels, Namespace, NetworkPolicy, PeerSpec, Pod, PodKey,
    PolicyKey, PolicyTypes, PortRef, PortSpec, Protocol, Requirement, Rule, NAMESPACE_NAME_LABEL,
};

/// An object the API server would not have accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name}: {field}: {reason}")]
pub struct InvalidObject {
    /// `Pod`, `Namespace`, `NetworkPolicy`, ... or a cluster policy's kind
    /// (`ClusterNetworkPolicy`, `AdminNetworkPolicy`, `BaselineAdminNetworkPolicy`).
    pub kind: &'static str,
    /// `namespace/name` (just `name` for a cluster-scoped object: a Namespace, a Node, a
    /// cluster policy).
    pub name: String,
    /// JSON-path-like location, e.g. `spec.ingress[0].from[1].ipBlock.except[0]`.
    pub field: String,
    pub reason: String,
}

/// Namespace of an object without `metadata.namespace` (what `kubectl apply` would use).
const DEFAULT_NAMESPACE: &str = "default";

/// Builds [`InvalidObject`]s for one object.
pub(in crate::model) struct Ctx {
    pub(in crate::model) kind: &'static str,
    pub(in crate::model) name: String,
}

impl Ctx {
    pub(in crate::model) fn err(
        &self,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> InvalidObject {
        InvalidObject {
            kind: self.kind,
            name: self.name.clone(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Whether a policy is staged: its [`super::STAGE_ANNOTATION`] annotation (`audit`: staged;
/// `enforce` or absent: enforced; anything else is an error, so a typo never silently
/// enforces a policy meant to be staged, or the reverse).
pub(in crate::model) fn staged(ctx: &Ctx, meta: &meta::ObjectMeta) -> Result<bool, InvalidObject> {
    let value = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(super::STAGE_ANNOTATION));
    match value.map(String::as_str) {
        None | Some("enforce") => Ok(false),
        Some("audit") => Ok(true),
        Some(other) => Err(ctx.err(
            format!("metadata.annotations[{}]", super::STAGE_ANNOTATION),
            format!("unsupported value {other:?}: supported values: \"audit\", \"enforce\""),
        )),
    }
}

pub(in crate::model) fn object_name(
    kind: &'static str,
    meta: &meta::ObjectMeta,
) -> Result<String, InvalidObject> {
    let invalid = |name: &str, reason: String| InvalidObject {
        kind,
        name: name.to_owned(),
        field: "metadata.name".into(),
        reason,
    };
    match meta.name.as_deref() {
        Some(name) if !name.is_empty() => {
            // As the API server validates names: a Namespace's is a DNS label, the others'
            // (of the kinds read here) DNS subdomains.
            let ok = match kind {
                "Namespace" => is_dns_label(name),
                _ => is_dns_subdomain(name),
            };
            if ok {
                Ok(name.to_owned())
            } else {
                let what = match kind {
                    "Namespace" => "a DNS label: lowercase letters, digits and '-', at most 63",
                    _ => "a DNS subdomain: lowercase letters, digits, '-' and '.', at most 253",
                };
                Err(invalid(
                    name,
                    format!("{name:?} is not a valid name ({what})"),
                ))
            }
        }
        _ => Err(invalid("", "required".into())),
    }
}

/// The object's namespace (`default` when absent, as `kubectl apply` does), which must be a
/// valid Namespace name.
pub(in crate::model) fn object_namespace(
    kind: &'static str,
    meta: &meta::ObjectMeta,
) -> Result<String, InvalidObject> {
    match meta.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => {
            if is_dns_label(ns) {
                Ok(ns.to_owned())
            } else {
                Err(InvalidObject {
                    kind,
                    name: meta.name.clone().unwrap_or_default(),
                    field: "metadata.namespace".into(),
                    reason: format!("{ns:?} is not a valid namespace name (a DNS label)"),
                })
            }
        }
        _ => Ok(DEFAULT_NAMESPACE.to_owned()),
    }
}

/// A DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or
/// digit, at most 63 characters.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && alnum(&b[0])
        && alnum(&b[b.len() - 1])
        && b.iter().all(|c| alnum(c) || *c == b'-')
}

pub fn namespace_from_k8s(ns: &core::Namespace) -> Result<Namespace, InvalidObject> {
    let name = object_name("Namespace", &ns.metadata)?;
    let ctx = Ctx {
        kind: "Namespace",
        name: name.clone(),
    };
    let mut labels = ns.metadata.labels.clone().unwrap_or_default();
    validate_labels(&ctx, "metadata.labels", &labels)?;
    labels
        .entry(NAMESPACE_NAME_LABEL.to_owned())
        .or_insert_with(|| name.clone());
    Ok(Namespace {
        name,
        labels: labels.into_iter().collect(),
    })
}

pub fn pod_from_k8s(pod: &core::Pod) -> Result<Pod, InvalidObject> {
    let key = PodKey::new(
        object_namespace("Pod", &pod.metadata)?,
        object_name("Pod", &pod.metadata)?,
    );
    let ctx = Ctx {
        kind: "Pod",
        name: key.to_string(),
    };
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    validate_labels(&ctx, "metadata.labels", &labels)?;

    let status = pod.status.as_ref();
    let mut ips = pod_ips(&ctx, status)?;
    let spec = pod.spec.as_ref();
    let ports = container_ports(&ctx, spec)?;

    // A host-network pod's addresses are its node's: it has no veth to enforce on, and owning
    // the node's address would take the host identity (always allowed) away from kubelet.
    // A finished pod's address may already belong to a new pod.
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let finished = matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    if host_network || finished {
        ips.clear();
    }

    let node = spec
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty());
    let owner = owner_of(&pod.metadata, &labels);
    let ready = pod_ready(pod);
    Ok(Pod {
        key,
        labels: labels.into_iter().collect(),
        ips,
        ports,
        node,
        owner,
        ready,
    })
}

/// The pod's addresses: `status.podIPs`, else `status.podIP` (older API servers, manifests
/// written by hand).
fn pod_ips(ctx: &Ctx, status: Option<&core::PodStatus>) -> Result<Vec<IpAddr>, InvalidObject> {
    let mut ips = Vec::new();
    match status
        .and_then(|s| s.pod_ips.as_ref())
        .filter(|v| !v.is_empty())
    {
        Some(pod_ips) => {
            for (i, ip) in pod_ips.iter().enumerate() {
                let field = format!("status.podIPs[{i}].ip");
                ips.push(parse_ip(ctx, &field, &ip.ip)?);
            }
        }
        None => {
            if let Some(ip) = status
                .and_then(|s| s.pod_ip.as_deref())
                .filter(|s| !s.is_empty())
            {
                ips.push(parse_ip(ctx, "status.podIP", ip)?);
            }
        }
    }
    Ok(ips)
}

/// The declared container ports (named ports are resolved against them).
fn container_ports(
    ctx: &Ctx,
    spec: Option<&core::PodSpec>,
) -> Result<Vec<ContainerPort>, InvalidObject> {
    let mut ports = Vec::new();
    for (c, container) in spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        for (p, port) in container
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let field = format!("spec.containers[{c}].ports[{p}]");
            let number = u16::try_from(port.container_port)
                .ok()
                .filter(|n| *n != 0)
                .ok_or_else(|| {
                    ctx.err(
                        format!("{field}.containerPort"),
                        "must be between 1 and 65535",
                    )
                })?;
            let protocol = parse_protocol(ctx, &format!("{field}.protocol"), &port.protocol)?;
            if let Some(name) = &port.name {
                validate_port_name(ctx, &format!("{field}.name"), name)?;
            }
            ports.push(ContainerPort {
                name: port.name.clone(),
                number,
                protocol,
            });
        }
    }
    Ok(ports)
}

/// As the EndpointSlice controller sees it: the Ready condition, and a terminating pod is
/// not ready. A manifest written by hand often has no conditions: ready.
fn pod_ready(pod: &core::Pod) -> bool {
    let status = pod.status.as_ref();
    pod.metadata.deletion_timestamp.is_none()
        && status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_none_or(|c| c.status == "True")
}

/// The pod's workload: the controller owner reference (else the first one); a ReplicaSet
/// named `<name>-<pod-template-hash>` is the Deployment `<name>`'s.
fn owner_of(
    meta: &meta::ObjectMeta,
    labels: &BTreeMap<String, String>,
) -> Option<crate::model::Owner> {
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    let r = refs
        .iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())?;
    if r.kind == "ReplicaSet" {
        if let Some(deployment) = labels
            .get("pod-template-hash")
            .and_then(|h| r.name.strip_suffix(h.as_str()))
            .and_then(|n| n.strip_suffix('-'))
            .filter(|n| !n.is_empty())
        {
            return Some(crate::model::Owner {
                kind: "Deployment".into(),
                name: deployment.into(),
            });
        }
    }
    Some(crate::model::Owner {
        kind: r.kind.clone(),
        name: r.name.clone(),
    })
}

pub(in crate::model) fn parse_protocol(
    ctx: &Ctx,
    field: &str,
    p: &Option<String>,
) -> Result<Protocol, InvalidObject> {
    match p.as_deref() {
        None => Ok(Protocol::Tcp),
        Some(s) => Protocol::from_k8s(s).ok_or_else(|| {
            ctx.err(
                field,
                format!("unsupported value {s:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""),
            )
        }),
    }
}

pub(in crate::model) fn port_number(ctx: &Ctx, field: &str, n: i32) -> Result<u16, InvalidObject> {
    u16::try_from(n)
        .ok()
        .filter(|n| *n != 0)
        .ok_or_else(|| ctx.err(field, format!("{n} must be between 1 and 65535, inclusive")))
}

pub(in crate::model) fn parse_ip(ctx: &Ctx, field: &str, s: &str) -> Result<IpAddr, InvalidObject> {
    sloppy_ip(s).ok_or_else(|| ctx.err(field, format!("{s:?} is not a valid IP address")))
}

/// Go's `ParseIPSloppy`: IPv4 octets may carry leading zeros (read as decimal).
fn sloppy_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if s.contains(':') {
        return None;
    }
    let octets: Vec<&str> = s.split('.').collect();
    if octets.len() != 4 {
        return None;
    }
    let mut out = [0u8; 4];
    for (o, text) in out.iter_mut().zip(&octets) {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *o = text.parse().ok()?;
    }
    Some(IpAddr::from(out))
}

/// Go's `ParseCIDRSloppy`: the address may have host bits set (they are masked here).
fn parse_cidr(ctx: &Ctx, field: &str, s: &str) -> Result<IpNet, InvalidObject> {
    let invalid = || {
        ctx.err(
            field,
            format!("{s:?} is not a valid CIDR (e.g. 10.0.0.0/8 or fd00::/8)"),
        )
    };
    let (addr, len) = s.split_once('/').ok_or_else(invalid)?;
    let addr = sloppy_ip(addr).ok_or_else(invalid)?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let len: u8 = len.parse().map_err(|_| invalid())?;
    IpNet::new(addr, len)
        .map(|n| n.trunc())
        .map_err(|_| invalid())
}

/// `IsValidPortName` (IANA_SVC_NAME).
pub(in crate::model) fn validate_port_name(
    ctx: &Ctx,
    field: &str,
    name: &str,
) -> Result<(), InvalidObject> {
    let reason = if name.is_empty() || name.len() > 15 {
        Some("must be no more than 15 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    } else if name.contains("--") {
        Some("must not contain consecutive hyphens")
    } else if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        Some("must contain at least one letter (a-z)")
    } else if name.starts_with('-') || name.ends_with('-') {
        Some("must not begin or end with a hyphen")
    } else {
        None
    };
    match reason {
        Some(r) => Err(ctx.err(field, format!("{name:?}: {r}"))),
        None => Ok(()),
    }
}

pub(in crate::model) fn validate_labels(
    ctx: &Ctx,
    base: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), InvalidObject> {
    for (k, v) in labels {
        validate_label_key(ctx, base, k)?;
        validate_label_value(ctx, &format!("{base}.{k}"), v)?;
    }
    Ok(())
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters (empty allowed by callers
/// that want it).
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A DNS-1123 subdomain: lowercase labels separated by dots, at most 253 characters.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && !s.is_empty() && s.split('.').all(|l| l.len() <= 63 && is_dns_label(l))
}

/// A qualified name: `[prefix/]name`.
fn validate_label_key(ctx: &Ctx, field: &str, key: &str) -> Result<(), InvalidObject> {
    let ok = match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(key),
    };
    if ok {
        Ok(())
    } else {
        Err(ctx.err(
            field,
            format!("{key:?} is not a valid label key (a qualified name)"),
        ))
    }
}

fn validate_label_value(ctx: &Ctx, field: &str, value: &str) -> Result<(), InvalidObject> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(ctx.err(field, format!("{value:?} is not a valid label value")))
    }
}

/// A Node's labels (`metadata.labels`, validated), which cluster policies' `nodes` peers
/// select on.
pub fn node_labels_from_k8s(node: &core::Node) -> Result<Labels, InvalidObject> {
    let ctx = Ctx {
        kind: "Node",
        name: object_name("Node", &node.metadata)?,
    };
    let labels = node.metadata.labels.clone().unwrap_or_default();
    validate_labels(&ctx, "metadata.labels", &labels)?;
    Ok(labels.into_iter().collect())
}

/// A Node's name and addresses (`status.addresses` of type InternalIP and ExternalIP);
/// addresses that do not parse are left out (they are informational here).
pub fn node_addresses_from_k8s(node: &core::Node) -> Result<(String, Vec<IpAddr>), InvalidObject> {
    let name = object_name("Node", &node.metadata)?;
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| sloppy_ip(&a.address))
        .collect();
    Ok((name, addresses))
}
