//! Persistence: items and job configs, behind the small [`Store`] trait, with sled as the
//! embedded default.
//!
//! sled 0.34 has open durability issues (corruption reports after abrupt stops), so a store
//! that fails to open is moved aside and the daemon starts cold: a cache can rebuild, it must
//! not stay down. A record that fails to decode is dropped and counted, never served.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;

use crate::error::Error;
use crate::model::{Beta, ItemKey, JobConfig, JobName, Tag};
use crate::policy::{self, Times};

mod census;
mod open;
mod recency;
mod salvage;
mod space;

pub(crate) use open::OpenReport;

/// One cached item as it is stored: its times, what came with its data, and the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item {
    /// When it was fetched or set, and when it stops being fresh.
    pub times: Times,
    /// How long the fetch that stored it took (XFetch's `delta`); zero for a Set.
    pub fetch_took: Duration,
    /// The worker's validator (an ETag, a version), sent back on the next refresh.
    pub validator: Vec<u8>,
    /// The item's tags (`InvalidateTags`), validated, sorted, each once.
    pub tags: Vec<Tag>,
    /// The origin said there is no such data (`FetchedAbsent`): `data` is empty.
    pub absent: bool,
    /// The data, opaque to the daemon.
    pub data: Vec<u8>,
}

impl Item {
    /// An item of plain data with nothing else: what a Set without tags stores.
    pub(crate) fn data(times: Times, data: Vec<u8>) -> Item {
        Item {
            times,
            fetch_took: Duration::ZERO,
            validator: Vec::new(),
            tags: Vec::new(),
            absent: false,
            data,
        }
    }
}

/// The on-disk layout of an item: a fixed header, what came with the data, then the data.
/// Format 2:
/// `[format: u8 = 2][flags: u8, bit 0 = absent][stored_at: u64 µs since epoch, BE]`
/// `[expires_at: u64 µs, BE][fetch_took: u64 µs, BE][validator length: u16 BE][validator]`
/// `[tag count: u8][per tag: length u8, bytes][data]`.
/// Format 1 (the first 18 bytes alike, then the data) is still read, so a store written
/// before format 2 keeps its items; every write is format 2.
const ITEM_FORMAT: u8 = 2;
const ITEM_FORMAT_1: u8 = 1;
const ITEM_HEADER: usize = 18;
const FLAG_ABSENT: u8 = 1;
/// The on-disk layout of a job config, versioned the same way (format 1 is still read).
const JOB_FORMAT: u8 = 2;
const JOB_FORMAT_1: u8 = 1;

impl Item {
    /// Encodes the record.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let tags: usize = self.tags.iter().map(|t| 1 + t.as_str().len()).sum();
        let mut out =
            Vec::with_capacity(ITEM_HEADER + 11 + self.validator.len() + tags + self.data.len());
        out.push(ITEM_FORMAT);
        out.push(if self.absent { FLAG_ABSENT } else { 0 });
        out.extend_from_slice(&micros(self.times.stored_at).to_be_bytes());
        out.extend_from_slice(&micros(self.times.expires_at).to_be_bytes());
        out.extend_from_slice(&span_micros(self.fetch_took).to_be_bytes());
        // The edge bounds a validator at 256 bytes and a tag at 128, an item at 32 tags.
        out.extend_from_slice(&(self.validator.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.validator);
        out.push(self.tags.len() as u8);
        for tag in &self.tags {
            out.push(tag.as_str().len() as u8);
            out.extend_from_slice(tag.as_str().as_bytes());
        }
        out.extend_from_slice(&self.data);
        out
    }

    /// Decodes only the times: what the sweeper needs.
    pub(crate) fn decode_times(bytes: &[u8]) -> Option<Times> {
        if bytes.len() < ITEM_HEADER || !matches!(bytes[0], ITEM_FORMAT | ITEM_FORMAT_1) {
            return None;
        }
        let stored_at = from_micros(u64::from_be_bytes(bytes[2..10].try_into().ok()?));
        let expires_at = from_micros(u64::from_be_bytes(bytes[10..18].try_into().ok()?));
        Some(Times {
            stored_at,
            expires_at,
        })
    }

    /// Decodes a whole record; `None` if it is not one of ours.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Item> {
        let times = Item::decode_times(bytes)?;
        if bytes[0] == ITEM_FORMAT_1 {
            return Some(Item::data(times, bytes[ITEM_HEADER..].to_vec()));
        }
        let mut r = Reader(&bytes[ITEM_HEADER..]);
        let fetch_took = Duration::from_micros(u64::from_be_bytes(r.take(8)?.try_into().ok()?));
        let validator_len = u16::from_be_bytes(r.take(2)?.try_into().ok()?);
        let validator = r.take(validator_len as usize)?.to_vec();
        let count = r.take(1)?[0];
        let tags = (0..count)
            .map(|_| {
                let len = r.take(1)?[0];
                let tag = std::str::from_utf8(r.take(len as usize)?).ok()?;
                Some(Tag::from_stored(tag.to_owned()))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Item {
            times,
            fetch_took,
            validator,
            tags,
            absent: bytes[1] & FLAG_ABSENT != 0,
            data: r.0.to_vec(),
        })
    }
}

/// The length of a record's data: what a job's usage counts. Walks the header without
/// copying anything, since every write asks it of the record it replaced.
fn data_len(record: &[u8]) -> usize {
    let header = || -> Option<usize> {
        if record.first() != Some(&ITEM_FORMAT) {
            return Some(ITEM_HEADER);
        }
        let mut r = Reader(record.get(ITEM_HEADER..)?);
        r.take(8)?;
        let validator_len = u16::from_be_bytes(r.take(2)?.try_into().ok()?);
        r.take(validator_len as usize)?;
        for _ in 0..r.take(1)?[0] {
            let len = r.take(1)?[0];
            r.take(len as usize)?;
        }
        Some(record.len() - r.0.len())
    };
    record.len().saturating_sub(header().unwrap_or(ITEM_HEADER))
}

