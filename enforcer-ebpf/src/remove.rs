//! The conntrack sweeper's remover: a program the agent runs with `BPF_PROG_TEST_RUN` (never
//! attached) on a test packet holding `ct::Removal` records after an Ethernet header. Each
//! entry is removed only if it still has the stamps the sweeper read, checked and removed in
//! the kernel a few instructions apart: one syscall for a batch of entries instead of one
//! each, and no window in which a renewed entry is out of the map (the sweeper took an entry
//! out and put a renewed one back).

use aya_ebpf::{macros::classifier, programs::TcContext};
use enforcer_common::ct::{removal, Removal, REMOVALS_PER_RUN};

use crate::maps::CONNTRACK;

const ETH_HLEN: usize = 14;
const SIZE: usize = core::mem::size_of::<Removal>();
/// Where `outcome` is in a record.
const OUTCOME: usize = core::mem::offset_of!(Removal, outcome);

/// Removes what the records name; returns how many it removed.
#[classifier]
pub fn ct_remove(ctx: TcContext) -> i32 {
    let len = ctx.len() as usize;
    let mut removed = 0;
    for i in 0..REMOVALS_PER_RUN {
        let off = ETH_HLEN + i * SIZE;
        if off + SIZE > len {
            break;
        }
        let Ok(r) = ctx.load::<Removal>(off) else {
            break;
        };
        // SAFETY: the stamps are read at once from a valid pointer into the map value.
        let stamps = unsafe { CONNTRACK.get(&r.key) }.map(|e| (e.created_ns, e.last_seen_ns));
        let outcome = match stamps {
            None => removal::GONE,
            Some(s) if s == (r.created_ns, r.last_seen_ns) => match CONNTRACK.remove(&r.key) {
                Ok(()) => {
                    removed += 1;
                    removal::REMOVED
                }
                Err(_) => removal::GONE,
            },
            Some(_) => removal::RENEWED,
        };
        let _ = ctx.store(off + OUTCOME, &outcome, 0);
    }
    removed
}
