//! The kube-proxy ruleset text, from model to nft input (no privileges), and one root test
//! that the kernel accepts it and replaces it atomically.

use super::*;
use crate::services::cluster_from_yaml;

fn pod(
    ns: &str,
    name: &str,
    labels: &str,
    ips: &[&str],
    node: Option<&str>,
    ports: &str,
) -> String {
    let list: String = ips.iter().map(|ip| format!("  - ip: {ip}\n")).collect();
    let node = node
        .map(|n| format!("  nodeName: {n}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{{labels}}}\nspec:\n{node}  containers:\n  - name: c\n    ports: [{ports}]\nstatus:\n  podIP: {}\n  podIPs:\n{list}",
        ips[0]
    )
}

fn service(
    ns: &str,
    name: &str,
    ips: &[&str],
    selector: Option<&str>,
    ports: &str,
    extra: &str,
) -> String {
    let families: Vec<&str> = ips
        .iter()
        .map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" })
        .collect();
    let selector = selector
        .map(|s| format!("  selector: {{{s}}}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  clusterIP: {}\n  clusterIPs: [{}]\n  ipFamilies: [{}]\n  ipFamilyPolicy: {}\n{selector}  ports: [{ports}]\n{extra}",
        ips[0],
        ips.join(", "),
        families.join(", "),
        if ips.len() > 1 { "RequireDualStack" } else { "SingleStack" }
    )
}

fn cluster(docs: &[String]) -> Cluster {
    let text = docs.join("---\n");
    let (cluster, errors) = cluster_from_yaml(&[&text]);
    assert!(errors.is_empty(), "{errors:?}");
    cluster
}

/// The body of one chain (its lines, trimmed) in one family's table.
fn chain<'a>(rules: &'a str, family: &str, name: &str) -> Vec<&'a str> {
    let table = rules
        .split(&format!("table {family} {TABLE} {{"))
        .nth(1)
        .unwrap_or_else(|| panic!("no {family} table in\n{rules}"));
    let table = table.split("\n}\n").next().unwrap();
    let start = table
        .find(&format!("\tchain {name} {{\n"))
        .unwrap_or_else(|| panic!("no chain {name} in the {family} table:\n{table}"));
    table[start..]
        .lines()
        .skip(1)
        .take_while(|l| *l != "\t}")
        .map(str::trim)
        .collect()
}

fn web() -> Vec<String> {
    vec![
        pod("x", "a", "app: client", &["10.244.1.10"], None, ""),
        pod("y", "a", "app: web", &["10.244.2.10", "fd00:10:244:2::10"], None, "{containerPort: 8080}"),
        pod("y", "b", "app: web", &["10.244.2.11"], None, "{containerPort: 8080}"),
        service("y", "web", &["10.96.2.10", "fd00:10:96:2::10"], Some("app: web"),
            "{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, protocol: UDP, targetPort: 5353}", ""),
    ]
}