/// Reads a record field by field, `None` once it runs short.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
}

fn span_micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

fn from_micros(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}

/// Job record, format 2: format 1's 35 bytes (`[format][lifetime][refresh_timeout]
/// [fetch_on_miss: u8][threshold set: u8][threshold][cache_ttl]`, spans as u64 µs BE), then
/// `[beta set: u8][beta: f64 BE][absent_lifetime set: u8][absent_lifetime][error_ttl set: u8]
/// [error_ttl]`.
const JOB_RECORD_1: usize = 35;
const JOB_RECORD: usize = JOB_RECORD_1 + 27;

pub(crate) fn encode_job(config: &JobConfig) -> Vec<u8> {
    let span = |d: Duration| span_micros(d).to_be_bytes();
    let mut out = Vec::with_capacity(JOB_RECORD);
    let optional = |out: &mut Vec<u8>, value: Option<[u8; 8]>| match value {
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&v);
        }
        None => {
            out.push(0);
            out.extend_from_slice(&[0; 8]);
        }
    };
    out.push(JOB_FORMAT);
    out.extend_from_slice(&span(config.lifetime));
    out.extend_from_slice(&span(config.refresh_timeout));
    out.push(config.fetch_on_miss as u8);
    optional(&mut out, config.fetch_on_stale_threshold.map(span));
    out.extend_from_slice(&span(config.cache_ttl));
    optional(
        &mut out,
        config.early_refresh_beta.map(|b| b.get().to_be_bytes()),
    );
    optional(&mut out, config.absent_lifetime.map(span));
    optional(&mut out, config.error_ttl.map(span));
    out
}

pub(crate) fn decode_job(bytes: &[u8]) -> Option<JobConfig> {
    match (bytes.first(), bytes.len()) {
        (Some(&JOB_FORMAT_1), JOB_RECORD_1) | (Some(&JOB_FORMAT), JOB_RECORD) => {}
        _ => return None,
    }
    let word = |at: usize| Some(u64::from_be_bytes(bytes[at..at + 8].try_into().ok()?));
    let span = |at: usize| word(at).map(Duration::from_micros);
    let optional_span = |at: usize| match bytes[at] {
        0 => Some(None),
        _ => span(at + 1).map(Some),
    };
    let mut config = JobConfig {
        lifetime: span(1)?,
        refresh_timeout: span(9)?,
        fetch_on_miss: bytes[17] != 0,
        fetch_on_stale_threshold: optional_span(18)?,
        cache_ttl: span(27)?,
        ..JobConfig::default()
    };
    if bytes[0] == JOB_FORMAT {
        config.early_refresh_beta = match bytes[35] {
            0 => None,
            _ => Some(Beta::new(f64::from_bits(word(36)?)).ok()?),
        };
        config.absent_lifetime = optional_span(44)?;
        config.error_ttl = optional_span(53)?;
    }
    Some(config)
}

/// When writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Flushed in the background every flush interval (100 ms by default).
    #[default]
    Interval,
    /// Flushed before every write is acknowledged.
    Always,
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "interval" => Ok(Durability::Interval),
            "always" => Ok(Durability::Always),
            _ => Err(format!(
                "{s:?} is not a durability: write \"interval\" or \"always\""
            )),
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Durability::Interval => "interval",
            Durability::Always => "always",
        })
    }
}

/// How much of the store one job takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Items stored (stale ones included, until swept).
    pub items: u64,
    /// Bytes of their data (headers and keys not counted).
    pub bytes: u64,
}

/// A job's usage as it changes: signed, so that a removal counted before its insert (two
/// racing writers) never wraps; read back clamped at zero.
#[derive(Debug, Default)]
struct Counts {
    items: AtomicI64,
    bytes: AtomicI64,
    /// Items evicted for `max_bytes`, since start.
    evicted: AtomicU64,
}

impl Counts {
    fn usage(&self) -> Usage {
        let read = |a: &AtomicI64| a.load(Ordering::Relaxed).max(0) as u64;
        Usage {
            items: read(&self.items),
            bytes: read(&self.bytes),
        }
    }
}

impl From<Usage> for Counts {
    fn from(u: Usage) -> Counts {
        let word = |n: u64| AtomicI64::new(i64::try_from(n).unwrap_or(i64::MAX));
        Counts {
            items: word(u.items),
            bytes: word(u.bytes),
            evicted: AtomicU64::new(0),
        }
    }
}

