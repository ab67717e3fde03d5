//! A folder of manifests as the source of truth (`enforcer agent --manifests DIR`): every
//! `*.yaml`, `*.yml` and `*.json` file, every document in it; Namespaces, Pods,
//! NetworkPolicies, Services, EndpointSlices, Nodes and the cluster policies
//! (ClusterNetworkPolicy v1alpha2, Admin/BaselineAdminNetworkPolicy v1alpha1), and `List`s of
//! them ([`KINDS`]). Any other kind, or a known kind of another `apiVersion`, is reported as
//! ignored. The folder is re-read whenever its content changes.
//!
//! Bad input loses nothing: a document that does not parse or an object the API server would
//! reject is reported (file, document, field, why) and the object's last good version, if any,
//! stays in force; a file that is not valid YAML keeps all its objects' last good versions.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::from_value;

use super::objects::{cluster_of, ApiObject, Object, ObjectKey, KEPT_LAST_GOOD};
use crate::model::cluster_policy_api::ClusterPolicyObject;
use crate::model::Cluster;

/// A problem with one document of one file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ManifestError {
    pub file: PathBuf,
    /// 1-based document number in the file (0: the file as a whole).
    pub document: usize,
    pub message: String,
    /// Whether an earlier version of the object stays in force.
    pub kept_last_good: bool,
}

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.document > 0 {
            write!(f, " (document {})", self.document)?;
        }
        write!(f, ": {}", self.message)?;
        if self.kept_last_good {
            f.write_str(KEPT_LAST_GOOD)?;
        }
        Ok(())
    }
}

/// What the folder held at one read.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub cluster: Cluster,
    pub errors: Vec<ManifestError>,
    /// [`digest_dir`] of exactly the bytes that were read.
    pub digest: String,
}

fn is_manifest(path: &Path) -> bool {
    path.is_file()
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

/// The manifest files of a folder with their contents, in name order.
fn read_files(dir: &Path) -> io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_manifest(p))
        .collect();
    paths.sort();
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        match std::fs::read(&p) {
            Ok(bytes) => out.push((p, bytes)),
            // Removed between listing and reading: it is simply gone.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn digest_of(files: &[(PathBuf, Vec<u8>)]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (p, bytes) in files {
        p.file_name().hash(&mut h);
        bytes.hash(&mut h);
    }
    format!("{:016x}", h.finish())
}

/// Names, sizes and modification times of the manifest files: cheap to poll (no file is
/// read); the folder is re-read when this changes.
pub fn stat_signature(
    dir: &Path,
) -> io::Result<Vec<(PathBuf, u64, Option<std::time::SystemTime>)>> {
    let mut out: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_manifest(p))
        .filter_map(|p| {
            let md = std::fs::metadata(&p).ok()?;
            Some((p, md.len(), md.modified().ok()))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// A digest of the folder's manifest files (names and contents). The agent reports the digest
/// of what it applied; the lab waits for the digest of what it wrote. Same binary, same hash.
pub fn digest_dir(dir: &Path) -> io::Result<String> {
    Ok(digest_of(&read_files(dir)?))
}

/// The objects of a file and its errors, each with its 1-based document number.
pub type ParsedFile = (Vec<(usize, ApiObject)>, Vec<(usize, String)>);

/// Parses one file into typed objects, with an error per bad document.
pub fn parse_file(text: &str) -> ParsedFile {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                // A syntax error ends the stream: later documents cannot be located.
                errors.push((n, format!("not valid YAML: {e}")));
                break;
            }
        };
        if value.is_null() {
            continue; // empty document or comments only
        }
        collect(value, n, &mut objects, &mut errors);
    }
    (objects, errors)
}

fn collect(
    value: serde_yaml::Value,
    n: usize,
    objects: &mut Vec<(usize, ApiObject)>,
    errors: &mut Vec<(usize, String)>,
) {
    let field = |name: &str| {
        value
            .get(name)
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_string()
    };
    let (api, kind) = (field("apiVersion"), field("kind"));
    if api.is_empty() || kind.is_empty() {
        errors.push((
            n,
            "not a Kubernetes object: apiVersion and kind are required".into(),
        ));
        return;
    }
    if (api.as_str(), kind.as_str()) == ("v1", "List") {
        match value.get("items").and_then(|i| i.as_sequence()) {
            Some(items) => items
                .iter()
                .for_each(|item| collect(item.clone(), n, objects, errors)),
            None => errors.push((n, "List without items".into())),
        }
        return;
    }
    match typed(&api, &kind, value) {
        Some(Ok(o)) => objects.push((n, o)),
        Some(Err(e)) => errors.push((n, format!("{kind}: {e}"))),
        None => errors.push((n, not_read(&api, &kind))),
    }
}

