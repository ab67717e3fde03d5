//! The metrics and health HTTP endpoints (hyper, HTTP/1.1).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::Metrics;

/// Readiness: set after the first successful sync.
#[derive(Clone, Default)]
pub struct Ready(Arc<AtomicBool>);

impl Ready {
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    pub fn unset(&self) {
        self.0.store(false, Ordering::Relaxed);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

fn respond(metrics: &Metrics, ready: &Ready, path: &str) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" if ready.get() => (StatusCode::OK, "text/plain", "ready\n".to_string()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not synced, or the source is stale\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("a static response is valid")
}

/// The default listen address: this host only. Opening the endpoints to other hosts is a choice
/// (`--metrics-addr 0.0.0.0:9966`, or one address of the node as the DaemonSet does).
pub const DEFAULT_ADDR: &str = "127.0.0.1:9966";

/// Parses a listen address: `IP:PORT`, `[IPv6]:PORT`, and `[IPv4]:PORT` too, so that one
/// template (`[$(NODE_IP)]:9966` in a DaemonSet) fits nodes of either family.
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bad = || format!("{s:?} is not an address and port (IP:PORT, [IPv6]:PORT or [IPv4]:PORT)");
    let (ip, port) = s
        .strip_prefix('[')
        .and_then(|rest| rest.split_once("]:"))
        .ok_or_else(bad)?;
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    Ok(SocketAddr::new(ip, port))
}

/// Serves until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Metrics, ready: Ready) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics on /metrics, health on /healthz and /readyz");
    serve_on(listener, metrics, ready).await
}

/// Serves on a bound listener until the task is dropped.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    ready: Ready,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let (metrics, ready) = (metrics.clone(), ready.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = respond(&metrics, &ready, req.uri().path());
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_of_either_family_with_or_without_brackets() {
        let ok = |s: &str| parse_listen_addr(s).unwrap().to_string();
        assert_eq!(ok(DEFAULT_ADDR), "127.0.0.1:9966");
        assert_eq!(ok("0.0.0.0:9966"), "0.0.0.0:9966");
        assert_eq!(ok("[10.0.0.5]:9966"), "10.0.0.5:9966");
        assert_eq!(ok("[::1]:9966"), "[::1]:9966");
        assert_eq!(ok("[fd00::5]:9966"), "[fd00::5]:9966");
        for bad in [
            "",
            "10.0.0.5",
            "[10.0.0.5]",
            "fd00::5:9966",
            "[fd00::5]:99999",
            "[node]:9966",
            // What kubelet leaves when the variable is not defined.
            "[$(NODE_IP)]:9966",
        ] {
            let err = parse_listen_addr(bad).unwrap_err();
            assert!(err.contains("not an address and port"), "{bad:?}: {err}");
        }
    }

    #[tokio::test]
    async fn metrics_health_and_readiness_over_http() {
        // Bound here and handed over: a port picked and released could be taken by another
        // test running in parallel before the server binds it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Ready::default();
        let server = tokio::spawn(serve_on(listener, Metrics::new(), ready.clone()));
        let get = |path: &'static str| async move {
            for _ in 0..50 {
                if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    s.write_all(
                        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                            .as_bytes(),
                    )
                    .await
                    .unwrap();
                    let mut out = String::new();
                    s.read_to_string(&mut out).await.unwrap();
                    return out;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            panic!("the server did not start");
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        ready.set();
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        let m = get("/metrics").await;
        assert!(
            m.starts_with("HTTP/1.1 200") && m.contains("enforcer_policies"),
            "{m}"
        );
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        server.abort();
    }
}