/// What the daemon needs from storage. Synchronous: every call is a short local operation;
/// `flush` may block on the disk and is run off the async threads.
pub(crate) trait Store: Send + Sync + 'static {
    /// Reads an item. A record that fails to decode is removed, counted and reported absent.
    fn get(&self, key: &ItemKey) -> Result<Option<Item>, Error>;
    /// Reads several items in one pass (GetMany), each as [`Store::get`] would.
    fn get_many(&self, keys: &[&ItemKey]) -> Vec<Result<Option<Item>, Error>> {
        keys.iter().map(|k| self.get(k)).collect()
    }
    /// Writes an item.
    fn put(&self, key: &ItemKey, item: &Item) -> Result<(), Error>;
    /// Removes an item; whether it was there.
    fn remove(&self, key: &ItemKey) -> Result<bool, Error>;
    /// Stores a job's effective config.
    fn put_job(&self, job: &JobName, config: &JobConfig) -> Result<(), Error>;
    /// Every stored job config.
    fn jobs(&self) -> Result<Vec<(JobName, JobConfig)>, Error>;
    /// Removes every item past its job's `cache_ttl` at `now`, and every item whose job
    /// `config_of` does not know (it could never be served); how many went.
    fn sweep(
        &self,
        config_of: &dyn Fn(&str) -> Option<JobConfig>,
        now: SystemTime,
    ) -> Result<usize, Error>;
    /// Makes every acknowledged write durable.
    fn flush(&self) -> Result<(), Error>;
    /// Records that failed to decode and were dropped, since start.
    fn corrupt_records(&self) -> u64;
    /// Stores the instant at or before which every item of `job` counts as stale.
    fn put_invalidated_before(&self, job: &JobName, at: SystemTime) -> Result<(), Error>;
    /// Every job's stored invalidation instant.
    fn invalidated_before(&self) -> Result<Vec<(JobName, SystemTime)>, Error>;
    /// Removes a job: its config, its invalidation instant and its items; how many items.
    fn remove_job(&self, job: &JobName) -> Result<u64, Error>;
    /// The items of `job` and the bytes of their data (kept as writes happen: no walk).
    fn usage(&self, job: &JobName) -> Result<Usage, Error>;
    /// Before a clean stop: records what the next start may then skip (the usage counts),
    /// and flushes.
    fn close(&self) -> Result<(), Error>;
    /// Bytes the store takes on disk.
    fn size_on_disk(&self) -> Result<u64, Error>;
    /// Counts what a start must count of the stored items (usage, the order of eviction)
    /// in the background, while the store serves (see `store::census`); the daemon calls
    /// it once, after the engine is set up. A store that keeps no such counts need not.
    fn count_in_background(self: Arc<Self>) {}
    /// Whether the usage counts are still being counted since the start (then `usage`
    /// tells what is counted so far).
    fn counting(&self) -> bool {
        false
    }
    /// Tells `listener` of every item the store removes by itself (the sweep, eviction),
    /// as it removes it, so that the near caches holding it hear of it. Set once, by the
    /// engine; a store that removes nothing by itself need not keep it.
    fn watch_removals(&self, listener: RemovalListener) {
        let _ = listener;
    }
    /// Bytes of data stored for `key`, read from memory (the data is not touched), if it
    /// is stored and the store keeps sizes; a read does not count as a use.
    fn data_len(&self, _key: &ItemKey) -> Option<u64> {
        None
    }
    /// Items of `job` evicted for `max_bytes` since start (0 for a store that does not
    /// evict).
    fn evictions(&self, _job: &JobName) -> u64 {
        0
    }
    /// `Ok` while the store takes writes; the error a write would get otherwise (its disk
    /// is full, or it failed). Checked anew at most every 100 ms.
    fn writable(&self) -> Result<(), Error> {
        Ok(())
    }
    /// Stores, in one atomic batch, the instant at or before which every item carrying one
    /// of `tags` counts as stale (`InvalidateTags`).
    fn put_tag_marks(&self, tags: &[Tag], at: SystemTime) -> Result<(), Error>;
    /// Every stored tag mark.
    fn tag_marks(&self) -> Result<Vec<(Tag, SystemTime)>, Error>;
}

/// Told the key of each item a store removes by itself.
pub(crate) type RemovalListener = Box<dyn Fn(&[u8]) + Send + Sync>;

/// The sled store under `DATA_DIR/store`.
pub(crate) struct SledStore {
    db: sled::Db,
    items: sled::Tree,
    jobs: sled::Tree,
    invalidated: sled::Tree,
    tag_marks: sled::Tree,
    meta: sled::Tree,
    corrupt: AtomicU64,
    /// Items and data bytes per job (by job name), kept exact as writes happen: sled's
    /// insert and remove return the value they replaced. Saved at a clean stop, counted
    /// from the items at a start after anything else.
    usage: RwLock<HashMap<Vec<u8>, Counts>>,
    /// `close` has saved the counts: a write after it makes the saved counts stale.
    closed: AtomicBool,
    /// Told of the items the sweep and eviction remove.
    removals: OnceLock<RemovalListener>,
    /// The recency order, for `max_bytes`.
    recency: recency::Recency,
    /// The count at start, run in the background (`census`).
    census: census::Census,
    /// Where the store lives (`DATA_DIR`).
    data_dir: std::path::PathBuf,
    /// Refuses writes while the disk is full.
    space: space::SpaceGuard,
}

impl SledStore {
    /// Opens (or creates) the store under `data_dir`. Only a store proven damaged is
    /// moved aside (and salvaged, see [`open`]); a locked or unusable one is an error that
    /// leaves it as it is.
    #[cfg(test)]
    pub(crate) fn open(
        data_dir: &Path,
        flush_interval: Duration,
    ) -> Result<(SledStore, OpenReport), Error> {
        // Read through and counted before it is used, as a start once did.
        let (store, report) = SledStore::open_with(data_dir, flush_interval, u64::MAX, true)?;
        store.count();
        Ok((store, report))
    }

    /// As [`SledStore::open`], holding at most `max_bytes` of items (keys and records):
    /// past it the least recently used are evicted. The items are counted (usage, the
    /// recency order) only once [`Store::count_in_background`] runs, while the store
    /// serves; until it is done the usage reads as counted so far, and nothing is evicted.
    pub(crate) fn open_bounded(
        data_dir: &Path,
        flush_interval: Duration,
        max_bytes: u64,
    ) -> Result<(SledStore, OpenReport), Error> {
        SledStore::open_with(data_dir, flush_interval, max_bytes, false)
    }

