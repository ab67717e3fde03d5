//! Cluster policies from their API objects ([`api`]): what the CRDs' validation (OpenAPI
//! markers and CEL rules of network-policy-api v0.2.0) and the API's prose reject is rejected
//! here, naming the object, the field and the reason; then the fail-closed rewrites of
//! [`crate::model::cluster_policy`] are applied. The v1alpha1 kinds go through the same rule
//! conversion as v1alpha2, with their own limits and spellings ([`Version`]), and come out in
//! the v1alpha2 model (FORMAT-CNP section 5).

pub mod api;
mod ports;
mod rules;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;

use self::api::{
    AdminNetworkPolicyObject, BaselineAdminNetworkPolicyObject, ClusterNetworkPolicyObject,
    ClusterPolicyObject, NamespacedPod,
};
use self::rules::{convert_rules, RuleIn};
use super::policy::convert_selector;
use super::{object_name, Ctx, InvalidObject};
use crate::model::cluster_policy::{
    Action, ClusterPolicy, ClusterPolicyKey, ClusterPolicyKind, Subject, Tier,
};
use crate::model::LabelSelector;

/// What differs between the API versions' rules: limits, spellings, allowed actions.
pub(super) struct Version {
    /// Rules per direction (`MaxItems` of `ingress` / `egress`).
    max_rules: usize,
    /// Peers per rule (`from` / `to`).
    max_peers: usize,
    /// Entries of `protocols` (v1alpha2) or `ports` (v1alpha1).
    max_protocols: usize,
    /// The accepted action spellings and what each means in the model.
    actions: &'static [(&'static str, Action)],
    /// Whether egress peers may be `domainNames` (not in BaselineAdminNetworkPolicy).
    domain_names: bool,
    /// `protocols` or `ports`.
    protocols_field: &'static str,
    /// `destinationNamedPort` or `namedPort`, for messages.
    named_port_field: &'static str,
}

const V1ALPHA2: Version = Version {
    max_rules: 25,
    max_peers: 25,
    max_protocols: 25,
    actions: &[
        ("Accept", Action::Accept),
        ("Deny", Action::Deny),
        ("Pass", Action::Pass),
    ],
    domain_names: true,
    protocols_field: "protocols",
    named_port_field: "destinationNamedPort",
};

const ANP: Version = Version {
    max_rules: 100,
    max_peers: 100,
    max_protocols: 100,
    actions: &[
        ("Allow", Action::Accept),
        ("Deny", Action::Deny),
        ("Pass", Action::Pass),
    ],
    domain_names: true,
    protocols_field: "ports",
    named_port_field: "namedPort",
};

const BANP: Version = Version {
    actions: &[("Allow", Action::Accept), ("Deny", Action::Deny)],
    domain_names: false,
    ..ANP
};

/// The highest `spec.priority` (both API versions).
const MAX_PRIORITY: i64 = 1000;

/// The only name a BaselineAdminNetworkPolicy may have (a CEL rule of its CRD).
const BANP_NAME: &str = "default";

/// A `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy.
pub fn cluster_network_policy_from_api(
    o: &ClusterNetworkPolicyObject,
) -> Result<ClusterPolicy, InvalidObject> {
    let kind = ClusterPolicyKind::ClusterNetworkPolicy;
    let ctx = context(kind, &o.metadata)?;
    let spec = o.spec.as_ref().ok_or_else(|| ctx.err("spec", "required"))?;
    let tier = match spec.tier.as_deref() {
        Some("Admin") => Tier::Admin,
        Some("Baseline") => Tier::Baseline,
        Some(other) => {
            return Err(ctx.err(
                "spec.tier",
                format!("unsupported value {other:?}: supported values: \"Admin\", \"Baseline\""),
            ))
        }
        None => return Err(ctx.err("spec.tier", "required")),
    };
    let ingress = spec.ingress.as_deref().unwrap_or_default().iter();
    let egress = spec.egress.as_deref().unwrap_or_default().iter();
    Ok(ClusterPolicy {
        key: ClusterPolicyKey::new(kind, ctx.name.clone()),
        tier,
        priority: priority(&ctx, spec.priority)?,
        subject: subject(&ctx, spec.subject.as_ref())?,
        ingress: convert_rules(&ctx, &V1ALPHA2, "spec.ingress", ingress.map(RuleIn::from))?,
        egress: convert_rules(&ctx, &V1ALPHA2, "spec.egress", egress.map(RuleIn::from))?,
        staged: super::staged(&ctx, &o.metadata)?,
    })
}

/// A `policy.networking.k8s.io/v1alpha1` AdminNetworkPolicy: tier Admin, actions `Allow` (as
/// `Accept`), `Deny`, `Pass`, `ports` as `protocols`.
pub fn admin_network_policy_from_api(
    o: &AdminNetworkPolicyObject,
) -> Result<ClusterPolicy, InvalidObject> {
    let kind = ClusterPolicyKind::AdminNetworkPolicy;
    let ctx = context(kind, &o.metadata)?;
    let spec = o.spec.as_ref().ok_or_else(|| ctx.err("spec", "required"))?;
    let ingress = spec.ingress.as_deref().unwrap_or_default().iter();
    let egress = spec.egress.as_deref().unwrap_or_default().iter();
    Ok(ClusterPolicy {
        key: ClusterPolicyKey::new(kind, ctx.name.clone()),
        tier: Tier::Admin,
        priority: priority(&ctx, spec.priority)?,
        subject: subject(&ctx, spec.subject.as_ref())?,
        ingress: convert_rules(&ctx, &ANP, "spec.ingress", ingress.map(RuleIn::from))?,
        egress: convert_rules(&ctx, &ANP, "spec.egress", egress.map(RuleIn::from))?,
        staged: super::staged(&ctx, &o.metadata)?,
    })
}

