//! The API's objects as the agent keeps them: converted to the model when they arrive, so that
//! only what the compiler reads is held (no API object, no managedFields), in a [`Cluster`] of
//! the kind's own whose persistent maps are edited one object at a time: a sync's snapshot
//! shares them (no copy, whatever the cluster's size), and the compiler's diff against the
//! previous snapshot skips what did not change.
//!
//! One [`KindStore`] per watched kind follows the watcher's events:
//! - a (re)list (`Init`, `InitApply`..., `InitDone`) is collected apart and replaces the kind's
//!   objects only when complete: an object missing from it was deleted meanwhile, and a relist
//!   that finds none of a kind empties it;
//! - `Apply` and `Delete` change one object;
//! - an object whose new version does not convert keeps its last good version in force (and
//!   its error is reported); a new invalid object is held without a model (not applied).

use std::collections::BTreeMap;

use super::objects::{insert_model, remove_model, Object, KEPT_LAST_GOOD};
use super::revision::{self, KindRevision};
use crate::model::{Cluster, InvalidObject};

/// `(namespace, name)`; the namespace is empty for cluster-scoped kinds.
pub type Key = (String, String);

/// One object as held: its version, and whether a model of it is in force (this version's,
/// or its last good one's). The model itself is in the kind's cluster.
#[derive(Debug, Clone, PartialEq)]
struct Held {
    version: String,
    in_force: bool,
}

/// One object of a relist in progress: its model (`None`: it did not convert) or error.
struct Listed {
    version: String,
    model: Option<Object>,
    error: Option<String>,
}

/// One kind's objects.
#[derive(Default)]
pub struct KindStore {
    kind: &'static str,
    objects: BTreeMap<Key, Held>,
    /// The models in force, as the cluster holds them (only this kind's maps have any): edited
    /// one object at a time, so that a snapshot shares it instead of copying it.
    models: Cluster,
    /// The objects whose version did not convert, with why.
    errors: BTreeMap<Key, String>,
    /// A relist in progress.
    relist: Option<BTreeMap<Key, Listed>>,
    /// The first list is complete.
    synced: bool,
    /// The newest resourceVersion an event carried.
    newest: u64,
    /// The digest's sum over `objects` ([`revision::digest_keys`]), kept as they change.
    digest_sum: u64,
}

impl KindStore {
    /// The store of API kind `kind` (as [`super::objects::remove_model`] names it).
    pub fn new(kind: &'static str) -> Self {
        KindStore {
            kind,
            ..KindStore::default()
        }
    }

    /// Why `key`'s version did not convert, and whether its last good version stays.
    fn error_text(&self, key: &Key, e: &InvalidObject) -> (String, bool) {
        let kept = self.objects.get(key).is_some_and(|h| h.in_force);
        (
            format!("{e}{}", if kept { KEPT_LAST_GOOD } else { "" }),
            kept,
        )
    }

    fn saw(&mut self, version: &str) {
        if let Some(v) = revision::version_number(Some(version)) {
            self.newest = self.newest.max(v);
        }
    }

    fn term(key: &Key, version: &str) -> u64 {
        revision::digest_term(&key.0, &key.1, version)
    }

    /// A (re)list starts.
    pub fn begin_list(&mut self) {
        self.relist = Some(BTreeMap::new());
    }

    /// An object of the list in progress.
    pub fn listed(&mut self, key: Key, version: String, converted: Result<Object, InvalidObject>) {
        self.saw(&version);
        let listed = match converted {
            Ok(model) => Listed {
                version,
                model: Some(model),
                error: None,
            },
            Err(e) => Listed {
                version,
                model: None,
                error: Some(self.error_text(&key, &e).0),
            },
        };
        self.relist
            .get_or_insert_with(BTreeMap::new)
            .insert(key, listed);
    }

    /// The list is complete: it replaces what the kind held (the models edited: what is gone
    /// removed, what came or changed put in, a last good version kept).
    pub fn end_list(&mut self) {
        let relist = self.relist.take().unwrap_or_default();
        // What the list no longer has is gone; what it has replaces it, or (when it does not
        // convert) leaves it in force.
        for (key, held) in &self.objects {
            if held.in_force && !relist.contains_key(key) {
                remove_model(&mut self.models, self.kind, (&key.0, &key.1));
            }
        }
        let mut objects = BTreeMap::new();
        let mut errors = BTreeMap::new();
        let mut sum = 0u64;
        for (key, listed) in relist {
            let in_force = match listed.model {
                Some(model) => {
                    insert_model(&mut self.models, model);
                    true
                }
                None => self.objects.get(&key).is_some_and(|h| h.in_force),
            };
            if let Some(e) = listed.error {
                errors.insert(key.clone(), e);
            }
            sum = sum.wrapping_add(Self::term(&key, &listed.version));
            objects.insert(
                key,
                Held {
                    version: listed.version,
                    in_force,
                },
            );
        }
        self.objects = objects;
        self.errors = errors;
        self.digest_sum = sum;
        self.synced = true;
    }

