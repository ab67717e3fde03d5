//! The logic of the fuzz targets, as functions of the input bytes: the targets in
//! `fuzz_targets/` only call them, and the committed corpus is replayed through the same
//! functions by a plain test (`tests/tests/fuzz_corpus.rs` includes this crate's modules), so
//! what the fuzzer checks is what `cargo test` checks.
//!
//! - [`manifests`]: a file of a manifest folder, read as `enforcer agent --manifests DIR`
//!   reads it, compiled for every node it names and turned into map entries;
//! - [`manifests_json`]: the same path, with NetworkPolicies, Pods and Services as structured
//!   mutations of valid objects (deep into conversion and compilation, where random YAML
//!   rarely gets);
//! - [`flow_decode`]: ring-buffer records decoded, attributed and rendered as the flow sink
//!   and `enforcer flows` do;
//! - [`packet`]: packets through the real program (`BPF_PROG_TEST_RUN`) against a model of
//!   the verdict (needs root).

pub mod flow_decode;
pub mod manifests;
pub mod manifests_json;
pub mod packet;
