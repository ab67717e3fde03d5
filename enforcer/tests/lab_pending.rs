//! A pod the agent must enforce for but whose interface does not exist yet (the CNI has not
//! built it): it is listed as pending in the status, logged once with the reason however often
//! the agent syncs meanwhile, and attached as soon as its host route appears — long after the
//! re-check backoff has grown to its 8 s maximum. Needs root.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{lab_name, lab_up, root, scenario, state_json, Down};

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn status(path: &std::path::Path) -> serde_json::Value {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn wait_until(what: &str, within: Duration, ok: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < within, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    started.elapsed()
}

/// A lab of one scenario, up (removed on drop), and where its agent's files are.
struct Lab {
    _down: Down,
    name: String,
    node: String,
    manifests: PathBuf,
    status_file: PathBuf,
    agent_log: PathBuf,
}

fn up(tag: &str) -> Lab {
    let name = lab_name(tag);
    let down = lab_up(Some(&scenario("default-deny-ingress")), &name, &[]);
    let state = state_json(&name);
    let path = |key: &str| PathBuf::from(state["paths"][key].as_str().unwrap());
    Lab {
        _down: down,
        node: state["node_netns"].as_str().unwrap().to_owned(),
        manifests: path("manifests_dir"),
        status_file: path("status_file"),
        agent_log: path("agent_log"),
        name,
    }
}

#[test]
fn a_pending_pod_is_logged_once_and_attached_when_its_route_appears() {
    if !root() {
        return;
    }
    let lab = up("p");
    let (name, node, manifests, status_file, agent_log) = (
        &lab.name,
        &lab.node,
        &lab.manifests,
        &lab.status_file,
        &lab.agent_log,
    );

    // A pod of this node with no interface yet.
    std::fs::write(
        manifests.join("late.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: late, namespace: x, labels: {pod: late}}\n\
         spec: {containers: [{name: c, image: x}]}\n\
         status: {podIP: 10.244.1.99, podIPs: [{ip: 10.244.1.99}]}\n",
    )
    .unwrap();
    let pending = || {
        status(status_file)["pending"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x == "x/late"))
    };
    wait_until(
        "the pod is listed as pending",
        Duration::from_secs(10),
        pending,
    );
    // Changes that make the agent sync again, while the pod stays pending; and enough time
    // for the re-check backoff to reach its maximum.
    for i in 0..4 {
        std::fs::write(
            manifests.join("other.yaml"),
            format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: extra{i}, labels: {{kubernetes.io/metadata.name: extra{i}}}}}\n"),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(7));
    assert!(pending(), "still pending: {}", status(status_file));
    let log = std::fs::read_to_string(agent_log).unwrap();
    let reported: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("x/late") && l.contains("no host route"))
        .collect();
    assert_eq!(reported.len(), 1, "logged once with the reason:\n{log}");

    // The CNI's part: the pod's namespace, its veth and the host route.
    let pod_ns = format!("enf-{name}-late");
    sh(&["ip", "netns", "add", &pod_ns]);
    sh(&[
        "ip", "-n", node, "link", "add", "lxclate", "type", "veth", "peer", "name", "eth0",
        "netns", &pod_ns,
    ]);
    sh(&["ip", "-n", node, "link", "set", "lxclate", "up"]);
    sh(&[
        "ip",
        "-n",
        node,
        "route",
        "add",
        "10.244.1.99/32",
        "dev",
        "lxclate",
    ]);
    let attached = || status(status_file)["endpoints"]["x/late"]["attached"] == true;
    let took = wait_until(
        "the pod is attached once its route appears (not at the 8 s backoff)",
        Duration::from_secs(3),
        attached,
    );
    eprintln!(
        "attached {:.2} s after its route appeared",
        took.as_secs_f64()
    );
    assert!(!pending());
    let log = std::fs::read_to_string(agent_log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("x/late") && l.contains("interface appeared")),
        "its enforcement is logged:\n{log}"
    );
}

/// The time from a known pod's interface appearing (veth and host route, as a CNI builds
/// them) to the agent reporting it attached, over 20 pods: p50 and max printed (README).
#[test]
fn time_from_a_pods_interface_to_its_programs_attached() {
    if !root() {
        return;
    }
    let lab = up("q");
    let (name, node, manifests, status_file) =
        (&lab.name, &lab.node, &lab.manifests, &lab.status_file);
    const PODS: usize = 20;
    let mut yaml = String::new();
    for i in 0..PODS {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: new{i}, namespace: x}}\n\
             spec: {{containers: [{{name: c, image: x}}]}}\n\
             status: {{podIP: 10.244.1.{ip}, podIPs: [{{ip: 10.244.1.{ip}}}]}}\n",
            ip = 100 + i
        ));
    }
    std::fs::write(manifests.join("new.yaml"), yaml).unwrap();
    wait_until("every new pod is pending", Duration::from_secs(10), || {
        status(status_file)["pending"]
            .as_array()
            .is_some_and(|p| p.len() == PODS)
    });
    let mut took = Vec::new();
    for i in 0..PODS {
        let pod_ns = format!("enf-{name}-new{i}");
        let dev = format!("lxcnew{i}");
        sh(&["ip", "netns", "add", &pod_ns]);
        sh(&[
            "ip", "-n", node, "link", "add", &dev, "type", "veth", "peer", "name", "eth0", "netns",
            &pod_ns,
        ]);
        sh(&["ip", "-n", node, "link", "set", &dev, "up"]);
        let ip = format!("10.244.1.{}/32", 100 + i);
        sh(&["ip", "-n", node, "route", "add", &ip, "dev", &dev]);
        let key = format!("x/new{i}");
        took.push(wait_until("attached", Duration::from_secs(10), || {
            status(status_file)["endpoints"][&key]["attached"] == true
        }));
    }
    took.sort();
    eprintln!(
        "a pod's interface to its programs attached, {PODS} pods: p50 {:.0} ms, max {:.0} ms",
        took[PODS / 2].as_secs_f64() * 1e3,
        took[PODS - 1].as_secs_f64() * 1e3
    );
    assert!(
        took[PODS - 1] < Duration::from_secs(2),
        "attached within 2 s of the route: {took:?}"
    );
}
