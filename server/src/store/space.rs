//! The space guard: writes are refused while the disk holding the store has less than
//! [`RESERVE`] free, before sled ever meets ENOSPC.
//!
//! Why before: sled 0.34 records the first I/O error of its background flusher as a global
//! error and fails every later write with it until the store is reopened, so a disk that
//! filled up once would refuse writes until a restart even after space came back. Refusing
//! at the door keeps sled out of that state; the refusal ends by itself as soon as space
//! is freed (each check reads the file system's free space anew, at most every
//! [`CHECK_EVERY`]). Reads and removals are never refused. Should sled meet an I/O error
//! anyway, that is remembered (`failed`) and reported, since only a restart clears it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::Error;

/// Free space kept back on the store's file system: room for what sled buffers between
/// flushes and for its segment bookkeeping.
pub(crate) const RESERVE: u64 = 64 * 1024 * 1024;
/// How often free space is read: a write costs one atomic load in between.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Whether the store may take writes now.
pub(super) struct SpaceGuard {
    dir: PathBuf,
    epoch: Instant,
    /// When the next check is due, in nanoseconds since `epoch`.
    next_check: AtomicU64,
    refusing: AtomicBool,
    /// Why writes are refused, while they are.
    why: Mutex<String>,
    /// sled met an I/O error while writing: it refuses writes until a restart.
    failed: Mutex<Option<String>>,
}

impl SpaceGuard {
    /// A guard of the file system that holds `dir`.
    pub(super) fn new(dir: PathBuf) -> SpaceGuard {
        let guard = SpaceGuard {
            dir,
            epoch: Instant::now(),
            next_check: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            why: Mutex::new(String::new()),
            failed: Mutex::new(None),
        };
        guard.check_now();
        guard
    }

    /// `Ok` if a write may go ahead; the refusal (RESOURCE_EXHAUSTED) otherwise.
    pub(super) fn admit(&self) -> Result<(), Error> {
        let now = self.epoch.elapsed().as_nanos() as u64;
        if now >= self.next_check.load(Ordering::Relaxed) {
            self.check_now();
        }
        if let Some(why) = self.failed.lock().as_ref() {
            return Err(Error::Store(why.clone()));
        }
        if self.refusing.load(Ordering::Relaxed) {
            return Err(Error::StoreFull(self.why.lock().clone()));
        }
        Ok(())
    }

    /// Remembers a write that sled failed: want of space is reported as such; any I/O
    /// error leaves sled refusing writes until a restart.
    pub(super) fn note_failure(&self, e: &Error) {
        if matches!(e, Error::Store(_) | Error::StoreFull(_)) {
            let mut failed = self.failed.lock();
            if failed.is_none() {
                tracing::error!(error = %e, "the store failed a write; it takes no more writes until cachebackd is restarted");
                *failed = Some(format!(
                    "{}; the store takes no writes until cachebackd is restarted",
                    e.to_string().trim_start_matches("store: ")
                ));
            }
        }
    }

    fn check_now(&self) {
        let due = self.epoch.elapsed() + CHECK_EVERY;
        self.next_check
            .store(due.as_nanos() as u64, Ordering::Relaxed);
        let free = fs2::available_space(&self.dir);
        let refusing = match &free {
            Ok(free) if *free < RESERVE => {
                *self.why.lock() = format!(
                    "the disk holding {} is full ({} MiB free, under the {} MiB kept free): writes are refused until space is freed",
                    self.dir.display(),
                    free / (1024 * 1024),
                    RESERVE / (1024 * 1024)
                );
                true
            }
            Ok(_) => false,
            // Cannot tell: let sled try (and report) rather than refuse on a guess.
            Err(_) => false,
        };
        let was = self.refusing.swap(refusing, Ordering::Relaxed);
        if was != refusing {
            if refusing {
                tracing::error!(dir = %self.dir.display(), free = free.unwrap_or(0), "the store's disk is full: writes are refused, reads go on");
            } else {
                tracing::info!(dir = %self.dir.display(), "the store's disk has space again: writes are taken");
            }
        }
    }
}
