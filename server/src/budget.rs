//! Memory budgets for what one call can make the daemon hold.
//!
//! [`ResponseBudget`]: a GetMany answers at most its response budget of data, and must not
//! read more than that into memory on the way (1,000 copies of one 4 MiB item once took
//! 4 GB for a 21 KB request). Items are planned in order before any is read: an item whose
//! stored size alone (known from memory, see `Store::data_len`) cannot fit behind the ones
//! before it is never read and fails alone. Items whose size is not known (misses to
//! fetch) and items that grew meanwhile must claim what they add from the slack left by the
//! plan as they complete; one that cannot drops its data at once and fails alone. The
//! exact encoded sizes are checked afterwards as before, so the response always fits.
//!
//! [`ByteBudget`]: a budget of bytes shared by every call, for memory that many calls
//! together could make the daemon hold: the bytes of workers' answers being received
//! (`intake`) and of responses not yet taken by their clients (`unsent`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The bytes a GetResult entry needs beyond its data, at least (field tags and lengths).
const ENTRY_FLOOR: usize = 3;

/// One GetMany's budget of response bytes.
#[derive(Debug)]
pub(crate) struct ResponseBudget {
    slack: AtomicI64,
}

/// Whether an item may be read, and what the plan counted for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Planned {
    /// Read it; the plan counted this many bytes for it.
    Read(usize),
    /// Its stored size alone is past the budget: fails without being read.
    TooLarge,
}

impl ResponseBudget {
    /// Plans the items of a response of at most `budget` bytes, keeping room for an error
    /// entry of `error_size` bytes for every item after each one; `known` is each item's
    /// stored data length, where it is known.
    pub(crate) fn plan(
        budget: usize,
        error_size: usize,
        known: &[Option<u64>],
    ) -> (Vec<Planned>, Self) {
        let count = known.len();
        let mut used = 0usize;
        let plan = known
            .iter()
            .enumerate()
            .map(|(i, len)| {
                let floor = len.map_or(0, |l| l as usize + ENTRY_FLOOR);
                let reserve = (count - i - 1) * error_size;
                if used + floor + reserve > budget {
                    used += error_size;
                    Planned::TooLarge
                } else {
                    used += floor;
                    Planned::Read(floor)
                }
            })
            .collect();
        let slack = budget.saturating_sub(used + count * error_size);
        (
            plan,
            ResponseBudget {
                slack: AtomicI64::new(slack as i64),
            },
        )
    }

    /// An item planned at `planned` bytes came back with `data_len` bytes of data: whether
    /// it may be kept (what it adds is taken from the slack).
    pub(crate) fn admit(&self, planned: usize, data_len: usize) -> bool {
        let extra = (data_len + ENTRY_FLOOR).saturating_sub(planned) as i64;
        if extra == 0 {
            return true;
        }
        if self.slack.fetch_sub(extra, Ordering::AcqRel) >= extra {
            return true;
        }
        self.slack.fetch_add(extra, Ordering::AcqRel);
        false
    }
}

/// A number of bytes shared by every call; a part is taken before the memory is used and
/// given back when the [`Held`] is dropped. Taking never waits: past the budget the caller
/// refuses its work (and the refusal is counted).
#[derive(Clone, Debug)]
pub(crate) struct ByteBudget {
    /// One permit per byte (a tokio semaphore: lock-free, and `Held` gives back on drop).
    bytes: Arc<Semaphore>,
    limit: usize,
    refused: Counter,
}

/// Bytes taken from a [`ByteBudget`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Held {
    permit: OwnedSemaphorePermit,
}

impl Held {
    /// How many bytes are held.
    pub(crate) fn len(&self) -> usize {
        self.permit.num_permits()
    }

    /// Moves `n` of the bytes held (at most all) into a `Held` of their own.
    pub(crate) fn split(&mut self, n: usize) -> Option<Held> {
        let permit = self.permit.split(n.min(self.len()))?;
        Some(Held { permit })
    }

    /// Holds `other`'s bytes too.
    fn merge(&mut self, other: Held) {
        self.permit.merge(other.permit);
    }
}

/// Bytes of responses handed to one connection and not yet written to its socket: they
/// stay taken from the budget until the connection writes as many bytes (or closes). The
/// bytes written count every frame on the connection, so this gives back a little early
/// (frame headers, other calls' bytes), never late.
#[derive(Debug, Default)]
pub(crate) struct WritePool {
    held: parking_lot::Mutex<Option<Held>>,
}

