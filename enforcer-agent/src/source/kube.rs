//! The Kubernetes API as the source (`enforcer agent` in a DaemonSet): reflector stores of all
//! Namespaces, Pods, NetworkPolicies, Services and EndpointSlices. Every watch event only
//! wakes the sync loop, which snapshots the stores and recompiles (level-triggered: a re-list
//! converges to the same maps). This is the only module holding a `kube::Client`.
//!
//! - Every event wakes the loop, the watcher's own `Init`/`InitDone` included: a re-list after
//!   an outage that returns none of a kind (every policy deleted meanwhile) changes the store
//!   without any object event, and must be applied like one.
//! - While a watch fails, its store keeps its last state (what is enforced stays) and the
//!   watcher retries with backoff; [`KubeSource::stale_for`] says for how long, so the agent
//!   can report it and stop being ready.
//! - The stores hold objects without `managedFields` (often the bulk of an object, never read
//!   here), and a snapshot shares them (`Arc`) instead of copying them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::Notify;

use super::objects::{cluster_of, ApiObject, LastGood, Object, ObjectKey};
use super::revision::{self, KindRevision};
use crate::model::Cluster;

/// The kinds watched, by the names used in logs, health and [`Snapshot::revisions`].
pub const KINDS: [&str; 5] = [
    "Namespace",
    "Pod",
    "NetworkPolicy",
    "Service",
    "EndpointSlice",
];

/// Since when each kind's watch has been failing (absent: healthy).
type Health = Arc<Mutex<BTreeMap<&'static str, Instant>>>;

pub struct KubeSource {
    namespaces: Store<Namespace>,
    pods: Store<Pod>,
    policies: Store<NetworkPolicy>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    /// Woken on every watch event.
    pub changed: Arc<Notify>,
    health: Health,
    /// Per kind, the newest resourceVersion a watch event carried.
    newest: BTreeMap<&'static str, Arc<AtomicU64>>,
    last_good: LastGood,
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
struct WatchBackoff {
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

fn watch<K>(
    api: Api<K>,
    kind: &'static str,
    wc: watcher::Config,
    changed: Arc<Notify>,
    health: Health,
    newest: Arc<AtomicU64>,
) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let events = watcher(api, wc)
        .backoff(WatchBackoff::default())
        .modify(|o: &mut K| o.managed_fields_mut().clear());
    let stream = reflector::reflector(writer, events);
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    // The reflector applied the event to the store before passing it on: a
                    // snapshot that reads `newest` first holds at least this version.
                    let version = match &event {
                        watcher::Event::Apply(o)
                        | watcher::Event::Delete(o)
                        | watcher::Event::InitApply(o) => {
                            revision::version_number(o.meta().resource_version.as_deref())
                        }
                        watcher::Event::Init | watcher::Event::InitDone => None,
                    };
                    if let Some(v) = version {
                        newest.fetch_max(v, Ordering::AcqRel);
                    }
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
    store
}

impl KubeSource {
    /// Starts the watches and waits until every store has its first full list.
    pub async fn start(client: Client) -> anyhow::Result<Self> {
        Self::start_with(client, WATCH_TIMEOUT).await
    }

    /// Like [`KubeSource::start`], with watches held open at most `watch_timeout` (at least
    /// 1 s) by the API server.
    pub async fn start_with(client: Client, watch_timeout: Duration) -> anyhow::Result<Self> {
        let changed = Arc::new(Notify::new());
        let health = Health::default();
        let wc = watcher::Config::default().timeout(watch_timeout.as_secs().max(1) as u32);
        let newest: BTreeMap<&'static str, Arc<AtomicU64>> = KINDS
            .iter()
            .map(|k| (*k, Arc::new(AtomicU64::new(0))))
            .collect();
        let w = |kind| {
            (
                kind,
                wc.clone(),
                changed.clone(),
                health.clone(),
                newest[kind].clone(),
            )
        };
        let (k, c, n, h, v) = w("Namespace");
        let namespaces = watch(Api::<Namespace>::all(client.clone()), k, c, n, h, v);
        let (k, c, n, h, v) = w("Pod");
        let pods = watch(Api::<Pod>::all(client.clone()), k, c, n, h, v);
        let (k, c, n, h, v) = w("NetworkPolicy");
        let policies = watch(Api::<NetworkPolicy>::all(client.clone()), k, c, n, h, v);
        let (k, c, n, h, v) = w("Service");
        let services = watch(Api::<Service>::all(client.clone()), k, c, n, h, v);
        let (k, c, n, h, v) = w("EndpointSlice");
        let slices = watch(Api::<EndpointSlice>::all(client.clone()), k, c, n, h, v);
        tokio::spawn(recheck_failing(client, health.clone()));
        namespaces.wait_until_ready().await?;
        pods.wait_until_ready().await?;
        policies.wait_until_ready().await?;
        services.wait_until_ready().await?;
        slices.wait_until_ready().await?;
        Ok(KubeSource {
            namespaces,
            pods,
            policies,
            services,
            slices,
            changed,
            health,
            newest,
            last_good: LastGood::default(),
        })
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
        // Read before the stores: the stores then hold at least these versions.
        let newest: BTreeMap<&'static str, u64> = self
            .newest
            .iter()
            .map(|(k, v)| (*k, v.load(Ordering::Acquire)))
            .collect();
        let (namespaces, pods, policies, services, slices) = (
            self.namespaces.state(),
            self.pods.state(),
            self.policies.state(),
            self.services.state(),
            self.slices.state(),
        );
        let revisions = BTreeMap::from([
            (
                "Namespace",
                revision::of(namespaces.iter().map(|o| o.meta()), newest["Namespace"]),
            ),
            (
                "Pod",
                revision::of(pods.iter().map(|o| o.meta()), newest["Pod"]),
            ),
            (
                "NetworkPolicy",
                revision::of(policies.iter().map(|o| o.meta()), newest["NetworkPolicy"]),
            ),
            (
                "Service",
                revision::of(services.iter().map(|o| o.meta()), newest["Service"]),
            ),
            (
                "EndpointSlice",
                revision::of(slices.iter().map(|o| o.meta()), newest["EndpointSlice"]),
            ),
        ]);
        let api: Vec<ApiObject> = namespaces
            .into_iter()
            .map(ApiObject::Namespace)
            .chain(pods.into_iter().map(ApiObject::Pod))
            .chain(policies.into_iter().map(ApiObject::Policy))
            .chain(services.into_iter().map(ApiObject::Service))
            .chain(slices.into_iter().map(ApiObject::EndpointSlice))
            .collect();
        let (objects, errors) = convert_all(&api, &self.last_good);
        self.last_good.replace(objects.clone());
        Snapshot {
            cluster: cluster_of(objects.values()),
            errors,
            revisions,
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
                _ => lists::<EndpointSlice>(&client).await,
            };
            if ok && health.lock().expect("health lock").remove(kind).is_some() {
                tracing::info!(kind, "the API answers again");
            }
        }
    }
}

