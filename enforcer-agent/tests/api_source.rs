//! The agent's Kubernetes source (`enforcer_agent::source::kube::KubeSource`) driven through the
//! real `kube` client against the API server double of `support::apiserver`: the first lists,
//! changes of every kind, paged lists, relists after history compaction (410), and an outage.
//! No privileges needed, no cluster.
//!
//! "Converged" means what the agent's sync loop sees: it snapshots the stores only when
//! `changed` is notified, so a state counts as reached only when a snapshot taken right after a
//! notification shows it (`converge`). The double's own list/watch semantics are checked in
//! `api_double.rs`, through `kube::Api`.
//!
//! Not covered here: label/field selectors (the source uses none), streaming lists (the source
//! uses list + watch), TLS and auth.

#[path = "support/logging.rs"]
mod logging;
mod support;

use std::time::Duration;

use enforcer_agent::model::{Cluster, PodKey, PolicyKey, PortRef, ServiceKey, SliceKey};
use enforcer_agent::source::kube::KubeSource;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use logging::init_tracing;
use support::apiserver::{Answer, ApiServer, Fault, Kind, Verb};
use support::{bounded, namespace, pod, policy, service, slice, summary, wait_for};
use tokio::time::Instant;

/// Takes a notification already stored, so that the next one is about what follows.
fn drain(source: &KubeSource) {
    let _ = source.changed.notified().now_or_never();
}

/// Waits as the agent's sync loop does, for `changed` and then a snapshot, until a snapshot
/// taken right after a notification satisfies `want`; returns it.
async fn converge(
    source: &mut KubeSource,
    api: &ApiServer,
    what: &str,
    within: Duration,
    want: impl Fn(&Cluster) -> bool,
) -> Cluster {
    let deadline = Instant::now() + within;
    let changed = source.changed.clone();
    let mut notifications = 0;
    loop {
        if tokio::time::timeout_at(deadline, changed.notified())
            .await
            .is_err()
        {
            let (now, _) = source.snapshot();
            let stores = if want(&now) {
                "the stores DO hold it, but `changed` was not notified after they reached it: \
                 the agent's sync loop would keep enforcing the old state"
            } else {
                "the stores do not hold it either"
            };
            panic!(
                "{what}: no snapshot taken after a `changed` notification showed it within \
                 {within:?} ({notifications} notifications); {stores}.\nthe stores now:\n{}\n\
                 requests answered:\n{}",
                summary(&now),
                api.request_log()
            );
        }
        notifications += 1;
        let (cluster, errors) = source.snapshot();
        assert!(
            errors.is_empty(),
            "{what}: objects did not convert: {errors:?}"
        );
        if want(&cluster) {
            return cluster;
        }
    }
}

async fn start(api: &ApiServer) -> KubeSource {
    tokio::time::timeout(Duration::from_secs(15), KubeSource::start(api.client()))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "KubeSource::start did not return within 15 s\nrequests answered:\n{}",
                api.request_log()
            )
        })
        .expect("KubeSource::start")
}

/// One object of every kind: namespace `prod`, pod `prod/web-1`, policy `prod/web-ingress`,
/// Service `prod/web` and its slice `prod/web-abc12`.
fn seed(api: &ApiServer) {
    api.create(&namespace("prod", &[("team", "web")]));
    api.create(&pod("prod", "web-1", "10.244.1.10", &[("app", "web")]));
    api.create(&policy("prod", "web-ingress", &[("app", "web")], &[8080]));
    api.create(&service("prod", "web", "10.96.0.10", 80, &[("app", "web")]));
    api.create(&slice("prod", "web-abc12", "web", &["10.244.1.10"]));
}

fn has_seed(c: &Cluster) -> bool {
    c.namespaces.contains_key("prod")
        && c.pods.contains_key(&PodKey::new("prod", "web-1"))
        && c.policies
            .contains_key(&PolicyKey::new("prod", "web-ingress"))
        && c.services.contains_key(&ServiceKey::new("prod", "web"))
        && c.endpoint_slices
            .contains_key(&SliceKey::new("prod", "web-abc12"))
}

