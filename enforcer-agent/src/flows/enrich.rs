//! Attribution: which pods a flow is between, and which policy decided it.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use enforcer_common::proto;
use enforcer_common::reason::DropReason;
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

use super::decode::{tcp_flags_text, Event};
use crate::compile::services::FrontendName;
use crate::compile::tables::{Direction, Tables};
use crate::model::{Cluster, Labels, Owner, PodKey};

/// Schema id of a flow record; bumped on any incompatible change.
pub const SCHEMA: &str = "enforcer.flow/v1";

/// One end of a flow. What it says of a pod is shared (`Arc`) between the records of that pod
/// made under one [`Context`]: a record is made for every event, and copying a pod's names and
/// labels into each was most of the flow pipeline's allocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEnd {
    pub ip: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "no_labels")]
    pub labels: Arc<Labels>,
    /// The pod's workload (`{"kind":"Deployment","name":"web"}`), where its owner references
    /// say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Arc<Owner>>,
    /// On `dst`: the Service the flow was sent to, when the datapath translated it (`ip` and
    /// `port` are then the backend's address and target port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
}

fn no_labels(l: &Arc<Labels>) -> bool {
    l.is_empty()
}

/// A pod as flow ends show it, made once per pod and [`Context`].
#[derive(Debug)]
struct PodEnd {
    namespace: Arc<str>,
    pod: Arc<str>,
    labels: Arc<Labels>,
    workload: Option<Arc<Owner>>,
}

/// The Service a flow was sent to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRef {
    /// `namespace/name`.
    pub name: String,
    /// The Service address and port the client used.
    pub ip: IpAddr,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
}

/// The rule that allowed a flow (or, for a drop or an audited flow, denied it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleAttribution {
    /// `namespace/name` of a NetworkPolicy, `Kind/name` of a cluster policy.
    pub policy: String,
    pub direction: Direction,
    pub index: usize,
    /// `admin` or `baseline` for a cluster policy's rule (absent: a NetworkPolicy's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// A cluster policy rule's action: `Accept`, `Deny` (or `Pass`, never reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// A cluster policy rule's `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl std::fmt::Display for RuleAttribution {
    /// As `compile::tables::RuleRef` shows it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(tier) = &self.tier {
            write!(f, "{tier} ")?;
        }
        write!(
            f,
            "{} {} rule {}",
            self.policy,
            dir_word(self.direction),
            self.index
        )?;
        if let Some(name) = &self.name {
            write!(f, " {name:?}")?;
        }
        if let Some(action) = &self.action {
            write!(f, " ({action})")?;
        }
        Ok(())
    }
}

/// What a staged policy would do to a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedAttribution {
    /// `namespace/name` of a NetworkPolicy, `Kind/name` of a cluster policy.
    pub policy: String,
    /// `admin` or `baseline` for a cluster policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Its rule that decides (absent: a NetworkPolicy's isolation, which none of its rules
    /// allows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleAttribution>,
    /// `allowed` or `denied`: the verdict with the staged policy in force.
    pub would_be: String,
}

impl std::fmt::Display for StagedAttribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let would = if self.would_be == "allowed" {
            "allow"
        } else {
            "deny"
        };
        match &self.rule {
            Some(r) => write!(f, "staged {r} would {would} it"),
            None => write!(
                f,
                "staged {} would {would} it (it isolates the pod and none of its rules allows this flow)",
                self.policy
            ),
        }
    }
}

/// The ICMP/ICMPv6 message of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Icmp {
    #[serde(rename = "type")]
    pub kind: u8,
    pub code: u8,
    /// `echo-request`, `destination-unreachable`, ... when the type has a usual name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Word>,
}

/// How a connection ended and what it carried (on end records only). "Sent" is from the
/// originator (`src`) to the responder (`dst`), "received" the other way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionEnd {
    /// `closed` (FIN both ways), `reset` (RST) or `timeout` (idle).
    pub reason: Word,
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub packets_received: u64,
    pub bytes_received: u64,
    /// From the first packet to the end (the last packet, for a timeout), in milliseconds.
    pub duration_ms: u64,
}

/// Text of a record that is most often one of a few fixed words (`allowed`, `TCP`, ...): no
/// allocation for those.
pub type Word = Cow<'static, str>;

/// Text of a record that many records share (the node, an interface, a rule's sentence):
/// shared, not copied, into each.
pub type Shared = Arc<str>;

