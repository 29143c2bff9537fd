//! Who is told of a change: the near caches' subscriptions (PROTOCOL.md, "Near cache").
//!
//! Every write path of the engine calls [`Subscriptions::emit`] (or its job-wide and
//! store-side forms) while it still holds the item's shard lock, right after the store
//! write and before the write is answered, so the events of one item are queued in the
//! order its changes happened. Emitting never blocks and never waits for a reader: each
//! stream has a bounded [`Outbox`], and a stream whose outbox is full is reset (its queue
//! dropped, one RESET sent, its subscriptions forgotten) instead of slowing the write or
//! growing memory. With nobody subscribed, an emit is one atomic load.
//!
//! Knows nothing of gRPC: `subscribe_stream` turns a stream's outbox into `ItemEvent`s.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::error::Error;
use crate::model::ItemKey;

/// At most this many items subscribed per stream (PROTOCOL.md).
pub(crate) const MAX_ITEMS_PER_STREAM: usize = 100_000;

/// Events queued for one stream before it counts as too slow and is reset.
pub(crate) const OUTBOX_CAPACITY: usize = 4096;

/// What happened to an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    /// New data stored: a Set, a stored fetch, a NotModified.
    Changed,
    /// Marked stale: Invalidate, InvalidateJob, InvalidateTags.
    Invalidated,
    /// Gone: Delete, DeleteJob, eviction, the cache_ttl sweep.
    Removed,
}

/// One change of a subscribed item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    /// The item.
    pub(crate) key: ItemKey,
    /// What happened.
    pub(crate) kind: EventKind,
    /// When the daemon made the change.
    pub(crate) at: SystemTime,
}

/// What a stream's reader takes next from its outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// An event, in order.
    Event(Event),
    /// The stream fell behind: its subscriptions are gone and nothing more will come.
    Reset,
}

/// The bounded queue of one stream's events, filled by writers and drained by the stream.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    state: Mutex<OutboxState>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct OutboxState {
    events: VecDeque<Event>,
    reset: bool,
}

impl Outbox {
    /// Queues `event`; false if the outbox is full (or reset already).
    fn push(&self, event: Event) -> bool {
        let mut state = self.state.lock();
        if state.reset || state.events.len() >= OUTBOX_CAPACITY {
            return false;
        }
        state.events.push_back(event);
        drop(state);
        self.wake.notify_one();
        true
    }

    /// Drops everything queued; the reader's next take is [`Next::Reset`].
    fn reset(&self) {
        let mut state = self.state.lock();
        state.events = VecDeque::new();
        state.reset = true;
        drop(state);
        self.wake.notify_one();
    }

    /// The next event, waiting for one; [`Next::Reset`] once the stream was reset. One
    /// reader per outbox (its stream): a wake-up that comes while nobody waits is kept.
    pub(crate) async fn next(&self) -> Next {
        loop {
            {
                let mut state = self.state.lock();
                if state.reset {
                    return Next::Reset;
                }
                if let Some(event) = state.events.pop_front() {
                    return Next::Event(event);
                }
            }
            self.wake.notified().await;
        }
    }
}

/// Identifies one Subscribe stream.
type StreamId = u64;

/// Every stream's subscriptions: a cheap-to-clone handle, one per daemon.
#[derive(Debug, Clone, Default)]
pub(crate) struct Subscriptions {
    inner: Arc<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    /// How many (stream, item) subscriptions exist: the writers' fast check.
    count: AtomicUsize,
    /// Streams reset for falling behind, since start.
    resets: AtomicU64,
    next_id: AtomicU64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    by_item: HashMap<ItemKey, Vec<StreamId>>,
    streams: HashMap<StreamId, StreamEntry>,
}

#[derive(Debug)]
struct StreamEntry {
    outbox: Arc<Outbox>,
    items: HashSet<ItemKey>,
}

impl Subscriptions {
    /// A registry with nobody subscribed.
    pub(crate) fn new() -> Subscriptions {
        Subscriptions::default()
    }

