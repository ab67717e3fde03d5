//! `enforcer lab wait`: returns once a lab on an API (`lab up --kubeconfig`) has applied the
//! API's state as of the call: the controller built the pods and Services, and every node's
//! agent enforces for them.
//!
//! Each participant (the controller and every agent) reports, per kind, what its last applied
//! snapshot held ([`KindRevision`]). A kind is up to date for a participant when
//! - its digest equals the digest of a list of that kind taken since the call (the same
//!   objects at the same versions), or
//! - it applied a watch event at least as new as the first such list (a watch delivers a
//!   kind's events in order: everything up to the list was applied too).
//!
//! A kind of the network-policy-api CRDs whose list answers 404 (the CRD is not installed)
//! counts as empty, which is how the agents hold it.
//!
//! Besides, every pod the controller built must be attached by its node's agent, and no
//! agent may have pods pending.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use enforcer_agent::model::cluster_policy_api::{
    AdminNetworkPolicyObject, BaselineAdminNetworkPolicyObject, ClusterNetworkPolicyObject,
};
use enforcer_agent::source::kube::{CRD_KINDS, KINDS};
use enforcer_agent::source::revision::{self, KindRevision};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::ListParams;
use kube::{Api, Client, Resource};

use crate::instance::{log_tail, pid_alive};
use crate::state::{AgentStatus, ControllerStatus, LabState};

/// How often the API is listed again while waiting.
const RELIST: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(100);

/// One kind as the API lists it.
#[derive(Debug, Clone)]
struct Listed {
    digest: String,
    /// The list's resourceVersion (the API's state it shows).
    version: Option<u64>,
}

async fn list_kind<K>(client: &Client) -> anyhow::Result<Listed>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let api = Api::<K>::all(client.clone());
    let mut metas = Vec::new();
    let mut version = None;
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(500);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await?;
        // The first page's version is the whole list's.
        if version.is_none() {
            version = revision::version_number(page.metadata.resource_version.as_deref());
        }
        metas.extend(page.items.into_iter().map(|o| o.meta().clone()));
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    Ok(Listed {
        digest: revision::digest(&metas).1,
        version,
    })
}

/// A kind of [`CRD_KINDS`] whose CRD is not installed (its list answers 404): as the agent
/// holds it, none of it, at no particular version.
fn not_installed() -> Listed {
    Listed {
        digest: revision::digest_keys([]).1,
        version: None,
    }
}

async fn list_all(client: &Client) -> anyhow::Result<BTreeMap<&'static str, Listed>> {
    let mut out = BTreeMap::new();
    for kind in KINDS {
        let listed = match kind {
            "Namespace" => list_kind::<Namespace>(client).await,
            "Pod" => list_kind::<Pod>(client).await,
            "NetworkPolicy" => list_kind::<NetworkPolicy>(client).await,
            "Service" => list_kind::<Service>(client).await,
            "EndpointSlice" => list_kind::<EndpointSlice>(client).await,
            "Node" => list_kind::<Node>(client).await,
            "ClusterNetworkPolicy" => list_kind::<ClusterNetworkPolicyObject>(client).await,
            "AdminNetworkPolicy" => list_kind::<AdminNetworkPolicyObject>(client).await,
            "BaselineAdminNetworkPolicy" => {
                list_kind::<BaselineAdminNetworkPolicyObject>(client).await
            }
            other => bail!("lab wait does not know how to list {other}s"),
        };
        let listed = match listed {
            Err(e) if CRD_KINDS.contains(&kind) && is_not_found(&e) => Ok(not_installed()),
            other => other,
        }
        .with_context(|| format!("listing {kind}s"))?;
        out.insert(kind, listed);
    }
    Ok(out)
}

fn is_not_found(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<kube::Error>(), Some(kube::Error::Api(s)) if s.is_not_found())
}

/// Whether a participant's applied `kind` is as new as the API's at the call.
fn up_to_date(applied: Option<&KindRevision>, now: &Listed, at_call: Option<u64>) -> bool {
    let Some(applied) = applied else {
        return false;
    };
    applied.digest == now.digest
        || matches!((applied.newest, at_call), (Some(n), Some(c)) if n >= c)
}

/// What still differs, one line each (empty: in sync).
fn missing(
    state: &LabState,
    api: &BTreeMap<&'static str, Listed>,
    at_call: &BTreeMap<&'static str, Option<u64>>,
) -> Vec<String> {
    let mut out = Vec::new();
    let check = |out: &mut Vec<String>, who: &str, source: &BTreeMap<String, KindRevision>| {
        for (kind, now) in api {
            let applied = source.get(*kind);
            if !up_to_date(applied, now, at_call[kind]) {
                out.push(match applied {
                    Some(a) => format!(
                        "{who}: has not applied the API's {kind}s (applied {} objects, digest {}; the API lists digest {})",
                        a.objects, a.digest, now.digest
                    ),
                    None => format!("{who}: has not applied any {kind}s yet"),
                });
            }
        }
    };
    match ControllerStatus::read(&state.paths) {
        Some(c) => {
            check(&mut out, "the lab (pods, kube-proxy)", &c.source);
            for err in &c.errors {
                out.push(format!("the lab: {err}"));
            }
        }
        None => out.push("the lab's controller has not reported yet".into()),
    }
    for node in &state.nodes {
        let who = format!("node {}'s agent", node.spec.name);
        let Some(status) = AgentStatus::read(&node.paths.status_file) else {
            out.push(format!("{who}: no status yet (still starting?)"));
            continue;
        };
        check(&mut out, &who, &status.source);
        for pod in &status.pending {
            out.push(format!(
                "{who}: pod {pod} is pending (interface not found yet)"
            ));
        }
        for pod in state.pods.iter().filter(|p| p.node == node.spec.name) {
            match status.endpoints.get(&pod.key()) {
                Some(ep) if ep.attached => {}
                _ => out.push(format!("{who}: pod {} is not attached yet", pod.key())),
            }
        }
    }
    out
}

