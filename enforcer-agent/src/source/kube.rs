//! The Kubernetes API as the source (`enforcer agent` in a DaemonSet): watches of all
//! Namespaces, Pods, NetworkPolicies, Services, EndpointSlices and Nodes (their labels and
//! addresses, for cluster policies' `nodes` peers), and of the network-policy-api
//! kinds (ClusterNetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy: CRDs a cluster
//! may lack, [`super::kube_crd`]), kept converted to the model ([`super::kube_store`]). Every
//! watch event only wakes the sync loop, which snapshots the stores and recompiles
//! (level-triggered: a re-list converges to the same maps). This is the only module holding a
//! `kube::Client`.
//!
//! - Every event wakes the loop, the watcher's own `Init`/`InitDone` included: a re-list after
//!   an outage that returns none of a kind (every policy deleted meanwhile) changes the store
//!   without any object event, and must be applied like one.
//! - While a watch fails, its store keeps its last state (what is enforced stays) and the
//!   watcher retries with backoff; [`KubeSource::stale_for`] says for how long, so the agent
//!   can report it and stop being ready.
//! - The stores hold only the model of each object (what the compiler reads: no API object,
//!   no `managedFields`), converted once when it arrives.
//! - A CRD kind whose resource is not served (404) is empty and healthy, not stale, and is
//!   looked for again every [`CRD_RECHECK`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use tokio::sync::Notify;

use super::kube_crd::{watch_crd, CrdWatch};
use super::kube_store::{Key, KindStore};
use super::objects::{node_from_k8s, Object};
use super::revision::KindRevision;
use crate::model::cluster_policy_api::{
    AdminNetworkPolicyObject, BaselineAdminNetworkPolicyObject, ClusterNetworkPolicyObject,
};
use crate::model::{self, Cluster, InvalidObject};

/// The kinds watched, by the names used in logs, health and [`Snapshot::revisions`].
pub const KINDS: [&str; 9] = [
    "Namespace",
    "Pod",
    "NetworkPolicy",
    "Service",
    "EndpointSlice",
    "Node",
    "ClusterNetworkPolicy",
    "AdminNetworkPolicy",
    "BaselineAdminNetworkPolicy",
];

/// The kinds of [`KINDS`] that CRDs define (network-policy-api, group
/// `policy.networking.k8s.io`): a cluster may not serve them.
pub const CRD_KINDS: [&str; 3] = [
    "ClusterNetworkPolicy",
    "AdminNetworkPolicy",
    "BaselineAdminNetworkPolicy",
];

/// How often a kind whose CRD is not installed is listed again ([`KubeSource::start_with_recheck`]
/// sets another interval).
pub const CRD_RECHECK: Duration = Duration::from_secs(30);

/// Since when each kind's watch has been failing (absent: healthy).
pub(super) type Health = Arc<Mutex<BTreeMap<&'static str, Instant>>>;

/// Every kind's store, by kind.
pub(super) type Stores = Arc<Mutex<BTreeMap<&'static str, KindStore>>>;

/// The CRD kinds whose resource the API does not serve now.
pub(super) type Absent = Arc<Mutex<BTreeSet<&'static str>>>;

pub struct KubeSource {
    stores: Stores,
    /// Woken on every watch event.
    pub changed: Arc<Notify>,
    health: Health,
    absent: Absent,
}

/// A kind the source watches, and how it becomes part of the model.
pub(super) trait Watched:
    Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    const KIND: &'static str;
    fn to_model(&self) -> Result<Object, InvalidObject>;
}

impl Watched for Namespace {
    const KIND: &'static str = "Namespace";
    fn to_model(&self) -> Result<Object, InvalidObject> {
        model::namespace_from_k8s(self).map(Object::Namespace)
    }
}

impl Watched for Pod {
    const KIND: &'static str = "Pod";
    fn to_model(&self) -> Result<Object, InvalidObject> {
        model::pod_from_k8s(self).map(|p| Object::Pod(Arc::new(p)))
    }
}

impl Watched for NetworkPolicy {
    const KIND: &'static str = "NetworkPolicy";
    fn to_model(&self) -> Result<Object, InvalidObject> {
        model::network_policy_from_k8s(self).map(Object::Policy)
    }
}

impl Watched for Service {
    const KIND: &'static str = "Service";
    fn to_model(&self) -> Result<Object, InvalidObject> {
        model::service_from_k8s(self).map(Object::Service)
    }
}

impl Watched for EndpointSlice {
    const KIND: &'static str = "EndpointSlice";
    fn to_model(&self) -> Result<Object, InvalidObject> {
        model::endpoint_slice_from_k8s(self).map(Object::EndpointSlice)
    }
}

