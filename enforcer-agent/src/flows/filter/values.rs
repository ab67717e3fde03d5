//! The values of the filter flags (`--verdict`, `--pod NS/NAME*`, `--label k=v`, `--ip CIDR`,
//! `--policy`, `--direction`, `--reason`, ...): their types, parsers and how one value matches a
//! flow end.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::compile::tables::Direction;
use crate::flows::enrich::{FlowEnd, FlowRecord};

/// A value of a filter flag that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterParseError {
    #[error("`{input}` is not NAMESPACE/POD (a trailing `*` matches a name prefix)")]
    Pod { input: String },
    #[error("`{input}` is not NAMESPACE/NAME (or Kind/name for a cluster policy)")]
    Policy { input: String },
    #[error("`{input}` is not a tier: admin, networkpolicy or baseline")]
    Tier { input: String },
    #[error("`{input}` is not a label selector (KEY=VALUE or KEY, comma-separated)")]
    Label { input: String },
    #[error("`{input}` is neither an IP address nor a CIDR")]
    Ip { input: String },
    #[error("`{input}` is not a direction (ingress or egress)")]
    Direction { input: String },
    #[error("`{input}` is not a verdict (allowed, dropped or audit)")]
    Verdict { input: String },
    #[error("`{input}` is not a drop reason; known reasons: {known}")]
    Reason { input: String, known: String },
}

/// `allowed`, `dropped` or `audit` (denied by policy, passed in audit mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allowed,
    Dropped,
    Audit,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Dropped => "dropped",
            Verdict::Audit => "audit",
        }
    }
}

impl FromStr for Verdict {
    type Err = FilterParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "allowed" => Ok(Verdict::Allowed),
            "dropped" => Ok(Verdict::Dropped),
            "audit" => Ok(Verdict::Audit),
            _ => Err(FilterParseError::Verdict { input: s.into() }),
        }
    }
}

/// What a record reports: a connection allowed (`new`), a connection's end with its counts
/// (`end`), or a dropped packet (`drop`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    New,
    End,
    Drop,
}

impl EventKind {
    pub fn of(r: &FlowRecord) -> EventKind {
        if r.end.is_some() {
            EventKind::End
        } else if r.verdict.eq_ignore_ascii_case("dropped") {
            EventKind::Drop
        } else {
            EventKind::New
        }
    }
}

/// `NAMESPACE/POD`, or `NAMESPACE/PREFIX*` for every pod whose name starts with PREFIX
/// (`prod/*`: every pod of `prod`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PodPattern {
    pub namespace: String,
    pub name: String,
    pub prefix: bool,
}

impl FromStr for PodPattern {
    type Err = FilterParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || FilterParseError::Pod { input: s.into() };
        let (ns, name) = s.split_once('/').ok_or_else(err)?;
        if ns.is_empty() || name.contains('/') {
            return Err(err());
        }
        let (name, prefix) = match name.strip_suffix('*') {
            Some(p) => (p, true),
            None if name.is_empty() => return Err(err()),
            None => (name, false),
        };
        Ok(PodPattern {
            namespace: ns.into(),
            name: name.into(),
            prefix,
        })
    }
}

impl TryFrom<String> for PodPattern {
    type Error = FilterParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for PodPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let star = if self.prefix { "*" } else { "" };
        write!(f, "{}/{}{star}", self.namespace, self.name)
    }
}

impl From<PodPattern> for String {
    fn from(p: PodPattern) -> String {
        p.to_string()
    }
}

impl PodPattern {
    pub(super) fn matches(&self, end: &FlowEnd) -> bool {
        let (Some(ns), Some(pod)) = (&end.namespace, &end.pod) else {
            return false;
        };
        **ns == *self.namespace
            && if self.prefix {
                pod.starts_with(&self.name)
            } else {
                **pod == *self.name
            }
    }
}

/// `KEY=VALUE` or `KEY` (the label is present), comma-separated requirements all of which
/// must hold on the same end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LabelSelector {
    pub requirements: Vec<(String, Option<String>)>,
}

