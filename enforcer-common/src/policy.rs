//! Policy lookup keys and identities.

/// Identity of a peer address, found by longest-prefix match in the identity tries.
pub mod identity {
    /// In a policy key: any peer (a rule with an empty or missing `from`/`to`).
    pub const ANY: u32 = 0;
    /// The pod's own node (kubelet probes): always allowed.
    pub const HOST: u32 = 1;
    /// An address in no trie prefix.
    pub const WORLD: u32 = 2;
    /// First identity the agent hands out.
    pub const FIRST_ALLOCATED: u32 = 256;
}

/// Bits of [`PolicyKey`] before `port`: set, direction, protocol, padding and identity all match
/// exactly; the rest of the prefix length covers the port.
pub const POLICY_KEY_FIXED_BITS: u32 = 96;
/// Prefix length of a full lookup key (fixed part and all 16 port bits).
pub const POLICY_KEY_FULL_BITS: u32 = POLICY_KEY_FIXED_BITS + 16;
/// Port blocks of at most this many port-prefix bits (256 ports) are expanded into single
/// ports in `POLICY_EXACT`; wider ones go to the `POLICY_RANGES` trie. The agent writes the
/// entries by it (`dataplane::entries`) and replays the kernel's probe order by it
/// (`compile::evaluate`).
pub const MAX_EXPANDED_BITS: u8 = 8;

/// Key of `POLICY_EXACT` and data of a `POLICY_RANGES` LPM-trie key. All multi-byte fields
/// are big-endian so that the trie's bitwise prefix matches them most significant bit first,
/// and a wide port range becomes a few port prefixes.
///
/// Lookups per new flow: a fixed number, whatever the number of policies (see the kernel's
/// `policy::allowed_by`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PolicyKey {
    /// Policy set (the endpoint's `policy_set`), big-endian.
    pub set: [u8; 4],
    /// `direction::INGRESS` or `direction::EGRESS`.
    pub direction: u8,
    /// IP protocol, or `proto::ANY` for a rule without ports.
    pub proto: u8,
    pub _pad: [u8; 2],
    /// Peer identity (`identity::ANY` for any peer), big-endian.
    pub identity: [u8; 4],
    /// Destination port, big-endian (network order). Zero: every port (always for
    /// `proto::ANY`).
    pub port: [u8; 2],
    pub _pad2: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 16);

impl PolicyKey {
    #[inline(always)]
    pub const fn new(set: u32, direction: u8, proto: u8, identity: u32, port: u16) -> Self {
        Self {
            set: set.to_be_bytes(),
            direction,
            proto,
            _pad: [0; 2],
            identity: identity.to_be_bytes(),
            port: port.to_be_bytes(),
            _pad2: [0; 2],
        }
    }
}

/// In a `POLICY_EXACT` or `POLICY_RANGES` value: the entry denies (the other bits name the
/// rule, 0 for a NetworkPolicy's isolation). Without it the entry allows. Only the entries of a
/// direction that cluster policies apply to deny; rule ids stay below this bit.
pub const RULE_DENY: u32 = 1 << 31;

/// Value of the one-entry `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Bumped by the agent after each policy change; conntrack entries made under an older
    /// revision are re-checked against the policy on their next packet.
    pub revision: u32,
    /// Reserved (zero).
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 8);
