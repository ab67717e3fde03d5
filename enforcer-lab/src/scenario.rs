//! Scenario directories (see docs/scenario-format.md): parsing steps, probes and pods, the
//! result JSON shared by `expected.json` and measured results, and comparing the two.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use serde::{Deserialize, Serialize};

/// Errors of reading a scenario.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}")]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("parsing {path}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {kind} document #{index} is invalid")]
    Object {
        path: PathBuf,
        kind: String,
        index: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{path}: pod {pod} has no IPv4 address in status.podIP/podIPs")]
    NoPodIp { path: PathBuf, pod: String },
    #[error("{path}: pod {pod} has an invalid address {ip:?}")]
    BadPodIp {
        path: PathBuf,
        pod: String,
        ip: String,
    },
    #[error("{path}: pod {pod} appears twice")]
    DuplicatePod { path: PathBuf, pod: String },
    #[error("{dir}: has both top-level step files and a steps/ folder")]
    AmbiguousLayout { dir: PathBuf },
    #[error("{dir}: no steps (expected cluster.yaml/policies.yaml/probes.yaml or steps/NN/)")]
    NoSteps { dir: PathBuf },
    #[error("{path}: probe #{index} names service {service:?}; write it NAMESPACE/NAME")]
    BadServiceProbe {
        path: PathBuf,
        index: usize,
        service: String,
    },
}

/// Transport protocol of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Proto {
    #[serde(rename = "TCP", alias = "tcp")]
    Tcp,
    #[serde(rename = "UDP", alias = "udp")]
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        })
    }
}

/// Address family of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Family {
    IPv4,
    IPv6,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::IPv4 => "IPv4",
            Family::IPv6 => "IPv6",
        })
    }
}

fn default_proto() -> Proto {
    Proto::Tcp
}

/// One item of `probes.yaml`: a pod probe (every pod pair, docs/scenario-format.md "Pod probes
/// and how they are measured") or, with `service`, a Service probe (every pod to the Service's
/// ClusterIP, docs/scenario-format.md "Service probes").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// `NAMESPACE/NAME` of the Service; `port` is then a Service port, not a target port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub port: u16,
    #[serde(default = "default_proto")]
    pub protocol: Proto,
    /// As written; `None` means IPv4 and is kept so results echo the probe's shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<Family>,
}

impl Probe {
    /// A pod probe.
    pub fn pods(port: u16, protocol: Proto, family: Option<Family>) -> Self {
        Self {
            service: None,
            port,
            protocol,
            family,
        }
    }

    pub fn family(&self) -> Family {
        self.family.unwrap_or(Family::IPv4)
    }

    /// The matrix column of a Service probe: `service/NAMESPACE/NAME`.
    pub fn service_column(&self) -> Option<String> {
        self.service.as_ref().map(|s| format!("service/{s}"))
    }

    /// Whether two probes have the same key (docs/scenario-format.md "`expected.json` and
    /// results"): service, port, protocol and family, an absent family being IPv4.
    pub fn same_key(&self, other: &Probe) -> bool {
        self.service == other.service
            && self.port == other.port
            && self.protocol == other.protocol
            && self.family() == other.family()
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(svc) = &self.service {
            write!(f, "service {svc} ")?;
        }
        write!(f, "{}/{} {}", self.port, self.protocol, self.family())
    }
}

/// A pod of a step, reduced to what the lab needs to build it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    /// `spec.nodeName` as written (`None`: the lab places the pod).
    pub node: Option<String>,
}

impl PodSpec {
    /// `namespace/name`, the key used in result matrices.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One step: the complete desired state at that point.
#[derive(Debug, Clone)]
pub struct Step {
    /// `01`, `02`, ... for the steps/ layout; empty for a single-step scenario.
    pub name: String,
    pub dir: PathBuf,
    pub cluster_yaml: String,
    pub policies_yaml: String,
    pub pods: Vec<PodSpec>,
    pub namespaces: Vec<String>,
    pub policy_count: usize,
    pub probes: Vec<Probe>,
}

/// A scenario directory.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub dir: PathBuf,
    pub steps: Vec<Step>,
    /// `expected.json` when present.
    pub expected: Option<Results>,
}

const STEP_FILES: [&str; 3] = ["cluster.yaml", "policies.yaml", "probes.yaml"];

