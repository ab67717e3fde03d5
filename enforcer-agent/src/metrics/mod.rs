//! Prometheus metrics (`/metrics`) and health endpoints (`/healthz`, `/readyz`).
//!
//! Names start with `enforcer_`, use base units and carry only labels from small fixed sets
//! (direction, verdict, reason, match, map, kind): never pod IPs or ports. Where Hubble/Cilium
//! users have dashboards, the families mirror theirs: `enforcer_flows_processed_total` ~
//! `hubble_flows_processed_total`, `enforcer_drop_total` ~ `hubble_drop_total`,
//! `enforcer_policy_verdicts_total{direction,match,action}` ~ `hubble_policy_verdicts_total`.

pub mod http;

use enforcer_common::reason::{counter, DropReason};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use std::sync::{Arc, OnceLock};

use crate::flows::enrich::FlowRecord;

/// The agent's metrics.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Flow records processed by the agent, by direction and verdict.
    pub flows_processed: IntCounterVec,
    /// Packets dropped by the datapath, by reason (kernel counters, every drop).
    pub drops: IntCounterVec,
    /// Packets allowed by the datapath (kernel counter).
    pub packets_allowed: IntGauge,
    /// Policy verdicts of new flows, by direction, match kind and action.
    pub policy_verdicts: IntCounterVec,
    /// New flows decided by a cluster policy's rule, by tier, policy (`Kind/name`), rule index,
    /// direction and action (forwarded, dropped, audit).
    pub cluster_policy_verdicts: IntCounterVec,
    /// New flows whose verdict a staged policy would change, by policy, direction and what it
    /// would be (allowed, denied).
    pub staged_policy_changes: IntCounterVec,
    /// Flow events lost, by source: `ringbuf` (the kernel could not reserve space), `decode`
    /// (a record this agent cannot read), `webhook` (alerts not POSTed: the webhook is behind).
    pub lost_events: IntGaugeVec,
    /// Drop reports suppressed by the per-flow rate limit (the drops are still counted).
    pub rate_limited_reports: IntGauge,
    /// New connections to a Service translated to a backend by the datapath (kernel counter).
    pub service_translations: IntGauge,
    /// NAT/affinity map insert failures (kernel counter).
    pub nat_insert_failures: IntGauge,
    /// Later fragments passed before (or without) their first fragment (kernel counter).
    pub fragments_without_head_passed: IntGauge,
    /// Service ports (frontends) in the datapath.
    pub service_frontends: IntGauge,
    /// How long the oldest failing API watch has been failing (0: all healthy).
    pub source_stale: prometheus::Gauge,
    pub policies: IntGauge,
    pub endpoints: IntGauge,
    pub pending_endpoints: IntGauge,
    pub invalid_objects: IntGauge,
    /// Entries the agent keeps in each map it writes.
    pub map_entries: IntGaugeVec,
    /// `map_entries / max_entries`.
    pub map_pressure: prometheus::GaugeVec,
    /// Duration of compile + apply.
    pub sync_duration: HistogramVec,
    /// Parts of syncs that could not be programmed, by class.
    pub sync_errors: IntCounterVec,
    /// From noticing a change of the desired state to the datapath enforcing it.
    pub propagation_delay: Histogram,
    pub alerts: IntCounterVec,
    /// Connections ended, by how (`closed`, `reset`, `timeout`).
    pub connections_ended: IntCounterVec,
    /// Bytes and packets of ended connections, by sender (`originator`, `responder`).
    pub connection_bytes: IntCounterVec,
    pub connection_packets: IntCounterVec,
    /// Handles of the counters every record adds to, made on first use: `with_label_values`
    /// hashes the values under the family's lock at each call, a sizeable part of a record's
    /// cost at a million records a second.
    handles: Arc<Handles>,
}

/// The label values of the per-record counters the agent writes, in index order.
const DIRECTIONS: [&str; 2] = ["ingress", "egress"];
const VERDICTS: [&str; 3] = ["allowed", "dropped", "audit"];
const MATCHES: [&str; 5] = ["l3-l4", "l3-only", "l4-only", "all", "none"];
const ACTIONS: [&str; 3] = ["forwarded", "dropped", "audit"];
const SENDERS: [&str; 2] = ["originator", "responder"];

