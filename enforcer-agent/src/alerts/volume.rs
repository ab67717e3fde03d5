//! Volume spikes: a workload pair's connections or bytes in the current bucket far above the
//! pair's EWMA baseline.
//!
//! `connections` counts allowed, non-reply records (the datapath reports each new connection
//! once); `bytes` adds both directions of the agent's byte samples (records whose `end.reason`
//! is `active`: what the connections from one address to one address and port carried since
//! the sweeper's previous pass, every few seconds), so a long transfer counts while it runs. Connection-end records add nothing: their
//! bytes were sampled.
//! The current bucket is checked as it fills; closed buckets (empty ones included) feed the
//! baselines; a pair fires only after `warmup_buckets` buckets since it was first seen, and
//! needs `min_connections` or `min_bytes` in the bucket.
//!
//! Bounds: `max_pairs` pairs (least recently seen evicted), each holding at most
//! [`MAX_EVIDENCE_ITEMS`] + 1 ports of its current bucket; pairs idle for
//! `forget_after_seconds` are forgotten.

use std::collections::BTreeSet;

use super::config::VolumeConfig;
use super::window::{ms, spike_severity, BoundedMap, Cooldown, Ewma};
use super::{
    bounded, counts, round2, Alert, AlertKind, Evidence, FlowView, Severity, Workload,
    MAX_EVIDENCE_ITEMS,
};

struct Pair {
    bucket: u64,
    connections: u64,
    bytes: u64,
    closed: u64,
    connections_base: Ewma,
    bytes_base: Ewma,
    ports: BTreeSet<u16>,
    cooldown: Cooldown,
}

pub struct Volume {
    cfg: VolumeConfig,
    bucket_ms: u64,
    pairs: BoundedMap<(Workload, Workload), Pair>,
}

/// What crossed its threshold.
struct Finding {
    severity: Severity,
    metric: &'static str,
    observed: u64,
    baseline: f64,
}

impl Volume {
    pub fn new(cfg: VolumeConfig) -> Self {
        Volume {
            bucket_ms: ms(cfg.bucket_seconds),
            pairs: BoundedMap::new(cfg.max_pairs),
            cfg,
        }
    }

    pub(crate) fn observe(&mut self, f: &FlowView<'_>, out: &mut Vec<Alert>) {
        if f.denied || f.rec.reply {
            return;
        }
        let sample = match &f.rec.end {
            Some(e) if e.reason == "active" => Some(e.bytes_sent.saturating_add(e.bytes_received)),
            Some(_) => return,
            None => None,
        };
        let bucket = f.t_ms / self.bucket_ms;
        let alpha = self.cfg.ewma_alpha;
        let key = (f.initiator.clone(), f.responder.clone());
        let p = self.pairs.touch(&key, f.t_ms, || Pair {
            bucket,
            connections: 0,
            bytes: 0,
            closed: 0,
            connections_base: Ewma::new(alpha),
            bytes_base: Ewma::new(alpha),
            ports: BTreeSet::new(),
            cooldown: Cooldown::default(),
        });
        if bucket > p.bucket {
            let empty = bucket - p.bucket - 1;
            p.connections_base.update(p.connections as f64);
            p.connections_base.update_zeros(empty);
            p.bytes_base.update(p.bytes as f64);
            p.bytes_base.update_zeros(empty);
            p.closed += bucket - p.bucket;
            p.bucket = bucket;
            p.connections = 0;
            p.bytes = 0;
            p.ports.clear();
        }
        match sample {
            Some(bytes) => p.bytes = p.bytes.saturating_add(bytes),
            None => p.connections += 1,
        }
        if let Some(port) = f.port {
            if p.ports.len() <= MAX_EVIDENCE_ITEMS {
                p.ports.insert(port);
            }
        }
        if p.closed < u64::from(self.cfg.warmup_buckets) {
            return;
        }
        let (conns, bytes) = (p.connections, p.bytes);
        let (conns_base, bytes_base) = (p.connections_base.value(), p.bytes_base.value());
        let by_conns = judge(
            &self.cfg,
            "connections",
            conns,
            conns_base,
            self.cfg.min_connections,
        );
        let by_bytes = judge(&self.cfg, "bytes", bytes, bytes_base, self.cfg.min_bytes);
        // The more severe finding; connections on a tie.
        let finding = match (by_conns, by_bytes) {
            (Some(c), Some(b)) if b.severity > c.severity => b,
            (Some(c), _) => c,
            (None, Some(b)) => b,
            (None, None) => return,
        };
        if !p
            .cooldown
            .permit(f.t_ms, ms(self.cfg.cooldown_seconds), finding.severity)
        {
            return;
        }
        let secs = self.cfg.bucket_seconds;
        out.push(Alert {
            kind: AlertKind::VolumeSpike,
            severity: finding.severity,
            time: f.rec.time.to_string(),
            source: f.initiator.clone(),
            target: Some(f.responder.clone()),
            summary: format!(
                "{} → {}: {} {} in {secs} s, against a baseline of {:.1} per {secs} s",
                f.initiator, f.responder, finding.observed, finding.metric, finding.baseline
            ),
            evidence: Evidence {
                counts: counts([("connections", conns), ("bytes", bytes)]),
                window_seconds: secs,
                peers: vec![f.responder.to_string()],
                ports: bounded(p.ports.iter().copied()),
                baseline: Some(round2(finding.baseline)),
                observed: Some(finding.observed as f64),
            },
        });
    }

    pub(crate) fn forget_idle(&mut self, now: u64) {
        self.pairs
            .forget_idle(now, ms(self.cfg.forget_after_seconds));
    }

    pub fn pairs(&self) -> usize {
        self.pairs.len()
    }

    pub fn evicted(&self) -> u64 {
        self.pairs.evicted()
    }
}

/// The finding of `metric`, if it crossed its threshold.
fn judge(
    cfg: &VolumeConfig,
    metric: &'static str,
    observed: u64,
    baseline: f64,
    min: u64,
) -> Option<Finding> {
    let severity = spike_severity(
        observed as f64,
        baseline,
        min as f64,
        cfg.factor,
        cfg.critical_factor,
    )?;
    Some(Finding {
        severity,
        metric,
        observed,
        baseline,
    })
}
