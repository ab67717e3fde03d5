//! The conntrack sweeper task: idle connections' ends to the flow sink, and the flush of UDP
//! flows whose Service backend went.

use std::time::Duration;

use super::flow_sink;
use crate::dataplane::ct_sweep;
use crate::dataplane::services::GoneBackend;
use crate::metrics::Metrics;
use enforcer_common::ct::{CtEntry, CtKey};

/// Sweeps the conntrack map every `every`, sending the ends of idle connections to the flow
/// sink. Runs on a blocking thread: a pass reads the map a few thousand entries per syscall,
/// then removes the expired entries a batch per syscall (through the remover program; one
/// each without it).
/// Also flushes the UDP flows whose Service backend went (sent by the sync loop), as soon as
/// they arrive.
pub(super) async fn sweep_conntrack(
    map: aya::maps::HashMap<aya::maps::MapData, CtKey, CtEntry>,
    nat: crate::dataplane::services::NatMaps,
    remover: Option<ct_sweep::Remover>,
    every: Duration,
    ends: tokio::sync::mpsc::Sender<flow_sink::Swept>,
    mut flush: tokio::sync::mpsc::UnboundedReceiver<Vec<GoneBackend>>,
    metrics: Metrics,
) {
    let mut state = Some((map, nat, ct_sweep::ByteMeter::default(), remover));
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while let Some((mut map, mut nat, mut meter, mut remover)) = state.take() {
        let mut gone = Vec::new();
        tokio::select! {
            _ = tick.tick() => {}
            Some(g) = flush.recv() => gone.extend(g),
        }
        while let Ok(g) = flush.try_recv() {
            gone.extend(g);
        }
        // The maps and the meter go to the blocking thread and come back with the pass.
        let pass = match tokio::task::spawn_blocking(move || {
            let flushed = nat.flush(&mut map, &gone);
            let now = ct_sweep::monotonic_now();
            let pass = ct_sweep::sweep_with_nat(
                &mut map,
                Some(&mut nat),
                remover.as_mut(),
                now,
                &mut meter,
            )
            .and_then(|mut pass| {
                pass.ends.extend(
                    flushed?
                        .iter()
                        .filter_map(|(k, e)| ct_sweep::flushed_end(k, e)),
                );
                Ok(pass)
            });
            (map, nat, meter, remover, pass)
        })
        .await
        {
            Ok((map, nat, meter, remover, pass)) => {
                state = Some((map, nat, meter, remover));
                pass
            }
            Err(e) => {
                tracing::error!(error = %e, "conntrack sweep stopped");
                return;
            }
        };
        match pass {
            Ok(s) => {
                metrics
                    .map_entries
                    .with_label_values(&[enforcer_common::maps::CONNTRACK])
                    .set(s.live as i64);
                metrics
                    .map_pressure
                    .with_label_values(&[enforcer_common::maps::CONNTRACK])
                    .set(s.live as f64 / f64::from(enforcer_common::maps::sizes::CONNTRACK));
                let items = s
                    .ends
                    .into_iter()
                    .map(flow_sink::Swept::End)
                    .chain(s.samples.into_iter().map(flow_sink::Swept::Bytes));
                for item in items {
                    if ends.send(item).await.is_err() {
                        return; // the flow sink is gone: the agent is stopping
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "sweeping the conntrack map"),
        }
    }
}
