//! Conversion of `v1` Services and `discovery.k8s.io/v1` EndpointSlices, with the API
//! server's defaulting and the validation that matters for translation
//! (`pkg/apis/core/validation` ValidateService, `pkg/apis/discovery/validation`): what it would
//! reject is rejected here, naming the object, the field and the reason.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    EndpointSlice, IpFamily, Service, ServiceKey, ServicePort, SliceEndpoint, SliceKey, SlicePort,
    TargetPort, TrafficPolicy, SERVICE_NAME_LABEL,
};
use crate::model::convert::{
    object_name, object_namespace, parse_ip, parse_protocol, port_number, validate_labels,
    validate_port_name, Ctx,
};
use crate::model::InvalidObject;

pub fn service_from_k8s(svc: &core::Service) -> Result<Service, InvalidObject> {
    let key = ServiceKey::new(
        object_namespace("Service", &svc.metadata)?,
        object_name("Service", &svc.metadata)?,
    );
    let ctx = Ctx {
        kind: "Service",
        name: key.to_string(),
    };
    let empty = core::ServiceSpec::default();
    let spec = svc.spec.as_ref().unwrap_or(&empty);

    let ty = service_type(&ctx, spec)?;
    let cluster_ips = if ty == "ExternalName" {
        Vec::new()
    } else {
        cluster_ips(&ctx, spec)?
    };

    let ports = service_ports(&ctx, spec)?;

    let selector = match &spec.selector {
        Some(sel) if !sel.is_empty() => {
            validate_labels(&ctx, "spec.selector", sel)?;
            Some(sel.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        }
        _ => None,
    };
    let internal_traffic = internal_traffic(&ctx, spec)?;
    let affinity_timeout = affinity_timeout(&ctx, spec)?;
    Ok(Service {
        key,
        cluster_ips,
        selector,
        ports,
        internal_traffic,
        affinity_timeout,
    })
}

/// `spec.type` (default ClusterIP), one the API server knows.
fn service_type<'a>(ctx: &Ctx, spec: &'a core::ServiceSpec) -> Result<&'a str, InvalidObject> {
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !matches!(
        ty,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        return Err(ctx.err(
            "spec.type",
            format!("unsupported value {ty:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
        ));
    }
    Ok(ty)
}

/// `spec.ports`: each valid, named when there are several, no name and no port/protocol twice.
fn service_ports(ctx: &Ctx, spec: &core::ServiceSpec) -> Result<Vec<ServicePort>, InvalidObject> {
    let ports = spec
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, p)| service_port(ctx, i, p))
        .collect::<Result<Vec<_>, _>>()?;
    if ports.len() > 1 {
        let mut names = BTreeSet::new();
        for (i, p) in ports.iter().enumerate() {
            match &p.name {
                None => {
                    return Err(ctx.err(
                        format!("spec.ports[{i}].name"),
                        "required when there is more than one port",
                    ))
                }
                Some(n) if !names.insert(n.as_str()) => {
                    return Err(ctx.err(
                        format!("spec.ports[{i}].name"),
                        format!("duplicate value {n:?}"),
                    ))
                }
                Some(_) => {}
            }
        }
    }
    let mut seen = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        if !seen.insert((p.port, p.protocol)) {
            return Err(ctx.err(
                format!("spec.ports[{i}]"),
                format!("duplicate port {}/{}", p.port, p.protocol),
            ));
        }
    }
    Ok(ports)
}

/// `spec.internalTrafficPolicy` (default Cluster).
fn internal_traffic(ctx: &Ctx, spec: &core::ServiceSpec) -> Result<TrafficPolicy, InvalidObject> {
    let internal_traffic = match spec.internal_traffic_policy.as_deref() {
        None | Some("Cluster") => TrafficPolicy::Cluster,
        Some("Local") => TrafficPolicy::Local,
        Some(other) => {
            return Err(ctx.err(
                "spec.internalTrafficPolicy",
                format!("unsupported value {other:?}: supported values: \"Cluster\", \"Local\""),
            ))
        }
    };
    Ok(internal_traffic)
}

/// With `spec.sessionAffinity: ClientIP`: its timeout in seconds (default 3 hours).
fn affinity_timeout(ctx: &Ctx, spec: &core::ServiceSpec) -> Result<Option<u32>, InvalidObject> {
    let affinity_timeout = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10_800);
            if !(1..=86_400).contains(&t) {
                return Err(ctx.err(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    format!("{t} must be greater than 0 and less than or equal to 86400"),
                ));
            }
            Some(t as u32)
        }
        Some(other) => {
            return Err(ctx.err(
                "spec.sessionAffinity",
                format!("unsupported value {other:?}: supported values: \"ClientIP\", \"None\""),
            ))
        }
    };
    Ok(affinity_timeout)
}