    /// Opens a stream; it is forgotten, with its subscriptions, when the returned
    /// registration is dropped.
    pub(crate) fn open(&self) -> Registration {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::default());
        self.inner.state.lock().streams.insert(
            id,
            StreamEntry {
                outbox: outbox.clone(),
                items: HashSet::new(),
            },
        );
        Registration {
            subscriptions: self.clone(),
            id,
            outbox,
        }
    }

    /// How many (stream, item) subscriptions exist now.
    pub(crate) fn count(&self) -> usize {
        self.inner.count.load(Ordering::Relaxed)
    }

    /// Streams reset for falling behind, since start.
    pub(crate) fn resets(&self) -> u64 {
        self.inner.resets.load(Ordering::Relaxed)
    }

    /// Tells the subscribers of `key` of a change.
    pub(crate) fn emit(&self, key: &ItemKey, kind: EventKind, at: SystemTime) {
        if self.count() == 0 {
            return;
        }
        let mut state = self.inner.state.lock();
        state.emit(key, kind, at, &self.inner);
    }

    /// [`emit`](Subscriptions::emit) for a key as the store holds it (eviction, sweep).
    pub(crate) fn emit_stored(&self, key: &[u8], kind: EventKind, at: SystemTime) {
        if self.count() == 0 {
            return;
        }
        let mut state = self.inner.state.lock();
        let Some(key) = state.by_item.get_key_value(key).map(|(k, _)| k.clone()) else {
            return;
        };
        state.emit(&key, kind, at, &self.inner);
    }

    /// Every item someone subscribed to, for a change whose items only the store can name
    /// (InvalidateTags): read them after this returns, not under the registry's lock.
    pub(crate) fn subscribed_items(&self) -> Vec<ItemKey> {
        if self.count() == 0 {
            return Vec::new();
        }
        self.inner.state.lock().by_item.keys().cloned().collect()
    }

    /// Resets every stream (each gets RESET, its subscriptions forgotten): what they were
    /// told may have missed a change (the fleet's events were lost).
    pub(crate) fn reset_all(&self) {
        let mut state = self.inner.state.lock();
        let ids: Vec<StreamId> = state.streams.keys().copied().collect();
        for id in ids {
            if let Some(stream) = state.streams.get(&id) {
                stream.outbox.reset();
            }
            self.inner.resets.fetch_add(1, Ordering::Relaxed);
            state.unsubscribe_all(id, &self.inner.count);
            state.streams.remove(&id);
        }
    }

    /// Tells the subscribers of every item whose key starts with `prefix` (one job's).
    pub(crate) fn emit_prefix(&self, prefix: &[u8], kind: EventKind, at: SystemTime) {
        if self.count() == 0 {
            return;
        }
        let mut state = self.inner.state.lock();
        let keys: Vec<ItemKey> = state
            .by_item
            .keys()
            .filter(|k| k.as_bytes().starts_with(prefix))
            .cloned()
            .collect();
        for key in keys {
            state.emit(&key, kind, at, &self.inner);
        }
    }
}

impl State {
    fn emit(&mut self, key: &ItemKey, kind: EventKind, at: SystemTime, registry: &Registry) {
        let Some(ids) = self.by_item.get(key) else {
            return;
        };
        let mut behind = Vec::new();
        for id in ids {
            let Some(stream) = self.streams.get(id) else {
                continue;
            };
            let event = Event {
                key: key.clone(),
                kind,
                at,
            };
            if !stream.outbox.push(event) {
                behind.push(*id);
            }
        }
        for id in behind {
            tracing::warn!(
                stream = id,
                capacity = OUTBOX_CAPACITY,
                "a subscriber fell behind: its stream is reset"
            );
            if let Some(stream) = self.streams.get(&id) {
                stream.outbox.reset();
            }
            registry.resets.fetch_add(1, Ordering::Relaxed);
            self.unsubscribe_all(id, &registry.count);
            // Dropped: what the stream asks for from now on is ignored.
            self.streams.remove(&id);
        }
    }

    /// Forgets every subscription of stream `id` (the stream itself stays known).
    fn unsubscribe_all(&mut self, id: StreamId, count: &AtomicUsize) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let items = std::mem::take(&mut stream.items);
        count.fetch_sub(items.len(), Ordering::Relaxed);
        for key in items {
            if let Entry::Occupied(mut entry) = self.by_item.entry(key) {
                entry.get_mut().retain(|s| *s != id);
                if entry.get().is_empty() {
                    entry.remove();
                }
            }
        }
    }
}

/// One open stream's place in the registry; dropping it forgets the stream.
#[derive(Debug)]
pub(crate) struct Registration {
    subscriptions: Subscriptions,
    id: StreamId,
    outbox: Arc<Outbox>,
}