impl FromStr for LabelSelector {
    type Err = FilterParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || FilterParseError::Label { input: s.into() };
        let requirements = s
            .split(',')
            .map(|req| {
                let (k, v) = match req.split_once('=') {
                    Some((k, v)) => (k.trim(), Some(v.trim().to_string())),
                    None => (req.trim(), None),
                };
                if k.is_empty() || k.contains(char::is_whitespace) {
                    return Err(err());
                }
                Ok((k.to_string(), v))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LabelSelector { requirements })
    }
}

impl TryFrom<String> for LabelSelector {
    type Error = FilterParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match v {
                Some(v) => write!(f, "{k}={v}")?,
                None => f.write_str(k)?,
            }
        }
        Ok(())
    }
}

impl From<LabelSelector> for String {
    fn from(l: LabelSelector) -> String {
        l.to_string()
    }
}

impl LabelSelector {
    pub(super) fn matches(&self, labels: &crate::model::Labels) -> bool {
        self.requirements.iter().all(|(k, v)| match v {
            Some(v) => labels.get(k) == Some(v),
            None => labels.contains_key(k),
        })
    }
}

/// An address (as a host prefix) or a CIDR.
pub fn parse_ip_or_cidr(s: &str) -> Result<IpNet, FilterParseError> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| FilterParseError::Ip { input: s.into() })
}

/// `NAMESPACE/NAME` of a policy.
pub fn parse_policy(s: &str) -> Result<String, FilterParseError> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(s.to_string())
        }
        _ => Err(FilterParseError::Policy { input: s.into() }),
    }
}

/// `admin`, `networkpolicy` (also `np`) or `baseline`, any case.
pub fn parse_tier(s: &str) -> Result<String, FilterParseError> {
    match s.to_ascii_lowercase().as_str() {
        t @ ("admin" | "networkpolicy" | "baseline") => Ok(t.to_owned()),
        "np" => Ok("networkpolicy".to_owned()),
        _ => Err(FilterParseError::Tier { input: s.into() }),
    }
}

pub fn parse_direction(s: &str) -> Result<Direction, FilterParseError> {
    match s.to_ascii_lowercase().as_str() {
        "ingress" => Ok(Direction::Ingress),
        "egress" => Ok(Direction::Egress),
        _ => Err(FilterParseError::Direction { input: s.into() }),
    }
}

/// A drop reason name as in the records (`policy_denied`; `-` is accepted for `_`), or
/// `unknown_N` for a reason this agent has no name for.
pub fn parse_reason(s: &str) -> Result<String, FilterParseError> {
    let norm = s.to_ascii_lowercase().replace('-', "_");
    let known = enforcer_common::reason::DropReason::ALL.map(|r| r.name());
    let unknown_n = norm
        .strip_prefix("unknown_")
        .is_some_and(|n| n.parse::<u8>().is_ok());
    if known.contains(&norm.as_str()) || unknown_n {
        Ok(norm)
    } else {
        Err(FilterParseError::Reason {
            input: s.into(),
            known: known.join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_reject_malformed_values() {
        for bad in ["backend", "/backend", "prod/", "a/b/c"] {
            assert!(bad.parse::<PodPattern>().is_err(), "{bad}");
        }
        assert_eq!(
            "prod/*".parse::<PodPattern>().unwrap(),
            PodPattern {
                namespace: "prod".into(),
                name: String::new(),
                prefix: true
            }
        );
        for bad in ["", "=v", "a=b,", "a b=c"] {
            assert!(bad.parse::<LabelSelector>().is_err(), "{bad:?}");
        }
        assert!(parse_ip_or_cidr("10.0.0.0/33").is_err());
        assert!(parse_ip_or_cidr("pod").is_err());
        assert!(parse_policy("default-deny").is_err());
        assert_eq!(parse_reason("Policy-Denied").unwrap(), "policy_denied");
        assert_eq!(parse_reason("unknown_200").unwrap(), "unknown_200");
        assert!(matches!(
            parse_reason("denied"),
            Err(FilterParseError::Reason { .. })
        ));
        assert_eq!(parse_direction("EGRESS").unwrap(), Direction::Egress);
        assert!(parse_direction("out").is_err());
        assert_eq!("Dropped".parse::<Verdict>().unwrap(), Verdict::Dropped);
    }
}
