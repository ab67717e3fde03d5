//! The Services of a step as the lab sees them: the cluster model of the manifests the agents
//! read (the model's own derivation of endpoints, docs/scenario-format.md "Endpoints and
//! candidates", is the only one),
//! what each Service probe connects to and how often, and what each backend must serve.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use anyhow::bail;
use enforcer_agent::model::service::{candidates, Backend, EndpointIndex, IpFamily};
use enforcer_agent::model::{Cluster, Protocol, Service, ServiceKey};
use enforcer_agent::source::manifests::parse_file;
use enforcer_agent::source::objects::{cluster_of, Object};

use crate::probe::ProbeTarget;
use crate::scenario::{Family, Probe, Proto};
use crate::servers::Endpoint;
use crate::topology::LivePod;

/// Connections per candidate backend in a Service cell (at least 4: docs/scenario-format.md
/// "Service probes"), and the least per cell (a cell without candidates still tries).
pub const ATTEMPTS_PER_CANDIDATE: usize = 4;
pub const MIN_ATTEMPTS: usize = 2;

/// The cluster model of manifest texts, and the objects that do not convert (reported by the
/// agents as well; the lab's kube-proxy, like the real one, only sees what the API accepted).
pub fn cluster_from_yaml(texts: &[&str]) -> (Cluster, Vec<String>) {
    let mut objects: Vec<Object> = Vec::new();
    let mut errors = Vec::new();
    for text in texts {
        let (parsed, errs) = parse_file(text);
        errors.extend(errs.into_iter().map(|(n, e)| format!("document {n}: {e}")));
        for (n, api) in parsed {
            match api.convert() {
                Ok(o) => objects.push(o),
                Err(e) => errors.push(format!("document {n}: {e}")),
            }
        }
    }
    (cluster_of(&objects), errors)
}

pub fn ip_family(f: Family) -> IpFamily {
    match f {
        Family::IPv4 => IpFamily::V4,
        Family::IPv6 => IpFamily::V6,
    }
}

pub fn model_protocol(p: Proto) -> Protocol {
    match p {
        Proto::Tcp => Protocol::Tcp,
        Proto::Udp => Protocol::Udp,
    }
}

/// Remembers every ClusterIP a Service had, so a probe may name a deleted Service (the client
/// connects to the address it had: docs/scenario-format.md "Service probes").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterIpMemory(pub BTreeMap<String, Vec<IpAddr>>);

impl ClusterIpMemory {
    pub fn remember(&mut self, cluster: &Cluster) {
        for svc in cluster.services.values() {
            if !svc.cluster_ips.is_empty() {
                self.0.insert(svc.key.to_string(), svc.cluster_ips.clone());
            }
        }
    }

    pub fn get(&self, service: &str, family: Family) -> Option<IpAddr> {
        let family = ip_family(family);
        self.0
            .get(service)?
            .iter()
            .copied()
            .find(|ip| IpFamily::of(ip) == family)
    }
}

/// The Services of one step.
pub struct StepServices<'a> {
    pub cluster: &'a Cluster,
    index: EndpointIndex<'a>,
}

impl<'a> StepServices<'a> {
    pub fn new(cluster: &'a Cluster) -> Self {
        Self {
            cluster,
            index: EndpointIndex::new(cluster),
        }
    }

    /// The Service a probe names and E(S, P, F), when S is present and has port P.
    pub fn endpoints(&self, probe: &Probe) -> Option<(&'a Service, Vec<Backend>)> {
        let key: ServiceKey = probe.service.as_deref()?.parse().ok()?;
        let svc = self.cluster.services.get(&key)?;
        let port = svc.port(probe.port, model_protocol(probe.protocol))?;
        Some((
            svc,
            self.index.endpoints(svc, port, ip_family(probe.family())),
        ))
    }

    /// How many backends a client on `node` may reach through the probe's Service port.
    pub fn candidate_count(&self, probe: &Probe, node: &str) -> usize {
        match self.endpoints(probe) {
            Some((svc, eps)) => candidates(svc, &eps, Some(node)).len(),
            None => 0,
        }
    }

    /// What every Service probe connects to: its ClusterIP of the probe's family (from this
    /// step, else from the step it last had one) and, per client row, how many connections
    /// measure the cell (none: the client has no address of the family, a `null` row).
    pub fn targets(
        &self,
        probes: &[Probe],
        pods: &[Arc<LivePod>],
        memory: &ClusterIpMemory,
    ) -> anyhow::Result<Vec<ProbeTarget>> {
        probes
            .iter()
            .map(|probe| {
                let Some(service) = &probe.service else {
                    return Ok(ProbeTarget::Pods);
                };
                let present = probe
                    .service
                    .as_deref()
                    .and_then(|s| s.parse::<ServiceKey>().ok())
                    .and_then(|k| self.cluster.services.get(&k))
                    .and_then(|s| s.cluster_ip(ip_family(probe.family())));
                let Some(ip) = present.or_else(|| memory.get(service, probe.family())) else {
                    bail!(
                        "probe {probe}: service {service} has no {} ClusterIP in this step or an earlier one",
                        probe.family()
                    );
                };
                let attempts = pods
                    .iter()
                    .filter(|p| p.state.ip(probe.family()).is_some())
                    .map(|p| {
                        let n = self.candidate_count(probe, &p.state.node);
                        (p.state.key(), (ATTEMPTS_PER_CANDIDATE * n).max(MIN_ATTEMPTS))
                    })
                    .collect();
                Ok(ProbeTarget::Service {
                    ip,
                    column: probe.service_column().expect("a Service probe"),
                    attempts,
                })
            })
            .collect()
    }