impl Watched for Node {
    const KIND: &'static str = "Node";
    fn to_model(&self) -> Result<Object, InvalidObject> {
        node_from_k8s(self)
    }
}

impl Watched for ClusterNetworkPolicyObject {
    const KIND: &'static str = "ClusterNetworkPolicy";
    fn to_model(&self) -> Result<Object, InvalidObject> {
        model::cluster_network_policy_from_api(self).map(Object::ClusterPolicy)
    }
}

impl Watched for AdminNetworkPolicyObject {
    const KIND: &'static str = "AdminNetworkPolicy";
    fn to_model(&self) -> Result<Object, InvalidObject> {
        model::admin_network_policy_from_api(self).map(Object::ClusterPolicy)
    }
}

impl Watched for BaselineAdminNetworkPolicyObject {
    const KIND: &'static str = "BaselineAdminNetworkPolicy";
    fn to_model(&self) -> Result<Object, InvalidObject> {
        model::baseline_admin_network_policy_from_api(self).map(Object::ClusterPolicy)
    }
}

/// An object's key, version and model (converted outside the stores' lock).
fn arrival<K: Watched>(o: &K) -> (Key, String, Result<Object, InvalidObject>) {
    let meta = o.meta();
    let key = (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    );
    (
        key,
        meta.resource_version.clone().unwrap_or_default(),
        o.to_model(),
    )
}

/// The cluster as the stores held it at one moment.
pub struct Snapshot {
    pub cluster: Cluster,
    /// Objects that did not convert.
    pub errors: Vec<String>,
    /// What the snapshot holds of each kind (to compare with the API's lists).
    pub revisions: BTreeMap<&'static str, KindRevision>,
}

/// Retry delays of a failing watch: from 0.5 s doubling to at most 4 s, plus up to a quarter
/// more at random (so that the agents of every node do not retry in step after an outage).
/// kube's default goes up to 30 s; with at most 4 s between tries, what changed during an
/// outage is applied within about 5 s of the API's return.
pub(super) struct WatchBackoff {
    next: Duration,
    jitter: std::collections::hash_map::RandomState,
    tries: u64,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self {
            next: WatchBackoff::FIRST,
            jitter: Default::default(),
            tries: 0,
        }
    }
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(4);
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        use std::hash::BuildHasher;
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        self.tries += 1;
        let quarter = delay.as_millis() as u64 / 4;
        let extra = self.jitter.hash_one(self.tries) % (quarter + 1);
        Some(delay + Duration::from_millis(extra))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// How long the API server holds a watch open before the client starts the next one (from
/// the last version: no relist). Shorter than the client's read timeout ([`client`]), so that
/// a stream that goes silent for longer is a hung API, not a quiet one.
pub const WATCH_TIMEOUT: Duration = Duration::from_secs(50);

