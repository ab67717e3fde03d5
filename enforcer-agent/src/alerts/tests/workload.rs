//! Workload identity of flow ends.

use super::*;
use crate::alerts::workload::{network_of, trim_controller_suffix, workload_of};
use crate::alerts::Workload;

#[test]
fn pod_names_lose_their_controller_suffix() {
    let cases = [
        ("web-7d4b9c8f6-x7k2p", "web"),          // Deployment
        ("coredns-5d78c9869d-r8xvb", "coredns"), // Deployment, 10-char hash
        ("my-api-5d78c9869d-r8xvb", "my-api"),   // dashes in the name
        ("db-0", "db"),                          // StatefulSet
        ("kafka-broker-12", "kafka-broker"),     // StatefulSet
        ("fluentd-x7k2p", "fluentd"),            // DaemonSet / Job
        ("backup-28391234-x7k2p", "backup"),     // CronJob
        ("redis", "redis"),                      // bare pod
        ("my-app-store", "my-app-store"),        // words are kept
        ("api-v2", "api-v2"),
        ("my-db-x7k2p", "my-db"),   // a short word before the suffix stays
        ("web-abcde", "web-abcde"), // vowels: not generated
        ("-0", "-0"),
    ];
    for (pod, want) in cases {
        assert_eq!(trim_controller_suffix(pod), want, "{pod}");
    }
}

#[test]
fn the_owner_wins_over_the_app_label_which_wins_over_the_name() {
    let mut end = pod("shop", "frontend-7d4b9c8f6-x7k2p", "10.0.1.5");
    assert_eq!(workload_of(&end).to_string(), "shop/frontend");
    std::sync::Arc::make_mut(&mut end.labels)
        .insert("app.kubernetes.io/name".into(), "storefront".into());
    assert_eq!(workload_of(&end).to_string(), "shop/storefront");
    std::sync::Arc::make_mut(&mut end.labels).insert("app".into(), "web".into());
    assert_eq!(workload_of(&end).to_string(), "shop/web");
    // The owner the pod names wins over labels.
    end.workload = Some(std::sync::Arc::new(crate::model::Owner {
        kind: "Deployment".into(),
        name: "frontend".into(),
    }));
    assert_eq!(workload_of(&end).to_string(), "shop/frontend");
    assert_eq!(workload_of(&ext("192.0.2.1")).to_string(), "ip:192.0.2.1");
    assert_eq!(
        workload_of(&ext("2001:db8::1")).to_string(),
        "ip:2001:db8::1"
    );
}

#[test]
fn external_addresses_aggregate_to_24_and_64() {
    assert_eq!(
        network_of("192.0.2.77".parse().unwrap()).to_string(),
        "192.0.2.0/24"
    );
    assert_eq!(
        network_of("2001:db8:1:2:3:4:5:6".parse().unwrap()).to_string(),
        "2001:db8:1:2::/64"
    );
}

#[test]
fn workloads_are_strings_on_the_wire() {
    for s in [
        "shop/web",
        "ip:10.0.0.1",
        "ip:2001:db8::1",
        "cidr:192.0.2.0/24",
        "cidr:2001:db8::/64",
    ] {
        let w: Workload = serde_json::from_value(serde_json::json!(s)).unwrap();
        assert_eq!(serde_json::to_value(&w).unwrap(), serde_json::json!(s));
    }
    for bad in [
        "web",
        "ip:nope",
        "cidr:10.0.0.0/99",
        "a/b/c",
        "/web",
        "shop/",
    ] {
        assert!(bad.parse::<Workload>().is_err(), "{bad}");
    }
}
