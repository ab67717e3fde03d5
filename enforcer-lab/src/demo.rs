//! `enforcer lab demo`: the built-in demo with live traffic and the agent's flow log.

use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use crate::args::DemoArgs;
use crate::demo_scenario::demo_scenario;
use crate::instance::{log_tail, pid_alive};
use crate::probe::connect_once;
use crate::run::{interruptible, up};
use crate::scenario::{Family, Proto};
use crate::servers::{Endpoint, ServerSet};
use crate::topology::{LivePod, Topology};

const ROUND: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// A port scan every this many rounds (~10 s).
const SCAN_EVERY: u64 = 5;
const SCAN_PORTS: std::ops::RangeInclusive<u16> = 1..=30;

/// One connection the demo makes each round, and whether the demo policies allow it.
struct Flow {
    from: &'static str,
    /// A pod, or `service:NS/NAME` (the demo's Service, at its ClusterIP).
    to: &'static str,
    port: u16,
    protocol: Proto,
    family: Family,
    allowed: bool,
}

const fn flow(
    from: &'static str,
    to: &'static str,
    port: u16,
    protocol: Proto,
    family: Family,
    allowed: bool,
) -> Flow {
    Flow {
        from,
        to,
        port,
        protocol,
        family,
        allowed,
    }
}

const TRAFFIC: &[Flow] = &[
    flow(
        "prod/frontend",
        "prod/backend",
        8080,
        Proto::Tcp,
        Family::IPv4,
        true,
    ),
    flow(
        "prod/frontend",
        "prod/backend",
        8080,
        Proto::Tcp,
        Family::IPv6,
        true,
    ),
    flow(
        "prod/frontend",
        "prod/backend",
        8125,
        Proto::Udp,
        Family::IPv4,
        true,
    ),
    flow(
        "prod/backend",
        "prod/db",
        5432,
        Proto::Tcp,
        Family::IPv4,
        true,
    ),
    flow(
        "dev/debug",
        "prod/frontend",
        80,
        Proto::Tcp,
        Family::IPv6,
        true,
    ),
    flow(
        "prod/frontend",
        "prod/db",
        5432,
        Proto::Tcp,
        Family::IPv4,
        false,
    ),
    flow(
        "dev/debug",
        "prod/backend",
        8080,
        Proto::Tcp,
        Family::IPv4,
        false,
    ),
    // Through the backend's Service: judged on the backend at its target port (8080).
    flow(
        "prod/frontend",
        "service:prod/backend",
        80,
        Proto::Tcp,
        Family::IPv4,
        true,
    ),
    flow(
        "dev/debug",
        "service:prod/backend",
        80,
        Proto::Tcp,
        Family::IPv6,
        false,
    ),
    flow(
        "dev/scanner",
        "prod/frontend",
        80,
        Proto::Tcp,
        Family::IPv4,
        false,
    ),
    flow(
        "dev/scanner",
        "prod/db",
        5432,
        Proto::Tcp,
        Family::IPv6,
        false,
    ),
];

