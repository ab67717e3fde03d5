//! The network-policy-api kinds through the API (ClusterNetworkPolicy v1alpha2, AdminNetworkPolicy
//! and BaselineAdminNetworkPolicy v1alpha1): their serde types as `kube` resources, and a watch
//! that tolerates their CustomResourceDefinition being absent.
//!
//! A cluster need not have these CRDs. The list of a resource the API server does not serve
//! answers 404, which must neither make the agent unready nor fill its log: the kind then counts
//! as empty and healthy (logged once, at info), and is listed again every
//! [`CRD_RECHECK`](super::kube::CRD_RECHECK) until it is served; then its watch starts and its
//! objects apply. A 404 after the watch ran (the CRD was removed) empties the kind: the API
//! server deletes a CRD's objects before the CRD goes (its cleanup finalizer), so the watch has
//! normally delivered their deletions already, and objects whose deletions were missed (the CRD
//! removed while the watch was down) cannot exist any more, nor can a relist ever say so. Every
//! other error is handled as for the built-in kinds: the store keeps its last state, the kind is
//! stale, the watcher retries with backoff.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::core::ClusterResourceScope;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use tokio::sync::Notify;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::kube::{apply_event, Absent, Health, Stores, WatchBackoff, Watched};
use super::kube_store::KindStore;
use crate::model::cluster_policy_api::{
    AdminNetworkPolicyObject, BaselineAdminNetworkPolicyObject, ClusterNetworkPolicyObject,
};

/// The API group of the three kinds.
pub const GROUP: &str = "policy.networking.k8s.io";

/// `kube::Resource` of a cluster-scoped kind of [`GROUP`] known at compile time.
macro_rules! cluster_resource {
    ($ty:ty, $kind:literal, $version:literal, $plural:literal) => {
        impl Resource for $ty {
            type DynamicType = ();
            type Scope = ClusterResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(GROUP)
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($version)
            }
            fn api_version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(concat!("policy.networking.k8s.io/", $version))
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

cluster_resource!(
    ClusterNetworkPolicyObject,
    "ClusterNetworkPolicy",
    "v1alpha2",
    "clusternetworkpolicies"
);
cluster_resource!(
    AdminNetworkPolicyObject,
    "AdminNetworkPolicy",
    "v1alpha1",
    "adminnetworkpolicies"
);
cluster_resource!(
    BaselineAdminNetworkPolicyObject,
    "BaselineAdminNetworkPolicy",
    "v1alpha1",
    "baselineadminnetworkpolicies"
);

/// Whether a watcher's error says the resource is not served (its CRD is not installed).
pub fn not_installed(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.is_not_found(),
        watcher::Error::WatchError(s) => s.is_not_found(),
        _ => false,
    }
}

/// What the source last knew of a CRD kind, for logging each change once.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Presence {
    Unknown,
    Absent,
    Served,
}

/// What a CRD kind's watch needs: the source's client, shared state and the recheck interval.
#[derive(Clone)]
pub(super) struct CrdWatch {
    pub(super) client: Client,
    pub(super) wc: watcher::Config,
    pub(super) changed: Arc<Notify>,
    pub(super) health: Health,
    pub(super) stores: Stores,
    /// The CRD kinds not served now.
    pub(super) absent: Absent,
    /// How long after a 404 the kind is listed again.
    pub(super) recheck: Duration,
}

/// Watches a CRD kind into its store, in a task of its own: as [`super::kube`]'s `watch`
/// while the resource is served; while it is not (404), the kind is empty and healthy, is in
/// `absent`, and is listed again every `recheck`.
pub(super) fn watch_crd<K: Watched>(w: CrdWatch) {
    let CrdWatch {
        client,
        wc,
        changed,
        health,
        stores,
        absent,
        recheck,
    } = w;
    let kind = K::KIND;
    tokio::spawn(async move {
        let mut presence = Presence::Unknown;
        loop {
            let events =
                watcher(Api::<K>::all(client.clone()), wc.clone()).backoff(WatchBackoff::default());
            futures::pin_mut!(events);
            // Until the stream says the resource is not served (a watcher's stream never ends).
            while let Some(item) = events.next().await {
                match item {
                    Ok(event) => {
                        if matches!(event, watcher::Event::InitDone) && presence != Presence::Served
                        {
                            if presence == Presence::Absent {
                                tracing::info!(kind, "{kind} CRD installed; watching it");
                            }
                            presence = Presence::Served;
                            absent.lock().expect("absent lock").remove(kind);
                        }
                        apply_event(kind, &stores, event);
                        if health.lock().expect("health lock").remove(kind).is_some() {
                            tracing::info!(kind, "watch recovered");
                        }
                        changed.notify_one();
                    }
                    Err(e) if not_installed(&e) => break,
                    // The watcher retries with backoff; the store keeps its last state meanwhile.
                    Err(e) => {
                        health
                            .lock()
                            .expect("health lock")
                            .entry(kind)
                            .or_insert_with(Instant::now);
                        tracing::warn!(error = %e, kind, "watch error");
                    }
                }
            }
            // Not served: none of the kind can exist (see the module's doc).
            match presence {
                Presence::Unknown => {
                    tracing::info!(kind, "{kind} CRD not installed; watching for it")
                }
                Presence::Served => tracing::info!(
                    kind,
                    "{kind} CRD removed: none of its objects are in force any more; watching for it"
                ),
                Presence::Absent => tracing::debug!(kind, "{kind} CRD still not installed"),
            }
            presence = Presence::Absent;
            absent.lock().expect("absent lock").insert(kind);
            let emptied = {
                let mut st = stores.lock().expect("stores lock");
                let store = st.entry(kind).or_insert_with(|| KindStore::new(kind));
                let changes = !store.is_synced() || store.revision().objects > 0;
                if changes {
                    store.begin_list();
                    store.end_list();
                }
                changes
            };
            let recovered = health.lock().expect("health lock").remove(kind).is_some();
            if recovered {
                tracing::info!(kind, "the API answers again");
            }
            // Nothing to apply when the kind was empty and healthy already.
            if emptied || recovered {
                changed.notify_one();
            }
            tokio::time::sleep(recheck).await;
        }
    });
}
