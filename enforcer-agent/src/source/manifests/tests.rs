use super::*;

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels:\n    ns: x\n";
const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  namespace: x\n  labels:\n    pod: a\nspec:\n  containers:\n  - name: c\n    ports:\n    - containerPort: 80\nstatus:\n  podIP: 10.244.1.10\n  podIPs:\n  - ip: 10.244.1.10\n";

fn policy(name: &str, cidr: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: x\nspec:\n  podSelector: {{}}\n  ingress:\n  - from:\n    - ipBlock:\n        cidr: {cidr}\n"
    )
}

struct Dir(PathBuf);
impl Dir {
    fn new(tag: &str) -> Self {
        let p =
            std::env::temp_dir().join(format!("enforcer-manifests-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).unwrap();
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn reads_every_document_of_every_manifest_file() {
    let d = Dir::new("all");
    d.write("cluster.yaml", &format!("{NS}---\n{POD}"));
    d.write(
        "policies.yaml",
        &format!("# comment\n---\n{}", policy("p1", "10.0.0.0/8")),
    );
    d.write("notes.txt", "not a manifest");
    let snap = ManifestFolder::new(&d.0).read().unwrap();
    assert!(snap.errors.is_empty(), "{:?}", snap.errors);
    assert_eq!(snap.cluster.namespaces.len(), 1);
    assert_eq!(snap.cluster.pods.len(), 1);
    assert_eq!(snap.cluster.policies.len(), 1);
    assert_eq!(snap.digest, digest_dir(&d.0).unwrap());
}

#[test]
fn a_new_invalid_policy_is_reported_with_file_document_and_field_and_the_rest_applies() {
    let d = Dir::new("newbad");
    d.write("cluster.yaml", &format!("{NS}---\n{POD}"));
    d.write(
        "policies.yaml",
        &format!(
            "{}---\n{}",
            policy("good", "10.0.0.0/8"),
            policy("bad", "10.0.0.0/33")
        ),
    );
    let snap = ManifestFolder::new(&d.0).read().unwrap();
    assert_eq!(snap.cluster.policies.len(), 1);
    assert_eq!(snap.errors.len(), 1);
    let e = &snap.errors[0];
    assert!(e.file.ends_with("policies.yaml"));
    assert_eq!(e.document, 2);
    assert!(
        e.message.contains("x/bad") && e.message.contains("ipBlock.cidr"),
        "{}",
        e.message
    );
    assert!(!e.kept_last_good);
}

#[test]
fn a_policy_edited_into_an_invalid_state_keeps_its_last_good_version() {
    let d = Dir::new("edit");
    d.write("policies.yaml", &policy("p", "10.0.0.0/8"));
    let mut folder = ManifestFolder::new(&d.0);
    let first = folder.read().unwrap();
    d.write("policies.yaml", &policy("p", "not-a-cidr"));
    let second = folder.read().unwrap();
    assert_eq!(second.errors.len(), 1);
    assert!(second.errors[0].kept_last_good);
    assert_eq!(first.cluster.policies, second.cluster.policies);
}

#[test]
fn a_file_that_is_not_yaml_keeps_all_its_objects() {
    let d = Dir::new("broken");
    d.write("cluster.yaml", &format!("{NS}---\n{POD}"));
    let mut folder = ManifestFolder::new(&d.0);
    let first = folder.read().unwrap();
    d.write("cluster.yaml", "kind: [unclosed\n");
    let second = folder.read().unwrap();
    assert_eq!(second.errors.len(), 1, "{:?}", second.errors);
    assert!(second.errors[0].message.contains("not valid YAML"));
    assert!(second.errors[0].kept_last_good);
    assert_eq!(first.cluster, second.cluster);
}

#[test]
fn removing_a_file_removes_its_objects() {
    let d = Dir::new("remove");
    d.write("cluster.yaml", &format!("{NS}---\n{POD}"));
    d.write("policies.yaml", &policy("p", "10.0.0.0/8"));
    let mut folder = ManifestFolder::new(&d.0);
    assert_eq!(folder.read().unwrap().cluster.policies.len(), 1);
    std::fs::remove_file(d.0.join("policies.yaml")).unwrap();
    let snap = folder.read().unwrap();
    assert!(snap.cluster.policies.is_empty());
    assert_eq!(snap.cluster.pods.len(), 1);
}

#[test]
fn documents_without_kind_are_errors_and_other_kinds_are_reported_as_ignored() {
    let (objects, errors) =
        parse_file("foo: bar\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: s\n");
    assert!(objects.is_empty());
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0].0, 1);
    assert_eq!(
        errors[1],
        (
            2,
            "ConfigMap (v1): not a kind the enforcer reads; ignored".to_string()
        )
    );
}

#[test]
fn services_and_endpoint_slices_are_read() {
    let (objects, errors) = parse_file(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: y}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s-1, namespace: y, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints: [{addresses: [10.244.2.10]}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: y}\nspec: {clusterIP: 10.96.0.11, ports: [{port: 0}]}\n",
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(objects.len(), 3);
    let converted: Vec<_> = objects.iter().map(|(_, o)| o.convert()).collect();
    assert!(converted[0].is_ok() && converted[1].is_ok());
    let err = converted[2].as_ref().unwrap_err().to_string();
    assert!(
        err.contains("Service y/bad") && err.contains("spec.ports[0].port"),
        "{err}"
    );
}

fn cnp(name: &str, cidr: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata:\n  name: {name}\nspec:\n  tier: Admin\n  priority: 10\n  subject: {{namespaces: {{}}}}\n  egress:\n  - action: Deny\n    to: [{{networks: [\"{cidr}\"]}}]\n"
    )
}

const ANP: &str = "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: p}\nspec: {priority: 3, subject: {namespaces: {}}, ingress: [{action: Allow, from: [{namespaces: {}}], ports: [{portNumber: {port: 80}}]}]}\n";
const BANP: &str = "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: default}\nspec: {subject: {namespaces: {}}, egress: [{action: Deny, to: [{namespaces: {}}]}]}\n";
const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {role: infra}}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.1}]}\n";

#[test]
fn cluster_policies_and_node_labels_land_in_the_snapshot() {
    use crate::model::cluster_policy::{ClusterPolicyKey, ClusterPolicyKind as K, Tier};
    let d = Dir::new("cnp");
    d.write(
        "policies.yaml",
        &format!("{}---\n{ANP}---\n{BANP}", cnp("p", "10.0.0.0/8")),
    );
    d.write("nodes.yaml", NODE);
    let snap = ManifestFolder::new(&d.0).read().unwrap();
    assert!(snap.errors.is_empty(), "{:?}", snap.errors);
    let tiers: Vec<(ClusterPolicyKey, Tier)> = snap
        .cluster
        .cluster_policies
        .iter()
        .map(|(k, p)| (k.clone(), p.tier))
        .collect();
    assert_eq!(
        tiers,
        vec![
            (
                ClusterPolicyKey::new(K::ClusterNetworkPolicy, "p"),
                Tier::Admin
            ),
            (
                ClusterPolicyKey::new(K::AdminNetworkPolicy, "p"),
                Tier::Admin
            ),
            (
                ClusterPolicyKey::new(K::BaselineAdminNetworkPolicy, "default"),
                Tier::Baseline
            ),
        ]
    );
    assert_eq!(
        snap.cluster.node_labels["n1"]
            .get("role")
            .map(String::as_str),
        Some("infra")
    );
    assert_eq!(
        snap.cluster.nodes["n1"],
        vec!["192.168.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
}

#[test]
fn a_cluster_policy_edited_into_an_invalid_state_keeps_its_last_good_version() {
    let d = Dir::new("cnp-edit");
    d.write("policies.yaml", &cnp("p", "10.0.0.0/8"));
    let mut folder = ManifestFolder::new(&d.0);
    let first = folder.read().unwrap();
    assert_eq!(first.cluster.cluster_policies.len(), 1);
    d.write("policies.yaml", &cnp("p", "10.0.0.0/33"));
    let second = folder.read().unwrap();
    assert_eq!(second.errors.len(), 1, "{:?}", second.errors);
    let e = &second.errors[0];
    assert!(e.kept_last_good);
    assert_eq!(e.document, 1);
    assert!(
        e.message.contains("ClusterNetworkPolicy p")
            && e.message.contains("spec.egress[0].to[0].networks[0]"),
        "{}",
        e.message
    );
    assert_eq!(
        first.cluster.cluster_policies,
        second.cluster.cluster_policies
    );
    // A new invalid one is not applied.
    d.write("other.yaml", &cnp("q", "nope"));
    let third = folder.read().unwrap();
    assert_eq!(third.cluster.cluster_policies.len(), 1);
    assert!(third
        .errors
        .iter()
        .any(|e| !e.kept_last_good && e.file.ends_with("other.yaml")));
}

#[test]
fn an_unknown_kind_is_reported_once_with_file_and_document() {
    let d = Dir::new("unknown-kind");
    d.write(
        "apps.yaml",
        &format!("{NS}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: x}}\n"),
    );
    let snap = ManifestFolder::new(&d.0).read().unwrap();
    assert_eq!(snap.cluster.namespaces.len(), 1);
    assert_eq!(
        snap.errors,
        vec![ManifestError {
            file: d.0.join("apps.yaml"),
            document: 2,
            message: "Deployment (apps/v1): not a kind the enforcer reads; ignored".into(),
            kept_last_good: false,
        }]
    );
}

#[test]
fn a_cluster_policy_kind_of_another_api_version_is_reported_naming_both() {
    let (objects, errors) = parse_file(&cnp("p", "10.0.0.0/8").replace("v1alpha2", "v1alpha1"));
    assert!(objects.is_empty());
    let message = &errors[0].1;
    assert!(
        message.contains("policy.networking.k8s.io/v1alpha1")
            && message.contains("policy.networking.k8s.io/v1alpha2"),
        "{message}"
    );
    let (_, errors) = parse_file(&ANP.replace("v1alpha1", "v1alpha2"));
    assert!(
        errors[0]
            .1
            .starts_with("AdminNetworkPolicy (policy.networking.k8s.io/v1alpha2)"),
        "{errors:?}"
    );
}

#[test]
fn every_kind_read_has_a_parser() {
    for (api, kind) in KINDS {
        let value: serde_yaml::Value = serde_yaml::from_str(&format!(
            "apiVersion: {api}\nkind: {kind}\nmetadata: {{name: n}}\n"
        ))
        .unwrap();
        assert!(typed(api, kind, value).is_some(), "{kind}");
    }
}
