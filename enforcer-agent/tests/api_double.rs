//! The API server double of `support::apiserver`, checked through the real `kube` client
//! (`kube::Api`) before the agent's source is tested against it (`api_source.rs`): paged lists
//! and exact versions, watch events, bookmarks, timeouts and 410, a bounded history, the
//! faults it injects (status codes, hangs, resets), and the network-policy-api collections with
//! their CRD not installed (404) and installed again, and the cluster-scoped Nodes. No
//! privileges needed, no cluster.

#[path = "support/logging.rs"]
mod logging;
mod support;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, VersionMatch, WatchEvent, WatchParams};
use logging::init_tracing;
use support::apiserver::{Answer, ApiServer, Fault, Kind, Options};
use support::{
    admin_network_policy, baseline_admin_network_policy, bounded, cluster_network_policy, node,
    pod, wait_for,
};

#[tokio::test]
async fn the_double_pages_lists_consistently_and_serves_exact_versions() {
    let _log = init_tracing();
    bounded(async {
        let api = ApiServer::start().await;
        for i in 0..5 {
            api.create(&pod(
                "prod",
                &format!("p{i}"),
                &format!("10.0.0.{}", i + 1),
                &[],
            ));
        }
        // Without the client's own retries of 504, to see the answer.
        let mut config = api.config();
        config.default_retry = false;
        let pods: Api<Pod> = Api::all(kube::Client::try_from(config).unwrap());
        let first = pods.list(&ListParams::default().limit(2)).await.unwrap();
        let at = first.metadata.resource_version.clone().unwrap();
        assert_eq!(at, api.resource_version().to_string());
        assert_eq!(first.items.len(), 2);
        assert_eq!(first.metadata.remaining_item_count, Some(3));
        let token = first.metadata.continue_.clone().expect("a continue token");

        // A write between pages does not show in the rest of this list.
        api.delete::<Pod>("prod/p4");
        let second = pods
            .list(&ListParams::default().limit(2).continue_token(&token))
            .await
            .unwrap();
        assert_eq!(
            second.metadata.resource_version.as_deref(),
            Some(at.as_str())
        );
        let third = pods
            .list(
                &ListParams::default()
                    .limit(2)
                    .continue_token(second.metadata.continue_.as_deref().unwrap()),
            )
            .await
            .unwrap();
        let names: Vec<String> = [&first, &second, &third]
            .iter()
            .flat_map(|l| l.items.iter().map(|p| p.metadata.name.clone().unwrap()))
            .collect();
        assert_eq!(names, ["p0", "p1", "p2", "p3", "p4"]);
        assert!(third.metadata.continue_.is_none());

        // Exact: the state at `at`, rebuilt; NotOlderThan: the newest; newer than newest: 504.
        let exact = pods
            .list(&ListParams::default().at(&at).matching(VersionMatch::Exact))
            .await
            .unwrap();
        assert_eq!(exact.items.len(), 5);
        let newest = pods
            .list(
                &ListParams::default()
                    .at(&at)
                    .matching(VersionMatch::NotOlderThan),
            )
            .await
            .unwrap();
        assert_eq!(newest.items.len(), 4);
        let future = (api.resource_version() + 10).to_string();
        match pods
            .list(
                &ListParams::default()
                    .at(&future)
                    .matching(VersionMatch::NotOlderThan),
            )
            .await
        {
            Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (504, "Timeout")),
            other => panic!("a version newer than the newest: {other:?}"),
        }

        // After compaction the old version and the old token have expired.
        api.compact();
        for lp in [
            ListParams::default().at(&at).matching(VersionMatch::Exact),
            ListParams::default().limit(2).continue_token(&token),
        ] {
            match pods.list(&lp).await {
                Err(kube::Error::Api(s)) => {
                    assert_eq!((s.code, s.reason.as_str()), (410, "Expired"))
                }
                other => panic!("after compaction: {other:?}"),
            }
        }
        // Selectors are rejected, not ignored.
        assert!(pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .is_err());
    })
    .await
}

