//! Rules and peers of cluster policies (both API versions), validated, then rewritten
//! fail-closed where a peer is unknown.

use ipnet::IpNet;

use super::api::{
    AdminNetworkPolicyEgressRule, AdminNetworkPolicyIngressRule, AdminNetworkPolicyPort,
    ClusterNetworkPolicyEgressRule, ClusterNetworkPolicyIngressRule, ClusterNetworkPolicyProtocol,
    Peer,
};
use super::ports::convert_protocols;
use super::{check_max, namespaced_pod, unknown_fields, Version};
use crate::model::cluster_policy::{Action, ClusterPeer, ClusterRule, ProtocolMatch};
use crate::model::convert::policy::convert_selector;
use crate::model::convert::{Ctx, InvalidObject};

/// The most characters a rule's `name` may have.
const MAX_RULE_NAME: usize = 100;

/// The most entries of `networks` and of `domainNames` (both API versions).
const MAX_PEER_ITEMS: usize = 25;

/// One rule of any kind and direction, borrowed from its API object.
pub(super) struct RuleIn<'a> {
    name: Option<&'a str>,
    action: Option<&'a str>,
    /// Ingress (`from`, peers are sources) or egress (`to`).
    ingress: bool,
    peers: Option<&'a [Peer]>,
    protocols: ProtocolsIn<'a>,
}

/// `protocols` (v1alpha2) or `ports` (v1alpha1) of a rule.
pub(super) enum ProtocolsIn<'a> {
    V1alpha2(Option<&'a [ClusterNetworkPolicyProtocol]>),
    V1alpha1(Option<&'a [AdminNetworkPolicyPort]>),
}

impl<'a> From<&'a ClusterNetworkPolicyIngressRule> for RuleIn<'a> {
    fn from(r: &'a ClusterNetworkPolicyIngressRule) -> Self {
        RuleIn {
            name: r.name.as_deref(),
            action: r.action.as_deref(),
            ingress: true,
            peers: r.from.as_deref(),
            protocols: ProtocolsIn::V1alpha2(r.protocols.as_deref()),
        }
    }
}

impl<'a> From<&'a ClusterNetworkPolicyEgressRule> for RuleIn<'a> {
    fn from(r: &'a ClusterNetworkPolicyEgressRule) -> Self {
        RuleIn {
            name: r.name.as_deref(),
            action: r.action.as_deref(),
            ingress: false,
            peers: r.to.as_deref(),
            protocols: ProtocolsIn::V1alpha2(r.protocols.as_deref()),
        }
    }
}

impl<'a> From<&'a AdminNetworkPolicyIngressRule> for RuleIn<'a> {
    fn from(r: &'a AdminNetworkPolicyIngressRule) -> Self {
        RuleIn {
            name: r.name.as_deref(),
            action: r.action.as_deref(),
            ingress: true,
            peers: r.from.as_deref(),
            protocols: ProtocolsIn::V1alpha1(r.ports.as_deref()),
        }
    }
}

impl<'a> From<&'a AdminNetworkPolicyEgressRule> for RuleIn<'a> {
    fn from(r: &'a AdminNetworkPolicyEgressRule) -> Self {
        RuleIn {
            name: r.name.as_deref(),
            action: r.action.as_deref(),
            ingress: false,
            peers: r.to.as_deref(),
            protocols: ProtocolsIn::V1alpha1(r.ports.as_deref()),
        }
    }
}

/// The rules of one direction, in written order.
pub(super) fn convert_rules<'a>(
    ctx: &Ctx,
    version: &Version,
    base: &str,
    rules: impl Iterator<Item = RuleIn<'a>>,
) -> Result<Vec<ClusterRule>, InvalidObject> {
    let rules: Vec<RuleIn> = rules.collect();
    check_max(ctx, base, rules.len(), version.max_rules)?;
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| convert_rule(ctx, version, &format!("{base}[{i}]"), r))
        .collect()
}

/// A converted peer, or one with no field this version knows.
enum PeerOut {
    Known(ClusterPeer),
    Unknown,
}

