//! Offline schema validation of the Kubernetes manifests in `deploy/`, with the PyPI package
//! `kubernetes-validate` (it ships the API's JSON schemas, so nothing is fetched once it is
//! installed). Strict: an unknown field is an error, and so is an object whose kind has no
//! schema (the tool only warns about those). Every manifest is checked against the oldest
//! Kubernetes version the manifests support and the newest the tool knows.
//!
//! Checked: every `*.yaml`/`*.yml` under `deploy/` except the files that are not Kubernetes
//! objects ([`NOT_KUBERNETES`]), and the manifests `deploy/kind/test.sh` applies from
//! heredocs (`<<YAML ... YAML`), whose shell variables stay as literal strings.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const PACKAGE: &str = "kubernetes-validate";
const VERSION: &str = "1.37.0";
/// The oldest Kubernetes the manifests are for (the container field `appArmorProfile` is GA
/// since 1.30) and the newest schema set of the tool.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];
/// YAML files under deploy/ that are not Kubernetes API objects, and what they are.
pub const NOT_KUBERNETES: &[(&str, &str)] = &[
    ("deploy/kustomization.yaml", "kustomize's own configuration"),
    ("deploy/kind/cluster.yaml", "kind's cluster configuration"),
];
/// Debian's interpreter (python3-venv is in xtask's APT_PACKAGES), not whatever is first on
/// PATH.
const PYTHON: &str = "/usr/bin/python3";
/// The script whose heredocs are validated too.
const KIND_TEST: &str = "deploy/kind/test.sh";

fn venv(ws: &Path) -> PathBuf {
    ws.join("target/tools").join(format!("{PACKAGE}-{VERSION}"))
}

fn validator(ws: &Path) -> PathBuf {
    venv(ws).join("bin").join(PACKAGE)
}

fn installed(ws: &Path) -> bool {
    Command::new(validator(ws))
        .arg("--version")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(VERSION))
        .unwrap_or(false)
}

/// Installs the validator into its own venv under target/tools/ unless it is there already.
pub fn ensure_validator(ws: &Path) -> Result<()> {
    if installed(ws) {
        return Ok(());
    }
    let dir = venv(ws);
    if dir.exists() {
        // A half-made venv (interrupted install): start again.
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    crate::run(Command::new(PYTHON).args(["-m", "venv"]).arg(&dir))?;
    crate::run(
        Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("{PACKAGE}=={VERSION}")),
    )?;
    if !installed(ws) {
        bail!(
            "{} was installed but `{} --version` does not say {VERSION}",
            PACKAGE,
            validator(ws).display()
        );
    }
    Ok(())
}

/// Every YAML file under `dir`, sorted.
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            yaml_files(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    out.sort();
    Ok(())
}

/// The Kubernetes manifests in deploy/ (relative to the workspace).
pub fn manifest_files(ws: &Path) -> Result<Vec<PathBuf>> {
    let mut all = Vec::new();
    yaml_files(&ws.join("deploy"), &mut all)?;
    Ok(all
        .into_iter()
        .filter_map(|p| p.strip_prefix(ws).ok().map(Path::to_path_buf))
        .filter(|p| !NOT_KUBERNETES.iter().any(|(f, _)| Path::new(f) == p))
        .collect())
}

/// The heredoc bodies `<<YAML` (or `<<'YAML'`, `<<"YAML"`, `<<-YAML`) ... `YAML` of a shell
/// script, each with the line its body starts on.
pub fn heredocs(script: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut body: Option<(usize, String)> = None;
    for (i, line) in script.lines().enumerate() {
        if let Some((start, text)) = body.as_mut() {
            if line.trim() == "YAML" {
                out.push((*start, std::mem::take(text)));
                body = None;
            } else {
                text.push_str(line);
                text.push('\n');
            }
            continue;
        }
        let opens = ["<<YAML", "<<'YAML'", "<<\"YAML\"", "<<-YAML"]
            .iter()
            .any(|m| line.contains(m));
        if opens && !line.trim_start().starts_with('#') {
            body = Some((i + 2, String::new()));
        }
    }
    out
}

