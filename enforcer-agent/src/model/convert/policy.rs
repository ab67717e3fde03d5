//! NetworkPolicies from the API's objects: defaults (policyTypes, the protocol), selectors,
//! peers and ports validated as the API server validates them.

use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;

pub fn network_policy_from_k8s(np: &net::NetworkPolicy) -> Result<NetworkPolicy, InvalidObject> {
    let key = PolicyKey::new(
        object_namespace("NetworkPolicy", &np.metadata)?,
        object_name("NetworkPolicy", &np.metadata)?,
    );
    let ctx = Ctx {
        kind: "NetworkPolicy",
        name: key.to_string(),
    };
    let empty = net::NetworkPolicySpec::default();
    let spec = np.spec.as_ref().unwrap_or(&empty);

    let pod_selector = match &spec.pod_selector {
        Some(sel) => convert_selector(&ctx, "spec.podSelector", sel)?,
        None => LabelSelector::default(),
    };

    let ingress = match &spec.ingress {
        None => None,
        Some(rules) => Some(
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let base = format!("spec.ingress[{i}]");
                    convert_rule(&ctx, &base, "from", r.from.as_deref(), r.ports.as_deref())
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let egress = match &spec.egress {
        None => None,
        Some(rules) => Some(
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let base = format!("spec.egress[{i}]");
                    convert_rule(&ctx, &base, "to", r.to.as_deref(), r.ports.as_deref())
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };

    let types = match spec.policy_types.as_deref() {
        // defaults.go: "Any policy that does not specify policyTypes implies at least Ingress",
        // plus Egress when egress rules are present.
        None | Some([]) => PolicyTypes {
            ingress: true,
            egress: egress.as_ref().is_some_and(|e| !e.is_empty()),
        },
        Some(list) => {
            if list.len() > 2 {
                return Err(ctx.err("spec.policyTypes", "must have at most 2 items"));
            }
            let mut types = PolicyTypes::default();
            for (i, t) in list.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => types.ingress = true,
                    "Egress" => types.egress = true,
                    other => {
                        return Err(ctx.err(
                            format!("spec.policyTypes[{i}]"),
                            format!("unsupported value {other:?}: supported values: \"Ingress\", \"Egress\""),
                        ))
                    }
                }
            }
            types
        }
    };

    Ok(NetworkPolicy {
        key,
        pod_selector,
        ingress,
        egress,
        types,
        staged: super::staged(&ctx, &np.metadata)?,
    })
}

fn convert_rule(
    ctx: &Ctx,
    base: &str,
    peers_name: &str,
    peers: Option<&[net::NetworkPolicyPeer]>,
    ports: Option<&[net::NetworkPolicyPort]>,
) -> Result<Rule, InvalidObject> {
    let ports = ports
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, p)| convert_port(ctx, &format!("{base}.ports[{i}]"), p))
        .collect::<Result<Vec<_>, _>>()?;
    let peers = peers
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, p)| convert_peer(ctx, &format!("{base}.{peers_name}[{i}]"), p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Rule { peers, ports })
}

fn convert_port(
    ctx: &Ctx,
    base: &str,
    p: &net::NetworkPolicyPort,
) -> Result<PortSpec, InvalidObject> {
    let protocol = parse_protocol(ctx, &format!("{base}.protocol"), &p.protocol)?;
    let port = match &p.port {
        None => None,
        Some(IntOrString::Int(n)) => Some(PortRef::Number(port_number(
            ctx,
            &format!("{base}.port"),
            *n,
        )?)),
        Some(IntOrString::String(name)) => {
            validate_port_name(ctx, &format!("{base}.port"), name)?;
            Some(PortRef::Name(name.clone()))
        }
    };
    let end_port = match (p.end_port, &port) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(ctx.err(
                format!("{base}.endPort"),
                "may not be specified when `port` is not specified",
            ))
        }
        (Some(_), Some(PortRef::Name(_))) => {
            return Err(ctx.err(
                format!("{base}.endPort"),
                "may not be specified when `port` is non-numeric",
            ))
        }
        (Some(end), Some(PortRef::Number(start))) => {
            let end = port_number(ctx, &format!("{base}.endPort"), end)?;
            if end < *start {
                return Err(ctx.err(
                    format!("{base}.endPort"),
                    "must be greater than or equal to `port`",
                ));
            }
            Some(end)
        }
    };
    Ok(PortSpec {
        protocol,
        port,
        end_port,
    })
}