/// A flow record: one line of the flow log.
///
/// Made for every event (up to a million a second), so it is built mostly from shared
/// (`Arc`) and static parts: a record of an allowed connection allocates little beyond itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    pub schema: Word,
    pub time: Shared,
    pub node: Shared,
    /// `allowed`, `dropped`, or `audit` (the policy denies it, but the pod is in audit mode:
    /// it passed).
    pub verdict: Word,
    /// As the local pod sees it: `ingress` (into the pod) or `egress` (out of it).
    pub direction: Direction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Word>,
    pub protocol: Word,
    pub src: FlowEnd,
    pub dst: FlowEnd,
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub tcp_flags: Word,
    /// ICMP and ICMPv6 flows: the message type and code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<Icmp>,
    pub length: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<Shared>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reply: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fragment: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Arc<RuleAttribution>>,
    /// For a policy drop: the policies that isolate the local pod in this direction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub isolated_by: Vec<String>,
    /// Set on the record of a connection's end (then `src` opened it, `rule` allowed it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<ConnectionEnd>,
    /// A staged policy would change this flow's verdict (`policy.enforcer.dev/mode: audit`):
    /// which, by which rule, and to what. An allowed flow it would deny has the verdict
    /// `audit`; a dropped flow it would allow stays `dropped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged: Option<StagedAttribution>,
    /// One sentence for humans.
    pub detail: Shared,
}

/// What a flow record says about a pod: the model's pod, shared with the cluster snapshot.
pub type PodInfo = std::sync::Arc<crate::model::Pod>;

/// What the agent knows when an event arrives.
#[derive(Default)]
pub struct Context {
    pub node: Shared,
    pub tables: Tables,
    /// Every pod of the cluster (a shared copy of the snapshot's). The pod at an address is
    /// the owner of its identity prefix in `tables` (the one the policies saw there), so no
    /// index by address is built per sync.
    pub pods: crate::model::Map<PodKey, PodInfo>,
    /// Endpoint id → (local pod, host interface).
    pub endpoints: BTreeMap<u32, (PodKey, String)>,
    /// Service frontend id → the Service port it stands for.
    pub frontends: Arc<BTreeMap<u32, crate::compile::services::FrontendName>>,
    /// Rule id in the datapath → the rule (empty: the compiler's ids, `tables.rules`).
    pub rules: Arc<BTreeMap<u32, crate::compile::tables::RuleRef>>,
    /// Id in the datapath → an entry a staged policy would change (with `rules`).
    pub staged: BTreeMap<u32, crate::compile::tables::StagedEntry>,
    /// What the records made under this context share, made as flows come.
    memo: Mutex<Memo>,
}

/// The parts of records that many records share, made the first time an event needs them and
/// kept for the context's life (the next sync makes a new context): a record per event cannot
/// afford to name its pods, format its rule or its sentence each time.
#[derive(Default)]
struct Memo {
    /// Pods flows were seen with, as their ends show them (see [`FlowEnd`]); bounded by
    /// [`POD_ENDS`].
    pod_ends: HashMap<IpAddr, Arc<PodEnd>, foldhash::fast::RandomState>,
    /// Endpoint id → the local pod as a sentence names it, and its interface.
    locals: HashMap<u32, Local, foldhash::fast::RandomState>,
    /// Rule id → how records name it (`None`: no such rule).
    rules: HashMap<u32, Option<Arc<RuleAttribution>>, foldhash::fast::RandomState>,
    /// Rule id → the sentence of a flow it allowed.
    allowed_by: HashMap<u32, Shared, foldhash::fast::RandomState>,
    /// Endpoint id and direction → the sentence of a flow allowed there without a rule.
    not_isolated: HashMap<(u32, bool), Shared, foldhash::fast::RandomState>,
    /// The last record time made (milliseconds since the epoch) and its text: records come in
    /// bursts within one millisecond.
    time: Option<(u128, Shared)>,
}

/// A local endpoint as records show it.
#[derive(Clone)]
struct Local {
    /// `namespace/name`, or `endpoint N` when it is not known.
    who: Shared,
    interface: Option<Shared>,
}

/// Entries each of a [`Memo`]'s maps keeps; past this it starts over (the next sync makes a
/// new context anyway). Ids come from the datapath, but an event is input: no map grows
/// without bound.
const POD_ENDS: usize = 16_384;

/// `map`, emptied first when it is full (see [`POD_ENDS`]).
fn bounded<K, V, S>(map: &mut HashMap<K, V, S>) -> &mut HashMap<K, V, S> {
    if map.len() >= POD_ENDS {
        map.clear();
    }
    map
}

impl Context {
    pub fn new(
        node: &str,
        cluster: &Cluster,
        tables: Tables,
        endpoints: BTreeMap<u32, (PodKey, String)>,
    ) -> Self {
        Context {
            node: node.into(),
            tables,
            pods: cluster.pods.clone(),
            endpoints,
            frontends: Arc::default(),
            rules: Arc::default(),
            staged: BTreeMap::new(),
            memo: Mutex::default(),
        }
    }

