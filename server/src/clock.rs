//! Wall-clock time for what is persisted (an item's `stored_at`, `expires_at`, a job's
//! invalidation mark), behind one handle so that the engine's tests can drive it. Timers
//! (deadlines, backoff) use `tokio::time::Instant` directly, which tokio's paused test time
//! already controls; [`Clock::following_tokio`] ties the wall clock to that same paused
//! time, so one `tokio::time::advance` moves both, as moka's injectable `Clock` does for
//! its expiry tests.

use std::time::SystemTime;

#[cfg(test)]
use tokio::time::Instant;

/// Where the engine reads the wall time. Cheap to copy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock(Source);

#[derive(Debug, Clone, Copy)]
enum Source {
    System,
    /// `wall` at tokio's `at`, moving as tokio's clock moves.
    #[cfg(test)]
    Tokio {
        wall: SystemTime,
        at: Instant,
    },
}

impl Clock {
    /// The system's wall clock: what the daemon uses.
    pub(crate) fn system() -> Clock {
        Clock(Source::System)
    }

    #[cfg(test)]
    /// A wall clock that starts now and then moves only as tokio's clock does: with
    /// `start_paused` time, only as the test advances it.
    pub(crate) fn following_tokio() -> Clock {
        Clock(Source::Tokio {
            wall: SystemTime::now(),
            at: Instant::now(),
        })
    }

    /// The wall time now.
    pub(crate) fn now(&self) -> SystemTime {
        match self.0 {
            Source::System => SystemTime::now(),
            #[cfg(test)]
            Source::Tokio { wall, at } => wall + at.elapsed(),
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}
