//! The daemons a [`Client`](crate::Client) may talk to (one URL, or the several of a
//! fleet), which one it uses now, and when a failed call moves it to the next.
//!
//! A client uses one daemon at a time, so that its connection, its near cache's stream
//! and the daemon's single-flight all stay on one place. It starts on a daemon picked
//! at random: app servers given the same list spread over the fleet instead of all
//! landing on the first URL, and a dead first daemon does not send all of them to the
//! second. It stays there until a call finds that daemon down (the connection refused
//! or broken: a transport failure, never a status the daemon answered; or the daemon
//! draining), then moves to
//! the next URL in the list and stays there; it never moves back by itself.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cachebackd_proto::v1::cacheback_client::CachebackClient;
use tokio::sync::watch;

use crate::client::Transport;

/// One daemon: its URL and the gRPC client on its own (lazily reconnecting) channel.
#[derive(Clone)]
pub(crate) struct Daemon {
    pub url: Arc<str>,
    pub raw: CachebackClient<Transport>,
    pub transport: Transport,
}

/// The daemons of a client and its clones, and the one in use.
pub(crate) struct Daemons {
    list: Vec<Daemon>,
    current: AtomicUsize,
    /// Counts the moves to another daemon: whoever holds state tied to one daemon (the
    /// near cache's stream) watches it.
    moves: watch::Sender<u64>,
}

impl Daemons {
    /// `list` (at least one), starting on `start`.
    pub(crate) fn new(list: Vec<Daemon>, start: usize) -> Daemons {
        assert!(!list.is_empty(), "a client has at least one daemon");
        let start = start % list.len();
        Daemons {
            list,
            current: AtomicUsize::new(start),
            moves: watch::Sender::new(0),
        }
    }

    /// Every daemon, in the order given.
    pub(crate) fn all(&self) -> &[Daemon] {
        &self.list
    }

    /// The index of the daemon in use.
    pub(crate) fn current(&self) -> usize {
        self.current.load(Ordering::Acquire)
    }

    /// The daemon at `index`.
    pub(crate) fn get(&self, index: usize) -> &Daemon {
        &self.list[index % self.list.len()]
    }

    /// The daemon at `index` is down: if it is still the one in use, the next one in the
    /// list is from now on. Returns the index now in use (callers that raced on the same
    /// failure all move once, not once each).
    pub(crate) fn fail_over(&self, index: usize) -> usize {
        let next = (index + 1) % self.list.len();
        match self
            .current
            .compare_exchange(index, next, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                tracing::warn!(
                    from = %self.list[index].url,
                    to = %self.list[next].url,
                    "cachebackd daemon unreachable; failing over"
                );
                self.moves.send_modify(|moves| *moves += 1);
                next
            }
            Err(now) => now,
        }
    }

    /// Moves so far, to watch.
    pub(crate) fn moves(&self) -> watch::Receiver<u64> {
        self.moves.subscribe()
    }

    /// The number of moves so far.
    pub(crate) fn moved(&self) -> u64 {
        *self.moves.borrow()
    }
}

/// A random start among `n` daemons, from std's per-process random hash keys (no
/// dependency for one number a process).
pub(crate) fn random_start(n: usize) -> usize {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_usize(n);
    (hasher.finish() % n.max(1) as u64) as usize
}

/// What a draining daemon answers the calls it can no longer serve (the daemon's
/// `Error::ShuttingDown`): another daemon may serve them.
const SHUTTING_DOWN: &str = "cachebackd is shutting down";

/// Whether a failed call found its daemon down rather than refusing the call: a status
/// that tonic made from a transport error (connection refused or reset, the channel
/// broken) carries that error as its source, while every status the daemon answered
/// (even `UNAVAILABLE` for a failed fetch) has none; or the daemon is draining. A
/// client-side deadline is not a daemon down: a Get may rightly wait for a fetch.
pub(crate) fn is_daemon_down(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    if status.code() == tonic::Code::Unavailable && status.message() == SHUTTING_DOWN {
        return true;
    }
    let transport = status.source().is_some();
    let deadline = matches!(
        status.code(),
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    );
    transport && !deadline
}

/// Splits `urls`, one URL or several separated by commas (as `CACHEBACKD_URL` may hold
/// them), dropping blanks.
pub(crate) fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_urls_splits_on_commas() {
        assert_eq!(
            split_urls(" http://a:1, unix:/b.sock,,http://c:3 "),
            ["http://a:1", "unix:/b.sock", "http://c:3"]
        );
        assert_eq!(split_urls("http://a:1"), ["http://a:1"]);
    }

    #[test]
    fn a_status_the_daemon_answered_is_not_a_daemon_down() {
        assert!(!is_daemon_down(&tonic::Status::unavailable("fetch failed")));
        assert!(is_daemon_down(&tonic::Status::unavailable(SHUTTING_DOWN)));
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(is_daemon_down(&tonic::Status::from_error(Box::new(
            refused
        ))));
    }

    #[test]
    fn the_random_start_is_in_range() {
        for n in 1..5 {
            assert!(random_start(n) < n);
        }
    }
}