impl Registration {
    /// The stream's queue of events.
    pub(crate) fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// A handle that changes this stream's subscriptions, for the task that reads its
    /// requests.
    pub(crate) fn changer(&self) -> Changer {
        Changer {
            subscriptions: self.subscriptions.clone(),
            id: self.id,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let count = &self.subscriptions.inner.count;
        let mut state = self.subscriptions.inner.state.lock();
        state.unsubscribe_all(self.id, count);
        state.streams.remove(&self.id);
    }
}

/// Changes one stream's subscriptions.
#[derive(Debug, Clone)]
pub(crate) struct Changer {
    subscriptions: Subscriptions,
    id: StreamId,
}

impl Changer {
    /// Adds then removes items; an item added twice is held once. Past
    /// [`MAX_ITEMS_PER_STREAM`] nothing of this change is applied and the error says so.
    /// A stream that was reset or closed takes nothing.
    pub(crate) fn change(&self, add: Vec<ItemKey>, remove: Vec<ItemKey>) -> Result<(), Error> {
        let inner = &self.subscriptions.inner;
        let mut state = inner.state.lock();
        let State { by_item, streams } = &mut *state;
        let Some(stream) = streams.get_mut(&self.id) else {
            return Ok(());
        };
        let removed: HashSet<&ItemKey> = remove.iter().collect();
        let joining: HashSet<&ItemKey> = add
            .iter()
            .filter(|k| !stream.items.contains(*k) && !removed.contains(k))
            .collect();
        let leaving = removed
            .iter()
            .filter(|k| stream.items.contains(**k))
            .count();
        if stream.items.len() + joining.len() - leaving > MAX_ITEMS_PER_STREAM {
            return Err(Error::TooManySubscriptions {
                limit: MAX_ITEMS_PER_STREAM,
            });
        }
        for key in add {
            if stream.items.insert(key.clone()) {
                by_item.entry(key).or_default().push(self.id);
                inner.count.fetch_add(1, Ordering::Relaxed);
            }
        }
        for key in remove {
            if stream.items.remove(&key) {
                inner.count.fetch_sub(1, Ordering::Relaxed);
                if let Entry::Occupied(mut entry) = by_item.entry(key) {
                    entry.get_mut().retain(|s| *s != self.id);
                    if entry.get().is_empty() {
                        entry.remove();
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobName, Limits};

    fn key(job: &str, args: &str) -> ItemKey {
        ItemKey::new(
            &JobName::parse(job, &Limits::default()).unwrap(),
            args.as_bytes(),
        )
    }

    #[tokio::test]
    async fn events_reach_only_subscribers_in_order() {
        let subs = Subscriptions::new();
        let a = subs.open();
        let b = subs.open();
        a.changer().change(vec![key("j", "1")], vec![]).unwrap();
        b.changer().change(vec![key("j", "2")], vec![]).unwrap();
        let at = SystemTime::UNIX_EPOCH;
        subs.emit(&key("j", "1"), EventKind::Changed, at);
        subs.emit(&key("j", "2"), EventKind::Removed, at);
        subs.emit(&key("j", "1"), EventKind::Invalidated, at);
        let kinds = |n: Next| match n {
            Next::Event(e) => (e.key, e.kind),
            Next::Reset => panic!("unexpected reset"),
        };
        assert_eq!(
            kinds(a.outbox().next().await),
            (key("j", "1"), EventKind::Changed)
        );
        assert_eq!(
            kinds(a.outbox().next().await),
            (key("j", "1"), EventKind::Invalidated)
        );
        assert_eq!(
            kinds(b.outbox().next().await),
            (key("j", "2"), EventKind::Removed)
        );
        assert_eq!(subs.count(), 2);
        drop(a);
        assert_eq!(subs.count(), 1);
    }

    #[tokio::test]
    async fn a_full_outbox_resets_its_stream_and_forgets_it() {
        let subs = Subscriptions::new();
        let slow = subs.open();
        slow.changer().change(vec![key("j", "1")], vec![]).unwrap();
        for _ in 0..=OUTBOX_CAPACITY {
            subs.emit(&key("j", "1"), EventKind::Changed, SystemTime::UNIX_EPOCH);
        }
        assert_eq!(slow.outbox().next().await, Next::Reset);
        assert_eq!(subs.count(), 0);
        // Later adds of a reset stream are ignored.
        slow.changer().change(vec![key("j", "2")], vec![]).unwrap();
        assert_eq!(subs.count(), 0);
    }

    #[test]
    fn the_per_stream_limit_refuses_the_whole_change() {
        let subs = Subscriptions::new();
        let stream = subs.open();
        let keys: Vec<ItemKey> = (0..MAX_ITEMS_PER_STREAM)
            .map(|i| key("j", &i.to_string()))
            .collect();
        stream.changer().change(keys.clone(), vec![]).unwrap();
        // Adding one already held is no growth.
        stream
            .changer()
            .change(vec![keys[0].clone()], vec![])
            .unwrap();
        let err = stream
            .changer()
            .change(vec![key("j", "more")], vec![])
            .unwrap_err();
        assert_eq!(
            err,
            Error::TooManySubscriptions {
                limit: MAX_ITEMS_PER_STREAM
            }
        );
        assert_eq!(subs.count(), MAX_ITEMS_PER_STREAM);
        // One in, one out fits.
        stream
            .changer()
            .change(vec![key("j", "more")], vec![keys[1].clone()])
            .unwrap();
        assert_eq!(subs.count(), MAX_ITEMS_PER_STREAM);
    }
}
