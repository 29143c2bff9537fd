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

use std::sync::atomic::{AtomicI64, Ordering};

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
}
