//! The lab as a tool to poke at: `lab up`, `status`, `exec`, `probe`, `down` on a running
//! instance, with the real agent; and that the agent leaves the datapath in force when it
//! stops. Needs root.

use std::path::PathBuf;
use std::process::Command;

mod common;
use common::{enforcer, lab_name, lab_up, ok, root, scenario};

#[test]
fn up_status_exec_probe_down() {
    if !root() {
        return;
    }
    let name = lab_name("t");
    let scenario = scenario("default-deny-ingress");
    let _down = lab_up(Some(&scenario), &name, &[]);

    let status: serde_json::Value = serde_json::from_str(&ok(
        &enforcer(&["lab", "status", "--name", &name, "--json"]),
        "lab status",
    ))
    .expect("status JSON");
    let text = status.to_string();
    for pod in ["x/a", "y/b", "z/c"] {
        assert!(text.contains(pod), "status lists {pod}: {text}");
    }
    assert!(
        text.contains("10.244.1.10"),
        "status lists addresses: {text}"
    );

    let addr = ok(
        &enforcer(&[
            "lab", "exec", "x/a", "--name", &name, "--", "ip", "-br", "addr",
        ]),
        "lab exec",
    );
    assert!(
        addr.contains("10.244.1.10"),
        "x/a's namespace holds its address: {addr}"
    );
    let code = enforcer(&[
        "lab", "exec", "x/a", "--name", &name, "--", "sh", "-c", "exit 3",
    ]);
    assert_eq!(
        code.status.code(),
        Some(3),
        "exec passes the exit code through"
    );

    let probes = scenario.join("probes.yaml");
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(scenario.join("expected.json")).unwrap())
            .unwrap();
    let check_probes = |when: &str| {
        let args = [
            "lab",
            "probe",
            probes.to_str().unwrap(),
            "--name",
            &name,
            "--json",
        ];
        let got: serde_json::Value =
            serde_json::from_str(&ok(&enforcer(&args), "lab probe")).expect("probe JSON");
        let got = &got["steps"][0]["probes"][0]["matrix"];
        let want = &want["steps"][0]["probes"][0]["matrix"];
        for (from, row) in want.as_object().expect("matrix") {
            for (to, cell) in row.as_object().expect("row") {
                if cell.is_boolean() {
                    assert_eq!(&got[from][to], cell, "{when}: {from} -> {to}");
                }
            }
        }
    };
    check_probes("with the agent running");

    // The datapath outlives the agent: stop it and the same policy is still enforced.
    let pid = status["lab"]["agent_pid"]
        .as_u64()
        .expect("the lab records the agent pid") as i32;
    // SAFETY: kill has no memory preconditions; the pid is the lab's agent.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    // SAFETY: signal 0 only checks that the process exists.
    for _ in 0..200 {
        // SAFETY: as above.
        if unsafe { libc::kill(pid, 0) } != 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    check_probes("after the agent stopped");

    ok(&enforcer(&["lab", "down", "--name", &name]), "lab down");
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        !left.contains(&format!("enf-{name}-")),
        "namespaces left behind: {left}"
    );
    assert!(
        !PathBuf::from(format!("/sys/fs/bpf/enforcer/{name}")).exists(),
        "pins left behind"
    );
}

