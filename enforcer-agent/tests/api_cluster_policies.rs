//! The network-policy-api kinds through the agent's Kubernetes source (`KubeSource`), driven by
//! the real `kube` client against the API server double of `support::apiserver`: the
//! ClusterNetworkPolicy (v1alpha2) and the v1alpha1 AdminNetworkPolicy and
//! BaselineAdminNetworkPolicy listed and watched into the snapshot, invalid versions, and the
//! CRDs' absence: not installed at start (healthy, empty, logged once), installed later (picked
//! up within the recheck interval), removed (the kind empties), and failing like any other kind
//! (last state kept, stale). And the Nodes that `nodes` peers select: listed and watched with
//! their labels and addresses, and a ClusterNetworkPolicy's `nodes` peer compiled to their
//! addresses as the labels change. No privileges needed, no cluster.
//!
//! "Converged" is what the agent's sync loop sees, as in `api_source.rs`: a snapshot taken right
//! after a `changed` notification shows the state.

#[path = "support/logging.rs"]
mod logging;
mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use enforcer_agent::compile::{compile, evaluate, Direction, NodeInput};
use enforcer_agent::model::cluster_policy::{
    Action, ClusterPolicy, ClusterPolicyKey, ClusterPolicyKind, ProtocolMatch, Tier,
};
use enforcer_agent::model::{Cluster, Protocol};
use enforcer_agent::source::kube::{KubeSource, CRD_KINDS, KINDS};
use enforcer_agent::source::objects::KEPT_LAST_GOOD;
use futures::FutureExt;
use logging::init_tracing;
use serde_json::json;
use support::apiserver::{Answer, ApiServer, Fault, Kind, Verb};
use support::{
    admin_network_policy, baseline_admin_network_policy, bounded, cluster_network_policy,
    namespace, node, pod, summary, wait_for,
};
use tokio::time::Instant;

const CNP: ClusterPolicyKind = ClusterPolicyKind::ClusterNetworkPolicy;
const ANP: ClusterPolicyKind = ClusterPolicyKind::AdminNetworkPolicy;
const BANP: ClusterPolicyKind = ClusterPolicyKind::BaselineAdminNetworkPolicy;

/// The recheck interval of a CRD that is not installed, in these tests (the agent's is 30 s).
const RECHECK: Duration = Duration::from_millis(300);

fn drain(source: &KubeSource) {
    let _ = source.changed.notified().now_or_never();
}

/// Waits as the sync loop does, for `changed` and then a snapshot, until a snapshot taken right
/// after a notification satisfies `want` (which sees the conversion errors too); returns it.
async fn converge(
    source: &mut KubeSource,
    api: &ApiServer,
    what: &str,
    within: Duration,
    want: impl Fn(&Cluster, &[String]) -> bool,
) -> (Cluster, Vec<String>) {
    let deadline = Instant::now() + within;
    let changed = source.changed.clone();
    loop {
        if tokio::time::timeout_at(deadline, changed.notified())
            .await
            .is_err()
        {
            let (now, errors) = source.snapshot();
            panic!(
                "{what}: no snapshot taken after a `changed` notification showed it within \
                 {within:?} (the stores hold it now: {}).\nthe stores now:\n{}\nerrors: \
                 {errors:?}\nrequests answered:\n{}",
                want(&now, &errors),
                summary(&now),
                api.request_log()
            );
        }
        let (cluster, errors) = source.snapshot();
        if want(&cluster, &errors) {
            return (cluster, errors);
        }
    }
}

async fn start(api: &ApiServer) -> KubeSource {
    let starting = KubeSource::start_with_recheck(api.client(), Duration::from_secs(50), RECHECK);
    tokio::time::timeout(Duration::from_secs(15), starting)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "KubeSource::start did not return within 15 s\nrequests answered:\n{}",
                api.request_log()
            )
        })
        .expect("KubeSource::start")
}

fn key(kind: ClusterPolicyKind, name: &str) -> ClusterPolicyKey {
    ClusterPolicyKey::new(kind, name)
}

fn get<'a>(c: &'a Cluster, kind: ClusterPolicyKind, name: &str) -> Option<&'a ClusterPolicy> {
    c.cluster_policies.get(&key(kind, name))
}