pub async fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    let scenario = demo_scenario();
    // Allowed connections are logged too, so the flow log shows both outcomes.
    let lab = interruptible(up(&scenario, &args.name, &["--log-allowed"], &[])).await?;
    let pods = lab.topo.pods();
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for f in TRAFFIC.iter().filter(|f| !f.to.starts_with("service:")) {
        let ep = Endpoint {
            port: f.port,
            protocol: f.protocol,
            family: f.family,
        };
        if !endpoints.contains(&ep) {
            endpoints.push(ep);
        }
    }
    let servers = ServerSet::start(&pods, &endpoints)?;
    println!(
        "demo lab {:?} is up: {} pods, agent pid {}; traffic every {}s{}; Ctrl-C to stop",
        args.name,
        pods.len(),
        lab.agent_pid()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into()),
        ROUND.as_secs(),
        args.duration
            .map(|d| format!(" for {d}s"))
            .unwrap_or_default()
    );
    println!(
        "(in another terminal: enforcer lab status --name {0}; enforcer lab probe --name {0})",
        args.name
    );
    let tail = tokio::spawn(tail_flows(lab.paths.flow_log.clone()));
    let traffic = traffic_loop(&lab.topo, lab.agent_pid(), &lab.paths.agent_log);
    let stop = async {
        match args.duration {
            Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
            None => std::future::pending().await,
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let res = tokio::select! {
        res = traffic => res,
        _ = stop => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
    };
    // Let the last flow records show up before tearing down.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tail.abort();
    servers.stop().await;
    println!("stopping the demo; removing lab {:?}", args.name);
    drop(lab);
    res
}

async fn traffic_loop(
    topo: &Topology,
    agent_pid: Option<u32>,
    agent_log: &Path,
) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval(ROUND);
    for round in 1u64.. {
        ticker.tick().await;
        if let Some(pid) = agent_pid.filter(|pid| !pid_alive(*pid)) {
            anyhow::bail!(
                "the agent (pid {pid}) exited; agent.log tail:\n{}",
                log_tail(agent_log, 20)
            );
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (i, f) in TRAFFIC.iter().enumerate() {
            let (from, addr) = endpoints_of(topo, f.from, f.to, f.family, f.port)?;
            let proto = f.protocol;
            tasks
                .spawn(async move { (i, connect_once(&from, addr, proto, CONNECT_TIMEOUT).await) });
        }
        if round % SCAN_EVERY == 1 {
            let (from, _) = endpoints_of(topo, "dev/scanner", "prod/db", Family::IPv4, 0)?;
            let target = topo.pod("prod/db").expect("demo has prod/db").state.ipv4;
            println!("round {round}: dev/scanner scans prod/db ({target}) ports 1-30/TCP");
            for port in SCAN_PORTS {
                let from = from.clone();
                let addr = SocketAddr::new(target.into(), port);
                tasks.spawn(async move {
                    let _ = connect_once(&from, addr, Proto::Tcp, CONNECT_TIMEOUT).await;
                    (usize::MAX, Ok(false))
                });
            }
        }
        let mut surprises = Vec::new();
        let mut outcomes = Vec::new();
        let (mut ok, mut blocked) = (0, 0);
        while let Some(joined) = tasks.join_next().await {
            let (i, res) = joined.context("demo traffic task failed")?;
            if i >= TRAFFIC.len() {
                continue; // a scan connection
            }
            let connected = res?;
            outcomes.push((i, connected));
        }
        outcomes.sort();
        for (i, connected) in outcomes {
            let f = &TRAFFIC[i];
            if connected {
                ok += 1;
            } else {
                blocked += 1;
            }
            if connected != f.allowed {
                surprises.push(format!(
                    "{} -> {} :{}/{} {} {}",
                    f.from,
                    f.to,
                    f.port,
                    f.protocol,
                    f.family,
                    if connected {
                        "CONNECTED (expected blocked)"
                    } else {
                        "BLOCKED (expected allowed)"
                    }
                ));
            }
        }
        println!(
            "round {round}: {ok} connected, {blocked} blocked{}",
            if surprises.is_empty() {
                ", as the policies intend"
            } else {
                ""
            }
        );
        for s in surprises {
            println!("  unexpected: {s}");
        }
    }
    Ok(())
}

/// The ClusterIPs of the demo's Service prod/backend (`demo/cluster.yaml`).
const DEMO_SERVICE_IPV4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 96, 1, 10);
const DEMO_SERVICE_IPV6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xfd00, 0x10, 0x96, 1, 0, 0, 0, 0x10);

