//! The agent's memory of recent flows: a bounded buffer of the latest records for queries, and
//! a broadcast to followers (`enforcer flows --follow`).
//!
//! Pushing never waits for a reader: the buffer drops its oldest record when full, and a
//! follower that falls more than the broadcast capacity behind loses the oldest records it has
//! not read yet and is told how many ([`Followed::Lost`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::{broadcast, mpsc, oneshot};

use super::enrich::FlowRecord;
use super::filter::Filter;

/// Records kept for queries unless configured otherwise.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Records a follower may fall behind before it loses some.
pub const DEFAULT_FOLLOW_BUFFER: usize = 4_096;

/// Cheap to clone: every clone is the same store.
#[derive(Clone)]
pub struct FlowStore {
    inner: Arc<Inner>,
}

struct Inner {
    capacity: usize,
    /// Oldest first, with the record's parsed time.
    ring: Mutex<VecDeque<(SystemTime, Arc<FlowRecord>)>>,
    tx: broadcast::Sender<Arc<FlowRecord>>,
    /// Whoever fills the store from a buffer of its own (the agent's flow sink, which reads
    /// the ring buffer on a clock): asked to empty it before a query (see [`FlowStore::catch_up`]).
    filler: std::sync::OnceLock<mpsc::Sender<oneshot::Sender<()>>>,
}

/// The longest a query waits for the filler to catch up.
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// What a follower receives next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Followed {
    Flow(Arc<FlowRecord>),
    /// This many records went by while the follower was too slow (counted before any
    /// filtering, so some of them may not have matched its filter).
    Lost(u64),
}

/// New records as they are pushed, with loss markers.
pub struct Follower {
    rx: broadcast::Receiver<Arc<FlowRecord>>,
}

impl Follower {
    pub fn new(rx: broadcast::Receiver<Arc<FlowRecord>>) -> Self {
        Follower { rx }
    }