/// The first ingress rule's action and TCP port of a policy of the support builders.
fn rule_of(p: &ClusterPolicy) -> (Action, u16) {
    let rule = &p.ingress[0];
    match rule.protocols.as_deref() {
        Some(
            [ProtocolMatch::Ports {
                protocol: Protocol::Tcp,
                start,
                end,
            }],
        ) if start == end => (rule.action, *start),
        other => panic!("{}: unexpected protocols {other:?}", p.key),
    }
}

fn priority_of(c: &Cluster, kind: ClusterPolicyKind, name: &str) -> Option<u32> {
    get(c, kind, name).map(|p| p.priority)
}

/// The double's kind of a CRD kind of the source.
fn double_kind(name: &str) -> Kind {
    Kind::CRDS
        .into_iter()
        .find(|k| k.name() == name)
        .unwrap_or_else(|| panic!("no CRD kind {name}"))
}

/// Log lines at info and above, captured for the test's thread (the source's tasks run on it:
/// `#[tokio::test]` is single-threaded).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

impl Logs {
    fn capture() -> (tracing::subscriber::DefaultGuard, Logs) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("enforcer_agent=info"))
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish();
        (tracing::subscriber::set_default(subscriber), logs)
    }

    fn lines_with(&self, text: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(text))
            .map(str::to_owned)
            .collect()
    }

    fn all(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cluster_policies_are_listed_and_watched_into_the_snapshot() {
    let _log = init_tracing();
    bounded(async {
        let api = ApiServer::start().await;
        api.create(&namespace("x", &[("ns", "x")]));
        api.create_json(cluster_network_policy("deny-80", "Admin", 10, "Deny", 80));
        api.create_json(admin_network_policy("allow-81", 20, "Allow", 81));
        api.create_json(baseline_admin_network_policy("default", "Deny", 82));
        let mut source = start(&api).await;

        let (first, errors) = source.snapshot();
        assert!(errors.is_empty(), "{errors:?}");
        let cnp = get(&first, CNP, "deny-80").expect("the CNP listed");
        assert_eq!((cnp.tier, cnp.priority), (Tier::Admin, 10));
        assert_eq!(rule_of(cnp), (Action::Deny, 80));
        assert_eq!(first.cluster_policies.len(), 3, "{}", summary(&first));
        let revisions = source.snapshot_full().revisions;
        assert_eq!(revisions.keys().copied().collect::<Vec<_>>(), {
            let mut k = KINDS.to_vec();
            k.sort();
            k
        });
        for kind in CRD_KINDS {
            assert_eq!(revisions[kind].objects, 1, "{kind}");
        }
        assert!(source.not_installed().is_empty());

        // Through the watches: added, modified, deleted, of each kind.
        let within = Duration::from_secs(5);
        drain(&source);
        api.create_json(cluster_network_policy(
            "pass-443", "Baseline", 5, "Pass", 443,
        ));
        converge(&mut source, &api, "a CNP added", within, |c, _| {
            get(c, CNP, "pass-443")
                .is_some_and(|p| p.tier == Tier::Baseline && rule_of(p) == (Action::Pass, 443))
        })
        .await;
        drain(&source);
        api.update_json(cluster_network_policy("deny-80", "Admin", 7, "Deny", 8080));
        converge(&mut source, &api, "the CNP modified", within, |c, _| {
            get(c, CNP, "deny-80").is_some_and(|p| p.priority == 7 && rule_of(p).1 == 8080)
        })
        .await;
        drain(&source);
        api.update_json(admin_network_policy("allow-81", 30, "Pass", 81));
        converge(&mut source, &api, "the ANP modified", within, |c, _| {
            get(c, ANP, "allow-81")
                .is_some_and(|p| p.priority == 30 && rule_of(p).0 == Action::Pass)
        })
        .await;
        drain(&source);
        api.delete_kind(Kind::ClusterNetworkPolicy, "deny-80");
        api.delete_kind(Kind::AdminNetworkPolicy, "allow-81");
        api.delete_kind(Kind::BaselineAdminNetworkPolicy, "default");
        let (last, _) = converge(&mut source, &api, "three deletes", within, |c, _| {
            c.cluster_policies.len() == 1
        })
        .await;
        assert!(get(&last, CNP, "pass-443").is_some(), "{}", summary(&last));
        for kind in Kind::CRDS {
            assert_eq!(api.lists_started(kind), 1, "{kind:?} lists");
            assert_eq!(api.requests(kind, Verb::Watch), 1, "{kind:?} watches");
        }
    })
    .await
}

#[tokio::test]
async fn the_v1alpha1_kinds_are_converted_into_their_tiers() {
    let _log = init_tracing();
    bounded(async {
        let api = ApiServer::start().await;
        api.create_json(admin_network_policy("anp", 3, "Allow", 81));
        api.create_json(baseline_admin_network_policy("default", "Allow", 82));
        // The API allows only `default`; a second one is reported and not applied.
        api.create_json(baseline_admin_network_policy("other", "Deny", 83));
        let mut source = start(&api).await;
        let (c, errors) = source.snapshot();

        let anp = get(&c, ANP, "anp").expect("the ANP");
        assert_eq!((anp.tier, anp.priority), (Tier::Admin, 3));
        assert_eq!(rule_of(anp), (Action::Accept, 81), "Allow is Accept");
        assert_eq!(anp.ingress[0].name.as_deref(), Some("rule"));
        let banp = get(&c, BANP, "default").expect("the BANP");
        assert_eq!((banp.tier, banp.priority), (Tier::Baseline, 0));
        assert_eq!(rule_of(banp), (Action::Accept, 82));
        assert!(get(&c, BANP, "other").is_none(), "{}", summary(&c));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("BaselineAdminNetworkPolicy")
                && errors[0].contains("other")
                && errors[0].contains("metadata.name"),
            "{errors:?}"
        );
    })
    .await
}

