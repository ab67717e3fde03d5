//! Where the cluster state comes from: a folder of manifests (standalone and the lab) or the
//! Kubernetes API. Both produce a [`crate::model::Cluster`] through the same conversions, and
//! both report invalid objects without letting them disturb the rest.

pub mod kube;
pub mod kube_crd;
pub mod kube_store;
pub mod manifests;
pub mod objects;
pub mod revision;