fn convert_rule(
    ctx: &Ctx,
    version: &Version,
    base: &str,
    r: &RuleIn,
) -> Result<ClusterRule, InvalidObject> {
    if let Some(name) = r.name {
        if name.chars().count() > MAX_RULE_NAME {
            return Err(ctx.err(
                format!("{base}.name"),
                format!("may not be more than {MAX_RULE_NAME} characters"),
            ));
        }
    }
    let action = action(ctx, version, &format!("{base}.action"), r.action)?;
    let peers = convert_peers(ctx, version, base, r, action)?;
    let protocols = convert_protocols(ctx, version, base, &r.protocols)?;
    check_named_ports(ctx, version, base, &peers, protocols.as_deref())?;

    let name = r.name.filter(|n| !n.is_empty()).map(str::to_owned);
    let unknown = peers.iter().any(|p| matches!(p, PeerOut::Unknown));
    let known = peers.into_iter().filter_map(|p| match p {
        PeerOut::Known(p) => Some(p),
        PeerOut::Unknown => None,
    });
    Ok(match action {
        // An unknown peer matches nothing in an Accept rule: the others still may.
        Action::Accept => ClusterRule {
            name,
            action,
            peers: known.collect(),
            protocols,
        },
        // A Deny or Pass rule that holds one denies everything (the API's fail-closed rule).
        Action::Deny | Action::Pass if unknown => ClusterRule {
            name,
            action: Action::Deny,
            peers: vec![ClusterPeer::All],
            protocols: None,
        },
        Action::Deny | Action::Pass => ClusterRule {
            name,
            action,
            peers: known.collect(),
            protocols,
        },
    })
}

fn action(
    ctx: &Ctx,
    version: &Version,
    field: &str,
    a: Option<&str>,
) -> Result<Action, InvalidObject> {
    let a = a.ok_or_else(|| ctx.err(field, "required"))?;
    version
        .actions
        .iter()
        .find(|(spelling, _)| *spelling == a)
        .map(|(_, action)| *action)
        .ok_or_else(|| {
            let supported: Vec<String> = version
                .actions
                .iter()
                .map(|(s, _)| format!("{s:?}"))
                .collect();
            ctx.err(
                field,
                format!(
                    "unsupported value {a:?}: supported values: {}",
                    supported.join(", ")
                ),
            )
        })
}

/// `from` / `to`: required, 1..=max peers.
fn convert_peers(
    ctx: &Ctx,
    version: &Version,
    base: &str,
    r: &RuleIn,
    action: Action,
) -> Result<Vec<PeerOut>, InvalidObject> {
    let name = if r.ingress { "from" } else { "to" };
    let field = format!("{base}.{name}");
    let peers = r.peers.ok_or_else(|| ctx.err(&field, "required"))?;
    if peers.is_empty() {
        return Err(ctx.err(&field, "must have at least 1 item"));
    }
    check_max(ctx, &field, peers.len(), version.max_peers)?;
    peers
        .iter()
        .enumerate()
        .map(|(i, p)| convert_peer(ctx, version, &format!("{field}[{i}]"), r.ingress, action, p))
        .collect()
}

