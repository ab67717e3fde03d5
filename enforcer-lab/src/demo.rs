//! `enforcer lab demo`: the built-in demo with live traffic and the agent's flow log.

use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use enforcer_agent::alerts::Alert;
use enforcer_agent::compile::tables::Direction;
use enforcer_agent::flows::client::ColorChoice;
use enforcer_agent::flows::enrich::FlowRecord;
use enforcer_agent::flows::table::{timestamp, TableFormat};

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
    let tail = tokio::spawn(tail_flows(lab.paths.flow_log.clone(), terminal_format()));
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

/// The table format of `enforcer flows` on this terminal: colour when stdout is a terminal
/// and NO_COLOR is not set, local times.
fn terminal_format() -> TableFormat {
    use std::io::IsTerminal;
    TableFormat {
        color: ColorChoice::Auto.enabled(
            std::io::stdout().is_terminal(),
            std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
        ),
        utc: false,
    }
}

/// Follows the flow log like `tail -f`, printing each record on one line.
async fn tail_flows(path: PathBuf, format: TableFormat) {
    let mut offset = 0u64;
    let mut partial = String::new();
    loop {
        if let Some(chunk) = read_from(&path, &mut offset) {
            partial.push_str(&chunk);
            while let Some(nl) = partial.find('\n') {
                let line: String = partial.drain(..=nl).collect();
                if let Some(shown) = format_log_line(line.trim(), &format) {
                    println!("{shown}");
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

/// A line of the flow log as the demo shows it: a flow record as `enforcer flows` prints it
/// (its table line), an alert as [`alert_line`], anything else as it is; `None` for what is not
/// shown (empty lines, the client side of allowed connections).
pub fn format_log_line(line: &str, format: &TableFormat) -> Option<String> {
    if line.is_empty() {
        return None;
    }
    if let Ok(rec) = serde_json::from_str::<FlowRecord>(line) {
        return (!is_allowed_egress(&rec)).then(|| format.flow(&rec));
    }
    match serde_json::from_str::<Alert>(line) {
        Ok(alert) => Some(alert_line(&alert, format)),
        Err(_) => Some(line.to_owned()),
    }
}

/// An allowed connection is logged once per side; the demo shows only the destination's
/// (ingress) record of it, except for a connection to a Service, whose client side (egress)
/// is the record that names the Service. Drops are always shown.
fn is_allowed_egress(rec: &FlowRecord) -> bool {
    rec.verdict.eq_ignore_ascii_case("allowed")
        && rec.direction == Direction::Egress
        && rec.dst.service.is_none()
}

/// `Nov 23 18:40:48.822  ALERT    WARNING port_scan: <summary>`: the time as the flow lines
/// write it, where a flow line has its verdict.
fn alert_line(alert: &Alert, format: &TableFormat) -> String {
    let kind = serde_json::to_value(alert.kind).ok();
    let kind = kind.as_ref().and_then(|k| k.as_str()).unwrap_or("unknown");
    format!(
        "{}  ALERT    {} {kind}: {}",
        timestamp(&alert.time, format.utc),
        alert.severity.name().to_uppercase(),
        alert.summary
    )
}

#[cfg(test)]
mod tests {
    use enforcer_agent::alerts::webhook::to_record;

    use super::*;

    const PLAIN: TableFormat = TableFormat {
        color: false,
        utc: true,
    };

    /// A dropped flow as the agent logs it (schema enforcer.flow/v1).
    const DROPPED: &str = r#"{"schema":"enforcer.flow/v1","time":"2026-11-23T18:40:47.821Z","node":"n1","verdict":"dropped","direction":"ingress","reason":"policy_denied","protocol":"TCP","src":{"ip":"10.244.2.11","port":40000,"namespace":"dev","pod":"scanner"},"dst":{"ip":"10.244.1.12","port":5432,"namespace":"prod","pod":"db"},"tcp_flags":"SYN","length":60,"isolated_by":["prod/default-deny-ingress"],"detail":"no ingress rule of prod/default-deny-ingress matches"}"#;

    #[test]
    fn flows_are_lines_of_the_flow_table() {
        let rec: FlowRecord = serde_json::from_str(DROPPED).unwrap();
        assert_eq!(
            format_log_line(DROPPED, &PLAIN).unwrap(),
            PLAIN.flow(&rec),
            "the demo prints what `enforcer flows` prints"
        );
        assert_eq!(
            format_log_line(DROPPED, &PLAIN).unwrap(),
            "Nov 23 18:40:47.821  DROPPED  ingress  dev/scanner:40000 -> prod/db:5432 TCP SYN  \
             policy_denied: isolated by prod/default-deny-ingress"
        );
    }

    #[test]
    fn hides_the_client_side_of_allowed_connections() {
        let allowed = DROPPED
            .replace(r#""verdict":"dropped""#, r#""verdict":"allowed""#)
            .replace(r#""reason":"policy_denied","#, "");
        let egress = allowed.replace("ingress", "egress");
        assert!(format_log_line(&allowed, &PLAIN).is_some());
        assert_eq!(format_log_line(&egress, &PLAIN), None);
        assert!(format_log_line(&DROPPED.replace("ingress", "egress"), &PLAIN).is_some());
        // The client side of a connection to a Service is the one that names it.
        let to_service = egress.replace(
            r#""pod":"db"}"#,
            r#""pod":"db","service":{"name":"prod/db","ip":"10.96.0.10","port":5432}}"#,
        );
        let line = format_log_line(&to_service, &PLAIN).unwrap();
        assert!(
            line.contains("service prod/db:5432 => prod/db:5432"),
            "{line}"
        );
    }

    #[test]
    fn alerts_and_foreign_lines() {
        let alert = serde_json::json!({
            "kind": "port_scan",
            "severity": "warning",
            "time": "2026-11-23T18:40:50.002Z",
            "source": "dev/scanner",
            "summary": "dev/scanner probed 20 ports",
            "evidence": {"counts": {"distinct_ports": 20}, "window_seconds": 10}
        });
        let alert: Alert = serde_json::from_value(alert).unwrap();
        let line = to_record(&alert).to_string();
        assert_eq!(
            format_log_line(&line, &PLAIN).unwrap(),
            "Nov 23 18:40:50.002  ALERT    WARNING port_scan: dev/scanner probed 20 ports"
        );
        assert_eq!(format_log_line("not json", &PLAIN).unwrap(), "not json");
        assert_eq!(format_log_line("", &PLAIN), None);
    }
}
