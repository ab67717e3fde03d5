//! `protocols` (v1alpha2) and `ports` (v1alpha1) entries, both into [`ProtocolMatch`]es, one
//! per entry and in written order.

use super::api::{
    AdminNetworkPolicyPort, ClusterNetworkPolicyProtocol, Port, PortNumber, ProtocolPortRange,
    ProtocolPorts,
};
use super::rules::ProtocolsIn;
use super::{check_max, unknown_fields, Version};
use crate::model::cluster_policy::ProtocolMatch;
use crate::model::convert::{parse_protocol, Ctx, InvalidObject};
use crate::model::Protocol;

/// A rule's protocols: `None` (every protocol and port) when absent or empty (FORMAT-CNP
/// section 2: the API refuses an empty list; it would count as absent).
pub(super) fn convert_protocols(
    ctx: &Ctx,
    version: &Version,
    base: &str,
    protocols: &ProtocolsIn,
) -> Result<Option<Vec<ProtocolMatch>>, InvalidObject> {
    let field = format!("{base}.{}", version.protocols_field);
    let converted = match protocols {
        ProtocolsIn::V1alpha2(None) | ProtocolsIn::V1alpha1(None) => return Ok(None),
        ProtocolsIn::V1alpha2(Some(entries)) => {
            check_max(ctx, &field, entries.len(), version.max_protocols)?;
            entries
                .iter()
                .enumerate()
                .map(|(i, e)| v1alpha2_entry(ctx, &format!("{field}[{i}]"), e))
                .collect::<Result<Vec<_>, _>>()?
        }
        ProtocolsIn::V1alpha1(Some(entries)) => {
            check_max(ctx, &field, entries.len(), version.max_protocols)?;
            entries
                .iter()
                .enumerate()
                .map(|(i, e)| v1alpha1_entry(ctx, &format!("{field}[{i}]"), e))
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    Ok(Some(converted).filter(|c| !c.is_empty()))
}

/// The one field set of a one-of object, with its name, or why there is not exactly one.
fn one_of<T>(
    ctx: &Ctx,
    base: &str,
    fields: Vec<(&'static str, Option<T>)>,
    other: &super::api::OtherFields,
) -> Result<(&'static str, T), InvalidObject> {
    let names: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
    let mut set: Vec<(&'static str, T)> = fields
        .into_iter()
        .filter_map(|(n, v)| v.map(|v| (n, v)))
        .collect();
    if set.len() > 1 {
        let found: Vec<&str> = set.iter().map(|(n, _)| *n).collect();
        return Err(ctx.err(
            base,
            format!("must specify exactly one field, found {}", found.join(", ")),
        ));
    }
    set.pop().ok_or_else(|| {
        ctx.err(
            base,
            format!(
                "must specify exactly one of {}{}",
                names.join(", "),
                unknown_fields(other)
            ),
        )
    })
}

/// What one entry's single field is, before conversion.
enum EntryField<'a> {
    Ports(Protocol, &'a ProtocolPorts),
    Named(&'a String),
}

/// One v1alpha2 entry: exactly one of `tcp`, `udp`, `sctp`, `destinationNamedPort`.
fn v1alpha2_entry<'a>(
    ctx: &Ctx,
    base: &str,
    e: &'a ClusterNetworkPolicyProtocol,
) -> Result<ProtocolMatch, InvalidObject> {
    // An empty name is how Go's `omitempty` reads an absent one.
    let named = e.destination_named_port.as_ref().filter(|n| !n.is_empty());
    let ports = |p: Protocol, f: &'a Option<ProtocolPorts>| {
        f.as_ref().map(|ports| EntryField::Ports(p, ports))
    };
    let fields = vec![
        ("tcp", ports(Protocol::Tcp, &e.tcp)),
        ("udp", ports(Protocol::Udp, &e.udp)),
        ("sctp", ports(Protocol::Sctp, &e.sctp)),
        ("destinationNamedPort", named.map(EntryField::Named)),
    ];
    let (name, field) = one_of(ctx, base, fields, &e.other)?;
    let field_path = format!("{base}.{name}");
    match field {
        EntryField::Named(n) => Ok(ProtocolMatch::NamedPort(n.clone())),
        EntryField::Ports(protocol, ports) => {
            let (start, end) = match &ports.destination_port {
                // Every port of the protocol (the API requires destinationPort; FORMAT-CNP 2).
                None => (0, u16::MAX),
                Some(port) => v1alpha2_port(ctx, &format!("{field_path}.destinationPort"), port)?,
            };
            Ok(ProtocolMatch::Ports {
                protocol,
                start,
                end,
            })
        }
    }
}

/// `destinationPort`: exactly one of `number` and `range`.
fn v1alpha2_port(ctx: &Ctx, base: &str, p: &Port) -> Result<(u16, u16), InvalidObject> {
    match (p.number, &p.range) {
        (Some(n), None) => {
            let n = port_number(ctx, &format!("{base}.number"), Some(n))?;
            Ok((n, n))
        }
        (None, Some(r)) => port_range(ctx, &format!("{base}.range"), r.start, r.end),
        (Some(_), Some(_)) => {
            Err(ctx.err(base, "must specify exactly one field, found number, range"))
        }
        (None, None) => Err(ctx.err(
            base,
            format!(
                "must specify exactly one of number, range{}",
                unknown_fields(&p.other)
            ),
        )),
    }
}

/// What one v1alpha1 entry's single field is.
enum PortField<'a> {
    Number(&'a PortNumber),
    Named(&'a String),
    Range(&'a ProtocolPortRange),
}

/// One v1alpha1 entry: exactly one of `portNumber`, `namedPort`, `portRange`; the protocol is
/// TCP when absent (the CRD's default).
fn v1alpha1_entry(
    ctx: &Ctx,
    base: &str,
    e: &AdminNetworkPolicyPort,
) -> Result<ProtocolMatch, InvalidObject> {
    let named = e.named_port.as_ref().filter(|n| !n.is_empty());
    let fields = vec![
        ("portNumber", e.port_number.as_ref().map(PortField::Number)),
        ("namedPort", named.map(PortField::Named)),
        ("portRange", e.port_range.as_ref().map(PortField::Range)),
    ];
    let (name, field) = one_of(ctx, base, fields, &e.other)?;
    let field_path = format!("{base}.{name}");
    match field {
        PortField::Named(n) => Ok(ProtocolMatch::NamedPort(n.clone())),
        PortField::Number(p) => {
            let protocol = parse_protocol(ctx, &format!("{field_path}.protocol"), &p.protocol)?;
            let n = port_number(ctx, &format!("{field_path}.port"), p.port)?;
            Ok(ProtocolMatch::Ports {
                protocol,
                start: n,
                end: n,
            })
        }
        PortField::Range(r) => {
            let protocol = parse_protocol(ctx, &format!("{field_path}.protocol"), &r.protocol)?;
            let (start, end) = port_range(ctx, &field_path, r.start, r.end)?;
            Ok(ProtocolMatch::Ports {
                protocol,
                start,
                end,
            })
        }
    }
}

/// A required port number, 1..=65535.
fn port_number(ctx: &Ctx, field: &str, n: Option<i64>) -> Result<u16, InvalidObject> {
    let n = n.ok_or_else(|| ctx.err(field, "required"))?;
    u16::try_from(n)
        .ok()
        .filter(|n| *n != 0)
        .ok_or_else(|| ctx.err(field, format!("{n} must be between 1 and 65535, inclusive")))
}

/// `start` and `end`, each 1..=65535, `start < end` (both ends included in the match).
fn port_range(
    ctx: &Ctx,
    base: &str,
    start: Option<i64>,
    end: Option<i64>,
) -> Result<(u16, u16), InvalidObject> {
    let start = port_number(ctx, &format!("{base}.start"), start)?;
    let end = port_number(ctx, &format!("{base}.end"), end)?;
    if start >= end {
        return Err(ctx.err(
            base,
            format!("start ({start}) must be less than end ({end})"),
        ));
    }
    Ok((start, end))
}
