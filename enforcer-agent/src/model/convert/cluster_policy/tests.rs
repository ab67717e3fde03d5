//! Conversion tests of cluster policies.
