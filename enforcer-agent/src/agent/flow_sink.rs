//! Where flow records go: the flow log (JSON lines, stdout or a rotated file), the in-memory
//! store behind `enforcer flows`, the metrics, and the anomaly detectors, whose alerts go to the
//! same log, the agent's log, a metric and optionally an Alertmanager webhook. Reads the ring
//! buffer every [`READ_EVERY`], and takes what the conntrack sweeper reports.
//!
//! Wiring, so it sits in the agent: `flows` makes the records (`decode`, `enrich`) and keeps
//! them (`store`); `alerts` and `metrics` read them.

use std::io::Write;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aya::maps::{MapData, RingBuf};
use enforcer_common::flow::ConnEndEvent;
use tokio::sync::mpsc;

use crate::alerts::{to_record, Alert, Alerts};
use crate::dataplane::ct_sweep::monotonic_now;
use crate::flows::decode::{decode, decode_end, DecodeError, Event};
use crate::flows::enrich::{Context, FlowRecord, SCHEMA};
use crate::flows::filter;
use crate::flows::store::FlowStore;
use crate::metrics::Metrics;

/// Which flows go to the log.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Allowed connections and connection ends too (drops and audit records always).
    pub allowed: bool,
    /// Of those, the records the filter flags select (`--flow-log-filter`).
    pub records: filter::Filter,
}

impl Filter {
    /// Whether `rec` goes to the log; `denied`: the policy dropped it or, in audit mode,
    /// would have.
    pub fn logs(&self, rec: &FlowRecord, denied: bool) -> bool {
        (denied || self.allowed) && self.records.matches(rec)
    }
}

/// Everything a record feeds, and how: the log (with its filter), the metrics, the store and
/// the detectors. What the agent does with each event, apart from reading the ring buffer; the
/// flow-event benchmark drives this same code.
pub struct Pipeline {
    /// What the agent knows now, to attribute events with.
    pub ctx: Arc<RwLock<Context>>,
    pub out: Box<dyn Write + Send>,
    pub filter: Filter,
    pub metrics: Metrics,
    pub store: FlowStore,
    pub alerts: Option<Alerts>,
    /// Alerts to POST (bounded: a slow webhook loses alerts, never blocks flows).
    pub webhook: Option<mpsc::Sender<Alert>>,
}

/// What the sink takes besides the ring buffer.
pub struct Inputs {
    /// Counts of events the kernel could not report (ring buffer full), to mark in the log.
    pub lost: mpsc::UnboundedReceiver<u64>,
    /// What the conntrack sweeper found.
    pub ends: mpsc::Receiver<Swept>,
    /// Requests to read the ring now (a query of the flow store), answered once done.
    pub catch_up: mpsc::Receiver<tokio::sync::oneshot::Sender<()>>,
}

/// What the conntrack sweeper sends the sink (records as the datapath writes them, see
/// `dataplane::ct_sweep`).
#[derive(Debug)]
pub enum Swept {
    /// The end of an idle connection (the datapath reports the other ends itself, through
    /// the ring buffer): a record like any other.
    End(ConnEndEvent),
    /// What a connection carried since the previous pass: for the volume detector only (it
    /// is not a flow, so it is neither logged nor kept).
    Bytes(ConnEndEvent),
}

/// The marker written to the flow log where events were lost: the stream says it has a gap.
#[derive(serde::Serialize)]
struct LostMarker {
    schema: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    source: &'static str,
    count: u64,
}

impl LostMarker {
    /// `count` events lost at `source` (`ringbuf`: the kernel could not reserve space;
    /// `decode`: a record this agent cannot read), now.
    fn now(source: &'static str, count: u64) -> Self {
        LostMarker {
            schema: SCHEMA,
            kind: "lost",
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            source,
            count,
        }
    }
}