#[test]
fn a_service_port_is_dnated_to_a_random_endpoint_at_its_target_port() {
    let rules = ruleset(&cluster(&web()), "lab");
    // Replaced as a whole, both families, in one input.
    assert!(
        rules.starts_with(
            "add table ip kube-proxy\ndelete table ip kube-proxy\ntable ip kube-proxy {"
        ),
        "{rules}"
    );
    assert!(rules
        .contains("add table ip6 kube-proxy\ndelete table ip6 kube-proxy\ntable ip6 kube-proxy {"));
    // Pod traffic (prerouting) and the node's own (output) go through the same lookup.
    assert_eq!(
        chain(&rules, "ip", "nat-prerouting"),
        [
            "type nat hook prerouting priority -100; policy accept;",
            "jump services"
        ]
    );
    assert_eq!(
        chain(&rules, "ip", "nat-output"),
        [
            "type nat hook output priority -100; policy accept;",
            "jump services"
        ]
    );
    assert_eq!(
        chain(&rules, "ip", "services"),
        ["ip daddr . meta l4proto . th dport vmap @service-ips"]
    );
    assert!(rules.contains("10.96.2.10 . tcp . 80 : goto service-y/web/tcp/80, 10.96.2.10 . udp . 53 : goto service-y/web/udp/53"), "{rules}");
    assert_eq!(
        chain(&rules, "ip", "service-y/web/tcp/80"),
        ["numgen random mod 2 vmap { 0 : goto endpoint-y/web/tcp/80/0, 1 : goto endpoint-y/web/tcp/80/1 }"]
    );
    assert_eq!(
        chain(&rules, "ip", "endpoint-y/web/tcp/80/1"),
        [
            "ip saddr 10.244.2.11 jump mark-for-masquerade",
            "meta l4proto tcp dnat to 10.244.2.11:8080"
        ]
    );
    assert_eq!(
        chain(&rules, "ip", "endpoint-y/web/udp/53/0"),
        [
            "ip saddr 10.244.2.10 jump mark-for-masquerade",
            "meta l4proto udp dnat to 10.244.2.10:5353"
        ]
    );
    // IPv6: only y/a has an IPv6 address.
    assert_eq!(
        chain(&rules, "ip6", "service-y/web/tcp/80"),
        ["numgen random mod 1 vmap { 0 : goto endpoint-y/web/tcp/80/0 }"]
    );
    assert_eq!(
        chain(&rules, "ip6", "endpoint-y/web/tcp/80/0"),
        [
            "ip6 saddr fd00:10:244:2::10 jump mark-for-masquerade",
            "meta l4proto tcp dnat to [fd00:10:244:2::10]:8080"
        ]
    );
    assert!(rules.contains("fd00:10:96:2::10 . tcp . 80 : goto service-y/web/tcp/80"));
}

#[test]
fn only_hairpin_connections_are_masqueraded() {
    let rules = ruleset(&cluster(&web()), "lab");
    assert_eq!(
        rules.matches("masquerade fully-random").count(),
        2,
        "one per family"
    );
    assert!(!rules.contains("snat"), "{rules}");
    assert_eq!(
        chain(&rules, "ip", "masquerading"),
        [
            "meta mark & 0x4000 == 0 return",
            "meta mark set meta mark xor 0x4000",
            "masquerade fully-random"
        ]
    );
    assert_eq!(
        chain(&rules, "ip", "nat-postrouting"),
        [
            "type nat hook postrouting priority 100; policy accept;",
            "jump masquerading"
        ]
    );
    // The mark is set only in endpoint chains, for the endpoint's own address.
    let marks: Vec<&str> = rules
        .lines()
        .filter(|l| l.contains("jump mark-for-masquerade"))
        .collect();
    assert_eq!(
        marks.len(),
        6,
        "2 ports x 2 backends in IPv4, 2 x 1 in IPv6: {marks:#?}"
    );
    assert!(marks
        .iter()
        .all(|l| l.trim().starts_with("ip saddr 10.244.2.")
            || l.trim().starts_with("ip6 saddr fd00:10:244:2::")));
}

