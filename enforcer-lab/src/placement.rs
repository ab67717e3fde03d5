//! Which node each pod of a scenario runs on (docs/scenario-format.md "Nodes and `--nodes`"),
//! and the manifests the lab's agents read once pods are placed.
//!
//! - A pod with `spec.nodeName` runs on that node, in every step.
//! - A pod without it runs on the **default node** ([`DEFAULT_NODE`], today's single node), or,
//!   in spread mode (`lab run --nodes a,b`), on one of the listed nodes: the pods without a
//!   node, over all steps and sorted by `namespace/name`, are dealt out round-robin, so the
//!   choice is deterministic, roughly balanced, and the same in every step.
//!
//! An agent treats a pod without `nodeName` as its own, so when the lab runs several agents it
//! writes the chosen node into every such pod's manifest. A lab whose only node is the default
//! node keeps the manifests exactly as written (today's single-node lab).

use std::collections::{BTreeMap, BTreeSet};

use crate::scenario::Step;

/// The node of pods that name none (`enforcer agent --node lab`).
pub const DEFAULT_NODE: &str = "lab";

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("pod {pod} is on node {first:?} in one step and on {second:?} in another (spec.nodeName cannot change)")]
    NodeChanged {
        pod: String,
        first: String,
        second: String,
    },
    #[error("pod {pod} is on node {node:?} in one step and names no node in another (spec.nodeName cannot change)")]
    NodeSometimes { pod: String, node: String },
    #[error("invalid node name {name:?}: use a DNS label (lowercase letters, digits and '-', at most 63)")]
    BadNodeName { name: String },
    #[error("--nodes lists {name:?} twice")]
    DuplicateNode { name: String },
    #[error("pod {pod} names node {DEFAULT_NODE:?}, the node the lab gives pods without a nodeName; use another node name")]
    DefaultNodeNamed { pod: String },
}

/// The node of every pod of a scenario and the set of nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// `namespace/name` -> node, for every pod of every step.
    pods: BTreeMap<String, String>,
    /// Every node: the default node first when present, then the others by name.
    nodes: Vec<String>,
}

impl Placement {
    /// Places the pods of `steps`; `spread` lists the nodes of spread mode (empty: the default
    /// node takes the pods without a nodeName).
    pub fn plan(steps: &[Step], spread: &[String]) -> Result<Self, PlacementError> {
        let mut seen = BTreeSet::new();
        for name in spread {
            validate_node_name(name)?;
            if !seen.insert(name.as_str()) {
                return Err(PlacementError::DuplicateNode { name: name.clone() });
            }
        }
        let mut named: BTreeMap<String, String> = BTreeMap::new();
        let mut unplaced: BTreeSet<String> = BTreeSet::new();
        for pod in steps.iter().flat_map(|s| &s.pods) {
            match &pod.node {
                Some(node) => {
                    validate_node_name(node)?;
                    match named.get(&pod.key()) {
                        Some(first) if first != node => {
                            return Err(PlacementError::NodeChanged {
                                pod: pod.key(),
                                first: first.clone(),
                                second: node.clone(),
                            })
                        }
                        _ => {
                            named.insert(pod.key(), node.clone());
                        }
                    }
                }
                None => {
                    unplaced.insert(pod.key());
                }
            }
        }
        if let Some(pod) = unplaced.iter().find(|p| named.contains_key(*p)) {
            return Err(PlacementError::NodeSometimes {
                pod: pod.clone(),
                node: named[pod].clone(),
            });
        }
        let defaulted = spread.is_empty() && !unplaced.is_empty();
        if defaulted {
            if let Some((pod, _)) = named.iter().find(|(_, n)| *n == DEFAULT_NODE) {
                return Err(PlacementError::DefaultNodeNamed { pod: pod.clone() });
            }
        }
        let mut pods = named;
        for (i, key) in unplaced.into_iter().enumerate() {
            let node = if spread.is_empty() {
                DEFAULT_NODE.to_owned()
            } else {
                spread[i % spread.len()].clone()
            };
            pods.insert(key, node);
        }
        let mut set: BTreeSet<&str> = pods.values().map(String::as_str).collect();
        if set.is_empty() {
            set.insert(DEFAULT_NODE);
        }
        let mut nodes: Vec<String> = Vec::new();
        if set.remove(DEFAULT_NODE) {
            nodes.push(DEFAULT_NODE.to_owned());
        }
        nodes.extend(set.into_iter().map(str::to_owned));
        Ok(Self { pods, nodes })
    }

