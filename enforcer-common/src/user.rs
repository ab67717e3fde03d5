//! Userspace conveniences (feature `user`): `aya::Pod` impls.

use crate::{ct, endpoint, flow, policy, service};

// SAFETY: all of these are `#[repr(C)]`, `Copy`, made only of integers and byte arrays with
// explicit padding fields, so every bit pattern is valid and there is no uninitialised padding.
unsafe impl aya::Pod for endpoint::EndpointInfo {}
unsafe impl aya::Pod for policy::PolicyKey {}
unsafe impl aya::Pod for policy::Config {}
unsafe impl aya::Pod for ct::CtKey {}
unsafe impl aya::Pod for ct::CtEntry {}
unsafe impl aya::Pod for ct::Removal {}
unsafe impl aya::Pod for ct::FragKey {}
unsafe impl aya::Pod for ct::FragEntry {}
unsafe impl aya::Pod for flow::FlowKey {}
unsafe impl aya::Pod for flow::FlowEvent {}
unsafe impl aya::Pod for flow::ConnEndEvent {}
unsafe impl aya::Pod for service::FrontendKey {}
unsafe impl aya::Pod for service::Frontend {}
unsafe impl aya::Pod for service::BackendKey {}
unsafe impl aya::Pod for service::BackendAddr {}
unsafe impl aya::Pod for service::NatKey {}
unsafe impl aya::Pod for service::NatEntry {}
unsafe impl aya::Pod for service::AffinityKey {}
unsafe impl aya::Pod for service::Affinity {}
unsafe impl aya::Pod for service::MemberKey {}
