//! The agent (`enforcer agent`, the real binary) on the Kubernetes API path against the API
//! server double: it becomes ready once synced; an outage of the API keeps it enforcing but,
//! past `--source-stale-grace`, reports the source stale (`enforcer_source_stale_seconds`) and
//! fails `/readyz`; when the API is back, what changed meanwhile is applied and it is ready
//! again. Needs root (the agent loads the datapath); no cluster.

// The API server double lives with the agent library's source tests, which use it too.
#[path = "../../enforcer-agent/tests/support/mod.rs"]
mod support;

#[path = "common/agent.rs"]
mod agent;

use std::io::Write as _;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::apiserver::{ApiServer, Fault};
use support::{namespace, policy, root};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The agent with its metrics listener (`Agent::metrics`).
struct Agent {
    agent: agent::Agent,
    metrics: String,
}

fn start_agent(api: &ApiServer) -> Agent {
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster: {{server: '{}'}}\ncontexts:\n- name: double\n  context: {{cluster: double, user: nobody}}\ncurrent-context: double\nusers:\n- name: nobody\n  user: {{}}\n",
        api.url()
    );
    let metrics = format!("127.0.0.1:{}", free_port());
    let agent = agent::Agent::start("api-agent", &kubeconfig, |cmd, kubeconfig| {
        // The kubeconfig through the environment, as kube's inference finds it.
        cmd.args([
            "--node",
            "node-1",
            "--no-alerts",
            "--source-stale-grace",
            "1s",
            "--api-timeout",
            "3s",
        ])
        .arg("--metrics-addr")
        .arg(&metrics)
        .arg("--flow-socket")
        .arg(kubeconfig.with_file_name("flows.sock"))
        .env("KUBECONFIG", kubeconfig)
        .env("ENFORCER_LOG", "info");
    });
    Agent { agent, metrics }
}

/// `GET path` on the agent's metrics listener: (status code, body).
fn get(agent: &Agent, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(&agent.metrics).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut s, &mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

fn metric(agent: &Agent, name: &str) -> Option<f64> {
    let (_, body) = get(agent, "/metrics")?;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

fn wait_for(agent: &mut Agent, what: &str, within: Duration, ok: impl Fn(&Agent) -> bool) {
    let started = Instant::now();
    let deadline = started + within;
    while !ok(agent) {
        agent.agent.assert_running(what);
        assert!(
            Instant::now() < deadline,
            "waited {within:?} for {what}; /readyz: {:?}; stale: {:?}; agent log:\n{}",
            get(agent, "/readyz"),
            metric(agent, "enforcer_source_stale_seconds"),
            agent
                .agent
                .log()
                .lines()
                .filter(|l| !l.contains("kube_client::client::builder"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("{what}: after {:.1} s", started.elapsed().as_secs_f64());
}

fn ready(agent: &Agent) -> bool {
    get(agent, "/readyz").is_some_and(|(code, _)| code == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_outage_keeps_enforcing_fails_readiness_and_recovers() {
    if !root() {
        return;
    }
    let api = ApiServer::start().await;
    api.create(&namespace("prod", &[]));
    api.create(&policy("prod", "first", &[("app", "web")], &[80]));
    let mut agent = tokio::task::block_in_place(|| start_agent(&api));
    tokio::task::block_in_place(|| {
        wait_for(&mut agent, "the first sync", Duration::from_secs(30), ready);
        assert_eq!(metric(&agent, "enforcer_policies"), Some(1.0));
        assert_eq!(metric(&agent, "enforcer_source_stale_seconds"), Some(0.0));
    });

    // The API fails every request; the open watches end, so the client has to come back.
    api.set_fault_all(Fault::Status(503));
    api.close_watches();
    tokio::task::block_in_place(|| {
        wait_for(
            &mut agent,
            "/readyz to fail",
            Duration::from_secs(20),
            |a| get(a, "/readyz").is_some_and(|(code, _)| code == 503),
        );
        assert!(metric(&agent, "enforcer_source_stale_seconds").unwrap_or(0.0) >= 1.0);
        assert_eq!(
            metric(&agent, "enforcer_policies"),
            Some(1.0),
            "the last state stays in force"
        );
    });

    // Changes made during the outage apply once the API answers again.
    api.create(&policy("prod", "second", &[("app", "db")], &[5432]));
    api.clear_fault();
    tokio::task::block_in_place(|| {
        wait_for(
            &mut agent,
            "ready again with the new policy",
            Duration::from_secs(40),
            |a| ready(a) && metric(a, "enforcer_policies") == Some(2.0),
        );
        assert_eq!(metric(&agent, "enforcer_source_stale_seconds"), Some(0.0));
    });

    // An API that accepts requests and never answers them is an outage too: the read timeout
    // (3 s here) turns the hang into errors.
    api.set_fault_all(Fault::Hang);
    api.close_watches();
    tokio::task::block_in_place(|| {
        wait_for(
            &mut agent,
            "/readyz to fail on a hung API",
            Duration::from_secs(30),
            |a| get(a, "/readyz").is_some_and(|(code, _)| code == 503),
        );
    });
    api.delete::<k8s_openapi::api::networking::v1::NetworkPolicy>("prod/first");
    api.clear_fault();
    tokio::task::block_in_place(|| {
        wait_for(
            &mut agent,
            "ready again without the deleted policy",
            Duration::from_secs(40),
            |a| ready(a) && metric(a, "enforcer_policies") == Some(1.0),
        );
    });
}
