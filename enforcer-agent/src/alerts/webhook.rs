//! Alerts as JSON for the outside: an Alertmanager payload and a record of the flow stream.
//! Pure builders; sending them is the caller's business.

use serde_json::{json, Map, Value};

use super::Alert;

/// Schema id of an alert record in the flow stream; bumped on any incompatible change.
pub const ALERT_SCHEMA: &str = "enforcer.alert/v1";

/// The body of an Alertmanager v2 `POST /api/v2/alerts`: one postable alert per alert.
///
/// Labels (which Alertmanager groups and deduplicates by) are `alertname` (`Enforcer<Kind>`),
/// `severity`, `node`, `source` and, when there is one, `target`; annotations are the `summary`
/// and the `evidence` as a JSON string. `startsAt` is the alert's time; there is no `endsAt`,
/// so Alertmanager resolves the alert after its `resolve_timeout` unless it is sent again.
pub fn alertmanager_payload(alerts: &[Alert], node: &str) -> Value {
    Value::Array(
        alerts
            .iter()
            .map(|a| {
                let mut labels = Map::new();
                labels.insert("alertname".into(), a.kind.alert_name().into());
                labels.insert("severity".into(), a.severity.name().into());
                labels.insert("node".into(), node.into());
                labels.insert("source".into(), a.source.to_string().into());
                if let Some(t) = &a.target {
                    labels.insert("target".into(), t.to_string().into());
                }
                let evidence = serde_json::to_string(&a.evidence)
                    .expect("evidence is plain data with string keys");
                json!({
                    "labels": labels,
                    "annotations": {
                        "summary": a.summary,
                        "evidence": evidence,
                    },
                    "startsAt": a.time,
                })
            })
            .collect(),
    )
}

/// The alert as a record of the flow stream:
/// `{"schema": "enforcer.alert/v1", "type": "alert", <the alert's fields>}`.
pub fn to_record(alert: &Alert) -> Value {
    let mut rec = Map::new();
    rec.insert("schema".into(), ALERT_SCHEMA.into());
    rec.insert("type".into(), "alert".into());
    match serde_json::to_value(alert).expect("an alert is plain data with string keys") {
        Value::Object(fields) => rec.extend(fields),
        other => unreachable!("an alert serializes to an object, not {other}"),
    }
    Value::Object(rec)
}