fn convert_peer(
    ctx: &Ctx,
    base: &str,
    p: &net::NetworkPolicyPeer,
) -> Result<PeerSpec, InvalidObject> {
    let count = [
        p.pod_selector.is_some(),
        p.namespace_selector.is_some(),
        p.ip_block.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if count == 0 {
        return Err(ctx.err(base, "must specify a peer"));
    }
    if let Some(block) = &p.ip_block {
        if count > 1 {
            return Err(ctx.err(
                base,
                "may not specify more than 1 peer when `ipBlock` is specified",
            ));
        }
        let cidr_field = format!("{base}.ipBlock.cidr");
        if block.cidr.is_empty() {
            return Err(ctx.err(cidr_field, "required"));
        }
        let cidr = parse_cidr(ctx, &cidr_field, &block.cidr)?;
        let mut except = Vec::new();
        for (i, e) in block
            .except
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let field = format!("{base}.ipBlock.except[{i}]");
            let e_net = parse_cidr(ctx, &field, e)?;
            if !(cidr.contains(&e_net) && e_net.prefix_len() > cidr.prefix_len()) {
                return Err(ctx.err(field, format!("{e:?} must be a strict subset of `cidr`")));
            }
            except.push(e_net);
        }
        return Ok(PeerSpec::IpBlock { cidr, except });
    }
    let namespace = p
        .namespace_selector
        .as_ref()
        .map(|s| convert_selector(ctx, &format!("{base}.namespaceSelector"), s))
        .transpose()?;
    let pod = p
        .pod_selector
        .as_ref()
        .map(|s| convert_selector(ctx, &format!("{base}.podSelector"), s))
        .transpose()?;
    Ok(PeerSpec::Selector { namespace, pod })
}

/// A `metav1.LabelSelector`, validated as the API server validates it (also for the cluster
/// policies' selectors).
pub(in crate::model) fn convert_selector(
    ctx: &Ctx,
    base: &str,
    sel: &meta::LabelSelector,
) -> Result<LabelSelector, InvalidObject> {
    let match_labels = sel.match_labels.clone().unwrap_or_default();
    validate_labels(ctx, &format!("{base}.matchLabels"), &match_labels)?;
    let match_labels: Labels = match_labels.into_iter().collect();
    let mut match_expressions = Vec::new();
    for (i, req) in sel
        .match_expressions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let field = format!("{base}.matchExpressions[{i}]");
        validate_label_key(ctx, &format!("{field}.key"), &req.key)?;
        let values = req.values.clone().unwrap_or_default();
        let key = req.key.clone();
        let needs_values = match req.operator.as_str() {
            "In" | "NotIn" => true,
            "Exists" | "DoesNotExist" => false,
            other => {
                return Err(ctx.err(
                    format!("{field}.operator"),
                    format!("not a valid selector operator: {other:?}"),
                ))
            }
        };
        if needs_values && values.is_empty() {
            return Err(ctx.err(
                format!("{field}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            ));
        }
        if !needs_values && !values.is_empty() {
            return Err(ctx.err(
                format!("{field}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            ));
        }
        for (j, v) in values.iter().enumerate() {
            validate_label_value(ctx, &format!("{field}.values[{j}]"), v)?;
        }
        match_expressions.push(match req.operator.as_str() {
            "In" => Requirement::In { key, values },
            "NotIn" => Requirement::NotIn { key, values },
            "Exists" => Requirement::Exists { key },
            _ => Requirement::DoesNotExist { key },
        });
    }
    Ok(LabelSelector {
        match_labels,
        match_expressions,
    })
}
