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