/// The kinds the enforcer reads, each as the one `apiVersion` it reads it as.
const KINDS: [(&str, &str); 9] = [
    ("v1", "Namespace"),
    ("v1", "Pod"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("v1", "Service"),
    ("v1", "Node"),
    ("discovery.k8s.io/v1", "EndpointSlice"),
    ("policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy"),
    ("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy"),
    (
        "policy.networking.k8s.io/v1alpha1",
        "BaselineAdminNetworkPolicy",
    ),
];

/// The typed object of one of [`KINDS`], `None` for any other `(apiVersion, kind)`.
fn typed(
    api: &str,
    kind: &str,
    value: serde_yaml::Value,
) -> Option<Result<ApiObject, serde_yaml::Error>> {
    use std::sync::Arc;
    let cluster_policy = |o| ApiObject::ClusterPolicy(Arc::new(o));
    Some(match (api, kind) {
        ("v1", "Namespace") => from_value(value).map(|o| ApiObject::Namespace(Arc::new(o))),
        ("v1", "Pod") => from_value(value).map(|o| ApiObject::Pod(Arc::new(o))),
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            from_value(value).map(|o| ApiObject::Policy(Arc::new(o)))
        }
        ("v1", "Service") => from_value(value).map(|o| ApiObject::Service(Arc::new(o))),
        ("v1", "Node") => from_value(value).map(|o| ApiObject::Node(Arc::new(o))),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            from_value(value).map(|o| ApiObject::EndpointSlice(Arc::new(o)))
        }
        ("policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy") => {
            from_value(value).map(|o| cluster_policy(ClusterPolicyObject::ClusterNetworkPolicy(o)))
        }
        ("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy") => {
            from_value(value).map(|o| cluster_policy(ClusterPolicyObject::AdminNetworkPolicy(o)))
        }
        ("policy.networking.k8s.io/v1alpha1", "BaselineAdminNetworkPolicy") => from_value(value)
            .map(|o| cluster_policy(ClusterPolicyObject::BaselineAdminNetworkPolicy(o))),
        _ => return None,
    })
}

/// Why a document of another `(apiVersion, kind)` is not read: said, not silently dropped, so
/// that a policy written for an API version the enforcer does not read is noticed.
fn not_read(api: &str, kind: &str) -> String {
    match KINDS.iter().find(|(_, k)| *k == kind) {
        Some((read_as, _)) => {
            format!("{kind} ({api}): the enforcer reads {kind} as {read_as}, not {api}; ignored")
        }
        None => format!("{kind} ({api}): not a kind the enforcer reads; ignored"),
    }
}

/// Remembers the last good version of every object, so that an object edited into an invalid
/// state keeps being enforced as it was (and a new invalid object is simply not applied).
#[derive(Default)]
struct LastGood {
    objects: BTreeMap<ObjectKey, Object>,
}

impl LastGood {
    fn get(&self, key: &ObjectKey) -> Option<&Object> {
        self.objects.get(key)
    }

    fn replace(&mut self, objects: BTreeMap<ObjectKey, Object>) {
        self.objects = objects;
    }
}

/// The folder and what was last good in it.
pub struct ManifestFolder {
    dir: PathBuf,
    last_good: LastGood,
    /// The keys each file held at the last read, to keep them when the file breaks.
    file_keys: BTreeMap<PathBuf, Vec<ObjectKey>>,
}

impl ManifestFolder {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ManifestFolder {
            dir: dir.into(),
            last_good: LastGood::default(),
            file_keys: BTreeMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the folder.
    pub fn read(&mut self) -> io::Result<Snapshot> {
        let files = read_files(&self.dir)?;
        let digest = digest_of(&files);
        let mut objects: BTreeMap<ObjectKey, Object> = BTreeMap::new();
        let mut errors = Vec::new();
        let mut file_keys = BTreeMap::new();
        for (path, bytes) in &files {
            let mut keys = Vec::new();
            let text = match std::str::from_utf8(bytes) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(self.keep_file(
                        path,
                        0,
                        format!("not UTF-8: {e}"),
                        &mut objects,
                        &mut keys,
                    ));
                    file_keys.insert(path.clone(), keys);
                    continue;
                }
            };
            let (parsed, parse_errors) = parse_file(text);
            let broken = parse_errors
                .iter()
                .any(|(_, m)| m.starts_with("not valid YAML"));
            for (n, api) in parsed {
                let key = api.key();
                match api.convert() {
                    Ok(o) => {
                        keys.push(key.clone());
                        objects.insert(key, o);
                    }
                    Err(invalid) => {
                        let kept = self.last_good.get(&key).cloned();
                        errors.push(ManifestError {
                            file: path.clone(),
                            document: n,
                            message: invalid.to_string(),
                            kept_last_good: kept.is_some(),
                        });
                        if let Some(o) = kept {
                            keys.push(key.clone());
                            objects.insert(key, o);
                        }
                    }
                }
            }
            for (n, message) in parse_errors {
                if broken {
                    errors.push(self.keep_file(path, n, message, &mut objects, &mut keys));
                } else {
                    errors.push(ManifestError {
                        file: path.clone(),
                        document: n,
                        message,
                        kept_last_good: false,
                    });
                }
            }
            file_keys.insert(path.clone(), keys);
        }
        self.last_good.replace(objects.clone());
        self.file_keys = file_keys;
        Ok(Snapshot {
            cluster: cluster_of(objects.values()),
            errors,
            digest,
        })
    }

    /// A file that could not be read whole keeps the last good version of every object it held.
    fn keep_file(
        &self,
        path: &Path,
        document: usize,
        message: String,
        objects: &mut BTreeMap<ObjectKey, Object>,
        keys: &mut Vec<ObjectKey>,
    ) -> ManifestError {
        let mut kept = false;
        for key in self.file_keys.get(path).into_iter().flatten() {
            if objects.contains_key(key) {
                continue; // read again from the part of the file that parsed
            }
            if let Some(o) = self.last_good.get(key) {
                objects.insert(key.clone(), o.clone());
                keys.push(key.clone());
                kept = true;
            }
        }
        ManifestError {
            file: path.into(),
            document,
            message,
            kept_last_good: kept,
        }
    }
}

#[cfg(test)]
mod tests;