#[tokio::test]
async fn an_invalid_update_keeps_the_last_good_version_and_is_reported() {
    let _log = init_tracing();
    bounded(async {
        let api = ApiServer::start().await;
        api.create_json(cluster_network_policy("p", "Admin", 10, "Deny", 80));
        let mut source = start(&api).await;
        let within = Duration::from_secs(5);

        drain(&source);
        api.update_json(cluster_network_policy("p", "Middle", 11, "Deny", 81));
        let (c, errors) = converge(&mut source, &api, "the invalid version", within, |_, e| {
            !e.is_empty()
        })
        .await;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("ClusterNetworkPolicy")
                && errors[0].contains("spec.tier")
                && errors[0].ends_with(KEPT_LAST_GOOD),
            "{errors:?}"
        );
        let kept = get(&c, CNP, "p").expect("the last good version stays");
        assert_eq!((kept.priority, rule_of(kept)), (10, (Action::Deny, 80)));

        // A new invalid object: reported, not applied.
        drain(&source);
        api.create_json(cluster_network_policy("q", "Admin", 1001, "Deny", 80));
        let (c, errors) = converge(&mut source, &api, "a new invalid CNP", within, |_, e| {
            e.len() == 2
        })
        .await;
        assert!(get(&c, CNP, "q").is_none(), "{}", summary(&c));
        assert!(
            errors.iter().any(|e| e.contains("q")
                && e.contains("spec.priority")
                && !e.ends_with(KEPT_LAST_GOOD)),
            "{errors:?}"
        );

        // Valid again: applied, its error gone.
        drain(&source);
        api.update_json(cluster_network_policy("p", "Admin", 12, "Deny", 82));
        let (_, errors) = converge(&mut source, &api, "p valid again", within, |c, e| {
            priority_of(c, CNP, "p") == Some(12) && e.len() == 1
        })
        .await;
        assert!(errors[0].contains("spec.priority"), "{errors:?}");
    })
    .await
}

