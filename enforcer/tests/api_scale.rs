//! The agent's memory with 100,000 pods through the API (the double, kube's real client):
//! the agent is started once against an empty cluster and once against 100,000 pods (with
//! managedFields, as the API server returns them) in 100 namespaces and 100 policies; its
//! resident memory once it has applied them (its status file says how many pods its snapshot
//! held) gives the cost per pod above the fixed base. The figure is printed and bounded here,
//! and quoted in the README.
//!
//! Then propagation at that scale, with two pods of the agent's node on veths of the test's
//! own (`common/first_packet.rs`): changes one at a time through the API, timed to the
//! agent's status saying it applied them, and flips of a policy's port timed to the first
//! packet that sees them. `ENFORCER_SCALE_CHANGES` changes of each (20 by default; the README
//! quotes 1,000 with `ENFORCER_SCALE_POLICIES=10000`); each must be seen within a second.
//! Needs root (the agent loads the datapath).

// The API server double lives with the agent library's source tests, which use it too.
#[path = "../../enforcer-agent/tests/support/mod.rs"]
mod support;

#[path = "common/agent.rs"]
mod agent;

#[path = "common/scale.rs"]
mod scale;

#[path = "common/first_packet.rs"]
mod first_packet;

use std::time::{Duration, Instant};

use scale::{cpu_time, memory, pod, policy, policy_on, MIB, NAMESPACES, PODS};
use serde_json::{json, Value};
use support::apiserver::ApiServer;
use support::root;

use agent::Agent;

/// The agent; with `netns`, the node's network namespace whose pods it attaches to.
fn start_agent(api: &ApiServer, tag: &str, netns: Option<&str>) -> Agent {
    Agent::start(
        &format!("api-scale-{tag}"),
        &api.kubeconfig(),
        |cmd, kubeconfig| {
            if let Some(ns) = netns {
                cmd.arg("--netns").arg(format!("/run/netns/{ns}"));
            }
            cmd.args(["--node", "local-node", "--no-alerts", "--no-metrics"])
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .arg("--status-file")
                .arg(kubeconfig.with_file_name("status.json"))
                .arg("--no-flow-socket");
        },
    )
}