    /// `read_items`: every item is read through for damage before the store is used
    /// (else the count at start does it, see `open`).
    fn open_with(
        data_dir: &Path,
        flush_interval: Duration,
        max_bytes: u64,
        read_items: bool,
    ) -> Result<(SledStore, OpenReport), Error> {
        let (db, report) = open::open_db(data_dir, flush_interval, read_items)?;
        let items = db.open_tree("items")?;
        let jobs = db.open_tree("jobs")?;
        let invalidated = db.open_tree("invalidated")?;
        let tag_marks = db.open_tree("tag_marks")?;
        let meta = db.open_tree("meta")?;
        let saved = load_usage(&db, &meta)?;
        let census = census::Census::new(saved.is_none());
        let usage = saved.unwrap_or_default();
        let recency = recency::Recency::new(max_bytes);
        let store = SledStore {
            db,
            items,
            jobs,
            invalidated,
            tag_marks,
            meta,
            corrupt: AtomicU64::new(0),
            usage: RwLock::new(usage),
            closed: AtomicBool::new(false),
            removals: OnceLock::new(),
            recency,
            census,
            data_dir: data_dir.to_path_buf(),
            space: space::SpaceGuard::new(data_dir.to_path_buf()),
        };
        Ok((store, report))
    }

    /// Removes items the recency order gave up, counting them per job.
    fn evict(&self, victims: Vec<Box<[u8]>>) {
        for key in victims {
            let mut pass = self.census.during();
            match self.items.remove(&*key) {
                Ok(Some(old)) => {
                    self.counted(pass.as_mut(), &key, Some(data_len(&old)), None);
                    drop(pass);
                    let job = key.split(|&b| b == 0).next().unwrap_or_default();
                    if let Some(c) = self.usage.read().get(job) {
                        c.evicted.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(listener) = self.removals.get() {
                        listener(&key);
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "cannot evict an item"),
            }
        }
    }

    /// A write that sled failed: remembered by the space guard, passed on.
    fn failed(&self, e: sled::Error) -> Error {
        let e = Error::from(e);
        self.space.note_failure(&e);
        e
    }

    /// Counts a change of `key` from `old` to `new` (their data lengths), made while
    /// `pass`, the count's hold, was held if the count at start runs: unless the count
    /// is still to reach `key` (then it counts what it finds there).
    fn counted(
        &self,
        pass: Option<&mut census::Pass<'_>>,
        key: &[u8],
        old: Option<usize>,
        new: Option<usize>,
    ) {
        if let Some(pass) = pass {
            pass.touched(key);
            if !pass.write_counts(key) {
                return;
            }
        }
        self.account(key, old, new);
    }

    /// Counts a write of `key` that replaced `old` with `new` (their data lengths). A
    /// read lock and two atomic adds: every write goes through here.
    fn account(&self, key: &[u8], old: Option<usize>, new: Option<usize>) {
        let job = key.split(|&b| b == 0).next().unwrap_or_default();
        let data = |len: Option<usize>| len.map_or(0, |l| l as i64);
        let items = i64::from(new.is_some()) - i64::from(old.is_some());
        self.add_usage(job, items, data(new) - data(old));
        if self.closed.load(Ordering::Relaxed) {
            // Written after the counts were saved: let the next start count again.
            if let Err(e) = self.meta.remove(USAGE_SAVED) {
                tracing::error!(error = %e, "cannot drop the saved usage counts");
            }
        }
    }

    /// Adds to a job's counts.
    fn add_usage(&self, job: &[u8], items: i64, bytes: i64) {
        let apply = |c: &Counts| {
            c.items.fetch_add(items, Ordering::Relaxed);
            c.bytes.fetch_add(bytes, Ordering::Relaxed);
        };
        let known = self.usage.read().get(job).map(apply).is_some();
        if !known {
            apply(self.usage.write().entry(job.to_vec()).or_default());
        }
    }

    fn drop_corrupt(&self, key: &[u8], what: &str) {
        self.corrupt.fetch_add(1, Ordering::Relaxed);
        tracing::error!(key = ?String::from_utf8_lossy(key), "dropping a {what} record that does not decode");
        let mut pass = self.census.during();
        self.recency.remove(key);
        match self.items.remove(key) {
            Ok(old) => self.counted(pass.as_mut(), key, old.map(|v| data_len(&v)), None),
            Err(e) => tracing::error!(error = %e, "cannot remove a corrupt record"),
        }
    }
}

const FORMAT_KEY: &[u8] = b"format";
/// In `meta`: present when the usage counts under [`USAGE_PREFIX`] were saved at a clean
/// stop and nothing was written since.
const USAGE_SAVED: &[u8] = b"usage-saved";
const USAGE_PREFIX: &[u8] = b"usage:";

/// The usage counts a clean stop saved, if it did (else they are to be counted from the
/// items, `census`). The saved ones are dropped at once, durably, so that a crash from
/// here on counts again.
fn load_usage(db: &sled::Db, meta: &sled::Tree) -> Result<Option<HashMap<Vec<u8>, Counts>>, Error> {
    let mut usage: Option<HashMap<Vec<u8>, Counts>> = None;
    if meta.remove(USAGE_SAVED)?.is_some() {
        let usage = usage.get_or_insert_with(HashMap::new);
        for kv in meta.scan_prefix(USAGE_PREFIX) {
            let (k, v) = kv?;
            let counts = <[u8; 16]>::try_from(v.as_ref()).ok();
            if let Some(c) = counts {
                let (items, bytes) = c.split_at(8);
                let word = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or_default());
                usage.insert(
                    k[USAGE_PREFIX.len()..].to_vec(),
                    Counts::from(Usage {
                        items: word(items),
                        bytes: word(bytes),
                    }),
                );
            }
        }
    }
    clear_saved_usage(meta)?;
    db.flush()?;
    Ok(usage)
}

fn clear_saved_usage(meta: &sled::Tree) -> Result<(), Error> {
    for k in meta.scan_prefix(USAGE_PREFIX).keys() {
        meta.remove(k?)?;
    }
    Ok(())
}
const FORMAT_MARKER: &[u8] = b"cachebackd-store-1";

impl Store for SledStore {
    fn get(&self, key: &ItemKey) -> Result<Option<Item>, Error> {
        let Some(bytes) = self.items.get(key.as_bytes())? else {
            return Ok(None);
        };
        match Item::decode(&bytes) {
            Some(item) => {
                self.recency.touch(key.as_bytes());
                Ok(Some(item))
            }
            None => {
                self.drop_corrupt(key.as_bytes(), "item");
                Ok(None)
            }
        }
    }

