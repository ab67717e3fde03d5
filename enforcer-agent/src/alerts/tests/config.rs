//! Configuration parsing and validation, and the record handling shared by all detectors.

use super::*;
use crate::alerts::{ConfigError, Exempt, Workload};

#[test]
fn defaults_deserialize_from_empty_json_and_yaml() {
    let from_json: AlertsConfig = serde_json::from_str("{}").unwrap();
    let from_yaml: AlertsConfig = serde_yaml::from_str("{}").unwrap();
    assert_eq!(from_json, AlertsConfig::default());
    assert_eq!(from_yaml, AlertsConfig::default());
    let d = AlertsConfig::default();
    assert!(
        d.port_scan.enabled && d.deny_burst.enabled && d.first_seen.enabled && d.volume.enabled
    );
    assert_eq!(
        (
            d.port_scan.window_seconds,
            d.port_scan.distinct_ports,
            d.port_scan.distinct_peers
        ),
        (10, 20, 20)
    );
    assert_eq!(d.port_scan.critical_count, 100);
    assert_eq!(
        (d.deny_burst.bucket_seconds, d.deny_burst.min_count),
        (5, 20)
    );
    assert_eq!(d.deny_burst.factor, 5.0);
    assert_eq!(
        (d.first_seen.learning_seconds, d.first_seen.max_edges),
        (300, 100_000)
    );
    assert_eq!((d.volume.bucket_seconds, d.volume.factor), (10, 5.0));
    assert!(d.exempt_sources.is_empty());
    assert_eq!(d.validate(), Ok(()));
}