/// The two clocks read together, to turn the datapath's timestamps (`CLOCK_MONOTONIC`, what
/// `bpf_ktime_get_ns` returns) into wall-clock times: read once per batch of events, not twice
/// per event.
#[derive(Clone, Copy)]
pub struct Clock {
    wall: SystemTime,
    mono: u64,
}

impl Clock {
    pub fn now() -> Clock {
        Clock {
            wall: SystemTime::now(),
            mono: monotonic_now(),
        }
    }

    /// Wall-clock time of a `CLOCK_MONOTONIC` timestamp.
    pub fn wall_time(&self, ts_ns: u64) -> SystemTime {
        match ts_ns.checked_sub(self.mono) {
            Some(after) => self.wall + Duration::from_nanos(after),
            None => self.wall - Duration::from_nanos(self.mono - ts_ns),
        }
    }
}

fn write_line(out: &mut dyn Write, value: &impl serde::Serialize) {
    thread_local! {
        /// The line being written: serialised here first, then written at once (the
        /// serialiser writes a record in some hundred pieces, each a call through `dyn Write`).
        static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let r = LINE.with_borrow_mut(|line| {
        line.clear();
        serde_json::to_writer(&mut *line, value)?;
        line.push(b'\n');
        out.write_all(line)
    });
    if let Err(e) = r {
        // The log is for people; enforcement, metrics and the store go on without it.
        tracing::warn!(error = %e, "writing the flow log");
    }
}

/// How often the ring buffer is read. The datapath wakes nobody when it submits an event (see
/// `enforcer-ebpf/src/report.rs`): a busy node would pay a wakeup per event. So the sink reads
/// on a clock: a record is at most this late, and the 4 MiB ring holds ~50,000 events, 50 ms
/// at 1 M events/s.
pub const READ_EVERY: Duration = Duration::from_millis(10);

/// Events handled under one read of the context: the sync loop's writes wait no longer.
const BATCH: usize = 1024;

/// Drains the ring buffer forever.
pub async fn run(mut ring: RingBuf<MapData>, mut sink: Pipeline, mut inputs: Inputs) {
    let mut tick = tokio::time::interval(READ_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => sink.drain(&mut ring),
            Some(done) = inputs.catch_up.recv() => {
                sink.drain(&mut ring);
                let _ = done.send(());
            }
            Some(item) = inputs.ends.recv() => {
                match item {
                    Swept::End(c) => match decode_end(&c) {
                        Ok(ev) => sink.event(&ev),
                        Err(e) => sink.undecodable(&e),
                    },
                    Swept::Bytes(c) => match decode_end(&c) {
                        Ok(ev) => sink.bytes_sample(&ev),
                        Err(e) => sink.undecodable(&e),
                    },
                }
                // Ends come in batches, once per sweep: flush when the batch is through.
                if inputs.ends.is_empty() {
                    sink.flush();
                }
            }
            Some(count) = inputs.lost.recv() => {
                write_line(&mut sink.out, &LostMarker::now("ringbuf", count));
                tracing::warn!(count, "flow events lost: the ring buffer was full");
            }
        }
    }
}

