//! The flow log: JSON lines, to stdout or a file. Reads the ring buffer as it fills.

use std::io::Write;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use super::decode::decode;
use super::enrich::Context;

/// Which flows go to the log.
#[derive(Clone, Copy, Debug)]
pub struct Filter {
    pub allowed: bool,
}

/// Wall-clock time of a `CLOCK_MONOTONIC` timestamp (what `bpf_ktime_get_ns` returns).
pub fn wall_time(ts_ns: u64) -> SystemTime {
    let now_wall = SystemTime::now();
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now_mono = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    now_wall - Duration::from_nanos(now_mono.saturating_sub(ts_ns))
}

/// Drains the ring buffer forever, writing one JSON line per reported flow.
pub async fn run(
    ring: RingBuf<MapData>,
    ctx: Arc<RwLock<Context>>,
    mut out: Box<dyn Write + Send>,
    filter: Filter,
) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its map fd until it is dropped with the AsyncFd, and its
    // `as_raw_fd` always returns that same fd.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering the flow ring buffer: {}", e.into_parts().1))?;
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            let ev = match decode(&item) {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable flow event");
                    continue;
                }
            };
            if !ev.dropped && !filter.allowed {
                continue;
            }
            let time = humantime::format_rfc3339_millis(wall_time(ev.ts_ns)).to_string();
            let rec = ctx
                .read()
                .expect("flow context lock poisoned")
                .record(&ev, time);
            serde_json::to_writer(&mut out, &rec)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        guard.clear_ready();
    }
}
