//! The flow monitor end to end in the lab: attributed drop records through `enforcer flows`,
//! a port scan raising an alert in the flow log, and the metrics endpoint. Needs root.

use std::io::{Read, Write};

use enforcer_agent::netns::Netns;

mod common;
use common::{enforcer, lab_name, lab_up, ok, root, scenario, state_dir};

#[test]
fn drops_are_attributed_scans_alert_and_metrics_count() {
    if !root() {
        return;
    }
    let name = lab_name("f");
    let _down = lab_up(Some(&scenario("default-deny-ingress")), &name, &[]);
    let state = state_dir(&name);

    // 25 ports from every pod to every pod: x's pods are isolated, so many drops, and each
    // source reaches 20+ ports of one peer within seconds: a vertical scan.
    let probes = state.join("scan.yaml");
    let list: String = (2000..2025)
        .map(|p| format!("- port: {p}\n  protocol: TCP\n"))
        .collect();
    std::fs::write(&probes, list).unwrap();
    ok(
        &enforcer(&[
            "lab",
            "probe",
            probes.to_str().unwrap(),
            "--name",
            &name,
            "--json",
            "--timeout-ms",
            "1000",
        ]),
        "lab probe",
    );

    let socket = state.join("flows.sock");
    let out = ok(
        &enforcer(&[
            "flows",
            "--socket",
            socket.to_str().unwrap(),
            "--verdict",
            "dropped",
            "--to-pod",
            "x/a",
            "--last",
            "5",
            "--output",
            "jsonl",
        ]),
        "enforcer flows",
    );
    let recs: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect();
    assert!(!recs.is_empty(), "drops into x/a are in the agent's memory");
    for r in &recs {
        assert_eq!(r["verdict"], "dropped");
        assert_eq!(r["dst"]["namespace"], "x");
        assert_eq!(r["dst"]["pod"], "a");
        assert_eq!(r["reason"], "policy_denied");
        assert_eq!(
            r["isolated_by"][0], "x/deny-ingress",
            "default deny names its policy: {r}"
        );
    }
    // The same filter offline on the saved log.
    let log = state.join("flows.jsonl");
    let offline = ok(
        &enforcer(&[
            "flows",
            "--file",
            log.to_str().unwrap(),
            "--verdict",
            "dropped",
            "--to-pod",
            "x/a",
            "--output",
            "jsonl",
        ]),
        "enforcer flows --file",
    );
    assert!(offline.lines().count() >= recs.len());

    // The scan raised alerts in the flow log.
    let text = std::fs::read_to_string(&log).unwrap();
    let alerts: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "alert")
        .collect();
    assert!(
        alerts.iter().any(|a| a["kind"] == "port_scan"),
        "no port-scan alert in {} records",
        text.lines().count()
    );

    // Metrics, from inside the node's network namespace.
    let node = Netns::open_named(&format!("enf-{name}-node")).expect("the node namespace");
    let mut stream = node
        .run(|| std::net::TcpStream::connect("127.0.0.1:9966"))
        .unwrap()
        .expect("metrics endpoint");
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    assert!(
        body.contains("enforcer_drop_total{reason=\"policy_denied\"}"),
        "{body}"
    );
    assert!(
        body.contains("enforcer_alerts_total{kind=\"port_scan\"}"),
        "{body}"
    );
    assert!(body.contains("enforcer_endpoints 9"), "{body}");
}
