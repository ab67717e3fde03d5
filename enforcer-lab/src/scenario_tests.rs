//! Unit tests of scenario parsing, the result JSON and comparison (no privileges needed).

use super::*;

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "enforcer-lab-test-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.0.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pod_yaml(ns: &str, name: &str, ips: &[&str]) -> String {
    let list: String = ips.iter().map(|ip| format!("  - ip: {ip}\n")).collect();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    pod: {name}\nspec:\n  containers:\n  - name: c\n    ports:\n    - containerPort: 80\n      name: serve-80-tcp\nstatus:\n  podIP: {}\n  podIPs:\n{list}",
        ips[0]
    )
}

fn ns_yaml(ns: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    kubernetes.io/metadata.name: {ns}\n")
}

fn cluster(pods: &[(&str, &str, &[&str])]) -> String {
    let mut docs = vec![ns_yaml("x"), ns_yaml("y")];
    docs.extend(pods.iter().map(|(ns, n, ips)| pod_yaml(ns, n, ips)));
    docs.join("---\n")
}

#[test]
fn single_step_layout_with_defaults() {
    let dir = TempDir::new("single");
    dir.write(
        "cluster.yaml",
        &cluster(&[
            ("x", "a", &["10.244.1.10", "fd00:10:244:1::10"]),
            ("y", "a", &["10.244.2.10"]),
        ]),
    );
    dir.write("policies.yaml", "");
    dir.write(
        "probes.yaml",
        "- port: 80\n  protocol: TCP\n- port: 81\n- port: 80\n  protocol: UDP\n  family: IPv6\n",
    );
    let s = Scenario::load(&dir.0).unwrap();
    assert_eq!(s.steps.len(), 1);
    assert!(s.expected.is_none());
    let step = &s.steps[0];
    assert_eq!(step.label(), "main");
    assert_eq!(step.namespaces, vec!["x", "y"]);
    assert_eq!(step.policy_count, 0);
    assert_eq!(
        step.probes,
        vec![
            Probe {
                service: None,
                port: 80,
                protocol: Proto::Tcp,
                family: None
            },
            Probe {
                service: None,
                port: 81,
                protocol: Proto::Tcp,
                family: None
            },
            Probe {
                service: None,
                port: 80,
                protocol: Proto::Udp,
                family: Some(Family::IPv6)
            },
        ]
    );
    assert_eq!(step.probes[1].family(), Family::IPv4);
    assert_eq!(step.pods[0].key(), "x/a");
    assert_eq!(
        step.pods[0].ipv4,
        "10.244.1.10".parse::<Ipv4Addr>().unwrap()
    );
    assert_eq!(
        step.pods[0].ipv6,
        Some("fd00:10:244:1::10".parse().unwrap())
    );
    assert_eq!(step.pods[1].ipv6, None);
}

#[test]
fn steps_layout_in_lexical_order_with_comment_only_policies() {
    let dir = TempDir::new("steps");
    let c1 = cluster(&[("x", "a", &["10.244.1.10"]), ("x", "b", &["10.244.1.11"])]);
    let c2 = cluster(&[("x", "a", &["10.244.1.10"])]);
    dir.write("steps/02/cluster.yaml", &c2);
    dir.write("steps/02/policies.yaml", "# nothing here\n# at all\n");
    dir.write("steps/02/probes.yaml", "- port: 81\n  protocol: TCP\n");
    dir.write("steps/01/cluster.yaml", &c1);
    dir.write(
        "steps/01/policies.yaml",
        "# leading comment\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: x\nspec:\n  podSelector: {}\n---\n# trailing comment-only document\n",
    );
    dir.write("steps/01/probes.yaml", "- port: 80\n  protocol: TCP\n");
    dir.write(
        "expected.json",
        r#"{"steps":[{"probes":[]},{"probes":[]}]}"#,
    );
    let s = Scenario::load(&dir.0).unwrap();
    assert_eq!(
        s.steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["01", "02"]
    );
    assert_eq!(s.steps[0].pods.len(), 2);
    assert_eq!(s.steps[0].policy_count, 1);
    assert_eq!(s.steps[1].pods.len(), 1);
    assert_eq!(s.steps[1].policy_count, 0);
    assert_eq!(s.steps[1].probes[0].port, 81);
    assert_eq!(s.expected.unwrap().steps.len(), 2);
}