#[tokio::test]
async fn crds_not_installed_at_start_are_empty_healthy_and_logged_once() {
    let (_log, logs) = Logs::capture();
    bounded(async {
        let api = ApiServer::start().await;
        api.create(&namespace("x", &[("ns", "x")]));
        for kind in Kind::CRDS {
            api.uninstall(kind);
        }
        let mut source = start(&api).await;
        let (c, errors) = source.snapshot();
        assert!(errors.is_empty(), "{errors:?}");
        assert!(c.namespaces.contains_key("x"), "the other kinds are there");
        assert!(c.cluster_policies.is_empty());
        assert_eq!(source.not_installed(), {
            let mut k = CRD_KINDS.to_vec();
            k.sort();
            k
        });
        let revisions = source.snapshot_full().revisions;
        for kind in CRD_KINDS {
            assert_eq!(revisions[kind].objects, 0, "{kind}");
        }

        // Several rechecks later: still healthy, looked for at the interval and not more often,
        // never watched, and said once.
        let since = Instant::now();
        let lists = |kind| api.lists_started(kind);
        let before: Vec<usize> = Kind::CRDS.iter().map(|k| lists(*k)).collect();
        while since.elapsed() < RECHECK * 5 {
            assert_eq!(source.stale_for(), None, "a missing CRD is not an outage");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (kind, before) in Kind::CRDS.iter().zip(before) {
            let during = lists(*kind) - before;
            assert!(
                (2..=6).contains(&during),
                "{kind:?}: {during} lists in {:?} with a recheck every {RECHECK:?}",
                since.elapsed()
            );
            assert_eq!(api.requests(*kind, Verb::Watch), 0, "{kind:?}");
            assert!(api
                .answered()
                .iter()
                .filter(|r| r.info.kind == *kind)
                .all(|r| r.answer == Answer::Status(404)));
        }
        for kind in CRD_KINDS {
            let said = logs.lines_with(&format!(": {kind} CRD not installed; watching for it"));
            assert_eq!(said.len(), 1, "{kind}: {said:?}");
            assert!(said[0].contains("INFO"), "{said:?}");
        }
        assert!(
            logs.lines_with("WARN").is_empty() && logs.lines_with("ERROR").is_empty(),
            "{}",
            logs.all()
        );
        let (c, errors) = source.snapshot();
        assert!(errors.is_empty() && c.cluster_policies.is_empty());
    })
    .await
}

#[tokio::test]
async fn a_crd_installed_later_is_picked_up_within_the_recheck_interval() {
    let (_log, logs) = Logs::capture();
    bounded(async {
        let api = ApiServer::start().await;
        api.uninstall(Kind::ClusterNetworkPolicy);
        api.create_json(admin_network_policy("anp", 3, "Deny", 81));
        let mut source = start(&api).await;
        assert_eq!(source.not_installed(), ["ClusterNetworkPolicy"]);
        assert!(get(&source.snapshot().0, ANP, "anp").is_some());
        // Let a recheck or two go by first.
        tokio::time::sleep(RECHECK * 2).await;

        drain(&source);
        api.install(Kind::ClusterNetworkPolicy);
        api.create_json(cluster_network_policy("late", "Admin", 1, "Deny", 80));
        let installed = Instant::now();
        let within = RECHECK + Duration::from_secs(1);
        converge(
            &mut source,
            &api,
            "the CNP of the new CRD",
            within,
            |c, e| e.is_empty() && get(c, CNP, "late").is_some() && get(c, ANP, "anp").is_some(),
        )
        .await;
        let took = installed.elapsed();
        eprintln!("picked up {took:?} after the CRD was installed (recheck {RECHECK:?})");
        assert!(source.not_installed().is_empty());
        assert_eq!(source.stale_for(), None);
        wait_for(&api, "the CNP watch open", Duration::from_secs(5), || {
            api.open_watches(Kind::ClusterNetworkPolicy) == 1
        })
        .await;
        // And watched from then on.
        drain(&source);
        api.update_json(cluster_network_policy("late", "Admin", 2, "Deny", 80));
        converge(
            &mut source,
            &api,
            "the CNP modified",
            Duration::from_secs(5),
            |c, _| priority_of(c, CNP, "late") == Some(2),
        )
        .await;
        assert_eq!(
            logs.lines_with("ClusterNetworkPolicy CRD installed; watching it")
                .len(),
            1,
            "{}",
            logs.all()
        );
        assert_eq!(
            logs.lines_with("CRD not installed").len(),
            1,
            "{}",
            logs.all()
        );
    })
    .await
}

/// Decided in `source/kube_crd.rs`: a 404 after the watch ran empties the kind (removing a CRD
/// deletes its objects), whether the deletions were seen or missed while the watch was down.
#[tokio::test]
async fn a_crd_removed_empties_its_kind_and_is_looked_for_again() {
    let _log = init_tracing();
    bounded(async {
        let api = ApiServer::start().await;
        api.create_json(cluster_network_policy("a", "Admin", 1, "Deny", 80));
        api.create_json(admin_network_policy("anp", 3, "Deny", 81));
        api.create_json(baseline_admin_network_policy("default", "Deny", 82));
        let mut source = start(&api).await;
        assert_eq!(source.snapshot().0.cluster_policies.len(), 3);
        let within = Duration::from_secs(5);

        // Removed while watched: the deletions arrive, then the 404.
        drain(&source);
        assert_eq!(api.uninstall(Kind::ClusterNetworkPolicy), 1);
        converge(&mut source, &api, "the CNPs gone", within, |c, e| {
            e.is_empty() && get(c, CNP, "a").is_none() && c.cluster_policies.len() == 2
        })
        .await;
        wait_for(&api, "the CNP kind seen as not installed", within, || {
            source.not_installed() == ["ClusterNetworkPolicy"]
        })
        .await;

        // Removed while the watch was down: the deletions are missed, the 404 empties the kind.
        let kind = Kind::AdminNetworkPolicy;
        wait_for(&api, "the ANP watch open", within, || {
            api.open_watches(kind) == 1
        })
        .await;
        api.set_fault(Fault::Hang, move |r| r.kind == kind);
        assert_eq!(api.close_watches_of(kind), 1);
        wait_for(&api, "the ANP watch hanging", within, || {
            api.hanging(kind) == 1
        })
        .await;
        api.uninstall(kind);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            get(&source.snapshot().0, ANP, "anp").is_some(),
            "held while the API does not answer"
        );
        drain(&source);
        api.clear_fault();
        converge(
            &mut source,
            &api,
            "the ANP emptied by the 404",
            within,
            |c, _| get(c, ANP, "anp").is_none() && get(c, BANP, "default").is_some(),
        )
        .await;
        assert_eq!(source.stale_for(), None);

        // Installed again: picked up.
        drain(&source);
        api.install(Kind::ClusterNetworkPolicy);
        api.create_json(cluster_network_policy("b", "Admin", 1, "Deny", 80));
        converge(
            &mut source,
            &api,
            "the CNP after the CRD came back",
            RECHECK + within,
            |c, _| get(c, CNP, "b").is_some(),
        )
        .await;
        assert_eq!(source.not_installed(), ["AdminNetworkPolicy"]);
    })
    .await
}

