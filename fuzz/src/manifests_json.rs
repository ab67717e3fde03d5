//! `manifests_json`: valid objects (a NetworkPolicy with every kind of peer and port, a Pod, a
//! Service, an EndpointSlice) mutated field by field, then through the same path and checks as
//! [`super::manifests`]. Random bytes rarely make a document that gets past YAML and serde into
//! conversion and compilation; a mutated valid object always does, so this target spends its
//! time on the API server's validation rules and the compiler's corner cases (ranges, excepts,
//! named ports, selectors with expressions).

use arbitrary::{Arbitrary, Unstructured};
use serde_json::{json, Value};

fn seeds() -> [Value; 4] {
    [
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "np", "namespace": "fuzz"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "p"},
                    "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{
                    "from": [
                        {"podSelector": {"matchLabels": {"app": "q"}},
                         "namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Exists"}]}},
                        {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}
                    ],
                    "ports": [{"port": 80}, {"port": "web", "protocol": "TCP"},
                              {"port": 5000, "endPort": 5999, "protocol": "UDP"},
                              {"protocol": "SCTP"}]
                }],
                "egress": [{
                    "to": [{"ipBlock": {"cidr": "fd00::/8", "except": ["fd00:1::/32"]}},
                           {"namespaceSelector": {}}],
                    "ports": [{"port": 53, "protocol": "UDP"}, {"port": 1, "endPort": 65535}]
                }]
            }
        }),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "q", "namespace": "fuzz", "labels": {"app": "q", "tier": "web"}},
            "spec": {"nodeName": "node", "containers": [{"name": "c", "ports": [
                {"containerPort": 8080, "name": "web"},
                {"containerPort": 53, "name": "dns", "protocol": "UDP"}]}]},
            "status": {"podIP": "10.1.0.7", "podIPs": [{"ip": "10.1.0.7"}, {"ip": "fd00:1::7"}],
                       "phase": "Running"}
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "s", "namespace": "fuzz"},
            "spec": {"selector": {"app": "q"}, "clusterIP": "10.96.0.10",
                     "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                     "ipFamilies": ["IPv4", "IPv6"],
                     "sessionAffinity": "ClientIP",
                     "ports": [{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"},
                               {"name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP"}]}
        }),
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "s-1", "namespace": "fuzz",
                         "labels": {"kubernetes.io/service-name": "s"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.1.0.7"], "conditions": {"ready": true},
                           "targetRef": {"kind": "Pod", "name": "q", "namespace": "fuzz"}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }),
    ]
}

/// Values that mean something to the validation or the compiler.
const STRINGS: &[&str] = &[
    "",
    "TCP",
    "UDP",
    "SCTP",
    "ICMP",
    "Ingress",
    "Egress",
    "In",
    "NotIn",
    "Exists",
    "DoesNotExist",
    "web",
    "http",
    "dns",
    "0.0.0.0/0",
    "::/0",
    "10.1.0.0/16",
    "10.1.0.7/32",
    "10.1.0.7",
    "fd00:1::7",
    "fd00::/129",
    "10.0.0.0/33",
    "10.0.0.1/8",
    "not-an-ip",
    "None",
    "ClientIP",
    "IPv4",
    "IPv6",
    "fuzz",
    "app",
    "kubernetes.io/metadata.name",
    "a-b.c/d_e",
    "UPPER",
    "-leading",
    // 64 characters: one more than a label value may have.
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
];

const NUMBERS: &[i64] = &[
    0,
    1,
    -1,
    53,
    80,
    1023,
    1024,
    5000,
    65535,
    65536,
    4294967296,
    i64::MIN,
    i64::MAX,
];