fn pod_key(name: &str) -> PodKey {
    PodKey::new("prod", name)
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().expect("a test address")
}

fn policy_ports(c: &Cluster, name: &str) -> Option<Vec<u16>> {
    let p = c.policies.get(&PolicyKey::new("prod", name))?;
    Some(
        p.effective_ingress()
            .iter()
            .flat_map(|r| &r.ports)
            .filter_map(|p| match p.port {
                Some(PortRef::Number(n)) => Some(n),
                _ => None,
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// The double itself, through kube's own Api.

#[tokio::test]
async fn start_returns_only_once_every_kind_is_listed() {
    let _log = init_tracing();
    bounded(async {
        let api = ApiServer::start().await;
        seed(&api);
        api.set_fault(Fault::Hang, |r| {
            r.kind == Kind::EndpointSlice && r.verb == Verb::List
        });
        let mut starting = tokio::spawn(KubeSource::start(api.client()));
        let others = [
            Kind::Namespace,
            Kind::Pod,
            Kind::NetworkPolicy,
            Kind::Service,
        ];
        wait_for(
            &api,
            "the other kinds listed and watching, the EndpointSlice list hanging",
            Duration::from_secs(10),
            || {
                api.hanging(Kind::EndpointSlice) == 1
                    && others.iter().all(|k| api.open_watches(*k) == 1)
            },
        )
        .await;
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut starting)
                .await
                .is_err(),
            "KubeSource::start returned while the EndpointSlice list had not been answered"
        );
        assert_eq!(api.requests(Kind::EndpointSlice, Verb::Watch), 0);

        api.clear_fault();
        let mut source = tokio::time::timeout(Duration::from_secs(5), starting)
            .await
            .expect("start returns once the list is answered")
            .expect("the start task")
            .expect("KubeSource::start");
        let (cluster, errors) = source.snapshot();
        assert!(errors.is_empty(), "{errors:?}");
        assert!(has_seed(&cluster), "{}", summary(&cluster));
        assert_eq!(api.lists_started(Kind::EndpointSlice), 1);
    })
    .await
}

type Step = (
    &'static str,
    Box<dyn Fn(&ApiServer)>,
    Box<dyn Fn(&Cluster) -> bool>,
);

#[tokio::test]
async fn add_modify_and_delete_of_every_kind_reach_the_snapshot() {
    let _log = init_tracing();
    bounded(async {
        let api = ApiServer::start().await;
        api.create(&namespace("prod", &[]));
        let mut source = start(&api).await;
        let within = Duration::from_secs(5);
        let web = || pod_key("web-1");
        let steps: Vec<Step> = vec![
            (
                "Namespace added",
                // As JSON, the way a test can write any shape.
                Box::new(|api| {
                    api.create_json(serde_json::json!({
                        "apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": "dev", "labels": {"team": "dev"}},
                    }));
                }),
                Box::new(|c| {
                    c.namespaces
                        .get("dev")
                        .is_some_and(|n| n.labels.get("team").map(String::as_str) == Some("dev"))
                }),
            ),
            (
                "Namespace modified",
                Box::new(|api| {
                    api.update_json(serde_json::json!({
                        "apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": "dev", "labels": {"team": "platform"}},
                    }));
                }),
                Box::new(|c| {
                    c.namespaces.get("dev").is_some_and(|n| {
                        n.labels.get("team").map(String::as_str) == Some("platform")
                    })
                }),
            ),
            (
                "Pod added",
                Box::new(|api| {
                    api.create(&pod("prod", "web-1", "10.244.1.10", &[("app", "web")]));
                }),
                Box::new(move |c| {
                    c.pods
                        .get(&web())
                        .is_some_and(|p| p.ips == [ip("10.244.1.10")])
                }),
            ),
            (
                "Pod modified",
                Box::new(|api| {
                    api.apply(&pod(
                        "prod",
                        "web-1",
                        "10.244.1.11",
                        &[("app", "web"), ("v", "2")],
                    ));
                }),
                Box::new(move |c| {
                    c.pods.get(&web()).is_some_and(|p| {
                        p.ips == [ip("10.244.1.11")]
                            && p.labels.get("v").map(String::as_str) == Some("2")
                    })
                }),
            ),
            (
                "NetworkPolicy added",
                Box::new(|api| {
                    api.create(&policy("prod", "web-ingress", &[("app", "web")], &[8080]));
                }),
                Box::new(|c| policy_ports(c, "web-ingress") == Some(vec![8080])),
            ),
            (
                "NetworkPolicy modified",
                Box::new(|api| {
                    api.update(&policy(
                        "prod",
                        "web-ingress",
                        &[("app", "web")],
                        &[8080, 9090],
                    ));
                }),
                Box::new(|c| policy_ports(c, "web-ingress") == Some(vec![8080, 9090])),
            ),
            (
                "Service added",
                Box::new(|api| {
                    api.create(&service("prod", "web", "10.96.0.10", 80, &[("app", "web")]));
                }),
                Box::new(|c| {
                    c.services
                        .get(&ServiceKey::new("prod", "web"))
                        .is_some_and(|s| s.ports.iter().map(|p| p.port).eq([80]))
                }),
            ),
            (
                "Service modified",
                Box::new(|api| {
                    api.update(&service(
                        "prod",
                        "web",
                        "10.96.0.10",
                        8000,
                        &[("app", "web")],
                    ));
                }),
                Box::new(|c| {
                    c.services
                        .get(&ServiceKey::new("prod", "web"))
                        .is_some_and(|s| s.ports.iter().map(|p| p.port).eq([8000]))
                }),
            ),
            (
                "EndpointSlice added",
                Box::new(|api| {
                    api.create(&slice("prod", "web-abc12", "web", &["10.244.1.11"]));
                }),
                Box::new(|c| {
                    c.endpoint_slices
                        .get(&SliceKey::new("prod", "web-abc12"))
                        .is_some_and(|s| s.endpoints.len() == 1)
                }),
            ),
            (
                "EndpointSlice modified",
                Box::new(|api| {
                    api.update(&slice(
                        "prod",
                        "web-abc12",
                        "web",
                        &["10.244.1.11", "10.244.1.12"],
                    ));
                }),
                Box::new(|c| {
                    c.endpoint_slices
                        .get(&SliceKey::new("prod", "web-abc12"))
                        .is_some_and(|s| s.endpoints.len() == 2)
                }),
            ),
            (
                "EndpointSlice deleted",
                Box::new(|api| {
                    api.delete::<EndpointSlice>("prod/web-abc12");
                }),
                Box::new(|c| c.endpoint_slices.is_empty()),
            ),
            (
                "Service deleted",
                Box::new(|api| {
                    api.delete::<Service>("prod/web");
                }),
                Box::new(|c| c.services.is_empty()),
            ),
            (
                "NetworkPolicy deleted",
                Box::new(|api| {
                    api.delete::<NetworkPolicy>("prod/web-ingress");
                }),
                Box::new(|c| c.policies.is_empty()),
            ),
            (
                "Pod deleted",
                Box::new(|api| {
                    api.delete::<Pod>("prod/web-1");
                }),
                Box::new(|c| c.pods.is_empty()),
            ),
            (
                "Namespace deleted",
                Box::new(|api| {
                    api.delete::<Namespace>("dev");
                }),
                Box::new(|c| c.namespaces.keys().eq(["prod"])),
            ),
        ];
        for (what, change, want) in &steps {
            drain(&source);
            change(&api);
            converge(&mut source, &api, what, within, want).await;
        }
        // All of it came through the watches: one list and one watch per kind.
        for kind in Kind::ALL {
            assert_eq!(api.lists_started(kind), 1, "{kind:?} lists");
            assert_eq!(api.requests(kind, Verb::Watch), 1, "{kind:?} watches");
        }
    })
    .await
}

