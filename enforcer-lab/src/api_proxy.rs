//! The Kubernetes API as the lab's node namespaces reach it. Each agent runs inside its node's
//! namespace, where the API server's address (often the host's loopback, as with kind or a
//! local test server) leads nowhere. The controller, which runs on the host, listens inside
//! every node namespace on a loopback address and forwards each connection to the API server
//! as it is (TLS included: the bytes are not looked at).
//!
//! - An API server on a loopback address is offered at the same address and port in every
//!   node, so the agents use the user's kubeconfig unchanged.
//! - Any other address is offered at `127.0.0.1` with the same port; the agents get a copy of
//!   the kubeconfig pointing there, with `tls-server-name` set to the original host so that
//!   the server's certificate still verifies.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use enforcer_agent::netns::Netns;
use kube::config::Kubeconfig;
use socket2::{Domain, Protocol, SockAddr, Type};

use crate::nodes::NodeSpec;

/// Where the agents reach the API, and which kubeconfig they use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The API server's address as the host resolves it.
    pub upstream: SocketAddr,
    /// The addresses the proxy listens on inside every node namespace (a host name that
    /// resolves to both loopbacks, such as `localhost`, gets both).
    pub listen: Vec<SocketAddr>,
    /// `Some`: the agents' kubeconfig must point at `listen` instead of the server's URL.
    pub rewrite: Option<String>,
}

/// The current context's cluster: its server URL.
fn server_url(config: &Kubeconfig) -> anyhow::Result<String> {
    let context_name = config
        .current_context
        .as_deref()
        .context("the kubeconfig has no current-context")?;
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .with_context(|| format!("the kubeconfig has no context {context_name:?}"))?;
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.as_ref())
        .with_context(|| format!("the kubeconfig has no cluster {:?}", context.cluster))?;
    cluster
        .server
        .clone()
        .with_context(|| format!("cluster {:?} has no server", context.cluster))
}

/// Plans the proxy for `kubeconfig`'s server.
pub async fn plan(kubeconfig: &Path) -> anyhow::Result<Plan> {
    let config = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading the kubeconfig {}", kubeconfig.display()))?;
    let url = server_url(&config)?;
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("the API server URL {url:?} is not a URL"))?;
    let host = uri
        .host()
        .with_context(|| format!("the API server URL {url:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("http") => 80,
        _ => 443,
    });
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("resolving the API server's host {host:?}"))?
        .collect();
    // The address the server answers on (`localhost` may resolve to ::1 first while the
    // server listens on 127.0.0.1 only).
    let mut upstream = None;
    for addr in &addrs {
        let connect = tokio::net::TcpStream::connect(addr);
        if let Ok(Ok(_)) = tokio::time::timeout(std::time::Duration::from_secs(2), connect).await {
            upstream = Some(*addr);
            break;
        }
    }
    let upstream = match (upstream, addrs.first()) {
        (Some(a), _) => a,
        // None answers now: forward to the first, the agents retry until it does.
        (None, Some(a)) => *a,
        (None, None) => anyhow::bail!("the API server's host {host:?} has no address"),
    };
    if upstream.ip().is_loopback() {
        let mut listen: Vec<SocketAddr> =
            addrs.into_iter().filter(|a| a.ip().is_loopback()).collect();
        listen.sort();
        listen.dedup();
        return Ok(Plan {
            upstream,
            listen,
            rewrite: None,
        });
    }
    let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let scheme = uri.scheme_str().unwrap_or("https");
    Ok(Plan {
        upstream,
        listen: vec![listen],
        rewrite: Some(format!("{scheme}://{listen}")),
    })
}

/// The kubeconfig the agents use: `kubeconfig` itself, or a copy in `dir` that points at the
/// proxy (`plan.rewrite`) and keeps verifying the server's certificate by its original name.
pub fn agent_kubeconfig(kubeconfig: &Path, plan: &Plan, dir: &Path) -> anyhow::Result<PathBuf> {
    let Some(server) = &plan.rewrite else {
        return Ok(kubeconfig.to_owned());
    };
    let mut config = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading the kubeconfig {}", kubeconfig.display()))?;
    let original = server_url(&config)?;
    let host = original
        .parse::<hyper::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_owned))
        .unwrap_or_default();
    let context_name = config.current_context.clone().unwrap_or_default();
    let cluster_name = config
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .unwrap_or_default();
    for named in &mut config.clusters {
        if named.name != cluster_name {
            continue;
        }
        if let Some(cluster) = named.cluster.as_mut() {
            cluster.server = Some(server.clone());
            if cluster.tls_server_name.is_none() {
                cluster.tls_server_name = Some(host.clone());
            }
        }
    }
    let path = dir.join("agent-kubeconfig.yaml");
    let text = serde_yaml::to_string(&config).context("writing the agents' kubeconfig")?;
    crate::instance::write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// Listens on `plan.listen` inside `node`'s namespace and forwards every connection to
