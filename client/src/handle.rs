//! `client.job(&job)`: reading and writing one job's items, as cacheback's `Job`
//! methods do.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cachebackd_proto::v1;

use crate::near::{self, NearItem};
use crate::{
    encode_args,
    time::{from_proto_timestamp, to_proto_duration},
    Client, Error, Job, Result,
};

/// Whether the data of an [`Item`] is fresh, stale or absent.
///
/// ```
/// assert_ne!(cacheback::ItemState::Fresh, cacheback::ItemState::Stale);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemState {
    /// Within its lifetime.
    Fresh,
    /// Past its lifetime: served while a refresh runs.
    Stale,
    /// Not cached (a miss that did not wait for a fetch).
    Miss,
}

/// An item as the daemon returned it: the data and its cache metadata.
///
/// ```no_run
/// # use cacheback::{Job, ItemState};
/// # struct UserTweets;
/// # impl Job for UserTweets {
/// #     type Args = String; type Output = Vec<String>; type Error = std::convert::Infallible;
/// #     const NAME: &'static str = "tweets";
/// #     async fn fetch(&self, _: String) -> Result<Vec<String>, Self::Error> { Ok(vec![]) }
/// # }
/// # async fn demo(client: cacheback::Client) -> Result<(), cacheback::Error> {
/// let item = client.job(&UserTweets).get_item(&"bob".to_string()).await?;
/// if item.state == ItemState::Stale {
///     println!("serving tweets fetched at {:?}; a refresh is running", item.stored_at);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Item<T> {
    /// Fresh, stale or miss.
    pub state: ItemState,
    /// The data; `None` on a miss and for an absence.
    pub data: Option<T>,
    /// The origin said there is no such data ([`Fetched::Absent`](crate::Fetched)): a
    /// cached "nothing", fresh or stale like any item; `data` is `None`.
    pub absent: bool,
    /// The item's tags.
    pub tags: Vec<String>,
    /// When the data was fetched or set; `None` on a miss.
    pub stored_at: Option<SystemTime>,
    /// When the data stops (or stopped) being fresh; `None` on a miss.
    pub expires_at: Option<SystemTime>,
    /// An asynchronous fetch of this item was started by this read or is in flight.
    pub refresh_scheduled: bool,
    /// This read waited for a synchronous fetch (its own or one it joined).
    pub fetched: bool,
}

/// What an [`invalidate`](JobHandle::invalidate) found and did.
///
/// ```
/// let outcome = cacheback::Invalidated { found: false, refresh_scheduled: false };
/// assert!(!outcome.found);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalidated {
    /// The item existed (and is now stale).
    pub found: bool,
    /// A refresh of it is scheduled or in flight.
    pub refresh_scheduled: bool,
}

/// How a [`JobHandle::get_item_with`] reads, beyond a plain get.
///
/// ```
/// use std::time::Duration;
/// let at_most_a_minute_old = cacheback::Read { max_age: Some(Duration::from_secs(60)), ..Default::default() };
/// let raw_get = cacheback::Read { peek: true, ..Default::default() };
/// assert!(at_most_a_minute_old.max_age.is_some() && raw_get.peek);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Read {
    /// The caller accepts data at most this old (since it was fetched or set): an older
    /// item, fresh or stale, is fetched synchronously, and answered anyway if that fetch
    /// fails. With the job's `fetch_on_stale_threshold`, the smaller bound wins.
    pub max_age: Option<Duration>,
    /// Read what is stored and start nothing: no fetch, no refresh (django-cacheback's
    /// `raw_get`). A miss is answered as a miss; `max_age` is ignored.
    pub peek: bool,
}

/// One job's items on one daemon, made by [`Client::job`]. Cheap: make one per call.
///
/// ```no_run
/// # use cacheback::Job;
/// # struct UserTweets;
/// # impl Job for UserTweets {
/// #     type Args = String; type Output = Vec<String>; type Error = std::convert::Infallible;
/// #     const NAME: &'static str = "tweets";
/// #     async fn fetch(&self, _: String) -> Result<Vec<String>, Self::Error> { Ok(vec![]) }
/// # }
/// # async fn demo(client: cacheback::Client) -> Result<(), cacheback::Error> {
/// let tweets = client.job(&UserTweets);
/// let bob = "bob".to_string();
/// tweets.get(&bob).await?;        // cached, or fetched on a miss
/// tweets.invalidate(&bob).await?; // stale now: served while it refreshes
/// tweets.delete(&bob).await?;     // gone: the next get fetches
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct JobHandle<'j, J> {
    client: Client,
    job: &'j J,
}

