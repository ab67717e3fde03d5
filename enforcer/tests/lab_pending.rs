//! A pod the agent must enforce for but whose interface does not exist yet (the CNI has not
//! built it): it is listed as pending in the status, logged once with the reason however often
//! the agent syncs meanwhile, and attached as soon as its host route appears — long after the
//! re-check backoff has grown to its 8 s maximum. With `--quarantine-prefix`, an interface of
//! that prefix that leads to no programmed pod carries nothing until its pod is programmed.
//! Needs root.

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
        std::thread::sleep(Duration::from_millis(1));
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
    pin_dir: PathBuf,
}

fn up(tag: &str) -> Lab {
    up_with(tag, &[])
}

/// [`up`], with extra arguments for the lab's agent.
fn up_with(tag: &str, agent_args: &[&str]) -> Lab {
    let name = lab_name(tag);
    let agent_args: Vec<String> = agent_args
        .iter()
        .map(|a| format!("--agent-arg={a}"))
        .collect();
    let args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    let down = lab_up(Some(&scenario("default-deny-ingress")), &name, &args);
    let state = state_json(&name);
    let path = |key: &str| PathBuf::from(state["paths"][key].as_str().unwrap());
    Lab {
        _down: down,
        node: state["node_netns"].as_str().unwrap().to_owned(),
        manifests: path("manifests_dir"),
        status_file: path("status_file"),
        agent_log: path("agent_log"),
        pin_dir: path("pin_dir"),
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

fn quarantined(status_file: &std::path::Path) -> Vec<String> {
    status(status_file)["quarantined"]
        .as_array()
        .map(|q| {
            q.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a TCP connection attempt from inside `netns` to `to` gets an answer within 500 ms
/// (accepted, or refused: `lab up` runs no servers, the peer's kernel answers).
fn reaches(netns: &str, to: &str) -> bool {
    let ns = enforcer_agent::netns::Netns::open_named(netns).unwrap();
    let socket = ns
        .socket(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
    let to: std::net::SocketAddr = to.parse().unwrap();
    match socket.connect_timeout(&to.into(), Duration::from_millis(500)) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => true,
        Err(_) => false,
    }
}

/// A new pod's veth (the CNI's work) that no pod the agent knows leads to: quarantined within
/// milliseconds, so the pod reaches nothing; its pod programmed, it follows the policy (its
/// links taken over in place); its pod deleted while the veth stays, quarantined again; the
/// veth gone, released. Then the time from a veth appearing to its quarantine, over 20
/// interfaces (p50 and max printed, README).
#[test]
fn a_new_interface_carries_nothing_until_its_pod_is_programmed() {
    if !root() {
        return;
    }
    let lab = up_with("n", &["--quarantine-prefix=lxc"]);
    let (name, node, manifests, status_file) =
        (&lab.name, &lab.node, &lab.manifests, &lab.status_file);
    wait_until(
        "the lab's pods are enforced",
        Duration::from_secs(10),
        || {
            status(status_file)["endpoints"]
                .as_object()
                .is_some_and(|e| e.len() == 9 && e.values().all(|x| x["attached"] == true))
        },
    );
    assert_eq!(
        quarantined(status_file),
        Vec::<String>::new(),
        "every lab pod is programmed"
    );

    // The CNI builds z/late's veth before the agent has heard of the pod.
    let pod_ns = format!("enf-{name}-late");
    sh(&["ip", "netns", "add", &pod_ns]);
    let built = Instant::now();
    sh(&[
        "ip", "-n", node, "link", "add", "lxclate", "type", "veth", "peer", "name", "eth0",
        "netns", &pod_ns,
    ]);
    for cmd in [
        "addr add 169.254.1.1/32 dev lxclate",
        "link set lxclate up",
        "route add 10.244.3.77/32 dev lxclate",
    ] {
        let mut args = vec!["ip", "-n", node.as_str()];
        args.extend(cmd.split(' '));
        sh(&args);
    }
    for cmd in [
        "link set lo up",
        "addr add 10.244.3.77/32 dev eth0",
        "link set eth0 up",
        "route add 169.254.1.1 dev eth0 scope link",
        "route add default via 169.254.1.1 dev eth0",
    ] {
        let mut args = vec!["ip", "-n", pod_ns.as_str()];
        args.extend(cmd.split(' '));
        sh(&args);
    }
    wait_until("the veth is quarantined", Duration::from_secs(2), || {
        quarantined(status_file) == ["lxclate"]
    });
    eprintln!(
        "quarantined (and reported) {:.1} ms after its veth was built",
        built.elapsed().as_secs_f64() * 1e3
    );
    // y/a serves 80 and its namespace is not isolated: only the quarantine stops this.
    assert!(
        !reaches(&pod_ns, "10.244.2.10:80"),
        "a quarantined pod reaches nothing"
    );
    let log = std::fs::read_to_string(&lab.agent_log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("lxclate") && l.contains("quarantined")),
        "the quarantine is logged:\n{log}"
    );

    // The API (here, the manifests) tells of the pod: it is programmed on the same links.
    std::fs::write(
        manifests.join("late.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: late, namespace: z, labels: {pod: late}}\n\
         spec: {containers: [{name: c, image: x}]}\n\
         status: {podIP: 10.244.3.77, podIPs: [{ip: 10.244.3.77}]}\n",
    )
    .unwrap();
    wait_until("the pod is programmed", Duration::from_secs(10), || {
        status(status_file)["endpoints"]["z/late"]["attached"] == true
            && quarantined(status_file).is_empty()
    });
    // (Its first try may wait for the neighbour resolution the quarantine dropped to retry.)
    assert!(
        (0..6).any(|_| reaches(&pod_ns, "10.244.2.10:80")),
        "z/late follows the policy now"
    );
    assert!(!reaches(&pod_ns, "10.244.1.10:80"), "x denies all ingress");

    // The pod deleted, its veth not yet: back in quarantine, never unfiltered in between.
    std::fs::remove_file(manifests.join("late.yaml")).unwrap();
    wait_until("quarantined again", Duration::from_secs(10), || {
        quarantined(status_file) == ["lxclate"]
            && status(status_file)["endpoints"].get("z/late").is_none()
    });
    assert!(!reaches(&pod_ns, "10.244.2.10:80"), "quarantined again");
    sh(&["ip", "netns", "del", &pod_ns]);
    wait_until(
        "released once its veth is gone",
        Duration::from_secs(2),
        || quarantined(status_file).is_empty(),
    );

    // How soon a new veth carries the programs (both directions' links pinned), from before
    // the command that creates it.
    const IFACES: usize = 20;
    let mut took = Vec::new();
    for i in 0..IFACES {
        let dev = format!("lxcq{i}");
        let peer = format!("peerq{i}");
        let started = Instant::now();
        sh(&[
            "ip", "-n", node, "link", "add", &dev, "type", "veth", "peer", "name", &peer,
        ]);
        let out = Command::new("ip")
            .args(["-n", node, "-j", "link", "show", "dev", &dev])
            .output()
            .unwrap();
        let link: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let ifindex = link[0]["ifindex"].as_u64().unwrap();
        let links = lab.pin_dir.join("links");
        wait_until("its links pinned", Duration::from_secs(2), || {
            ["pod_egress", "pod_ingress"]
                .iter()
                .all(|p| links.join(format!("{ifindex}-{p}")).exists())
        });
        took.push(started.elapsed());
        wait_until("reported", Duration::from_secs(2), || {
            quarantined(status_file).contains(&dev)
        });
    }
    took.sort();
    eprintln!(
        "a new veth to its programs attached (quarantine), {IFACES} interfaces: p50 {:.1} ms, max {:.1} ms",
        took[IFACES / 2].as_secs_f64() * 1e3,
        took[IFACES - 1].as_secs_f64() * 1e3
    );
}
