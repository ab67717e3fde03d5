//! Identity and policy lookups: a fixed number of map probes per new flow, whatever the number
//! of policies, rules or pods.

use aya_ebpf::maps::lpm_trie::Key;
use enforcer_common::{
    family,
    policy::{identity, PolicyKey, POLICY_KEY_FULL_BITS},
    proto,
};

use crate::maps::{IDENTITY_V4, IDENTITY_V6, POLICY};
use crate::parse::has_ports;

/// Identity of an address: its longest matching prefix in the identity trie of its family.
#[inline(always)]
pub fn identity_of(fam: u8, addr: &[u8; 16]) -> u32 {
    if fam == family::IPV4 {
        let key = Key::new(32, [addr[12], addr[13], addr[14], addr[15]]);
        IDENTITY_V4.get(&key).copied().unwrap_or(identity::WORLD)
    } else {
        let key = Key::new(128, *addr);
        IDENTITY_V6.get(&key).copied().unwrap_or(identity::WORLD)
    }
}

#[inline(always)]
fn probe(set: u32, dir: u8, p: u8, ident: u32, port: u16) -> Option<u32> {
    let key = Key::new(POLICY_KEY_FULL_BITS, PolicyKey::new(set, dir, p, ident, port));
    POLICY.get(&key).copied()
}

/// The rule that allows a flow, if any. Precedence only matters for attribution (any match
/// allows):
/// 1. the peer's identity with the protocol and destination port (port prefixes cover ranges);
/// 2. the peer's identity with any protocol (a rule without ports);
/// 3. any peer with the protocol and port;
/// 4. any peer, any protocol.
/// Protocols without ports skip 1 and 3: only rules without ports can allow them.
/// `port` is in host order.
#[inline(always)]
pub fn allowed_by(set: u32, dir: u8, ident: u32, p: u8, port: u16) -> Option<u32> {
    let ported = has_ports(p);
    if ported {
        if let Some(r) = probe(set, dir, p, ident, port) {
            return Some(r);
        }
    }
    if let Some(r) = probe(set, dir, proto::ANY, ident, 0) {
        return Some(r);
    }
    if ported {
        if let Some(r) = probe(set, dir, p, identity::ANY, port) {
            return Some(r);
        }
    }
    probe(set, dir, proto::ANY, identity::ANY, 0)
}