impl WritePool {
    /// `held` is handed to the connection.
    pub(crate) fn add(&self, held: Held) {
        let mut pool = self.held.lock();
        match pool.as_mut() {
            Some(h) => h.merge(held),
            None => *pool = Some(held),
        }
    }

    /// The connection wrote `n` bytes: as many are given back.
    pub(crate) fn written(&self, n: usize) {
        let mut pool = self.held.lock();
        let Some(h) = pool.as_mut() else { return };
        if n >= h.len() {
            *pool = None;
        } else {
            drop(h.split(n));
        }
    }
}

impl ByteBudget {
    /// A budget of `limit` bytes (at most `u32::MAX`, the most one message can declare, is
    /// taken at once).
    pub(crate) fn new(limit: u64) -> ByteBudget {
        let limit = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        ByteBudget {
            bytes: Arc::new(Semaphore::new(limit)),
            limit,
            refused: Counter::default(),
        }
    }

    /// Takes `n` bytes, or (counted as a refusal) nothing when fewer are left.
    pub(crate) fn take(&self, n: usize) -> Option<Held> {
        let taken = u32::try_from(n)
            .ok()
            .and_then(|n| self.bytes.clone().try_acquire_many_owned(n).ok());
        match taken {
            Some(permit) => Some(Held { permit }),
            None => {
                self.refused.inc();
                None
            }
        }
    }

    /// The budget, in bytes.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes taken now.
    pub(crate) fn in_use(&self) -> usize {
        self.limit - self.bytes.available_permits()
    }

    /// How many times `take` found too few bytes left.
    #[cfg(test)]
    pub(crate) fn refusals(&self) -> &Counter {
        &self.refused
    }

    /// Adds the budget to `registry`: `{name}_bytes` (a gauge of the bytes held now, read
    /// at each scrape) and `refused` (a counter of the refusals).
    pub(crate) fn register_metrics(
        &self,
        registry: &mut prometheus_client::registry::Registry,
        name: &'static str,
        help: &'static str,
        refused: (&'static str, &'static str),
    ) {
        registry.register_collector(Box::new(InUse {
            budget: self.clone(),
            name,
            help,
        }));
        registry.register(refused.0, refused.1, self.refused.clone());
    }
}

/// The gauge of a budget's bytes held, read at scrape time.
#[derive(Debug)]
struct InUse {
    budget: ByteBudget,
    name: &'static str,
    help: &'static str,
}

impl prometheus_client::collector::Collector for InUse {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let gauge = prometheus_client::metrics::gauge::ConstGauge::new(self.budget.in_use() as i64);
        gauge.encode(encoder.encode_descriptor(
            self.name,
            self.help,
            Some(&prometheus_client::registry::Unit::Bytes),
            gauge.metric_type(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_items_past_the_budget_are_not_read() {
        let (plan, _) = ResponseBudget::plan(100, 5, &[Some(40), Some(40), Some(40), None]);
        assert_eq!(
            plan,
            vec![
                Planned::Read(43),
                Planned::Read(43),
                Planned::TooLarge,
                Planned::Read(0)
            ]
        );
    }

    #[test]
    fn unknown_items_claim_the_slack_as_they_come() {
        let (plan, budget) = ResponseBudget::plan(1000, 10, &[None, None, Some(100)]);
        assert_eq!(plan[2], Planned::Read(103));
        // 1000 - 103 - 3 * 10 = 867 bytes of slack.
        assert!(budget.admit(0, 500));
        assert!(!budget.admit(0, 500));
        assert!(budget.admit(103, 100));
        assert!(budget.admit(0, 300));
    }

    #[test]
    fn a_byte_budget_refuses_past_its_limit_and_gets_back_what_is_dropped() {
        let budget = ByteBudget::new(100);
        let a = budget.take(60).expect("fits");
        assert!(budget.take(41).is_none());
        assert_eq!(budget.refusals().get(), 1);
        let b = budget.take(40).expect("fits exactly");
        assert_eq!(budget.in_use(), 100);
        drop(a);
        drop(b);
        assert_eq!(budget.in_use(), 0);
        assert!(budget.take(101).is_none());
    }

    #[test]
    fn a_write_pool_gives_back_what_is_written() {
        let budget = ByteBudget::new(100);
        let mut held = budget.take(80).unwrap();
        let pool = WritePool::default();
        pool.add(held.split(30).unwrap());
        pool.add(held.split(20).unwrap());
        assert_eq!(held.len(), 30);
        drop(held);
        assert_eq!(budget.in_use(), 50);
        pool.written(45);
        assert_eq!(budget.in_use(), 5);
        pool.written(1000);
        assert_eq!(budget.in_use(), 0);
    }
}
