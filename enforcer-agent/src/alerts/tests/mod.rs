//! Detector tests: synthetic traffic from a small record builder, time advanced explicitly.

mod config;
mod deny_burst;
mod first_seen;
mod portscan;
mod steady;
mod volume;
mod webhook;
mod workload;

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Alert, AlertKind, Alerts, AlertsConfig};
use crate::compile::tables::Direction;
use crate::flows::enrich::{FlowEnd, FlowRecord, SCHEMA};

/// Start of every test's traffic: 2023-11-14T22:13:20Z, in ms since the epoch.
pub const T0_MS: u64 = 1_700_000_000_000;

pub fn wall(offset_ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(T0_MS + offset_ms)
}

/// A pod end without labels (its workload comes from the name).
pub fn pod(ns: &str, name: &str, ip: &str) -> FlowEnd {
    FlowEnd {
        ip: ip.parse().expect("test address"),
        port: None,
        namespace: Some(ns.into()),
        pod: Some(name.into()),
        labels: Default::default(),
        workload: None,
        service: None,
    }
}

/// A pod end with an `app` label.
pub fn app(ns: &str, app: &str, ip: &str) -> FlowEnd {
    let mut end = pod(ns, &format!("{app}-7d4b9c8f6-x7k2p"), ip);
    std::sync::Arc::make_mut(&mut end.labels).insert("app".into(), app.into());
    end
}

/// An end that is no pod.
pub fn ext(ip: &str) -> FlowEnd {
    FlowEnd {
        ip: ip.parse::<IpAddr>().expect("test address"),
        port: None,
        namespace: None,
        pod: None,
        labels: Default::default(),
        workload: None,
        service: None,
    }
}

/// Builds a record: allowed TCP egress from `src` to `dst` port 80 at T0, 60 bytes.
pub struct Flow {
    rec: FlowRecord,
    offset_ms: u64,
}

pub fn flow(src: &FlowEnd, dst: &FlowEnd) -> Flow {
    let mut src = src.clone();
    let mut dst = dst.clone();
    src.port = Some(40000);
    dst.port = Some(80);
    Flow {
        rec: FlowRecord {
            schema: SCHEMA.into(),
            time: "".into(),
            node: "node-1".into(),
            verdict: "allowed".into(),
            direction: Direction::Egress,
            reason: None,
            protocol: "TCP".into(),
            src,
            dst,
            tcp_flags: "SYN".into(),
            icmp: None,
            length: 60,
            interface: Some("lxc1".into()),
            reply: false,
            fragment: false,
            rule: None,
            isolated_by: Vec::new(),
            end: None,
            staged: None,
            detail: "test".into(),
        },
        offset_ms: 0,
    }
}

impl Flow {
    /// Milliseconds after T0.
    pub fn at(mut self, offset_ms: u64) -> Self {
        self.offset_ms = offset_ms;
        self
    }
    pub fn port(mut self, port: u16) -> Self {
        self.rec.dst.port = Some(port);
        self
    }
    pub fn denied(mut self) -> Self {
        self.rec.verdict = "dropped".into();
        self.rec.reason = Some("policy_denied".into());
        self
    }
    pub fn len(mut self, bytes: u32) -> Self {
        self.rec.length = bytes;
        self
    }
    /// A byte sample of this connection: it carried `sent` bytes from the initiator and
    /// `received` back since the sweeper's previous pass.
    pub fn carried(mut self, sent: u64, received: u64) -> Self {
        self.rec.tcp_flags = "".into();
        self.rec.length = 0;
        self.rec.end = Some(crate::flows::enrich::ConnectionEnd {
            reason: "active".into(),
            packets_sent: 1 + sent / 1_000,
            bytes_sent: sent,
            packets_received: 1 + received / 1_000,
            bytes_received: received,
            duration_ms: 1_000,
        });
        self
    }
    pub fn icmp(mut self) -> Self {
        self.rec.protocol = "ICMP".into();
        self.rec.src.port = None;
        self.rec.dst.port = None;
        self
    }
    /// The same flow as its reply packet (ends swapped, `reply` set).
    pub fn reply(mut self) -> Self {
        std::mem::swap(&mut self.rec.src, &mut self.rec.dst);
        self.rec.reply = true;
        self
    }
    pub fn build(self) -> FlowRecord {
        let mut rec = self.rec;
        rec.time = humantime::format_rfc3339_millis(wall(self.offset_ms))
            .to_string()
            .into();
        rec
    }
}

/// Feeds a record with `now` equal to its time.
pub fn feed(alerts: &mut Alerts, f: Flow) -> Vec<Alert> {
    let now = wall(f.offset_ms);
    alerts.observe(&f.build(), now)
}

/// The defaults with only `kind`'s detector enabled.
pub fn only(kind: AlertKind) -> AlertsConfig {
    let mut cfg = AlertsConfig::default();
    cfg.port_scan.enabled = kind == AlertKind::PortScan;
    cfg.deny_burst.enabled = kind == AlertKind::DenyBurst;
    cfg.first_seen.enabled = kind == AlertKind::FirstSeenEdge;
    cfg.volume.enabled = kind == AlertKind::VolumeSpike;
    cfg
}
