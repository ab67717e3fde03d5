//! Quarantine: interfaces that look like pods' host-side veths (by name prefix, e.g. `lxc`)
//! but lead to no local pod the agent knows yet get both programs with no endpoint record.
//! The programs drop every packet of an interface without one (`unknown_endpoint`), so a new
//! pod sends and receives nothing until its policy is programmed: the window between the CNI
//! building the veth and the agent learning the pod from the API is closed.
//!
//! Once the pod is known, its endpoint takes the quarantined links over in place (the attach
//! of an endpoint finds the live pinned links and keeps them): it is never unfiltered between
//! the two. A quarantined interface that goes away takes its links with it; one that no longer
//! matches (or when quarantine is off) has its links removed.

use std::collections::BTreeMap;

use super::interfaces::{self, Iface, NET_DEV};
use super::Dataplane;

/// What one [`Dataplane::quarantine`] call changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct QuarantineReport {
    /// Interfaces put in quarantine.
    pub added: Vec<String>,
    /// Interfaces let go (gone, claimed by no pod any more, or quarantine turned off).
    pub released: Vec<String>,
    /// Interfaces whose programs could not be attached (retried at the next call).
    pub failed: Vec<(String, String)>,
}

impl Dataplane {
    /// Interfaces whose name starts with one of `prefixes` are taken for pods' host-side
    /// veths (empty: no quarantine).
    pub fn set_quarantine_prefixes(&mut self, prefixes: Vec<String>) {
        self.quarantine_prefixes = prefixes;
    }

    /// Quarantines the interfaces of the quarantine prefixes that are not endpoints (see
    /// [`Dataplane::quarantine`]); without prefixes, releases any links an earlier agent left
    /// on interfaces without an endpoint.
    /// With `full` false, nothing is done when the interface names are the ones of the
    /// previous call (a cheap poll); a full pass also resolves every name again.
    pub fn quarantine_new_interfaces(&mut self, full: bool) -> QuarantineReport {
        if self.quarantine_prefixes.is_empty() {
            return self.quarantine(&[]);
        }
        let names = match std::fs::read_to_string(NET_DEV) {
            Ok(text) => interfaces::parse_net_dev(&text),
            Err(e) => {
                return QuarantineReport {
                    failed: vec![(NET_DEV.into(), e.to_string())],
                    ..Default::default()
                }
            }
        };
        if !full && names == self.quarantine_seen {
            return QuarantineReport::default();
        }
        self.quarantine_seen = names;
        match interfaces::named_with(&self.quarantine_prefixes) {
            Ok(candidates) => self.quarantine(&candidates),
            // Nothing is released on a failed listing: what is quarantined stays so.
            Err(e) => QuarantineReport {
                failed: vec![(NET_DEV.into(), e.to_string())],
                ..Default::default()
            },
        }
    }

    /// Whether a pod's interface that is no longer an endpoint stays in quarantine (it still
    /// has a quarantine prefix and still exists): its links are kept, so the interface is
    /// never unfiltered while its pod goes away.
    pub(super) fn keep_in_quarantine(&mut self, ifindex: u32, ifname: &str) -> bool {
        let matches = self
            .quarantine_prefixes
            .iter()
            .any(|p| ifname.starts_with(p.as_str()));
        if matches && interfaces::ifindex(ifname) == Some(ifindex) {
            self.quarantined.insert(ifindex, ifname.to_owned());
            return true;
        }
        false
    }

    /// Quarantines `candidates` that are not endpoints, and releases what was quarantined
    /// and is no longer a candidate. Endpoints that took over a quarantined interface leave
    /// the quarantine silently (their links are theirs now).
    pub fn quarantine(&mut self, candidates: &[Iface]) -> QuarantineReport {
        let mut report = QuarantineReport::default();
        let endpoints = &self.endpoints;
        self.quarantined
            .retain(|ifindex, _| !endpoints.contains_key(ifindex));
        let wanted: BTreeMap<u32, &Iface> = candidates
            .iter()
            .filter(|i| !self.endpoints.contains_key(&i.ifindex))
            .map(|i| (i.ifindex, i))
            .collect();
        let stale: Vec<(u32, String)> = self
            .quarantined
            .iter()
            .filter(|(ifindex, name)| wanted.get(ifindex).is_none_or(|i| &i.name != *name))
            .map(|(i, n)| (*i, n.clone()))
            .collect();
        for (ifindex, name) in stale {
            self.detach(ifindex);
            self.quarantined.remove(&ifindex);
            report.released.push(name);
        }
        for (ifindex, iface) in wanted {
            if self.quarantined.contains_key(&ifindex) {
                continue;
            }
            match self.attach(iface) {
                Ok(()) => {
                    self.quarantined.insert(ifindex, iface.name.clone());
                    report.added.push(iface.name.clone());
                }
                Err(e) => report
                    .failed
                    .push((iface.name.clone(), format!("{:#}", anyhow::Error::new(e)))),
            }
        }
        report
    }

    /// The interfaces in quarantine now, by name.
    pub fn quarantined(&self) -> Vec<String> {
        self.quarantined.values().cloned().collect()
    }
}
