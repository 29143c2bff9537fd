//! Living under systemd: readiness (`Type=notify`), the watchdog, and socket activation.
//! Every call is a no-op when systemd did not ask for it (no `NOTIFY_SOCKET`, no
//! `WATCHDOG_USEC`, no `LISTEN_FDS`), so the daemon runs the same way by hand.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use sd_notify::NotifyState;

use crate::shutdown::Shutdown;

/// A socket systemd opened for us (`LISTEN_FDS`), with its `FileDescriptorName=`.
#[derive(Debug)]
pub struct PassedSocket {
    /// The socket; ours from now on.
    pub fd: OwnedFd,
    /// Its name: `metrics` makes it the metrics endpoint; any other serves gRPC.
    pub name: String,
}

/// Takes the sockets systemd passed (socket activation) and unsets `LISTEN_PID`,
/// `LISTEN_FDS` and `LISTEN_FDNAMES`, so that nothing is taken twice.
///
/// # Safety
///
/// Changes the environment: call it before any other thread starts (before the runtime).
pub unsafe fn take_passed_sockets() -> std::io::Result<Vec<PassedSocket>> {
    // SAFETY: the caller runs this before any other thread exists.
    let fds = unsafe { sd_notify::listen_fds_with_names_and_unset_env()? };
    Ok(fds
        .map(|(fd, name)| PassedSocket {
            // SAFETY: systemd hands these descriptors to this process, and nothing else in
            // it knows of them.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            name,
        })
        .collect())
}

/// Tells systemd that the daemon is ready (every listener bound, the store open).
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd that the daemon is shutting down.
pub fn stopping(status: &str) {
    notify(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// With `WatchdogSec=` set, pings systemd at half the interval, in a task of `shutdown`,
/// until the daemon closes; the pings go on while the daemon drains, so that a long drain
/// is not mistaken for a hang (systemd stops watching once the service is stopping).
pub fn spawn_watchdog(shutdown: &Shutdown) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (interval / 2).max(Duration::from_millis(1));
    tracing::info!(?interval, "systemd watchdog enabled");
    let closing = shutdown.clone();
    shutdown.spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = closing.closing() => return,
                _ = tick.tick() => notify(&[NotifyState::Watchdog]),
            }
        }
    });
}
