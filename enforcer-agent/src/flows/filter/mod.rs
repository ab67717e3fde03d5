//! Which flow records a reader wants: the filter spec (sent over the flow socket as JSON, and
//! built from `enforcer flows` flags) and pure matching.
//!
//! Semantics, as in `hubble observe`:
//! 1. Each flag may repeat: its values are OR-ed (`--namespace a --namespace b`: either).
//! 2. Different flags are AND-ed (`--namespace a --verdict dropped`: both).
//! 3. `--not` negates the one flag that directly follows it. Negated values go to
//!    [`Filter::exclude`]: a record matching *any* excluded value is left out, so
//!    `--not --namespace a --not --port 53` means "neither in namespace a nor on port 53".
//!
//! "Either end" flags (`--namespace`, `--pod`, `--label`, `--ip`, `--port`) hold when the
//! source or the destination matches; `--from-*` look only at the source, `--to-*` only at the
//! destination (as on the wire: a reply's source is the server).
//!
//! The flags' values and their parsers are in `values.rs`; this file is the matching.

mod values;

#[cfg(test)]
pub(crate) mod fixture;

use std::net::IpAddr;

use enforcer_common::proto;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use values::{
    parse_direction, parse_ip_or_cidr, parse_policy, parse_reason, parse_tier, EventKind,
    FilterParseError, LabelSelector, PodPattern, Verdict,
};

use super::enrich::{FlowEnd, FlowRecord};
use crate::compile::tables::Direction;

/// Whether a record's protocol is the one asked for. Case-insensitive; `icmp` matches ICMP
/// and ICMPv6, `icmpv4` only ICMP; a number matches by protocol number.
fn protocol_matches(wanted: &str, protocol: &str) -> bool {
    // As records write protocols out (no allocation for the named ones).
    let is = |p: u8| match proto::name(p) {
        Some(name) => name.eq_ignore_ascii_case(protocol),
        None => proto::Display(p).to_string().eq_ignore_ascii_case(protocol),
    };
    let wanted = wanted.to_ascii_lowercase();
    match wanted.as_str() {
        "icmp" => is(proto::ICMP) || is(proto::ICMPV6),
        "icmpv4" | "icmp4" => is(proto::ICMP),
        "icmp6" => is(proto::ICMPV6),
        w => match w.parse::<u8>() {
            Ok(n) => is(n),
            Err(_) => w.eq_ignore_ascii_case(protocol),
        },
    }
}

/// One set of conditions. Within a field the values are OR-ed; see [`Filter`] for how fields
/// combine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Criteria {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verdict: Vec<Verdict>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub event: Vec<EventKind>,
    /// Either end is in the namespace.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespace: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from_namespace: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to_namespace: Vec<String>,
    /// Either end is the pod.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pod: Vec<PodPattern>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from_pod: Vec<PodPattern>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to_pod: Vec<PodPattern>,
    /// Either end's labels satisfy the selector.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub label: Vec<LabelSelector>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from_label: Vec<LabelSelector>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to_label: Vec<LabelSelector>,
    /// Either end's address is in the prefix.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip: Vec<IpNet>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from_ip: Vec<IpNet>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to_ip: Vec<IpNet>,
    /// Either end's port.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub port: Vec<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from_port: Vec<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to_port: Vec<u16>,
    /// Case-insensitive; see [`protocol_matches`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub protocol: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub direction: Vec<Direction>,
    /// Drop reason names (`policy_denied`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reason: Vec<String>,
    /// `NAMESPACE/NAME`: the policy whose rule allowed the flow, or one that isolates the pod
    /// of a dropped flow.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policy: Vec<String>,
    /// `NAMESPACE/NAME`: the Service the flow was sent to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service: Vec<String>,
    /// `admin`, `networkpolicy` or `baseline`: the tier of the rule that decided the flow (a
    /// drop by a NetworkPolicy's isolation is the `networkpolicy` tier's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tier: Vec<String>,
}

/// The tier that decided a record, if a policy did.
fn tier_of(r: &FlowRecord) -> Option<&str> {
    match &r.rule {
        Some(rule) => Some(rule.tier.as_deref().unwrap_or("networkpolicy")),
        None if !r.isolated_by.is_empty() => Some("networkpolicy"),
        None => None,
    }
}

