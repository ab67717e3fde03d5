//! Anomaly alerts over the flow stream: detectors that need no rules.
//!
//! [`Alerts::observe`] takes each [`FlowRecord`] and returns the alerts it triggers. The
//! detectors are pure: no I/O and no clock; time is the record's `time` (falling back to the
//! `now` argument when it does not parse), kept monotonic.
//!
//! - [`portscan`]: one source reaching many ports on a peer, or many peers, in a short window.
//! - [`deny_burst`]: a source's denied flows per bucket far above its own baseline.
//! - [`first_seen`]: a workload → workload (or → external network) edge not seen while learning.
//! - [`volume`]: connections (openings) or bytes (sampled from conntrack) of a workload pair
//!   per bucket far above its baseline.
//! - [`webhook`]: alerts as an Alertmanager v2 payload, or as a record of the flow stream.
//!
//! Flows are oriented by who opened them: for a reply record the initiator is `dst`. Sources
//! and pairs are [`Workload`]s, so the replicas of an app share one baseline.
//!
//! Memory is bounded: each detector holds at most its configured number of sources, pairs or
//! edges (see [`AlertsConfig`]), evicting the least recently seen (first-seen edges instead stop
//! learning at the cap); evictions are counted in [`Stats`].

pub mod config;
pub mod deny_burst;
pub mod first_seen;
pub mod notify;
pub mod portscan;
pub mod volume;
pub mod webhook;
pub mod window;
pub mod workload;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use config::{
    AlertsConfig, ConfigError, DenyBurstConfig, Exempt, FirstSeenConfig, PortScanConfig,
    VolumeConfig,
};
pub use webhook::{alertmanager_payload, to_record};
pub use workload::Workload;

use crate::flows::enrich::FlowRecord;

/// The detectors' maps, touched for every record: foldhash, seeded at random per map, instead
/// of SipHash (a tenth of the flow pipeline's CPU). Keys come from traffic, so a peer can choose
/// them; every such map is bounded (see [`AlertsConfig`]), so a flood of colliding keys costs
/// at most a bounded map's worth of probing.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Longest list of peers or ports an alert carries; the counts say how many there were.
pub const MAX_EVIDENCE_ITEMS: usize = 20;

/// What a detector found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    PortScan,
    DenyBurst,
    FirstSeenEdge,
    VolumeSpike,
}

impl AlertKind {
    pub const ALL: [AlertKind; 4] = [
        AlertKind::PortScan,
        AlertKind::DenyBurst,
        AlertKind::FirstSeenEdge,
        AlertKind::VolumeSpike,
    ];

    /// The Alertmanager `alertname`.
    pub const fn alert_name(self) -> &'static str {
        match self {
            AlertKind::PortScan => "EnforcerPortScan",
            AlertKind::DenyBurst => "EnforcerDenyBurst",
            AlertKind::FirstSeenEdge => "EnforcerFirstSeenEdge",
            AlertKind::VolumeSpike => "EnforcerVolumeSpike",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub const fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Why an alert fired. Lists are bounded by [`MAX_EVIDENCE_ITEMS`] and sorted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Named counts, e.g. `distinct_ports`, `denied`, `connections`, `bytes`.
    pub counts: BTreeMap<String, u64>,
    /// The window or bucket the counts cover (the learning period for first-seen edges).
    pub window_seconds: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// The baseline per bucket the observation was compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<f64>,
}

/// One alert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub severity: Severity,
    /// RFC 3339 time of the record that triggered it.
    pub time: String,
    pub source: Workload,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Workload>,
    /// One sentence for humans.
    pub summary: String,
    pub evidence: Evidence,
}

/// Counters of bounded state, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub records: u64,
    /// Records whose `time` did not parse (the `now` argument was used).
    pub bad_times: u64,
    /// Records from [`AlertsConfig::exempt_sources`], not looked at.
    pub exempt_records: u64,
    pub port_scan_sources: usize,
    pub deny_burst_sources: usize,
    pub volume_pairs: usize,
    pub first_seen_edges: usize,
    /// Sources and pairs evicted or forgotten (all detectors).
    pub evicted: u64,
    /// New edges neither learned nor reported because the edge set was full.
    pub first_seen_overflow: u64,
}

/// A record as the detectors see it: oriented from the initiator, with its time in ms.
pub(crate) struct FlowView<'a> {
    pub rec: &'a FlowRecord,
    pub t_ms: u64,
    pub initiator: Workload,
    pub responder: Workload,
    pub responder_ip: IpAddr,
    /// The responder's port (TCP/UDP/SCTP).
    pub port: Option<u16>,
    pub denied: bool,
}

/// How often (record time) idle sources and pairs are forgotten.
const SWEEP_INTERVAL_MS: u64 = 60_000;

/// All detectors.
pub struct Alerts {
    exempt: Vec<Exempt>,
    port_scan: Option<portscan::PortScan>,
    deny_burst: Option<deny_burst::DenyBurst>,
    first_seen: Option<first_seen::FirstSeen>,
    volume: Option<volume::Volume>,
    clock_ms: u64,
    last_sweep_ms: u64,
    records: u64,
    bad_times: u64,
    exempt_records: u64,
    workloads: workload::Workloads,
}

