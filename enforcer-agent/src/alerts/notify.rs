//! POSTs alerts to an Alertmanager-compatible webhook (`/api/v2/alerts`), in the background.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use super::{alertmanager_payload, Alert};

/// Starts the sender; alerts sent to the returned channel are POSTed one by one.
pub fn start(url: hyper::Uri, node: String) -> mpsc::Sender<Alert> {
    let (tx, mut rx) = mpsc::channel::<Alert>(256);
    tokio::spawn(async move {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        while let Some(alert) = rx.recv().await {
            let body = alertmanager_payload(std::slice::from_ref(&alert), &node).to_string();
            let req = hyper::Request::post(url.clone())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .expect("a POST with a valid URI is a valid request");
            match client.request(req).await {
                Ok(resp) if resp.status().is_success() => {}
                Ok(resp) => {
                    tracing::warn!(%url, status = %resp.status(), "alert webhook refused an alert")
                }
                Err(e) => tracing::warn!(%url, error = %e, "alert webhook unreachable"),
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
}