/// `None` when there are no values (the field does not constrain), else whether any matches.
fn any<T>(values: &[T], f: impl Fn(&T) -> bool) -> Option<bool> {
    (!values.is_empty()).then(|| values.iter().any(f))
}

fn either(r: &FlowRecord) -> [&FlowEnd; 2] {
    [&r.src, &r.dst]
}

impl Criteria {
    pub fn is_empty(&self) -> bool {
        self.results(&probe()).iter().all(Option::is_none)
    }

    /// For every field: `None` if it has no values, else whether one of them matches.
    fn results(&self, r: &FlowRecord) -> [Option<bool>; 23] {
        let ns = |end: &FlowEnd, want: &String| end.namespace.as_deref() == Some(want.as_str());
        let ip = |end: &FlowEnd, net: &IpNet| net.contains(&end.ip);
        let port = |end: &FlowEnd, p: &u16| end.port == Some(*p);
        [
            any(&self.verdict, |v| {
                r.verdict.eq_ignore_ascii_case(v.as_str())
            }),
            any(&self.event, |k| *k == EventKind::of(r)),
            any(&self.namespace, |n| either(r).iter().any(|e| ns(e, n))),
            any(&self.from_namespace, |n| ns(&r.src, n)),
            any(&self.to_namespace, |n| ns(&r.dst, n)),
            any(&self.pod, |p| either(r).iter().any(|e| p.matches(e))),
            any(&self.from_pod, |p| p.matches(&r.src)),
            any(&self.to_pod, |p| p.matches(&r.dst)),
            any(&self.label, |l| {
                either(r).iter().any(|e| l.matches(&e.labels))
            }),
            any(&self.from_label, |l| l.matches(&r.src.labels)),
            any(&self.to_label, |l| l.matches(&r.dst.labels)),
            any(&self.ip, |n| either(r).iter().any(|e| ip(e, n))),
            any(&self.from_ip, |n| ip(&r.src, n)),
            any(&self.to_ip, |n| ip(&r.dst, n)),
            any(&self.port, |p| either(r).iter().any(|e| port(e, p))),
            any(&self.from_port, |p| port(&r.src, p)),
            any(&self.to_port, |p| port(&r.dst, p)),
            any(&self.protocol, |p| protocol_matches(p, &r.protocol)),
            any(&self.direction, |d| *d == r.direction),
            any(&self.reason, |want| {
                r.reason
                    .as_deref()
                    .is_some_and(|have| have.eq_ignore_ascii_case(want))
            }),
            any(&self.policy, |p| {
                r.rule.as_ref().is_some_and(|rule| &rule.policy == p) || r.isolated_by.contains(p)
            }),
            any(&self.service, |s| {
                r.dst.service.as_ref().is_some_and(|d| &d.name == s)
            }),
            any(&self.tier, |t| tier_of(r).is_some_and(|have| have == t)),
        ]
    }

    /// Every field with values has a matching value.
    pub fn all_hold(&self, r: &FlowRecord) -> bool {
        self.results(r).iter().all(|x| x.unwrap_or(true))
    }

    /// No value of any field matches.
    pub fn none_holds(&self, r: &FlowRecord) -> bool {
        self.results(r).iter().all(|x| !x.unwrap_or(false))
    }
}

/// A record that [`Criteria::is_empty`] evaluates against: any record works, since an empty
/// field yields `None` without looking at the record.
fn probe() -> FlowRecord {
    let end = FlowEnd {
        ip: IpAddr::from([0, 0, 0, 0]),
        port: None,
        namespace: None,
        pod: None,
        labels: Default::default(),
        workload: None,
        service: None,
    };
    FlowRecord {
        schema: "".into(),
        time: "".into(),
        node: "".into(),
        verdict: "".into(),
        direction: Direction::Ingress,
        reason: None,
        protocol: "".into(),
        src: end.clone(),
        dst: end,
        tcp_flags: "".into(),
        icmp: None,
        length: 0,
        interface: None,
        reply: false,
        fragment: false,
        rule: None,
        isolated_by: Vec::new(),
        end: None,
        staged: None,
        detail: "".into(),
    }
}