impl Scenario {
    /// Reads a scenario directory in either layout.
    pub fn load(dir: &Path) -> Result<Self, ScenarioError> {
        let has_top = STEP_FILES.iter().any(|f| dir.join(f).exists());
        let steps_dir = dir.join("steps");
        let steps = match (has_top, steps_dir.is_dir()) {
            (true, true) => {
                return Err(ScenarioError::AmbiguousLayout {
                    dir: dir.to_path_buf(),
                })
            }
            (true, false) => vec![Step::load(dir, String::new())?],
            (false, true) => {
                let mut names = Vec::new();
                for entry in
                    std::fs::read_dir(&steps_dir).map_err(|source| ScenarioError::Read {
                        path: steps_dir.clone(),
                        source,
                    })?
                {
                    let entry = entry.map_err(|source| ScenarioError::Read {
                        path: steps_dir.clone(),
                        source,
                    })?;
                    if entry.path().is_dir() {
                        names.push(entry.file_name().to_string_lossy().into_owned());
                    }
                }
                names.sort();
                names
                    .into_iter()
                    .map(|name| Step::load(&steps_dir.join(&name), name))
                    .collect::<Result<Vec<_>, _>>()?
            }
            (false, false) => Vec::new(),
        };
        if steps.is_empty() {
            return Err(ScenarioError::NoSteps {
                dir: dir.to_path_buf(),
            });
        }
        let expected_path = dir.join("expected.json");
        let expected = if expected_path.exists() {
            Some(Results::load(&expected_path)?)
        } else {
            None
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            steps,
            expected,
        })
    }

    /// Builds a single-step scenario from in-memory files (the built-in demo).
    pub fn from_strs(
        name: &str,
        cluster_yaml: &str,
        policies_yaml: &str,
        probes_yaml: &str,
    ) -> Result<Self, ScenarioError> {
        let dir = PathBuf::from(format!("<{name}>"));
        let step = Step::parse(
            &dir,
            String::new(),
            cluster_yaml.to_owned(),
            policies_yaml.to_owned(),
            probes_yaml,
        )?;
        Ok(Self {
            dir,
            steps: vec![step],
            expected: None,
        })
    }
}

