//! The count at start, in the background: every stored item's usage (after a start that
//! did not follow a clean stop) and its place in the recency order, read while the daemon
//! already serves.
//!
//! Reading every item before serving (damage check, recency order, and after a crash the
//! count) took 10–11 s for 1M × 1 KiB (docs/BENCHMARKS.md). Now the
//! store opens, the daemon serves, and one thread walks the items in key order, a chunk at
//! a time, under [`Census`]'s lock. A write that lands meanwhile holds the same lock around
//! its change, so that each item is counted exactly once:
//!
//! - a key the walk has passed was counted as the walk found it: the write counts its own
//!   change (old → new), as every write does once the count is done;
//! - a key still ahead of the walk is counted by the walk, as it finds it then: the write
//!   counts nothing.
//!
//! The recency order (`max_bytes`) holds, while the walk runs, only the keys written
//! since the start, and evicts nothing: those are the most recently used, and the order
//! does not know the rest yet. At the end the walk puts every key that no write touched
//! behind them, the oldest stored last (the order of use before the restart is not kept),
//! and then evicts what is over the bound. A store may so run over `max_bytes` while it
//! counts, by what is written meanwhile. A read meanwhile of a key the walk has not placed
//! does not count as a use (the Get path takes no lock of the count).

use std::collections::HashSet;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::{Mutex, MutexGuard};

use super::{data_len, Item, SledStore};

/// Items read per step of the walk: the lock is held for one step, so a write waits at
/// most that long (a fraction of a millisecond) while the count runs.
const CHUNK: usize = 512;

/// The count at start and what writes must know of it.
pub(super) struct Census {
    /// Until the walk is done (or the store closes): writes take the lock.
    active: AtomicBool,
    /// The usage counts are not complete yet.
    counting: AtomicBool,
    state: Mutex<State>,
}

struct State {
    /// The last key the walk read; `None` before the first.
    passed: Option<sled::IVec>,
    /// The walk counts usage (no clean stop saved it).
    counting: bool,
    /// The store is closing: the walk ends where it is.
    stopped: bool,
    /// Keys written since the start: placed in the recency order by their writes.
    touched: HashSet<Box<[u8]>>,
    /// What the walk found for the recency order: when each key was stored, its size.
    found: Vec<(Option<SystemTime>, sled::IVec, u64)>,
}

/// A write's hold on the count while it runs: the change it makes and its counting are
/// one step as the walk sees them.
pub(super) struct Pass<'a>(MutexGuard<'a, State>);

impl Pass<'_> {
    /// Whether a change of `key` is counted by the write that makes it (else the walk
    /// counts what it finds there).
    pub(super) fn write_counts(&self, key: &[u8]) -> bool {
        !self.0.counting || self.0.passed.as_ref().is_some_and(|p| key <= p.as_ref())
    }

    /// `key` was written: its write placed it in the recency order.
    pub(super) fn touched(&mut self, key: &[u8]) {
        if !self.0.touched.contains(key) {
            self.0.touched.insert(key.into());
        }
    }
}

impl Census {
    /// A count yet to run; `counting` when the usage counts must be counted too.
    pub(super) fn new(counting: bool) -> Census {
        Census {
            active: AtomicBool::new(true),
            counting: AtomicBool::new(counting),
            state: Mutex::new(State {
                passed: None,
                counting,
                stopped: false,
                touched: HashSet::new(),
                found: Vec::new(),
            }),
        }
    }

    /// The hold a write takes while the count runs; `None` once it is done.
    pub(super) fn during(&self) -> Option<Pass<'_>> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        let state = self.state.lock();
        self.active.load(Ordering::Acquire).then_some(Pass(state))
    }

    /// Whether the usage counts are still being counted.
    pub(super) fn counting(&self) -> bool {
        self.counting.load(Ordering::Acquire)
    }

    /// The store is closing: the walk stops at its next step, and whatever it has not
    /// counted is counted again by the next start.
    pub(super) fn stop(&self) {
        self.state.lock().stopped = true;
    }
}