/// Per-record counters by label index (see the label lists above).
#[derive(Default)]
struct Handles {
    flows: [[OnceLock<IntCounter>; 3]; 2],
    verdicts: [[[OnceLock<IntCounter>; 3]; 5]; 2],
    ended: [OnceLock<IntCounter>; crate::flows::decode::END_REASONS.len()],
    packets: [OnceLock<IntCounter>; 2],
    bytes: [OnceLock<IntCounter>; 2],
}

/// The counter of `vec` with `labels`, made once in `slot`.
fn handle<'a>(
    slot: &'a OnceLock<IntCounter>,
    vec: &IntCounterVec,
    labels: &[&str],
) -> &'a IntCounter {
    slot.get_or_init(|| vec.with_label_values(labels))
}

/// The index of `word` in `words`.
fn index(word: &str, words: &[&str]) -> Option<usize> {
    words.iter().position(|w| *w == word)
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique and valid");
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let buckets = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        Metrics {
            flows_processed: reg(&r, IntCounterVec::new(
                Opts::new("enforcer_flows_processed_total", "Flow records processed, by direction and verdict"),
                &["direction", "verdict"],
            ).expect("valid")),
            drops: reg(&r, IntCounterVec::new(
                Opts::new("enforcer_drop_total", "Packets dropped by the datapath, by reason"),
                &["reason"],
            ).expect("valid")),
            packets_allowed: reg(&r, IntGauge::new("enforcer_packets_allowed_total", "Packets allowed by the datapath").expect("valid")),
            policy_verdicts: reg(&r, IntCounterVec::new(
                Opts::new("enforcer_policy_verdicts_total", "Policy verdicts of new flows, by direction, match (l3-l4, l3-only, l4-only, all, none) and action (forwarded, dropped)"),
                &["direction", "match", "action"],
            ).expect("valid")),
            cluster_policy_verdicts: reg(&r, IntCounterVec::new(
                Opts::new("enforcer_cluster_policy_verdicts_total", "New flows decided by a cluster policy rule, by tier, policy, rule index, direction and action (forwarded, dropped, audit)"),
                &["tier", "policy", "rule", "direction", "action"],
            ).expect("valid")),
            staged_policy_changes: reg(&r, IntCounterVec::new(
                Opts::new("enforcer_staged_policy_changes_total", "New flows whose verdict a staged policy (policy.enforcer.dev/mode: audit) would change, by policy, direction and the verdict it would give (allowed, denied)"),
                &["policy", "direction", "would_be"],
            ).expect("valid")),
            lost_events: reg(&r, IntGaugeVec::new(
                Opts::new("enforcer_lost_events_total", "Flow events lost, by source"),
                &["source"],
            ).expect("valid")),
            rate_limited_reports: reg(&r, IntGauge::new("enforcer_drop_reports_rate_limited_total", "Drop reports suppressed by the per-flow rate limit").expect("valid")),
            service_translations: reg(&r, IntGauge::new("enforcer_service_translations_total", "New connections to a Service translated to a backend by the datapath").expect("valid")),
            nat_insert_failures: reg(&r, IntGauge::new("enforcer_nat_insert_failures_total", "Service NAT or affinity entries the datapath could not insert").expect("valid")),
            fragments_without_head_passed: reg(&r, IntGauge::new("enforcer_fragments_without_head_passed_total", "Later fragments the datapath passed with no recorded first fragment (reordered into a pod, or in a direction that is not isolated): the receiving kernel delivers their datagram only if its first fragment, judged on arrival, passes").expect("valid")),
            source_stale: reg(&r, prometheus::Gauge::new("enforcer_source_stale_seconds", "How long the oldest failing Kubernetes API watch has been failing (0: every watch is healthy); its last state stays enforced").expect("valid")),
            service_frontends: reg(&r, IntGauge::new("enforcer_service_frontends", "Service ports (ClusterIP, port, protocol) the datapath translates").expect("valid")),
            policies: reg(&r, IntGauge::new("enforcer_policies", "NetworkPolicies in force").expect("valid")),
            endpoints: reg(&r, IntGauge::new("enforcer_endpoints", "Local pods enforced on this node").expect("valid")),
            pending_endpoints: reg(&r, IntGauge::new("enforcer_endpoints_pending", "Local pods whose interface was not found yet").expect("valid")),
            invalid_objects: reg(&r, IntGauge::new("enforcer_invalid_objects", "Objects rejected as invalid (their last good version, if any, stays in force)").expect("valid")),
            map_entries: reg(&r, IntGaugeVec::new(Opts::new("enforcer_map_entries", "Entries the agent keeps in a map"), &["map"]).expect("valid")),
            map_pressure: reg(&r, prometheus::GaugeVec::new(Opts::new("enforcer_map_pressure", "Fill ratio of a map (entries / max entries)"), &["map"]).expect("valid")),
            sync_duration: reg(&r, HistogramVec::new(
                HistogramOpts::new("enforcer_sync_duration_seconds", "Duration of a sync, by phase (compile, apply)").buckets(buckets.clone()),
                &["phase"],
            ).expect("valid")),
            sync_errors: reg(&r, IntCounterVec::new(Opts::new("enforcer_sync_errors_total", "Parts of a sync that could not be programmed (each kept its previous state), by class"), &["class"]).expect("valid")),
            propagation_delay: reg(&r, Histogram::with_opts(
                HistogramOpts::new("enforcer_policy_propagation_delay_seconds", "From noticing a change to enforcing it").buckets(buckets),
            ).expect("valid")),
            alerts: reg(&r, IntCounterVec::new(Opts::new("enforcer_alerts_total", "Anomaly alerts, by kind"), &["kind"]).expect("valid")),
            connections_ended: reg(&r, IntCounterVec::new(Opts::new("enforcer_connections_ended_total", "Tracked connections ended, by reason (closed, reset, timeout)"), &["reason"]).expect("valid")),
            connection_bytes: reg(&r, IntCounterVec::new(Opts::new("enforcer_connection_bytes_total", "Bytes carried by ended connections, by sender (originator, responder)"), &["sender"]).expect("valid")),
            connection_packets: reg(&r, IntCounterVec::new(Opts::new("enforcer_connection_packets_total", "Packets carried by ended connections, by sender (originator, responder)"), &["sender"]).expect("valid")),
            registry: r,
            handles: Arc::default(),
        }
    }

    /// Accounts a flow record.
    pub fn observe_flow(&self, rec: &FlowRecord) {
        if let Some(end) = &rec.end {
            // An end is not a new flow: it adds what the connection carried.
            let h = &self.handles;
            match index(&end.reason, crate::flows::decode::END_REASONS) {
                Some(i) => handle(&h.ended[i], &self.connections_ended, &[&end.reason]).inc(),
                None => self
                    .connections_ended
                    .with_label_values(&[&*end.reason])
                    .inc(),
            }
            for (i, packets, bytes) in [
                (0, end.packets_sent, end.bytes_sent),
                (1, end.packets_received, end.bytes_received),
            ] {
                handle(&h.packets[i], &self.connection_packets, &[SENDERS[i]]).inc_by(packets);
                handle(&h.bytes[i], &self.connection_bytes, &[SENDERS[i]]).inc_by(bytes);
            }
            return;
        }
        let d = match rec.direction {
            crate::compile::Direction::Ingress => 0,
            crate::compile::Direction::Egress => 1,
        };
        let dir = DIRECTIONS[d];
        match index(&rec.verdict, &VERDICTS) {
            Some(v) => handle(
                &self.handles.flows[d][v],
                &self.flows_processed,
                &[dir, VERDICTS[v]],
            )
            .inc(),
            None => self
                .flows_processed
                .with_label_values(&[dir, &*rec.verdict])
                .inc(),
        }
        if rec.reply || rec.fragment {
            return;
        }
        if let Some(s) = &rec.staged {
            self.staged_policy_changes
                .with_label_values(&[&s.policy, dir, &s.would_be])
                .inc();
        }
        let (mtch, action) = match (&rec.rule, &*rec.verdict, rec.reason.as_deref()) {
            (Some(_), "allowed", _) => (policy_match(rec), "forwarded"),
            (None, "allowed", _) => ("all", "forwarded"),
            (_, "audit", _) => ("none", "audit"),
            (_, _, Some("policy_denied")) => ("none", "dropped"),
            _ => return,
        };
        if let Some(rule) = &rec.rule {
            if let Some(tier) = &rule.tier {
                self.cluster_policy_verdicts
                    .with_label_values(&[tier, &rule.policy, &rule.index.to_string(), dir, action])
                    .inc();
            }
        }
        match (index(mtch, &MATCHES), index(action, &ACTIONS)) {
            (Some(m), Some(a)) => handle(
                &self.handles.verdicts[d][m][a],
                &self.policy_verdicts,
                &[dir, mtch, action],
            )
            .inc(),
            _ => self
                .policy_verdicts
                .with_label_values(&[dir, mtch, action])
                .inc(),
        }
    }

    /// Copies the kernel's counters (summed over CPUs).
    pub fn set_kernel_counters(&self, counters: &[u64]) {
        let get = |i: u32| counters.get(i as usize).copied().unwrap_or(0);
        for r in DropReason::ALL {
            let c = self.drops.with_label_values(&[r.name()]);
            let now = get(counter::DROP_BASE + r as u32);
            // Counters only go up: add the difference since the last copy.
            c.inc_by(now.saturating_sub(c.get()));
        }
        self.packets_allowed.set(get(counter::ALLOWED) as i64);
        self.lost_events
            .with_label_values(&["ringbuf"])
            .set(get(counter::EVENTS_LOST) as i64);
        self.rate_limited_reports
            .set(get(counter::EVENTS_RATE_LIMITED) as i64);
        self.service_translations
            .set(get(counter::SVC_TRANSLATED) as i64);
        self.nat_insert_failures
            .set(get(counter::NAT_INSERT_FAILED) as i64);
        self.fragments_without_head_passed
            .set(get(counter::FRAG_HEADLESS_PASSED) as i64);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut buf = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics cannot fail");
        buf
    }
}