#[test]
fn partial_yaml_and_json_override_only_what_they_name() {
    let yaml = "
port_scan:
  distinct_ports: 50
volume:
  enabled: false
first_seen:
  internal_cidrs: [10.0.0.0/8]
exempt_sources: [10.1.0.0/16, monitoring/prometheus]
";
    let cfg: AlertsConfig = serde_yaml::from_str(yaml).unwrap();
    let d = AlertsConfig::default();
    assert_eq!(cfg.port_scan.distinct_ports, 50);
    assert_eq!(cfg.port_scan.distinct_peers, d.port_scan.distinct_peers);
    assert_eq!(cfg.port_scan.window_seconds, d.port_scan.window_seconds);
    assert!(!cfg.volume.enabled);
    assert_eq!(cfg.volume.min_connections, d.volume.min_connections);
    assert_eq!(
        cfg.first_seen.internal_cidrs,
        vec!["10.0.0.0/8".parse().unwrap()]
    );
    assert_eq!(cfg.first_seen.learning_seconds, 300);
    assert_eq!(cfg.deny_burst, d.deny_burst);
    assert_eq!(cfg.validate(), Ok(()));

    let cfg: AlertsConfig =
        serde_json::from_str(r#"{"deny_burst": {"factor": 8, "cooldown_seconds": 30}}"#).unwrap();
    assert_eq!(cfg.deny_burst.factor, 8.0);
    assert_eq!(cfg.deny_burst.cooldown_seconds, 30);
    assert_eq!(cfg.deny_burst.min_count, 20);
    assert_eq!(cfg.port_scan, d.port_scan);
}

#[test]
fn misspelt_fields_are_rejected() {
    let err = serde_yaml::from_str::<AlertsConfig>("port_scan:\n  distinct_port: 5\n").unwrap_err();
    assert!(err.to_string().contains("distinct_port"), "{err}");
    assert!(serde_json::from_str::<AlertsConfig>(r#"{"portscan": {}}"#).is_err());
}

/// A change that breaks a valid configuration, and the error it must give.
type Breakage = (fn(&mut AlertsConfig), ConfigError);

#[test]
fn validation_names_the_field_and_clamping_fixes_it() {
    let cases: [Breakage; 5] = [
        (
            |c| c.port_scan.window_seconds = 0,
            ConfigError::ZeroDuration {
                field: "port_scan.window_seconds",
            },
        ),
        (
            |c| c.port_scan.distinct_peers = 0,
            ConfigError::ZeroCount {
                field: "port_scan.distinct_peers",
            },
        ),
        (
            |c| c.volume.factor = 0.5,
            ConfigError::FactorBelowOne {
                field: "volume.factor",
                value: 0.5,
            },
        ),
        (
            |c| c.deny_burst.ewma_alpha = 1.5,
            ConfigError::AlphaOutOfRange {
                field: "deny_burst.ewma_alpha",
                value: 1.5,
            },
        ),
        (
            |c| c.exempt_sources = vec!["not a thing".into()],
            ConfigError::BadExempt {
                entry: "not a thing".into(),
            },
        ),
    ];
    for (break_it, want) in cases {
        let mut cfg = AlertsConfig::default();
        break_it(&mut cfg);
        assert_eq!(cfg.validate(), Err(want.clone()));
        assert_eq!(cfg.clamped().validate(), Ok(()), "clamping {want}");
    }
    let mut nan = AlertsConfig::default();
    nan.volume.ewma_alpha = f64::NAN;
    assert!(nan.validate().is_err());
    assert_eq!(nan.clamped().volume.ewma_alpha, 0.1);
}

#[test]
fn exempt_entries_parse_as_networks_addresses_or_workloads() {
    let w = |s: &str| s.parse::<Workload>().unwrap();
    assert_eq!(
        Exempt::parse("10.0.0.0/16"),
        Some(Exempt::Network("10.0.0.0/16".parse().unwrap()))
    );
    assert_eq!(
        Exempt::parse("10.0.0.7"),
        Some(Exempt::Network("10.0.0.7/32".parse().unwrap()))
    );
    assert_eq!(
        Exempt::parse("monitoring/prometheus"),
        Some(Exempt::Workload(w("monitoring/prometheus")))
    );
    assert_eq!(Exempt::parse("ip:10.0.0.7"), None);
    assert_eq!(Exempt::parse("prometheus"), None);
}

/// A sweep that would fire (see the port-scan tests), from an exempt source.
#[test]
fn exempt_sources_are_not_looked_at() {
    let mut cfg = only(AlertKind::PortScan);
    cfg.exempt_sources = vec!["monitoring/prometheus".into(), "192.168.7.0/24".into()];
    let mut alerts = Alerts::new(cfg);
    let scraper = app("monitoring", "prometheus", "10.0.9.9");
    let node = ext("192.168.7.3");
    let mut fired = Vec::new();
    for i in 0..40u64 {
        let target = ext(&format!("10.0.5.{i}"));
        fired.extend(feed(&mut alerts, flow(&scraper, &target).at(i * 100)));
        fired.extend(feed(&mut alerts, flow(&node, &target).at(i * 100)));
    }
    assert_eq!(fired, vec![]);
    assert_eq!(alerts.stats().exempt_records, 80);

    // The same sweep from anyone else fires.
    let mut alerts = Alerts::new(only(AlertKind::PortScan));
    let fired: Vec<_> = (0..40u64)
        .flat_map(|i| {
            let target = ext(&format!("10.0.5.{i}"));
            feed(&mut alerts, flow(&scraper, &target).at(i * 100))
        })
        .collect();
    assert_eq!(fired.len(), 1);
}

/// An unparsable record time falls back to `now`; a time going back is held at the latest.
#[test]
fn record_time_falls_back_to_now_and_never_goes_back() {
    let mut alerts = Alerts::new(only(AlertKind::FirstSeenEdge));
    let client = app("shop", "client", "10.0.1.5");
    feed(
        &mut alerts,
        flow(&client, &app("shop", "db", "10.0.2.7")).at(0),
    );
    // Learning ends at T0 + 300 s. A record stamped before that, observed after it.
    let mut rec = flow(&client, &app("shop", "queue", "10.0.2.8")).build();
    rec.time = "yesterday-ish".into();
    let fired = alerts.observe(&rec, wall(301_000));
    assert_eq!(fired.len(), 1, "`now` is past the learning period");
    assert_eq!(alerts.stats().bad_times, 1);
    // Out of order: stamped during learning, but the clock already passed it.
    let fired = feed(
        &mut alerts,
        flow(&client, &app("shop", "cache", "10.0.2.9")).at(1_000),
    );
    assert_eq!(fired.len(), 1, "time is held at the latest seen");
}

/// Records dropped before the IP header was read carry 0.0.0.0: no source to speak of.
#[test]
fn unspecified_sources_are_ignored() {
    let mut alerts = Alerts::new(only(AlertKind::DenyBurst));
    let zero = ext("0.0.0.0");
    for i in 0..500u64 {
        assert_eq!(
            feed(&mut alerts, flow(&zero, &zero).denied().at(i * 100)),
            vec![]
        );
    }
    assert_eq!(alerts.stats().deny_burst_sources, 0);
}