/// A lab of two named nodes with Services: `up` builds both nodes and their agents, `status`
/// shows each pod's node and each node's agent, `exec` and `probe` (Service probes included)
/// work across nodes, `enforcer flows --lab` merges both agents' flows or shows one node's,
/// and `down` removes every node, the fabric, the pins and the state.
#[test]
fn two_nodes_up_status_exec_probe_flows_down() {
    if !root() {
        return;
    }
    let name = lab_name("m");
    let scenario = scenario("service-backends-on-other-node");
    let _down = lab_up(Some(&scenario), &name, &["--agent-arg=--log-allowed"]);

    let status: serde_json::Value = serde_json::from_str(&ok(
        &enforcer(&["lab", "status", "--name", &name, "--json"]),
        "lab status",
    ))
    .expect("status JSON");
    let lab = &status["lab"];
    let nodes: Vec<&str> = lab["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["node-a", "node-b"], "{status}");
    assert_eq!(lab["kube_proxy"], true);
    for agent in status["agents"].as_array().unwrap() {
        assert_eq!(agent["agent_alive"], true, "{agent}");
        assert_eq!(
            agent["agent_status"]["pending"],
            serde_json::json!([]),
            "{agent}"
        );
    }
    let node_of = |pod: &str| {
        lab["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| {
                format!(
                    "{}/{}",
                    p["namespace"].as_str().unwrap(),
                    p["name"].as_str().unwrap()
                ) == pod
            })
            .map(|p| p["node"].as_str().unwrap().to_owned())
    };
    assert_eq!(node_of("x/a").as_deref(), Some("node-a"));
    assert_eq!(node_of("y/b").as_deref(), Some("node-b"));
    let text = ok(&enforcer(&["lab", "status", "--name", &name]), "lab status");
    assert!(text.contains(&format!("enf-{name}-node.node-b")), "{text}");

    // Each node's namespace holds only its own address; a pod on node-b is reached from one
    // on node-a through node-b's route.
    let addr = ok(
        &enforcer(&[
            "lab", "exec", "y/a", "--name", &name, "--", "ip", "-br", "addr",
        ]),
        "lab exec",
    );
    assert!(addr.contains("10.244.2.10"), "{addr}");
    let node_a = Command::new("ip")
        .args(["-n", &format!("enf-{name}-node.node-a"), "-br", "addr"])
        .output()
        .unwrap();
    let node_a = String::from_utf8_lossy(&node_a.stdout);
    assert!(
        node_a.contains("10.244.0.2/24") && !node_a.contains("10.244.0.3"),
        "{node_a}"
    );

    // Every judged cell of the first step, Service probes included.
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(scenario.join("expected.json")).unwrap())
            .unwrap();
    let got: serde_json::Value = serde_json::from_str(&ok(
        &enforcer(&["lab", "probe", "--name", &name, "--json"]),
        "lab probe",
    ))
    .expect("probe JSON");
    let (want, got) = (&want["steps"][0]["probes"], &got["steps"][0]["probes"]);
    assert_eq!(
        want.as_array().unwrap().len(),
        got.as_array().unwrap().len()
    );
    let mut judged = 0;
    for (w, g) in want.as_array().unwrap().iter().zip(got.as_array().unwrap()) {
        assert_eq!((&w["service"], &w["port"]), (&g["service"], &g["port"]));
        for (from, row) in w["matrix"].as_object().unwrap() {
            for (to, cell) in row.as_object().unwrap() {
                if cell.is_boolean() {
                    judged += 1;
                    assert_eq!(
                        &g["matrix"][from][to], cell,
                        "{}: {from} -> {to}",
                        w["port"]
                    );
                }
            }
        }
    }
    assert!(judged >= 20, "{judged}");

    // Flows: both agents logged (allowed connections from --log-allowed, drops on node-b).
    let flows = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["flows", "--lab", &name, "--all", "--output", "jsonl"];
        all.extend_from_slice(args);
        ok(&enforcer(&all), "enforcer flows --lab")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON record"))
            .collect()
    };
    let merged = flows(&[]);
    for node in ["node-a", "node-b"] {
        assert!(
            merged.iter().any(|r| r["node"] == node),
            "no {node} record in {merged:?}"
        );
    }
    let times: Vec<&str> = merged.iter().map(|r| r["time"].as_str().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "merged in time order"
    );
    let b_drops = flows(&["--node", "node-b", "--verdict", "dropped"]);
    assert!(!b_drops.is_empty());
    assert!(b_drops.iter().all(|r| r["node"] == "node-b"));
    assert!(
        b_drops
            .iter()
            .any(|r| r["src"]["pod"] == "b" && r["dst"]["namespace"] == "y"),
        "x/b's connection to a backend is dropped at node-b: {b_drops:?}"
    );
    assert!(flows(&["--node", "node-a"])
        .iter()
        .all(|r| r["node"] == "node-a"));
    let bad = enforcer(&["flows", "--lab", &name, "--node", "node-z"]);
    assert!(!bad.status.success());

    ok(&enforcer(&["lab", "down", "--name", &name]), "lab down");
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        !left.contains(&format!("enf-{name}-")),
        "namespaces left behind: {left}"
    );
    assert!(
        !PathBuf::from(format!("/sys/fs/bpf/enforcer/{name}")).exists(),
        "pins left behind"
    );
    assert!(
        !PathBuf::from(format!("/run/enforcer-lab/{name}")).exists(),
        "state left behind"
    );
}