#[test]
fn layout_errors() {
    let both = TempDir::new("both");
    both.write("cluster.yaml", "");
    both.write("steps/01/cluster.yaml", "");
    assert!(matches!(
        Scenario::load(&both.0),
        Err(ScenarioError::AmbiguousLayout { .. })
    ));
    let empty = TempDir::new("empty");
    assert!(matches!(
        Scenario::load(&empty.0),
        Err(ScenarioError::NoSteps { .. })
    ));
    let no_ip = TempDir::new("noip");
    no_ip.write(
        "cluster.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  namespace: x\n",
    );
    no_ip.write("policies.yaml", "");
    no_ip.write("probes.yaml", "[]");
    let err = Scenario::load(&no_ip.0).unwrap_err();
    assert!(err.to_string().contains("x/a"), "{err}");
}

#[test]
fn all_example_scenarios_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios");
    let Ok(entries) = std::fs::read_dir(&root) else {
        return;
    };
    for entry in entries.flatten() {
        let s = Scenario::load(&entry.path())
            .unwrap_or_else(|e| panic!("{}: {e}", entry.path().display()));
        let exp = s.expected.as_ref().expect("examples carry expected.json");
        assert_eq!(exp.steps.len(), s.steps.len(), "{}", entry.path().display());
        // Round trip: the expected file re-serializes to the same value.
        let again: Results = serde_json::from_str(&exp.to_json_pretty()).unwrap();
        assert_eq!(&again, exp);
    }
}

#[test]
fn demo_scenario_is_valid() {
    let s = crate::demo_scenario::demo_scenario();
    let keys: Vec<String> = s.steps[0].pods.iter().map(PodSpec::key).collect();
    assert_eq!(
        keys,
        [
            "prod/frontend",
            "prod/backend",
            "prod/db",
            "dev/debug",
            "dev/scanner"
        ]
    );
    assert!(s.steps[0].pods.iter().all(|p| p.ipv6.is_some()));
    assert_eq!(s.steps[0].policy_count, 5);
    assert!(!s.steps[0].probes.is_empty());
}

fn matrix(cells: &[(&str, &str, Option<bool>)]) -> Matrix {
    let mut m = Matrix::new();
    for (f, t, v) in cells {
        m.entry(f.to_string())
            .or_default()
            .insert(t.to_string(), *v);
    }
    m
}

fn two_pod_result(ab: Option<bool>, ba: Option<bool>, family: Option<Family>) -> ProbeResult {
    ProbeResult {
        family,
        matrix: matrix(&[
            ("x/a", "x/a", None),
            ("x/a", "x/b", ab),
            ("x/b", "x/a", ba),
            ("x/b", "x/b", None),
        ]),
        port: 80,
        protocol: Proto::Tcp,
        service: None,
    }
}