#[tokio::test]
async fn paged_first_lists_arrive_complete_and_consistent() {
    let _log = init_tracing();
    bounded(async {
        let api = ApiServer::start().await;
        api.create(&namespace("prod", &[]));
        // More than the watcher's page size (500): 3 pages of pods, 2 of policies.
        for i in 0..1234 {
            let addr = format!("10.244.{}.{}", i / 250, i % 250 + 1);
            api.create(&pod(
                "prod",
                &format!("web-{i:04}"),
                &addr,
                &[("app", "web")],
            ));
        }
        for i in 0..501 {
            api.create(&policy(
                "prod",
                &format!("p-{i:03}"),
                &[("app", "web")],
                &[8080],
            ));
        }
        // The pods' second page waits while the cluster changes: the list stays at the first
        // page's version, and the watch from there brings the changes.
        api.set_fault(Fault::Hang, |r| {
            r.kind == Kind::Pod && r.verb == Verb::List && r.continue_token.is_some()
        });
        let starting = tokio::spawn(KubeSource::start(api.client()));
        wait_for(
            &api,
            "the pods' second page hanging",
            Duration::from_secs(10),
            || api.hanging(Kind::Pod) == 1,
        )
        .await;
        api.create(&pod("prod", "late", "10.250.0.1", &[]));
        api.delete::<Pod>("prod/web-1233");
        api.update(&pod("prod", "web-0000", "10.250.0.2", &[("app", "web")]));
        api.clear_fault();
        let mut source = tokio::time::timeout(Duration::from_secs(10), starting)
            .await
            .expect("start returns")
            .unwrap()
            .expect("KubeSource::start");

        let pages = |kind| api.count(|r| r.info.kind == kind && r.info.verb == Verb::List);
        assert_eq!(pages(Kind::Pod), 3, "{}", api.request_log());
        assert_eq!(pages(Kind::NetworkPolicy), 2, "{}", api.request_log());
        assert_eq!(api.lists_started(Kind::Pod), 1);
        assert!(api.answered().iter().all(|r| r.answer == Answer::Served));

        let (first, errors) = source.snapshot();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(first.policies.len(), 501);
        assert!(first.pods.len() >= 1234, "{}", summary(&first));
        drain(&source);
        // The changes made during the list, by the watch (the notification may have come before
        // the drain: then the store already holds it).
        let want = |c: &Cluster| {
            c.pods.len() == 1234
                && c.pods.contains_key(&pod_key("late"))
                && !c.pods.contains_key(&pod_key("web-1233"))
                && c.pods[&pod_key("web-0000")].ips == [ip("10.250.0.2")]
        };
        if !want(&source.snapshot().0) {
            converge(
                &mut source,
                &api,
                "the changes made during the paged list",
                Duration::from_secs(5),
                want,
            )
            .await;
        }
        assert_eq!(api.requests(Kind::Pod, Verb::Watch), 1);
    })
    .await
}

