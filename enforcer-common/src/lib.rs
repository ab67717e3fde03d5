//! Types shared by the kernel programs (`enforcer-ebpf`) and the agent (`enforcer-agent`).
//!
//! Every struct here is a map key, a map value or a ring-buffer record: `#[repr(C)]`, `Copy`,
//! explicit padding, no `bool`/`Option`/`usize`, and a compile-time size check. Pinned maps are
//! an interface: changing a layout means changing the map's name (see [`maps`]).
#![no_std]

pub mod ct;
pub mod endpoint;
pub mod flow;
pub mod maps;
pub mod policy;
pub mod proto;
pub mod reason;
pub mod service;

#[cfg(feature = "user")]
mod user;

/// Address family of a packet or map entry.
pub mod family {
    pub const IPV4: u8 = 4;
    pub const IPV6: u8 = 6;
}

/// Traffic direction as the pod sees it.
pub mod direction {
    /// Into the pod: TC egress of the host-side veth.
    pub const INGRESS: u8 = 0;
    /// Out of the pod: TC ingress of the host-side veth.
    pub const EGRESS: u8 = 1;
}
