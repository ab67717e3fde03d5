//! The built-in demo scenario (the files of `demo/`): what `lab up` without a scenario and
//! `lab demo` bring up.

use crate::scenario::Scenario;

/// The built-in demo scenario.
pub const DEMO_CLUSTER: &str = include_str!("demo/cluster.yaml");
pub const DEMO_POLICIES: &str = include_str!("demo/policies.yaml");
pub const DEMO_PROBES: &str = include_str!("demo/probes.yaml");

pub fn demo_scenario() -> Scenario {
    Scenario::from_strs("demo", DEMO_CLUSTER, DEMO_POLICIES, DEMO_PROBES)
        .expect("the built-in demo scenario is valid (checked by a unit test)")
}