#[tokio::test]
async fn an_expired_continue_token_restarts_the_list() {
    let _log = init_tracing();
    bounded(async {
        let api = ApiServer::start().await;
        for i in 0..1234 {
            let addr = format!("10.244.{}.{}", i / 250, i % 250 + 1);
            api.create(&pod("prod", &format!("web-{i:04}"), &addr, &[]));
        }
        api.set_fault(Fault::Hang, |r| {
            r.kind == Kind::Pod && r.verb == Verb::List && r.continue_token.is_some()
        });
        let starting = tokio::spawn(KubeSource::start(api.client()));
        wait_for(
            &api,
            "the pods' second page hanging",
            Duration::from_secs(10),
            || api.hanging(Kind::Pod) == 1,
        )
        .await;
        api.compact();
        api.clear_fault();
        let mut source = tokio::time::timeout(Duration::from_secs(10), starting)
            .await
            .expect("start returns")
            .unwrap()
            .expect("KubeSource::start");
        assert_eq!(
            api.count(|r| r.info.kind == Kind::Pod
                && r.info.continue_token.is_some()
                && r.answer == Answer::Status(410)),
            1,
            "{}",
            api.request_log()
        );
        assert_eq!(api.lists_started(Kind::Pod), 2, "{}", api.request_log());
        let (cluster, _) = source.snapshot();
        assert_eq!(cluster.pods.len(), 1234);
    })
    .await
}

