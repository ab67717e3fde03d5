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

use std::collections::VecDeque;

use super::HashMap;

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

/// What a source's window shows, the more severe finding first.
#[derive(Clone, Copy)]
enum Finding {
    /// `ports` distinct ports on the flow's responder.
    Vertical { ports: usize, severity: Severity },
    /// Many distinct peers.
    Horizontal { severity: Severity },
}

impl Finding {
    fn severity(self) -> Severity {
        match self {
            Finding::Vertical { severity, .. } | Finding::Horizontal { severity } => severity,
        }
    }
}

impl Source {
    /// Moves the window to `t_ms`: peers and pairs older than it are forgotten, and so are the
    /// ports they counted.
    fn slide(&mut self, t_ms: u64) {
        let mut left = Vec::new();
        self.peers.advance(t_ms, &mut Vec::new());
        self.pairs.advance(t_ms, &mut left);
        for (peer, _) in left {
            if let Some(n) = self.ports_per_peer.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    self.ports_per_peer.remove(&peer);
                }
            }
        }
    }

    /// Counts the flow as allowed or denied in its sub-window (for the alert's evidence),
    /// dropping sub-windows that left the window.
    fn tally_flow(&mut self, t_ms: u64, window_ms: u64, denied: bool) {
        let slot_ms = (window_ms / SLOTS as u64).max(1);
        let slot = t_ms / slot_ms;
        while self
            .tally
            .front()
            .is_some_and(|t| t.0 + SLOTS as u64 <= slot)
        {
            self.tally.pop_front();
        }
        if self.tally.back().is_none_or(|t| t.0 < slot) {
            self.tally.push_back((slot, 0, 0));
        }
        let t = self.tally.back_mut().expect("just ensured");
        if denied {
            t.2 += 1;
        } else {
            t.1 += 1;
        }
    }

    /// The flow's peer and (peer, port) pair.
    fn remember(&mut self, f: &FlowView<'_>) {
        self.peers.insert(f.t_ms, f.responder.clone());
        if let Some(port) = f.port {
            if self.pairs.insert(f.t_ms, (f.responder.clone(), port)) {
                *self.ports_per_peer.entry(f.responder.clone()).or_insert(0) += 1;
            }
        }
    }

    /// The more severe of a vertical scan of `responder` and a horizontal sweep; vertical on
    /// a tie (it names a target). `None` below both thresholds.
    fn finding(&self, cfg: &PortScanConfig, responder: &Workload) -> Option<Finding> {
        let severity = |n: usize, threshold: usize| match n {
            n if n < threshold => None,
            n if n >= cfg.critical_count => Some(Severity::Critical),
            _ => Some(Severity::Warning),
        };
        let ports = self.ports_per_peer.get(responder).copied().unwrap_or(0);
        let vertical = severity(ports, cfg.distinct_ports);
        let horizontal = severity(self.peers.len(), cfg.distinct_peers);
        match (vertical, horizontal) {
            (Some(v), Some(h)) if h > v => Some(Finding::Horizontal { severity: h }),
            (Some(v), _) => Some(Finding::Vertical { ports, severity: v }),
            (None, Some(h)) => Some(Finding::Horizontal { severity: h }),
            (None, None) => None,
        }
    }

    /// The alert of a finding, with the window's evidence.
    fn alert(&self, f: &FlowView<'_>, finding: Finding, window_s: u64) -> Alert {
        let (allowed, denied) = self
            .tally
            .iter()
            .fold((0, 0), |(a, d), t| (a + t.1, d + t.2));
        let mut all_ports: Vec<u16> = self.pairs.keys().map(|(_, p)| *p).collect();
        all_ports.sort_unstable();
        all_ports.dedup();
        let distinct_ports_total = all_ports.len() as u64;
        all_ports.truncate(MAX_EVIDENCE_ITEMS);
        let peers = self.peers.len();
        let (target, summary, distinct_ports, evidence_peers, ports) = match finding {
            Finding::Vertical { ports: n, .. } => (
                Some(f.responder.clone()),
                format!(
                    "{} reached {n} distinct ports on {} within {window_s} s \
                     (vertical scan; {denied} of {} flows denied)",
                    f.initiator,
                    f.responder,
                    allowed + denied
                ),
                n as u64,
                vec![f.responder.to_string()],
                bounded(
                    self.pairs
                        .keys()
                        .filter(|(peer, _)| *peer == f.responder)
                        .map(|(_, p)| *p),
                ),
            ),
            Finding::Horizontal { .. } => (
                None,
                format!(
                    "{} reached {peers} distinct peers within {window_s} s \
                     (horizontal sweep; {denied} of {} flows denied)",
                    f.initiator,
                    allowed + denied
                ),
                distinct_ports_total,
                bounded(self.peers.keys().map(|p| p.to_string())),
                all_ports,
            ),
        };
        Alert {
            kind: AlertKind::PortScan,
            severity: finding.severity(),
            time: f.rec.time.to_string(),
            source: f.initiator.clone(),
            target,
            summary,
            evidence: Evidence {
                counts: counts([
                    ("distinct_ports", distinct_ports),
                    ("distinct_peers", peers as u64),
                    ("allowed", allowed),
                    ("denied", denied),
                ]),
                window_seconds: window_s,
                peers: evidence_peers,
                ports,
                baseline: None,
                observed: None,
            },
        }
    }
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
            ports_per_peer: HashMap::default(),
            tally: VecDeque::new(),
            cooldown: Cooldown::default(),
        });
        s.slide(f.t_ms);
        s.tally_flow(f.t_ms, window_ms, f.denied);
        s.remember(f);
        let Some(finding) = s.finding(&self.cfg, &f.responder) else {
            return;
        };
        if !s
            .cooldown
            .permit(f.t_ms, ms(self.cfg.cooldown_seconds), finding.severity())
        {
            return;
        }
        out.push(s.alert(f, finding, self.cfg.window_seconds));
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