/// `plan.upstream` (from the host's namespace, where this process runs). Runs until the
/// process ends.
pub fn start(node: &NodeSpec, plan: &Plan) -> anyhow::Result<()> {
    let netns = Netns::open_named(&node.netns)
        .with_context(|| format!("opening node {}'s namespace", node.name))?;
    for listen in &plan.listen {
        forward(&netns, node, *listen, plan.upstream)?;
    }
    Ok(())
}

fn forward(
    netns: &Netns,
    node: &NodeSpec,
    listen: SocketAddr,
    upstream: SocketAddr,
) -> anyhow::Result<()> {
    let domain = Domain::for_address(listen);
    let socket = netns.socket(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if listen.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket
        .bind(&SockAddr::from(listen))
        .with_context(|| format!("listening on {listen} in node {}", node.name))?;
    socket.listen(128)?;
    let listener = tokio::net::TcpListener::from_std(socket.into())?;
    let node_name = node.name.clone();
    tokio::spawn(async move {
        loop {
            let (mut inbound, _) = match listener.accept().await {
                Ok(c) => c,
                Err(err) => {
                    tracing::warn!(node = %node_name, error = %err, "API proxy: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let node_name = node_name.clone();
            tokio::spawn(async move {
                match tokio::net::TcpStream::connect(upstream).await {
                    Ok(mut outbound) => {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                    // The agent sees a reset connection, as with an unreachable API.
                    Err(err) => tracing::warn!(
                        node = %node_name, %upstream, error = %err,
                        "API proxy: cannot reach the API server"
                    ),
                }
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("enforcer-proxy-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn kubeconfig(dir: &Path, server: &str) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: '{server}'}}\n- name: other\n  cluster: {{server: 'https://10.9.9.9:6443'}}\ncontexts:\n- name: ctx\n  context: {{cluster: c, user: u}}\ncurrent-context: ctx\nusers:\n- name: u\n  user: {{token: t}}\n"
            ),
        )
        .unwrap();
        path
    }

    #[tokio::test]
    async fn a_loopback_server_is_offered_as_it_is() {
        let dir = scratch("loopback");
        let path = kubeconfig(&dir, "http://127.0.0.1:18080");
        let plan = plan(&path).await.unwrap();
        assert_eq!(plan.upstream, "127.0.0.1:18080".parse().unwrap());
        assert_eq!(plan.listen, [plan.upstream]);
        assert_eq!(agent_kubeconfig(&path, &plan, &dir).unwrap(), path);
    }

    #[tokio::test]
    async fn localhost_is_the_loopback_address_the_server_answers_on() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let dir = scratch("localhost");
        let path = kubeconfig(&dir, &format!("http://localhost:{port}"));
        let plan = plan(&path).await.unwrap();
        assert_eq!(plan.upstream, SocketAddr::from(([127, 0, 0, 1], port)));
        assert!(plan.listen.contains(&plan.upstream), "{plan:?}");
        assert!(plan.listen.iter().all(|a| a.ip().is_loopback()));
        assert_eq!(plan.rewrite, None);
    }

    #[tokio::test]
    async fn another_server_is_offered_on_loopback_and_verified_by_its_name() {
        let dir = scratch("remote");
        let path = kubeconfig(&dir, "https://10.1.2.3:6443");
        let plan = plan(&path).await.unwrap();
        assert_eq!(plan.upstream, "10.1.2.3:6443".parse().unwrap());
        assert_eq!(plan.listen, ["127.0.0.1:6443".parse().unwrap()]);
        let copy = agent_kubeconfig(&path, &plan, &dir).unwrap();
        assert_ne!(copy, path);
        let config = Kubeconfig::read_from(&copy).unwrap();
        let cluster = |name: &str| {
            config
                .clusters
                .iter()
                .find(|c| c.name == name)
                .and_then(|c| c.cluster.clone())
                .unwrap()
        };
        assert_eq!(
            cluster("c").server.as_deref(),
            Some("https://127.0.0.1:6443")
        );
        assert_eq!(cluster("c").tls_server_name.as_deref(), Some("10.1.2.3"));
        // Other clusters and the credentials are left as they were.
        assert_eq!(
            cluster("other").server.as_deref(),
            Some("https://10.9.9.9:6443")
        );
        assert!(std::fs::read_to_string(&copy).unwrap().contains("token: t"));
    }
}