    fn end(&self, memo: &mut Memo, ip: IpAddr, port: Option<u16>) -> FlowEnd {
        let pod = self.pod_end(memo, ip);
        FlowEnd {
            ip,
            port,
            namespace: pod.as_ref().map(|p| p.namespace.clone()),
            pod: pod.as_ref().map(|p| p.pod.clone()),
            labels: pod.as_ref().map(|p| p.labels.clone()).unwrap_or_default(),
            workload: pod.as_ref().and_then(|p| p.workload.clone()),
            service: None,
        }
    }

    /// The pod whose address `ip` is: its identity prefix's owner.
    pub fn pod_at(&self, ip: IpAddr) -> Option<&PodInfo> {
        match self.tables.prefixes.get(&crate::compile::host_prefix(ip))? {
            crate::compile::PrefixOwner::Pod(key) => self.pods.get(key),
            _ => None,
        }
    }

    /// The pod at `ip` as flow ends show it, made the first time it is asked for.
    fn pod_end(&self, memo: &mut Memo, ip: IpAddr) -> Option<Arc<PodEnd>> {
        if let Some(e) = memo.pod_ends.get(&ip) {
            return Some(e.clone());
        }
        let pod = self.pod_at(ip)?;
        if memo.pod_ends.len() >= POD_ENDS {
            memo.pod_ends.clear();
        }
        let e = Arc::new(PodEnd {
            namespace: pod.key.namespace.as_str().into(),
            pod: pod.key.name.as_str().into(),
            labels: Arc::new(pod.labels.clone()),
            workload: pod.owner.clone().map(Arc::new),
        });
        memo.pod_ends.insert(ip, e.clone());
        Some(e)
    }

    /// The local endpoint `ep_id` as records show it.
    fn local(&self, memo: &mut Memo, ep_id: u32) -> Local {
        bounded(&mut memo.locals)
            .entry(ep_id)
            .or_insert_with(|| match self.endpoints.get(&ep_id) {
                Some((pod, interface)) => Local {
                    who: pod.to_string().into(),
                    interface: Some(interface.as_str().into()),
                },
                None => Local {
                    who: format!("endpoint {ep_id}").into(),
                    interface: None,
                },
            })
            .clone()
    }

    /// The record time of a wall-clock time to the millisecond (RFC 3339, UTC).
    fn time_text(memo: &mut Memo, time: SystemTime) -> Shared {
        let ms = time
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        match &memo.time {
            Some((at, text)) if *at == ms => text.clone(),
            _ => {
                let text: Shared = humantime::format_rfc3339_millis(time).to_string().into();
                memo.time = Some((ms, text.clone()));
                text
            }
        }
    }

