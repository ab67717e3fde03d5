//! The real program, loaded once per process (the kernel tests' `Fixture`, under
//! [`super::policy::POLICY`]), with its connection and fragment maps emptied before each
//! input so that every input starts from the state the model starts from, and the verdict of
//! a run read back with its reason (the drop counters say which reason it was).

use std::cell::RefCell;

use aya::maps::{HashMap, Map, MapData};
use aya::programs::{TestRun, TestRunOptions};
use enforcer_common::ct::{CtEntry, CtKey, FragEntry, FragKey};
use enforcer_common::maps::{self, programs};
use enforcer_common::reason::{counter, DropReason};
use enforcer_tests::{Fixture, DROP, PASS};

use super::model::Verdict;
use super::policy::POLICY;

type Bytes<const N: usize> = [u8; N];
const FRAG_KEY: usize = std::mem::size_of::<FragKey>();
const FRAG_ENTRY: usize = std::mem::size_of::<FragEntry>();

pub struct Kernel {
    fixture: Fixture,
    conntrack: HashMap<MapData, CtKey, CtEntry>,
    /// Raw bytes: only emptied, never read.
    fragments: HashMap<MapData, Bytes<FRAG_KEY>, Bytes<FRAG_ENTRY>>,
}

thread_local! {
    static KERNEL: RefCell<Option<Kernel>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's datapath, loading it on first use.
pub fn with<R>(f: impl FnOnce(&mut Kernel) -> R) -> R {
    KERNEL.with(|k| {
        let mut k = k.borrow_mut();
        f(k.get_or_insert_with(Kernel::load))
    })
}

impl Kernel {
    fn load() -> Kernel {
        // Small tables: an input holds a few packets, and every input starts empty.
        let mut fixture = Fixture::with_sizes(
            POLICY,
            &[
                (maps::CONNTRACK, 1024),
                (maps::FRAGMENTS, 1024),
                (maps::DROP_RATELIMIT, 1024),
            ],
        );
        let conntrack = fixture
            .dp
            .take_conntrack()
            .expect("conntrack not taken yet");
        let pin = fixture.pin_dir().join(maps::FRAGMENTS);
        let data = MapData::from_pin(&pin).expect("opening the fragment map's pin");
        let fragments =
            HashMap::try_from(Map::LruHashMap(data)).expect("the fragment map's layout");
        // The maps live as long as this process holds them: without the pins nothing is left
        // behind in the bpffs when a fuzzing run is stopped (libFuzzer exits without running
        // destructors).
        let _ = std::fs::remove_dir_all(fixture.pin_dir());
        Kernel {
            fixture,
            conntrack,
            fragments,
        }
    }

    /// Forgets every connection and fragment record.
    pub fn reset(&mut self) {
        let keys: Vec<CtKey> = self.conntrack.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.conntrack.remove(&k);
        }
        let keys: Vec<_> = self.fragments.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.fragments.remove(&k);
        }
    }

    /// The verdict for a frame, or why `BPF_PROG_TEST_RUN` refused it.
    pub fn run(&mut self, frame: &[u8], ingress: bool) -> Result<Verdict, String> {
        let name = if ingress {
            programs::POD_INGRESS
        } else {
            programs::POD_EGRESS
        };
        let before = self.fixture.dp.counters();
        let prog = self.fixture.dp.program(name).expect("program loaded");
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..Default::default()
        };
        let ret = prog
            .test_run(opts)
            .map_err(|e| format!("{e:?}"))?
            .return_value;
        let after = self.fixture.dp.counters();
        let dropped: Vec<DropReason> = DropReason::ALL
            .into_iter()
            .filter(|r| {
                let i = (counter::DROP_BASE + *r as u32) as usize;
                after[i] > before[i]
            })
            .collect();
        Ok(match ret {
            PASS => {
                assert!(
                    dropped.is_empty(),
                    "passed and counted as dropped: {dropped:?}"
                );
                Verdict::Pass
            }
            DROP => {
                assert_eq!(dropped.len(), 1, "a drop counts exactly one reason");
                Verdict::Drop(dropped[0])
            }
            other => panic!("unexpected tc action {other} (no Service is configured)"),
        })
    }
}