#[test]
fn result_json_shape_matches_expected_files() {
    let r = Results {
        steps: vec![StepResult {
            probes: vec![
                two_pod_result(Some(true), Some(false), None),
                two_pod_result(None, None, Some(Family::IPv6)),
            ],
        }],
    };
    let json = r.to_json_pretty();
    let expected = r#"{
 "steps": [
  {
   "probes": [
    {
     "matrix": {
      "x/a": {
       "x/a": null,
       "x/b": true
      },
      "x/b": {
       "x/a": false,
       "x/b": null
      }
     },
     "port": 80,
     "protocol": "TCP"
    },
    {
     "family": "IPv6","#;
    assert!(json.starts_with(expected), "{json}");
    assert_eq!(serde_json::from_str::<Results>(&json).unwrap(), r);
}

#[test]
fn comparison_counts_judged_cells_and_reports_mismatches() {
    let expected = Results {
        steps: vec![
            StepResult {
                probes: vec![two_pod_result(Some(true), Some(false), None)],
            },
            StepResult {
                probes: vec![two_pod_result(Some(true), None, Some(Family::IPv6))],
            },
        ],
    };
    // Identical: 3 judged cells (nulls skipped), all match.
    let cmp = compare(&expected, &expected);
    assert_eq!((cmp.matched, cmp.judged), (3, 3));
    assert!(cmp.is_match());
    assert_eq!(cmp.to_string(), "3/3 probes match");

    // Family IPv4 given explicitly matches an absent family; a flipped cell and a missing step.
    let mut first = two_pod_result(Some(true), Some(true), Some(Family::IPv4));
    first
        .matrix
        .get_mut("x/a")
        .unwrap()
        .insert("x/a".into(), Some(true)); // self cell ignored
    let actual = Results {
        steps: vec![StepResult {
            probes: vec![first],
        }],
    };
    let cmp = compare(&expected, &actual);
    assert_eq!((cmp.matched, cmp.judged), (1, 3));
    assert_eq!(
        cmp.mismatches,
        vec![
            Mismatch {
                step: 1,
                probe: Probe {
                    service: None,
                    port: 80,
                    protocol: Proto::Tcp,
                    family: None
                },
                from: "x/b".into(),
                to: "x/a".into(),
                expected: false,
                actual: Some(true),
            },
            Mismatch {
                step: 2,
                probe: Probe {
                    service: None,
                    port: 80,
                    protocol: Proto::Tcp,
                    family: Some(Family::IPv6)
                },
                from: "x/a".into(),
                to: "x/b".into(),
                expected: true,
                actual: None,
            },
        ]
    );
    let text = cmp.to_string();
    assert!(text.starts_with("1/3 probes match\n"), "{text}");
    assert!(
        text.contains("step 1 port 80 TCP IPv4: x/b -> x/a expected false, got true"),
        "{text}"
    );
    assert!(
        text.contains("step 2 port 80 TCP IPv6: x/a -> x/b expected true, got missing"),
        "{text}"
    );

    // An IPv6 result does not stand in for an IPv4 expectation.
    let wrong_family = Results {
        steps: vec![StepResult {
            probes: vec![two_pod_result(Some(true), Some(false), Some(Family::IPv6))],
        }],
    };
    assert_eq!(compare(&expected, &wrong_family).matched, 0);
}

#[test]
fn rendered_matrix_marks_differences() {
    let actual = two_pod_result(Some(true), Some(true), None);
    let expected = two_pod_result(Some(true), Some(false), None);
    let text = render_matrix(&actual, Some(&expected));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[1].ends_with("-       ."), "{text}");
    assert!(lines[2].contains(".!"), "{text}");
}

#[test]
fn service_probes_parse_mixed_with_pod_probes() {
    let dir = TempDir::new("svc-probes");
    let mut c = cluster(&[("x", "a", &["10.244.1.10"])]);
    c.push_str("---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: b\n  namespace: x\nspec:\n  nodeName: node-b\nstatus:\n  podIP: 10.244.1.11\n");
    dir.write("cluster.yaml", &c);
    dir.write("policies.yaml", "");
    dir.write(
        "probes.yaml",
        "- service: y/web\n  port: 80\n  protocol: TCP\n- port: 8080\n  protocol: TCP\n- service: y/dns\n  port: 53\n  protocol: UDP\n  family: IPv6\n",
    );
    let s = Scenario::load(&dir.0).unwrap();
    let step = &s.steps[0];
    assert_eq!(
        step.probes,
        [
            Probe {
                service: Some("y/web".into()),
                port: 80,
                protocol: Proto::Tcp,
                family: None
            },
            Probe::pods(8080, Proto::Tcp, None),
            Probe {
                service: Some("y/dns".into()),
                port: 53,
                protocol: Proto::Udp,
                family: Some(Family::IPv6)
            },
        ]
    );
    assert_eq!(
        step.probes[0].service_column().as_deref(),
        Some("service/y/web")
    );
    assert_eq!(step.probes[1].service_column(), None);
    assert_eq!(step.probes[2].to_string(), "service y/dns 53/UDP IPv6");
    assert_eq!(step.pods[0].node, None);
    assert_eq!(step.pods[1].node.as_deref(), Some("node-b"));

    // A Service is named NAMESPACE/NAME.
    for bad in ["web", "/web", "y/", "y/web/x"] {
        dir.write("probes.yaml", &format!("- service: {bad}\n  port: 80\n"));
        let err = Scenario::load(&dir.0).unwrap_err();
        assert!(
            matches!(&err, ScenarioError::BadServiceProbe { index: 1, service, .. } if service == bad),
            "{bad}: {err}"
        );
    }
}

fn service_result(
    service: &str,
    cells: &[(&str, Option<bool>)],
    family: Option<Family>,
) -> ProbeResult {
    let column = format!("service/{service}");
    ProbeResult {
        family,
        matrix: cells
            .iter()
            .map(|(from, v)| (from.to_string(), BTreeMap::from([(column.clone(), *v)])))
            .collect(),
        port: 80,
        protocol: Proto::Tcp,
        service: Some(service.into()),
    }
}

#[test]
fn service_result_entries_have_the_documented_shape() {
    let r = Results {
        steps: vec![StepResult {
            probes: vec![service_result(
                "y/web",
                &[("x/a", Some(true)), ("y/a", None)],
                Some(Family::IPv6),
            )],
        }],
    };
    let json = r.to_json_pretty();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"steps": [{"probes": [{
            "family": "IPv6", "port": 80, "protocol": "TCP", "service": "y/web",
            "matrix": {"x/a": {"service/y/web": true}, "y/a": {"service/y/web": null}}
        }]}]})
    );
    assert_eq!(serde_json::from_str::<Results>(&json).unwrap(), r);
    // Pod entries have no `service` key at all.
    let pod = Results {
        steps: vec![StepResult {
            probes: vec![two_pod_result(Some(true), None, None)],
        }],
    };
    assert!(!pod.to_json_pretty().contains("service"));
}