    /// Builds the record of an event; `time` is the wall-clock time of the event (the
    /// record says it to the millisecond).
    pub fn record(&self, ev: &Event, time: SystemTime) -> FlowRecord {
        // Only the flow sink makes records; a poisoned lock only means a panic elsewhere
        // while it held it, and the memo is whole after every operation.
        let mut memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        let memo = &mut *memo;
        let time = Self::time_text(memo, time);
        let has_ports = matches!(ev.proto, proto::TCP | proto::UDP | proto::SCTP);
        let (sport, dport) = if has_ports {
            (Some(ev.sport), Some(ev.dport))
        } else {
            (None, None)
        };
        let direction = if ev.egress {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        let local = self.local(memo, ev.ep_id);
        let reason = ev.reason.map(|r| match r {
            Ok(r) => Word::Borrowed(r.name()),
            Err(raw) => Word::Owned(format!("unknown_{raw}")),
        });
        let staged_entry = self.staged_of(ev);
        let rule = match staged_entry {
            Some(e) => e.enforced.as_ref().map(|r| Arc::new(attribution(r))),
            None => self.rule_of(memo, ev),
        };
        let staged = staged_entry.map(|e| StagedAttribution {
            policy: e.policy.to_string(),
            tier: cluster_tier(&e.policy),
            rule: e.rule.as_ref().map(attribution),
            would_be: if e.would_allow { "allowed" } else { "denied" }.to_owned(),
        });
        let endpoint = self.endpoints.get(&ev.ep_id);
        let isolated_by = self.isolated_by(ev, endpoint, direction);
        let service = self.service_of(ev);
        let (src, dst) = self.ends(memo, ev, service, sport, dport);
        let end = connection_end(ev);
        let facts = DetailFacts {
            who: &local.who,
            direction,
            rule: rule.as_deref(),
            isolated_by: &isolated_by,
            service,
        };
        let detail = match (&end, &staged) {
            (Some(c), None) => end_detail(c).into(),
            (Some(c), Some(s)) => format!("{}; {s}", end_detail(c)).into(),
            (None, None) => self.detail(memo, ev, &facts),
            (None, Some(s)) => format!("{}; {s}", self.detail(memo, ev, &facts)).into(),
        };
        // An allowed flow a staged policy would deny is the staged policy's audit.
        let verdict = match &staged {
            Some(s) if !ev.dropped && s.would_be == "denied" => "audit",
            _ => verdict(ev),
        };
        FlowRecord {
            schema: Word::Borrowed(SCHEMA),
            time,
            node: self.node.clone(),
            verdict: Word::Borrowed(verdict),
            direction,
            reason,
            protocol: match proto::name(ev.proto) {
                Some(n) => Word::Borrowed(n),
                None => Word::Owned(proto::Display(ev.proto).to_string()),
            },
            src,
            dst,
            tcp_flags: if ev.proto == proto::TCP {
                tcp_flags_text(ev.tcp_flags)
            } else {
                Word::Borrowed("")
            },
            icmp: ev.icmp.map(|(t, code)| Icmp {
                kind: t,
                code,
                name: super::decode::icmp_type_name(ev.proto == proto::ICMPV6, t)
                    .map(Word::Borrowed),
            }),
            length: ev.len,
            interface: local.interface,
            reply: ev.reply,
            fragment: ev.fragment,
            rule,
            isolated_by,
            end,
            staged,
            detail,
        }
    }

    /// The staged entry an event's rule id stands for, if it is one.
    fn staged_of(&self, ev: &Event) -> Option<&crate::compile::tables::StagedEntry> {
        match self.rules.is_empty() {
            true => self.tables.staged_entry(ev.rule),
            false => self.staged.get(&ev.rule),
        }
    }

    /// The rule that allowed the flow: by the datapath's stable rule ids when the dataplane
    /// gave them, else by the compiler's.
    fn rule_of(&self, memo: &mut Memo, ev: &Event) -> Option<Arc<RuleAttribution>> {
        bounded(&mut memo.rules)
            .entry(ev.rule)
            .or_insert_with(|| {
                let rule = match self.rules.is_empty() {
                    true => self.tables.rule(ev.rule),
                    false => self.rules.get(&ev.rule),
                };
                rule.map(|r| Arc::new(attribution(r)))
            })
            .clone()
    }

    /// For a policy drop: the policies that isolate the local pod in the flow's direction.
    fn isolated_by(
        &self,
        ev: &Event,
        local: Option<&(PodKey, String)>,
        direction: Direction,
    ) -> Vec<String> {
        let plan = local.and_then(|(pod, _)| self.tables.endpoints.get(pod));
        let policy_drop = matches!(ev.reason, Some(Ok(DropReason::PolicyDenied)));
        match (plan, policy_drop) {
            (Some(p), true) => match direction {
                Direction::Ingress => p
                    .ingress_isolated_by
                    .iter()
                    .map(|k| k.to_string())
                    .collect(),
                Direction::Egress => p.egress_isolated_by.iter().map(|k| k.to_string()).collect(),
            },
            _ => Vec::new(),
        }
    }

    /// The Service port the flow was sent to, when the datapath translated it (frontend 0: none).
    fn service_of(&self, ev: &Event) -> Option<&FrontendName> {
        self.frontends
            .get(&ev.frontend)
            .filter(|_| ev.frontend != 0)
    }

    /// Source and destination, with the pods they are and the Service on the destination.
    fn ends(
        &self,
        memo: &mut Memo,
        ev: &Event,
        service: Option<&FrontendName>,
        sport: Option<u16>,
        dport: Option<u16>,
    ) -> (FlowEnd, FlowEnd) {
        // A pod reaching itself through its Service (hairpin) is handed its packets back from
        // the Service address: the record shows the pod on both ends.
        let src_ip = match service {
            Some(f) if f.ip == ev.src => ev.dst,
            _ => ev.src,
        };
        let src = self.end(memo, src_ip, sport);
        let mut dst = self.end(memo, ev.dst, dport);
        dst.service = service.map(|f| ServiceRef {
            name: f.service.to_string(),
            ip: f.ip,
            port: f.port,
            port_name: f.port_name.clone(),
        });
        (src, dst)
    }

    /// The sentence of a record that is not a connection's end: why it was allowed, passed in
    /// audit mode, or dropped.
    fn detail(&self, memo: &mut Memo, ev: &Event, facts: &DetailFacts<'_>) -> Shared {
        let DetailFacts { who, direction, .. } = facts;
        if !ev.dropped {
            if ev.audit {
                return match facts.rule {
                    Some(r) => format!("audit mode: passed, but denied by {r}"),
                    None => format!("audit mode: passed, but {}", facts.isolation()),
                }
                .into();
            }
            // The sentences of allowed flows, most of the records, are made once.
            return match facts.rule {
                Some(r) => bounded(&mut memo.allowed_by)
                    .entry(ev.rule)
                    .or_insert_with(|| format!("allowed by {r}").into())
                    .clone(),
                None => bounded(&mut memo.not_isolated)
                    .entry((ev.ep_id, ev.egress))
                    .or_insert_with(|| {
                        format!(
                            "allowed: {who} is not isolated for {}",
                            dir_word(*direction)
                        )
                        .into()
                    })
                    .clone(),
            };
        }
        self.drop_detail(ev, facts).into()
    }

    /// The sentence of a dropped flow.
    fn drop_detail(&self, ev: &Event, facts: &DetailFacts<'_>) -> String {
        let who = facts.who;
        match &ev.reason {
            Some(Ok(DropReason::PolicyDenied)) => match facts.rule {
                Some(r) => format!("dropped at {who}: denied by {r}"),
                None => facts.isolation(),
            },
            Some(Ok(DropReason::ServiceNoEndpoints)) => match facts.service {
                Some(f) => format!(
                    "dropped at {who}: Service {} port {} has no ready endpoint{}",
                    f.service,
                    f.port,
                    if self.node.is_empty() {
                        String::new()
                    } else {
                        format!(" for node {}", self.node)
                    }
                ),
                None => format!("dropped at {who}: the Service has no ready endpoint"),
            },
            Some(Ok(r)) => format!("dropped at {who}: {}", r.name().replace('_', " ")),
            _ => format!("dropped at {who}"),
        }
    }
}

/// How a record names a rule.
fn attribution(r: &crate::compile::tables::RuleRef) -> RuleAttribution {
    RuleAttribution {
        policy: r.policy.to_string(),
        direction: r.direction,
        index: r.index,
        tier: cluster_tier(&r.policy),
        action: r.action.map(|a| a.as_str().to_owned()),
        name: r.name.clone(),
    }
}

fn cluster_tier(p: &crate::compile::tables::PolicyRef) -> Option<String> {
    match p {
        crate::compile::tables::PolicyRef::Cluster { tier, .. } => Some(tier.as_str().to_owned()),
        crate::compile::tables::PolicyRef::Network(_) => None,
    }
}

/// What the detail sentence of a record is made of.
struct DetailFacts<'a> {
    /// The local pod (`ns/name`), or `endpoint N` when it is not known.
    who: &'a str,
    direction: Direction,
    rule: Option<&'a RuleAttribution>,
    isolated_by: &'a [String],
    service: Option<&'a FrontendName>,
}