impl Pipeline {
    /// Every event waiting in `ring`, then a flush of the log.
    pub fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        loop {
            let shared = self.ctx.clone();
            let ctx = shared.read().expect("flow context lock poisoned");
            let clock = Clock::now();
            let mut n = 0;
            while n < BATCH {
                let Some(item) = ring.next() else { break };
                match decode(&item) {
                    Ok(ev) => self.event_in(&ev, &ctx, &clock),
                    Err(e) => self.undecodable(&e),
                }
                n += 1;
            }
            if n < BATCH {
                break;
            }
        }
        self.flush();
    }

    /// One event through every output, attributed with what the agent knows now.
    pub fn event(&mut self, ev: &Event) {
        let shared = self.ctx.clone();
        let ctx = shared.read().expect("flow context lock poisoned");
        self.event_in(ev, &ctx, &Clock::now());
    }

    /// Events through every output as [`Self::drain`] takes them from the ring: under one
    /// read of the context and one reading of the clocks (no flush).
    pub fn events<'a>(&mut self, evs: impl IntoIterator<Item = &'a Event>) {
        let shared = self.ctx.clone();
        let ctx = shared.read().expect("flow context lock poisoned");
        let clock = Clock::now();
        for ev in evs {
            self.event_in(ev, &ctx, &clock);
        }
    }

    fn event_in(&mut self, ev: &Event, ctx: &Context, clock: &Clock) {
        let (rec, time) = record_of(ev, ctx, clock);
        self.metrics.observe_flow(&rec);
        // Audit records are what would have been dropped: logged like drops.
        if self.filter.logs(&rec, ev.dropped || ev.audit) {
            write_line(&mut self.out, &rec);
        }
        let fired = match &mut self.alerts {
            Some(alerts) => alerts.observe_at(&rec, time),
            None => Vec::new(),
        };
        self.raise(fired);
        self.store.push_shared(rec, time);
    }

    /// What a connection carried since the sweeper's previous pass: for the volume detector
    /// only (it is not a flow, so it is neither logged nor kept).
    pub fn bytes_sample(&mut self, ev: &Event) {
        let shared = self.ctx.clone();
        let ctx = shared.read().expect("flow context lock poisoned");
        let (rec, time) = record_of(ev, &ctx, &Clock::now());
        let fired = match &mut self.alerts {
            Some(alerts) => alerts.observe_at(&rec, time),
            None => Vec::new(),
        };
        self.raise(fired);
    }

    pub fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            tracing::warn!(error = %e, "flushing the flow log");
        }
    }

    /// A record this agent cannot read: the stream says it has a gap here, as for the
    /// kernel's losses.
    pub fn undecodable(&mut self, e: &DecodeError) {
        self.metrics
            .lost_events
            .with_label_values(&["decode"])
            .inc();
        write_line(&mut self.out, &LostMarker::now("decode", 1));
        tracing::warn!(error = %e, "undecodable flow event");
    }

    /// Alerts into the log, the agent's log, the metric and the webhook.
    fn raise(&mut self, fired: Vec<Alert>) {
        for alert in fired {
            let kind = serde_json::to_value(alert.kind).ok();
            let kind = kind.as_ref().and_then(|k| k.as_str()).unwrap_or("unknown");
            self.metrics.alerts.with_label_values(&[kind]).inc();
            tracing::warn!(kind, severity = ?alert.severity, summary = %alert.summary, "alert");
            write_line(&mut self.out, &to_record(&alert));
            if let Some(tx) = &self.webhook {
                if tx.try_send(alert).is_err() {
                    self.metrics
                        .lost_events
                        .with_label_values(&["webhook"])
                        .inc();
                    tracing::warn!("alert webhook is behind; an alert was not sent");
                }
            }
        }
    }
}