/// `spec.clusterIPs` (or `spec.clusterIP`), with `None` meaning headless.
fn cluster_ips(ctx: &Ctx, spec: &core::ServiceSpec) -> Result<Vec<IpAddr>, InvalidObject> {
    let listed: Vec<String> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.clone(),
        (_, Some(ip)) if !ip.is_empty() => vec![ip.clone()],
        // Not allocated yet (or a manifest without one): nothing to translate.
        _ => return Ok(Vec::new()),
    };
    if let (Some(first), Some(ip)) = (listed.first(), spec.cluster_ip.as_deref()) {
        if !ip.is_empty() && ip != first {
            return Err(ctx.err(
                "spec.clusterIPs[0]",
                format!("must match spec.clusterIP {ip:?}"),
            ));
        }
    }
    if listed.iter().any(|ip| ip == "None") {
        if listed.len() > 1 {
            return Err(ctx.err(
                "spec.clusterIPs",
                "\"None\" must be the only value of a headless Service",
            ));
        }
        return Ok(Vec::new());
    }
    if listed.len() > 2 {
        return Err(ctx.err("spec.clusterIPs", "may hold at most two addresses"));
    }
    let mut ips = Vec::new();
    for (i, text) in listed.iter().enumerate() {
        let ip = parse_ip(ctx, &format!("spec.clusterIPs[{i}]"), text)?;
        if ips
            .iter()
            .any(|other| IpFamily::of(other) == IpFamily::of(&ip))
        {
            return Err(ctx.err(
                format!("spec.clusterIPs[{i}]"),
                "must be of a different family than the other address",
            ));
        }
        ips.push(ip);
    }
    Ok(ips)
}

fn service_port(ctx: &Ctx, i: usize, p: &core::ServicePort) -> Result<ServicePort, InvalidObject> {
    let base = format!("spec.ports[{i}]");
    let port = port_number(ctx, &format!("{base}.port"), p.port)?;
    let protocol = parse_protocol(ctx, &format!("{base}.protocol"), &p.protocol)?;
    let name = p.name.clone().filter(|n| !n.is_empty());
    let target = match &p.target_port {
        None => TargetPort::Number(port),
        // The API server defaults a zero or empty target port to the port.
        Some(IntOrString::Int(0)) => TargetPort::Number(port),
        Some(IntOrString::String(s)) if s.is_empty() => TargetPort::Number(port),
        Some(IntOrString::Int(n)) => {
            TargetPort::Number(port_number(ctx, &format!("{base}.targetPort"), *n)?)
        }
        Some(IntOrString::String(s)) => {
            validate_port_name(ctx, &format!("{base}.targetPort"), s)?;
            TargetPort::Name(s.clone())
        }
    };
    Ok(ServicePort {
        name,
        port,
        protocol,
        target,
    })
}

/// An EndpointSlice. An FQDN slice converts with no family and no endpoints: there is no
/// address to send traffic to.
pub fn endpoint_slice_from_k8s(
    slice: &discovery::EndpointSlice,
) -> Result<EndpointSlice, InvalidObject> {
    let key = SliceKey::new(
        object_namespace("EndpointSlice", &slice.metadata)?,
        object_name("EndpointSlice", &slice.metadata)?,
    );
    let ctx = Ctx {
        kind: "EndpointSlice",
        name: key.to_string(),
    };
    let family = match slice.address_type.as_str() {
        "IPv4" => IpFamily::V4,
        "IPv6" => IpFamily::V6,
        "FQDN" => {
            return Ok(EndpointSlice {
                key,
                service: None,
                family: None,
                ports: Vec::new(),
                endpoints: Vec::new(),
            })
        }
        other => {
            return Err(ctx.err(
                "addressType",
                format!(
                    "unsupported value {other:?}: supported values: \"FQDN\", \"IPv4\", \"IPv6\""
                ),
            ))
        }
    };
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .cloned();
    let ports = slice
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let base = format!("ports[{i}]");
            Ok(SlicePort {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port: p
                    .port
                    .map(|n| port_number(&ctx, &format!("{base}.port"), n))
                    .transpose()?,
                protocol: parse_protocol(&ctx, &format!("{base}.protocol"), &p.protocol)?,
            })
        })
        .collect::<Result<Vec<_>, InvalidObject>>()?;
    let mut endpoints = Vec::new();
    for (i, ep) in slice.endpoints.iter().enumerate() {
        if ep.addresses.is_empty() || ep.addresses.len() > 100 {
            return Err(ctx.err(
                format!("endpoints[{i}].addresses"),
                "must hold between 1 and 100 addresses",
            ));
        }
        let mut addresses = Vec::new();
        for (j, text) in ep.addresses.iter().enumerate() {
            let field = format!("endpoints[{i}].addresses[{j}]");
            let ip = parse_ip(&ctx, &field, text)?;
            if IpFamily::of(&ip) != family {
                return Err(ctx.err(
                    field,
                    format!("{text:?} is not an {} address", family.as_str()),
                ));
            }
            addresses.push(ip);
        }
        endpoints.push(SliceEndpoint {
            addresses,
            ready: ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            node: ep.node_name.clone().filter(|n| !n.is_empty()),
        });
    }
    Ok(EndpointSlice {
        key,
        service,
        family: Some(family),
        ports,
        endpoints,
    })
}
