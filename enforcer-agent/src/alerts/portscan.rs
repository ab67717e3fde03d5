//! Port scans and sweeps: one source reaching many distinct ports on one peer (vertical) or
//! many distinct peers (horizontal) within a sliding window, allowed and denied flows alike.
//!
//! Peers are workloads (all replicas of an app are one peer) or, for non-pods, addresses: a
//! client spreading connections over the 30 pods of a backend reaches one peer, while a sweep of
//! a subnet mostly hits addresses that are no pod. Ports are counted per peer, so a gateway
//! talking to 20 services on 20 different ports is no vertical scan.
//!
//! Bounds: `max_sources` sources (least recently seen evicted), each remembering at most
//! `max_keys_per_source` peers and (peer, port) pairs per window. Sources idle for longer than
//! window + cooldown are forgotten.

use std::collections::{HashMap, VecDeque};

use super::config::PortScanConfig;
use super::window::{ms, BoundedMap, Cooldown, DistinctWindow};
use super::{
    bounded, counts, Alert, AlertKind, Evidence, FlowView, Severity, Workload, MAX_EVIDENCE_ITEMS,
};

/// Sub-windows of the sliding window: it slides in steps of a tenth of its length.
const SLOTS: usize = 10;

struct Source {
    peers: DistinctWindow<Workload>,
    pairs: DistinctWindow<(Workload, u16)>,
    /// Distinct ports per peer within the window (derived from `pairs`).
    ports_per_peer: HashMap<Workload, usize>,
    /// (sub-window, allowed, denied) flows.
    tally: VecDeque<(u64, u64, u64)>,
    cooldown: Cooldown,
}

pub struct PortScan {
    cfg: PortScanConfig,
    window_ms: u64,
    sources: BoundedMap<Workload, Source>,
}

impl PortScan {
    pub fn new(cfg: PortScanConfig) -> Self {
        PortScan {
            window_ms: ms(cfg.window_seconds),
            sources: BoundedMap::new(cfg.max_sources),
            cfg,
        }
    }

    pub(crate) fn observe(&mut self, f: &FlowView<'_>, out: &mut Vec<Alert>) {
        let (window_ms, cap) = (self.window_ms, self.cfg.max_keys_per_source);
        let s = self.sources.touch(&f.initiator, f.t_ms, || Source {
            peers: DistinctWindow::new(window_ms, SLOTS, cap),
            pairs: DistinctWindow::new(window_ms, SLOTS, cap),
            ports_per_peer: HashMap::new(),
            tally: VecDeque::new(),
            cooldown: Cooldown::default(),
        });
        let mut left = Vec::new();
        s.peers.advance(f.t_ms, &mut Vec::new());
        s.pairs.advance(f.t_ms, &mut left);
        for (peer, _) in left {
            if let Some(n) = s.ports_per_peer.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    s.ports_per_peer.remove(&peer);
                }
            }
        }
        let slot_ms = (window_ms / SLOTS as u64).max(1);
        let slot = f.t_ms / slot_ms;
        while s.tally.front().is_some_and(|t| t.0 + SLOTS as u64 <= slot) {
            s.tally.pop_front();
        }
        if s.tally.back().is_none_or(|t| t.0 < slot) {
            s.tally.push_back((slot, 0, 0));
        }
        let t = s.tally.back_mut().expect("just ensured");
        if f.denied {
            t.2 += 1;
        } else {
            t.1 += 1;
        }

        s.peers.insert(f.t_ms, f.responder.clone());
        if let Some(port) = f.port {
            if s.pairs.insert(f.t_ms, (f.responder.clone(), port)) {
                *s.ports_per_peer.entry(f.responder.clone()).or_insert(0) += 1;
            }
        }

        let critical = self.cfg.critical_count;
        let severity = |n: usize, threshold: usize| match n {
            n if n < threshold => None,
            n if n >= critical => Some(Severity::Critical),
            _ => Some(Severity::Warning),
        };
        let vertical_n = s.ports_per_peer.get(&f.responder).copied().unwrap_or(0);
        let vertical = severity(vertical_n, self.cfg.distinct_ports);
        let horizontal = severity(s.peers.len(), self.cfg.distinct_peers);
        // The more severe finding; vertical on a tie (it names a target).
        let (is_vertical, sev) = match (vertical, horizontal) {
            (Some(v), Some(h)) if h > v => (false, h),
            (Some(v), _) => (true, v),
            (None, Some(h)) => (false, h),
            (None, None) => return,
        };
        if !s
            .cooldown
            .permit(f.t_ms, ms(self.cfg.cooldown_seconds), sev)
        {
            return;
        }

        let (allowed, denied) = s.tally.iter().fold((0, 0), |(a, d), t| (a + t.1, d + t.2));
        let mut all_ports: Vec<u16> = s.pairs.keys().map(|(_, p)| *p).collect();
        all_ports.sort_unstable();
        all_ports.dedup();
        let distinct_ports_total = all_ports.len() as u64;
        all_ports.truncate(MAX_EVIDENCE_ITEMS);
        let window_s = self.cfg.window_seconds;
        let alert = if is_vertical {
            let ports = bounded(
                s.pairs
                    .keys()
                    .filter(|(peer, _)| *peer == f.responder)
                    .map(|(_, p)| *p),
            );
            Alert {
                kind: AlertKind::PortScan,
                severity: sev,
                time: f.rec.time.clone(),
                source: f.initiator.clone(),
                target: Some(f.responder.clone()),
                summary: format!(
                    "{} reached {vertical_n} distinct ports on {} within {window_s} s \
                     (vertical scan; {denied} of {} flows denied)",
                    f.initiator,
                    f.responder,
                    allowed + denied
                ),
                evidence: Evidence {
                    counts: counts([
                        ("distinct_ports", vertical_n as u64),
                        ("distinct_peers", s.peers.len() as u64),
                        ("allowed", allowed),
                        ("denied", denied),
                    ]),
                    window_seconds: window_s,
                    peers: vec![f.responder.to_string()],
                    ports,
                    baseline: None,
                    observed: None,
                },
            }
        } else {
            Alert {
                kind: AlertKind::PortScan,
                severity: sev,
                time: f.rec.time.clone(),
                source: f.initiator.clone(),
                target: None,
                summary: format!(
                    "{} reached {} distinct peers within {window_s} s \
                     (horizontal sweep; {denied} of {} flows denied)",
                    f.initiator,
                    s.peers.len(),
                    allowed + denied
                ),
                evidence: Evidence {
                    counts: counts([
                        ("distinct_ports", distinct_ports_total),
                        ("distinct_peers", s.peers.len() as u64),
                        ("allowed", allowed),
                        ("denied", denied),
                    ]),
                    window_seconds: window_s,
                    peers: bounded(s.peers.keys().map(|p| p.to_string())),
                    ports: all_ports,
                    baseline: None,
                    observed: None,
                },
            }
        };
        out.push(alert);
    }

    pub(crate) fn forget_idle(&mut self, now: u64) {
        let ttl = self.window_ms + ms(self.cfg.cooldown_seconds);
        self.sources.forget_idle(now, ttl);
    }

    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    pub fn evicted(&self) -> u64 {
        self.sources.evicted()
    }
}
