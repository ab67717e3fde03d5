//! Identity and policy lookups: a fixed number of map probes per new flow, whatever the number
//! of policies, rules or pods.

use aya_ebpf::maps::lpm_trie::Key;
use enforcer_common::{
    endpoint::{F_ALL_PORTS, F_ANY_PEER, F_ANY_PROTO, F_WIDE_PORT_RANGES},
    family,
    policy::{identity, PolicyKey, POLICY_KEY_FULL_BITS},
    proto,
};

use crate::maps::{IDENTITY_ADDR, IDENTITY_V4, IDENTITY_V6, POLICY_EXACT, POLICY_RANGES};
use crate::parse::has_ports;

/// Identity of an address: the exact address (pods, the node) in one hash lookup, otherwise
/// its longest matching prefix among the ipBlock prefixes of its family. An exact address is
/// always the longest match, so the order cannot change the answer.
#[inline(always)]
pub fn identity_of(fam: u8, addr: &[u8; 16]) -> u32 {
    // SAFETY: the value is copied out at once.
    if let Some(id) = unsafe { IDENTITY_ADDR.get(addr) } {
        return *id;
    }
    if fam == family::IPV4 {
        let key = Key::new(32, [addr[12], addr[13], addr[14], addr[15]]);
        IDENTITY_V4.get(&key).copied().unwrap_or(identity::WORLD)
    } else {
        let key = Key::new(128, *addr);
        IDENTITY_V6.get(&key).copied().unwrap_or(identity::WORLD)
    }
}

#[inline(always)]
fn exact(set: u32, dir: u8, p: u8, ident: u32, port: u16) -> Option<u32> {
    // SAFETY: the value is copied out at once.
    unsafe { POLICY_EXACT.get(&PolicyKey::new(set, dir, p, ident, port)) }.copied()
}

#[inline(always)]
fn range(set: u32, dir: u8, p: u8, ident: u32, port: u16) -> Option<u32> {
    let key = Key::new(POLICY_KEY_FULL_BITS, PolicyKey::new(set, dir, p, ident, port));
    POLICY_RANGES.get(&key).copied()
}

/// The entry that decides a new flow, if any (its value: the rule, with
/// `policy::RULE_DENY` set when it denies). The probes go from the most specific entry to the
/// least, so that in a direction with cluster policies, whose entries the agent resolved so
/// that the most specific one holding a flow carries its verdict, the first hit decides; in a
/// direction with NetworkPolicies only every entry allows and the order only decides which
/// rule a report names. For the peer's identity, then any peer:
/// 1. protocol and port (single ports and blocks of up to 256 ports, expanded);
/// 2. protocol and a wide port block (the trie's longest prefix);
/// 3. protocol and every port;
/// 4. any protocol.
/// Protocols without ports only look for entries of any protocol. Kinds of entry the endpoint
/// has none of (its `F_*` flags) are not probed: at most six hash probes and two trie probes.
/// `port` is in host order.
#[inline(always)]
pub fn lookup(flags: u32, set: u32, dir: u8, ident: u32, p: u8, port: u16) -> Option<u32> {
    let ported = has_ports(p);
    for who in [ident, identity::ANY] {
        if who == identity::ANY && flags & F_ANY_PEER == 0 {
            break;
        }
        if ported {
            if let Some(r) = exact(set, dir, p, who, port) {
                return Some(r);
            }
            if flags & F_WIDE_PORT_RANGES != 0 {
                if let Some(r) = range(set, dir, p, who, port) {
                    return Some(r);
                }
            }
            if flags & F_ALL_PORTS != 0 {
                if let Some(r) = exact(set, dir, p, who, 0) {
                    return Some(r);
                }
            }
        }
        if flags & F_ANY_PROTO != 0 {
            if let Some(r) = exact(set, dir, proto::ANY, who, 0) {
                return Some(r);
            }
        }
    }
    None
}