    /// An object was added or changed.
    pub fn apply(&mut self, key: Key, version: String, converted: Result<Object, InvalidObject>) {
        self.saw(&version);
        let in_force = match converted {
            Ok(model) => {
                insert_model(&mut self.models, model);
                self.errors.remove(&key);
                true
            }
            Err(e) => {
                let (error, kept) = self.error_text(&key, &e);
                self.errors.insert(key.clone(), error);
                kept
            }
        };
        self.digest_sum = self.digest_sum.wrapping_add(Self::term(&key, &version));
        let held = Held { version, in_force };
        if let Some(old) = self.objects.insert(key.clone(), held) {
            self.digest_sum = self.digest_sum.wrapping_sub(Self::term(&key, &old.version));
        }
    }

    /// An object was deleted (`version`: the deletion's).
    pub fn delete(&mut self, key: &Key, version: &str) {
        self.saw(version);
        self.errors.remove(key);
        if let Some(old) = self.objects.remove(key) {
            self.digest_sum = self.digest_sum.wrapping_sub(Self::term(key, &old.version));
            if old.in_force {
                remove_model(&mut self.models, self.kind, (&key.0, &key.1));
            }
        }
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The models in force.
    pub fn models(&self) -> &Cluster {
        &self.models
    }

    /// The objects that did not convert.
    pub fn errors(&self) -> impl Iterator<Item = &String> {
        self.errors.values()
    }

    /// What the kind holds, to compare with the API's list.
    pub fn revision(&self) -> KindRevision {
        let objects = self.objects.len();
        KindRevision {
            objects,
            digest: revision::digest_text(objects, self.digest_sum),
            newest: (self.newest > 0).then_some(self.newest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model;

    fn ns(name: &str, team: &str) -> Result<Object, InvalidObject> {
        let k8s: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(
            serde_json::json!({"metadata": {"name": name, "labels": {"team": team}}}),
        )
        .unwrap();
        Ok(Object::Namespace(model::namespace_from_k8s(&k8s).unwrap()))
    }

    fn invalid() -> Result<Object, InvalidObject> {
        let bad: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_str(
            r#"{"metadata":{"name":"p","namespace":"prod"},"spec":{"podSelector":{},"ingress":[{"from":[{"ipBlock":{"cidr":"10.0.0.0/8","except":["11.0.0.0/16"]}}]}]}}"#,
        )
        .unwrap();
        model::network_policy_from_k8s(&bad).map(Object::Policy)
    }

    fn key(name: &str) -> Key {
        (String::new(), name.to_owned())
    }

    fn names(store: &KindStore) -> Vec<String> {
        store
            .models()
            .namespaces
            .values()
            .map(|n| format!("{}={}", n.name, n.labels.get("team").unwrap()))
            .collect()
    }

    #[test]
    fn a_relist_replaces_the_kind_only_when_complete() {
        let mut s = KindStore::new("Namespace");
        s.begin_list();
        s.listed(key("a"), "5".into(), ns("a", "1"));
        s.listed(key("b"), "6".into(), ns("b", "1"));
        assert!(!s.is_synced());
        assert!(names(&s).is_empty(), "nothing before the list is complete");
        s.end_list();
        assert!(s.is_synced());
        assert_eq!(names(&s), ["a=1", "b=1"]);
        // A relist that no longer has b, and has a changed: until InitDone, the old state.
        s.begin_list();
        s.listed(key("a"), "9".into(), ns("a", "2"));
        assert_eq!(names(&s), ["a=1", "b=1"]);
        s.end_list();
        assert_eq!(names(&s), ["a=2"]);
        // One that finds none of the kind empties it.
        s.begin_list();
        s.end_list();
        assert!(names(&s).is_empty());
        assert_eq!(s.revision().objects, 0);
        assert_eq!(s.revision().newest, Some(9));
    }

    #[test]
    fn events_change_one_object_and_advance_the_newest_version() {
        let mut s = KindStore::new("Namespace");
        s.begin_list();
        s.end_list();
        s.apply(key("a"), "10".into(), ns("a", "1"));
        s.apply(key("b"), "11".into(), ns("b", "1"));
        s.apply(key("a"), "12".into(), ns("a", "2"));
        s.delete(&key("b"), "13");
        assert_eq!(names(&s), ["a=2"]);
        let rev = s.revision();
        assert_eq!((rev.objects, rev.newest), (1, Some(13)));
        assert_eq!(
            rev.digest,
            revision::digest_keys([("", "a", "12")]).1,
            "the digest is that of what is held"
        );
    }

    #[test]
    fn an_invalid_version_keeps_the_last_good_one_and_a_new_invalid_object_is_not_applied() {
        let mut s = KindStore::new("Namespace");
        s.begin_list();
        s.end_list();
        s.apply(key("a"), "1".into(), ns("a", "1"));
        s.apply(key("a"), "2".into(), invalid());
        assert_eq!(names(&s), ["a=1"]);
        let errors: Vec<&String> = s.errors().collect();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("except"), "{}", errors[0]);
        assert!(errors[0].ends_with("(its last good version stays in force)"));
        // Its version is the invalid one's: that is what the API holds.
        assert_eq!(
            s.revision().digest,
            revision::digest_keys([("", "a", "2")]).1
        );
        s.apply(key("new"), "3".into(), invalid());
        assert_eq!(names(&s), ["a=1"]);
        assert!(!s
            .errors()
            .any(|e| e.contains("stays in force") && e.contains("new")));
        // Valid again: the error goes.
        s.apply(key("a"), "4".into(), ns("a", "3"));
        assert_eq!(names(&s), ["a=3"]);
        assert_eq!(s.errors().count(), 1, "only the new invalid object's");
    }
}