#[test]
fn ports_without_endpoints_are_rejected_and_unknown_cluster_ips_dropped() {
    let mut docs = web();
    docs.push(service(
        "y",
        "cache",
        &["10.96.2.11"],
        Some("app: cache"),
        "{name: redis, port: 6379}",
        "",
    ));
    // Selector-less, no slice.
    docs.push(service(
        "y",
        "external",
        &["10.96.2.12"],
        None,
        "{name: http, port: 80, targetPort: 8080}",
        "",
    ));
    // Headless: nothing to translate, not a ClusterIP.
    docs.push("apiVersion: v1\nkind: Service\nmetadata:\n  name: headless\n  namespace: y\nspec:\n  clusterIP: None\n  clusterIPs: [None]\n  selector: {app: web}\n  ports: [{port: 80}]\n".into());
    let rules = ruleset(&cluster(&docs), "lab");
    assert!(rules.contains("10.96.2.11 . tcp . 6379 : goto reject-chain, 10.96.2.12 . tcp . 80 : goto reject-chain"), "{rules}");
    assert_eq!(chain(&rules, "ip", "reject-chain"), ["reject"]);
    assert!(
        !rules.contains("service-y/cache"),
        "no NAT chain without endpoints"
    );
    assert!(!rules.contains("headless"), "{rules}");
    assert!(
        rules.contains("elements = { 10.96.2.10, 10.96.2.11, 10.96.2.12 }"),
        "{rules}"
    );
    for fam in ["ip", "ip6"] {
        assert_eq!(
            chain(&rules, fam, "filter-forward"),
            [
                "type filter hook forward priority 0; policy accept;",
                "ct state new jump service-endpoints-check",
                "ct state new jump cluster-ips-check"
            ]
        );
        assert_eq!(
            chain(&rules, fam, "filter-output")[1..],
            chain(&rules, fam, "filter-forward")[1..]
        );
    }
    assert_eq!(
        chain(&rules, "ip", "cluster-ips-check"),
        [
            "ip daddr @cluster-ips reject comment \"a port this ClusterIP does not have\"",
            "ip daddr 10.96.0.0/16 drop comment \"an unallocated ClusterIP\"",
        ]
    );
    assert!(
        chain(&rules, "ip6", "cluster-ips-check")[1].starts_with("ip6 daddr fd00:10:96::/48 drop")
    );
    // Nothing at all: a valid table with empty sets and maps.
    let empty = ruleset(&Cluster::default(), "lab");
    assert!(!empty.contains("elements"), "{empty}");
    assert!(
        empty.contains(
            "map service-ips {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n\t}"
        ),
        "{empty}"
    );
}

#[test]
fn local_traffic_policy_keeps_each_nodes_own_endpoints() {
    let docs = vec![
        pod(
            "x",
            "a",
            "app: client",
            &["10.244.1.10"],
            Some("node-a"),
            "",
        ),
        pod("y", "a", "app: web", &["10.244.2.10"], Some("node-a"), ""),
        pod("y", "b", "app: web", &["10.244.2.11"], Some("node-b"), ""),
        pod("y", "c", "app: web", &["10.244.2.12"], Some("node-b"), ""),
        service(
            "y",
            "web",
            &["10.96.2.10"],
            Some("app: web"),
            "{port: 80}",
            "  internalTrafficPolicy: Local\n",
        ),
        service(
            "y",
            "all",
            &["10.96.2.11"],
            Some("app: web"),
            "{port: 80}",
            "",
        ),
    ];
    let c = cluster(&docs);
    let a = ruleset(&c, "node-a");
    let b = ruleset(&c, "node-b");
    let other = ruleset(&c, "node-c");
    assert_eq!(
        chain(&a, "ip", "endpoint-y/web/tcp/80/0")[1],
        "meta l4proto tcp dnat to 10.244.2.10:80"
    );
    assert!(chain(&a, "ip", "service-y/web/tcp/80")[0].starts_with("numgen random mod 1 "));
    assert!(chain(&b, "ip", "service-y/web/tcp/80")[0].starts_with("numgen random mod 2 "));
    assert_eq!(
        chain(&b, "ip", "endpoint-y/web/tcp/80/1")[1],
        "meta l4proto tcp dnat to 10.244.2.12:80"
    );
    // No endpoint on the client's node: dropped, no fallback to other nodes.
    assert!(other.contains("10.96.2.10 . tcp . 80 : drop"), "{other}");
    // Cluster policy: every node reaches all three.
    for rules in [&a, &b, &other] {
        assert!(chain(rules, "ip", "service-y/all/tcp/80")[0].starts_with("numgen random mod 3 "));
    }
}

