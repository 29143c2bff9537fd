//! `max_bytes`: the recency order of every stored item and its size, so that the store
//! can evict the least recently used items when it grows past its bound.
//!
//! The order is an `lru::LruCache` (a hash map threaded with a doubly linked list: O(1)
//! promote, insert and pop; a well-kept crate rather than a hand-rolled list), holding each
//! item's key and the bytes it takes (key plus record). One mutex guards it; a Get holds it
//! for one hash lookup and two pointer swaps, never across I/O. The same sizes let GetMany
//! tell an item's size before reading it.

use lru::LruCache;
use parking_lot::Mutex;

impl Order {
    fn place(&mut self, key: &[u8], size: u64) {
        let old = match self.items.get_mut(key) {
            Some(s) => Some(std::mem::replace(s, size)),
            None => self.items.push(key.into(), size).map(|(_, s)| s),
        };
        self.items.promote(key);
        self.total = self.total + size - old.unwrap_or(0);
    }

    /// Pops the least recently used until the order is within `max_bytes`, keeping the
    /// most recent item even if it alone is over.
    fn trim(&mut self, max_bytes: u64) -> Vec<Box<[u8]>> {
        let mut victims = Vec::new();
        while self.total > max_bytes && self.items.len() > 1 {
            let Some((victim, s)) = self.items.pop_lru() else {
                break;
            };
            self.total -= s;
            victims.push(victim);
        }
        victims
    }
}

/// The recency order and the bytes it covers.
pub(super) struct Recency {
    max_bytes: u64,
    inner: Mutex<Order>,
}

struct Order {
    items: LruCache<Box<[u8]>, u64>,
    total: u64,
}

impl Recency {
    /// An empty order bounded by `max_bytes`.
    pub(super) fn new(max_bytes: u64) -> Recency {
        Recency {
            max_bytes,
            inner: Mutex::new(Order {
                items: LruCache::unbounded(),
                total: 0,
            }),
        }
    }

    /// A Get of `key` found it: it becomes the most recently used.
    pub(super) fn touch(&self, key: &[u8]) {
        self.inner.lock().items.promote(key);
    }

    /// Gets found `keys`: each becomes the most recently used, in order (one lock).
    pub(super) fn touch_all<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) {
        let mut order = self.inner.lock();
        for key in keys {
            order.items.promote(key);
        }
    }

    /// `key` now takes `size` bytes and is the most recently used. Returns the keys to
    /// evict (already out of the order, least recently used first) to get back under the
    /// bound; never `key` itself, so a write is never undone for space.
    pub(super) fn insert(&self, key: &[u8], size: u64) -> Vec<Box<[u8]>> {
        let mut order = self.inner.lock();
        order.place(key, size);
        order.trim(self.max_bytes)
    }

    /// As [`Recency::insert`], evicting nothing: while the count at start has not placed
    /// every stored item, the order holds only the ones written since, the most recent.
    pub(super) fn place(&self, key: &[u8], size: u64) {
        self.inner.lock().place(key, size);
    }

    /// Places `key` as the least recently used, unless it is in the order already.
    pub(super) fn place_oldest(&self, key: &[u8], size: u64) {
        let mut order = self.inner.lock();
        if order.items.contains(key) {
            return;
        }
        order.items.push(key.into(), size);
        order.items.demote(key);
        order.total += size;
    }

    /// The keys to evict (already out of the order) to get back under the bound.
    pub(super) fn trim(&self) -> Vec<Box<[u8]>> {
        self.inner.lock().trim(self.max_bytes)
    }

    /// `key` is gone from the store.
    pub(super) fn remove(&self, key: &[u8]) {
        let mut order = self.inner.lock();
        if let Some(s) = order.items.pop(key) {
            order.total -= s;
        }
    }

    /// The bytes `key` takes, without counting as a use.
    pub(super) fn size(&self, key: &[u8]) -> Option<u64> {
        self.inner.lock().items.peek(key).copied()
    }

    /// Bytes of every item in the order.
    #[cfg(test)]
    pub(super) fn total(&self) -> u64 {
        self.inner.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_go_first_and_the_new_item_stays() {
        let r = Recency::new(30);
        assert!(r.insert(b"a", 10).is_empty());
        assert!(r.insert(b"b", 10).is_empty());
        assert!(r.insert(b"c", 10).is_empty());
        r.touch(b"a");
        assert_eq!(r.insert(b"d", 10), vec![Box::from(&b"b"[..])]);
        assert_eq!(r.total(), 30);
        // Growing an item counts its new size only.
        assert_eq!(r.insert(b"a", 15), vec![Box::from(&b"c"[..])]);
        assert_eq!(r.total(), 25);
        // An item over the bound alone evicts the rest and stays.
        assert_eq!(r.insert(b"big", 100).len(), 2);
        assert_eq!(r.size(b"big"), Some(100));
        r.remove(b"big");
        assert_eq!(r.total(), 0);
    }
}
