//! Turning parsed API objects into model objects, keeping the last good version of an object
//! that became invalid.

use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as net;

use crate::model::cluster_policy::{ClusterPolicy, ClusterPolicyKey, ClusterPolicyKind};
use crate::model::cluster_policy_api::ClusterPolicyObject;
use crate::model::{self, Cluster, InvalidObject, Labels};

/// Identity of an object across versions: kind and `namespace/name` (just `name` for the
/// cluster-scoped kinds: Namespace, Node and the cluster policies).
pub type ObjectKey = (&'static str, String);

/// One object of the model.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(model::Namespace),
    Pod(Arc<model::Pod>),
    Policy(model::NetworkPolicy),
    Service(model::Service),
    EndpointSlice(model::EndpointSlice),
    /// A Node's name, addresses and labels.
    Node {
        name: String,
        addresses: Vec<std::net::IpAddr>,
        labels: Labels,
    },
    /// A ClusterNetworkPolicy, or a v1alpha1 Admin/BaselineAdminNetworkPolicy converted.
    ClusterPolicy(ClusterPolicy),
}

impl Object {
    pub fn key(&self) -> ObjectKey {
        match self {
            Object::Namespace(n) => ("Namespace", n.name.clone()),
            Object::Pod(p) => ("Pod", p.key.to_string()),
            Object::Policy(p) => ("NetworkPolicy", p.key.to_string()),
            Object::Service(s) => ("Service", s.key.to_string()),
            Object::EndpointSlice(s) => ("EndpointSlice", s.key.to_string()),
            Object::Node { name, .. } => ("Node", name.clone()),
            Object::ClusterPolicy(p) => (p.key.kind.as_str(), p.key.name.clone()),
        }
    }
}

/// A typed API object as read from a manifest or the API. Shared (`Arc`), so that a snapshot
/// of the API's reflector stores copies no object.
pub enum ApiObject {
    Namespace(Arc<core::Namespace>),
    Pod(Arc<core::Pod>),
    Policy(Arc<net::NetworkPolicy>),
    Service(Arc<core::Service>),
    EndpointSlice(Arc<discovery::EndpointSlice>),
    Node(Arc<core::Node>),
    /// Any of the three cluster policy kinds (network-policy-api).
    ClusterPolicy(Arc<ClusterPolicyObject>),
}

impl ApiObject {
    pub fn convert(&self) -> Result<Object, InvalidObject> {
        Ok(match self {
            ApiObject::Namespace(n) => Object::Namespace(model::namespace_from_k8s(n)?),
            ApiObject::Pod(p) => Object::Pod(Arc::new(model::pod_from_k8s(p)?)),
            ApiObject::Policy(p) => Object::Policy(model::network_policy_from_k8s(p)?),
            ApiObject::Service(s) => Object::Service(model::service_from_k8s(s)?),
            ApiObject::EndpointSlice(s) => {
                Object::EndpointSlice(model::endpoint_slice_from_k8s(s)?)
            }
            ApiObject::Node(n) => node_from_k8s(n)?,
            ApiObject::ClusterPolicy(p) => {
                Object::ClusterPolicy(model::cluster_policy_from_api(p)?)
            }
        })
    }

    /// The key of the object even when it does not convert (for keeping its last good version).
    pub fn key(&self) -> ObjectKey {
        let (kind, meta) = match self {
            ApiObject::Namespace(n) => ("Namespace", &n.metadata),
            ApiObject::Pod(p) => ("Pod", &p.metadata),
            ApiObject::Policy(p) => ("NetworkPolicy", &p.metadata),
            ApiObject::Service(s) => ("Service", &s.metadata),
            ApiObject::EndpointSlice(s) => ("EndpointSlice", &s.metadata),
            ApiObject::Node(n) => ("Node", &n.metadata),
            ApiObject::ClusterPolicy(p) => (p.kind().as_str(), p.metadata()),
        };
        let name = meta.name.clone().unwrap_or_default();
        match self {
            ApiObject::Namespace(_) | ApiObject::Node(_) | ApiObject::ClusterPolicy(_) => {
                (kind, name)
            }
            _ => (
                kind,
                format!(
                    "{}/{}",
                    meta.namespace.as_deref().unwrap_or("default"),
                    name
                ),
            ),
        }
    }
}