/// What a reader wants: every `include` field holds, and no `exclude` value matches.
/// The empty filter matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Filter {
    #[serde(skip_serializing_if = "Criteria::is_empty")]
    pub include: Criteria,
    /// Values of flags preceded by `--not`.
    #[serde(skip_serializing_if = "Criteria::is_empty")]
    pub exclude: Criteria,
}

impl Filter {
    pub fn matches(&self, r: &FlowRecord) -> bool {
        self.include.all_hold(r) && self.exclude.none_holds(r)
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::*;
    use super::*;

    fn crit(f: impl FnOnce(&mut Criteria)) -> Criteria {
        let mut c = Criteria::default();
        f(&mut c);
        c
    }

    fn pods(s: &[&str]) -> Vec<PodPattern> {
        s.iter().map(|p| p.parse().unwrap()).collect()
    }

    fn labels(s: &[&str]) -> Vec<LabelSelector> {
        s.iter().map(|p| p.parse().unwrap()).collect()
    }

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|p| parse_ip_or_cidr(p).unwrap()).collect()
    }

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|p| p.to_string()).collect()
    }

    /// `dev/debug:41234 -> prod/backend:8080`, TCP, ingress, dropped by policy.
    fn record() -> FlowRecord {
        let (s, d) = debug_to_backend();
        dropped(s, d)
    }

    /// Criteria from their JSON form: `c(r#"{"port":[80]}"#)`.
    fn c(json: &str) -> Criteria {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    #[test]
    fn every_flag_matches_and_misses() {
        // what | criteria that match `record()` | criteria that do not
        let cases = [
            r#"verdict | {"verdict":["dropped"]} | {"verdict":["allowed"]}"#,
            r#"namespace: source | {"namespace":["dev"]} | {"namespace":["kube-system"]}"#,
            r#"namespace: destination | {"namespace":["prod"]} | {"namespace":["pro"]}"#,
            r#"from-namespace | {"from_namespace":["dev"]} | {"from_namespace":["prod"]}"#,
            r#"to-namespace | {"to_namespace":["prod"]} | {"to_namespace":["dev"]}"#,
            r#"pod: either end | {"pod":["prod/backend"]} | {"pod":["prod/debug"]}"#,
            r#"pod: prefix | {"pod":["prod/back*"]} | {"pod":["prod/front*"]}"#,
            r#"pod: namespace | {"pod":["dev/*"]} | {"pod":["kube-system/*"]}"#,
            r#"from-pod | {"from_pod":["dev/debug"]} | {"from_pod":["prod/backend"]}"#,
            r#"to-pod | {"to_pod":["prod/backend"]} | {"to_pod":["dev/debug"]}"#,
            r#"label: either end | {"label":["app=debug"]} | {"label":["app=web"]}"#,
            // app=debug is the source's, tier=api the destination's: not one end's.
            r#"label: 1 end | {"label":["app=backend,tier"]} | {"label":["app=debug,tier=api"]}"#,
            r#"from-label | {"from_label":["app=debug"]} | {"from_label":["app=backend"]}"#,
            r#"to-label | {"to_label":["tier=api"]} | {"to_label":["app=debug"]}"#,
            r#"ip: address | {"ip":["10.244.2.7/32"]} | {"ip":["10.244.2.8/32"]}"#,
            r#"ip: v4 CIDR | {"ip":["10.244.0.0/16"]} | {"ip":["10.245.0.0/16"]}"#,
            r#"ip: host bits | {"ip":["10.244.1.1/24"]} | {"ip":["10.244.3.1/24"]}"#,
            r#"from-ip | {"from_ip":["10.244.1.0/24"]} | {"from_ip":["10.244.2.0/24"]}"#,
            r#"to-ip | {"to_ip":["10.244.2.0/24"]} | {"to_ip":["10.244.1.0/24"]}"#,
            r#"port: either end | {"port":[41234]} | {"port":[80]}"#,
            r#"from-port | {"from_port":[41234]} | {"from_port":[8080]}"#,
            r#"to-port | {"to_port":[8080]} | {"to_port":[41234]}"#,
            r#"protocol: any case | {"protocol":["tcp"]} | {"protocol":["UDP"]}"#,
            r#"protocol: number | {"protocol":["6"]} | {"protocol":["17"]}"#,
            r#"direction | {"direction":["ingress"]} | {"direction":["egress"]}"#,
            r#"reason | {"reason":["POLICY_DENIED"]} | {"reason":["spoofed_source"]}"#,
            r#"policy: isolating | {"policy":["prod/default-deny-ingress"]} | {"policy":["dev/x"]}"#,
            r#"OR within a flag | {"namespace":["a","prod"]} | {"namespace":["a","b"]}"#,
            r#"AND | {"namespace":["prod"],"to_port":[8080]} | {"namespace":["prod"],"to_port":[80]}"#,
        ];
        let r = record();
        for case in cases {
            let [name, yes, no] = case.splitn(3, " | ").collect::<Vec<_>>()[..] else {
                panic!("malformed case {case}");
            };
            let (yes, no) = (c(yes), c(no));
            let only = |include: &Criteria| Filter {
                include: include.clone(),
                ..Filter::default()
            };
            assert!(only(&yes).matches(&r), "{name}: {yes:?} should match");
            assert!(!only(&no).matches(&r), "{name}: {no:?} should not match");
            // A negated flag (`--not`) swaps the outcomes. (Two negated flags are
            // NOT a AND NOT b, which `negation_excludes_any_negated_value...` covers.)
            if yes.results(&r).iter().flatten().count() > 1 {
                continue;
            }
            let not = |exclude: &Criteria| Filter {
                exclude: exclude.clone(),
                ..Filter::default()
            };
            assert!(
                !not(&yes).matches(&r),
                "{name}: --not {yes:?} should not match"
            );
            assert!(not(&no).matches(&r), "{name}: --not {no:?} should match");
        }
    }

    #[test]
    fn empty_filter_matches_everything() {
        assert!(Criteria::default().is_empty());
        assert!(Filter::default().matches(&record()));
        let (s, d) = debug_to_backend();
        assert!(Filter::default().matches(&allowed(s, d)));
    }

    #[test]
    fn policy_matches_the_allowing_rule() {
        let (s, d) = debug_to_backend();
        let r = allowed(s, d);
        let f = |p: &str| Filter {
            include: crit(|c| c.policy = strings(&[p])),
            ..Filter::default()
        };
        assert!(f("prod/backend-from-frontend").matches(&r));
        assert!(!f("prod/default-deny-ingress").matches(&r));
    }

    #[test]
    fn tier_matches_the_deciding_rules_tier() {
        let (s, d) = debug_to_backend();
        let f = |t: &str| Filter {
            include: crit(|c| c.tier = strings(&[t])),
            ..Filter::default()
        };
        // A NetworkPolicy's rule, and a drop by a NetworkPolicy's isolation.
        let np = allowed(s.clone(), d.clone());
        assert!(f("networkpolicy").matches(&np));
        assert!(!f("admin").matches(&np));
        let isolated = dropped(s.clone(), d.clone());
        assert!(f("networkpolicy").matches(&isolated));
        // A cluster policy's Deny.
        let mut admin = dropped(s, d);
        admin.isolated_by.clear();
        admin.rule = Some(std::sync::Arc::new(crate::flows::enrich::RuleAttribution {
            policy: "ClusterNetworkPolicy/guard".into(),
            direction: crate::compile::Direction::Ingress,
            index: 1,
            tier: Some("admin".into()),
            action: Some("Deny".into()),
            name: Some("no-debug".into()),
        }));
        assert!(f("admin").matches(&admin));
        assert!(!f("baseline").matches(&admin));
        assert!(!f("networkpolicy").matches(&admin));
        let by_policy = Filter {
            include: crit(|c| c.policy = strings(&["ClusterNetworkPolicy/guard"])),
            ..Filter::default()
        };
        assert!(by_policy.matches(&admin));
        assert_eq!(
            parse_tier("NP").as_deref(),
            Ok("networkpolicy"),
            "short form, any case"
        );
        assert!(parse_tier("tier1").is_err());
    }

    #[test]
    fn service_matches_the_service_the_flow_was_sent_to() {
        let (s, mut d) = debug_to_backend();
        d.service = Some(crate::flows::enrich::ServiceRef {
            name: "prod/backend".into(),
            ip: "10.96.4.10".parse().unwrap(),
            port: 80,
            port_name: None,
        });
        let f = |svc: &str| Filter {
            include: crit(|c| c.service = strings(&[svc])),
            ..Filter::default()
        };
        assert!(f("prod/backend").matches(&allowed(s.clone(), d)));
        let (_, direct) = debug_to_backend();
        assert!(
            !f("prod/backend").matches(&allowed(s, direct)),
            "a flow straight to the pod"
        );
    }

    #[test]
    fn negation_excludes_any_negated_value_and_keeps_the_rest() {
        // --verdict dropped --not --namespace kube-system --not --port 53
        let f = Filter {
            include: crit(|c| c.verdict = vec![Verdict::Dropped]),
            exclude: crit(|c| {
                c.namespace = strings(&["kube-system"]);
                c.port = vec![53];
            }),
        };
        assert!(f.matches(&record()));
        let (s, _) = debug_to_backend();
        let dns = dropped(
            s.clone(),
            end("kube-system/coredns", "10.96.0.10", Some(53)),
        );
        assert!(!f.matches(&dns));
        let port_53_elsewhere = dropped(s.clone(), end("-", "8.8.8.8", Some(53)));
        assert!(!f.matches(&port_53_elsewhere));
        let ks_other_port = dropped(s, end("kube-system/metrics", "10.96.0.11", Some(443)));
        assert!(!f.matches(&ks_other_port));
    }

    #[test]
    fn v6_cidrs_and_families_do_not_mix() {
        let r = dropped(
            end("dev/debug", "fd00:10:244:1::5", Some(41234)),
            end("-", "2001:db8::1", Some(443)),
        );
        let f = |nets_: &[&str]| Filter {
            include: crit(|c| c.ip = nets(nets_)),
            ..Filter::default()
        };
        assert!(f(&["fd00:10:244::/48"]).matches(&r));
        assert!(f(&["2001:db8::1"]).matches(&r));
        assert!(f(&["2001:db8::/32"]).matches(&r));
        assert!(!f(&["2001:db9::/32"]).matches(&r));
        assert!(!f(&["0.0.0.0/0"]).matches(&r));
        assert!(f(&["::/0"]).matches(&r));
        assert!(!f(&["::/0"]).matches(&record()));
    }

    #[test]
    fn ends_outside_the_cluster_match_no_pod_namespace_or_label() {
        let r = dropped(end("-", "1.2.3.4", Some(1)), end("-", "5.6.7.8", Some(2)));
        for c in [
            crit(|c| c.namespace = strings(&["default"])),
            crit(|c| c.pod = pods(&["default/*"])),
            crit(|c| c.label = labels(&["app"])),
        ] {
            let f = Filter {
                include: c,
                ..Filter::default()
            };
            assert!(!f.matches(&r), "{f:?}");
        }
    }

    #[test]
    fn icmp_names() {
        assert!(protocol_matches("ICMP", "ICMP"));
        assert!(protocol_matches("icmp", "ICMPv6"));
        assert!(protocol_matches("icmpv4", "ICMP"));
        assert!(!protocol_matches("icmpv4", "ICMPv6"));
        assert!(protocol_matches("icmpv6", "ICMPv6"));
        assert!(protocol_matches("icmp6", "ICMPv6"));
        assert!(!protocol_matches("icmp6", "ICMP"));
        assert!(protocol_matches("sctp", "SCTP"));
        assert!(protocol_matches("47", "proto-47"));
    }

    #[test]
    fn json_round_trip_and_unknown_fields_are_rejected() {
        let f = Filter {
            include: crit(|c| {
                c.verdict = vec![Verdict::Dropped];
                c.pod = pods(&["prod/back*"]);
                c.label = labels(&["app=web,tier"]);
                c.ip = nets(&["10.0.0.0/8", "fd00::1"]);
                c.direction = vec![Direction::Egress];
            }),
            exclude: crit(|c| c.namespace = strings(&["kube-system"])),
        };
        let json = serde_json::to_string(&f).unwrap();
        assert!(json.contains(r#""pod":["prod/back*"]"#), "{json}");
        assert_eq!(serde_json::from_str::<Filter>(&json).unwrap(), f);
        assert_eq!(serde_json::to_string(&Filter::default()).unwrap(), "{}");
        assert!(serde_json::from_str::<Filter>(r#"{"include":{"namespaces":["a"]}}"#).is_err());
        assert!(serde_json::from_str::<Filter>(r#"{"include":{"pod":["nope"]}}"#).is_err());
    }
}
