//! The Alertmanager payload, the alert record, and the wire names of kinds and severities.

use serde_json::json;

use super::*;
use crate::alerts::{alertmanager_payload, to_record, Evidence, Severity};

fn sample(target: Option<&str>) -> Alert {
    Alert {
        kind: AlertKind::PortScan,
        severity: Severity::Warning,
        time: "2023-11-14T22:13:23.800Z".into(),
        source: "shop/attacker".parse().unwrap(),
        target: target.map(|t| t.parse().unwrap()),
        summary: "shop/attacker reached 20 distinct ports on shop/db within 10 s".into(),
        evidence: Evidence {
            counts: [("distinct_ports".to_string(), 20)].into(),
            window_seconds: 10,
            peers: vec!["shop/db".into()],
            ports: vec![22, 80],
            baseline: None,
            observed: None,
        },
    }
}

#[test]
fn alertmanager_payload_is_a_list_of_postable_alerts() {
    let alerts = [sample(Some("shop/db")), sample(None)];
    let payload = alertmanager_payload(&alerts, "node-1");
    let list = payload.as_array().expect("an array");
    assert_eq!(list.len(), 2);
    assert_eq!(
        list[0]["labels"],
        json!({
            "alertname": "EnforcerPortScan",
            "severity": "warning",
            "node": "node-1",
            "source": "shop/attacker",
            "target": "shop/db",
        })
    );
    assert_eq!(list[0]["startsAt"], "2023-11-14T22:13:23.800Z");
    assert_eq!(
        list[0]["annotations"]["summary"],
        alerts[0].summary.as_str()
    );
    let evidence: Evidence =
        serde_json::from_str(list[0]["annotations"]["evidence"].as_str().unwrap()).unwrap();
    assert_eq!(evidence, alerts[0].evidence);
    assert!(list[1]["labels"].get("target").is_none());
    // Alertmanager wants string label and annotation values only.
    for a in list {
        for section in ["labels", "annotations"] {
            assert!(a[section]
                .as_object()
                .unwrap()
                .values()
                .all(|v| v.is_string()));
        }
    }
    assert_eq!(alertmanager_payload(&[], "node-1"), json!([]));
}

#[test]
fn an_alert_record_carries_schema_type_and_round_trips() {
    let alert = sample(Some("shop/db"));
    let rec = to_record(&alert);
    assert_eq!(rec["schema"], "enforcer.alert/v1");
    assert_eq!(rec["type"], "alert");
    assert_eq!(rec["kind"], "port_scan");
    assert_eq!(rec["severity"], "warning");
    assert_eq!(rec["source"], "shop/attacker");
    assert_eq!(rec["target"], "shop/db");
    assert_eq!(rec["evidence"]["counts"]["distinct_ports"], 20);
    assert!(rec["evidence"].get("baseline").is_none());
    let mut fields = rec.as_object().unwrap().clone();
    fields.remove("schema");
    fields.remove("type");
    let back: Alert = serde_json::from_value(fields.into()).unwrap();
    assert_eq!(back, alert);
    assert!(to_record(&sample(None)).get("target").is_none());
}

#[test]
fn kinds_and_severities_have_stable_names() {
    let names: Vec<(serde_json::Value, &str)> = AlertKind::ALL
        .iter()
        .map(|k| (serde_json::to_value(k).unwrap(), k.alert_name()))
        .collect();
    assert_eq!(
        names,
        vec![
            (json!("port_scan"), "EnforcerPortScan"),
            (json!("deny_burst"), "EnforcerDenyBurst"),
            (json!("first_seen_edge"), "EnforcerFirstSeenEdge"),
            (json!("volume_spike"), "EnforcerVolumeSpike"),
        ]
    );
    for s in [Severity::Info, Severity::Warning, Severity::Critical] {
        assert_eq!(serde_json::to_value(s).unwrap(), json!(s.name()));
    }
    assert!(Severity::Info < Severity::Warning && Severity::Warning < Severity::Critical);
}