/// One peer: exactly one known field, allowed in this direction and version; none known is
/// an unknown peer (a newer API's field, or `{}`).
fn convert_peer(
    ctx: &Ctx,
    version: &Version,
    base: &str,
    ingress: bool,
    action: Action,
    p: &Peer,
) -> Result<PeerOut, InvalidObject> {
    let set: Vec<&str> = [
        ("namespaces", p.namespaces.is_some()),
        ("pods", p.pods.is_some()),
        ("networks", p.networks.is_some()),
        ("nodes", p.nodes.is_some()),
        ("domainNames", p.domain_names.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    let field = match set.as_slice() {
        [] => return Ok(PeerOut::Unknown),
        [one] => format!("{base}.{one}"),
        several => {
            return Err(ctx.err(
                base,
                format!(
                    "must specify exactly one field, found {}{}",
                    several.join(", "),
                    unknown_fields(&p.other)
                ),
            ))
        }
    };
    if ingress && p.namespaces.is_none() && p.pods.is_none() {
        return Err(ctx.err(
            field,
            "ingress peers are `namespaces` or `pods` only (networks, nodes and domainNames are egress peers)",
        ));
    }
    let peer = if let Some(s) = &p.namespaces {
        ClusterPeer::Namespaces(convert_selector(ctx, &field, s)?)
    } else if let Some(pods) = &p.pods {
        let (namespaces, pods) = namespaced_pod(ctx, &field, pods)?;
        ClusterPeer::Pods { namespaces, pods }
    } else if let Some(networks) = &p.networks {
        ClusterPeer::Networks(convert_networks(ctx, &field, networks)?)
    } else if let Some(s) = &p.nodes {
        ClusterPeer::Nodes(convert_selector(ctx, &field, s)?)
    } else {
        let names = p.domain_names.as_deref().unwrap_or_default();
        ClusterPeer::DomainNames(convert_domain_names(ctx, version, &field, action, names)?)
    };
    Ok(PeerOut::Known(peer))
}

/// `networks`: 1..=25 distinct CIDRs, IPv4 or IPv6, host bits allowed (and cleared).
fn convert_networks(
    ctx: &Ctx,
    field: &str,
    networks: &[String],
) -> Result<Vec<IpNet>, InvalidObject> {
    check_set(ctx, field, networks)?;
    networks
        .iter()
        .enumerate()
        .map(|(i, s)| {
            strict_cidr(s).ok_or_else(|| {
                ctx.err(
                    format!("{field}[{i}]"),
                    format!("{s:?} is not a valid CIDR (e.g. 10.0.0.0/8 or fd00::/8)"),
                )
            })
        })
        .collect()
}

/// `isCIDR` of the CRD's CEL rule (the API server's `parseCIDR`: Go's `netip.ParsePrefix`,
/// which refuses leading zeros and zones, and no IPv4-mapped IPv6 address), host bits
/// cleared. Stricter than `ipnet`'s parser, which reads `010.0.0.0/8`.
fn strict_cidr(s: &str) -> Option<IpNet> {
    let (addr, len) = s.split_once('/')?;
    let addr: std::net::IpAddr = addr.parse().ok()?;
    if let std::net::IpAddr::V6(v6) = addr {
        if v6.to_ipv4_mapped().is_some() {
            return None;
        }
    }
    let digits = !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit());
    if !digits || (len.len() > 1 && len.starts_with('0')) {
        return None;
    }
    IpNet::new(addr, len.parse().ok()?).ok().map(|n| n.trunc())
}

/// `domainNames`: 1..=25 distinct names of the CRD's pattern, in `Accept` rules only, and not
/// in a BaselineAdminNetworkPolicy (whose peers have no such field).
fn convert_domain_names(
    ctx: &Ctx,
    version: &Version,
    field: &str,
    action: Action,
    names: &[String],
) -> Result<Vec<String>, InvalidObject> {
    if !version.domain_names {
        return Err(ctx.err(
            field,
            format!("{} egress peers have no `domainNames`", ctx.kind),
        ));
    }
    if action != Action::Accept {
        let accept = version
            .actions
            .iter()
            .find(|(_, a)| *a == Action::Accept)
            .map_or("Accept", |(s, _)| s);
        return Err(ctx.err(field, format!("only allowed in {accept} rules")));
    }
    check_set(ctx, field, names)?;
    for (i, name) in names.iter().enumerate() {
        if !is_domain_name(name) {
            return Err(ctx.err(
                format!("{field}[{i}]"),
                format!("{name:?} is not a domain name (e.g. example.com or *.example.com)"),
            ));
        }
    }
    Ok(names.to_vec())
}

/// A `listType=set` list of 1..=25 items: not empty, not too long, no duplicates.
fn check_set(ctx: &Ctx, field: &str, items: &[String]) -> Result<(), InvalidObject> {
    if items.is_empty() {
        return Err(ctx.err(field, "must have at least 1 item"));
    }
    check_max(ctx, field, items.len(), MAX_PEER_ITEMS)?;
    for (i, item) in items.iter().enumerate() {
        if items[..i].contains(item) {
            return Err(ctx.err(format!("{field}[{i}]"), format!("duplicate value {item:?}")));
        }
    }
    Ok(())
}

/// The CRD's `DomainName` pattern,
/// `^(\*\.)?([a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$`:
/// an optional `*.`, then two or more labels, an optional final dot. (`A-z` in the first
/// character's class is the pattern's, and admits `[\]^_` and the backtick: kept, so nothing
/// the API accepts is refused.)
fn is_domain_name(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    let s = s.strip_suffix('.').unwrap_or(s);
    let labels: Vec<&str> = s.split('.').collect();
    labels.len() >= 2 && labels.iter().all(|l| is_domain_label(l))
}

fn is_domain_label(l: &str) -> bool {
    let b = l.as_bytes();
    let first = |c: u8| c.is_ascii_digit() || (b'A'..=b'z').contains(&c);
    let inner = |c: &u8| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_';
    match b {
        [] => false,
        [c] => first(*c),
        [c, middle @ .., last] => {
            first(*c) && middle.iter().all(inner) && last.is_ascii_alphanumeric()
        }
    }
}

/// The CRDs' CEL rule: no named port in a rule with a `networks`, `nodes` or `domainNames`
/// peer, which have no container ports to name.
fn check_named_ports(
    ctx: &Ctx,
    version: &Version,
    base: &str,
    peers: &[PeerOut],
    protocols: Option<&[ProtocolMatch]>,
) -> Result<(), InvalidObject> {
    let addresses = peers.iter().any(|p| {
        matches!(
            p,
            PeerOut::Known(
                ClusterPeer::Networks(_) | ClusterPeer::Nodes(_) | ClusterPeer::DomainNames(_)
            )
        )
    });
    let named = protocols
        .unwrap_or_default()
        .iter()
        .position(|p| matches!(p, ProtocolMatch::NamedPort(_)));
    match named {
        Some(j) if addresses => Err(ctx.err(
            format!(
                "{base}.{}[{j}].{}",
                version.protocols_field, version.named_port_field
            ),
            "networks/nodes/domainNames peers have no named ports: a named port cannot be used beside them",
        )),
        _ => Ok(()),
    }
}