/// The agent's client: the kubeconfig or in-cluster configuration, with
/// - no client-side retries: the watcher retries with its own backoff, and kube's default
///   retry of 429/503/504 (15 attempts, up to minutes) would hide an outage from it;
/// - `timeout` on every read, so that a request the API never answers fails instead of
///   hanging the watch for good.
///
/// `kubeconfig`: that file (its current context) instead of the usual inference
/// (`$KUBECONFIG`, `~/.kube/config`, the in-cluster service account).
pub async fn client(timeout: Duration, kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let mut config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .with_context(|| format!("using the kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await?,
    };
    config.default_retry = false;
    config.read_timeout = Some(timeout);
    config.reset_reader_on_write = true;
    Ok(Client::try_from(config)?)
}

/// Applies one watcher event to `kind`'s store (the object converted outside the lock).
pub(super) fn apply_event<K: Watched>(
    kind: &'static str,
    stores: &Stores,
    event: watcher::Event<K>,
) {
    let lock = || stores.lock().expect("stores lock");
    match event {
        watcher::Event::Init => lock()
            .entry(kind)
            .or_insert_with(|| KindStore::new(kind))
            .begin_list(),
        watcher::Event::InitApply(o) => {
            let (key, version, model) = arrival(&o);
            drop(o);
            lock()
                .entry(kind)
                .or_insert_with(|| KindStore::new(kind))
                .listed(key, version, model);
        }
        watcher::Event::InitDone => lock()
            .entry(kind)
            .or_insert_with(|| KindStore::new(kind))
            .end_list(),
        watcher::Event::Apply(o) => {
            let (key, version, model) = arrival(&o);
            drop(o);
            lock()
                .entry(kind)
                .or_insert_with(|| KindStore::new(kind))
                .apply(key, version, model);
        }
        watcher::Event::Delete(o) => {
            let (key, version, _) = arrival(&o);
            lock()
                .entry(kind)
                .or_insert_with(|| KindStore::new(kind))
                .delete(&key, &version);
        }
    }
}

/// Watches one kind into its store, in a task of its own.
fn watch<K: Watched>(
    api: Api<K>,
    wc: watcher::Config,
    changed: Arc<Notify>,
    health: Health,
    stores: Stores,
) {
    let kind = K::KIND;
    let events = watcher(api, wc).backoff(WatchBackoff::default());
    tokio::spawn(async move {
        futures::pin_mut!(events);
        while let Some(item) = events.next().await {
            match item {
                Ok(event) => {
                    apply_event(kind, &stores, event);
                    if health.lock().expect("health lock").remove(kind).is_some() {
                        tracing::info!(kind, "watch recovered");
                    }
                    changed.notify_one();
                }
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
    });
}

impl KubeSource {
    /// Starts the watches and waits until every store has its first full list.
    pub async fn start(client: Client) -> anyhow::Result<Self> {
        Self::start_with(client, WATCH_TIMEOUT).await
    }

    /// Like [`KubeSource::start`], with watches held open at most `watch_timeout` (at least
    /// 1 s) by the API server.
    pub async fn start_with(client: Client, watch_timeout: Duration) -> anyhow::Result<Self> {
        Self::start_with_recheck(client, watch_timeout, CRD_RECHECK).await
    }

    /// Like [`KubeSource::start_with`], looking for a CRD kind that is not installed every
    /// `crd_recheck` instead of [`CRD_RECHECK`].
    pub async fn start_with_recheck(
        client: Client,
        watch_timeout: Duration,
        crd_recheck: Duration,
    ) -> anyhow::Result<Self> {
        let changed = Arc::new(Notify::new());
        let health = Health::default();
        let absent = Absent::default();
        let stores: Stores = Arc::new(Mutex::new(
            KINDS.iter().map(|k| (*k, KindStore::new(k))).collect(),
        ));
        let wc = watcher::Config::default().timeout(watch_timeout.as_secs().max(1) as u32);
        let (c, n, h, st) = (&client, &changed, &health, &stores);
        watch(
            Api::<Namespace>::all(c.clone()),
            wc.clone(),
            n.clone(),
            h.clone(),
            st.clone(),
        );
        watch(
            Api::<Pod>::all(c.clone()),
            wc.clone(),
            n.clone(),
            h.clone(),
            st.clone(),
        );
        watch(
            Api::<NetworkPolicy>::all(c.clone()),
            wc.clone(),
            n.clone(),
            h.clone(),
            st.clone(),
        );
        watch(
            Api::<Service>::all(c.clone()),
            wc.clone(),
            n.clone(),
            h.clone(),
            st.clone(),
        );
        watch(
            Api::<EndpointSlice>::all(c.clone()),
            wc.clone(),
            n.clone(),
            h.clone(),
            st.clone(),
        );
        watch(
            Api::<Node>::all(c.clone()),
            wc.clone(),
            n.clone(),
            h.clone(),
            st.clone(),
        );
        let crd = CrdWatch {
            client: c.clone(),
            wc,
            changed: n.clone(),
            health: h.clone(),
            stores: st.clone(),
            absent: absent.clone(),
            recheck: crd_recheck,
        };
        watch_crd::<ClusterNetworkPolicyObject>(crd.clone());
        watch_crd::<AdminNetworkPolicyObject>(crd.clone());
        watch_crd::<BaselineAdminNetworkPolicyObject>(crd);
        tokio::spawn(recheck_failing(client, health.clone()));
        // Nothing is programmed from a partial view: every kind's first list must be complete.
        while !stores
            .lock()
            .expect("stores lock")
            .values()
            .all(KindStore::is_synced)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(KubeSource {
            stores,
            changed,
            health,
            absent,
        })
    }

    /// The CRD kinds of [`CRD_KINDS`] whose resource the API does not serve now (their CRD is not
    /// installed): they hold nothing and count as healthy.
    pub fn not_installed(&self) -> Vec<&'static str> {
        self.absent
            .lock()
            .expect("absent lock")
            .iter()
            .copied()
            .collect()
    }

    /// How long the oldest failing watch has been failing (`None`: every watch is healthy).
    /// Its store keeps the last state it had.
    pub fn stale_for(&self) -> Option<Duration> {
        self.health
            .lock()
            .expect("health lock")
            .values()
            .min()
            .map(|since| since.elapsed())
    }

    /// The cluster as the stores hold it now, with the objects that did not convert.
    pub fn snapshot(&mut self) -> (Cluster, Vec<String>) {
        let s = self.snapshot_full();
        (s.cluster, s.errors)
    }

    /// [`KubeSource::snapshot`] with what it holds of each kind.
    pub fn snapshot_full(&mut self) -> Snapshot {
        let stores = self.stores.lock().expect("stores lock");
        // Each kind's models are a cluster of their own: put together by sharing, not copying.
        let mut cluster = Cluster::default();
        for store in stores.values() {
            cluster.absorb(store.models());
        }
        Snapshot {
            cluster,
            errors: stores
                .values()
                .flat_map(KindStore::errors)
                .cloned()
                .collect(),
            revisions: stores.iter().map(|(k, s)| (*k, s.revision())).collect(),
        }
    }
}

/// A watch that resumes without an event (nothing changed meanwhile) says nothing about
/// having recovered: every 2 s, each failing kind is listed (one item) and counts as healthy
/// again once that works. Its watch then resumes at its next try (at most ~5 s).
async fn recheck_failing(client: Client, health: Health) {
    async fn lists<K>(client: &Client) -> bool
    where
        K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    {
        let lp = kube::api::ListParams::default().limit(1);
        let api = Api::<K>::all(client.clone());
        let list = api.list_metadata(&lp);
        matches!(
            tokio::time::timeout(Duration::from_secs(5), list).await,
            Ok(Ok(_))
        )
    }
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let failing: Vec<&'static str> = health
            .lock()
            .expect("health lock")
            .keys()
            .copied()
            .collect();
        for kind in failing {
            let ok = match kind {
                "Namespace" => lists::<Namespace>(&client).await,
                "Pod" => lists::<Pod>(&client).await,
                "NetworkPolicy" => lists::<NetworkPolicy>(&client).await,
                "Service" => lists::<Service>(&client).await,
                "Node" => lists::<Node>(&client).await,
                "ClusterNetworkPolicy" => lists::<ClusterNetworkPolicyObject>(&client).await,
                "AdminNetworkPolicy" => lists::<AdminNetworkPolicyObject>(&client).await,
                "BaselineAdminNetworkPolicy" => {
                    lists::<BaselineAdminNetworkPolicyObject>(&client).await
                }
                _ => lists::<EndpointSlice>(&client).await,
            };
            if ok && health.lock().expect("health lock").remove(kind).is_some() {
                tracing::info!(kind, "the API answers again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Objects as the API server returns them in a list (recorded shape, trimmed).
    const POD_LIST: &str = r#"{"apiVersion":"v1","kind":"PodList","metadata":{"resourceVersion":"1234"},"items":[
      {"metadata":{"name":"web-7d9","namespace":"prod","uid":"u1","resourceVersion":"1200","labels":{"app":"web"},"ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-7d","uid":"r1"}],
                   "managedFields":[{"manager":"kubelet","operation":"Update","apiVersion":"v1","fieldsType":"FieldsV1","fieldsV1":{"f:status":{}}}]},
       "spec":{"nodeName":"node-1","containers":[{"name":"web","image":"nginx","ports":[{"containerPort":8080,"name":"http","protocol":"TCP"}]}]},
       "status":{"phase":"Running","podIP":"10.244.1.5","podIPs":[{"ip":"10.244.1.5"},{"ip":"fd00::5"}]}},
      {"metadata":{"name":"pending","namespace":"prod","uid":"u2","resourceVersion":"1201"},"spec":{"containers":[{"name":"c","image":"x"}]},"status":{"phase":"Pending"}}]}"#;

    #[test]
    fn a_recorded_pod_list_is_held_as_its_model() {
        let list: k8s_openapi::List<Pod> = serde_json::from_str(POD_LIST).unwrap();
        let mut store = KindStore::new("Pod");
        store.begin_list();
        for pod in &list.items {
            let (key, version, model) = arrival(pod);
            store.listed(key, version, model);
        }
        store.end_list();
        assert_eq!(store.errors().count(), 0);
        let cluster = store.models().clone();
        let web = cluster
            .pods
            .values()
            .find(|p| p.key.name == "web-7d9")
            .unwrap();
        assert_eq!(web.ips.len(), 2);
        assert_eq!(web.node.as_deref(), Some("node-1"));
        assert_eq!(web.named_port("http", model::Protocol::Tcp), Some(8080));
        assert!(cluster
            .pods
            .values()
            .any(|p| p.key.name == "pending" && p.ips.is_empty()));
        let rev = store.revision();
        assert_eq!((rev.objects, rev.newest), (2, Some(1201)));
    }
}