impl<'j, J: Job> JobHandle<'j, J> {
    pub(crate) fn new(client: Client, job: &'j J) -> Self {
        JobHandle { client, job }
    }

    /// The cached data for `args` (cacheback's `job.get`): fresh or stale data at once
    /// (a stale hit schedules a refresh), and on a miss either the data of a synchronous
    /// fetch or `None` when the job does not fetch on a miss — the fetch then fills the
    /// item in the background.
    ///
    /// Whether a miss waits is [`Job::should_missing_item_be_fetched_synchronously`],
    /// decided here and sent with the read.
    ///
    /// ```no_run
    /// # use cacheback::Job;
    /// # struct UserTweets;
    /// # impl Job for UserTweets {
    /// #     type Args = String; type Output = Vec<String>; type Error = std::convert::Infallible;
    /// #     const NAME: &'static str = "tweets";
    /// #     async fn fetch(&self, _: String) -> Result<Vec<String>, Self::Error> { Ok(vec![]) }
    /// # }
    /// # async fn demo(client: cacheback::Client) -> Result<(), cacheback::Error> {
    /// match client.job(&UserTweets).get(&"bob".to_string()).await? {
    ///     Some(tweets) => println!("{} tweets", tweets.len()),
    ///     None => println!("not cached yet: try again in a moment"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, args: &J::Args) -> Result<Option<J::Output>> {
        Ok(self.get_item(args).await?.data)
    }

    /// Like [`get`](Self::get), with the item's state and times.
    ///
    /// ```no_run
    /// # use cacheback::Job;
    /// # struct UserTweets;
    /// # impl Job for UserTweets {
    /// #     type Args = String; type Output = Vec<String>; type Error = std::convert::Infallible;
    /// #     const NAME: &'static str = "tweets";
    /// #     async fn fetch(&self, _: String) -> Result<Vec<String>, Self::Error> { Ok(vec![]) }
    /// # }
    /// # async fn demo(client: cacheback::Client) -> Result<(), cacheback::Error> {
    /// let item = client.job(&UserTweets).get_item(&"bob".to_string()).await?;
    /// println!("{:?}, fresh until {:?}", item.state, item.expires_at);
    /// # Ok(()) }
    /// ```
    pub async fn get_item(&self, args: &J::Args) -> Result<Item<J::Output>> {
        self.get_item_with(args, Read::default()).await
    }

    /// [`get`](Self::get) of data at most `max_age` old: an older item is fetched
    /// synchronously (and answered anyway if that fetch fails).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use cacheback::Job;
    /// # struct Balance;
    /// # impl Job for Balance {
    /// #     type Args = u64; type Output = i64; type Error = std::convert::Infallible;
    /// #     const NAME: &'static str = "balance";
    /// #     async fn fetch(&self, _: u64) -> Result<i64, Self::Error> { Ok(0) }
    /// # }
    /// # async fn demo(client: cacheback::Client) -> Result<(), cacheback::Error> {
    /// // The checkout page wants a balance no older than 5 s; the dashboard takes any.
    /// let balance = client.job(&Balance).get_max_age(&7, Duration::from_secs(5)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_max_age(
        &self,
        args: &J::Args,
        max_age: Duration,
    ) -> Result<Option<J::Output>> {
        let read = Read {
            max_age: Some(max_age),
            peek: false,
        };
        Ok(self.get_item_with(args, read).await?.data)
    }

    /// What is stored for `args`, starting nothing (django-cacheback's `raw_get`): no
    /// fetch on a miss, no refresh of a stale item.
    ///
    /// ```no_run
    /// # use cacheback::{Job, ItemState};
    /// # struct UserTweets;
    /// # impl Job for UserTweets {
    /// #     type Args = String; type Output = Vec<String>; type Error = std::convert::Infallible;
    /// #     const NAME: &'static str = "tweets";
    /// #     async fn fetch(&self, _: String) -> Result<Vec<String>, Self::Error> { Ok(vec![]) }
    /// # }
    /// # async fn demo(client: cacheback::Client) -> Result<(), cacheback::Error> {
    /// let item = client.job(&UserTweets).peek(&"bob".to_string()).await?;
    /// assert!(!item.fetched && !item.refresh_scheduled);
    /// # Ok(()) }
    /// ```
    pub async fn peek(&self, args: &J::Args) -> Result<Item<J::Output>> {
        let read = Read {
            max_age: None,
            peek: true,
        };
        self.get_item_with(args, read).await
    }

    /// [`get_item`](Self::get_item) as `read` says (`max_age`, `peek`).
    pub async fn get_item_with(&self, args: &J::Args, read: Read) -> Result<Item<J::Output>> {
        let mut request = self.get_request(args)?;
        request.max_age = read.max_age.map(to_proto_duration);
        request.peek = read.peek;
        let near = self.client.near().filter(|_| read == Read::default());
        let Some(near) = near else {
            return self.item_from(self.get_remote(request).await?);
        };
        let key = near::key(self.name(), &request.args);
        if let Some(hit) = near.lookup(&key) {
            return self.item_from_near(hit);
        }
        let ticket = near.begin(key);
        let response = self.get_remote(request).await;
        if let Some(ticket) = ticket {
            let fresh = response.as_ref().ok().and_then(near_item);
            near.finish(ticket, fresh);
        }
        self.item_from(response?)
    }

    async fn get_remote(&self, request: v1::GetRequest) -> Result<v1::GetResponse> {
        self.client
            .unary("Get", self.name(), request, |mut raw, r| async move {
                raw.get(r).await
            })
            .await
    }

    fn item_from_near(&self, hit: NearItem) -> Result<Item<J::Output>> {
        let mut response = (*hit.response).clone();
        response.refresh_scheduled = false;
        response.fetched = false;
        self.item_from(response)
    }

    /// Before a write of this client: its near-cached copy of the item goes.
    fn forget_near(&self, args: &[u8]) {
        if let Some(near) = self.client.near() {
            near.forget(&near::key(self.name(), args));
        }
    }

    /// Many [`get`](Self::get)s in one call (the daemon's `GetMany`): one result per
    /// args, in order, each exactly what its own `get` would have returned. For pages
    /// that read many items at once, where one call per item would cost more than the
    /// cache work.
    ///
    /// ```no_run
    /// # use cacheback::Job;
    /// # struct UserTweets;
    /// # impl Job for UserTweets {
    /// #     type Args = String; type Output = Vec<String>; type Error = std::convert::Infallible;
    /// #     const NAME: &'static str = "tweets";
    /// #     async fn fetch(&self, _: String) -> Result<Vec<String>, Self::Error> { Ok(vec![]) }
    /// # }
    /// # async fn demo(client: cacheback::Client) -> Result<(), cacheback::Error> {
    /// let users = ["bob".to_string(), "alice".to_string()];
    /// for (user, tweets) in users.iter().zip(client.job(&UserTweets).get_many(&users).await?) {
    ///     println!("{user}: {:?}", tweets?);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get_many(&self, args: &[J::Args]) -> Result<Vec<Result<Option<J::Output>>>> {
        let items = self.get_many_items(args).await?;
        Ok(items.into_iter().map(|i| i.map(|i| i.data)).collect())
    }

    /// Like [`get_many`](Self::get_many), with each item's state and times.
    pub async fn get_many_items(&self, args: &[J::Args]) -> Result<Vec<Result<Item<J::Output>>>> {
        let mut items = Vec::with_capacity(args.len());
        // The daemon takes at most 1,000 Gets a call.
        for chunk in args.chunks(cachebackd_proto::wire::MAX_GET_MANY) {
            let requests = chunk
                .iter()
                .map(|a| self.get_request(a))
                .collect::<Result<Vec<_>>>()?;
            let request = v1::GetManyRequest { requests };
            let response = self
                .client
                .unary("GetMany", self.name(), request, |mut raw, r| async move {
                    raw.get_many(r).await
                })
                .await?;
            if response.results.len() != chunk.len() {
                return Err(Error::Protocol(format!(
                    "GetMany of job {:?} answered {} results for {} requests",
                    self.name(),
                    response.results.len(),
                    chunk.len()
                )));
            }
            items.extend(response.results.into_iter().map(|r| match r.outcome {
                Some(v1::get_result::Outcome::Response(response)) => self.item_from(response),
                Some(v1::get_result::Outcome::Error(e)) => Err(Error::status_of(
                    "GetMany",
                    self.name(),
                    tonic::Status::new(tonic::Code::from_i32(e.code), e.message),
                )),
                None => Err(Error::Protocol(format!(
                    "GetMany of job {:?} answered an empty result",
                    self.name()
                ))),
            }));
        }
        Ok(items)
    }

    fn get_request(&self, args: &J::Args) -> Result<v1::GetRequest> {
        Ok(v1::GetRequest {
            job: self.name().to_owned(),
            args: self.encode(args)?,
            fetch_on_miss: Some(self.job.should_missing_item_be_fetched_synchronously(args)),
            ..Default::default()
        })
    }

    fn item_from(&self, response: v1::GetResponse) -> Result<Item<J::Output>> {
        let state = match response.state() {
            v1::ItemState::Fresh => ItemState::Fresh,
            v1::ItemState::Stale => ItemState::Stale,
            v1::ItemState::Miss => ItemState::Miss,
            v1::ItemState::Unspecified => {
                return Err(Error::Protocol(format!(
                    "Get of job {:?} answered ITEM_STATE_UNSPECIFIED",
                    self.name()
                )))
            }
        };
        let data = match state {
            ItemState::Miss => None,
            ItemState::Fresh | ItemState::Stale if response.absent => None,
            ItemState::Fresh | ItemState::Stale => {
                Some(serde_json::from_slice(&response.data).map_err(|source| {
                    Error::DecodeData {
                        job: self.name().to_owned(),
                        source,
                    }
                })?)
            }
        };
        Ok(Item {
            state,
            data,
            stored_at: response.stored_at.and_then(from_proto_timestamp),
            expires_at: response.expires_at.and_then(from_proto_timestamp),
            refresh_scheduled: response.refresh_scheduled,
            fetched: response.fetched,
            absent: response.absent,
            tags: response.tags,
        })
    }

    /// Stores `data` for `args` directly (cacheback's `job.set`), fresh for
    /// [`Job::expiry`] of `args` or else the job's lifetime, with the [`Job::tags`] of
    /// `args`. Returns when it expires.
    /// A fetch of the item in flight is not stored when it lands: this write wins.
    ///
    /// ```no_run
    /// # use cacheback::Job;
    /// # struct UserTweets;
    /// # impl Job for UserTweets {
    /// #     type Args = String; type Output = Vec<String>; type Error = std::convert::Infallible;
    /// #     const NAME: &'static str = "tweets";
    /// #     async fn fetch(&self, _: String) -> Result<Vec<String>, Self::Error> { Ok(vec![]) }
    /// # }
    /// # async fn demo(client: cacheback::Client) -> Result<(), cacheback::Error> {
    /// // Bob just tweeted: put the new timeline in place instead of waiting for a refresh.
    /// let timeline = vec!["hello".to_string()];
    /// client.job(&UserTweets).set(&"bob".to_string(), &timeline).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set(&self, args: &J::Args, data: &J::Output) -> Result<SystemTime> {
        self.set_inner(args, data, self.job.expiry(args)).await
    }

    /// Like [`set`](Self::set), fresh for `lifetime`.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use cacheback::Job;
    /// # struct UserTweets;
    /// # impl Job for UserTweets {
    /// #     type Args = String; type Output = Vec<String>; type Error = std::convert::Infallible;
    /// #     const NAME: &'static str = "tweets";
    /// #     async fn fetch(&self, _: String) -> Result<Vec<String>, Self::Error> { Ok(vec![]) }
    /// # }
    /// # async fn demo(client: cacheback::Client) -> Result<(), cacheback::Error> {
    /// let bob = "bob".to_string();
    /// client.job(&UserTweets).set_with_lifetime(&bob, &vec![], Duration::from_secs(10)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_with_lifetime(
        &self,
        args: &J::Args,
        data: &J::Output,
        lifetime: Duration,
    ) -> Result<SystemTime> {
        self.set_inner(args, data, Some(lifetime)).await
    }

    async fn set_inner(
        &self,
        args: &J::Args,
        data: &J::Output,
        lifetime: Option<Duration>,
    ) -> Result<SystemTime> {
        let request = v1::SetRequest {
            job: self.name().to_owned(),
            args: self.encode(args)?,
            data: serde_json::to_vec(data).map_err(|source| Error::EncodeData {
                job: self.name().to_owned(),
                source,
            })?,
            lifetime: lifetime.map(to_proto_duration),
            tags: self.job.tags(args),
        };
        self.forget_near(&request.args);
        let response = self
            .client
            .unary("Set", self.name(), request, |mut raw, r| async move {
                raw.set(r).await
            })
            .await?;
        response
            .expires_at
            .and_then(from_proto_timestamp)
            .ok_or_else(|| Error::Protocol("Set answered without expires_at".to_owned()))
    }

    /// Marks the item stale now and schedules a refresh (cacheback's `job.invalidate`):
    /// readers keep getting the stale data until the refresh lands. Does nothing to an
    /// absent item.
    ///
    /// ```no_run
    /// # use cacheback::Job;
    /// # struct UserTweets;
    /// # impl Job for UserTweets {
    /// #     type Args = String; type Output = Vec<String>; type Error = std::convert::Infallible;
    /// #     const NAME: &'static str = "tweets";
    /// #     async fn fetch(&self, _: String) -> Result<Vec<String>, Self::Error> { Ok(vec![]) }
    /// # }
    /// # async fn demo(client: cacheback::Client) -> Result<(), cacheback::Error> {
    /// let outcome = client.job(&UserTweets).invalidate(&"bob".to_string()).await?;
    /// assert_eq!(outcome.found, outcome.refresh_scheduled);
    /// # Ok(()) }
    /// ```
    pub async fn invalidate(&self, args: &J::Args) -> Result<Invalidated> {
        let request = v1::InvalidateRequest {
            job: self.name().to_owned(),
            args: self.encode(args)?,
        };
        self.forget_near(&request.args);
        let response = self
            .client
            .unary(
                "Invalidate",
                self.name(),
                request,
                |mut raw, r| async move { raw.invalidate(r).await },
            )
            .await?;
        Ok(Invalidated {
            found: response.found,
            refresh_scheduled: response.refresh_scheduled,
        })
    }

    /// Removes the item (cacheback's `job.delete`): the next read is a miss. Returns
    /// whether there was one.
    ///
    /// ```no_run
    /// # use cacheback::Job;
    /// # struct UserTweets;
    /// # impl Job for UserTweets {
    /// #     type Args = String; type Output = Vec<String>; type Error = std::convert::Infallible;
    /// #     const NAME: &'static str = "tweets";
    /// #     async fn fetch(&self, _: String) -> Result<Vec<String>, Self::Error> { Ok(vec![]) }
    /// # }
    /// # async fn demo(client: cacheback::Client) -> Result<(), cacheback::Error> {
    /// let found = client.job(&UserTweets).delete(&"bob".to_string()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, args: &J::Args) -> Result<bool> {
        let request = v1::DeleteRequest {
            job: self.name().to_owned(),
            args: self.encode(args)?,
        };
        self.forget_near(&request.args);
        let response = self
            .client
            .unary("Delete", self.name(), request, |mut raw, r| async move {
                raw.delete(r).await
            })
            .await?;
        Ok(response.found)
    }

    fn name(&self) -> &str {
        self.job.name()
    }

    fn encode(&self, args: &J::Args) -> Result<Vec<u8>> {
        encode_args(args).map_err(|source| Error::EncodeArgs {
            job: self.name().to_owned(),
            source,
        })
    }
}

/// What the near cache may keep of a Get's answer: FRESH data with an expiry.
fn near_item(response: &v1::GetResponse) -> Option<NearItem> {
    if response.state() != v1::ItemState::Fresh {
        return None;
    }
    Some(NearItem {
        response: Arc::new(response.clone()),
        stored_at: response.stored_at.and_then(from_proto_timestamp),
        expires_at: response.expires_at.and_then(from_proto_timestamp)?,
    })
}