/// Writes the kind test's heredoc manifests to target/tools/kind-test-manifests/, one file per
/// heredoc named after the line it starts on, and returns their paths.
fn kind_test_manifests(ws: &Path) -> Result<Vec<PathBuf>> {
    let script = ws.join(KIND_TEST);
    let text = std::fs::read_to_string(&script)
        .with_context(|| format!("reading {}", script.display()))?;
    let dir = ws.join("target/tools/kind-test-manifests");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let mut files = Vec::new();
    for (line, body) in heredocs(&text) {
        let path = dir.join(format!("test.sh-line-{line}.yaml"));
        std::fs::write(&path, body)?;
        files.push(path);
    }
    if files.is_empty() {
        bail!("no <<YAML heredoc found in {KIND_TEST}: has the script changed its style?");
    }
    Ok(files)
}

/// Problems in the validator's output: its ERROR lines, and its WARN lines (a kind without a
/// schema, which the tool itself lets pass).
pub fn problems(output: &str) -> Vec<String> {
    output
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("ERROR") || l.starts_with("WARN"))
        .map(str::to_owned)
        .collect()
}

/// Validates every manifest; fails naming each problem.
pub fn validate(ws: &Path) -> Result<()> {
    ensure_validator(ws)?;
    let mut files = manifest_files(ws)?;
    if files.is_empty() {
        bail!("no Kubernetes manifest found under deploy/");
    }
    files.extend(kind_test_manifests(ws)?);
    let mut failures = Vec::new();
    for version in KUBERNETES_VERSIONS {
        let mut cmd = Command::new(validator(ws));
        cmd.current_dir(ws)
            .args(["--strict", "--kubernetes-version", version])
            .args(&files);
        eprintln!("+ {cmd:?}");
        let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let found = problems(&text);
        if !out.status.success() && found.is_empty() {
            bail!(
                "{PACKAGE} failed ({}) without naming a problem:\n{text}",
                out.status
            );
        }
        failures.extend(found);
    }
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("{f}");
        }
        bail!(
            "{} problem(s) in the Kubernetes manifests (files under target/tools/kind-test-manifests/ \
             are the heredocs of {KIND_TEST}, named after their first line)",
            failures.len()
        );
    }
    eprintln!(
        "manifests: {} files valid against Kubernetes {} (strict)",
        files.len(),
        KUBERNETES_VERSIONS.join(" and ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heredocs_are_found_with_their_first_line() {
        let script = "a\nkubectl apply -f - <<YAML\nkind: Pod\nmetadata: {name: $X}\nYAML\n\
                      # not this: <<YAML\ncat <<'YAML' | x\nkind: Service\n  YAML\n";
        assert_eq!(
            heredocs(script),
            vec![
                (3, "kind: Pod\nmetadata: {name: $X}\n".to_string()),
                (8, "kind: Service\n".to_string())
            ]
        );
    }

    #[test]
    fn warnings_count_as_problems() {
        let out = "INFO a.yaml passed for resource pod/x against version 1.37\n\
                   WARN b.yaml Couldn't find schema for kind Cluster\n\
                   ERROR c.yaml did not validate: spec: 'hostNetwrk' was unexpected\n";
        assert_eq!(problems(out).len(), 2);
    }

    #[test]
    fn the_files_that_are_not_kubernetes_objects_exist() {
        let ws = crate::workspace();
        for (f, _) in NOT_KUBERNETES {
            assert!(ws.join(f).is_file(), "{f} is listed but missing");
        }
        let files = manifest_files(&ws).unwrap();
        assert!(
            files.contains(&PathBuf::from("deploy/daemonset.yaml")),
            "{files:?}"
        );
        assert!(!files.contains(&PathBuf::from("deploy/kind/cluster.yaml")));
    }
}
