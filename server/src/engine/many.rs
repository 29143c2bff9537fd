//! GetMany's first pass: every item that is a fresh hit starting nothing (what most
//! items of a GetMany are) is answered in one synchronous pass, under one read lock of the
//! jobs and one read of the store for all of them, instead of as a Get of its own (a
//! future, a job lookup, a store read and a lock of the recency order each). Whatever
//! else an item needs — a fetch, a refresh, a stale answer — is left to [`Engine::get`],
//! which decides it again from the start. In fleet mode every item goes there.

use super::{served, Engine, GetOptions, GetOutcome};
use crate::model::{ItemKey, ItemState, JobName};
use crate::policy::{self, GetContext, GetPlan, Refresh};

/// One item of a GetMany that the first pass may answer.
pub(crate) struct HitCandidate<'a> {
    /// Its job (checked: the caller may read it).
    pub job: &'a JobName,
    /// Its key in the store.
    pub key: &'a ItemKey,
    /// What the request asks besides the item.
    pub options: GetOptions,
}

impl Engine {
    /// The outcome of every candidate that is a fresh hit starting nothing, counted as
    /// [`Engine::get`] counts it; `None` for every other (unknown job, store error, miss,
    /// stale, a refresh to start): those go through [`Engine::get`].
    pub(crate) fn get_fresh_many(&self, items: &[HitCandidate<'_>]) -> Vec<Option<GetOutcome>> {
        if self.inner.fleet.is_some() {
            // A fleet's items are in Redis, read by the fleet path of `Engine::get`.
            return items.iter().map(|_| None).collect();
        }
        let jobs = self.inner.jobs.read();
        let keys: Vec<&ItemKey> = items.iter().map(|c| c.key).collect();
        let stored = self.inner.store.get_many(&keys);
        let now = self.now();
        let mut last: Option<(&JobName, &super::JobEntry)> = None;
        items
            .iter()
            .zip(stored)
            .map(|(c, item)| {
                let entry = match last {
                    Some((job, entry)) if job == c.job => entry,
                    _ => {
                        let entry = jobs.get(c.job)?;
                        last = Some((c.job, entry));
                        entry
                    }
                };
                let item = self.seen(entry, item.ok()?)?;
                let u = match entry.config.early_refresh_beta {
                    Some(_) => 1.0 - rand::random::<f64>(),
                    None => 1.0,
                };
                let request = GetContext {
                    fetch_on_miss_override: c.options.fetch_on_miss,
                    max_age: c.options.max_age,
                    ..GetContext::default()
                };
                let plan =
                    policy::plan_get(Some(super::seen(&item)), &entry.config, request, now, u);
                if plan != GetPlan::ServeFresh(Refresh::None) {
                    return None;
                }
                entry.metrics.gets_fresh.inc();
                if item.absent {
                    entry.metrics.gets_absent.inc();
                }
                Some(served(ItemState::Fresh, Some(item), false))
            })
            .collect()
    }
}
