//! POSTs alerts to an Alertmanager-compatible webhook (`/api/v2/alerts`), in the background.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{alertmanager_payload, Alert};

/// Attempts per batch: the first and two retries.
const ATTEMPTS: u32 = 3;
/// Wait before the first retry; doubled before each next one.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// A webhook that does not answer within this is treated as down.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Most alerts in one POST (Alertmanager takes a list).
const MAX_BATCH: usize = 64;

/// Starts the sender; alerts sent to the returned channel are POSTed in order, those waiting
/// together in one request. A failed POST (unreachable, timeout, 5xx) is retried with backoff;
/// a batch that still fails, or that the webhook refuses (4xx), is logged and dropped, so that
/// a dead webhook delays nothing else. While the sender is busy the channel (256 alerts)
/// buffers; beyond it the flow sink counts the alerts it could not queue.
pub fn start(url: hyper::Uri, node: String) -> mpsc::Sender<Alert> {
    let (tx, mut rx) = mpsc::channel::<Alert>(256);
    tokio::spawn(async move {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(a) => batch.push(a),
                    Err(_) => break,
                }
            }
            let body = Bytes::from(alertmanager_payload(&batch, &node).to_string());
            let mut backoff = FIRST_BACKOFF;
            for attempt in 1..=ATTEMPTS {
                let req = hyper::Request::post(url.clone())
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))
                    .expect("a POST with a valid URI is a valid request");
                let outcome = match tokio::time::timeout(TIMEOUT, client.request(req)).await {
                    Ok(Ok(resp)) if resp.status().is_success() => break,
                    Ok(Ok(resp)) if resp.status().is_client_error() => {
                        tracing::warn!(%url, status = %resp.status(), alerts = batch.len(), "alert webhook refused the alerts");
                        break;
                    }
                    Ok(Ok(resp)) => format!("status {}", resp.status()),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {TIMEOUT:?}"),
                };
                if attempt == ATTEMPTS {
                    tracing::warn!(%url, error = %outcome, alerts = batch.len(), "alert webhook failed; alerts dropped");
                } else {
                    tracing::debug!(%url, error = %outcome, attempt, "alert webhook failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{AlertKind, Evidence, Severity, Workload};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn an_alert_is_posted_in_alertmanager_format() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: hyper::Uri = format!("http://{}/api/v2/alerts", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let tx = start(url, "node-1".into());
        let alert = Alert {
            kind: AlertKind::PortScan,
            severity: Severity::Warning,
            time: "2026-11-23T18:00:00.000Z".into(),
            source: Workload::Pod {
                namespace: "dev".into(),
                name: "scanner".into(),
            },
            target: None,
            summary: "dev/scanner reached 20 distinct ports".into(),
            evidence: Evidence::default(),
        };
        tx.send(alert).await.unwrap();
        let (mut conn, _) =
            tokio::time::timeout(std::time::Duration::from_secs(5), listener.accept())
                .await
                .expect("the webhook is called")
                .unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        // Read until the JSON body is complete (the payload is an array).
        while !String::from_utf8_lossy(&req).trim_end().ends_with(']') {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "connection closed early: {}",
                String::from_utf8_lossy(&req)
            );
            req.extend_from_slice(&buf[..n]);
        }
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        let req = String::from_utf8_lossy(&req);
        assert!(req.starts_with("POST /api/v2/alerts HTTP/1.1"), "{req}");
        let body: serde_json::Value =
            serde_json::from_str(req.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body[0]["labels"]["alertname"], "EnforcerPortScan");
        assert_eq!(body[0]["labels"]["node"], "node-1");
        assert_eq!(body[0]["labels"]["source"], "dev/scanner");
    }

    /// Reads one HTTP request (headers and a JSON array body) from `conn`.
    async fn read_request(conn: &mut tokio::net::TcpStream) -> String {
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&req).trim_end().ends_with(']') {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed early");
            req.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&req).into_owned()
    }

    #[tokio::test]
    async fn a_failed_post_is_retried_and_waiting_alerts_go_in_one_batch() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: hyper::Uri = format!("http://{}/api/v2/alerts", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let tx = start(url, "node-1".into());
        let alert = |name: &str| Alert {
            kind: AlertKind::DenyBurst,
            severity: Severity::Warning,
            time: "2026-11-23T18:00:00.000Z".into(),
            source: Workload::Pod {
                namespace: "dev".into(),
                name: name.into(),
            },
            target: None,
            summary: "burst".into(),
            evidence: Evidence::default(),
        };
        // Both are queued before the sender looks: one POST carries them.
        tx.send(alert("one")).await.unwrap();
        tx.send(alert("two")).await.unwrap();
        let accept = || async {
            tokio::time::timeout(std::time::Duration::from_secs(5), listener.accept())
                .await
                .expect("the webhook is called")
                .unwrap()
                .0
        };
        let mut conn = accept().await;
        let first = read_request(&mut conn).await;
        conn.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        drop(conn);
        let mut conn = accept().await;
        let again = read_request(&mut conn).await;
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        let body = |req: &str| -> serde_json::Value {
            serde_json::from_str(req.split("\r\n\r\n").nth(1).unwrap()).unwrap()
        };
        assert_eq!(body(&first), body(&again), "the same batch, retried");
        let sources: Vec<_> = body(&again)
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["labels"]["source"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(sources, ["dev/one", "dev/two"]);
    }
}