    /// The next record or loss marker; `None` once the store is gone.
    pub async fn next(&mut self) -> Option<Followed> {
        match self.rx.recv().await {
            Ok(r) => Some(Followed::Flow(r)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Followed::Lost(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// Like [`Follower::next`] without waiting: `None` when nothing is pending.
    pub fn try_next(&mut self) -> Option<Followed> {
        match self.rx.try_recv() {
            Ok(r) => Some(Followed::Flow(r)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Followed::Lost(n)),
            Err(_) => None,
        }
    }
}

/// The time of a record, for `since` queries. A record whose time does not parse counts as
/// pushed now.
fn record_time(r: &FlowRecord) -> SystemTime {
    humantime::parse_rfc3339_weak(&r.time).unwrap_or_else(|_| SystemTime::now())
}

/// The records of `items` (oldest first) that match, limited to the `last` ones.
fn select(
    items: impl DoubleEndedIterator<Item = (SystemTime, Arc<FlowRecord>)>,
    filter: &Filter,
    last: Option<usize>,
    since: Option<SystemTime>,
) -> Vec<Arc<FlowRecord>> {
    let wanted =
        |(t, r): &(SystemTime, Arc<FlowRecord>)| since.is_none_or(|s| *t >= s) && filter.matches(r);
    match last {
        // Walk back from the newest so that `--last 20` does not filter the whole buffer.
        Some(n) => {
            let mut v: Vec<_> = items.rev().filter(wanted).take(n).map(|(_, r)| r).collect();
            v.reverse();
            v
        }
        None => items.filter(wanted).map(|(_, r)| r).collect(),
    }
}

impl FlowStore {
    /// A store of the latest `capacity` records (at least one).
    pub fn new(capacity: usize) -> Self {
        Self::with_follow_buffer(capacity, DEFAULT_FOLLOW_BUFFER)
    }

    /// `follow_buffer`: how many records a follower may fall behind before losing some.
    pub fn with_follow_buffer(capacity: usize, follow_buffer: usize) -> Self {
        let (tx, _) = broadcast::channel(follow_buffer.max(1));
        FlowStore {
            inner: Arc::new(Inner {
                capacity: capacity.max(1),
                ring: Mutex::new(VecDeque::with_capacity(capacity.clamp(1, 1024))),
                tx,
                filler: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Names the filler of this store (once): a query first asks it, through `tx`, to push
    /// what it holds, and waits for the reply (see [`Self::catch_up`]).
    pub fn set_filler(&self, tx: mpsc::Sender<oneshot::Sender<()>>) {
        let _ = self.inner.filler.set(tx);
    }

    /// Asks the filler to push what it holds and waits (at most [`CATCH_UP_WAIT`]): the flow
    /// sink reads the ring buffer every 10 ms, and a query right after a connection must see
    /// it. Without a filler, or if it does not answer in time, returns at once / then.
    pub async fn catch_up(&self) {
        let Some(tx) = self.inner.filler.get() else {
            return;
        };
        let (done, wait) = oneshot::channel();
        if tx.try_send(done).is_ok() {
            let _ = tokio::time::timeout(CATCH_UP_WAIT, wait).await;
        }
    }

    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    pub fn len(&self) -> usize {
        self.ring().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, VecDeque<(SystemTime, Arc<FlowRecord>)>> {
        // A panic while holding the lock leaves the deque consistent (every operation on it is
        // a single push or pop), so a poisoned lock is still usable.
        self.inner.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a record (dropping the oldest when full) and hands it to the followers.
    /// Never waits for a reader.
    pub fn push(&self, rec: FlowRecord) {
        let time = record_time(&rec);
        self.push_at(rec, time);
    }

    /// [`Self::push`] for a record whose `time` the caller has at hand (the flow sink made the
    /// string from it): no parsing it back.
    pub fn push_at(&self, rec: FlowRecord, time: SystemTime) {
        self.push_shared(Arc::new(rec), time);
    }

    /// [`Self::push_at`] for a record already shared (the flow sink makes it in place: a
    /// record is large, and each move copies it).
    pub fn push_shared(&self, rec: Arc<FlowRecord>, time: SystemTime) {
        let mut ring = self.ring();
        if ring.len() >= self.inner.capacity {
            ring.pop_front();
        }
        ring.push_back((time, rec.clone()));
        // Sent under the lock so that `query_and_follow` splits the stream exactly: every
        // record is either in its history or seen by its follower, never both or neither.
        // An error only means that nobody follows.
        let _ = self.inner.tx.send(rec);
    }

    /// The buffered records that match, oldest first: only those at or after `since`, and of
    /// those only the `last` ones.
    pub fn query(
        &self,
        filter: &Filter,
        last: Option<usize>,
        since: Option<SystemTime>,
    ) -> Vec<FlowRecord> {
        let items: Vec<_> = self.ring().iter().cloned().collect();
        select(items.into_iter(), filter, last, since)
            .into_iter()
            .map(|r| (*r).clone())
            .collect()
    }

    /// New records from now on (unfiltered; the receiver reports lag as `Lagged(n)`).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FlowRecord>> {
        self.inner.tx.subscribe()
    }

    /// [`FlowStore::query`] and a follower that starts right after the last record the query
    /// saw, so that nothing is missed or repeated between the two.
    pub fn query_and_follow(
        &self,
        filter: &Filter,
        last: Option<usize>,
        since: Option<SystemTime>,
    ) -> (Vec<Arc<FlowRecord>>, Follower) {
        let (items, rx) = {
            let ring = self.ring();
            let items: Vec<_> = ring.iter().cloned().collect();
            (items, self.inner.tx.subscribe())
        };
        // Filtering happens outside the lock: `push` waits only for the copy of the pointers.
        (
            select(items.into_iter(), filter, last, since),
            Follower::new(rx),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::flows::filter::fixture::*;
    use crate::flows::filter::Verdict;

    /// Record `i`: from port `i`, at second `i` after an epoch; even ones are dropped.
    fn rec(i: u16) -> FlowRecord {
        let (mut s, d) = debug_to_backend();
        s.port = Some(i);
        let mut r = if i.is_multiple_of(2) {
            dropped(s, d)
        } else {
            allowed(s, d)
        };
        r.time = humantime::format_rfc3339_millis(at(i)).to_string().into();
        r
    }

    fn at(i: u16) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + u64::from(i))
    }

    fn ports(v: &[FlowRecord]) -> Vec<u16> {
        v.iter().map(|r| r.src.port.unwrap()).collect()
    }

    fn dropped_only() -> Filter {
        let mut f = Filter::default();
        f.include.verdict = vec![Verdict::Dropped];
        f
    }

    #[test]
    fn keeps_the_latest_capacity_records() {
        let s = FlowStore::new(5);
        for i in 1..=8 {
            s.push(rec(i));
        }
        assert_eq!(s.len(), 5);
        assert_eq!(
            ports(&s.query(&Filter::default(), None, None)),
            [4, 5, 6, 7, 8]
        );
        assert_eq!(FlowStore::new(0).capacity(), 1);
        assert_eq!(FlowStore::new(DEFAULT_CAPACITY).capacity(), 10_000);
    }

    #[test]
    fn last_since_and_filter_combine() {
        let s = FlowStore::new(100);
        for i in 1..=10 {
            s.push(rec(i));
        }
        let all = Filter::default();
        assert_eq!(ports(&s.query(&all, Some(3), None)), [8, 9, 10]);
        assert_eq!(ports(&s.query(&all, Some(0), None)), Vec::<u16>::new());
        assert_eq!(ports(&s.query(&all, Some(50), None)).len(), 10);
        // The last N *matching* records.
        assert_eq!(ports(&s.query(&dropped_only(), Some(2), None)), [8, 10]);
        // Since is inclusive.
        assert_eq!(ports(&s.query(&all, None, Some(at(8)))), [8, 9, 10]);
        assert_eq!(ports(&s.query(&dropped_only(), Some(1), Some(at(3)))), [10]);
        assert_eq!(
            ports(&s.query(&dropped_only(), None, Some(at(5)))),
            [6, 8, 10]
        );
        assert!(s.query(&all, None, Some(at(11))).is_empty());
    }

    /// A query first has the filler push what it holds: a record it held is in the answer.
    #[tokio::test]
    async fn a_query_sees_what_the_filler_held() {
        let store = FlowStore::new(10);
        let (tx, mut rx) = mpsc::channel::<oneshot::Sender<()>>(1);
        store.set_filler(tx);
        let filler = {
            let store = store.clone();
            tokio::spawn(async move {
                let done = rx.recv().await.unwrap();
                store.push(rec(3));
                done.send(()).unwrap();
            })
        };
        assert!(store.is_empty());
        store.catch_up().await;
        assert_eq!(store.query(&Filter::default(), None, None).len(), 1);
        filler.await.unwrap();
        // A filler that is gone does not hold a query up.
        store.catch_up().await;
    }

    #[tokio::test]
    async fn followers_see_new_records_only() {
        let s = FlowStore::new(10);
        s.push(rec(1));
        let (history, mut f) = s.query_and_follow(&Filter::default(), None, None);
        assert_eq!(history.len(), 1);
        s.push(rec(2));
        s.push(rec(3));
        let mut raw = s.subscribe();
        s.push(rec(4));
        for want in [2, 3, 4] {
            match f.next().await {
                Some(Followed::Flow(r)) => assert_eq!(r.src.port, Some(want)),
                other => panic!("expected record {want}, got {other:?}"),
            }
        }
        assert!(f.try_next().is_none());
        assert_eq!(raw.recv().await.unwrap().src.port, Some(4));
    }

    #[tokio::test]
    async fn a_slow_follower_gets_a_loss_marker_then_the_newest() {
        let s = FlowStore::with_follow_buffer(100, 4);
        let mut f = Follower::new(s.subscribe());
        for i in 1..=10 {
            s.push(rec(i));
        }
        assert_eq!(f.next().await, Some(Followed::Lost(6)));
        let mut rest = Vec::new();
        while let Some(Followed::Flow(r)) = f.try_next() {
            rest.push(r.src.port.unwrap());
        }
        assert_eq!(rest, [7, 8, 9, 10]);
        // The buffer for queries is not affected by a follower's lag.
        assert_eq!(s.len(), 10);
    }

    #[tokio::test]
    async fn follower_ends_when_the_store_is_gone() {
        let s = FlowStore::new(10);
        let mut f = Follower::new(s.subscribe());
        drop(s);
        assert_eq!(f.next().await, None);
    }
}
