//! The limiter's state store: one open-addressing table of `(key, state)` pairs, so that a
//! check of a client not in any cache costs one cache miss instead of the two or three of a
//! general-purpose map.
//!
//! Implements governor's [`StateStore`] for pre-hashed `u64` keys. The table is split into
//! [`SHARDS`] shards by the key's top bits; each shard is a power-of-two array of 16-byte
//! slots (an atomic key and an atomic GCRA state, four slots to a cache line) behind a
//! read-write lock whose word sits in the same cache line as the array's address, so the only
//! line a cold check has to fetch from memory is the slot's own.
//!
//! Checks, and first sightings of a client, take the shard's read lock: a new key claims an
//! empty slot with a compare-and-swap (linear probing, no deletion while readers are in, so
//! two threads inserting one key find the same slot). Only growing the array and
//! housekeeping take the write lock; housekeeping rebuilds the array with the live keys only,
//! sized for them, which is how memory is returned.
//!
//! It holds nothing but the 64-bit keys the caller hashed and governor's state for each.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;

/// Number of shards (a power of two): enough that two cores rarely meet on one lock, few
/// enough that every shard's lock line stays in the cache.
pub const SHARDS: usize = 64;
const SHARD_SHIFT: u32 = 64 - SHARDS.trailing_zeros();
/// The smallest array a shard has.
const MIN_SLOTS: usize = 16;

/// The key value that marks an empty slot. A key that hashes to it is stored as [`ZERO_AS`]
/// (two clients sharing a bucket with odds of 2⁻⁶⁴).
const EMPTY: u64 = 0;
const ZERO_AS: u64 = 1;

/// One client's slot: the key and governor's theoretical arrival time (0 = none yet).
#[derive(Default)]
#[repr(C, align(16))]
struct Slot {
    key: AtomicU64,
    tat: AtomicU64,
}

struct Table {
    slots: Box<[Slot]>,
    /// `slots.len() - 1`.
    mask: usize,
    /// Slots holding a key.
    used: AtomicUsize,
}

impl Table {
    fn with_slots(n: usize) -> Table {
        let n = n.max(MIN_SLOTS).next_power_of_two();
        Table {
            slots: (0..n).map(|_| Slot::default()).collect(),
            mask: n - 1,
            used: AtomicUsize::new(0),
        }
    }

    /// The most keys the array takes before it grows: three quarters full, where a linear
    /// probe still ends in the first or second cache line it looks at.
    fn limit(&self) -> usize {
        self.slots.len() / 4 * 3
    }

    /// The slot holding `key`, claiming an empty one for it if it has none. `None` when the
    /// array is too full to take another key (the caller grows it and asks again).
    fn find_or_claim(&self, key: u64) -> Option<&Slot> {
        let mut i = key as usize & self.mask;
        for _ in 0..self.slots.len() {
            let slot = &self.slots[i];
            match slot.key.load(Ordering::Acquire) {
                k if k == key => return Some(slot),
                EMPTY => {
                    if self.used.load(Ordering::Relaxed) >= self.limit() {
                        return None;
                    }
                    match slot
                        .key
                        .compare_exchange(EMPTY, key, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => {
                            self.used.fetch_add(1, Ordering::Relaxed);
                            return Some(slot);
                        }
                        // Another thread claimed this slot in the meantime, for this key or
                        // another; it stays claimed, so the probe order stays valid.
                        Err(k) if k == key => return Some(slot),
                        Err(_) => {}
                    }
                }
                _ => {}
            }
            i = (i + 1) & self.mask;
        }
        None
    }

