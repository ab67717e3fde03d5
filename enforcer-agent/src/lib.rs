//! The enforcer agent as a library: each module is one job (see docs/design.md, "The modules
//! of `enforcer-agent/src/`").
//!
//! - [`model`]: pods, namespaces and policies as plain data, converted from API objects.
//! - [`compile`]: pure function from the model to the tables the kernel reads.
//! - [`dataplane`]: loads, pins and attaches the programs; writes map diffs; sweeps conntrack.
//! - [`source`]: where the cluster state comes from (manifest folder, Kubernetes API).
//! - [`flows`]: flow records (decode, attribute), the flow log, `enforcer flows`.
//! - [`alerts`]: anomaly detectors over the flow records; [`metrics`]: Prometheus.
//! - [`explain`]: why a connection is allowed or denied, from the compiled tables.
//! - [`netns`]: entering network namespaces.

pub mod agent;
pub mod alerts;
pub mod compile;
pub mod dataplane;
pub mod explain;
pub mod flows;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod source;