/// Cilium's `match` label: what the allowing rule constrained.
fn policy_match(rec: &FlowRecord) -> &'static str {
    // The record does not carry the rule's shape; the flow's protocol tells ports apart: a
    // rule's ports are of a protocol a NetworkPolicy port can name.
    if crate::model::Protocol::ALL
        .iter()
        .any(|p| p.as_str() == rec.protocol)
    {
        "l3-l4"
    } else {
        "l3-only"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_policy_deny_is_a_drop_of_its_tier_and_policy() {
        use crate::flows::filter::fixture::{debug_to_backend, dropped};
        let m = Metrics::new();
        let (src, dst) = debug_to_backend();
        let mut rec = dropped(src, dst);
        rec.rule = Some(std::sync::Arc::new(crate::flows::enrich::RuleAttribution {
            policy: "ClusterNetworkPolicy/guard".into(),
            direction: crate::compile::Direction::Ingress,
            index: 2,
            tier: Some("admin".into()),
            action: Some("Deny".into()),
            name: None,
        }));
        m.observe_flow(&rec);
        let text = m.render();
        assert!(
            text.contains(r#"enforcer_cluster_policy_verdicts_total{action="dropped",direction="ingress",policy="ClusterNetworkPolicy/guard",rule="2",tier="admin"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"enforcer_policy_verdicts_total{action="dropped",direction="ingress",match="none"} 1"#),
            "a denied flow with a rule is still a drop: {text}"
        );
        // A staged policy that would allow it.
        rec.staged = Some(crate::flows::enrich::StagedAttribution {
            policy: "prod/allow-debug".into(),
            tier: None,
            rule: None,
            would_be: "allowed".into(),
        });
        m.observe_flow(&rec);
        assert!(
            m.render().contains(r#"enforcer_staged_policy_changes_total{direction="ingress",policy="prod/allow-debug",would_be="allowed"} 1"#),
            "{}",
            m.render()
        );
    }

    #[test]
    fn kernel_counters_become_monotonic_drop_counters() {
        let m = Metrics::new();
        let mut c = vec![0u64; counter::LEN as usize];
        c[(counter::DROP_BASE + DropReason::PolicyDenied as u32) as usize] = 5;
        c[counter::EVENTS_LOST as usize] = 2;
        c[counter::FRAG_HEADLESS_PASSED as usize] = 3;
        m.set_kernel_counters(&c);
        c[(counter::DROP_BASE + DropReason::PolicyDenied as u32) as usize] = 7;
        m.set_kernel_counters(&c);
        let text = m.render();
        assert!(
            text.contains("enforcer_drop_total{reason=\"policy_denied\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("enforcer_lost_events_total{source=\"ringbuf\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("enforcer_fragments_without_head_passed_total 3"),
            "{text}"
        );
        assert!(
            text.contains("enforcer_drop_total{reason=\"fragment_overlap\"} 0"),
            "every reason has a series: {text}"
        );
        // No label carries an address or a port.
        assert!(!text.contains("10.244"));
    }
}