    /// Copies a live `(key, tat)` pair into this array, which no one else can see yet.
    fn put(&mut self, key: u64, tat: u64) {
        let mut i = key as usize & self.mask;
        loop {
            let slot = &mut self.slots[i];
            if *slot.key.get_mut() == EMPTY {
                *slot.key.get_mut() = key;
                *slot.tat.get_mut() = tat;
                *self.used.get_mut() += 1;
                return;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// A new array holding the pairs of this one that `keep` accepts, with `slots` slots
    /// (a power of two that holds them below the limit).
    fn rebuilt(&mut self, slots: usize, keep: impl Fn(u64) -> bool) -> Table {
        let mut next = Table::with_slots(slots);
        for slot in self.slots.iter_mut() {
            let (key, tat) = (*slot.key.get_mut(), *slot.tat.get_mut());
            if key != EMPTY && keep(tat) {
                next.put(key, tat);
            }
        }
        next
    }
}

/// A cache-line-aligned shard: the lock word and the array's address share one line.
#[repr(align(64))]
struct Shard(RwLock<Table>);

impl Shard {
    fn read(&self) -> RwLockReadGuard<'_, Table> {
        // Nothing panics while holding the lock; if something ever did, the table is still
        // consistent (every write is a single atomic store or a whole-array swap).
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A keyed state store over pre-hashed, uniformly distributed `u64` keys.
pub struct ClientTable {
    shards: Box<[Shard]>,
}

impl Default for ClientTable {
    fn default() -> ClientTable {
        ClientTable {
            shards: (0..SHARDS)
                .map(|_| Shard(RwLock::new(Table::with_slots(MIN_SLOTS))))
                .collect(),
        }
    }
}

impl ClientTable {
    fn shard(&self, key: u64) -> &Shard {
        &self.shards[(key >> SHARD_SHIFT) as usize]
    }

    /// Bytes held by the arrays (not counting the fixed shard headers).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().slots.len() * size_of::<Slot>())
            .sum()
    }
}

/// Runs governor's decision `f` against one slot's state, retrying if another thread moved
/// the state in between (the same protocol as governor's own in-memory state).
fn measure<T, E>(
    tat: &AtomicU64,
    f: impl Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
) -> Result<T, E> {
    let mut prev = tat.load(Ordering::Acquire);
    loop {
        let (result, next) = f((prev != 0).then(|| Nanos::from(prev)))?;
        match tat.compare_exchange_weak(prev, next.into(), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(result),
            Err(actual) => prev = actual,
        }
    }
}

impl StateStore for ClientTable {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let key = if *key == EMPTY { ZERO_AS } else { *key };
        let shard = self.shard(key);
        loop {
            {
                let table = shard.read();
                if let Some(slot) = table.find_or_claim(key) {
                    return measure(&slot.tat, f);
                }
            }
            let mut table = shard.write();
            // Someone else may have grown it while this thread waited for the lock.
            if table.used.load(Ordering::Relaxed) >= table.limit() {
                let slots = table.slots.len() * 2;
                *table = table.rebuilt(slots, |_| true);
            }
        }
    }
}

impl ShrinkableKeyedStateStore<u64> for ClientTable {
    /// Drops every key whose state is no different from a fresh one, and returns the memory:
    /// each shard's array is rebuilt with only the live keys, at twice the size they need
    /// (so the next arrivals do not make it grow at once), never larger than it was.
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = drop_below.as_u64();
        for shard in self.shards.iter() {
            let mut table = shard.write();
            let live = table
                .slots
                .iter()
                .filter(|s| {
                    s.key.load(Ordering::Relaxed) != EMPTY
                        && s.tat.load(Ordering::Relaxed) > drop_below
                })
                .count();
            let slots = (live * 8 / 3).next_power_of_two().min(table.slots.len());
            *table = table.rebuilt(slots, |tat| tat > drop_below);
        }
    }

    /// A no-op: [`retain_recent`](Self::retain_recent) already sizes the arrays to what they hold.
    fn shrink_to_fit(&self) {}

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().used.load(Ordering::Relaxed))
            .sum()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Adds one to the state: counts how often a key was measured.
    fn bump(store: &ClientTable, key: u64) -> u64 {
        store
            .measure_and_replace(&key, |old| {
                let n = old.map_or(0, Nanos::as_u64) + 1;
                Ok::<_, ()>((n, Nanos::from(n)))
            })
            .unwrap()
    }

    fn spread(i: u64) -> u64 {
        // A bijection that spreads consecutive numbers over all bits, like a hash would.
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    #[test]
    fn counts_per_key_across_growth() {
        let store = ClientTable::default();
        for round in 1..=3 {
            for i in 0..20_000 {
                assert_eq!(bump(&store, spread(i)), round);
            }
        }
        assert_eq!(store.len(), 20_000);
        // Three quarters full at most, half full at least after growing.
        let slots = store.bytes() / size_of::<Slot>();
        assert!(
            (20_000 * 4 / 3..=20_000 * 4).contains(&slots),
            "{slots} slots"
        );
    }

    #[test]
    fn zero_key_is_a_key() {
        let store = ClientTable::default();
        assert_eq!(bump(&store, 0), 1);
        assert_eq!(bump(&store, 0), 2);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn refusal_leaves_the_state_alone() {
        let store = ClientTable::default();
        assert_eq!(bump(&store, 7), 1);
        let refused: Result<(), &str> = store.measure_and_replace(&7, |_| Err("no"));
        assert_eq!(refused, Err("no"));
        assert_eq!(bump(&store, 7), 2);
    }

    #[test]
    fn retain_recent_keeps_only_live_keys_and_shrinks() {
        let store = ClientTable::default();
        for i in 0..10_000 {
            bump(&store, spread(i));
        }
        // Keys 0..100 measured 5 times (state 5), the rest once (state 1).
        for _ in 0..4 {
            for i in 0..100 {
                bump(&store, spread(i));
            }
        }
        let before = store.bytes();
        store.retain_recent(Nanos::from(4));
        assert_eq!(store.len(), 100);
        assert!(store.bytes() * 8 <= before, "{} of {before}", store.bytes());
        for i in 0..100 {
            assert_eq!(bump(&store, spread(i)), 6);
        }
        assert_eq!(bump(&store, spread(100)), 1);
    }

    #[test]
    fn concurrent_first_sightings_share_one_slot() {
        let store = Arc::new(ClientTable::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..50_000 {
                        bump(&store, spread(i));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.len(), 50_000);
        for i in 0..50_000 {
            assert_eq!(bump(&store, spread(i)), 5, "key {i}");
        }
    }
}
