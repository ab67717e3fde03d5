//! The network-namespace lab: builds a node and its pods as network namespaces, runs the real
//! agent against them, and measures which connections policies let through.
//!
//! - [`scenario`]: scenario directories (FORMAT.md), result matrices and their comparison.
//! - [`topology`]: the namespaces, veth pairs, addresses and routes (RAII).
//! - [`instance`]: one lab instance: topology + agent process + state directory.
//! - [`servers`] / [`probe`]: listeners and clients inside pod namespaces.
//! - [`cli`]: `enforcer lab ...` ([`cli::LabCommand`], [`cli::run`]); [`demo`]: `lab demo`.

pub mod cli;
pub mod demo;
pub mod instance;
pub mod probe;
pub mod scenario;
pub mod servers;
pub mod topology;

#[cfg(test)]
mod root_tests;