#[derive(Arbitrary, Debug)]
enum NewValue {
    Str(u8),
    AnyStr(String),
    Num(u8),
    AnyNum(i64),
    Float,
    Bool(bool),
    Null,
    EmptyList,
    EmptyMap,
    /// A copy of another part of the same object (a port where a peer was, ...).
    CopyOf(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Mutation {
    /// Replace the value at a path (a path is a list of child choices).
    Set(Vec<u8>, NewValue),
    /// Remove the value at a path from its parent.
    Remove(Vec<u8>),
    /// Duplicate the value at a path in its list (or under a new key of its map).
    Duplicate(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Which seeds, in order (several objects: a mutated pod against a mutated policy).
    objects: Vec<(u8, Vec<Mutation>)>,
}

/// Follows `path` from `v`; each step picks a child by index modulo the number of children.
fn walk<'a>(mut v: &'a mut Value, path: &[u8]) -> &'a mut Value {
    for &step in path {
        let n = match v {
            Value::Object(m) => m.len(),
            Value::Array(a) => a.len(),
            _ => 0,
        };
        if n == 0 {
            break;
        }
        let i = step as usize % n;
        v = match v {
            Value::Object(m) => m.values_mut().nth(i).expect("in range"),
            Value::Array(a) => &mut a[i],
            _ => unreachable!("only containers have children"),
        };
    }
    v
}

fn value(root: &Value, nv: NewValue) -> Value {
    match nv {
        NewValue::Str(i) => json!(STRINGS[i as usize % STRINGS.len()]),
        NewValue::AnyStr(s) => json!(s),
        NewValue::Num(i) => json!(NUMBERS[i as usize % NUMBERS.len()]),
        NewValue::AnyNum(n) => json!(n),
        NewValue::Float => json!(80.5),
        NewValue::Bool(b) => json!(b),
        NewValue::Null => Value::Null,
        NewValue::EmptyList => json!([]),
        NewValue::EmptyMap => json!({}),
        NewValue::CopyOf(path) => {
            let mut copy = root.clone();
            walk(&mut copy, &path).clone()
        }
    }
}

fn apply(root: &mut Value, m: Mutation) {
    match m {
        Mutation::Set(path, nv) => {
            let new = value(root, nv);
            *walk(root, &path) = new;
        }
        Mutation::Remove(path) => {
            let Some((last, parent)) = path.split_last() else {
                return;
            };
            match walk(root, parent) {
                Value::Object(m) if !m.is_empty() => {
                    let key = m.keys().nth(*last as usize % m.len()).cloned();
                    if let Some(k) = key {
                        m.remove(&k);
                    }
                }
                Value::Array(a) if !a.is_empty() => {
                    a.remove(*last as usize % a.len());
                }
                _ => {}
            }
        }
        Mutation::Duplicate(path) => {
            let Some((last, parent)) = path.split_last() else {
                return;
            };
            match walk(root, parent) {
                Value::Object(m) if !m.is_empty() => {
                    let i = *last as usize % m.len();
                    let (k, v) = m
                        .iter()
                        .nth(i)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .unwrap();
                    m.insert(format!("{k}2"), v);
                }
                Value::Array(a) if !a.is_empty() && a.len() < 64 => {
                    let v = a[*last as usize % a.len()].clone();
                    a.push(v);
                }
                _ => {}
            }
        }
    }
}

/// The mutated objects as one JSON document per object (a YAML stream).
pub fn render(data: &[u8]) -> Option<String> {
    let input = Input::arbitrary_take_rest(Unstructured::new(data)).ok()?;
    let seeds = seeds();
    let mut docs = Vec::new();
    for (seed, mutations) in input.objects.into_iter().take(6) {
        let mut v = seeds[seed as usize % seeds.len()].clone();
        for m in mutations.into_iter().take(16) {
            apply(&mut v, m);
        }
        docs.push(serde_json::to_string(&v).expect("a JSON value serialises"));
    }
    Some(docs.join("\n---\n"))
}

pub fn run(data: &[u8]) {
    if let Some(text) = render(data) {
        super::manifests::run_text(&text);
    }
}
