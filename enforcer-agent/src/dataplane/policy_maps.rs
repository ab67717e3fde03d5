//! Writing and removing what the per-packet lookups read: identities, and each endpoint's
//! policy entries (two sets per endpoint, switched by one write of its record), with
//! removals that failed kept and retried.

use aya::maps::lpm_trie::Key;
use aya::maps::IterableMap as _;
use enforcer_common::{endpoint::EndpointInfo, maps as names, policy::PolicyKey};
use ipnet::IpNet;

use super::entries::{self, PolicyEntries};
use super::report::{is_not_found, SyncError, SyncErrorClass, SyncReport};
use super::{exact_addr, map_err, Dataplane, DataplaneError, EndpointState, Iface, Result};
use crate::model::PodKey;

/// Policy entries written per syscall.
const WRITE_BATCH: usize = 4096;

impl Dataplane {
    /// A new endpoint's state: parity 1 "in force" with no entries, so that the first write
    /// goes to parity 0.
    pub(super) fn new_endpoint(&mut self, iface: &Iface) -> EndpointState {
        let ep_id = self.next_ep_id;
        self.next_ep_id += 1;
        EndpointState {
            pod: None,
            ifname: iface.name.clone(),
            info: EndpointInfo {
                ep_id,
                policy_set: entries::set_id(ep_id, 1),
                ..Default::default()
            },
            entries: PolicyEntries::default(),
            attached: false,
            plan: None,
        }
    }
    /// Programs one endpoint: its new entries under the set not in force, then its record
    /// switched to them (one write), then the old set removed, then the programs attached.
    /// On failure returns the state to keep: the previous one when nothing of the new state
    /// is in force (the new set's entries are removed again), `None` for an endpoint that never
    /// was in force.
    #[allow(clippy::type_complexity)]
    pub(super) fn sync_endpoint(
        &mut self,
        pod: &PodKey,
        plan: &crate::compile::EndpointPlan,
        iface: &Iface,
        desired: PolicyEntries,
        mut state: EndpointState,
        report: &mut SyncReport,
    ) -> std::result::Result<(EndpointState, bool), Box<(Option<EndpointState>, DataplaneError)>>
    {
        let known = state.pod.is_some() || state.attached || !state.entries.is_empty();
        let ep_id = state.info.ep_id;
        let entries_changed = desired != state.entries || !state.attached;
        let mut set = state.info.policy_set;
        if entries_changed {
            set = entries::set_id(ep_id, set ^ 1);
            if let Err(e) = self.write_entries(set, &desired) {
                self.remove_entries(set, &desired);
                return Err(Box::new((known.then_some(state), e)));
            }
            report.entries_written += desired.len();
        }
        let info = entries::endpoint_info(plan, &desired, ep_id, set);
        let mut changed = false;
        if info != state.info || !state.attached {
            if let Err(e) = self.endpoints_map.insert(iface.ifindex, info, 0) {
                if entries_changed {
                    self.remove_entries(set, &desired);
                }
                return Err(Box::new((
                    known.then_some(state),
                    map_err(names::ENDPOINTS, "insert")(e),
                )));
            }
            changed = true;
        }
        if entries_changed {
            let old_set = state.info.policy_set;
            let old = std::mem::take(&mut state.entries);
            self.remove_entries_tracked(old_set, &old, report);
        }
        state.pod = Some(pod.clone());
        state.ifname = iface.name.clone();
        state.info = info;
        state.entries = desired;
        if !state.attached {
            if let Err(e) = self.attach(iface) {
                // Its maps are in place; the attach is tried again at the next sync.
                return Err(Box::new((Some(state), e)));
            }
            state.attached = true;
            report.attached.push(iface.name.clone());
        }
        Ok((state, changed))
    }
    /// Removes entries, keeping those whose removal failed for the next sync.
    pub(super) fn remove_entries_tracked(
        &mut self,
        set: u32,
        entries: &PolicyEntries,
        report: &mut SyncReport,
    ) {
        let failed = self.try_remove_entries(set, entries);
        report.entries_removed += entries.len() - failed.len();
        if !failed.is_empty() {
            report.delete_failures += failed.len();
            self.leftovers.push((set, failed));
        }
    }
    /// Tries again to remove what earlier syncs could not.
    pub(super) fn retry_leftovers(&mut self, report: &mut SyncReport) {
        for (set, entries) in std::mem::take(&mut self.leftovers) {
            self.remove_entries_tracked(set, &entries, report);
        }
        if report.delete_failures > 0 {
            report.errors.push(SyncError {
                class: SyncErrorClass::MapDelete,
                pod: None,
                detail: format!(
                    "{} policy entries could not be removed (retried at the next sync)",
                    report.delete_failures
                ),
            });
        }
    }
    /// Removes entries; returns those whose removal failed (a missing entry is removed).
    pub(super) fn try_remove_entries(
        &mut self,
        set: u32,
        entries: &PolicyEntries,
    ) -> PolicyEntries {
        let mut failed = PolicyEntries::default();
        for (&key, &rule) in &entries.exact {
            let k = PolicyKey {
                set: set.to_be_bytes(),
                ..key
            };
            if let Err(e) = self.policy_exact.remove(&k) {
                if !is_not_found(&e) {
                    failed.exact.insert(key, rule);
                }
            }
        }
        for (&(len, key), &rule) in &entries.ranges {
            let k = PolicyKey {
                set: set.to_be_bytes(),
                ..key
            };
            if let Err(e) = self.policy_ranges.remove(&Key::new(len, k)) {
                if !is_not_found(&e) {
                    failed.ranges.insert((len, key), rule);
                }
            }
        }
        failed
    }
    pub(super) fn remove_entries(&mut self, set: u32, entries: &PolicyEntries) -> usize {
        for &key in entries.exact.keys() {
            let _ = self.policy_exact.remove(&PolicyKey {
                set: set.to_be_bytes(),
                ..key
            });
        }
        for &(len, key) in entries.ranges.keys() {
            let key = PolicyKey {
                set: set.to_be_bytes(),
                ..key
            };
            let _ = self.policy_ranges.remove(&Key::new(len, key));
        }
        entries.len()
    }
    pub(super) fn write_entries(&mut self, set: u32, entries: &PolicyEntries) -> Result<()> {
        // Thousands per pod with large peer sets: written in batches, not one syscall each.
        let exact: Vec<(PolicyKey, u32)> = entries
            .exact
            .iter()
            .map(|(&key, &rule)| {
                let key = PolicyKey {
                    set: set.to_be_bytes(),
                    ..key
                };
                (key, rule)
            })
            .collect();
        super::map_batch::update_all(self.policy_exact.map(), WRITE_BATCH, &exact).map_err(
            |io_error| {
                map_err(names::POLICY_EXACT, "insert")(aya::maps::MapError::SyscallError(
                    aya::sys::SyscallError {
                        call: "bpf_map_update_batch",
                        io_error,
                    },
                ))
            },
        )?;
        for (&(len, key), &rule) in &entries.ranges {
            let key = PolicyKey {
                set: set.to_be_bytes(),
                ..key
            };
            self.policy_ranges
                .insert(&Key::new(len, key), rule, 0)
                .map_err(map_err(names::POLICY_RANGES, "insert"))?;
        }
        Ok(())
    }
    /// Exact addresses go to the hash map, shorter prefixes to the family's trie.
    pub(super) fn insert_identity(&mut self, net: &IpNet, id: u32) -> Result<()> {
        if let Some(addr) = exact_addr(net) {
            return self
                .id_addr
                .insert(addr, id, 0)
                .map_err(map_err(names::IDENTITY_ADDR, "insert"));
        }
        match net {
            IpNet::V4(n) => self
                .id_v4
                .insert(
                    &Key::new(n.prefix_len() as u32, n.network().octets()),
                    id,
                    0,
                )
                .map_err(map_err(names::IDENTITY_V4, "insert")),
            IpNet::V6(n) => self
                .id_v6
                .insert(
                    &Key::new(n.prefix_len() as u32, n.network().octets()),
                    id,
                    0,
                )
                .map_err(map_err(names::IDENTITY_V6, "insert")),
        }
    }
    pub(super) fn remove_identity(&mut self, net: &IpNet) {
        if let Some(addr) = exact_addr(net) {
            let _ = self.id_addr.remove(&addr);
            return;
        }
        let _ = match net {
            IpNet::V4(n) => self
                .id_v4
                .remove(&Key::new(n.prefix_len() as u32, n.network().octets())),
            IpNet::V6(n) => self
                .id_v6
                .remove(&Key::new(n.prefix_len() as u32, n.network().octets())),
        };
    }
}