/// Stops the watches of `kind` and keeps them from coming back until `release`.
async fn take_watch_down(api: &ApiServer, kind: Kind) {
    wait_for(api, "the watch open", Duration::from_secs(10), || {
        api.open_watches(kind) == 1
    })
    .await;
    api.set_fault(Fault::Hang, move |r| {
        r.kind == kind && r.verb == Verb::Watch
    });
    assert_eq!(api.close_watches_of(kind), 1);
    wait_for(
        api,
        "the watch to come back and hang",
        Duration::from_secs(10),
        || api.hanging(kind) == 1,
    )
    .await;
}

#[tokio::test]
async fn a_relist_after_compaction_drops_what_was_deleted_meanwhile() {
    let _log = init_tracing();
    bounded(async {
        let api = ApiServer::start().await;
        seed(&api);
        api.create(&pod("prod", "web-2", "10.244.1.20", &[("app", "web")]));
        api.create(&pod("prod", "web-3", "10.244.1.30", &[("app", "web")]));
        let mut source = start(&api).await;

        take_watch_down(&api, Kind::Pod).await;
        api.delete::<Pod>("prod/web-1");
        api.delete::<Pod>("prod/web-2");
        api.create(&pod("prod", "web-4", "10.244.1.40", &[("app", "web")]));
        api.compact();
        drain(&source);
        api.clear_fault();

        converge(
            &mut source,
            &api,
            "the pods after the relist",
            Duration::from_secs(5),
            |c| c.pods.keys().eq([&pod_key("web-3"), &pod_key("web-4")]) && has_other_seed(c),
        )
        .await;
        assert_eq!(
            api.count(|r| r.info.kind == Kind::Pod && r.answer == Answer::Gone),
            1,
            "the resumed watch got 410\n{}",
            api.request_log()
        );
        assert_eq!(api.lists_started(Kind::Pod), 2);
        for kind in [
            Kind::Namespace,
            Kind::NetworkPolicy,
            Kind::Service,
            Kind::EndpointSlice,
        ] {
            assert_eq!(api.lists_started(kind), 1, "{kind:?} did not need a relist");
        }
    })
    .await
}

fn has_other_seed(c: &Cluster) -> bool {
    c.namespaces.contains_key("prod")
        && c.policies
            .contains_key(&PolicyKey::new("prod", "web-ingress"))
        && c.services.contains_key(&ServiceKey::new("prod", "web"))
        && c.endpoint_slices
            .contains_key(&SliceKey::new("prod", "web-abc12"))
}

