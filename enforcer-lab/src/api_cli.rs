//! The commands of a lab that takes its cluster from a Kubernetes API: `lab up --kubeconfig`
//! (builds the nodes, starts the controller, waits for the first sync) and `lab wait`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use enforcer_agent::model::Cluster;
use enforcer_agent::source::kube::{client, KubeSource};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::ListParams;
use kube::Api;

use crate::args::{UpArgs, WaitArgs};
use crate::instance::{down_instance, log_tail, own_session, Lab, LabState};
use crate::placement::{validate_node_name, DEFAULT_NODE};
use crate::report::print_up_summary;
use crate::state::ControllerStatus;

/// How long `lab up` waits for the lab to apply the API's state.
const UP_TIMEOUT: Duration = Duration::from_secs(60);

/// `lab up --kubeconfig FILE --nodes A,B [--name N]`.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let given = args
        .kubeconfig
        .as_deref()
        .expect("called with --kubeconfig");
    let kubeconfig = std::fs::canonicalize(given)
        .with_context(|| format!("reading the kubeconfig {}", given.display()))?;
    check_nodes(&args.nodes)?;
    check_api(&kubeconfig).await?;

    let lab = Lab::create_for_api(&args.name, &args.nodes, &kubeconfig)?;
    // From here on the controller owns the lab's state; this process only watches it start.
    let state = lab.detach()?;
    let log_path = ControllerStatus::log_path(&state.paths);
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let exe = std::env::current_exe().context("finding the enforcer binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(["lab", "controller", "--name", &args.name]);
    for arg in &args.agent_args {
        cmd.arg(format!("--agent-arg={arg}"));
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    own_session(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(err) => {
            down_instance(&args.name);
            return Err(err).context("starting the lab's controller");
        }
    };
    let started = Instant::now();
    while ControllerStatus::read(&state.paths).is_none() {
        if let Some(exit) = child.try_wait()? {
            down_instance(&args.name);
            bail!(
                "the lab's controller exited ({exit}) before its first pass; the lab was removed. controller.log:\n{}",
                log_tail(&log_path, 40)
            );
        }
        if started.elapsed() > UP_TIMEOUT {
            bail!(
                "the lab's controller has not finished a first pass within {UP_TIMEOUT:?} (the lab stays up; `enforcer lab down --name {}` removes it). controller.log:\n{}",
                args.name,
                log_tail(&log_path, 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let synced = crate::wait::wait(&args.name, UP_TIMEOUT)
        .await
        .with_context(|| {
            format!(
                "lab {:?} is up but has not applied the API's state (`enforcer lab wait --name {}` waits longer; `enforcer lab down --name {}` removes it)",
                args.name, args.name, args.name
            )
        })?;
    eprintln!("{synced}");
    print_up_summary(&LabState::load(&args.name)?);
    Ok(())
}

/// `lab wait`.
pub async fn wait(args: WaitArgs) -> anyhow::Result<()> {
    let name = crate::instance::resolve_name(args.name);
    let msg = crate::wait::wait(&name, args.timeout).await?;
    println!("{msg}");
    Ok(())
}

/// The cluster as the API holds it now (one list of each kind).
pub async fn cluster_from_api(kubeconfig: &Path) -> anyhow::Result<Cluster> {
    let client = client(Duration::from_secs(10), Some(kubeconfig))
        .await
        .context("connecting to the Kubernetes API")?;
    let mut source = tokio::time::timeout(Duration::from_secs(30), KubeSource::start(client))
        .await
        .context("the Kubernetes API did not list every kind within 30 s")??;
    let (cluster, errors) = source.snapshot();
    for err in errors {
        eprintln!("warning: {err}");
    }
    Ok(cluster)
}

fn check_nodes(nodes: &[String]) -> anyhow::Result<()> {
    if nodes.is_empty() {
        bail!("--kubeconfig needs --nodes NODE,...: the API's nodes this lab plays (pods with that spec.nodeName)");
    }
    let mut seen = BTreeSet::new();
    for node in nodes {
        validate_node_name(node)?;
        if node == DEFAULT_NODE {
            bail!("node name {DEFAULT_NODE:?} is reserved for the lab's default node; use another");
        }
        if !seen.insert(node) {
            bail!("--nodes lists {node:?} twice");
        }
    }
    Ok(())
}

/// Fails early, with the API's answer, when the API cannot be used.
async fn check_api(kubeconfig: &Path) -> anyhow::Result<()> {
    let client = client(Duration::from_secs(10), Some(kubeconfig)).await?;
    let api = Api::<Namespace>::all(client);
    let lp = ListParams::default().limit(1);
    tokio::time::timeout(Duration::from_secs(15), api.list(&lp))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 15 s"))
        .and_then(|r| r.map(|_| ()).map_err(anyhow::Error::from))
        .with_context(|| {
            format!(
                "the Kubernetes API of {} cannot list Namespaces",
                kubeconfig.display()
            )
        })
}