    fn get_many(&self, keys: &[&ItemKey]) -> Vec<Result<Option<Item>, Error>> {
        let read: Vec<_> = keys
            .iter()
            .map(|key| {
                let Some(bytes) = self.items.get(key.as_bytes())? else {
                    return Ok(None);
                };
                match Item::decode(&bytes) {
                    Some(item) => Ok(Some(item)),
                    None => {
                        self.drop_corrupt(key.as_bytes(), "item");
                        Ok(None)
                    }
                }
            })
            .collect();
        // Every item found counts as used, under one lock of the order.
        let found = keys
            .iter()
            .zip(&read)
            .filter(|(_, r)| matches!(r, Ok(Some(_))));
        self.recency.touch_all(found.map(|(k, _)| k.as_bytes()));
        read
    }

    fn put(&self, key: &ItemKey, item: &Item) -> Result<(), Error> {
        self.space.admit()?;
        let record = item.encode();
        let size = (key.as_bytes().len() + record.len()) as u64;
        let mut pass = self.census.during();
        let old = self
            .items
            .insert(key.as_bytes(), record)
            .map_err(|e| self.failed(e))?;
        self.counted(
            pass.as_mut(),
            key.as_bytes(),
            old.map(|v| data_len(&v)),
            Some(item.data.len()),
        );
        match pass {
            // Nothing is evicted before the count has placed every item.
            Some(_) => self.recency.place(key.as_bytes(), size),
            None => {
                let victims = self.recency.insert(key.as_bytes(), size);
                self.evict(victims);
            }
        }
        Ok(())
    }

    fn remove(&self, key: &ItemKey) -> Result<bool, Error> {
        let mut pass = self.census.during();
        self.recency.remove(key.as_bytes());
        let old = self.items.remove(key.as_bytes())?;
        let found = old.is_some();
        self.counted(
            pass.as_mut(),
            key.as_bytes(),
            old.map(|v| data_len(&v)),
            None,
        );
        Ok(found)
    }