/// Every NetworkPolicy deleted while the policies' watch was down: the relist returns none, the
/// snapshot must end with none, and `changed` must say so.
#[tokio::test]
async fn a_relist_that_finds_no_policies_left_empties_the_snapshot() {
    let _log = init_tracing();
    bounded(async {
        let api = ApiServer::start().await;
        seed(&api);
        api.create(&policy("prod", "deny-all", &[], &[]));
        let mut source = start(&api).await;
        assert_eq!(source.snapshot().0.policies.len(), 2);

        take_watch_down(&api, Kind::NetworkPolicy).await;
        assert_eq!(api.delete_all(Kind::NetworkPolicy), 2);
        assert_eq!(api.object_count(Kind::NetworkPolicy), 0);
        api.compact();
        drain(&source);
        api.clear_fault();

        wait_for(
            &api,
            "the policies' relist",
            Duration::from_secs(10),
            || {
                api.count(|r| {
                    r.info.kind == Kind::NetworkPolicy
                        && r.info.verb == Verb::List
                        && r.answer == Answer::Served
                }) == 2
            },
        )
        .await;
        assert_eq!(
            api.count(|r| r.info.kind == Kind::NetworkPolicy && r.answer == Answer::Gone),
            1,
            "the resumed watch got 410"
        );
        converge(
            &mut source,
            &api,
            "no NetworkPolicy after the empty relist",
            Duration::from_secs(5),
            |c| c.policies.is_empty() && c.pods.contains_key(&pod_key("web-1")),
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn an_outage_keeps_the_last_snapshot_and_recovers_within_5s() {
    let _log = init_tracing();
    bounded(async {
        let api = ApiServer::start().await;
        seed(&api);
        let mut source = start(&api).await;
        let (before, _) = source.snapshot();
        assert!(has_seed(&before));
        let intact = |source: &mut KubeSource, phase: &str| {
            let (now, _) = source.snapshot();
            assert!(
                now == before,
                "during {phase} the snapshot changed:\n{}\nwas:\n{}",
                summary(&now),
                summary(&before)
            );
        };
        let every_kind = |n: usize, answer: Answer| {
            Kind::ALL
                .iter()
                .all(|k| api.count(|r| r.info.kind == *k && r.answer == answer) >= n)
        };

        // 5xx for at least a second (the client retries 503 itself), watches down with it.
        api.set_fault_all(Fault::Status(503));
        api.close_watches();
        let since = Instant::now();
        wait_for(
            &api,
            "a 503 for every kind",
            Duration::from_secs(10),
            || every_kind(1, Answer::Status(503)),
        )
        .await;
        tokio::time::sleep_until(since + Duration::from_secs(1)).await;
        intact(&mut source, "the 5xx phase");

        // Then a hang, while the cluster changes.
        api.set_fault_all(Fault::Hang);
        api.create(&namespace("dev", &[]));
        api.create(&pod("prod", "web-2", "10.244.1.20", &[("app", "web")]));
        api.update(&policy(
            "prod",
            "web-ingress",
            &[("app", "web")],
            &[8080, 9090],
        ));
        api.delete::<Service>("prod/web");
        api.update(&slice(
            "prod",
            "web-abc12",
            "web",
            &["10.244.1.10", "10.244.1.20"],
        ));
        wait_for(
            &api,
            "a request of every kind hanging",
            Duration::from_secs(15),
            || Kind::ALL.iter().all(|k| api.hanging(*k) >= 1),
        )
        .await;
        intact(&mut source, "the hang");

        // Then connection resets: the hung requests, and one more try of every kind.
        api.set_fault_all(Fault::Reset);
        wait_for(
            &api,
            "two resets for every kind",
            Duration::from_secs(10),
            || every_kind(2, Answer::Reset),
        )
        .await;
        intact(&mut source, "the resets");

        drain(&source);
        api.clear_fault();
        let recovered = Instant::now();
        converge(
            &mut source,
            &api,
            "the changes made during the outage",
            Duration::from_secs(5),
            |c| {
                c.namespaces.contains_key("dev")
                    && c.pods.contains_key(&pod_key("web-2"))
                    && policy_ports(c, "web-ingress") == Some(vec![8080, 9090])
                    && c.services.is_empty()
                    && c.endpoint_slices
                        .get(&SliceKey::new("prod", "web-abc12"))
                        .is_some_and(|s| s.endpoints.len() == 2)
            },
        )
        .await;
        eprintln!("recovered {:?} after the API did", recovered.elapsed());
    })
    .await
}