#[tokio::test]
async fn a_failing_cnp_watch_keeps_the_last_state_and_goes_stale() {
    let _log = init_tracing();
    bounded(async {
        let api = ApiServer::start().await;
        api.create(&namespace("x", &[("ns", "x")]));
        api.create_json(cluster_network_policy("p", "Admin", 10, "Deny", 80));
        let mut source = start(&api).await;
        let (before, _) = source.snapshot();
        let kind = Kind::ClusterNetworkPolicy;

        // 500s for the CNP kind only, its watch ended: every try fails.
        wait_for(&api, "the CNP watch open", Duration::from_secs(5), || {
            api.open_watches(kind) == 1
        })
        .await;
        api.set_fault(Fault::Status(500), move |r| r.kind == kind);
        api.close_watches_of(kind);
        api.update_json(cluster_network_policy("p", "Admin", 20, "Deny", 80));
        wait_for(&api, "the CNP kind stale", Duration::from_secs(10), || {
            source.stale_for().is_some()
        })
        .await;
        wait_for(&api, "two failed tries", Duration::from_secs(10), || {
            api.count(|r| r.info.kind == kind && r.answer == Answer::Status(500)) >= 2
        })
        .await;
        let (during, errors) = source.snapshot();
        assert!(errors.is_empty(), "{errors:?}");
        assert!(
            during == before,
            "the last state stays:\n{}",
            summary(&during)
        );
        assert!(
            source.not_installed().is_empty(),
            "a 500 is not a missing CRD"
        );
        for other in [Kind::Namespace, Kind::AdminNetworkPolicy] {
            assert_eq!(api.open_watches(other), 1, "{other:?} is unaffected");
        }

        drain(&source);
        api.clear_fault();
        let recovered = Instant::now();
        converge(
            &mut source,
            &api,
            "the change made meanwhile",
            Duration::from_secs(6),
            |c, _| priority_of(c, CNP, "p") == Some(20),
        )
        .await;
        wait_for(&api, "healthy again", Duration::from_secs(5), || {
            source.stale_for().is_none()
        })
        .await;
        eprintln!("recovered {:?} after the API did", recovered.elapsed());
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Nodes, for `nodes` peers.

/// A Node's labels (`key=value`, sorted) and addresses as the snapshot holds them.
fn node_of(c: &Cluster, name: &str) -> Option<(Vec<String>, Vec<String>)> {
    let addresses = c.nodes.get(name)?;
    let labels = c.node_labels.get(name)?;
    Some((
        labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        addresses.iter().map(ToString::to_string).collect(),
    ))
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn nodes_are_listed_and_watched_into_the_snapshot_with_labels_and_addresses() {
    let _log = init_tracing();
    bounded(async {
        let api = ApiServer::start().await;
        api.create(&node("worker-a", "192.168.0.10", &[("role", "infra")]));
        // ExternalIP is kept too, the Hostname address (not an IP) is not.
        let mut b = node("worker-b", "192.168.0.11", &[("role", "app")]);
        b.status.as_mut().unwrap().addresses.as_mut().unwrap().push(
            k8s_openapi::api::core::v1::NodeAddress {
                type_: "ExternalIP".into(),
                address: "203.0.113.11".into(),
            },
        );
        api.create(&b);
        let mut source = start(&api).await;

        let (first, errors) = source.snapshot();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            node_of(&first, "worker-a"),
            Some((strings(&["role=infra"]), strings(&["192.168.0.10"]))),
            "{}",
            summary(&first)
        );
        assert_eq!(
            node_of(&first, "worker-b"),
            Some((
                strings(&["role=app"]),
                strings(&["192.168.0.11", "203.0.113.11"])
            ))
        );
        assert_eq!(source.snapshot_full().revisions["Node"].objects, 2);
        assert_eq!(source.stale_for(), None);

        let within = Duration::from_secs(5);
        // A label changed.
        drain(&source);
        api.update(&node(
            "worker-a",
            "192.168.0.10",
            &[("role", "infra"), ("zone", "z1")],
        ));
        converge(&mut source, &api, "worker-a relabelled", within, |c, _| {
            node_of(c, "worker-a").is_some_and(|(l, _)| l == ["role=infra", "zone=z1"])
        })
        .await;
        // An address changed.
        drain(&source);
        api.update(&node("worker-b", "192.168.0.21", &[("role", "app")]));
        converge(
            &mut source,
            &api,
            "worker-b's new address",
            within,
            |c, _| node_of(c, "worker-b").is_some_and(|(_, a)| a == ["192.168.0.21"]),
        )
        .await;
        // An invalid label: reported, the last good version stays.
        drain(&source);
        api.update(&node("worker-a", "192.168.0.99", &[("role", "not valid!")]));
        let (c, errors) = converge(&mut source, &api, "the invalid Node", within, |_, e| {
            !e.is_empty()
        })
        .await;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("Node")
                && errors[0].contains("worker-a")
                && errors[0].contains("metadata.labels")
                && errors[0].ends_with(KEPT_LAST_GOOD),
            "{errors:?}"
        );
        assert_eq!(
            node_of(&c, "worker-a"),
            Some((
                strings(&["role=infra", "zone=z1"]),
                strings(&["192.168.0.10"])
            ))
        );
        // Added and deleted.
        drain(&source);
        api.create(&node("worker-c", "192.168.0.12", &[]));
        api.delete::<k8s_openapi::api::core::v1::Node>("worker-b");
        let (c, _) = converge(
            &mut source,
            &api,
            "worker-c in, worker-b out",
            within,
            |c, _| c.nodes.contains_key("worker-c") && !c.nodes.contains_key("worker-b"),
        )
        .await;
        assert!(!c.node_labels.contains_key("worker-b"), "{}", summary(&c));
        // All of it through the one watch.
        assert_eq!(api.lists_started(Kind::Node), 1);
        assert_eq!(api.requests(Kind::Node, Verb::Watch), 1);
    })
    .await
}

/// An Admin-tier ClusterNetworkPolicy denying egress from the namespaces labelled `ns=x` to
/// the Nodes labelled `role=infra`, any protocol.
fn deny_egress_to_infra_nodes() -> serde_json::Value {
    json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "deny-infra-nodes"},
        "spec": {
            "tier": "Admin", "priority": 5,
            "subject": {"namespaces": {"matchLabels": {"ns": "x"}}},
            "egress": [{
                "name": "no-infra", "action": "Deny",
                "to": [{"nodes": {"matchLabels": {"role": "infra"}}}],
            }],
        },
    })
}