#[test]
fn service_entries_compare_by_service_port_protocol_and_family() {
    let expected = Results {
        steps: vec![StepResult {
            probes: vec![
                service_result(
                    "y/web",
                    &[("x/a", Some(true)), ("y/a", None), ("z/a", Some(false))],
                    None,
                ),
                service_result("y/api", &[("x/a", Some(false))], None),
                two_pod_result(Some(true), Some(false), None),
            ],
        }],
    };
    assert_eq!(
        compare(&expected, &expected).to_string(),
        "5/5 probes match"
    );

    // Entries are found by key, not position; a null where a boolean is expected (the
    // connections disagreed), a missing row, another family and another Service all miss.
    let actual = Results {
        steps: vec![StepResult {
            probes: vec![
                two_pod_result(Some(true), Some(false), None),
                service_result("y/api", &[("x/a", Some(false))], Some(Family::IPv6)),
                service_result("y/web", &[("x/a", None), ("y/a", Some(true))], None),
                service_result("y/other", &[("x/a", Some(false))], None),
            ],
        }],
    };
    let cmp = compare(&expected, &actual);
    assert_eq!((cmp.matched, cmp.judged), (2, 5), "{cmp}");
    let web = |from: &str, expected: bool| Mismatch {
        step: 1,
        probe: Probe {
            service: Some("y/web".into()),
            port: 80,
            protocol: Proto::Tcp,
            family: None,
        },
        from: from.into(),
        to: "service/y/web".into(),
        expected,
        actual: None,
    };
    assert_eq!(cmp.mismatches[0], web("x/a", true));
    assert_eq!(cmp.mismatches[1], web("z/a", false));
    assert_eq!(cmp.mismatches[2].probe.service.as_deref(), Some("y/api"));
    let text = cmp.to_string();
    assert!(
        text.contains("step 1 service y/web port 80 TCP IPv4: x/a expected true, got missing"),
        "{text}"
    );
    assert!(
        text.contains("step 1 service y/api port 80 TCP IPv4: x/a expected false, got missing"),
        "{text}"
    );

    // A pod probe on the Service's port is a different entry.
    let pods_only = Results {
        steps: vec![StepResult {
            probes: vec![two_pod_result(Some(true), Some(false), None)],
        }],
    };
    assert_eq!(compare(&expected, &pods_only).matched, 2);
}

#[test]
fn service_matrix_renders_one_column() {
    let r = service_result("y/web", &[("x/a", Some(true)), ("z/a", Some(false))], None);
    let exp = service_result("y/web", &[("x/a", Some(true)), ("z/a", Some(true))], None);
    let text = render_matrix(&r, Some(&exp));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].trim_end().ends_with("service/y/web"), "{text}");
    assert!(lines[1].trim_end().ends_with('.'), "{text}");
    assert!(lines[2].trim_end().ends_with("X!"), "{text}");
}