/// A Node as the model holds it, from a manifest or the API's watch: its name, labels
/// (validated: `nodes` peers select on them) and InternalIP/ExternalIP addresses. The rest of
/// a Node (conditions, images, heartbeats) is dropped, so a status update that changes none of
/// these leaves the model as it was.
pub fn node_from_k8s(node: &core::Node) -> Result<Object, InvalidObject> {
    let (name, addresses) = model::node_addresses_from_k8s(node)?;
    let labels = model::node_labels_from_k8s(node)?;
    Ok(Object::Node {
        name,
        addresses,
        labels,
    })
}

/// Builds the cluster from objects.
pub fn cluster_of<'a>(objects: impl IntoIterator<Item = &'a Object>) -> Cluster {
    let mut cluster = Cluster::default();
    for o in objects {
        insert_model(&mut cluster, o.clone());
    }
    cluster
}

/// Puts an object's model in the cluster, replacing the one of the same identity unless it is
/// equal: an unchanged object keeps its allocation and the map its structure, which is what
/// the compiler's diff and its reuse of plans go by (a relist converts every object again).
pub fn insert_model(cluster: &mut Cluster, object: Object) {
    fn put<K: Ord + Clone, V: Clone + PartialEq>(map: &mut model::Map<K, V>, key: K, value: V) {
        if map.get(&key) != Some(&value) {
            map.insert(key, value);
        }
    }
    match object {
        Object::Namespace(n) => put(&mut cluster.namespaces, n.name.clone(), n),
        Object::Pod(p) => put(&mut cluster.pods, p.key.clone(), p),
        Object::Policy(p) => put(&mut cluster.policies, p.key.clone(), p),
        Object::Service(s) => put(&mut cluster.services, s.key.clone(), s),
        Object::EndpointSlice(s) => put(&mut cluster.endpoint_slices, s.key.clone(), s),
        Object::Node {
            name,
            addresses,
            labels,
        } => {
            put(&mut cluster.nodes, name.clone(), addresses);
            put(&mut cluster.node_labels, name, labels);
        }
        Object::ClusterPolicy(p) => put(&mut cluster.cluster_policies, p.key.clone(), p),
    }
}

/// Takes the model of the API object `kind` `namespace`/`name` out of the cluster, if it has
/// one (a model's identity is its object's: every conversion keys it by its metadata).
pub fn remove_model(cluster: &mut Cluster, kind: &str, (namespace, name): (&str, &str)) {
    match kind {
        "Namespace" => {
            cluster.namespaces.remove(name);
        }
        "Pod" => {
            cluster.pods.remove(&model::PodKey::new(namespace, name));
        }
        "NetworkPolicy" => {
            cluster
                .policies
                .remove(&model::PolicyKey::new(namespace, name));
        }
        "Service" => {
            cluster
                .services
                .remove(&model::ServiceKey::new(namespace, name));
        }
        "EndpointSlice" => {
            cluster
                .endpoint_slices
                .remove(&model::SliceKey::new(namespace, name));
        }
        "Node" => {
            cluster.nodes.remove(name);
            cluster.node_labels.remove(name);
        }
        other => {
            if let Some(kind) = ClusterPolicyKind::from_kind(other) {
                cluster
                    .cluster_policies
                    .remove(&ClusterPolicyKey::new(kind, name));
            }
        }
    }
}

/// Said of an object whose new version is invalid while an earlier one stays in force, by both
/// sources: the manifests folder (`manifests.rs`, which remembers the last good version of
/// every object between reads) and the API (`kube_store.rs`, whose held objects keep theirs).
/// The two keep it apart because they hold objects differently: a folder is read whole each
/// time, the API's objects change one at a time.
pub const KEPT_LAST_GOOD: &str = " (its last good version stays in force)";