#[tokio::test]
async fn a_nodes_peer_denies_the_watched_nodes_whose_labels_match() {
    let _log = init_tracing();
    bounded(async {
        let api = ApiServer::start().await;
        api.create(&namespace("x", &[("ns", "x")]));
        api.create(&pod("x", "client", "10.244.1.5", &[("app", "client")]));
        api.create(&node("worker-a", "192.168.0.10", &[("role", "infra")]));
        api.create(&node("worker-b", "192.168.0.11", &[("role", "app")]));
        api.create_json(deny_egress_to_infra_nodes());
        let mut source = start(&api).await;
        let node_1 = NodeInput {
            name: "node-1".into(),
            ..Default::default()
        };
        // Whether the client may open a TCP connection to `to`:443 with these tables.
        let allowed = |c: &Cluster, to: &str| {
            let tables = compile(c, &node_1);
            let me = c
                .pods
                .values()
                .find(|p| p.key.name == "client")
                .expect("the client pod")
                .key
                .clone();
            evaluate(&tables, &me, Direction::Egress, to.parse().unwrap(), 6, 443).allowed()
        };

        let (c, errors) = source.snapshot();
        assert!(errors.is_empty(), "{errors:?}");
        assert!(!allowed(&c, "192.168.0.10"), "the infra Node is denied");
        assert!(allowed(&c, "192.168.0.11"), "the other Node is not");
        assert!(allowed(&c, "198.51.100.7"), "nor is any other address");

        // worker-b labelled infra through the watch: denied too; worker-a relabelled: allowed.
        drain(&source);
        api.update(&node("worker-b", "192.168.0.11", &[("role", "infra")]));
        api.update(&node("worker-a", "192.168.0.10", &[("role", "app")]));
        let (c, _) = converge(
            &mut source,
            &api,
            "the relabelled Nodes",
            Duration::from_secs(5),
            |c, _| {
                node_of(c, "worker-a").is_some_and(|(l, _)| l == ["role=app"])
                    && node_of(c, "worker-b").is_some_and(|(l, _)| l == ["role=infra"])
            },
        )
        .await;
        assert!(!allowed(&c, "192.168.0.11"), "worker-b is infra now");
        assert!(allowed(&c, "192.168.0.10"), "worker-a is not any more");
        assert!(allowed(&c, "198.51.100.7"));

        // The Node deleted: its address is nobody's, and allowed.
        drain(&source);
        api.delete::<k8s_openapi::api::core::v1::Node>("worker-b");
        let (c, _) = converge(
            &mut source,
            &api,
            "worker-b deleted",
            Duration::from_secs(5),
            |c, _| !c.nodes.contains_key("worker-b"),
        )
        .await;
        assert!(allowed(&c, "192.168.0.11"));
    })
    .await
}

#[test]
fn the_double_kinds_match_the_sources_crd_kinds() {
    let names: Vec<&str> = Kind::CRDS.iter().map(|k| k.name()).collect();
    assert_eq!(names, CRD_KINDS);
    for kind in CRD_KINDS {
        assert_eq!(double_kind(kind).name(), kind);
        assert!(KINDS.contains(&kind));
    }
    // And the double serves every kind the source watches.
    let mut served: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
    let mut watched = KINDS.to_vec();
    served.sort();
    watched.sort();
    assert_eq!(served, watched);
}
