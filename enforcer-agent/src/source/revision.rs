//! What a snapshot of the API holds of each kind, in a form another process can compare with
//! the API's own lists: how many objects, an order-independent digest of every object's
//! identity and `resourceVersion`, and the newest version a watch event carried.
//!
//! `enforcer lab wait` uses it to tell that an agent has applied the API's state: a kind is
//! up to date when the digest of what the agent applied equals the digest of a list taken
//! since (nothing changed), or when the agent applied an event at least as new as the list
//! (a watch delivers a kind's events in order, so everything before it was applied too).
//! Comparing versions as numbers relies on them being etcd revisions, as they are for the
//! real API server (and the project's API test double); the digest needs no such assumption.

use std::hash::BuildHasher;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// One kind of a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindRevision {
    /// Objects held.
    pub objects: usize,
    /// [`digest`] of those objects.
    pub digest: String,
    /// The newest `resourceVersion` that any watch event of this kind carried when the
    /// snapshot was taken (absent: none yet, or versions that are not numbers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest: Option<u64>,
}

/// A resourceVersion as a number (`None` for an empty or non-numeric one).
pub fn version_number(rv: Option<&str>) -> Option<u64> {
    rv.and_then(|v| v.parse().ok())
}

/// An order-independent digest of objects' `namespace`, `name` and `resourceVersion`: the
/// wrapping sum of one hash per object, so it needs no sorting and two processes that hold
/// the same objects compute the same value. The hash is std's SipHash with fixed keys, stable
/// within one build (the agent and `lab wait` are the same binary).
pub fn digest_keys<'a>(
    items: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
) -> (usize, String) {
    let (mut count, mut sum) = (0usize, 0u64);
    for (namespace, name, version) in items {
        sum = sum.wrapping_add(digest_term(namespace, name, version));
        count += 1;
    }
    (count, digest_text(count, sum))
}

/// One object's term of [`digest_keys`]'s sum (a holder that changes one object at a time
/// keeps the sum up to date: subtract the old version's term, add the new one's).
pub fn digest_term(namespace: &str, name: &str, version: &str) -> u64 {
    let hasher = std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default();
    hasher.hash_one((namespace, name, version))
}

/// The digest of `count` objects whose terms sum to `sum`.
pub fn digest_text(count: usize, sum: u64) -> String {
    format!("{count}:{sum:016x}")
}

/// [`digest_keys`] of objects' metadata.
pub fn digest<'a>(metas: impl IntoIterator<Item = &'a ObjectMeta>) -> (usize, String) {
    digest_keys(metas.into_iter().map(|m| {
        (
            m.namespace.as_deref().unwrap_or(""),
            m.name.as_deref().unwrap_or(""),
            m.resource_version.as_deref().unwrap_or(""),
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(ns: &str, name: &str, rv: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            resource_version: Some(rv.into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_digest_ignores_order_and_sees_every_change() {
        let a = [meta("x", "a", "5"), meta("x", "b", "7")];
        let b = [meta("x", "b", "7"), meta("x", "a", "5")];
        assert_eq!(digest(&a), digest(&b));
        // A modified object, a deleted one, a renamed one: each changes the digest.
        assert_ne!(
            digest(&a),
            digest(&[meta("x", "a", "5"), meta("x", "b", "8")])
        );
        assert_ne!(digest(&a), digest(&a[..1]));
        assert_ne!(
            digest(&a),
            digest(&[meta("x", "a", "5"), meta("y", "b", "7")])
        );
        assert_eq!(digest(&[]).0, 0);
    }

    #[test]
    fn versions_are_numbers_or_nothing() {
        assert_eq!(version_number(Some("123")), Some(123));
        assert_eq!(version_number(Some("abc")), None);
        assert_eq!(version_number(None), None);
        assert_eq!(
            digest(&[meta("x", "a", "5")]),
            digest_keys([("x", "a", "5")])
        );
    }
}