#[test]
fn named_target_ports_resolve_per_backend_and_slices_give_selectorless_endpoints() {
    let docs = vec![
        pod("y", "a", "app: api", &["10.244.2.10"], None, "{containerPort: 8080, name: api}"),
        pod("y", "b", "app: api", &["10.244.2.11"], None, "{containerPort: 9090, name: api}"),
        pod("y", "c", "app: api", &["10.244.2.12"], None, "{containerPort: 7070, name: other}"),
        pod("z", "a", "pod: a", &["10.244.3.10", "fd00:10:244:3::10"], None, ""),
        service("y", "api", &["10.96.2.10"], Some("app: api"), "{name: api, port: 80, targetPort: api}", ""),
        service("y", "ext", &["10.96.2.11", "fd00:10:96:2::11"], None, "{name: http, port: 80, targetPort: 1}", ""),
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: ext-v4\n  namespace: y\n  labels: {kubernetes.io/service-name: ext}\naddressType: IPv4\nports: [{name: http, port: 8443, protocol: TCP}]\nendpoints:\n- addresses: [10.244.3.10]\n- addresses: [10.244.2.10]\n  conditions: {ready: false}\n".into(),
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: ext-v6\n  namespace: y\n  labels: {kubernetes.io/service-name: ext}\naddressType: IPv6\nports: [{name: http, port: 8444}]\nendpoints:\n- addresses: [\"fd00:10:244:3::10\"]\n".into(),
    ];
    let rules = ruleset(&cluster(&docs), "lab");
    assert!(
        chain(&rules, "ip", "service-y/api/tcp/80")[0].starts_with("numgen random mod 2 "),
        "y/c has no port named api"
    );
    assert_eq!(
        chain(&rules, "ip", "endpoint-y/api/tcp/80/0")[1],
        "meta l4proto tcp dnat to 10.244.2.10:8080"
    );
    assert_eq!(
        chain(&rules, "ip", "endpoint-y/api/tcp/80/1")[1],
        "meta l4proto tcp dnat to 10.244.2.11:9090"
    );
    // The slice's port, not the Service's targetPort; the unready endpoint is left out.
    assert_eq!(
        chain(&rules, "ip", "service-y/ext/tcp/80"),
        ["numgen random mod 1 vmap { 0 : goto endpoint-y/ext/tcp/80/0 }"]
    );
    assert_eq!(
        chain(&rules, "ip", "endpoint-y/ext/tcp/80/0")[1],
        "meta l4proto tcp dnat to 10.244.3.10:8443"
    );
    assert_eq!(
        chain(&rules, "ip6", "endpoint-y/ext/tcp/80/0")[1],
        "meta l4proto tcp dnat to [fd00:10:244:3::10]:8444"
    );
}

/// Without root the test returns, and its skip is recorded (see tests/src/root.rs).
use crate::root_tests::root_skip::root_or_skip;

/// The kernel takes the generated ruleset, twice in a row (the second replaces the first), and
/// a changed one leaves nothing of the old behind.
#[test]
fn the_kernel_accepts_and_replaces_the_ruleset() {
    if !root_or_skip() {
        return;
    }
    let ns = format!("enf-kp{}-node", std::process::id());
    crate::iproute::ip(&["netns", "add", &ns]).unwrap();
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            crate::iproute::delete_netns(&self.0);
        }
    }
    let _del = Del(ns.clone());
    let mut docs = web();
    docs.push(service(
        "y",
        "cache",
        &["10.96.2.11"],
        Some("app: cache"),
        "{port: 6379}",
        "",
    ));
    let first = ruleset(&cluster(&docs), "lab");
    apply(&ns, &first).unwrap();
    apply(&ns, &first).unwrap();
    let second = ruleset(&cluster(&web()[..3]), "lab");
    apply(&ns, &second).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns, "nft", "list", "ruleset"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(listed.matches("table ip kube-proxy").count(), 1, "{listed}");
    assert!(
        !listed.contains("service-y/web"),
        "the deleted Service's chains are gone:\n{listed}"
    );
    assert!(!listed.contains("10.96.2.11"), "{listed}");
}
