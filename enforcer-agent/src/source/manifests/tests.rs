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
fn documents_without_kind_are_errors_and_other_kinds_are_ignored() {
    let (objects, errors) =
        parse_file("foo: bar\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: s\n");
    assert!(objects.is_empty());
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, 1);
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
