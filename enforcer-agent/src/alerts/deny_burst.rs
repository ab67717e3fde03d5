//! Deny bursts: a source's denied flows in the current bucket far above its own baseline.
//!
//! Each source (the initiator of denied flows) has an EWMA of its per-bucket deny counts. The
//! current bucket is checked as it fills, so an alert fires on the record that crosses
//! `max(min_count, factor × baseline)`, not when the bucket closes. Closed buckets (empty ones
//! included) feed the baseline; a new source only learns during its first `warmup_buckets`.
//! The kernel reports a denied flow at most once per interval, so counts are roughly denied
//! flows, not packets.
//!
//! Bounds: `max_sources` sources (least recently seen evicted), each holding at most
//! [`MAX_EVIDENCE_ITEMS`] + 1 peers and ports of its current bucket; sources idle for
//! `forget_after_seconds` are forgotten.

use std::collections::BTreeSet;

use super::config::DenyBurstConfig;
use super::window::{ms, spike_severity, BoundedMap, Cooldown, Ewma};
use super::{
    bounded, counts, round2, Alert, AlertKind, Evidence, FlowView, Workload, MAX_EVIDENCE_ITEMS,
};

struct Source {
    bucket: u64,
    count: u64,
    /// Buckets closed since the source was first seen.
    closed: u64,
    baseline: Ewma,
    peers: BTreeSet<Workload>,
    ports: BTreeSet<u16>,
    cooldown: Cooldown,
}

pub struct DenyBurst {
    cfg: DenyBurstConfig,
    bucket_ms: u64,
    sources: BoundedMap<Workload, Source>,
}

impl DenyBurst {
    pub fn new(cfg: DenyBurstConfig) -> Self {
        DenyBurst {
            bucket_ms: ms(cfg.bucket_seconds),
            sources: BoundedMap::new(cfg.max_sources),
            cfg,
        }
    }

    pub(crate) fn observe(&mut self, f: &FlowView<'_>, out: &mut Vec<Alert>) {
        if !f.denied {
            return;
        }
        let bucket = f.t_ms / self.bucket_ms;
        let alpha = self.cfg.ewma_alpha;
        let s = self.sources.touch(&f.initiator, f.t_ms, || Source {
            bucket,
            count: 0,
            closed: 0,
            baseline: Ewma::new(alpha),
            peers: BTreeSet::new(),
            ports: BTreeSet::new(),
            cooldown: Cooldown::default(),
        });
        if bucket > s.bucket {
            s.baseline.update(s.count as f64);
            s.baseline.update_zeros(bucket - s.bucket - 1);
            s.closed += bucket - s.bucket;
            s.bucket = bucket;
            s.count = 0;
            s.peers.clear();
            s.ports.clear();
        }
        s.count += 1;
        if s.peers.len() <= MAX_EVIDENCE_ITEMS {
            s.peers.insert(f.responder.clone());
        }
        if let Some(p) = f.port {
            if s.ports.len() <= MAX_EVIDENCE_ITEMS {
                s.ports.insert(p);
            }
        }

        if s.closed < u64::from(self.cfg.warmup_buckets) {
            return;
        }
        let base = s.baseline.value();
        let n = s.count as f64;
        let Some(sev) = spike_severity(
            n,
            base,
            self.cfg.min_count as f64,
            self.cfg.factor,
            self.cfg.critical_factor,
        ) else {
            return;
        };
        if !s
            .cooldown
            .permit(f.t_ms, ms(self.cfg.cooldown_seconds), sev)
        {
            return;
        }
        let target = (s.peers.len() == 1).then(|| f.responder.clone());
        let to = match &target {
            Some(t) => format!("to {t}"),
            None if s.peers.len() > MAX_EVIDENCE_ITEMS => {
                format!("to more than {MAX_EVIDENCE_ITEMS} peers")
            }
            None => format!("to {} peers", s.peers.len()),
        };
        let secs = self.cfg.bucket_seconds;
        out.push(Alert {
            kind: AlertKind::DenyBurst,
            severity: sev,
            time: f.rec.time.to_string(),
            source: f.initiator.clone(),
            target,
            summary: format!(
                "{} had {} denied flows {to} in {secs} s, against a baseline of {:.1} per {secs} s",
                f.initiator, s.count, base
            ),
            evidence: Evidence {
                counts: counts([("denied", s.count)]),
                window_seconds: secs,
                peers: bounded(s.peers.iter().map(|p| p.to_string())),
                ports: bounded(s.ports.iter().copied()),
                baseline: Some(round2(base)),
                observed: Some(n),
            },
        });
    }

    pub(crate) fn forget_idle(&mut self, now: u64) {
        self.sources
            .forget_idle(now, ms(self.cfg.forget_after_seconds));
    }

    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    pub fn evicted(&self) -> u64 {
        self.sources.evicted()
    }
}