impl DetailFacts<'_> {
    /// What a policy drop (or, in audit mode, a would-be drop) says.
    fn isolation(&self) -> String {
        format!(
            "{} is isolated for {} by {} and no rule allows this flow",
            self.who,
            dir_word(self.direction),
            if self.isolated_by.is_empty() {
                "a policy".to_string()
            } else {
                self.isolated_by.join(", ")
            }
        )
    }
}

fn verdict(ev: &Event) -> &'static str {
    if ev.dropped {
        "dropped"
    } else if ev.audit {
        "audit"
    } else {
        "allowed"
    }
}

/// A connection's end (the sweeper's or the datapath's report of it): how it ended, what it
/// carried each way, how long it lasted.
fn connection_end(ev: &Event) -> Option<ConnectionEnd> {
    ev.end.map(|c| ConnectionEnd {
        reason: Word::Borrowed(c.reason_name()),
        packets_sent: c.packets_orig,
        bytes_sent: c.bytes_orig,
        packets_received: c.packets_reply,
        bytes_received: c.bytes_reply,
        duration_ms: ev.ts_ns.saturating_sub(c.created_ns) / 1_000_000,
    })
}

/// `connection closed after 2.367 s: 6 packets / 512 bytes sent, ...`.
fn end_detail(c: &ConnectionEnd) -> String {
    format!(
        "connection {} after {}.{:03} s: {} packets / {} bytes sent, {} packets / {} bytes received",
        match &*c.reason {
            "timeout" => "timed out",
            r => r,
        },
        c.duration_ms / 1000,
        c.duration_ms % 1000,
        c.packets_sent,
        c.bytes_sent,
        c.packets_received,
        c.bytes_received
    )
}

fn dir_word(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}
