//! Time-window building blocks shared by the detectors: EWMA baselines, a bounded map with
//! least-recently-seen eviction, a sliding window of distinct keys, and a cooldown.
//!
//! Times are milliseconds since the Unix epoch, taken from the records.

use std::collections::VecDeque;

use super::{HashMap, HashSet};
use std::hash::Hash;

use super::Severity;

/// Exponentially weighted moving average of per-bucket values.
///
/// The first samples are averaged plainly (the weight of sample n is `max(alpha, 1/n)`), so the
/// baseline starts at the mean of what was seen instead of creeping up from zero.
#[derive(Clone, Debug)]
pub struct Ewma {
    alpha: f64,
    value: f64,
    samples: u64,
}

impl Ewma {
    pub fn new(alpha: f64) -> Self {
        Ewma {
            alpha,
            value: 0.0,
            samples: 0,
        }
    }

    pub fn update(&mut self, x: f64) {
        self.samples += 1;
        let w = self.alpha.max(1.0 / self.samples as f64);
        self.value += w * (x - self.value);
    }

    /// `k` empty buckets. Past a few hundred the baseline is zero to any precision that
    /// matters, so the loop is cut there.
    pub fn update_zeros(&mut self, k: u64) {
        for _ in 0..k.min(512) {
            self.update(0.0);
        }
    }

    pub fn value(&self) -> f64 {
        self.value
    }
}

/// Entry of a [`BoundedMap`].
struct Slot<V> {
    last_seen: u64,
    value: V,
}

/// A map holding at most `cap` entries. Inserting into a full map first evicts the least
/// recently seen eighth (at least one entry), so eviction costs O(n) once per n/8 inserts.
pub struct BoundedMap<K, V> {
    cap: usize,
    entries: HashMap<K, Slot<V>>,
    evicted: u64,
}

impl<K: Hash + Eq + Clone, V> BoundedMap<K, V> {
    pub fn new(cap: usize) -> Self {
        BoundedMap {
            cap: cap.max(1),
            entries: HashMap::default(),
            evicted: 0,
        }
    }

    /// The entry of `key`, created with `init` if absent; marks it seen at `now`.
    pub fn touch(&mut self, key: &K, now: u64, init: impl FnOnce() -> V) -> &mut V {
        // A key seen before (most records): one more lookup, but no copy of the key.
        if self.entries.contains_key(key) {
            let slot = self.entries.get_mut(key).expect("just found");
            slot.last_seen = slot.last_seen.max(now);
            return &mut slot.value;
        }
        if self.entries.len() >= self.cap {
            self.evict_oldest();
        }
        let slot = self.entries.entry(key.clone()).or_insert_with(|| Slot {
            last_seen: now,
            value: init(),
        });
        slot.last_seen = slot.last_seen.max(now);
        &mut slot.value
    }

    fn evict_oldest(&mut self) {
        let n = (self.cap / 8).max(1);
        let mut seen: Vec<u64> = self.entries.values().map(|s| s.last_seen).collect();
        let (_, cutoff, _) = seen.select_nth_unstable(n - 1);
        let cutoff = *cutoff;
        let before = self.entries.len();
        self.entries.retain(|_, s| s.last_seen > cutoff);
        self.evicted += (before - self.entries.len()) as u64;
    }

