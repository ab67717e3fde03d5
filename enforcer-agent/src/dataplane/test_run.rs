//! Entry points for the kernel tests and benchmarks: endpoint records for arbitrary ifindexes
//! (where `BPF_PROG_TEST_RUN` runs packets), the loaded programs, identity lookups.

use std::collections::BTreeMap;
use std::net::IpAddr;

use aya::maps::lpm_trie::Key;
use aya::programs::SchedClassifier;
use enforcer_common::endpoint::EndpointInfo;
use ipnet::IpNet;

use super::entries::{self, PolicyEntries};
use super::{exact_addr, Dataplane, EndpointState, Iface, Result, SyncReport};
use crate::compile::tables::Tables;
use crate::model::PodKey;

impl Dataplane {
    /// Writes endpoint records for arbitrary ifindexes without attaching (test runs use the
    /// loopback's ifindex): `pods` are the local pods and their ifindexes.
    pub fn sync_for_test_run(
        &mut self,
        tables: &Tables,
        pod: &PodKey,
        ifindex: u32,
    ) -> Result<SyncReport> {
        self.sync_for_test_run_many(tables, &[(pod.clone(), ifindex)])
    }
    /// [`Dataplane::sync_for_test_run`] for several local pods.
    pub fn sync_for_test_run_many(
        &mut self,
        tables: &Tables,
        pods: &[(PodKey, u32)],
    ) -> Result<SyncReport> {
        let mut ifaces = BTreeMap::new();
        for (pod, ifindex) in pods {
            let ifindex = *ifindex;
            ifaces.insert(
                pod.clone(),
                Iface {
                    name: String::from("lo"),
                    ifindex,
                },
            );
            // Mark as attached so sync does not try to attach to the loopback.
            if let Some(s) = self.endpoints.get_mut(&ifindex) {
                s.attached = true;
            } else {
                let ep_id = self.next_ep_id;
                self.next_ep_id += 1;
                self.endpoints.insert(
                    ifindex,
                    EndpointState {
                        pod: Some(pod.clone()),
                        ifname: "lo".into(),
                        info: EndpointInfo {
                            ep_id,
                            policy_set: entries::set_id(ep_id, 1),
                            ..Default::default()
                        },
                        entries: PolicyEntries::default(),
                        attached: true,
                        plan: None,
                    },
                );
            }
        }
        self.sync(tables, &ifaces)
    }
    /// Looks up the identity the kernel would find for an address (tests, explain).
    pub fn identity_of(&self, ip: IpAddr) -> Option<u32> {
        if let Ok(id) = self
            .id_addr
            .get(&exact_addr(&IpNet::from(ip)).expect("a host prefix"), 0)
        {
            return Some(id);
        }
        match ip {
            IpAddr::V4(a) => self.id_v4.get(&Key::new(32, a.octets()), 0).ok(),
            IpAddr::V6(a) => self.id_v6.get(&Key::new(128, a.octets()), 0).ok(),
        }
    }
    /// The loaded program, for test runs and benchmarks.
    pub fn program(&self, name: &str) -> Option<&SchedClassifier> {
        self.ebpf.program(name).and_then(|p| p.try_into().ok())
    }
}