/// A `policy.networking.k8s.io/v1alpha1` BaselineAdminNetworkPolicy: tier Baseline, priority
/// 0 (it is the tier's only policy), named `default`, actions `Allow` and `Deny`.
pub fn baseline_admin_network_policy_from_api(
    o: &BaselineAdminNetworkPolicyObject,
) -> Result<ClusterPolicy, InvalidObject> {
    let kind = ClusterPolicyKind::BaselineAdminNetworkPolicy;
    let ctx = context(kind, &o.metadata)?;
    if ctx.name != BANP_NAME {
        return Err(ctx.err(
            "metadata.name",
            format!("must be {BANP_NAME:?}: a cluster has only one BaselineAdminNetworkPolicy"),
        ));
    }
    let spec = o.spec.as_ref().ok_or_else(|| ctx.err("spec", "required"))?;
    let ingress = spec.ingress.as_deref().unwrap_or_default().iter();
    let egress = spec.egress.as_deref().unwrap_or_default().iter();
    Ok(ClusterPolicy {
        key: ClusterPolicyKey::new(kind, ctx.name.clone()),
        tier: Tier::Baseline,
        priority: 0,
        subject: subject(&ctx, spec.subject.as_ref())?,
        ingress: convert_rules(&ctx, &BANP, "spec.ingress", ingress.map(RuleIn::from))?,
        egress: convert_rules(&ctx, &BANP, "spec.egress", egress.map(RuleIn::from))?,
        staged: super::staged(&ctx, &o.metadata)?,
    })
}

/// Any of the three kinds.
pub fn cluster_policy_from_api(o: &ClusterPolicyObject) -> Result<ClusterPolicy, InvalidObject> {
    match o {
        ClusterPolicyObject::ClusterNetworkPolicy(o) => cluster_network_policy_from_api(o),
        ClusterPolicyObject::AdminNetworkPolicy(o) => admin_network_policy_from_api(o),
        ClusterPolicyObject::BaselineAdminNetworkPolicy(o) => {
            baseline_admin_network_policy_from_api(o)
        }
    }
}

/// The error context of a cluster-scoped object: a valid name and no namespace.
fn context(kind: ClusterPolicyKind, m: &meta::ObjectMeta) -> Result<Ctx, InvalidObject> {
    let name = object_name(kind.as_str(), m)?;
    let ctx = Ctx {
        kind: kind.as_str(),
        name,
    };
    match m.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => Err(ctx.err(
            "metadata.namespace",
            format!(
                "{} is cluster-scoped: no namespace may be set (found {ns:?})",
                kind.as_str()
            ),
        )),
        _ => Ok(ctx),
    }
}

fn priority(ctx: &Ctx, p: Option<i64>) -> Result<u32, InvalidObject> {
    let p = p.ok_or_else(|| ctx.err("spec.priority", "required"))?;
    u32::try_from(p)
        .ok()
        .filter(|p| i64::from(*p) <= MAX_PRIORITY)
        .ok_or_else(|| {
            ctx.err(
                "spec.priority",
                format!("{p} must be between 0 and {MAX_PRIORITY}, inclusive"),
            )
        })
}

/// `spec.subject`: exactly one of `namespaces` and `pods`.
fn subject(ctx: &Ctx, s: Option<&api::Subject>) -> Result<Subject, InvalidObject> {
    let field = "spec.subject";
    let s = s.ok_or_else(|| ctx.err(field, "required"))?;
    match (&s.namespaces, &s.pods) {
        (Some(ns), None) => Ok(Subject::Namespaces(convert_selector(
            ctx,
            &format!("{field}.namespaces"),
            ns,
        )?)),
        (None, Some(pods)) => {
            let (namespaces, pods) = namespaced_pod(ctx, &format!("{field}.pods"), pods)?;
            Ok(Subject::Pods { namespaces, pods })
        }
        (Some(_), Some(_)) => Err(ctx.err(
            field,
            "must specify exactly one of `namespaces` and `pods`, not both",
        )),
        (None, None) => Err(ctx.err(
            field,
            format!(
                "must specify exactly one of `namespaces` and `pods`{}",
                unknown_fields(&s.other)
            ),
        )),
    }
}

/// `pods` of a subject or peer: both selectors, absent ones as `{}` (FORMAT-CNP section 2).
pub(super) fn namespaced_pod(
    ctx: &Ctx,
    base: &str,
    p: &NamespacedPod,
) -> Result<(LabelSelector, LabelSelector), InvalidObject> {
    let selector = |name: &str, s: &Option<meta::LabelSelector>| match s {
        Some(s) => convert_selector(ctx, &format!("{base}.{name}"), s),
        None => Ok(LabelSelector::default()),
    };
    Ok((
        selector("namespaceSelector", &p.namespace_selector)?,
        selector("podSelector", &p.pod_selector)?,
    ))
}

/// `" (found: a, b)"` naming fields this version does not know, or nothing.
pub(super) fn unknown_fields(other: &api::OtherFields) -> String {
    if other.is_empty() {
        String::new()
    } else {
        let names: Vec<&str> = other.keys().map(String::as_str).collect();
        format!(" (found unknown {})", names.join(", "))
    }
}

/// `must have at most N items` when `len` is over `max`.
pub(super) fn check_max(
    ctx: &Ctx,
    field: &str,
    len: usize,
    max: usize,
) -> Result<(), InvalidObject> {
    if len > max {
        Err(ctx.err(field, format!("must have at most {max} items (has {len})")))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
