//! Attaching to real interfaces (veths in a network namespace this test creates), across agent
//! restarts: a crash between attaching the two directions never leaves one unattached, a new
//! interface that got a freed ifindex while no agent ran never inherits "attached" from the
//! old one's links, and a quarantined interface goes to its pod's policy on the same links.
//! Needs root (BPF, network namespaces).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use aya::programs::links::PinnedLink;
use aya::programs::{SchedClassifier, TcAttachType};
use enforcer_agent::dataplane::interfaces::{self, Iface};
use enforcer_agent::dataplane::Dataplane;
use enforcer_agent::model::PodKey;
use enforcer_agent::netns::Netns;
use enforcer_common::maps::programs::{POD_EGRESS, POD_INGRESS};
use enforcer_tests::{privileged, tables};

const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-in, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: 80}]}]
"#;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace and a bpffs pin directory of this test, removed on drop.
struct Scene {
    netns: String,
    pins: PathBuf,
}

impl Scene {
    fn new(tag: &str) -> Scene {
        let s = Scene {
            netns: format!("enft-{tag}-{}", std::process::id()),
            pins: PathBuf::from(format!(
                "/sys/fs/bpf/enforcer/test-{tag}-{}",
                std::process::id()
            )),
        };
        let _ = std::fs::remove_dir_all(&s.pins);
        let _ = Command::new("ip").args(["netns", "del", &s.netns]).output();
        ip(&["netns", "add", &s.netns]);
        s
    }

    /// A veth whose host side is `name` (its peer stays in the namespace too), optionally at
    /// a given ifindex.
    fn veth(&self, name: &str, index: Option<u32>) -> Iface {
        let peer = format!("p{name}");
        let mut args = vec!["-n", &self.netns, "link", "add", name];
        let index = index.map(|i| i.to_string());
        if let Some(i) = &index {
            args.extend(["index", i]);
        }
        args.extend(["type", "veth", "peer", "name", &peer]);
        ip(&args);
        ip(&["-n", &self.netns, "link", "set", name, "up"]);
        let _in = Netns::open_named(&self.netns).unwrap().enter().unwrap();
        Iface {
            name: name.into(),
            ifindex: interfaces::ifindex(name).expect("the veth exists"),
        }
    }

    /// The ids of the programs on each direction of `iface` (tcx ingress: the pod's egress).
    fn programs_on(&self, iface: &str) -> (Vec<u32>, Vec<u32>) {
        let _in = Netns::open_named(&self.netns).unwrap().enter().unwrap();
        let ids = |hook| {
            SchedClassifier::query_tcx(iface, hook)
                .map(|(_, progs)| progs.iter().map(|p| p.id()).collect())
                .unwrap_or_default()
        };
        (ids(TcAttachType::Ingress), ids(TcAttachType::Egress))
    }

    fn open(&self) -> Dataplane {
        let _in = Netns::open_named(&self.netns).unwrap().enter().unwrap();
        Dataplane::open(&self.pins).expect("loading the datapath")
    }