    /// The listeners Service probes need: every backend B serves every target port t (with
    /// the probe's protocol and family) of E(S, P, F) for each probed (S, P, F); keyed by
    /// the backend's `namespace/name`.
    pub fn backend_endpoints(&self, probes: &[Probe]) -> BTreeMap<String, BTreeSet<Endpoint>> {
        let mut out: BTreeMap<String, BTreeSet<Endpoint>> = BTreeMap::new();
        for probe in probes.iter().filter(|p| p.service.is_some()) {
            let Some((_, eps)) = self.endpoints(probe) else {
                continue;
            };
            for b in eps {
                if let Some(pod) = &b.pod {
                    out.entry(pod.to_string()).or_default().insert(Endpoint {
                        port: b.port,
                        protocol: probe.protocol,
                        family: probe.family(),
                    });
                }
            }
        }
        out
    }
}

/// Whether any step of a scenario has a Service or a Service probe: then the lab plays
/// kube-proxy on every node.
pub fn scenario_has_services(steps: &[crate::scenario::Step]) -> bool {
    steps.iter().any(|s| {
        s.probes.iter().any(|p| p.service.is_some())
            || !cluster_from_yaml(&[&s.cluster_yaml]).0.services.is_empty()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: y, labels: {app: web}}\n\
spec: {nodeName: node-a, containers: [{name: c, ports: [{containerPort: 8080, name: http}]}]}\n\
status: {podIP: 10.244.2.10, podIPs: [{ip: 10.244.2.10}, {ip: 'fd00:10:244:2::10'}]}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: y, labels: {app: web}}\n\
spec: {nodeName: node-b, containers: [{name: c, ports: [{containerPort: 9090, name: http}]}]}\n\
status: {podIP: 10.244.2.11}\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: y}\n\
spec: {clusterIP: 10.96.2.10, clusterIPs: [10.96.2.10, 'fd00:10:96:2::10'], ipFamilies: [IPv4, IPv6],\n\
  ipFamilyPolicy: RequireDualStack, internalTrafficPolicy: Local, selector: {app: web},\n\
  ports: [{name: http, port: 80, targetPort: http}, {name: dns, port: 53, protocol: UDP, targetPort: 5353}]}\n";

    fn probe(service: &str, port: u16, protocol: Proto, family: Option<Family>) -> Probe {
        Probe {
            service: Some(service.into()),
            port,
            protocol,
            family,
        }
    }

    #[test]
    fn endpoints_candidates_and_backend_servers_of_service_probes() {
        let (cluster, errors) = cluster_from_yaml(&[CLUSTER]);
        assert!(errors.is_empty(), "{errors:?}");
        let s = StepServices::new(&cluster);
        let http = probe("y/web", 80, Proto::Tcp, None);
        let (_, eps) = s.endpoints(&http).unwrap();
        assert_eq!(
            eps.iter()
                .map(|b| (b.ip.to_string(), b.port))
                .collect::<Vec<_>>(),
            [
                ("10.244.2.10".to_string(), 8080),
                ("10.244.2.11".to_string(), 9090)
            ]
        );
        // Local: each node sees its own backend.
        assert_eq!(s.candidate_count(&http, "node-a"), 1);
        assert_eq!(s.candidate_count(&http, "node-c"), 0);
        // Absent port (80/UDP) and absent Service: nothing.
        assert!(s.endpoints(&probe("y/web", 80, Proto::Udp, None)).is_none());
        assert!(s
            .endpoints(&probe("y/gone", 80, Proto::Tcp, None))
            .is_none());
        assert_eq!(
            s.candidate_count(&probe("y/gone", 80, Proto::Tcp, None), "node-a"),
            0
        );

        let probes = [
            http.clone(),
            probe("y/web", 53, Proto::Udp, Some(Family::IPv6)),
            Probe::pods(80, Proto::Tcp, None),
        ];
        let servers = s.backend_endpoints(&probes);
        let ep = |port, protocol, family| Endpoint {
            port,
            protocol,
            family,
        };
        assert_eq!(
            servers["y/a"],
            BTreeSet::from([
                ep(8080, Proto::Tcp, Family::IPv4),
                ep(5353, Proto::Udp, Family::IPv6)
            ])
        );
        assert_eq!(
            servers["y/b"],
            BTreeSet::from([ep(9090, Proto::Tcp, Family::IPv4)])
        );
    }

    #[test]
    fn cluster_ips_are_remembered_across_steps() {
        let (cluster, _) = cluster_from_yaml(&[CLUSTER]);
        let mut memory = ClusterIpMemory::default();
        memory.remember(&cluster);
        // A later step without the Service keeps what it had.
        memory.remember(&Cluster::default());
        assert_eq!(
            memory.get("y/web", Family::IPv4),
            Some("10.96.2.10".parse().unwrap())
        );
        assert_eq!(
            memory.get("y/web", Family::IPv6),
            Some("fd00:10:96:2::10".parse().unwrap())
        );
        assert_eq!(memory.get("y/other", Family::IPv4), None);
    }
}