/// Waits until the agent's status says its applied snapshot held `pods` pods and `policies`
/// NetworkPolicies.
async fn wait_applied(
    agent: &mut Agent,
    pods: usize,
    policies: usize,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let status: Option<Value> = std::fs::read_to_string(agent.dir.join("status.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let held = |kind: &str| {
            status
                .as_ref()
                .and_then(|s| s["source"][kind]["objects"].as_u64())
        };
        if held("Pod") == Some(pods as u64) && held("NetworkPolicy") == Some(policies as u64) {
            return started.elapsed();
        }
        agent.assert_running(&format!("{pods} pods"));
        assert!(
            started.elapsed() < within,
            "the agent did not apply {pods} pods within {within:?}; status: {status:?}\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `changes` changes through the API, one at a time (a policy's port, a pod relabelled, a pod
/// deleted and created again, in turn), each timed from the write to the API to the agent's
/// status saying its applied snapshot held it (the status is written after the maps): the
/// propagation on the API path (watch delivery, the sync loop's settle time, snapshot,
/// compile, apply, status). Prints p50/p99/max.
async fn propagation(api: &ApiServer, agent: &mut Agent, policies: usize, changes: usize) {
    let status_path = agent.dir.join("status.json");
    let newest = |kind: &str| -> u64 {
        std::fs::read_to_string(&status_path)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|s| s["source"][kind]["newest"].as_u64())
            .unwrap_or(0)
    };
    let mut took = Vec::new();
    for k in 0..changes {
        let ns = (k * 37) % NAMESPACES;
        let i = ns + NAMESPACES * ((k * 13) % (PODS / NAMESPACES));
        let started = Instant::now();
        let (kind, rv) = match k % 3 {
            0 => {
                let p = (k / 3) % (policies / NAMESPACES).max(1);
                let port = json!(8000 + (k % 1000) as u16);
                ("NetworkPolicy", api.update_json(policy_on(ns, p, port)))
            }
            1 => {
                let mut o = pod(ns, i);
                o["metadata"]["labels"]["tier"] = json!(format!("t{k}"));
                ("Pod", api.update_json(o))
            }
            _ => {
                let o = pod(ns, i);
                let key = format!(
                    "{}/{}",
                    o["metadata"]["namespace"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap()
                );
                api.delete_kind(support::apiserver::Kind::Pod, &key);
                ("Pod", api.create_json(o))
            }
        };
        while newest(kind) < rv {
            agent.assert_running("a change");
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "change {k} not applied within 30 s\n{}",
                agent.log()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        took.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    report("propagation through the API to the agent's status", took);
}

/// `ENFORCER_SCALE_CHANGES`: how many changes the propagation measurements make (0: none).
fn changes() -> usize {
    std::env::var("ENFORCER_SCALE_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// Prints p50/p99/max of `took` (ms), and fails if any took a second or more (the change
/// took several syncs, or a sync took a recompile of the cluster: measured p99 13 ms at
/// 100,000 pods and 10,000 policies).
fn report(what: &str, mut took: Vec<f64>) {
    took.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "{what}, over {} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        took.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
    assert!(at(1.0) < 1000.0, "{what}: a change took {:.0} ms", at(1.0));
}

/// `changes` flips of the probe policy's port through the API, each timed from the write to
/// the send time of the first datagram that reached the newly allowed port: the propagation
/// to the first packet that sees a change, on a node with local pods, at the cluster's scale.
fn to_the_first_packet(api: &ApiServer, agent: &mut Agent, changes: usize) {
    let prober = first_packet::Prober::start();
    let ports = first_packet::PORTS;
    let now = |p: &first_packet::Prober| p.base.elapsed().as_nanos() as u64;
    assert!(
        prober
            .first_after(ports[0], 0, Duration::from_secs(30))
            .is_some(),
        "the probe pods' first allowed port never passed\n{}",
        agent.log()
    );
    let mut took = Vec::new();
    for k in 0..changes {
        let port = ports[(k + 1) % 2];
        let since = now(&prober);
        api.update_json(first_packet::policy("ns-000", port));
        let sent = tokio::task::block_in_place(|| {
            prober.first_after(port, since, Duration::from_secs(30))
        });
        agent.assert_running("a change to reach a packet");
        let sent = sent.unwrap_or_else(|| {
            panic!(
                "change {k} (port {port}) reached no packet within 30 s\n{}",
                agent.log()
            )
        });
        took.push((sent - since) as f64 / 1e6);
    }
    report("propagation through the API to the first packet", took);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_with_100000_pods_through_the_api() {
    if !root() {
        return;
    }
    let api = ApiServer::start().await;
    for ns in 0..NAMESPACES {
        api.create_json(json!({"apiVersion": "v1", "kind": "Namespace",
                               "metadata": {"name": format!("ns-{ns:03}")}}));
    }
    let mut base_agent = start_agent(&api, "base", None);
    wait_applied(&mut base_agent, 0, 0, Duration::from_secs(30)).await;
    // Let the runtime settle (the first sync's buffers).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (base, _) = memory(base_agent.child.id());
    drop(base_agent);

    for i in 0..PODS {
        api.create_json(pod(i % NAMESPACES, i));
    }
    // 100 by default (one per namespace); `ENFORCER_SCALE_POLICIES=10000` for the cold start
    // at the performance issue's scale (not part of the test command: it takes minutes).
    let policies: usize = std::env::var("ENFORCER_SCALE_POLICIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(NAMESPACES);
    for p in 0..policies {
        api.create_json(policy(p % NAMESPACES, p / NAMESPACES));
    }
    // With changes to measure, two pods of this node take part (see `first_packet`).
    let changes = changes();
    let local = (changes > 0).then(|| {
        let pods = first_packet::LocalPods::build();
        first_packet::offer_api(&api.url());
        for p in first_packet::pods("ns-000", "local-node") {
            api.create_json(p);
        }
        api.create_json(first_packet::policy("ns-000", first_packet::PORTS[0]));
        pods
    });
    let mut agent = start_agent(
        &api,
        "full",
        local.as_ref().map(|_| first_packet::NODE_NETNS),
    );
    let (pods, policies_held) = if local.is_some() {
        (PODS + 2, policies + 1)
    } else {
        (PODS, policies)
    };
    let took = wait_applied(&mut agent, pods, policies_held, Duration::from_secs(240)).await;
    let cpu = cpu_time(agent.child.id());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, peak) = memory(agent.child.id());
    let per_pod = rss.saturating_sub(base) as f64 / PODS as f64;
    eprintln!(
        "agent memory: {:.1} MiB with no pods; {:.1} MiB with {PODS} pods and {policies} policies \
         ({per_pod:.0} bytes per pod above the base), peak {:.1} MiB; listed and applied in {:.1} s \
         ({:.1} s of the agent's CPU)",
        base as f64 / MIB,
        rss as f64 / MIB,
        peak as f64 / MIB,
        took.as_secs_f64(),
        cpu.as_secs_f64()
    );
    if changes > 0 {
        propagation(&api, &mut agent, policies, changes).await;
        to_the_first_packet(&api, &mut agent, changes);
    }
    // A regression bound (measured: 1.5-1.75 KiB per pod, the base varying between runs;
    // 2.2-2.4 KiB with labels in B-trees, 11.6 KiB when the stores held the API objects and
    // every sync copied every pod three times).
    assert!(
        per_pod < 2.5 * 1024.0,
        "{per_pod:.0} bytes per pod: the agent keeps more of each pod than it needs"
    );
}