    /// Programs x/a on `iface` (inside the namespace: attaching resolves names there).
    fn sync(&self, dp: &mut Dataplane, iface: &Iface) -> enforcer_agent::dataplane::SyncReport {
        let _in = Netns::open_named(&self.netns).unwrap().enter().unwrap();
        let ifaces = BTreeMap::from([(PodKey::new("x", "a"), iface.clone())]);
        let report = dp.sync(&tables(POLICY), &ifaces).unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        report
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

/// Each direction of the interface runs exactly this agent's program for it.
fn assert_runs(scene: &Scene, dp: &Dataplane, iface: &str, what: &str) {
    let ids = dp.program_ids();
    assert_eq!(
        scene.programs_on(iface),
        (vec![ids[POD_EGRESS]], vec![ids[POD_INGRESS]]),
        "{what}"
    );
}

#[test]
fn a_crash_between_the_two_attaches_leaves_no_direction_unattached() {
    if !privileged() {
        return;
    }
    let scene = Scene::new("half");
    let lxc = scene.veth("lxca", None);
    let mut dp = scene.open();
    let report = scene.sync(&mut dp, &lxc);
    assert_eq!(report.attached, ["lxca"]);
    assert_runs(&scene, &dp, "lxca", "both directions attached");

    // The agent died after attaching one direction: only the pod's egress link is left.
    let ingress_pin = scene
        .pins
        .join("links")
        .join(format!("{}-{POD_INGRESS}", lxc.ifindex));
    PinnedLink::from_pin(&ingress_pin).unwrap().unpin().unwrap();
    drop(dp);
    let (egress, ingress) = scene.programs_on("lxca");
    assert_eq!((egress.len(), ingress.len()), (1, 0), "half attached");

    let mut dp = scene.open();
    let report = scene.sync(&mut dp, &lxc);
    assert_eq!(
        report.attached,
        ["lxca"],
        "not counted as attached: attached again"
    );
    assert_runs(
        &scene,
        &dp,
        "lxca",
        "the new agent's programs on both, one each",
    );
}

#[test]
fn a_new_interface_with_a_freed_ifindex_is_attached_anew() {
    if !privileged() {
        return;
    }
    let scene = Scene::new("freed");
    let old = scene.veth("lxcold", None);
    let mut dp = scene.open();
    scene.sync(&mut dp, &old);
    drop(dp);

    // While no agent runs, the pod goes and another one's veth gets its ifindex.
    ip(&["-n", &scene.netns, "link", "del", "lxcold"]);
    let new = scene.veth("lxcnew", Some(old.ifindex));
    assert_eq!(new.ifindex, old.ifindex);
    assert_eq!(
        scene.programs_on("lxcnew"),
        (vec![], vec![]),
        "a new interface"
    );

    let mut dp = scene.open();
    let report = scene.sync(&mut dp, &new);
    assert_eq!(
        report.attached,
        ["lxcnew"],
        "the old links (defunct) did not count as attached"
    );
    assert_runs(&scene, &dp, "lxcnew", "programs on the new interface");
}

#[test]
fn a_quarantined_interface_keeps_its_links_when_its_pod_is_programmed_and_deleted() {
    if !privileged() {
        return;
    }
    let scene = Scene::new("quar");
    let lxc = scene.veth("lxcq", None);
    scene.veth("ethx", None);
    let mut dp = scene.open();
    dp.set_quarantine_prefixes(vec!["lxc".into()]);
    let q = {
        let _in = Netns::open_named(&scene.netns).unwrap().enter().unwrap();
        dp.quarantine_new_interfaces(true)
    };
    assert_eq!(q.added, ["lxcq"], "{q:?}");
    assert_eq!(dp.quarantined(), ["lxcq"]);
    assert_runs(
        &scene,
        &dp,
        "lxcq",
        "quarantined: the programs, no endpoint",
    );
    assert_eq!(scene.programs_on("ethx"), (vec![], vec![]), "no pod prefix");

    // Its pod programmed: the endpoint takes the links over (no second program).
    scene.sync(&mut dp, &lxc);
    assert_runs(&scene, &dp, "lxcq", "the endpoint's, on the same links");
    let q = {
        let _in = Netns::open_named(&scene.netns).unwrap().enter().unwrap();
        dp.quarantine_new_interfaces(true)
    };
    assert_eq!((q.added.len(), q.released.len()), (0, 0), "{q:?}");
    assert!(dp.quarantined().is_empty());

    // The pod deleted while its veth stays: back in quarantine, never detached.
    {
        let _in = Netns::open_named(&scene.netns).unwrap().enter().unwrap();
        let report = dp.sync(&tables(POLICY), &BTreeMap::new()).unwrap();
        assert_eq!(report.detached, ["lxcq"]);
    }
    assert_eq!(dp.quarantined(), ["lxcq"]);
    assert_runs(&scene, &dp, "lxcq", "still attached, in quarantine");

    // A restarted agent keeps the quarantine in force until it decides; without the prefix
    // it releases it.
    drop(dp);
    let mut dp = scene.open();
    assert_eq!(dp.quarantined(), ["lxcq"], "adopted as quarantined");
    assert_runs(&scene, &dp, "lxcq", "the new agent's programs, in place");
    let q = {
        let _in = Netns::open_named(&scene.netns).unwrap().enter().unwrap();
        dp.quarantine_new_interfaces(true)
    };
    assert_eq!(q.released, ["lxcq"], "{q:?}");
    assert_eq!(
        scene.programs_on("lxcq"),
        (vec![], vec![]),
        "released: detached"
    );
}