/// The record of an event, attributed with `ctx`, and its time: the event's wall-clock time to
/// the millisecond, as the record's `time` says it (so that the store and the detectors, which
/// take it as a number, see what a reader of the record sees).
fn record_of(ev: &Event, ctx: &Context, clock: &Clock) -> (Arc<FlowRecord>, SystemTime) {
    let t = clock.wall_time(ev.ts_ns);
    let t = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_millis(d.as_millis() as u64),
        Err(_) => t,
    };
    (Arc::new(ctx.record(ev, t)), t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::client::parse_filter_flags;
    use crate::flows::filter::fixture::{allowed, debug_to_backend, dropped};

    #[test]
    fn the_log_keeps_drops_allowed_flows_on_request_and_what_the_filter_selects() {
        let (s, d) = debug_to_backend();
        let (drop, allow) = (dropped(s.clone(), d.clone()), allowed(s, d));
        let mut f = Filter::default();
        assert!(f.logs(&drop, true) && !f.logs(&allow, false));
        f.allowed = true;
        assert!(f.logs(&allow, false));
        f.records = parse_filter_flags("--not --namespace dev").unwrap();
        assert!(
            !f.logs(&drop, true) && !f.logs(&allow, false),
            "both are from dev"
        );
        f.records = parse_filter_flags("--event drop").unwrap();
        assert!(f.logs(&drop, true) && !f.logs(&allow, false));
    }

    /// The sweeper's records decode as the datapath's do: its originator as the source,
    /// host-order ports, the direction, the counts and the reason of the end.
    #[test]
    fn what_the_sweeper_reports_decodes_like_the_datapaths_ends() {
        use crate::dataplane::ct_sweep::{flushed_end, judge, ByteMeter, Verdict};
        use enforcer_common::ct::{self, CtEntry, CtKey};
        use enforcer_common::{direction, proto};
        use std::net::{IpAddr, Ipv6Addr};

        const S: u64 = 1_000_000_000;
        let mapped = |s: &str| {
            s.parse::<std::net::Ipv4Addr>()
                .unwrap()
                .to_ipv6_mapped()
                .octets()
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let key = CtKey {
            ep_id: 3,
            addr_lo: mapped("10.244.1.10"),
            addr_hi: mapped("10.244.2.11"),
            port_lo: 53u16.to_be(),
            port_hi: 40000u16.to_be(),
            proto: proto::UDP,
            _pad: [0; 3],
        };
        let entry = CtEntry {
            created_ns: S,
            last_seen_ns: 100 * S,
            packets_orig: 3,
            bytes_orig: 210,
            packets_reply: 2,
            bytes_reply: 400,
            rule: 9,
            state: ct::state::ESTABLISHED,
            origin_dir: direction::EGRESS,
            flags: ct::CT_F_REPLIED,
            frontend: 4,
            ..Default::default()
        };
        let Verdict::ReportAndRemove(rec) = judge(&key, &entry, 300 * S) else {
            panic!("expired and unreported");
        };
        let ev = decode_end(&rec).unwrap();
        assert_eq!(
            (ev.src, ev.sport, ev.dst, ev.dport, ev.proto),
            (ip("10.244.2.11"), 40000, ip("10.244.1.10"), 53, proto::UDP)
        );
        assert!(ev.egress && !ev.dropped && !ev.audit && !ev.reply && !ev.fragment);
        assert_eq!(
            (ev.ts_ns, ev.ep_id, ev.rule, ev.frontend),
            (100 * S, 3, 9, 4)
        );
        assert_eq!((ev.ifindex, ev.len, ev.reason, ev.icmp), (0, 0, None, None));
        let end = ev.end.unwrap();
        assert_eq!(end.reason_name(), "timeout");
        assert_eq!(
            (
                end.created_ns,
                end.packets_orig,
                end.bytes_orig,
                end.packets_reply,
                end.bytes_reply
            ),
            (S, 3, 210, 2, 400)
        );
        let flushed = decode_end(&flushed_end(&key, &entry).unwrap()).unwrap();
        assert_eq!(flushed.end.unwrap().reason_name(), "backend_gone");
        let sample = ByteMeter::default().pass(&[(key, entry)], 150 * S);
        let sample = decode_end(&sample[0]).unwrap();
        assert_eq!(
            (sample.ts_ns, sample.end.unwrap().reason_name()),
            (150 * S, "active")
        );

        // IPv6 stays IPv6.
        let v6 = CtKey {
            addr_lo: "fd00::a".parse::<Ipv6Addr>().unwrap().octets(),
            addr_hi: "fd00::b".parse::<Ipv6Addr>().unwrap().octets(),
            ..key
        };
        let Verdict::ReportAndRemove(rec) = judge(&v6, &entry, 300 * S) else {
            panic!("expired and unreported");
        };
        let ev = decode_end(&rec).unwrap();
        assert_eq!((ev.src, ev.dst), (ip("fd00::b"), ip("fd00::a")));
    }
}
