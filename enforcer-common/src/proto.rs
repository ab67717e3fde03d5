//! IP protocol numbers the datapath knows, and the one table of their names: what flow records,
//! `enforcer explain`, `enforcer flows --protocol` and the metrics call them (the Kubernetes
//! spelling for TCP, UDP and SCTP, which the agent's `model::Protocol` takes from here too).

/// In a policy key: a rule without ports, matching every protocol.
pub const ANY: u8 = 0;
pub const ICMP: u8 = 1;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMPV6: u8 = 58;
pub const SCTP: u8 = 132;

/// Number and name of every protocol that has a name.
pub const NAMES: [(u8, &str); 5] = [
    (TCP, "TCP"),
    (UDP, "UDP"),
    (SCTP, "SCTP"),
    (ICMP, "ICMP"),
    (ICMPV6, "ICMPv6"),
];

/// The name of protocol `p`, if it has one.
pub const fn name(p: u8) -> Option<&'static str> {
    let mut i = 0;
    while i < NAMES.len() {
        if NAMES[i].0 == p {
            return Some(NAMES[i].1);
        }
        i += 1;
    }
    None
}

/// How a protocol number is written out: its name, `unknown` for 0 (a packet dropped before
/// its protocol was read), `proto-N` for the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Display(pub u8);

impl core::fmt::Display for Display {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match (self.0, name(self.0)) {
            (_, Some(n)) => f.write_str(n),
            (0, None) => f.write_str("unknown"),
            (n, None) => write!(f, "proto-{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    #[test]
    fn named_protocols_are_written_by_name_and_the_rest_by_number() {
        for (p, n) in NAMES {
            assert_eq!(name(p), Some(n));
            assert_eq!(Display(p).to_string(), n);
        }
        assert_eq!(name(ANY), None);
        assert_eq!(Display(0).to_string(), "unknown");
        assert_eq!(Display(47).to_string(), "proto-47");
    }
}
