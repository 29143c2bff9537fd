//! A fleet's shared store: Redis (one server or a Cluster) holding the items, job configs,
//! marks, leases and backoff of every daemon that is given the same URL (PROTOCOL.md,
//! "Fleet"; docs/FLEET.md has the design and its failure cases).
//!
//! This module is the Redis side only: the connection (kept up by the `redis` crate's
//! ConnectionManager, or its Cluster client), the scripts (`scripts`), the key layout
//! (`keys`) and the event channel. What the calls mean is the engine's (`engine::fleet`);
//! it hears the fleet's changes as [`FleetEvent`]s.
//!
//! The `redis` crate was picked over `fred`: both are well kept and async; `redis` has
//! the larger user base, a Cluster client with the same `ConnectionLike` as the single
//! server one (so every script runs on either unchanged), rustls without aws-lc, and the
//! project's benchmark already used it. docs/FLEET.md compares the two.

mod keys;
mod scripts;
mod shim;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, RedisError, ScriptInvocation, Value};
use tokio::sync::mpsc;

use crate::config::StoreUrl;
use crate::error::Error;
use crate::model::{ItemKey, JobConfig, JobName, Tag};
use crate::shutdown::Shutdown;
use crate::store::Item;

pub(crate) use shim::FleetShim;

/// How long a call waits for Redis before it answers UNAVAILABLE.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the connection is checked while nothing else tells (health follows it).
const PING_EVERY: Duration = Duration::from_millis(500);

/// A change somewhere in the fleet, as the engine hears it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FleetEvent {
    /// Subscribed (again): everything held in memory must be read afresh, then the fleet
    /// marked up ([`Fleet::set_up`] with this subscription's number).
    Connected(u64),
    /// The subscription is lost: changes may be missed from now on.
    Lost,
    /// An item changed.
    Item {
        /// What happened.
        kind: ItemChange,
        /// The item.
        key: ItemKey,
        /// Its job's epoch.
        epoch: u64,
        /// This daemon made the change.
        own: bool,
    },
    /// A job was registered or its config changed.
    JobChanged(JobName),
    /// A job was deleted.
    JobDeleted(JobName),
    /// InvalidateJob.
    JobMarked(JobName),
    /// InvalidateTags.
    TagsMarked(Vec<Tag>),
}

/// What happened to an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ItemChange {
    /// New data (a Set, a stored fetch).
    Changed,
    /// Deleted.
    Removed,
    /// Invalidated.
    Invalidated,
    /// A fetch failed (its lease is free, a backoff runs).
    Failed,
    /// A lease was given back without a result.
    Released,
}

/// What is kept of an item, read in one call.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// The record, with its invalidation applied to its times.
    pub item: Option<Item>,
    /// Bumped by every write.
    pub version: u64,
    /// A live lease: a fetch is in flight on some daemon.
    pub lease_live: bool,
    /// Background fetches are held back until then (ms).
    pub backoff_until: u64,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// A missing item's failure is answered until then (ms).
    pub remembered_until: u64,
    /// Failures in a row.
    pub failures: u32,
}

impl Snapshot {
    /// Whether background fetches are held back at `now_ms`.
    pub(crate) fn backed_off(&self, now_ms: u64) -> bool {
        self.backoff_until > now_ms
    }
    /// The failure answered for a missing item at `now_ms` (`error_ttl`).
    pub(crate) fn remembered(&self, now_ms: u64) -> Option<Error> {
        (self.remembered_until > now_ms).then(|| {
            Error::FetchFailed(
                self.last_error
                    .clone()
                    .unwrap_or_else(|| "the item's last fetch failed".into()),
            )
        })
    }
}

/// A lease taken: the fetch may go to a worker, and stores only under it.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    pub token: String,
    pub version: u64,
    pub generation: u64,
    pub failures: u32,
}