/// Every Node's addresses, listed once (for `explain`: the agent itself does not watch Nodes,
/// whose status changes often and says nothing about policy).
pub async fn node_addresses(
    client: Client,
) -> anyhow::Result<Vec<(String, Vec<std::net::IpAddr>)>> {
    let list = Api::<k8s_openapi::api::core::v1::Node>::all(client)
        .list(&Default::default())
        .await?;
    Ok(list
        .items
        .iter()
        .filter_map(|n| crate::model::node_addresses_from_k8s(n).ok())
        .collect())
}

/// Converts API objects, keeping the last good version of any that does not convert.
pub fn convert_all(
    api: &[ApiObject],
    last_good: &LastGood,
) -> (std::collections::BTreeMap<ObjectKey, Object>, Vec<String>) {
    let mut objects = std::collections::BTreeMap::new();
    let mut errors = Vec::new();
    for a in api {
        let key = a.key();
        match a.convert() {
            // Pods that are finished hold no IP worth enforcing for.
            Ok(o) => {
                objects.insert(key, o);
            }
            Err(e) => {
                let kept = last_good.get(&key).cloned();
                errors.push(format!(
                    "{e}{}",
                    if kept.is_some() {
                        " (its last good version stays in force)"
                    } else {
                        ""
                    }
                ));
                if let Some(o) = kept {
                    objects.insert(key, o);
                }
            }
        }
    }
    (objects, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Objects as the API server returns them in a list (recorded shape, trimmed).
    const POD_LIST: &str = r#"{"apiVersion":"v1","kind":"PodList","metadata":{"resourceVersion":"1234"},"items":[
      {"metadata":{"name":"web-7d9","namespace":"prod","uid":"u1","labels":{"app":"web"},"ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-7d","uid":"r1"}]},
       "spec":{"nodeName":"node-1","containers":[{"name":"web","image":"nginx","ports":[{"containerPort":8080,"name":"http","protocol":"TCP"}]}]},
       "status":{"phase":"Running","podIP":"10.244.1.5","podIPs":[{"ip":"10.244.1.5"},{"ip":"fd00::5"}]}},
      {"metadata":{"name":"pending","namespace":"prod","uid":"u2"},"spec":{"containers":[{"name":"c","image":"x"}]},"status":{"phase":"Pending"}}]}"#;

    #[test]
    fn converts_a_recorded_pod_list() {
        let list: k8s_openapi::List<Pod> = serde_json::from_str(POD_LIST).unwrap();
        let api: Vec<ApiObject> = list
            .items
            .into_iter()
            .map(|p| ApiObject::Pod(Arc::new(p)))
            .collect();
        let (objects, errors) = convert_all(&api, &LastGood::default());
        assert!(errors.is_empty(), "{errors:?}");
        let cluster = cluster_of(objects.values());
        let web = cluster
            .pods
            .values()
            .find(|p| p.key.name == "web-7d9")
            .unwrap();
        assert_eq!(web.ips.len(), 2);
        assert_eq!(web.node.as_deref(), Some("node-1"));
        assert_eq!(
            web.named_port("http", crate::model::Protocol::Tcp),
            Some(8080)
        );
        assert!(cluster
            .pods
            .values()
            .any(|p| p.key.name == "pending" && p.ips.is_empty()));
    }

    #[test]
    fn an_invalid_policy_keeps_its_last_good_version() {
        let good: NetworkPolicy = serde_json::from_str(
            r#"{"metadata":{"name":"p","namespace":"prod"},"spec":{"podSelector":{},"ingress":[{"from":[{"ipBlock":{"cidr":"10.0.0.0/8"}}]}]}}"#,
        )
        .unwrap();
        let bad: NetworkPolicy = serde_json::from_str(
            r#"{"metadata":{"name":"p","namespace":"prod"},"spec":{"podSelector":{},"ingress":[{"from":[{"ipBlock":{"cidr":"10.0.0.0/8","except":["11.0.0.0/16"]}}]}]}}"#,
        )
        .unwrap();
        let (first, _) = convert_all(&[ApiObject::Policy(Arc::new(good))], &LastGood::default());
        let mut last = LastGood::default();
        last.replace(first.clone());
        let (second, errors) = convert_all(&[ApiObject::Policy(Arc::new(bad))], &last);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("except"), "{}", errors[0]);
        assert_eq!(first, second);
    }
}
