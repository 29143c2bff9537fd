//! The near cache: FRESH items served inside the reader's process, kept true by the
//! daemon's `Subscribe` stream (PROTOCOL.md, "Near cache").
//!
//! It holds only items a Get answered FRESH, serves each while `now < expires_at` and no
//! event has come for it, and drops it on any event. One background task keeps the
//! stream: while it is down nothing is served or stored locally, and losing it drops
//! everything (the daemon can no longer vouch for what is held). The items live in a
//! moka cache (bounded by count, each expiring at its `expires_at`): a well-kept
//! concurrent LRU, so the bound and the expiry need no code of ours.
//!
//! A reader subscribes to an item before it sends the Get whose answer it may keep, and
//! keeps the answer unless an event told of a change after that data was stored (an
//! event's `at` is the instant of its change; a CHANGED is at its data's `stored_at`, so
//! the event of the very fetch a Get waited for does not spoil its answer), or the
//! stream was lost in between. Subscriptions outlive the items a little: they are pruned in bulk once there
//! are more of them than the cache holds, never past the daemon's 100,000 per stream.
//!
//! With several daemons the stream is on the one the client uses; when the client fails
//! over (or the stream finds that daemon down, which moves the client too) everything
//! held goes, and a new stream opens on the next daemon.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use cachebackd_proto::v1 as pb;
use moka::sync::Cache;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::daemons::{is_daemon_down, Daemons};
use crate::time::from_proto_timestamp;

/// The most items a near cache may hold: the daemon's limit per stream leaves room for
/// the subscriptions of reads in flight.
pub const MAX_NEAR_CACHE_ITEMS: u64 = 90_000;

/// The daemon's limit of subscribed items per stream.
const MAX_SUBSCRIBED: usize = 100_000;

/// How the near cache has been used, since the client was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NearCacheStats {
    /// Reads answered from the near cache, never seen by the daemon.
    pub hits: u64,
    /// Reads that went to the daemon.
    pub misses: u64,
    /// Items held now.
    pub items: u64,
    /// Times the Subscribe stream was lost (or reset) and everything dropped.
    pub resets: u64,
}

/// One FRESH item as a Get answered it.
#[derive(Debug, Clone)]
pub(crate) struct NearItem {
    /// The answer as the daemon sent it (decoded at each hit: `Output` need not be Clone).
    pub response: Arc<pb::GetResponse>,
    pub stored_at: Option<SystemTime>,
    pub expires_at: SystemTime,
}

/// Expires each item at its own `expires_at`.
struct AtExpiry;

impl moka::Expiry<Box<[u8]>, NearItem> for AtExpiry {
    fn expire_after_create(
        &self,
        _key: &Box<[u8]>,
        item: &NearItem,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(
            item.expires_at
                .duration_since(SystemTime::now())
                .unwrap_or_default(),
        )
    }
}

/// A subscribed item: reads of it in flight, and the bound its events set: data stored
/// before `spoiled_before` is out of date.
#[derive(Debug, Default)]
struct Held {
    reading: usize,
    spoiled_before: Option<SystemTime>,
}

impl Held {
    fn spoil(&mut self, before: SystemTime) {
        self.spoiled_before = Some(self.spoiled_before.map_or(before, |b| b.max(before)));
    }
}

/// The stream's state, under one lock.
#[derive(Default)]
struct Link {
    /// The current stream's request side; `None` while it is down.
    tx: Option<mpsc::UnboundedSender<pb::SubscribeRequest>>,
    /// Bumped at every loss of the stream: a read that began before is not kept.
    generation: u64,
    subscribed: HashMap<Box<[u8]>, Held>,
}

/// A read that may be kept: what it saw when it began.
pub(crate) struct Ticket {
    key: Box<[u8]>,
    generation: u64,
}

/// The near cache of one [`Client`](crate::Client) and its clones.
pub(crate) struct NearCache {
    items: Cache<Box<[u8]>, NearItem>,
    capacity: u64,
    link: Mutex<Link>,
    live: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    resets: AtomicU64,
    /// Whether a stream is up, for [`NearCache::ready`].
    up: watch::Sender<bool>,
    /// Ends the stream's task when the last client goes.
    _closing: DropGuard,
}

impl std::fmt::Debug for NearCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NearCache")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// The key of an item: job, 0x00, args (the daemon's own layout, unambiguous).
pub(crate) fn key(job: &str, args: &[u8]) -> Box<[u8]> {
    let mut key = Vec::with_capacity(job.len() + 1 + args.len());
    key.extend_from_slice(job.as_bytes());
    key.push(0);
    key.extend_from_slice(args);
    key.into_boxed_slice()
}