    fn put_job(&self, job: &JobName, config: &JobConfig) -> Result<(), Error> {
        self.space.admit()?;
        self.jobs
            .insert(job.as_str().as_bytes(), encode_job(config))
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    fn jobs(&self) -> Result<Vec<(JobName, JobConfig)>, Error> {
        let mut out = Vec::new();
        for kv in self.jobs.iter() {
            let (k, v) = kv?;
            match (String::from_utf8(k.to_vec()), decode_job(&v)) {
                (Ok(name), Some(config)) => out.push((JobName::from_stored(name), config)),
                _ => {
                    self.corrupt.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(key = ?String::from_utf8_lossy(&k), "dropping a job record that does not decode");
                    self.jobs.remove(&k)?;
                }
            }
        }
        Ok(out)
    }

    fn sweep(
        &self,
        config_of: &dyn Fn(&str) -> Option<JobConfig>,
        now: SystemTime,
    ) -> Result<usize, Error> {
        let mut removed = 0;
        for kv in self.items.iter() {
            let (k, v) = kv?;
            let job = k.split(|&b| b == 0).next().unwrap_or_default();
            let config = std::str::from_utf8(job).ok().and_then(config_of);
            match (config, Item::decode_times(&v)) {
                (Some(c), Some(t)) if !policy::is_past_ttl(t.stored_at, &c, now) => continue,
                (Some(_), Some(_)) => {}
                (None, _) => tracing::info!(
                    job = %String::from_utf8_lossy(job),
                    "sweeping an item of a job that no longer exists"
                ),
                (Some(_), None) => {
                    self.corrupt.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Only remove the record we looked at: a write since then wins.
            let mut pass = self.census.during();
            if self
                .items
                .compare_and_swap(&k, Some(&v), None as Option<&[u8]>)?
                .is_ok()
            {
                self.recency.remove(&k);
                self.counted(pass.as_mut(), &k, Some(data_len(&v)), None);
                drop(pass);
                if let Some(listener) = self.removals.get() {
                    listener(&k);
                }
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn flush(&self) -> Result<(), Error> {
        self.db.flush()?;
        Ok(())
    }

    fn corrupt_records(&self) -> u64 {
        self.corrupt.load(Ordering::Relaxed)
    }

    fn put_invalidated_before(&self, job: &JobName, at: SystemTime) -> Result<(), Error> {
        self.space.admit()?;
        self.invalidated
            .insert(job.as_str().as_bytes(), &micros(at).to_be_bytes())
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    fn invalidated_before(&self) -> Result<Vec<(JobName, SystemTime)>, Error> {
        let mut out = Vec::new();
        for kv in self.invalidated.iter() {
            let (k, v) = kv?;
            let at = <[u8; 8]>::try_from(v.as_ref()).ok().map(u64::from_be_bytes);
            match (String::from_utf8(k.to_vec()), at) {
                (Ok(name), Some(at)) => out.push((JobName::from_stored(name), from_micros(at))),
                _ => {
                    self.corrupt.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(key = ?String::from_utf8_lossy(&k), "dropping an invalidation record that does not decode");
                    self.invalidated.remove(&k)?;
                }
            }
        }
        Ok(out)
    }

    fn remove_job(&self, job: &JobName) -> Result<u64, Error> {
        self.jobs.remove(job.as_str().as_bytes())?;
        self.invalidated.remove(job.as_str().as_bytes())?;
        let mut removed = 0;
        for k in self.items.scan_prefix(ItemKey::job_prefix(job)).keys() {
            let k = k?;
            let mut pass = self.census.during();
            self.recency.remove(&k);
            if let Some(old) = self.items.remove(&k)? {
                self.counted(pass.as_mut(), &k, Some(data_len(&old)), None);
                removed += 1;
            }
        }
        self.usage.write().remove(job.as_str().as_bytes());
        Ok(removed)
    }

    fn usage(&self, job: &JobName) -> Result<Usage, Error> {
        let usage = self.usage.read();
        Ok(usage
            .get(job.as_str().as_bytes())
            .map_or_else(Usage::default, |c| c.usage()))
    }

    fn close(&self) -> Result<(), Error> {
        self.census.stop();
        if self.census.counting() {
            tracing::info!(
                "the store's items were not all counted yet: the next start counts them again"
            );
            self.db.flush()?;
            return Ok(());
        }
        // The write lock keeps new jobs out while the counts are saved; writes to known
        // jobs that land meanwhile drop the saved counts again (`account`).
        let usage = self.usage.write();
        let mut saved = sled::Batch::default();
        let counts = usage.iter().map(|(job, c)| (job, c.usage()));
        for (job, u) in counts.filter(|(_, u)| u.items > 0) {
            let mut value = u.items.to_be_bytes().to_vec();
            value.extend_from_slice(&u.bytes.to_be_bytes());
            let mut key = USAGE_PREFIX.to_vec();
            key.extend_from_slice(job);
            saved.insert(key, value);
        }
        clear_saved_usage(&self.meta)?;
        self.meta.apply_batch(saved)?;
        self.meta.insert(USAGE_SAVED, &[1])?;
        self.closed.store(true, Ordering::Relaxed);
        drop(usage);
        self.db.flush()?;
        Ok(())
    }

    fn count_in_background(self: Arc<Self>) {
        census::Census::start(self);
    }

    fn counting(&self) -> bool {
        self.census.counting()
    }

    fn watch_removals(&self, listener: RemovalListener) {
        if self.removals.set(listener).is_err() {
            tracing::error!("the store's removal listener was set twice: the first one stays");
        }
    }

    fn size_on_disk(&self) -> Result<u64, Error> {
        Ok(self.db.size_on_disk()?)
    }

    fn data_len(&self, key: &ItemKey) -> Option<u64> {
        // An upper bound: the record's header (validator and tags included) counts too.
        let overhead = (key.as_bytes().len() + ITEM_HEADER) as u64;
        self.recency
            .size(key.as_bytes())
            .map(|s| s.saturating_sub(overhead))
    }

    fn evictions(&self, job: &JobName) -> u64 {
        let usage = self.usage.read();
        usage
            .get(job.as_str().as_bytes())
            .map_or(0, |c| c.evicted.load(Ordering::Relaxed))
    }

    fn writable(&self) -> Result<(), Error> {
        self.space.admit()
    }

    fn put_tag_marks(&self, tags: &[Tag], at: SystemTime) -> Result<(), Error> {
        self.space.admit()?;
        let mut batch = sled::Batch::default();
        for tag in tags {
            batch.insert(tag.as_str().as_bytes(), &micros(at).to_be_bytes());
        }
        self.tag_marks
            .apply_batch(batch)
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    fn tag_marks(&self) -> Result<Vec<(Tag, SystemTime)>, Error> {
        let mut out = Vec::new();
        for kv in self.tag_marks.iter() {
            let (k, v) = kv?;
            let at = <[u8; 8]>::try_from(v.as_ref()).ok().map(u64::from_be_bytes);
            match (String::from_utf8(k.to_vec()), at) {
                (Ok(tag), Some(at)) => out.push((Tag::from_stored(tag), from_micros(at))),
                _ => {
                    self.corrupt.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(key = ?String::from_utf8_lossy(&k), "dropping a tag mark that does not decode");
                    self.tag_marks.remove(&k)?;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str) -> JobName {
        JobName::parse(name, &Default::default()).unwrap()
    }

    #[test]
    fn item_round_trips_with_validator_tags_fetch_duration_and_absence() {
        let times = policy::times_for_new(
            UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            Duration::from_secs(300),
        );
        let tags = |names: &[&str]| {
            names
                .iter()
                .map(|n| Tag::from_stored(n.to_string()))
                .collect()
        };
        let item = Item {
            times,
            fetch_took: Duration::from_micros(1_234_567),
            validator: vec![0xAB; 256],
            tags: tags(&["user:1", "team.a"]),
            absent: false,
            data: b"hello".to_vec(),
        };
        let record = item.encode();
        assert_eq!(Item::decode(&record), Some(item.clone()));
        assert_eq!(data_len(&record), 5);
        let absent = Item {
            absent: true,
            data: Vec::new(),
            validator: Vec::new(),
            ..item
        };
        assert_eq!(Item::decode(&absent.encode()), Some(absent));
        // Cut anywhere inside what comes before the data, it does not decode.
        assert_eq!(Item::decode(&record[..ITEM_HEADER + 9]), None);
    }

    #[test]
    fn format_1_item_records_still_decode() {
        let times = policy::times_for_new(
            UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            Duration::from_secs(300),
        );
        let mut record = vec![1u8, 0];
        record.extend_from_slice(&micros(times.stored_at).to_be_bytes());
        record.extend_from_slice(&micros(times.expires_at).to_be_bytes());
        record.extend_from_slice(b"old data");
        assert_eq!(
            Item::decode(&record),
            Some(Item::data(times, b"old data".to_vec()))
        );
        assert_eq!(data_len(&record), 8);
    }

    #[test]
    fn item_round_trips_with_its_times() {
        let times = policy::times_for_new(
            UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            Duration::from_secs(300),
        );
        let item = Item::data(times, b"hello".to_vec());
        assert_eq!(Item::decode(&item.encode()), Some(item));
        assert_eq!(Item::decode(b"\x02garbage-garbage-garbage"), None);
        assert_eq!(Item::decode(b"\x01short"), None);
    }

    #[test]
    fn job_config_round_trips() {
        let config = JobConfig {
            fetch_on_stale_threshold: Some(Duration::from_millis(1500)),
            fetch_on_miss: false,
            ..JobConfig::default()
        };
        assert_eq!(decode_job(&encode_job(&config)), Some(config));
        assert_eq!(
            decode_job(&encode_job(&JobConfig::default())),
            Some(JobConfig::default())
        );
        let additions = JobConfig {
            early_refresh_beta: Some(Beta::new(1.5).unwrap()),
            absent_lifetime: Some(Duration::from_secs(7)),
            error_ttl: Some(Duration::from_millis(250)),
            ..config
        };
        assert_eq!(decode_job(&encode_job(&additions)), Some(additions));
        // A format 1 record (as written before the additions) still decodes.
        let mut v1 = encode_job(&config)[..JOB_RECORD_1].to_vec();
        v1[0] = JOB_FORMAT_1;
        assert_eq!(decode_job(&v1), Some(config));
    }

    #[test]
    fn tag_marks_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let tags = [Tag::from_stored("a".into()), Tag::from_stored("b".into())];
        {
            let (store, _) = reopen(dir.path());
            store.put_tag_marks(&tags, at).unwrap();
            store.flush().unwrap();
        }
        let (store, _) = reopen(dir.path());
        let mut marks = store.tag_marks().unwrap();
        marks.sort();
        assert_eq!(marks, vec![(tags[0].clone(), at), (tags[1].clone(), at)]);
    }

    #[test]
    fn damaged_store_is_moved_aside_and_a_fresh_one_opens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = reopen(dir.path());
            store.put_job(&job("j"), &JobConfig::default()).unwrap();
            store.flush().unwrap();
        }
        std::fs::write(dir.path().join("store/conf"), b"garbage").unwrap();
        std::fs::write(dir.path().join("store/db"), vec![0xA5; 5000]).unwrap();
        let (store, report) = reopen(dir.path());
        let aside = report.moved_aside.expect("moved aside");
        assert!(aside
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("store.corrupt-"));
        assert!(aside.join("db").exists());
        assert_eq!(store.jobs().unwrap(), vec![]);
        drop(store);
        // The fresh store opens cleanly next time.
        let (_, report) = reopen(dir.path());
        assert!(report.moved_aside.is_none());
    }

    /// Opens the store at `dir` once the previous handle in this process let go of it
    /// (sled's background threads release its lock a moment after the drop).
    fn reopen(dir: &Path) -> (SledStore, OpenReport) {
        for _ in 0..100 {
            match SledStore::open(dir, Duration::from_millis(100)) {
                Err(e) if e.to_string().contains("another cachebackd holds") => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => return other.unwrap(),
            }
        }
        panic!("the store at {} stays locked", dir.display());
    }

    /// A store of `n` items of job `j`, closed.
    fn filled(dir: &Path, n: usize) {
        let (store, _) = reopen(dir);
        store.put_job(&job("j"), &JobConfig::default()).unwrap();
        for i in 0..n {
            let item = Item::data(
                policy::times_for_new(SystemTime::now(), Duration::from_secs(60)),
                vec![7; 100 + i % 300],
            );
            store
                .put(&ItemKey::new(&job("j"), format!("[{i}]").as_bytes()), &item)
                .unwrap();
        }
        store.close().unwrap();
    }

    #[test]
    fn a_garbled_conf_alone_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path(), 2000);
        std::fs::write(dir.path().join("store/conf"), vec![0xA5; 62]).unwrap();
        let (store, report) = reopen(dir.path());
        assert!(report.moved_aside.is_some());
        let salvaged = report.salvaged.unwrap();
        assert_eq!((salvaged.items, salvaged.jobs), (2000, 1), "{salvaged:?}");
        assert_eq!(store.usage(&job("j")).unwrap().items, 2000);
        assert_eq!(store.jobs().unwrap().len(), 1);
        assert!(!dir.path().join("store.salvage").exists());
    }

    #[test]
    fn a_flipped_byte_loses_only_what_follows_it() {
        for tenth in 1..10 {
            let dir = tempfile::tempdir().unwrap();
            filled(dir.path(), 5000);
            let db = dir.path().join("store/db");
            let mut bytes = std::fs::read(&db).unwrap();
            let at = bytes.len() * tenth / 10;
            bytes[at] ^= 0xff;
            std::fs::write(&db, bytes).unwrap();
            let (store, report) = reopen(dir.path());
            // Whatever sled makes of the damage, every item kept is whole and counted.
            let items = store.usage(&job("j")).unwrap().items;
            if let Some(salvaged) = report.salvaged {
                assert_eq!(items, salvaged.items, "at {tenth}/10: {salvaged:?}");
            }
            for i in 0..5000 {
                let key = ItemKey::new(&job("j"), format!("[{i}]").as_bytes());
                if let Some(item) = store.get(&key).unwrap() {
                    assert_eq!(item.data, vec![7; 100 + i % 300]);
                }
            }
        }
    }

    #[test]
    fn a_store_in_use_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = reopen(dir.path());
        first.put_job(&job("j"), &JobConfig::default()).unwrap();
        let Err(e) = SledStore::open(dir.path(), Duration::from_millis(100)) else {
            panic!("a second open of a store in use succeeded");
        };
        assert!(e.to_string().contains("another cachebackd holds"), "{e}");
        assert_eq!(first.jobs().unwrap().len(), 1);
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1, "nothing moved aside");
    }

    #[test]
    fn usage_is_kept_exact_as_items_are_written_and_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let j = job("j");
        let other = job("other");
        let item = |n: usize| {
            Item::data(
                policy::times_for_new(SystemTime::now(), Duration::from_secs(60)),
                vec![7; n],
            )
        };
        let expect = |store: &SledStore, items, bytes| {
            assert_eq!(store.usage(&j).unwrap(), Usage { items, bytes });
            assert_eq!(store.usage(&other).unwrap(), Usage { items: 1, bytes: 3 });
        };
        {
            let (store, _) = reopen(dir.path());
            store.put(&ItemKey::new(&j, b"a"), &item(10)).unwrap();
            store.put(&ItemKey::new(&j, b"b"), &item(20)).unwrap();
            store.put(&ItemKey::new(&j, b"a"), &item(5)).unwrap(); // overwrite
            store.put(&ItemKey::new(&other, b"a"), &item(3)).unwrap();
            assert!(store.remove(&ItemKey::new(&j, b"b")).unwrap());
            assert!(!store.remove(&ItemKey::new(&j, b"b")).unwrap());
            expect(&store, 1, 5);
            store.close().unwrap();
        }
        {
            // A clean stop saved the counts; they are taken back and dropped at once.
            let (store, _) = reopen(dir.path());
            assert!(store.meta.get(USAGE_SAVED).unwrap().is_none());
            expect(&store, 1, 5);
            store.put(&ItemKey::new(&j, b"c"), &item(1)).unwrap();
            store.flush().unwrap();
            // No close: as after a crash.
        }
        {
            let (store, _) = reopen(dir.path());
            expect(&store, 2, 6);
            store.close().unwrap();
            // A write after close makes the saved counts stale: the next start counts.
            store.put(&ItemKey::new(&j, b"d"), &item(4)).unwrap();
            store.flush().unwrap();
        }
        let (store, _) = reopen(dir.path());
        expect(&store, 3, 10);
        assert_eq!(store.remove_job(&j).unwrap(), 3);
        assert_eq!(store.usage(&j).unwrap(), Usage::default());
    }

    #[test]
    fn undecodable_item_is_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (store, report) = reopen(dir.path());
        assert!(report.moved_aside.is_none());
        let key = ItemKey::new(&job("j"), b"[1]");
        store
            .items
            .insert(key.as_bytes(), b"nonsense".to_vec())
            .unwrap();
        assert_eq!(store.get(&key).unwrap(), None);
        assert_eq!(store.corrupt_records(), 1);
        assert!(store.items.get(key.as_bytes()).unwrap().is_none());
    }

    #[test]
    fn job_usage_invalidation_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = reopen(dir.path());
        let (j, other) = (job("j"), job("j2"));
        let item = |data: &[u8]| {
            Item::data(
                policy::times_for_new(SystemTime::now(), Duration::from_secs(1)),
                data.to_vec(),
            )
        };
        store.put_job(&j, &JobConfig::default()).unwrap();
        store.put(&ItemKey::new(&j, b"a"), &item(b"12345")).unwrap();
        store.put(&ItemKey::new(&j, b"b"), &item(b"")).unwrap();
        store.put(&ItemKey::new(&other, b"a"), &item(b"x")).unwrap();
        assert_eq!(store.usage(&j).unwrap(), Usage { items: 2, bytes: 5 });
        let at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        store.put_invalidated_before(&j, at).unwrap();
        assert_eq!(store.invalidated_before().unwrap(), vec![(j.clone(), at)]);
        assert_eq!(store.remove_job(&j).unwrap(), 2);
        assert_eq!(store.usage(&j).unwrap(), Usage::default());
        assert_eq!(store.usage(&other).unwrap(), Usage { items: 1, bytes: 1 });
        assert_eq!(store.invalidated_before().unwrap(), vec![]);
        assert_eq!(store.jobs().unwrap(), vec![]);
        assert!(store.size_on_disk().unwrap() > 0);
    }

    #[test]
    fn sweep_removes_items_past_cache_ttl_and_items_of_unknown_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = reopen(dir.path());
        let j = job("j");
        let config = JobConfig {
            cache_ttl: Duration::from_secs(60),
            ..JobConfig::default()
        };
        let now = SystemTime::now();
        let old = Item::data(
            policy::times_for_new(now - Duration::from_secs(61), Duration::from_secs(1)),
            vec![1],
        );
        let young = Item::data(
            policy::times_for_new(now - Duration::from_secs(59), Duration::from_secs(1)),
            vec![2],
        );
        store.put(&ItemKey::new(&j, b"old"), &old).unwrap();
        store.put(&ItemKey::new(&j, b"young"), &young).unwrap();
        store
            .put(&ItemKey::new(&job("other"), b"old"), &old)
            .unwrap();
        store
            .put(&ItemKey::new(&job("gone"), b"x"), &young)
            .unwrap();
        let config_of = |name: &str| match name {
            "j" => Some(config),
            // A longer cache_ttl: the same age is young here.
            "other" => Some(JobConfig::default()),
            _ => None,
        };
        assert_eq!(store.sweep(&config_of, now).unwrap(), 2);
        assert_eq!(store.get(&ItemKey::new(&j, b"old")).unwrap(), None);
        assert_eq!(store.get(&ItemKey::new(&j, b"young")).unwrap(), Some(young));
        assert_eq!(
            store.get(&ItemKey::new(&job("other"), b"old")).unwrap(),
            Some(old)
        );
        // The item of a job nobody knows any more is gone, and no longer counted.
        assert_eq!(store.get(&ItemKey::new(&job("gone"), b"x")).unwrap(), None);
        assert_eq!(store.usage(&job("gone")).unwrap(), Usage::default());
    }
}