#[tokio::test]
async fn the_double_streams_watch_events_bookmarks_timeouts_and_410() {
    let _log = init_tracing();
    bounded(async {
        let api = ApiServer::start_with(Options {
            bookmark_interval: Duration::from_millis(100),
            ..Options::default()
        })
        .await;
        api.create(&pod("prod", "a", "10.0.0.1", &[]));
        let from = api.resource_version().to_string();
        let pods: Api<Pod> = Api::namespaced(api.client(), "prod");
        let mut stream = pods
            .watch(&WatchParams::default().timeout(2), &from)
            .await
            .unwrap()
            .boxed();
        api.create(&pod("prod", "b", "10.0.0.2", &[]));
        api.create(&pod("other", "elsewhere", "10.0.0.9", &[]));
        api.update(&pod("prod", "b", "10.0.0.3", &[]));
        api.delete::<Pod>("prod/a");
        let mut seen = Vec::new();
        let mut bookmarks = 0;
        let mut last_rv = from.parse::<u64>().unwrap();
        while let Some(event) = stream.try_next().await.unwrap() {
            let (ty, p) = match event {
                WatchEvent::Added(p) => ("ADDED", p),
                WatchEvent::Modified(p) => ("MODIFIED", p),
                WatchEvent::Deleted(p) => ("DELETED", p),
                WatchEvent::Bookmark(b) => {
                    assert!(b.metadata.resource_version.parse::<u64>().unwrap() >= last_rv);
                    bookmarks += 1;
                    continue;
                }
                WatchEvent::Error(e) => panic!("unexpected error event {e:?}"),
            };
            let rv: u64 = p.metadata.resource_version.unwrap().parse().unwrap();
            assert!(rv > last_rv, "versions increase");
            last_rv = rv;
            seen.push(format!("{ty} {}", p.metadata.name.unwrap()));
        }
        // The stream ended by itself (timeoutSeconds=2).
        assert_eq!(seen, ["ADDED b", "MODIFIED b", "DELETED a"]);
        assert!(bookmarks >= 5, "bookmarks every 100 ms: {bookmarks}");

        // Streaming list: the current objects, then the initial-events-end bookmark.
        let mut initial = pods
            .watch(&WatchParams::default().initial_events().timeout(1), "")
            .await
            .unwrap()
            .boxed();
        match initial.try_next().await.unwrap() {
            Some(WatchEvent::Added(p)) => assert_eq!(p.metadata.name.as_deref(), Some("b")),
            other => panic!("first event of a streaming list: {other:?}"),
        }
        match initial.try_next().await.unwrap() {
            Some(WatchEvent::Bookmark(b)) => {
                assert!(b
                    .metadata
                    .annotations
                    .contains_key("k8s.io/initial-events-end"))
            }
            other => panic!("second event of a streaming list: {other:?}"),
        }

        // A version older than the history: one ERROR event with 410, then the end.
        api.compact();
        let mut gone = pods
            .watch(&WatchParams::default(), &from)
            .await
            .unwrap()
            .boxed();
        match gone.try_next().await.unwrap() {
            Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
            other => panic!("a watch from a compacted version: {other:?}"),
        }
        assert!(gone.try_next().await.unwrap().is_none());
        assert_eq!(api.count(|r| r.answer == Answer::Gone), 1);
    })
    .await
}

#[tokio::test]
async fn the_double_keeps_a_bounded_history() {
    let _log = init_tracing();
    bounded(async {
        let api = ApiServer::start_with(Options {
            history: Some(2),
            ..Options::default()
        })
        .await;
        let first = api.create(&pod("prod", "a", "10.0.0.1", &[]));
        let second = api.create(&pod("prod", "b", "10.0.0.2", &[]));
        api.create(&pod("prod", "c", "10.0.0.3", &[]));
        let pods: Api<Pod> = Api::all(api.client());
        let watch = |from: u64| {
            let pods = pods.clone();
            async move {
                let mut events = pods
                    .watch(&WatchParams::default().timeout(1), &from.to_string())
                    .await
                    .unwrap()
                    .boxed();
                let mut seen = Vec::new();
                while let Some(e) = events.try_next().await.unwrap() {
                    seen.push(match e {
                        WatchEvent::Added(p) => p.metadata.name.unwrap(),
                        WatchEvent::Error(e) => format!("{} {}", e.code, e.reason),
                        other => format!("{other:?}"),
                    });
                }
                seen
            }
        };
        // The last two events are kept: from the first write on, both come; before it, 410.
        assert_eq!(watch(first).await, ["b", "c"]);
        assert_eq!(watch(second).await, ["c"]);
        assert_eq!(watch(first - 1).await, ["410 Expired"]);
    })
    .await
}

#[tokio::test]
async fn the_double_injects_status_hang_and_reset() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _log = init_tracing();
    bounded(async {
        let api = ApiServer::start().await;
        let url = api.url();
        let addr = url.trim_start_matches("http://").to_owned();
        let get = || async {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            s.write_all(b"GET /api/v1/pods HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = vec![0; 4096];
            let read = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await;
            read.map(|r| r.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned()))
        };

        api.set_fault_all(Fault::Status(503));
        let answer = get().await.expect("an answer").unwrap();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(
            answer.contains("\"reason\":\"ServiceUnavailable\""),
            "{answer}"
        );

        api.set_fault_all(Fault::Reset);
        let err = get().await.expect("an answer").expect_err("a reset");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);

        api.set_fault_all(Fault::Hang);
        assert!(get().await.is_err(), "no answer while hanging");
        let pods: Api<Pod> = Api::all(api.client());
        let listing = tokio::spawn(async move { pods.list(&ListParams::default()).await });
        wait_for(&api, "the list hanging", Duration::from_secs(5), || {
            api.hanging(Kind::Pod) >= 1
        })
        .await;
        api.clear_fault();
        let list = tokio::time::timeout(Duration::from_secs(5), listing)
            .await
            .expect("the hung list is answered once released")
            .unwrap()
            .unwrap();
        assert!(list.items.is_empty());
    })
    .await
}

