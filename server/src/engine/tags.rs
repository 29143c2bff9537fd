//! Tags (`InvalidateTags`): one durable mark per tag, applied as items are read, the way a
//! job's mark is (`jobs`), so that invalidating a tag on a million items writes one record
//! and fetches nothing; each item refreshes on its next Get.

use std::time::{Duration, SystemTime};

use super::jobs::JobEntry;
use super::Engine;
use crate::error::Error;
use crate::model::Tag;
use crate::policy;
use crate::store::Item;
use crate::subscriptions::EventKind;

impl Engine {
    /// Marks every item, of any job, that carries one of `tags` and was stored until now
    /// stale, touching none of them. Fetches in flight for an item with one of the tags
    /// may have read old data: each is followed by one more refresh. Returns the mark.
    pub(crate) async fn invalidate_tags(&self, tags: &[Tag]) -> Result<SystemTime, Error> {
        if let Some(fleet) = &self.inner.fleet {
            return self.fleet_invalidate_tags(fleet, tags).await;
        }
        let mark = policy::times_for_new(self.now(), Duration::ZERO).stored_at;
        {
            let mut tables = self.lock_all();
            self.inner.store.put_tag_marks(tags, mark)?;
            {
                let mut marks = self.inner.tag_marks.write();
                for tag in tags {
                    let at = marks.entry(tag.clone()).or_insert(mark);
                    *at = (*at).max(mark);
                }
            }
            // The near caches holding a tagged item hear of it (the store is read outside
            // the registry's lock: the store's own locks come before it).
            for key in self.inner.subscriptions.subscribed_items() {
                let tagged = self.inner.store.get(&key)?;
                if tagged.is_some_and(|i| i.tags.iter().any(|t| tags.contains(t))) {
                    self.inner
                        .subscriptions
                        .emit(&key, EventKind::Invalidated, mark);
                }
            }
            for (key, flight) in tables.iter_mut().flat_map(|t| t.flights.iter_mut()) {
                let tagged = self.inner.store.get(key)?;
                if tagged.is_some_and(|i| i.tags.iter().any(|t| tags.contains(t))) {
                    flight.reinvalidate = true;
                }
            }
        }
        self.flush().await?;
        self.inner.metrics.count_tag_invalidations(tags.len());
        Ok(mark)
    }

    /// An item as a Get sees it: the marks of its job and of its tags applied. An item
    /// without tags costs no lock.
    pub(super) fn seen(&self, entry: &JobEntry, item: Option<Item>) -> Option<Item> {
        item.map(|mut i| {
            i.times = policy::after_job_invalidation(i.times, entry.invalidated_before);
            if !i.tags.is_empty() {
                let marks = self.inner.tag_marks.read();
                let of_tags = i.tags.iter().filter_map(|t| marks.get(t).copied());
                i.times = policy::after_marks(i.times, of_tags);
            }
            i
        })
    }
}
