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
        let key = Words([32, u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]])]);
        IDENTITY_V4.get(key.as_key::<Key<[u8; 4]>>()).copied().unwrap_or(identity::WORLD)
    } else {
        let key = Key::new(128, *addr);
        IDENTITY_V6.get(&key).copied().unwrap_or(identity::WORLD)
    }
}

/// A map key built in aligned 32-bit words. `PolicyKey` and the trie's `Key` have alignment 1
/// (byte arrays, packed): built field by field, the BPF target stores them a byte at a time and
/// clears their padding through a call to its byte-loop `memset`, at every probe.
#[repr(C, align(8))]
struct Words<const N: usize>([u32; N]);

impl<const N: usize> Words<N> {
    /// The words as the key type `K`, which must be `N * 4` bytes of plain data.
    #[inline(always)]
    fn as_key<K>(&self) -> &K {
        const { assert!(core::mem::size_of::<K>() == N * 4) };
        // SAFETY: same size (checked above), `K` is plain data of alignment ≤ 8, every byte
        // of the words is initialised.
        unsafe { &*(self.0.as_ptr() as *const K) }
    }
}

/// The words of `PolicyKey::new(set, dir, p, ident, port)`, in its byte order.
#[inline(always)]
fn policy_words(set: u32, dir: u8, p: u8, ident: u32, port: u16) -> [u32; 4] {
    let port = port.to_be_bytes();
    [
        u32::from_ne_bytes(set.to_be_bytes()),
        u32::from_ne_bytes([dir, p, 0, 0]),
        u32::from_ne_bytes(ident.to_be_bytes()),
        u32::from_ne_bytes([port[0], port[1], 0, 0]),
    ]
}

#[inline(always)]
fn exact(set: u32, dir: u8, p: u8, ident: u32, port: u16) -> Option<u32> {
    let key = Words(policy_words(set, dir, p, ident, port));
    // SAFETY: the value is copied out at once.
    unsafe { POLICY_EXACT.get(key.as_key::<PolicyKey>()) }.copied()
}

#[inline(always)]
fn range(set: u32, dir: u8, p: u8, ident: u32, port: u16) -> Option<u32> {
    let [a, b, c, d] = policy_words(set, dir, p, ident, port);
    // `Key` is packed: its prefix length, then the data.
    let key = Words([POLICY_KEY_FULL_BITS, a, b, c, d]);
    POLICY_RANGES.get(key.as_key::<Key<PolicyKey>>()).copied()
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
