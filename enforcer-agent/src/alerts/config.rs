//! Configuration of the detectors: one [`AlertsConfig`] with a section per detector.
//!
//! Every field has a default, so `{}` (or a partial section) deserializes; unknown fields are
//! rejected so that a misspelt threshold is an error rather than a silently ignored line.
//! Durations are whole seconds.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::workload::Workload;

/// All detectors. `alerts: {}` in the agent's configuration enables all of them with defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Sources no detector looks at: networks (`10.0.0.0/16`), addresses, or workloads
    /// (`monitoring/prometheus`). Typically the node addresses (kubelet probes reach every pod
    /// of the node, which looks like a sweep) and scrapers.
    pub exempt_sources: Vec<String>,
    pub port_scan: PortScanConfig,
    pub deny_burst: DenyBurstConfig,
    pub first_seen: FirstSeenConfig,
    pub volume: VolumeConfig,
}

/// One source reaching many ports on one peer (vertical) or many peers (horizontal).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PortScanConfig {
    pub enabled: bool,
    /// Length of the sliding window.
    pub window_seconds: u64,
    /// Distinct destination ports on a single peer within the window (vertical scan).
    pub distinct_ports: usize,
    /// Distinct peers within the window (horizontal sweep).
    pub distinct_peers: usize,
    /// A count at or above this makes the alert critical (and escalates one already sent).
    pub critical_count: usize,
    pub cooldown_seconds: u64,
    /// Sources tracked at once; the least recently seen are evicted beyond this.
    pub max_sources: usize,
    /// Distinct (peer, port) keys remembered per source and window; later keys are not counted
    /// (raised to `critical_count` if lower, so the thresholds stay reachable).
    pub max_keys_per_source: usize,
}

impl Default for PortScanConfig {
    fn default() -> Self {
        PortScanConfig {
            enabled: true,
            window_seconds: 10,
            distinct_ports: 20,
            distinct_peers: 20,
            critical_count: 100,
            cooldown_seconds: 60,
            max_sources: 4096,
            max_keys_per_source: 256,
        }
    }
}

/// A source's denied flows per bucket far above its own EWMA baseline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DenyBurstConfig {
    pub enabled: bool,
    pub bucket_seconds: u64,
    /// Never fire below this many denied flows in a bucket.
    pub min_count: u64,
    /// Fire when the bucket reaches `factor` × baseline (and `min_count`).
    pub factor: f64,
    /// Critical at `critical_factor` × baseline (and at least `critical_factor / factor` ×
    /// `min_count`).
    pub critical_factor: f64,
    /// Weight of the newest bucket in the baseline (0 < alpha <= 1).
    pub ewma_alpha: f64,
    /// Closed buckets a new source must have before it can fire (so that an agent restart does
    /// not alert on every source with a steady deny rate).
    pub warmup_buckets: u32,
    pub cooldown_seconds: u64,
    pub max_sources: usize,
    /// A source idle this long is forgotten (baseline included).
    pub forget_after_seconds: u64,
}

impl Default for DenyBurstConfig {
    fn default() -> Self {
        DenyBurstConfig {
            enabled: true,
            bucket_seconds: 5,
            min_count: 20,
            factor: 5.0,
            critical_factor: 20.0,
            ewma_alpha: 0.1,
            warmup_buckets: 3,
            cooldown_seconds: 60,
            max_sources: 4096,
            forget_after_seconds: 3600,
        }
    }
}

/// A workload → workload (or workload → external network) edge not seen while learning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FirstSeenConfig {
    pub enabled: bool,
    /// Learning period, from the first record the detectors see.
    pub learning_seconds: u64,
    /// Edges remembered; beyond this new edges are neither learned nor reported (counted in
    /// [`super::Stats::first_seen_overflow`]).
    pub max_edges: usize,
    /// Non-pod destinations inside these networks are internal (an `info` alert); any other
    /// non-pod destination is external (`warning`). Defaults to the private ranges.
    pub internal_cidrs: Vec<IpNet>,
}

impl Default for FirstSeenConfig {
    fn default() -> Self {
        let internal = [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "fc00::/7",
        ];
        FirstSeenConfig {
            enabled: true,
            learning_seconds: 300,
            max_edges: 100_000,
            internal_cidrs: internal
                .iter()
                .map(|c| c.parse().expect("a literal network"))
                .collect(),
        }
    }
}

/// Per workload pair: connections and bytes per bucket against an EWMA baseline.
///
/// Connections are counted when they open; bytes (both directions) from the agent's byte
/// samples of each connection (every conntrack sweep), so a long transfer weighs while it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VolumeConfig {
    pub enabled: bool,
    pub bucket_seconds: u64,
    pub factor: f64,
    pub critical_factor: f64,
    /// Minimum connections in a bucket for a connection spike.
    pub min_connections: u64,
    /// Minimum bytes in a bucket for a byte spike.
    pub min_bytes: u64,
    pub ewma_alpha: f64,
    /// Buckets (since the pair was first seen) before the pair can fire.
    pub warmup_buckets: u32,
    pub cooldown_seconds: u64,
    pub max_pairs: usize,
    pub forget_after_seconds: u64,
}

impl Default for VolumeConfig {
    fn default() -> Self {
        VolumeConfig {
            enabled: true,
            bucket_seconds: 10,
            factor: 5.0,
            critical_factor: 20.0,
            min_connections: 50,
            min_bytes: 1 << 20,
            ewma_alpha: 0.1,
            warmup_buckets: 6,
            cooldown_seconds: 60,
            max_pairs: 10_000,
            forget_after_seconds: 3600,
        }
    }
}