    /// Forgets entries not seen since `now - ttl`.
    pub fn forget_idle(&mut self, now: u64, ttl: u64) {
        let before = self.entries.len();
        self.entries
            .retain(|_, s| s.last_seen.saturating_add(ttl) >= now);
        self.evicted += (before - self.entries.len()) as u64;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries removed so far, by eviction or by [`Self::forget_idle`].
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

/// Distinct keys seen in the last `window` milliseconds, kept as `slots` sub-windows: a key
/// leaves when the last sub-window containing it expires, so the window slides in steps of
/// `window / slots`. At most `cap` distinct keys are held; further new keys are ignored.
pub struct DistinctWindow<K> {
    slot_ms: u64,
    slots: usize,
    /// (sub-window index, keys first seen in it or seen again in it).
    ring: VecDeque<(u64, HashSet<K>)>,
    /// Key → number of sub-windows containing it.
    refs: HashMap<K, u32>,
    cap: usize,
}

impl<K: Hash + Eq + Clone> DistinctWindow<K> {
    pub fn new(window_ms: u64, slots: usize, cap: usize) -> Self {
        let slots = slots.max(1);
        DistinctWindow {
            slot_ms: (window_ms / slots as u64).max(1),
            slots,
            ring: VecDeque::new(),
            refs: HashMap::default(),
            cap,
        }
    }

    /// Drops sub-windows that ended before `now - window`, appending the keys that left the
    /// window to `left`.
    pub fn advance(&mut self, now: u64, left: &mut Vec<K>) {
        let current = now / self.slot_ms;
        while let Some((index, _)) = self.ring.front() {
            if index + self.slots as u64 > current {
                break;
            }
            let (_, keys) = self.ring.pop_front().expect("front exists");
            for k in keys {
                let r = self.refs.get_mut(&k).expect("a key in a slot is counted");
                *r -= 1;
                if *r == 0 {
                    self.refs.remove(&k);
                    left.push(k);
                }
            }
        }
    }

    /// Records `key` at `now` (call [`Self::advance`] first). True when the key is new to the
    /// window.
    pub fn insert(&mut self, now: u64, key: K) -> bool {
        let current = now / self.slot_ms;
        // Already in the current slot (most records: the same peers again): nothing changes.
        if let Some((i, keys)) = self.ring.back() {
            if *i == current && keys.contains(&key) {
                return false;
            }
        }
        let is_new = !self.refs.contains_key(&key);
        if is_new && self.refs.len() >= self.cap {
            return false;
        }
        if self.ring.back().is_none_or(|(i, _)| *i < current) {
            self.ring.push_back((current, HashSet::default()));
        }
        let (_, keys) = self.ring.back_mut().expect("just ensured");
        if keys.insert(key.clone()) {
            *self.refs.entry(key).or_insert(0) += 1;
        }
        is_new
    }

    pub fn len(&self) -> usize {
        self.refs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.refs.keys()
    }
}

/// At most one alert per cooldown, except that a higher severity may escalate once.
#[derive(Clone, Debug, Default)]
pub struct Cooldown {
    last: Option<(u64, Severity)>,
}

impl Cooldown {
    /// Whether an alert of `severity` may fire at `now`; if so, it is recorded as fired.
    pub fn permit(&mut self, now: u64, cooldown_ms: u64, severity: Severity) -> bool {
        let ok = match self.last {
            None => true,
            Some((at, sev)) => now >= at.saturating_add(cooldown_ms) || severity > sev,
        };
        if ok {
            // An escalation keeps the original start, so the cooldown is not extended by it.
            let at = match self.last {
                Some((at, _)) if now < at.saturating_add(cooldown_ms) => at,
                _ => now,
            };
            self.last = Some((at, severity));
        }
        ok
    }
}

/// How far `observed` (in a bucket) is above `baseline` (per bucket): `Warning` from
/// `max(min, factor × baseline)`, `Critical` from `critical_factor` × both (the minimum scaled
/// by `critical_factor / factor`), else `None`.
pub fn spike_severity(
    observed: f64,
    baseline: f64,
    min: f64,
    factor: f64,
    critical_factor: f64,
) -> Option<Severity> {
    let warn_at = min.max(factor * baseline);
    let crit_at = (min * critical_factor / factor).max(critical_factor * baseline);
    if observed >= crit_at.max(warn_at) {
        Some(Severity::Critical)
    } else if observed >= warn_at {
        Some(Severity::Warning)
    } else {
        None
    }
}

/// Seconds to milliseconds, saturating.
pub fn ms(seconds: u64) -> u64 {
    seconds.saturating_mul(1000)
}
