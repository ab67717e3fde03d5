//! The network-policy-api (release v0.2.0) objects as they are written: serde mirrors of the
//! `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy and the v1alpha1
//! AdminNetworkPolicy and BaselineAdminNetworkPolicy CRDs (k8s-openapi has none of these).
//!
//! Deliberately loose, so that what the CRD validation would reject reaches the conversion
//! (`super`) and is reported there with its field path, and an object edited into an invalid
//! state keeps its last good version instead of failing to parse: required fields are
//! `Option`s, enums are strings, numbers are `i64`. Unknown fields are ignored (the API server
//! prunes them), except inside one-of objects (peers, `protocols` and `ports` entries, port
//! matches), which keep them in `other`: a peer whose only field is one of a newer API version
//! must be told apart from a known one (it fails closed).
//!
//! Peers share one type per API version with every peer field of that version: the CRDs'
//! ingress peers (and v1alpha1 BaselineAdminNetworkPolicy egress peers) have fewer fields, and
//! the conversion rejects those they lack by name rather than calling them unknown.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

/// Fields of a one-of object that this version does not know, by name.
pub type OtherFields = BTreeMap<String, serde_json::Value>;

/// `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterNetworkPolicyObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<ClusterNetworkPolicySpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicySpec {
    /// `Admin` or `Baseline`.
    pub tier: Option<String>,
    /// 0..=1000.
    pub priority: Option<i64>,
    pub subject: Option<Subject>,
    pub ingress: Option<Vec<ClusterNetworkPolicyIngressRule>>,
    pub egress: Option<Vec<ClusterNetworkPolicyEgressRule>>,
}

/// `spec.subject` (both API versions): exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Subject {
    pub namespaces: Option<LabelSelector>,
    pub pods: Option<NamespacedPod>,
    #[serde(flatten)]
    pub other: OtherFields,
}

/// `pods` of a subject or peer (both API versions): an absent selector is `{}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    pub namespace_selector: Option<LabelSelector>,
    pub pod_selector: Option<LabelSelector>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterNetworkPolicyIngressRule {
    /// Informational, at most 100 characters.
    pub name: Option<String>,
    /// `Accept`, `Deny` or `Pass`.
    pub action: Option<String>,
    pub from: Option<Vec<Peer>>,
    pub protocols: Option<Vec<ClusterNetworkPolicyProtocol>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterNetworkPolicyEgressRule {
    pub name: Option<String>,
    pub action: Option<String>,
    pub to: Option<Vec<Peer>>,
    pub protocols: Option<Vec<ClusterNetworkPolicyProtocol>>,
}

/// A peer of either direction and either API version (the union of their fields): exactly
/// one field, else (none known) an unknown peer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    pub namespaces: Option<LabelSelector>,
    pub pods: Option<NamespacedPod>,
    /// Egress only.
    pub networks: Option<Vec<String>>,
    /// Egress only (experimental).
    pub nodes: Option<LabelSelector>,
    /// Egress only (experimental), `Accept` rules only; not in BaselineAdminNetworkPolicy.
    pub domain_names: Option<Vec<String>>,
    #[serde(flatten)]
    pub other: OtherFields,
}

/// One v1alpha2 `protocols` entry: exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicyProtocol {
    pub tcp: Option<ProtocolPorts>,
    pub udp: Option<ProtocolPorts>,
    pub sctp: Option<ProtocolPorts>,
    pub destination_named_port: Option<String>,
    #[serde(flatten)]
    pub other: OtherFields,
}

/// `tcp`, `udp` or `sctp` of a v1alpha2 `protocols` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolPorts {
    pub destination_port: Option<Port>,
}

/// v1alpha2 `destinationPort`: exactly one of `number` and `range`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Port {
    pub number: Option<i64>,
    pub range: Option<PortRange>,
    #[serde(flatten)]
    pub other: OtherFields,
}

/// v1alpha2 `range`: `start < end`, both 1..=65535.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PortRange {
    pub start: Option<i64>,
    pub end: Option<i64>,
}

/// `policy.networking.k8s.io/v1alpha1` AdminNetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AdminNetworkPolicyObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<AdminNetworkPolicySpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AdminNetworkPolicySpec {
    /// 0..=1000.
    pub priority: Option<i64>,
    pub subject: Option<Subject>,
    pub ingress: Option<Vec<AdminNetworkPolicyIngressRule>>,
    pub egress: Option<Vec<AdminNetworkPolicyEgressRule>>,
}

/// `policy.networking.k8s.io/v1alpha1` BaselineAdminNetworkPolicy (always named `default`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BaselineAdminNetworkPolicyObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<BaselineAdminNetworkPolicySpec>,
}

/// As [`AdminNetworkPolicySpec`] without a priority; the rules have the same shape (actions
/// `Allow` and `Deny` only, no `domainNames` peers).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BaselineAdminNetworkPolicySpec {
    pub subject: Option<Subject>,
    pub ingress: Option<Vec<AdminNetworkPolicyIngressRule>>,
    pub egress: Option<Vec<AdminNetworkPolicyEgressRule>>,
}

/// A v1alpha1 ingress rule (AdminNetworkPolicy and BaselineAdminNetworkPolicy).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AdminNetworkPolicyIngressRule {
    pub name: Option<String>,
    /// `Allow`, `Deny` or `Pass` (BaselineAdminNetworkPolicy: `Allow` or `Deny`).
    pub action: Option<String>,
    pub from: Option<Vec<Peer>>,
    pub ports: Option<Vec<AdminNetworkPolicyPort>>,
}

/// A v1alpha1 egress rule (AdminNetworkPolicy and BaselineAdminNetworkPolicy).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AdminNetworkPolicyEgressRule {
    pub name: Option<String>,
    pub action: Option<String>,
    pub to: Option<Vec<Peer>>,
    pub ports: Option<Vec<AdminNetworkPolicyPort>>,
}

/// One v1alpha1 `ports` entry: exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicyPort {
    pub port_number: Option<PortNumber>,
    pub named_port: Option<String>,
    pub port_range: Option<ProtocolPortRange>,
    #[serde(flatten)]
    pub other: OtherFields,
}

/// v1alpha1 `portNumber`: protocol (TCP when absent) and port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PortNumber {
    pub protocol: Option<String>,
    pub port: Option<i64>,
}

/// v1alpha1 `portRange`: protocol (TCP when absent), `start < end`, inclusive.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProtocolPortRange {
    pub protocol: Option<String>,
    pub start: Option<i64>,
    pub end: Option<i64>,
}

/// Any of the three kinds, as a source holds them.
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterPolicyObject {
    ClusterNetworkPolicy(ClusterNetworkPolicyObject),
    AdminNetworkPolicy(AdminNetworkPolicyObject),
    BaselineAdminNetworkPolicy(BaselineAdminNetworkPolicyObject),
}

impl ClusterPolicyObject {
    pub fn kind(&self) -> crate::model::cluster_policy::ClusterPolicyKind {
        use crate::model::cluster_policy::ClusterPolicyKind as K;
        match self {
            ClusterPolicyObject::ClusterNetworkPolicy(_) => K::ClusterNetworkPolicy,
            ClusterPolicyObject::AdminNetworkPolicy(_) => K::AdminNetworkPolicy,
            ClusterPolicyObject::BaselineAdminNetworkPolicy(_) => K::BaselineAdminNetworkPolicy,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            ClusterPolicyObject::ClusterNetworkPolicy(o) => &o.metadata,
            ClusterPolicyObject::AdminNetworkPolicy(o) => &o.metadata,
            ClusterPolicyObject::BaselineAdminNetworkPolicy(o) => &o.metadata,
        }
    }
}