/// Fails at once when a process of the lab is gone (waiting would only time out).
fn check_alive(state: &LabState) -> anyhow::Result<()> {
    let log = ControllerStatus::log_path(&state.paths);
    match state.controller_pid {
        Some(pid) if pid_alive(pid) => {}
        _ => bail!(
            "lab {:?}'s controller is not running; controller.log tail:\n{}",
            state.name,
            log_tail(&log, 30)
        ),
    }
    for node in &state.nodes {
        if let Some(pid) = node.agent_pid {
            if !pid_alive(pid) {
                bail!(
                    "node {}'s agent (pid {pid}) is not running; agent.log tail:\n{}",
                    node.spec.name,
                    log_tail(&node.paths.agent_log, 30)
                );
            }
        }
    }
    Ok(())
}

/// Waits until lab `name` has applied the API's state as of now; returns the versions waited
/// for, or fails after `timeout` with what is missing.
pub async fn wait(name: &str, timeout: Duration) -> anyhow::Result<String> {
    let started = Instant::now();
    let state = LabState::load(name)?;
    let kubeconfig = state.kubeconfig.clone().with_context(|| {
        format!(
            "lab {name:?} reads manifests, not an API (`lab up --kubeconfig` makes one that does)"
        )
    })?;
    let client = enforcer_agent::source::kube::client(Duration::from_secs(10), Some(&kubeconfig))
        .await
        .context("connecting to the Kubernetes API")?;
    let mut api = list_all(&client).await?;
    let at_call: BTreeMap<&'static str, Option<u64>> =
        api.iter().map(|(k, l)| (*k, l.version)).collect();
    let mut listed = Instant::now();
    loop {
        // Pods are added to state.json as the controller builds them.
        let state = LabState::load(name)?;
        check_alive(&state)?;
        let missing = missing(&state, &api, &at_call);
        if missing.is_empty() {
            let unplaced = ControllerStatus::read(&state.paths)
                .map(|c| c.unplaced)
                .unwrap_or_default();
            let mut msg = format!(
                "lab {name:?} has applied the API's state (resourceVersion {}) in {:.2}s: {} pods on {} nodes",
                at_call.values().flatten().max().map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
                started.elapsed().as_secs_f64(),
                state.pods.len(),
                state.nodes.len()
            );
            for pod in unplaced {
                msg.push_str(&format!("\nnot built: {pod}"));
            }
            return Ok(msg);
        }
        if started.elapsed() >= timeout {
            bail!(
                "lab {name:?} has not applied the API's state within {:.0?}:\n  {}",
                timeout,
                missing.join("\n  ")
            );
        }
        tokio::time::sleep(POLL).await;
        if listed.elapsed() >= RELIST {
            // Versions newer than the call also count: the digests follow the API.
            api = list_all(&client).await?;
            listed = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(digest: &str, newest: Option<u64>) -> KindRevision {
        KindRevision {
            objects: 1,
            digest: digest.into(),
            newest,
        }
    }

    #[test]
    fn a_kind_is_up_to_date_by_digest_or_by_a_newer_event() {
        let now = Listed {
            digest: "1:aa".into(),
            version: Some(50),
        };
        // The same objects at the same versions, however old the last event.
        assert!(up_to_date(Some(&applied("1:aa", Some(3))), &now, Some(40)));
        assert!(up_to_date(Some(&applied("1:aa", None)), &now, Some(40)));
        // Different objects: only an event at least as new as the call counts.
        assert!(!up_to_date(
            Some(&applied("1:bb", Some(39))),
            &now,
            Some(40)
        ));
        assert!(up_to_date(Some(&applied("1:bb", Some(40))), &now, Some(40)));
        assert!(up_to_date(Some(&applied("1:bb", Some(45))), &now, Some(40)));
        // Versions that are not numbers: the digest alone decides.
        assert!(!up_to_date(Some(&applied("1:bb", None)), &now, None));
        assert!(!up_to_date(None, &now, Some(40)));
    }

    #[test]
    fn a_crd_kind_not_installed_is_up_to_date_for_an_agent_holding_none() {
        let held = KindRevision {
            objects: 0,
            digest: revision::digest_keys([]).1,
            newest: Some(12),
        };
        assert!(up_to_date(Some(&held), &not_installed(), None));
        let holding = KindRevision {
            objects: 1,
            digest: revision::digest_keys([("", "p", "5")]).1,
            newest: Some(5),
        };
        assert!(!up_to_date(Some(&holding), &not_installed(), None));
    }
}