#[tokio::test]
async fn the_double_serves_the_cluster_policy_crds_and_answers_404_when_not_installed() {
    use enforcer_agent::model::cluster_policy_api::{
        AdminNetworkPolicyObject, BaselineAdminNetworkPolicyObject, ClusterNetworkPolicyObject,
    };
    let _log = init_tracing();
    bounded(async {
        let api = ApiServer::start().await;
        api.create_json(cluster_network_policy("a", "Admin", 1, "Deny", 80));
        api.create_json(admin_network_policy("b", 2, "Allow", 81));
        api.create_json(baseline_admin_network_policy("default", "Deny", 82));
        let client = api.client();
        let cnps: Api<ClusterNetworkPolicyObject> = Api::all(client.clone());
        let anps: Api<AdminNetworkPolicyObject> = Api::all(client.clone());
        let banps: Api<BaselineAdminNetworkPolicyObject> = Api::all(client.clone());
        let list = cnps.list(&ListParams::default()).await.unwrap();
        assert_eq!(list.items.len(), 1);
        assert_eq!(list.items[0].metadata.name.as_deref(), Some("a"));
        assert_eq!(
            list.items[0].spec.as_ref().unwrap().tier.as_deref(),
            Some("Admin")
        );
        assert_eq!(
            anps.list(&ListParams::default()).await.unwrap().items.len(),
            1
        );
        assert_eq!(
            banps
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .len(),
            1
        );

        // Uninstalled while watched: the DELETED event, then the stream ends; then 404s.
        let at = list.metadata.resource_version.clone().unwrap();
        let mut watch = cnps
            .watch(&WatchParams::default(), &at)
            .await
            .unwrap()
            .boxed();
        assert_eq!(api.uninstall(Kind::ClusterNetworkPolicy), 1);
        match watch.try_next().await.unwrap() {
            Some(WatchEvent::Deleted(o)) => assert_eq!(o.metadata.name.as_deref(), Some("a")),
            other => panic!("expected the DELETED event, got {other:?}"),
        }
        assert!(watch.try_next().await.unwrap().is_none(), "the watch ends");
        let not_found = |e: kube::Error| match e {
            kube::Error::Api(s) => {
                assert_eq!(
                    (s.code, s.reason.as_str(), s.message.as_str()),
                    (
                        404,
                        "NotFound",
                        "the server could not find the requested resource"
                    )
                );
                assert!(s.is_not_found());
            }
            other => panic!("expected a 404 Status, got {other:?}"),
        };
        not_found(cnps.list(&ListParams::default()).await.unwrap_err());
        not_found(
            cnps.watch(&WatchParams::default(), "0")
                .await
                .err()
                .unwrap(),
        );
        assert!(!api.installed(Kind::ClusterNetworkPolicy));
        assert_eq!(
            api.count(
                |r| r.info.kind == Kind::ClusterNetworkPolicy && r.answer == Answer::Status(404)
            ),
            2
        );
        // The other two are still served.
        assert_eq!(
            anps.list(&ListParams::default()).await.unwrap().items.len(),
            1
        );

        // Installed again: empty, then written to like any kind.
        api.install(Kind::ClusterNetworkPolicy);
        assert!(cnps
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty());
        api.create_json(cluster_network_policy("c", "Baseline", 3, "Pass", 83));
        let list = cnps.list(&ListParams::default()).await.unwrap();
        assert_eq!(list.items[0].metadata.name.as_deref(), Some("c"));
    })
    .await
}

#[tokio::test]
async fn the_double_serves_nodes_cluster_scoped() {
    use k8s_openapi::api::core::v1::Node;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _log = init_tracing();
    bounded(async {
        let api = ApiServer::start().await;
        api.create(&node("n1", "192.168.0.1", &[("role", "infra")]));
        let nodes: Api<Node> = Api::all(api.client());
        let list = nodes.list(&ListParams::default()).await.unwrap();
        assert_eq!(list.items.len(), 1);
        let n1 = &list.items[0];
        assert_eq!(n1.metadata.name.as_deref(), Some("n1"));
        assert_eq!(n1.metadata.namespace, None, "cluster-scoped");
        assert_eq!(
            n1.metadata.labels.as_ref().unwrap()["role"],
            "infra",
            "labels as written"
        );
        let at = list.metadata.resource_version.clone().unwrap();
        let mut watch = nodes
            .watch(&WatchParams::default(), &at)
            .await
            .unwrap()
            .boxed();
        api.update(&node("n1", "192.168.0.2", &[("role", "app")]));
        match watch.try_next().await.unwrap() {
            Some(WatchEvent::Modified(n)) => {
                let addresses = n.status.unwrap().addresses.unwrap();
                assert_eq!(addresses[0].address, "192.168.0.2");
            }
            other => panic!("expected the MODIFIED event, got {other:?}"),
        }
        api.delete::<Node>("n1");
        match watch.try_next().await.unwrap() {
            Some(WatchEvent::Deleted(n)) => assert_eq!(n.metadata.name.as_deref(), Some("n1")),
            other => panic!("expected the DELETED event, got {other:?}"),
        }
        // Not under a namespace (kube's typed API cannot even ask).
        let addr = api.url().trim_start_matches("http://").to_owned();
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /api/v1/namespaces/default/nodes HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// The source.