fn read(path: &Path) -> Result<String, ScenarioError> {
    std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl Step {
    fn load(dir: &Path, name: String) -> Result<Self, ScenarioError> {
        let cluster = read(&dir.join("cluster.yaml"))?;
        let policies = read(&dir.join("policies.yaml"))?;
        let probes = read(&dir.join("probes.yaml"))?;
        Self::parse(dir, name, cluster, policies, &probes)
    }

    fn parse(
        dir: &Path,
        name: String,
        cluster_yaml: String,
        policies_yaml: String,
        probes_yaml: &str,
    ) -> Result<Self, ScenarioError> {
        let cluster_path = dir.join("cluster.yaml");
        let mut pods: Vec<PodSpec> = Vec::new();
        let mut namespaces = Vec::new();
        for (index, doc) in yaml_documents(&cluster_path, &cluster_yaml)?
            .into_iter()
            .enumerate()
        {
            let kind = doc.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            let object_err = |source| ScenarioError::Object {
                path: cluster_path.clone(),
                kind: kind.to_owned(),
                index,
                source,
            };
            match kind {
                "Namespace" => {
                    let ns: Namespace = serde_yaml::from_value(doc.clone()).map_err(object_err)?;
                    namespaces.push(ns.metadata.name.unwrap_or_default());
                }
                "Pod" => {
                    let pod: Pod = serde_yaml::from_value(doc.clone()).map_err(object_err)?;
                    let spec = pod_spec(&cluster_path, &pod)?;
                    if pods.iter().any(|p| p.key() == spec.key()) {
                        return Err(ScenarioError::DuplicatePod {
                            path: cluster_path,
                            pod: spec.key(),
                        });
                    }
                    pods.push(spec);
                }
                _ => {}
            }
        }
        let policy_count = yaml_documents(&dir.join("policies.yaml"), &policies_yaml)?.len();
        let probes_path = dir.join("probes.yaml");
        let probes = parse_probes(&probes_path, probes_yaml)?;
        Ok(Self {
            name,
            dir: dir.to_path_buf(),
            cluster_yaml,
            policies_yaml,
            pods,
            namespaces,
            policy_count,
            probes,
        })
    }

    /// Step label for messages: `1`, `2`, ... (1-based index) is added by callers; this is the
    /// folder name or `main`.
    pub fn label(&self) -> &str {
        if self.name.is_empty() {
            "main"
        } else {
            &self.name
        }
    }
}

/// Parses a `probes.yaml` (an empty file is no probes) and checks Service references.
pub fn parse_probes(path: &Path, text: &str) -> Result<Vec<Probe>, ScenarioError> {
    let probes: Option<Vec<Probe>> =
        serde_yaml::from_str(text).map_err(|source| ScenarioError::Yaml {
            path: path.to_path_buf(),
            source,
        })?;
    let probes = probes.unwrap_or_default();
    for (i, probe) in probes.iter().enumerate() {
        if let Some(svc) = &probe.service {
            let ok = matches!(svc.split_once('/'),
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/'));
            if !ok {
                return Err(ScenarioError::BadServiceProbe {
                    path: path.to_path_buf(),
                    index: i + 1,
                    service: svc.clone(),
                });
            }
        }
    }
    Ok(probes)
}

/// The non-empty documents of a multi-document YAML stream (empty or comment-only documents,
/// and so empty files, yield nothing).
pub fn yaml_documents(path: &Path, text: &str) -> Result<Vec<serde_yaml::Value>, ScenarioError> {
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(de).map_err(|source| ScenarioError::Yaml {
            path: path.to_path_buf(),
            source,
        })?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn pod_spec(path: &Path, pod: &Pod) -> Result<PodSpec, ScenarioError> {
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let key = format!("{namespace}/{name}");
    let status = pod.status.clone().unwrap_or_default();
    let mut raw: Vec<String> = status
        .pod_ips
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.ip)
        .collect();
    if let Some(ip) = status.pod_ip {
        raw.insert(0, ip);
    }
    let (mut ipv4, mut ipv6) = (None, None);
    for text in raw {
        let ip: IpAddr = text.parse().map_err(|_| ScenarioError::BadPodIp {
            path: path.to_path_buf(),
            pod: key.clone(),
            ip: text.clone(),
        })?;
        match ip {
            IpAddr::V4(v4) => {
                ipv4.get_or_insert(v4);
            }
            IpAddr::V6(v6) => {
                ipv6.get_or_insert(v6);
            }
        }
    }
    let ipv4 = ipv4.ok_or_else(|| ScenarioError::NoPodIp {
        path: path.to_path_buf(),
        pod: key,
    })?;
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty());
    Ok(PodSpec {
        namespace,
        name,
        ipv4,
        ipv6,
        node,
    })
}

/// Source pod -> destination pod (or `service/NS/NAME`) -> outcome (`None` = not judged).
pub type Matrix = BTreeMap<String, BTreeMap<String, Option<bool>>>;

/// Expected or measured results: `expected.json`'s format. Fields are declared in the
/// alphabetical order the reference files use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub steps: Vec<StepResult>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    pub probes: Vec<ProbeResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<Family>,
    pub matrix: Matrix,
    pub port: u16,
    pub protocol: Proto,
    /// The Service of a Service probe (its matrix has one column, `service/NS/NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl ProbeResult {
    pub fn probe(&self) -> Probe {
        Probe {
            service: self.service.clone(),
            port: self.port,
            protocol: self.protocol,
            family: self.family,
        }
    }

    fn matches(&self, probe: &Probe) -> bool {
        self.probe().same_key(probe)
    }
}

impl Results {
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = read(path)?;
        serde_json::from_str(&text).map_err(|source| ScenarioError::Json {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Pretty JSON with one-space indentation, like the reference `expected.json` files.
    pub fn to_json_pretty(&self) -> String {
        let mut out = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b" ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
        self.serialize(&mut ser)
            .expect("serializing plain maps and numbers to a Vec cannot fail");
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }
}

/// One judged cell whose actual value differs from the expected one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// 1-based step number.
    pub step: usize,
    pub probe: Probe,
    pub from: String,
    pub to: String,
    pub expected: bool,
    /// `None` when the actual results lack the step, probe or cell.
    pub actual: Option<bool>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let actual = match self.actual {
            Some(v) => v.to_string(),
            None => "missing".into(),
        };
        if let Some(svc) = &self.probe.service {
            // A Service cell is (step, service, port, protocol, from): its one column is the
            // Service itself.
            return write!(
                f,
                "step {} service {svc} port {} {} {}: {} expected {}, got {}",
                self.step,
                self.probe.port,
                self.probe.protocol,
                self.probe.family(),
                self.from,
                self.expected,
                actual
            );
        }
        write!(
            f,
            "step {} port {} {} {}: {} -> {} expected {}, got {}",
            self.step,
            self.probe.port,
            self.probe.protocol,
            self.probe.family(),
            self.from,
            self.to,
            self.expected,
            actual
        )
    }
}