    /// Every node, the default node first when present.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The node of a pod (`namespace/name`) of the scenario.
    pub fn node_of(&self, pod: &str) -> Option<&str> {
        self.pods.get(pod).map(String::as_str)
    }

    /// Only the default node: today's single-node lab (its names, paths and manifests).
    pub fn is_single(&self) -> bool {
        self.nodes.len() == 1 && self.nodes[0] == DEFAULT_NODE
    }

    /// The `cluster.yaml` the agents read: as written for a single-node lab; otherwise with
    /// `spec.nodeName` set on every pod that has none.
    pub fn manifests(&self, cluster_yaml: &str) -> Result<String, serde_yaml::Error> {
        if self.is_single() {
            return Ok(cluster_yaml.to_owned());
        }
        inject_node_names(cluster_yaml, |key| self.node_of(key))
    }
}

/// The address index of a node: 1 for the default node, 2, 3, ... for the others in the
/// order given (without the default node), so a node's addresses do not depend on whether
/// the default node exists.
pub fn node_index(nodes: &[String], node: &str) -> Option<u8> {
    if node == DEFAULT_NODE {
        return nodes.iter().any(|n| n == node).then_some(1);
    }
    let pos = nodes
        .iter()
        .filter(|n| *n != DEFAULT_NODE)
        .position(|n| n == node)?;
    u8::try_from(pos + 2).ok().filter(|i| *i < 255)
}

pub(crate) fn validate_node_name(name: &str) -> Result<(), PlacementError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(PlacementError::BadNodeName {
            name: name.to_owned(),
        })
    }
}

/// Sets `spec.nodeName` (from `node_of(namespace/name)`) on every `v1` Pod document, or Pod
/// in a `v1` List, that has none; other documents are copied as they are (re-serialized).
pub fn inject_node_names<'a>(
    text: &str,
    node_of: impl Fn(&str) -> Option<&'a str>,
) -> Result<String, serde_yaml::Error> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(text) {
        let mut value = serde_yaml::Value::deserialize(de)?;
        if value.is_null() {
            continue;
        }
        set_node_name(&mut value, &node_of);
        docs.push(serde_yaml::to_string(&value)?);
    }
    Ok(docs.join("---\n"))
}

fn set_node_name<'a>(value: &mut serde_yaml::Value, node_of: &impl Fn(&str) -> Option<&'a str>) {
    let field =
        |v: &serde_yaml::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    let (api, kind) = (field(value, "apiVersion"), field(value, "kind"));
    match (api.as_deref(), kind.as_deref()) {
        (Some("v1"), Some("List")) => {
            if let Some(items) = value.get_mut("items").and_then(|i| i.as_sequence_mut()) {
                for item in items {
                    set_node_name(item, node_of);
                }
            }
        }
        (Some("v1"), Some("Pod")) => {
            let meta = value.get("metadata");
            let ns = meta
                .and_then(|m| field(m, "namespace"))
                .unwrap_or_else(|| "default".into());
            let Some(name) = meta.and_then(|m| field(m, "name")) else {
                return;
            };
            let Some(node) = node_of(&format!("{ns}/{name}")) else {
                return;
            };
            let Some(map) = value.as_mapping_mut() else {
                return;
            };
            let spec = map
                .entry("spec".into())
                .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
            if let Some(spec) = spec.as_mapping_mut() {
                let has = spec
                    .get("nodeName")
                    .and_then(|n| n.as_str())
                    .is_some_and(|n| !n.is_empty());
                if !has {
                    spec.insert("nodeName".into(), node.into());
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[path = "placement_tests.rs"]
mod tests;
