//! What the rest of the daemon sees of the store in fleet mode, through the `Store` trait:
//! health, metrics, admin and shutdown ask it what they ask sled. Items, jobs and marks go
//! through the engine's fleet path instead (async, to Redis); a synchronous item call here
//! is a bug, and answers an internal error rather than a wrong answer.

use std::time::SystemTime;

use super::Fleet;
use crate::error::Error;
use crate::model::{ItemKey, JobConfig, JobName, Tag};
use crate::store::{Item, Store, Usage};

/// The `Store` face of a fleet.
pub(crate) struct FleetShim(pub(crate) Fleet);

fn not_here() -> Error {
    Error::Internal("a synchronous store call in fleet mode (a bug: items go to Redis)".into())
}

impl Store for FleetShim {
    fn get(&self, _key: &ItemKey) -> Result<Option<Item>, Error> {
        Err(not_here())
    }
    fn put(&self, _key: &ItemKey, _item: &Item) -> Result<(), Error> {
        Err(not_here())
    }
    fn remove(&self, _key: &ItemKey) -> Result<bool, Error> {
        Err(not_here())
    }
    fn put_job(&self, _job: &JobName, _config: &JobConfig) -> Result<(), Error> {
        Err(not_here())
    }
    /// Jobs come from Redis once it is reachable (the engine reads them then).
    fn jobs(&self) -> Result<Vec<(JobName, JobConfig)>, Error> {
        Ok(Vec::new())
    }
    /// Redis expires items at their cache_ttl by itself.
    fn sweep(
        &self,
        _config_of: &dyn Fn(&str) -> Option<JobConfig>,
        _now: SystemTime,
    ) -> Result<usize, Error> {
        Ok(0)
    }
    /// Redis acknowledges a write once it holds it; its own persistence is its operator's.
    fn flush(&self) -> Result<(), Error> {
        Ok(())
    }
    fn corrupt_records(&self) -> u64 {
        0
    }
    fn put_invalidated_before(&self, _job: &JobName, _at: SystemTime) -> Result<(), Error> {
        Err(not_here())
    }
    fn invalidated_before(&self) -> Result<Vec<(JobName, SystemTime)>, Error> {
        Ok(Vec::new())
    }
    fn remove_job(&self, _job: &JobName) -> Result<u64, Error> {
        Err(not_here())
    }
    /// Not counted in fleet mode (Redis' INFO tells memory; docs/FLEET.md).
    fn usage(&self, _job: &JobName) -> Result<Usage, Error> {
        Ok(Usage::default())
    }
    fn close(&self) -> Result<(), Error> {
        Ok(())
    }
    fn size_on_disk(&self) -> Result<u64, Error> {
        Ok(0)
    }
    /// Health follows Redis: NOT_SERVING while it cannot be reached.
    fn writable(&self) -> Result<(), Error> {
        self.0.check_up()
    }
    fn put_tag_marks(&self, _tags: &[Tag], _at: SystemTime) -> Result<(), Error> {
        Err(not_here())
    }
    fn tag_marks(&self) -> Result<Vec<(Tag, SystemTime)>, Error> {
        Ok(Vec::new())
    }
}