/// Outcome of comparing actual results with expected ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    pub matched: usize,
    pub judged: usize,
    pub mismatches: Vec<Mismatch>,
}

impl Comparison {
    pub fn is_match(&self) -> bool {
        self.mismatches.is_empty()
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} probes match", self.matched, self.judged)?;
        for m in &self.mismatches {
            write!(f, "\n  MISMATCH {m}")?;
        }
        Ok(())
    }
}

/// Compares per docs/scenario-format.md "`expected.json` and results": entries matched by step
/// and key ((port, protocol, family), plus the Service for a Service probe); every expected
/// boolean cell counts once; expected `null` cells are skipped; an actual `null` or missing
/// cell is a mismatch.
pub fn compare(expected: &Results, actual: &Results) -> Comparison {
    let mut cmp = Comparison::default();
    for (i, exp_step) in expected.steps.iter().enumerate() {
        let act_step = actual.steps.get(i);
        for exp_probe in &exp_step.probes {
            let probe = exp_probe.probe();
            let act_probe = act_step.and_then(|s| s.probes.iter().find(|p| p.matches(&probe)));
            for (from, row) in &exp_probe.matrix {
                for (to, cell) in row {
                    let Some(expected) = *cell else { continue };
                    cmp.judged += 1;
                    let actual = act_probe
                        .and_then(|p| p.matrix.get(from))
                        .and_then(|r| r.get(to))
                        .copied()
                        .flatten();
                    if actual == Some(expected) {
                        cmp.matched += 1;
                    } else {
                        cmp.mismatches.push(Mismatch {
                            step: i + 1,
                            probe: probe.clone(),
                            from: from.clone(),
                            to: to.clone(),
                            expected,
                            actual,
                        });
                    }
                }
            }
        }
    }
    cmp
}

/// A human-readable matrix: rows are sources, columns destinations (the pods, or the one
/// Service column); `.` allowed, `X` denied, `-` not judged (or, for a Service, the
/// connections disagreed). Cells marked with `!` differ from `expected` when given.
pub fn render_matrix(result: &ProbeResult, expected: Option<&ProbeResult>) -> String {
    let keys: Vec<&String> = result.matrix.keys().collect();
    let columns: Vec<&String> = result
        .matrix
        .values()
        .flat_map(|row| row.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let width = keys
        .iter()
        .chain(&columns)
        .map(|k| k.len())
        .max()
        .unwrap_or(0)
        .max("from\\to".len());
    let mut out = format!("{:width$}", "from\\to");
    for k in &columns {
        out.push_str(&format!(" {k:>width$}"));
    }
    out.push('\n');
    for from in &keys {
        out.push_str(&format!("{from:width$}"));
        for to in &columns {
            let cell = result.matrix[*from].get(to.as_str()).copied().flatten();
            let mut text = match cell {
                Some(true) => ".".to_string(),
                Some(false) => "X".to_string(),
                None => "-".to_string(),
            };
            let exp = expected
                .and_then(|e| e.matrix.get(*from))
                .and_then(|r| r.get(to.as_str()))
                .copied()
                .flatten();
            if let Some(exp) = exp {
                if cell != Some(exp) {
                    text.push('!');
                }
            }
            out.push_str(&format!(" {text:>width$}"));
        }
        out.push('\n');
    }
    out
}

/// Finds the expected probe result for a step (0-based) and probe.
pub fn expected_probe<'a>(
    expected: Option<&'a Results>,
    step: usize,
    probe: &Probe,
) -> Option<&'a ProbeResult> {
    expected?
        .steps
        .get(step)?
        .probes
        .iter()
        .find(|p| p.matches(probe))
}

#[cfg(test)]
#[path = "scenario_tests.rs"]
mod tests;