fn item_ref(key: &[u8]) -> pb::ItemRef {
    let split = key.iter().position(|&b| b == 0).unwrap_or(key.len());
    pb::ItemRef {
        job: String::from_utf8_lossy(&key[..split]).into_owned(),
        args: key.get(split + 1..).unwrap_or_default().to_vec(),
    }
}

impl NearCache {
    /// A near cache of at most `capacity` items, its stream kept by a task on the current
    /// tokio runtime, on the daemon the client uses.
    pub(crate) fn start(daemons: Arc<Daemons>, capacity: u64) -> Arc<NearCache> {
        let capacity = capacity.clamp(1, MAX_NEAR_CACHE_ITEMS);
        let closing = CancellationToken::new();
        let near = Arc::new(NearCache {
            items: Cache::builder()
                .max_capacity(capacity)
                .expire_after(AtExpiry)
                .build(),
            capacity,
            link: Mutex::new(Link::default()),
            live: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            up: watch::Sender::new(false),
            _closing: closing.clone().drop_guard(),
        });
        let task = keep_stream(Arc::downgrade(&near), daemons);
        tokio::spawn(async move {
            tokio::select! {
                _ = closing.cancelled() => {}
                _ = task => {}
            }
        });
        near
    }

    /// Waits at most `cap` for the first stream to be up; whether it is.
    pub(crate) async fn ready(&self, cap: Duration) -> bool {
        let mut up = self.up.subscribe();
        tokio::time::timeout(cap, up.wait_for(|&up| up))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The item, if it may be served locally now; counts the hit or the miss.
    pub(crate) fn lookup(&self, key: &[u8]) -> Option<NearItem> {
        let found = self
            .live
            .load(Ordering::Acquire)
            .then(|| self.items.get(key))
            .flatten()
            .filter(|item| SystemTime::now() < item.expires_at);
        match found {
            Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        found
    }

    /// Before a Get whose answer may be kept: subscribes to the item. `None` if the
    /// stream is down or full (the read then just goes to the daemon).
    pub(crate) fn begin(&self, key: Box<[u8]>) -> Option<Ticket> {
        let mut link = self.link.lock();
        let tx = link.tx.clone()?;
        if !link.subscribed.contains_key(&key) {
            if link.subscribed.len() as u64 >= self.capacity + self.capacity / 8 + 64 {
                self.prune(&mut link);
            }
            if link.subscribed.len() >= MAX_SUBSCRIBED {
                return None;
            }
            let add = pb::SubscribeRequest {
                add: vec![item_ref(&key)],
                remove: vec![],
            };
            if tx.send(add).is_err() {
                return None;
            }
        }
        let generation = link.generation;
        link.subscribed.entry(key.clone()).or_default().reading += 1;
        Some(Ticket { key, generation })
    }

    /// After that Get: keeps `item` if it was FRESH (`Some`) and nothing changed since
    /// [`begin`](NearCache::begin).
    pub(crate) fn finish(&self, ticket: Ticket, item: Option<NearItem>) {
        let mut link = self.link.lock();
        let same_stream = link.generation == ticket.generation;
        let Some(held) = link.subscribed.get_mut(&ticket.key) else {
            return;
        };
        held.reading -= 1;
        let Some(item) = item else { return };
        let current = match (item.stored_at, held.spoiled_before) {
            (Some(stored_at), Some(bound)) => stored_at >= bound,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if same_stream && current && SystemTime::now() < item.expires_at {
            self.items.insert(ticket.key, item);
        }
    }

    /// This client wrote the item: its local copy goes now, before the write is sent
    /// (the daemon's event for it follows).
    pub(crate) fn forget(&self, key: &[u8]) {
        let mut link = self.link.lock();
        if let Some(held) = link.subscribed.get_mut(key) {
            held.spoil(SystemTime::now());
        }
        self.items.invalidate(key);
    }

    /// Counters and size.
    pub(crate) fn stats(&self) -> NearCacheStats {
        NearCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            items: {
                self.items.run_pending_tasks();
                self.items.entry_count()
            },
            resets: self.resets.load(Ordering::Relaxed),
        }
    }

    /// Drops the subscriptions of items neither held nor being read, in one request.
    fn prune(&self, link: &mut Link) {
        let mut remove = Vec::new();
        link.subscribed.retain(|key, held| {
            let keep = held.reading > 0 || self.items.contains_key(key);
            if !keep {
                remove.push(item_ref(key));
            }
            keep
        });
        if let Some(tx) = &link.tx {
            if !remove.is_empty() {
                let _ = tx.send(pb::SubscribeRequest {
                    add: vec![],
                    remove,
                });
            }
        }
    }

    /// An event for `key`: data stored before `spoiled_before` goes, held or being read.
    /// (The CHANGED of the very data held, which may come after the Get's answer, leaves
    /// it.)
    fn on_event(&self, key: &[u8], spoiled_before: SystemTime) {
        let mut link = self.link.lock();
        if let Some(held) = link.subscribed.get_mut(key) {
            held.spoil(spoiled_before);
        }
        let stale = self
            .items
            .get(key)
            .is_some_and(|item| item.stored_at.is_none_or(|at| at < spoiled_before));
        if stale {
            self.items.invalidate(key);
        }
    }

    /// The client left the daemon the stream is on: everything held goes now (the
    /// stream's task opens one on the next daemon).
    pub(crate) fn lost_daemon(&self) {
        self.drop_all(None);
    }

    /// A new stream is up, opened after `moves` daemon moves: it replaces everything held,
    /// unless the client has moved since (then nothing changes; false).
    fn install(
        &self,
        tx: mpsc::UnboundedSender<pb::SubscribeRequest>,
        moves: u64,
        now: u64,
    ) -> bool {
        if moves != now {
            return false;
        }
        self.drop_all(Some(tx));
        true
    }

    /// The stream is lost (or a new one is up, `tx`): everything held goes.
    fn drop_all(&self, tx: Option<mpsc::UnboundedSender<pb::SubscribeRequest>>) {
        let mut link = self.link.lock();
        let was_live = link.tx.is_some();
        self.live.store(false, Ordering::Release);
        link.generation += 1;
        link.subscribed.clear();
        self.items.invalidate_all();
        if was_live {
            self.resets.fetch_add(1, Ordering::Relaxed);
        }
        link.tx = tx;
        let up = link.tx.is_some();
        self.live.store(up, Ordering::Release);
        self.up.send_replace(up);
    }
}

/// Keeps one Subscribe stream up while the near cache exists, on the daemon the client
/// uses: opens it, applies its events, and after a loss drops everything and opens a new
/// one (backing off up to 2 s). A daemon found down moves the client to the next; a move
/// made by the client's calls ends the stream at once.
async fn keep_stream(near: Weak<NearCache>, daemons: Arc<Daemons>) {
    let mut delay = Duration::from_millis(50);
    let mut moves = daemons.moves();
    // Daemons found down one after the other: past all of them, back off.
    let mut down_in_a_row = 0;
    loop {
        let moved = *moves.borrow_and_update();
        let index = daemons.current();
        let mut raw = daemons.get(index).raw.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        match raw.subscribe(UnboundedReceiverStream::new(rx)).await {
            Ok(response) => {
                let Some(cache) = near.upgrade() else { return };
                if !cache.install(tx, moved, daemons.moved()) {
                    continue;
                }
                drop(cache);
                delay = Duration::from_millis(50);
                down_in_a_row = 0;
                let mut events = response.into_inner();
                loop {
                    let event = tokio::select! {
                        event = events.message() => event,
                        _ = moves.changed() => {
                            // The client moved on (and dropped everything): follow it.
                            let Some(cache) = near.upgrade() else { return };
                            cache.drop_all(None);
                            break;
                        }
                    };
                    let Some(cache) = near.upgrade() else { return };
                    match event {
                        Ok(Some(e)) if e.kind() == pb::ItemEventKind::Reset => {
                            cache.drop_all(None);
                            break;
                        }
                        Ok(Some(e)) => {
                            let kind = e.kind();
                            let at = e.at.and_then(from_proto_timestamp);
                            if let Some(item) = e.item {
                                // A change's own data (CHANGED at its stored_at) stays;
                                // after an invalidation or a removal nothing stored until
                                // then does. Without a time, nothing read so far stays.
                                let bound = match (kind, at) {
                                    (pb::ItemEventKind::Changed, Some(at)) => at,
                                    (_, Some(at)) => at + Duration::from_micros(1),
                                    (_, None) => SystemTime::now() + Duration::from_secs(1),
                                };
                                cache.on_event(&key(&item.job, &item.args), bound);
                            }
                        }
                        Ok(None) | Err(_) => {
                            cache.drop_all(None);
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                tracing::debug!(%status, "near cache: Subscribe refused; retrying");
                if daemons.all().len() > 1 && is_daemon_down(&status) {
                    daemons.fail_over(index);
                    down_in_a_row += 1;
                    if down_in_a_row < daemons.all().len() {
                        continue;
                    }
                    down_in_a_row = 0;
                }
            }
        }
        if near.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}