impl Census {
    /// Runs the count of `store` in a thread of its own, which holds the store until it is
    /// done or the store closes (a plain thread, not a task: it reads the disk for seconds).
    /// A store of at most one chunk is counted at once, before the daemon serves: its
    /// counts are exact from the first call.
    pub(super) fn start(store: Arc<SledStore>) {
        let started = std::time::Instant::now();
        if !store.walk(Some(1), started) {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("cachebackd-count".into())
            .spawn(move || store.walk(None, started));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the count of the store's items");
        }
    }
}

impl SledStore {
    /// Runs the count to its end (or until the store closes). It reads every item: damage
    /// it finds (sled's error, or its panic) marks the store suspect, for the next start
    /// to move aside and salvage (`open`); this one serves what it can read.
    #[cfg(test)]
    pub(super) fn count(&self) {
        self.walk(None, std::time::Instant::now());
    }

    /// Runs at most `steps` steps of the count (all of them if `None`); whether there is
    /// more to count. `started`: when the count began, for its log line.
    fn walk(&self, steps: Option<usize>, started: std::time::Instant) -> bool {
        let counting = self.census.counting();
        let walked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for _ in 0..steps.unwrap_or(usize::MAX) {
                if !self.count_step()? {
                    return Ok(false);
                }
            }
            Ok::<bool, sled::Error>(true)
        }));
        let damage = match walked {
            Ok(Ok(true)) => return true,
            Ok(Ok(false)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("sled panicked while reading them".to_owned()),
        };
        if let Some(e) = damage {
            self.corrupt.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "THE STORE IS DAMAGED: its items could not all be read; the daemon serves what it can, and the counts stay inexact; restart it to move the store aside and salvage what can be read");
            super::open::mark_suspect(&self.data_dir);
            self.finish_count(false);
            return false;
        }
        if counting && !self.census.counting() {
            tracing::info!(
                took_ms = started.elapsed().as_millis() as u64,
                "the store's items are counted"
            );
        }
        false
    }

    /// Reads the next chunk of items; `false` once the walk is over.
    fn count_step(&self) -> Result<bool, sled::Error> {
        let mut state = self.census.state.lock();
        if state.stopped {
            return Ok(false);
        }
        let from = match &state.passed {
            Some(k) => Bound::Excluded(k.clone()),
            None => Bound::Unbounded,
        };
        let mut read = 0;
        for kv in self.items.range::<sled::IVec, _>((from, Bound::Unbounded)) {
            let (k, v) = kv?;
            if state.counting {
                let job = k.split(|&b| b == 0).next().unwrap_or_default();
                self.add_usage(job, 1, data_len(&v) as i64);
            }
            let stored = Item::decode_times(&v).map(|t| t.stored_at);
            let size = (k.len() + v.len()) as u64;
            state.found.push((stored, k.clone(), size));
            state.passed = Some(k);
            read += 1;
            if read == CHUNK {
                return Ok(true);
            }
        }
        drop(state);
        self.finish_count(true);
        Ok(false)
    }

    /// Places every key no write touched in the recency order behind the written ones,
    /// oldest stored last, ends the count and evicts what is over the bound. `exact`: the
    /// walk read every item (else the counts are not saved at a clean stop).
    fn finish_count(&self, exact: bool) {
        let victims = {
            let mut state = self.census.state.lock();
            let mut found = std::mem::take(&mut state.found);
            // Newest first: each goes behind the one before, so the oldest ends last.
            found.sort_by_key(|f| std::cmp::Reverse(f.0));
            for (_, key, size) in found {
                if !state.touched.contains(key.as_ref()) {
                    self.recency.place_oldest(&key, size);
                }
            }
            state.touched = HashSet::new();
            if exact {
                self.census.counting.store(false, Ordering::Release);
            }
            self.census.active.store(false, Ordering::Release);
            self.recency.trim()
        };
        self.evict(victims);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::model::{ItemKey, JobName};
    use crate::policy;
    use crate::store::{Store, Usage};

    fn job() -> JobName {
        JobName::parse("j", &Default::default()).unwrap()
    }

    fn key(i: usize) -> ItemKey {
        ItemKey::new(&job(), format!("[{i:05}]").as_bytes())
    }

    /// Stored `age_s` seconds ago, `len` bytes of data.
    fn item(age_s: u64, len: usize) -> Item {
        let at = SystemTime::now() - Duration::from_secs(age_s);
        Item::data(
            policy::times_for_new(at, Duration::from_secs(60)),
            vec![7; len],
        )
    }

    /// Opens the store at `dir` as the daemon does (nothing counted yet), once the last
    /// handle in this process let go of it.
    fn open_uncounted(dir: &Path, max_bytes: u64) -> SledStore {
        for _ in 0..100 {
            match SledStore::open_bounded(dir, Duration::from_millis(100), max_bytes) {
                Err(e) if e.to_string().contains("another cachebackd holds") => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => return other.unwrap().0,
            }
        }
        panic!("the store at {} stays locked", dir.display());
    }

    /// What the items tree holds: the usage, and every key with its size in the order.
    fn recount(store: &SledStore) -> (Usage, u64) {
        let (mut usage, mut sizes) = (Usage::default(), 0);
        for kv in store.items.iter() {
            let (k, v) = kv.unwrap();
            usage.items += 1;
            usage.bytes += data_len(&v) as u64;
            sizes += (k.len() + v.len()) as u64;
        }
        (usage, sizes)
    }

    /// `N` items of job j, item `i` stored `N - i` seconds ago, left as after a crash.
    const N: usize = 3 * CHUNK;

    fn crashed_store(dir: &Path) {
        let store = open_uncounted(dir, u64::MAX);
        for i in 0..N {
            store
                .put(&key(i), &item((N - i) as u64, 100 + i % 50))
                .unwrap();
        }
        store.flush().unwrap();
    }

    #[test]
    fn writes_while_the_count_runs_are_counted_once_and_placed_as_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        crashed_store(dir.path());
        let store = open_uncounted(dir.path(), u64::MAX);
        assert!(store.counting());
        assert!(store.count_step().unwrap(), "one chunk read, more to come");
        assert_eq!(store.usage(&job()).unwrap().items, CHUNK as u64);
        // Behind the walk and ahead of it: overwrites, removals, new keys.
        let (behind, ahead) = (10, 2 * CHUNK);
        store.put(&key(behind), &item(0, 999)).unwrap();
        store.put(&key(ahead), &item(0, 5)).unwrap();
        assert!(store.remove(&key(behind + 1)).unwrap());
        assert!(store.remove(&key(ahead + 1)).unwrap());
        store.put(&key(N + 7), &item(0, 33)).unwrap();
        store.count();
        assert!(!store.counting());
        let (usage, sizes) = recount(&store);
        assert_eq!(usage.items, N as u64 - 1);
        assert_eq!(store.usage(&job()).unwrap(), usage);
        assert_eq!(store.recency.total(), sizes);
        assert_eq!(store.recency.size(key(ahead + 1).as_bytes()), None);
        // The count saved at a clean stop is the exact one.
        store.close().unwrap();
        drop(store);
        let store = open_uncounted(dir.path(), u64::MAX);
        assert!(!store.counting());
        assert_eq!(store.usage(&job()).unwrap(), usage);
    }

    #[test]
    fn nothing_is_evicted_until_the_count_is_done_then_the_oldest_go() {
        let dir = tempfile::tempdir().unwrap();
        crashed_store(dir.path());
        let full = {
            let store = open_uncounted(dir.path(), u64::MAX);
            store.count();
            recount(&store).1
        };
        // Room for about half of them.
        let store = open_uncounted(dir.path(), full / 2);
        assert!(store.count_step().unwrap());
        // Written now: the newest use, though stored first of all before the restart.
        store.put(&key(0), &item(0, 100)).unwrap();
        assert_eq!(store.evictions(&job()), 0, "nothing evicted while counting");
        store.count();
        let (usage, sizes) = recount(&store);
        assert!(sizes <= full / 2, "{sizes} over the bound {}", full / 2);
        assert_eq!(store.recency.total(), sizes);
        assert_eq!(store.usage(&job()).unwrap(), usage);
        assert_eq!(store.evictions(&job()), N as u64 - usage.items);
        // The oldest stored went first; the one written during the count stayed.
        assert!(store.get(&key(0)).unwrap().is_some());
        assert!(store.get(&key(1)).unwrap().is_none());
        assert!(store.get(&key(N - 1)).unwrap().is_some());
    }
}
