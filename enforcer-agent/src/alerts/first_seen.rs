//! First-seen edges: a connection between a workload and a workload (or a non-pod network)
//! that never happened during the learning period.
//!
//! Edges are learned from allowed, non-reply records whose initiator is a pod, during
//! `learning_seconds` from the first record the detector sees. After that a new edge fires once
//! (`info`; `warning` when the destination is outside the pods and `internal_cidrs`) and is
//! learned. Non-pod destinations are aggregated to their /24 or /64, so a client of a CDN does
//! not fire once per address. Edges carry no port: a known pair on a new port stays quiet.
//!
//! Bounds: at most `max_edges` edges; when full, new edges are neither learned nor reported (a
//! report could not be remembered and would repeat on every connection) and are counted as
//! overflow.

use super::HashSet;

use super::config::FirstSeenConfig;
use super::window::ms;
use super::workload::network_of;
use super::{counts, Alert, AlertKind, Evidence, FlowView, Severity, Workload};

pub struct FirstSeen {
    cfg: FirstSeenConfig,
    /// End of learning, set by the first record.
    learning_until: Option<u64>,
    edges: HashSet<(Workload, Workload)>,
    overflow: u64,
}

impl FirstSeen {
    pub fn new(cfg: FirstSeenConfig) -> Self {
        FirstSeen {
            cfg,
            learning_until: None,
            edges: HashSet::default(),
            overflow: 0,
        }
    }

    pub(crate) fn observe(&mut self, f: &FlowView<'_>, out: &mut Vec<Alert>) {
        let learning_ms = ms(self.cfg.learning_seconds);
        let until = *self
            .learning_until
            .get_or_insert(f.t_ms.saturating_add(learning_ms));
        if f.denied || f.rec.reply || !f.initiator.is_pod() {
            return;
        }
        let (target, external) = if f.responder.is_pod() {
            (f.responder.clone(), false)
        } else {
            let internal = self
                .cfg
                .internal_cidrs
                .iter()
                .any(|n| n.contains(&f.responder_ip));
            (Workload::Cidr(network_of(f.responder_ip)), !internal)
        };
        let edge = (f.initiator.clone(), target);
        if self.edges.contains(&edge) {
            return;
        }
        if self.edges.len() >= self.cfg.max_edges {
            self.overflow += 1;
            return;
        }
        let (source, target) = edge.clone();
        self.edges.insert(edge);
        if f.t_ms < until {
            return;
        }
        let port = f.port.map(|p| format!(" port {p}")).unwrap_or_default();
        out.push(Alert {
            kind: AlertKind::FirstSeenEdge,
            severity: if external {
                Severity::Warning
            } else {
                Severity::Info
            },
            time: f.rec.time.to_string(),
            summary: format!(
                "first connection from {source} to {}{target} ({} {}{port}) since learning ended",
                if external { "external " } else { "" },
                f.rec.protocol,
                f.responder_ip,
            ),
            source,
            target: Some(target),
            evidence: Evidence {
                counts: counts([("known_edges", self.edges.len() as u64 - 1)]),
                window_seconds: self.cfg.learning_seconds,
                peers: vec![f.responder.to_string()],
                ports: f.port.into_iter().collect(),
                baseline: None,
                observed: None,
            },
        });
    }

    pub fn edges(&self) -> usize {
        self.edges.len()
    }

    pub fn overflow(&self) -> u64 {
        self.overflow
    }
}