/// What storing a fetch's result came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// A write won since the fetch started: nothing stored.
    Lost,
    /// Stored.
    Fresh,
    /// Stored stale: an invalidation came in during the fetch; one more refresh follows.
    Stale,
}

/// Everything the fleet keeps of the jobs.
#[derive(Debug, Default)]
pub(crate) struct Jobs {
    pub configs: Vec<(JobName, JobConfig, u64)>,
    pub job_marks: HashMap<JobName, SystemTime>,
    pub tag_marks: HashMap<Tag, SystemTime>,
}

#[derive(Clone)]
enum Conn {
    One(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The fleet's store: a cheap-to-clone handle.
#[derive(Clone)]
pub(crate) struct Fleet {
    inner: Arc<Inner>,
}

struct Inner {
    url: StoreUrl,
    /// What messages name the store by.
    name: String,
    conn: ArcSwapOption<Conn>,
    /// Connected, subscribed, and what memory holds read afresh since.
    up: AtomicBool,
    /// Why it is not up, for messages.
    down_reason: Mutex<String>,
    /// Counts subscriptions and their losses: only the current one may mark the fleet up.
    subscription: AtomicU64,
    /// This daemon's id in the events it publishes.
    origin: [u8; 16],
}

impl Fleet {
    /// A fleet on `url` (a Redis URL), its connection and subscription kept up by a task
    /// of `shutdown`; the changes it hears come out of the returned receiver. Fails at
    /// once only if the URL cannot be used at all; an unreachable Redis is waited for.
    pub(crate) fn start(
        url: &StoreUrl,
        shutdown: &Shutdown,
    ) -> Result<(Fleet, mpsc::Receiver<FleetEvent>), Error> {
        let bad = |e: RedisError| Error::InvalidArgument(format!("store URL {url}: {e}"));
        let subscribe_to: Vec<redis::Client> = match url {
            StoreUrl::Sled => {
                return Err(Error::InvalidArgument(
                    "the sled store is not a fleet".into(),
                ))
            }
            StoreUrl::Redis { url, .. } => vec![redis::Client::open(url.as_str()).map_err(bad)?],
            StoreUrl::Cluster { nodes, .. } => nodes
                .iter()
                .map(|n| redis::Client::open(n.as_str()).map_err(bad))
                .collect::<Result<_, _>>()?,
        };
        // rediss:// verifies the server with rustls, on the daemon's one provider (ring).
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let fleet = Fleet {
            inner: Arc::new(Inner {
                name: url.describe(),
                url: url.clone(),
                conn: ArcSwapOption::empty(),
                up: AtomicBool::new(false),
                down_reason: Mutex::new("not connected yet".into()),
                subscription: AtomicU64::new(0),
                origin: *uuid::Uuid::new_v4().as_bytes(),
            }),
        };
        if let StoreUrl::Redis { .. } = url {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(1);
            let manager = ConnectionManager::new_lazy_with_config(subscribe_to[0].clone(), config)
                .map_err(bad)?;
            fleet.inner.conn.store(Some(Arc::new(Conn::One(manager))));
        }
        let (tx, rx) = mpsc::channel(4096);
        shutdown.spawn(fleet.clone().follow(subscribe_to, tx, shutdown.clone()));
        Ok((fleet, rx))
    }

    /// What messages name the store by (`redis at HOST:PORT`).
    pub(crate) fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether calls are served: connected, subscribed, memory read afresh.
    pub(crate) fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    /// Refuses with UNAVAILABLE while the fleet is not up.
    pub(crate) fn check_up(&self) -> Result<(), Error> {
        if self.is_up() {
            return Ok(());
        }
        Err(Error::Store(format!(
            "{}: {}",
            self.inner.name,
            self.inner.down_reason.lock()
        )))
    }

    /// Marks the fleet up, once the engine has read afresh what memory holds, if
    /// `subscription` is still the current one (it was not lost meanwhile).
    pub(crate) fn set_up(&self, subscription: u64) {
        let _held = self.inner.down_reason.lock();
        if self.inner.subscription.load(Ordering::Acquire) != subscription {
            return;
        }
        self.inner.up.store(true, Ordering::Release);
        tracing::info!(store = %self.inner.name, "the fleet's store is reachable: serving");
    }

    fn set_down(&self, reason: String) {
        let mut held = self.inner.down_reason.lock();
        self.inner.subscription.fetch_add(1, Ordering::AcqRel);
        *held = reason.clone();
        drop(held);
        if self.inner.up.swap(false, Ordering::AcqRel) {
            tracing::error!(store = %self.inner.name, %reason, "the fleet's store is unreachable: calls answer UNAVAILABLE until it is back");
        }
    }

    fn failed(&self, e: RedisError) -> Error {
        Error::Store(format!("{}: {e}", self.inner.name))
    }

    fn conn(&self) -> Result<Conn, Error> {
        match &*self.inner.conn.load() {
            Some(c) => Ok((**c).clone()),
            None => Err(Error::Store(format!(
                "{}: {}",
                self.inner.name,
                self.inner.down_reason.lock()
            ))),
        }
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, Error> {
        let result = match self.conn()? {
            Conn::One(mut c) => cmd.query_async(&mut c).await,
            Conn::Cluster(mut c) => cmd.query_async(&mut c).await,
        };
        result.map_err(|e| self.failed(e))
    }

    async fn run<T: FromRedisValue>(&self, script: ScriptInvocation<'_>) -> Result<T, Error> {
        let result = match self.conn()? {
            Conn::One(mut c) => script.invoke_async(&mut c).await,
            Conn::Cluster(mut c) => script.invoke_async(&mut c).await,
        };
        result.map_err(|e| self.failed(e))
    }

    async fn publish(&self, kind: u8, body: &[u8]) -> Result<(), Error> {
        let mut message = vec![kind];
        message.extend_from_slice(&self.inner.origin);
        message.extend_from_slice(body);
        self.query::<i64>(redis::cmd("PUBLISH").arg(keys::EVENTS).arg(message))
            .await
            .map(drop)
    }

    /// Reads everything kept of an item.
    pub(crate) async fn read(&self, key: &ItemKey, epoch: u64) -> Result<Snapshot, Error> {
        use keys::field::*;
        self.check_up()?;
        let fields: Vec<Option<Vec<u8>>> = self
            .query(redis::cmd("HMGET").arg(keys::item(key, epoch)).arg(&[
                RECORD,
                INVALIDATED,
                LEASE,
                LEASE_UNTIL,
                BACKOFF_UNTIL,
                LAST_ERROR,
                REMEMBERED_UNTIL,
                VERSION,
                FAILURES,
            ]))
            .await?;
        let number = |i: usize| -> u64 {
            fields
                .get(i)
                .and_then(|f| f.as_deref())
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
        };
        let now = now_ms();
        let item = match fields.first().and_then(|f| f.as_deref()) {
            None => None,
            Some(bytes) => match Item::decode(bytes) {
                Some(mut item) => {
                    if fields.get(1).is_some_and(|f| f.is_some()) {
                        let at = UNIX_EPOCH + Duration::from_micros(number(1));
                        item.times.expires_at = item.times.expires_at.min(at);
                    }
                    Some(item)
                }
                None => {
                    tracing::error!(store = %self.inner.name, "an item's record in the fleet's store cannot be decoded: it reads as missing");
                    None
                }
            },
        };
        Ok(Snapshot {
            item,
            version: number(7),
            lease_live: fields.get(2).is_some_and(|f| f.is_some()) && number(3) > now,
            backoff_until: number(4),
            last_error: fields
                .get(5)
                .and_then(|f| f.as_deref())
                .map(|b| String::from_utf8_lossy(b).into_owned()),
            remembered_until: number(6),
            failures: number(8) as u32,
        })
    }

    /// Takes the item's lease for `span`, unless another live one is held or the item's
    /// version is not `expected` any more (it changed since the caller looked).
    pub(crate) async fn take_lease(
        &self,
        key: &ItemKey,
        epoch: u64,
        span: Duration,
        expected: u64,
    ) -> Result<Option<Lease>, Error> {
        self.check_up()?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let now = now_ms();
        let mut call = scripts::TAKE.prepare_invoke();
        call.key(keys::item(key, epoch))
            .arg(&token)
            .arg(now)
            .arg(now + span.as_millis() as u64)
            .arg(expected);
        let reply: Vec<Value> = self.run(call).await?;
        if !matches!(reply.first(), Some(Value::Int(1))) {
            return Ok(None);
        }
        let int = |i: usize| -> u64 {
            reply
                .get(i)
                .and_then(|v| String::from_redis_value_ref(v).ok())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
        };
        Ok(Some(Lease {
            token,
            version: int(1),
            generation: int(2),
            failures: int(3) as u32,
        }))
    }

    /// Stores a fetch's `item` under `lease`; `stale` when a mark came in during the fetch.
    pub(crate) async fn store_fetched(
        &self,
        key: &ItemKey,
        epoch: u64,
        lease: &Lease,
        item: &Item,
        keep_until: SystemTime,
        stale: bool,
    ) -> Result<Stored, Error> {
        let mut call = scripts::STORE.prepare_invoke();
        call.key(keys::item(key, epoch))
            .arg(&lease.token)
            .arg(lease.version)
            .arg(lease.generation)
            .arg(item.encode())
            .arg(ms(keep_until))
            .arg(if stale { "1" } else { "0" })
            .arg(micros(item.times.stored_at))
            .arg(&self.inner.origin[..]);
        Ok(match self.run::<i64>(call).await? {
            0 => Stored::Lost,
            2 => Stored::Stale,
            _ => Stored::Fresh,
        })
    }

    /// A failed fetch: the lease goes back, background fetches wait until `backoff_until`,
    /// and a missing item's error is answered until `remember_until`.
    pub(crate) async fn fail(
        &self,
        key: &ItemKey,
        epoch: u64,
        lease: &Lease,
        backoff_until: SystemTime,
        message: &str,
        remember_until: Option<SystemTime>,
    ) -> Result<(), Error> {
        let mut call = scripts::FAIL.prepare_invoke();
        call.key(keys::item(key, epoch))
            .arg(&lease.token)
            .arg(ms(backoff_until))
            .arg(message)
            .arg(remember_until.map_or(0, ms))
            .arg(&self.inner.origin[..]);
        self.run::<i64>(call).await.map(drop)
    }

    /// Gives the lease back without a result.
    pub(crate) async fn release(
        &self,
        key: &ItemKey,
        epoch: u64,
        lease: &Lease,
    ) -> Result<(), Error> {
        let mut call = scripts::RELEASE.prepare_invoke();
        call.key(keys::item(key, epoch))
            .arg(&lease.token)
            .arg(&self.inner.origin[..]);
        self.run::<i64>(call).await.map(drop)
    }

    /// A Set: stores `item`, voiding any lease.
    pub(crate) async fn set(
        &self,
        key: &ItemKey,
        epoch: u64,
        item: &Item,
        keep_until: SystemTime,
    ) -> Result<(), Error> {
        self.check_up()?;
        let mut call = scripts::SET.prepare_invoke();
        call.key(keys::item(key, epoch))
            .arg(item.encode())
            .arg(ms(keep_until))
            .arg(&self.inner.origin[..]);
        self.run::<i64>(call).await.map(drop)
    }

    /// A Delete; the item that was there.
    pub(crate) async fn delete(&self, key: &ItemKey, epoch: u64) -> Result<Option<Item>, Error> {
        self.check_up()?;
        let mut call = scripts::DELETE.prepare_invoke();
        call.key(keys::item(key, epoch)).arg(&self.inner.origin[..]);
        let old: Option<Vec<u8>> = self.run(call).await?;
        Ok(old.as_deref().and_then(Item::decode))
    }

    /// An Invalidate at `now`: (whether the item was there, whether a lease is held).
    pub(crate) async fn invalidate(
        &self,
        key: &ItemKey,
        epoch: u64,
        now: SystemTime,
    ) -> Result<(bool, bool), Error> {
        self.check_up()?;
        let mut call = scripts::INVALIDATE.prepare_invoke();
        call.key(keys::item(key, epoch))
            .arg(micros(now))
            .arg(ms(now))
            .arg(&self.inner.origin[..]);
        let (found, held): (i64, i64) = self.run(call).await?;
        Ok((found == 1, held == 1))
    }

    /// Registers `config` for `job`; the job's epoch (kept if it had one).
    pub(crate) async fn put_job(&self, job: &JobName, config: &JobConfig) -> Result<u64, Error> {
        self.check_up()?;
        self.put_job_while_down(job, config).await
    }

    /// [`put_job`](Fleet::put_job) before the fleet is marked up (on reconnecting).
    pub(crate) async fn put_job_while_down(
        &self,
        job: &JobName,
        config: &JobConfig,
    ) -> Result<u64, Error> {
        let name = job.as_str();
        self.query::<i64>(
            redis::cmd("HSET")
                .arg(keys::JOBS)
                .arg(name)
                .arg(crate::store::encode_job(config)),
        )
        .await?;
        let fresh: u64 = rand::random::<u64>() >> 1;
        self.query::<i64>(redis::cmd("HSETNX").arg(keys::EPOCHS).arg(name).arg(fresh))
            .await?;
        let epoch: Option<u64> = self
            .query(redis::cmd("HGET").arg(keys::EPOCHS).arg(name))
            .await?;
        self.publish(b'J', name.as_bytes()).await?;
        Ok(epoch.unwrap_or(fresh))
    }

    /// How many jobs the fleet knows.
    pub(crate) async fn job_count(&self) -> Result<usize, Error> {
        self.check_up()?;
        self.query(redis::cmd("HLEN").arg(keys::JOBS)).await
    }

    /// One job as the fleet knows it: its config, epoch and mark.
    pub(crate) async fn job(
        &self,
        job: &JobName,
    ) -> Result<Option<(JobConfig, u64, Option<SystemTime>)>, Error> {
        let name = job.as_str();
        let config: Option<Vec<u8>> = self
            .query(redis::cmd("HGET").arg(keys::JOBS).arg(name))
            .await?;
        let Some(config) = config.as_deref().and_then(crate::store::decode_job) else {
            return Ok(None);
        };
        let epoch: Option<u64> = self
            .query(redis::cmd("HGET").arg(keys::EPOCHS).arg(name))
            .await?;
        let mark: Option<u64> = self
            .query(redis::cmd("HGET").arg(keys::JOB_MARKS).arg(name))
            .await?;
        Ok(Some((config, epoch.unwrap_or(0), mark.map(from_micros))))
    }

    /// Every job, with its epoch, and every mark.
    pub(crate) async fn jobs(&self) -> Result<Jobs, Error> {
        let configs: HashMap<String, Vec<u8>> =
            self.query(redis::cmd("HGETALL").arg(keys::JOBS)).await?;
        let epochs: HashMap<String, u64> =
            self.query(redis::cmd("HGETALL").arg(keys::EPOCHS)).await?;
        let job_marks: HashMap<String, u64> = self
            .query(redis::cmd("HGETALL").arg(keys::JOB_MARKS))
            .await?;
        let tag_marks: HashMap<String, u64> = self
            .query(redis::cmd("HGETALL").arg(keys::TAG_MARKS))
            .await?;
        let mut jobs = Jobs::default();
        for (name, record) in configs {
            match crate::store::decode_job(&record) {
                Some(config) => {
                    let epoch = epochs.get(&name).copied().unwrap_or(0);
                    jobs.configs
                        .push((JobName::from_stored(name), config, epoch));
                }
                None => {
                    tracing::error!(job = %crate::logs::clip(&name), "a job's config in the fleet's store cannot be decoded: it is left out")
                }
            }
        }
        jobs.job_marks = job_marks
            .into_iter()
            .map(|(j, m)| (JobName::from_stored(j), from_micros(m)))
            .collect();
        jobs.tag_marks = tag_marks
            .into_iter()
            .map(|(t, m)| (Tag::from_stored(t), from_micros(m)))
            .collect();
        Ok(jobs)
    }

    /// InvalidateJob's mark, for every daemon.
    pub(crate) async fn mark_job(&self, job: &JobName, mark: SystemTime) -> Result<(), Error> {
        self.check_up()?;
        self.query::<i64>(
            redis::cmd("HSET")
                .arg(keys::JOB_MARKS)
                .arg(job.as_str())
                .arg(micros(mark)),
        )
        .await?;
        self.publish(b'M', job.as_str().as_bytes()).await
    }

    /// The mark of one job, as the fleet holds it.
    pub(crate) async fn job_mark(&self, job: &JobName) -> Result<Option<SystemTime>, Error> {
        let mark: Option<u64> = self
            .query(redis::cmd("HGET").arg(keys::JOB_MARKS).arg(job.as_str()))
            .await?;
        Ok(mark.map(from_micros))
    }

    /// InvalidateTags' marks, for every daemon.
    pub(crate) async fn mark_tags(&self, tags: &[Tag], mark: SystemTime) -> Result<(), Error> {
        self.check_up()?;
        let mut cmd = redis::cmd("HSET");
        cmd.arg(keys::TAG_MARKS);
        for tag in tags {
            cmd.arg(tag.as_str()).arg(micros(mark));
        }
        self.query::<i64>(&cmd).await?;
        let body = tags.iter().map(Tag::as_str).collect::<Vec<_>>().join("\0");
        self.publish(b'T', body.as_bytes()).await
    }

    /// The marks of `tags`, as the fleet holds them.
    pub(crate) async fn tag_marks(&self, tags: &[Tag]) -> Result<Vec<(Tag, SystemTime)>, Error> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(keys::TAG_MARKS);
        for tag in tags {
            cmd.arg(tag.as_str());
        }
        let marks: Vec<Option<u64>> = self.query(&cmd).await?;
        Ok(tags
            .iter()
            .zip(marks)
            .filter_map(|(t, m)| Some((t.clone(), from_micros(m?))))
            .collect())
    }

    /// DeleteJob: the job's config, epoch and mark go; its items are unreachable at once
    /// (their keys carry the old epoch) and Redis frees them at their cache_ttl.
    pub(crate) async fn delete_job(&self, job: &JobName) -> Result<bool, Error> {
        self.check_up()?;
        let name = job.as_str();
        let removed: i64 = self
            .query(redis::cmd("HDEL").arg(keys::JOBS).arg(name))
            .await?;
        self.query::<i64>(redis::cmd("HDEL").arg(keys::EPOCHS).arg(name))
            .await?;
        self.query::<i64>(redis::cmd("HDEL").arg(keys::JOB_MARKS).arg(name))
            .await?;
        self.publish(b'D', name.as_bytes()).await?;
        Ok(removed == 1)
    }

    /// Keeps the connection and the subscription up for good, telling the engine what it
    /// hears; marks the fleet down whenever either is lost.
    async fn follow(
        self,
        clients: Vec<redis::Client>,
        tx: mpsc::Sender<FleetEvent>,
        shutdown: Shutdown,
    ) {
        let mut delay = Duration::from_millis(50);
        loop {
            tokio::select! {
                _ = shutdown.closing() => return,
                ended = self.follow_once(&clients, &tx) => {
                    if let Err(reason) = ended {
                        let was_up = self.is_up();
                        self.set_down(reason);
                        if was_up && tx.send(FleetEvent::Lost).await.is_err() {
                            return;
                        }
                    } else {
                        delay = Duration::from_millis(50);
                    }
                }
            }
            tokio::select! {
                _ = shutdown.closing() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    /// One subscription, from connecting to losing it.
    async fn follow_once(
        &self,
        clients: &[redis::Client],
        tx: &mpsc::Sender<FleetEvent>,
    ) -> Result<(), String> {
        if self.inner.conn.load().is_none() {
            if let StoreUrl::Cluster { nodes, .. } = &self.inner.url {
                let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(1)
                    .build()
                    .map_err(|e| e.to_string())?;
                let conn = tokio::time::timeout(CONNECT_TIMEOUT * 3, client.get_async_connection())
                    .await
                    .map_err(|_| "connecting timed out".to_string())?
                    .map_err(|e| e.to_string())?;
                self.inner.conn.store(Some(Arc::new(Conn::Cluster(conn))));
            }
        }
        // Any node hears every PUBLISH of a Cluster; the first that answers is taken.
        let mut last = String::from("no node to subscribe to");
        let mut pubsub = None;
        for client in clients {
            match tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub()).await {
                Ok(Ok(p)) => {
                    pubsub = Some(p);
                    break;
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "connecting timed out".into(),
            }
        }
        let mut pubsub = pubsub.ok_or(last)?;
        pubsub
            .subscribe(keys::EVENTS)
            .await
            .map_err(|e| e.to_string())?;
        self.ping().await?;
        let mut messages = pubsub.into_on_message();
        let subscription = self.inner.subscription.fetch_add(1, Ordering::AcqRel) + 1;
        tx.send(FleetEvent::Connected(subscription))
            .await
            .map_err(|_| "the engine is gone".to_string())?;
        let mut tick = tokio::time::interval(PING_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(m) => {
                        if let Some(event) = self.decode(m.get_payload_bytes()) {
                            tx.send(event).await.map_err(|_| "the engine is gone".to_string())?;
                        }
                    }
                    None => return Err("the subscription to the fleet's events was lost".into()),
                },
                _ = tick.tick() => self.ping().await?,
            }
        }
    }

    async fn ping(&self) -> Result<(), String> {
        match self.query::<String>(&redis::cmd("PING")).await {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string().trim_start_matches("store: ").to_string()),
        }
    }

    fn decode(&self, message: &[u8]) -> Option<FleetEvent> {
        let (&kind, rest) = message.split_first()?;
        let origin = rest.get(..16)?;
        let body = &rest[16..];
        let own = origin == self.inner.origin;
        let job = || -> Option<JobName> {
            Some(JobName::from_stored(
                std::str::from_utf8(body).ok()?.to_owned(),
            ))
        };
        Some(match kind {
            b'C' | b'R' | b'I' | b'F' | b'U' => {
                let (key, epoch) = keys::parse_item(body)?;
                let kind = match kind {
                    b'C' => ItemChange::Changed,
                    b'R' => ItemChange::Removed,
                    b'I' => ItemChange::Invalidated,
                    b'F' => ItemChange::Failed,
                    _ => ItemChange::Released,
                };
                FleetEvent::Item {
                    kind,
                    key,
                    epoch,
                    own,
                }
            }
            b'J' => FleetEvent::JobChanged(job()?),
            b'D' => FleetEvent::JobDeleted(job()?),
            b'M' => FleetEvent::JobMarked(job()?),
            b'T' => FleetEvent::TagsMarked(
                std::str::from_utf8(body)
                    .ok()?
                    .split('\0')
                    .filter(|t| !t.is_empty())
                    .map(|t| Tag::from_stored(t.to_owned()))
                    .collect(),
            ),
            _ => return None,
        })
    }
}

/// The wall clock now, in ms since the epoch.
pub(crate) fn now_ms() -> u64 {
    ms(SystemTime::now())
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64
}

fn from_micros(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}