/// An entry of [`AlertsConfig::exempt_sources`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exempt {
    Network(IpNet),
    Workload(Workload),
}

impl Exempt {
    pub fn parse(s: &str) -> Option<Exempt> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            return Some(Exempt::Network(net));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Some(Exempt::Network(IpNet::from(ip)));
        }
        match s.parse::<Workload>() {
            Ok(w @ Workload::Pod { .. }) => Some(Exempt::Workload(w)),
            _ => None,
        }
    }

    pub fn matches(&self, ip: IpAddr, workload: &Workload) -> bool {
        match self {
            Exempt::Network(net) => net.contains(&ip),
            Exempt::Workload(w) => w == workload,
        }
    }
}

/// A configuration value the detectors cannot work with.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("alerts.exempt_sources: {entry:?} is no network, address or namespace/workload")]
    BadExempt { entry: String },
    #[error("alerts.{field} must be at least 1 second")]
    ZeroDuration { field: &'static str },
    #[error("alerts.{field} must be at least 1")]
    ZeroCount { field: &'static str },
    #[error("alerts.{field} must be at least 1.0, got {value}")]
    FactorBelowOne { field: &'static str, value: f64 },
    #[error("alerts.{field} must be in (0, 1], got {value}")]
    AlphaOutOfRange { field: &'static str, value: f64 },
}

impl AlertsConfig {
    /// Checks the values; [`super::Alerts::new`] clamps instead, so the agent can report the
    /// error and still run with the nearest valid configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.port_scan;
        let d = &self.deny_burst;
        let f = &self.first_seen;
        let v = &self.volume;
        if let Some(entry) = self
            .exempt_sources
            .iter()
            .find(|e| Exempt::parse(e).is_none())
        {
            return Err(ConfigError::BadExempt {
                entry: entry.clone(),
            });
        }
        let durations = [
            ("port_scan.window_seconds", p.window_seconds),
            ("deny_burst.bucket_seconds", d.bucket_seconds),
            ("deny_burst.forget_after_seconds", d.forget_after_seconds),
            ("volume.bucket_seconds", v.bucket_seconds),
            ("volume.forget_after_seconds", v.forget_after_seconds),
        ];
        for (field, value) in durations {
            if value == 0 {
                return Err(ConfigError::ZeroDuration { field });
            }
        }
        let counts = [
            ("port_scan.distinct_ports", p.distinct_ports),
            ("port_scan.distinct_peers", p.distinct_peers),
            ("port_scan.critical_count", p.critical_count),
            ("port_scan.max_sources", p.max_sources),
            ("port_scan.max_keys_per_source", p.max_keys_per_source),
            ("deny_burst.max_sources", d.max_sources),
            ("first_seen.max_edges", f.max_edges),
            ("volume.max_pairs", v.max_pairs),
        ];
        for (field, value) in counts {
            if value == 0 {
                return Err(ConfigError::ZeroCount { field });
            }
        }
        let factors = [
            ("deny_burst.factor", d.factor),
            ("deny_burst.critical_factor", d.critical_factor),
            ("volume.factor", v.factor),
            ("volume.critical_factor", v.critical_factor),
        ];
        for (field, value) in factors {
            if value.is_nan() || value < 1.0 {
                return Err(ConfigError::FactorBelowOne { field, value });
            }
        }
        for (field, value) in [
            ("deny_burst.ewma_alpha", d.ewma_alpha),
            ("volume.ewma_alpha", v.ewma_alpha),
        ] {
            if value.is_nan() || value <= 0.0 || value > 1.0 {
                return Err(ConfigError::AlphaOutOfRange { field, value });
            }
        }
        Ok(())
    }

    /// The nearest valid configuration: every value [`Self::validate`] rejects is raised or
    /// lowered to its bound (a NaN factor or alpha becomes the default); unparsable exempt
    /// entries are dropped.
    pub fn clamped(mut self) -> Self {
        fn secs(v: &mut u64) {
            *v = (*v).max(1);
        }
        fn count(v: &mut usize) {
            *v = (*v).max(1);
        }
        fn factor(v: &mut f64, default: f64) {
            *v = if v.is_nan() { default } else { v.max(1.0) };
        }
        fn alpha(v: &mut f64, default: f64) {
            *v = if v.is_nan() || *v <= 0.0 {
                default
            } else {
                v.min(1.0)
            };
        }
        let (dd, dv) = (DenyBurstConfig::default(), VolumeConfig::default());
        self.exempt_sources.retain(|e| Exempt::parse(e).is_some());
        let p = &mut self.port_scan;
        secs(&mut p.window_seconds);
        count(&mut p.distinct_ports);
        count(&mut p.distinct_peers);
        count(&mut p.critical_count);
        count(&mut p.max_sources);
        p.max_keys_per_source = p
            .max_keys_per_source
            .max(p.critical_count)
            .max(p.distinct_ports)
            .max(p.distinct_peers);
        let d = &mut self.deny_burst;
        secs(&mut d.bucket_seconds);
        secs(&mut d.forget_after_seconds);
        count(&mut d.max_sources);
        factor(&mut d.factor, dd.factor);
        factor(&mut d.critical_factor, dd.critical_factor);
        alpha(&mut d.ewma_alpha, dd.ewma_alpha);
        count(&mut self.first_seen.max_edges);
        let v = &mut self.volume;
        secs(&mut v.bucket_seconds);
        secs(&mut v.forget_after_seconds);
        count(&mut v.max_pairs);
        factor(&mut v.factor, dv.factor);
        factor(&mut v.critical_factor, dv.critical_factor);
        alpha(&mut v.ewma_alpha, dv.ewma_alpha);
        self
    }
}
