//! What may go into a log line: warnings that a client can cause once per request are
//! rate-limited, and client input is clipped.
//!
//! A client must not be able to grow the journal without bound: 200,000 answers with unknown
//! request ids once wrote one WARN line each, and a 1 MiB id went into a line whole. Each
//! such call site owns a [`RateLimit`] (a static, two atomics): the first line of an
//! interval is written, the rest are counted and the count rides on the next line written.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Longest piece of client input (an id, a name, a message) written into a log line.
pub(crate) const MAX_LOGGED_INPUT: usize = 128;

/// Lets one line through per interval and counts the ones held back.
#[derive(Debug)]
pub(crate) struct RateLimit {
    interval: Duration,
    /// When the next line may be written, in nanoseconds since the process's log epoch.
    next: AtomicU64,
    suppressed: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl RateLimit {
    /// One line per `interval`.
    pub(crate) const fn new(interval: Duration) -> RateLimit {
        RateLimit {
            interval,
            next: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` if a line may be written now, `n` being the lines held back since the last
    /// one; `None` (and the line counted) otherwise.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = epoch().elapsed().as_nanos() as u64;
        let next = self.next.load(Ordering::Relaxed);
        if now >= next
            && self
                .next
                .compare_exchange(
                    next,
                    now + self.interval.as_nanos() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// `s` as it may be logged: at most [`MAX_LOGGED_INPUT`] bytes (cut at a character
/// boundary), with how long it really was when it was cut.
pub(crate) fn clip(s: &str) -> Cow<'_, str> {
    if s.len() <= MAX_LOGGED_INPUT {
        return Cow::Borrowed(s);
    }
    let mut end = MAX_LOGGED_INPUT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}... ({} bytes)", &s[..end], s.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_rest_counted() {
        let limit = RateLimit::new(Duration::from_secs(3600));
        assert_eq!(limit.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(limit.allow(), None);
        }
        assert_eq!(limit.suppressed.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn long_input_is_clipped_at_a_character_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(100);
        let clipped = clip(&long);
        assert!(clipped.ends_with("... (200 bytes)"), "{clipped}");
        assert!(clipped.len() < MAX_LOGGED_INPUT + 20);
    }
}