fn endpoints_of(
    topo: &Topology,
    from: &str,
    to: &str,
    family: Family,
    port: u16,
) -> anyhow::Result<(Arc<LivePod>, SocketAddr)> {
    let src = topo
        .pod(from)
        .with_context(|| format!("demo pod {from} missing"))?
        .clone();
    if to == "service:prod/backend" {
        let ip: std::net::IpAddr = match family {
            Family::IPv4 => DEMO_SERVICE_IPV4.into(),
            Family::IPv6 => DEMO_SERVICE_IPV6.into(),
        };
        return Ok((src, SocketAddr::new(ip, port)));
    }
    let dst = topo
        .pod(to)
        .with_context(|| format!("demo pod {to} missing"))?;
    let addr = dst
        .state
        .addr(family, port)
        .with_context(|| format!("demo pod {to} has no {family} address"))?;
    Ok((src, addr))
}

/// Follows the flow log like `tail -f`, printing each record on one line.
async fn tail_flows(path: PathBuf) {
    let mut offset = 0u64;
    let mut partial = String::new();
    loop {
        if let Some(chunk) = read_from(&path, &mut offset) {
            partial.push_str(&chunk);
            while let Some(nl) = partial.find('\n') {
                let line: String = partial.drain(..=nl).collect();
                let line = line.trim();
                if !line.is_empty() && !is_allowed_egress(line) {
                    println!("{}", format_flow_line(line));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn read_from(path: &Path, offset: &mut u64) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    if len < *offset {
        *offset = 0; // truncated or replaced
    }
    if len == *offset {
        return None;
    }
    file.seek(SeekFrom::Start(*offset)).ok()?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).ok()?;
    *offset += buf.len() as u64;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// An allowed connection is logged once per side; the demo shows only the destination's
/// (ingress) record of it, except for a connection to a Service, whose client side (egress)
/// is the record that names the Service. Drops are always shown.
fn is_allowed_egress(line: &str) -> bool {
    let Ok(rec) = serde_json::from_str::<Value>(line) else {
        return false;
    };
    let field = |k: &str| {
        rec.get(k)
            .and_then(|v| v.as_str())
            .map(str::to_ascii_lowercase)
    };
    let to_service = rec.get("dst").and_then(|d| d.get("service")).is_some();
    field("verdict").as_deref() == Some("allowed")
        && field("direction").as_deref() == Some("egress")
        && !to_service
}

/// `time  DROPPED  dev/scanner -> prod/db :5432/TCP  (policy_denied: detail)  [ingress]`;
/// lines that are not JSON objects are returned as they are.
pub fn format_flow_line(line: &str) -> String {
    let Ok(Value::Object(rec)) = serde_json::from_str::<Value>(line) else {
        return line.to_owned();
    };
    if rec.get("type").and_then(Value::as_str) == Some("alert") {
        let field = |k: &str| rec.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
        let time = field("time");
        let time = time
            .split_once('T')
            .map_or(time.as_str(), |(_, t)| t)
            .trim_end_matches('Z');
        return format!(
            "{time}  ALERT    {} {}: {}",
            field("severity").to_uppercase(),
            field("kind"),
            field("summary")
        );
    }
    let text = |v: Option<&Value>| -> Option<String> {
        match v? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    };
    // RFC 3339 timestamps are shortened to the time of day.
    let time = text(rec.get("time")).map_or_else(
        || "-".into(),
        |t| match t.split_once('T') {
            Some((_, tod)) if t.len() > 20 => tod.trim_end_matches('Z').to_owned(),
            _ => t,
        },
    );
    let verdict = if rec.get("end").is_some_and(Value::is_object) {
        "ENDED".to_owned()
    } else {
        text(rec.get("verdict"))
            .unwrap_or_else(|| "?".into())
            .to_uppercase()
    };
    let src = peer(rec.get("src"));
    let dst = peer(rec.get("dst"));
    let port = rec
        .get("dst")
        .and_then(|d| d.get("port"))
        .and_then(|p| text(Some(p)));
    let protocol = match rec.get("protocol") {
        Some(Value::Number(n)) => match n.as_u64() {
            Some(6) => "TCP".to_owned(),
            Some(17) => "UDP".to_owned(),
            Some(1) => "ICMP".to_owned(),
            Some(58) => "ICMPv6".to_owned(),
            Some(132) => "SCTP".to_owned(),
            _ => n.to_string(),
        },
        other => text(other)
            .map(|s| s.to_uppercase())
            .unwrap_or_else(|| "?".into()),
    };
    let mut out = format!("{time}  {verdict:8} {src} -> {dst}");
    match port {
        Some(port) => out.push_str(&format!(" :{port}/{protocol}")),
        None => out.push_str(&format!(" {protocol}")),
    }
    match (text(rec.get("reason")), text(rec.get("detail"))) {
        (Some(r), Some(d)) => out.push_str(&format!("  ({r}: {d})")),
        (Some(r), None) => out.push_str(&format!("  ({r})")),
        (None, Some(d)) => out.push_str(&format!("  ({d})")),
        (None, None) => {}
    }
    if let Some(dir) = text(rec.get("direction")) {
        out.push_str(&format!("  [{dir}]"));
    }
    out
}

/// `ns/pod` when the record names the pod, else the IP (or `?`); a flow sent to a Service
/// shows it first (`service prod/backend:80 => prod/backend`).
fn peer(v: Option<&Value>) -> String {
    let Some(v) = v else { return "?".into() };
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).filter(|s| !s.is_empty());
    let end = match (field("namespace"), field("pod")) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
        (None, Some(pod)) => pod.to_owned(),
        _ => field("ip").map(str::to_owned).unwrap_or_else(|| "?".into()),
    };
    let service = v.get("service");
    match service.and_then(|s| s.get("name")).and_then(Value::as_str) {
        Some(name) => {
            let port = service
                .and_then(|s| s.get("port"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            format!("service {name}:{port} => {end}")
        }
        None => end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_a_full_record() {
        let line = r#"{"time":"12:00:01.123","verdict":"dropped","direction":"ingress","reason":"policy_denied","src":{"ip":"10.244.2.11","port":40000,"namespace":"dev","pod":"scanner"},"dst":{"ip":"10.244.1.12","port":5432,"namespace":"prod","pod":"db"},"protocol":"TCP","detail":"no ingress rule of prod/default-deny-ingress matches"}"#;
        assert_eq!(
            format_flow_line(line),
            "12:00:01.123  DROPPED  dev/scanner -> prod/db :5432/TCP  (policy_denied: no ingress rule of prod/default-deny-ingress matches)  [ingress]"
        );
    }

    #[test]
    fn shortens_rfc3339_times_and_hides_allowed_egress() {
        let line =
            r#"{"time":"2026-11-23T18:40:47.821Z","verdict":"allowed","direction":"egress"}"#;
        assert!(format_flow_line(line).starts_with("18:40:47.821  ALLOWED "));
        let end = r#"{"time":"2026-11-23T18:40:47.821Z","verdict":"allowed","end":{"reason":"closed"},"detail":"connection closed"}"#;
        assert!(
            format_flow_line(end).starts_with("18:40:47.821  ENDED "),
            "{}",
            format_flow_line(end)
        );
        assert!(is_allowed_egress(line));
        assert!(!is_allowed_egress(&line.replace("egress", "ingress")));
        assert!(!is_allowed_egress(&line.replace("allowed", "dropped")));
    }

    #[test]
    fn formats_sparse_and_foreign_records() {
        let line = r#"{"verdict":"DROPPED","src":{"ip":"10.0.0.1"},"dst":{"ip":"10.0.0.2"},"protocol":17}"#;
        assert_eq!(
            format_flow_line(line),
            "-  DROPPED  10.0.0.1 -> 10.0.0.2 UDP"
        );
        assert_eq!(format_flow_line("not json"), "not json");
        assert_eq!(format_flow_line("{}"), "-  ?        ? -> ? ?");
    }
}
