//! The lab as a tool to poke at: `lab up`, `status`, `exec`, `probe`, `down` on a running
//! instance, with the real agent; and that the agent leaves the datapath in force when it
//! stops. Needs root.

use std::path::PathBuf;
use std::process::Command;

mod common;
use common::{enforcer, ok, root, Down};

#[test]
fn up_status_exec_probe_down() {
    if !root() {
        return;
    }
    let scenario =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios/default-deny-ingress");
    let name = format!("t{}", std::process::id());
    let _down = Down(name.clone());
    ok(
        &enforcer(&["lab", "up", scenario.to_str().unwrap(), "--name", &name]),
        "lab up",
    );

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