impl Alerts {
    /// Detectors for `cfg`, clamped to valid values (see [`AlertsConfig::validate`]).
    pub fn new(cfg: AlertsConfig) -> Self {
        let cfg = cfg.clamped();
        Alerts {
            exempt: cfg
                .exempt_sources
                .iter()
                .filter_map(|e| Exempt::parse(e))
                .collect(),
            port_scan: cfg
                .port_scan
                .enabled
                .then(|| portscan::PortScan::new(cfg.port_scan.clone())),
            deny_burst: cfg
                .deny_burst
                .enabled
                .then(|| deny_burst::DenyBurst::new(cfg.deny_burst.clone())),
            first_seen: cfg
                .first_seen
                .enabled
                .then(|| first_seen::FirstSeen::new(cfg.first_seen.clone())),
            volume: cfg
                .volume
                .enabled
                .then(|| volume::Volume::new(cfg.volume.clone())),
            clock_ms: 0,
            last_sweep_ms: 0,
            records: 0,
            bad_times: 0,
            exempt_records: 0,
            workloads: workload::Workloads::default(),
        }
    }

    /// Feeds one record; returns the alerts it triggers (usually none).
    pub fn observe(&mut self, rec: &FlowRecord, now: SystemTime) -> Vec<Alert> {
        let t = match humantime::parse_rfc3339_weak(&rec.time) {
            Ok(t) => t,
            Err(_) => {
                self.bad_times += 1;
                now
            }
        };
        self.observe_at(rec, t)
    }

    /// [`Self::observe`] for a record whose time `t` the caller has at hand (the flow sink
    /// made `rec.time` from it): no parsing it back.
    pub fn observe_at(&mut self, rec: &FlowRecord, t: SystemTime) -> Vec<Alert> {
        self.records += 1;
        let t_ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        // Records of different CPUs arrive slightly out of order: time never goes back.
        self.clock_ms = self.clock_ms.max(t_ms);
        let t_ms = self.clock_ms;
        if t_ms >= self.last_sweep_ms.saturating_add(SWEEP_INTERVAL_MS) {
            self.sweep(t_ms);
            self.last_sweep_ms = t_ms;
        }

        let (init, resp) = if rec.reply {
            (&rec.dst, &rec.src)
        } else {
            (&rec.src, &rec.dst)
        };
        let mut out = Vec::new();
        if init.ip.is_unspecified() {
            // Dropped before the IP header was read: no source to speak of.
            return out;
        }
        let view = FlowView {
            rec,
            t_ms,
            initiator: self.workloads.of(init),
            responder: self.workloads.of(resp),
            responder_ip: resp.ip,
            port: resp.port,
            denied: rec.verdict == "dropped",
        };
        if self
            .exempt
            .iter()
            .any(|e| e.matches(init.ip, &view.initiator))
        {
            self.exempt_records += 1;
            return out;
        }
        if rec.end.is_some() {
            // Byte samples and connection ends are for the volume detector only: every
            // detector saw the connection when it opened.
            if let Some(d) = &mut self.volume {
                d.observe(&view, &mut out);
            }
            return out;
        }
        if let Some(d) = &mut self.port_scan {
            d.observe(&view, &mut out);
        }
        if let Some(d) = &mut self.deny_burst {
            d.observe(&view, &mut out);
        }
        if let Some(d) = &mut self.first_seen {
            d.observe(&view, &mut out);
        }
        if let Some(d) = &mut self.volume {
            d.observe(&view, &mut out);
        }
        out
    }

    fn sweep(&mut self, now: u64) {
        if let Some(d) = &mut self.port_scan {
            d.forget_idle(now);
        }
        if let Some(d) = &mut self.deny_burst {
            d.forget_idle(now);
        }
        if let Some(d) = &mut self.volume {
            d.forget_idle(now);
        }
    }

    pub fn stats(&self) -> Stats {
        let mut s = Stats {
            records: self.records,
            bad_times: self.bad_times,
            exempt_records: self.exempt_records,
            ..Stats::default()
        };
        if let Some(d) = &self.port_scan {
            s.port_scan_sources = d.sources();
            s.evicted += d.evicted();
        }
        if let Some(d) = &self.deny_burst {
            s.deny_burst_sources = d.sources();
            s.evicted += d.evicted();
        }
        if let Some(d) = &self.volume {
            s.volume_pairs = d.pairs();
            s.evicted += d.evicted();
        }
        if let Some(d) = &self.first_seen {
            s.first_seen_edges = d.edges();
            s.first_seen_overflow = d.overflow();
        }
        s
    }
}

/// The first [`MAX_EVIDENCE_ITEMS`] of `items`, sorted.
pub(crate) fn bounded<T: Ord + Clone>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut v: Vec<T> = items.into_iter().collect();
    v.sort();
    v.dedup();
    v.truncate(MAX_EVIDENCE_ITEMS);
    v
}

/// `counts` of an [`Evidence`] from literal pairs.
pub(crate) fn counts<const N: usize>(pairs: [(&str, u64); N]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Two decimals: a baseline of 3.3333333 says no more than 3.33.
pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
