//! Opening the sled store, and telling apart the three reasons it may not open.
//!
//! A cache can rebuild, but losing a whole store to a mistaken diagnosis is the worst thing
//! the daemon can do to its users, so the store is moved aside only when it is proven
//! damaged:
//!
//! - **in use**: another process holds sled's lock on `store/db` (sled 0.34 reports that as
//!   `ErrorKind::Other`, so the lock is probed here first, with the same `flock` sled
//!   takes). The daemon exits: "another cachebackd holds DIR".
//! - **unusable**: any OS error (EACCES, EROFS, ENOSPC, EIO...). The daemon exits with
//!   the OS error named; the store is not touched, and is whole again once the cause is
//!   fixed.
//! - **damaged**: sled reports corruption, panics, or opens files that fail the format
//!   check. Only then is it quarantined to `store.corrupt-<unix seconds>[-N]`, and every
//!   record that can still be read is salvaged into the fresh store ([`super::salvage`]).
//!
//! sled reports some damage only when a page is read. The small trees (jobs, invalidation
//! marks) are read through here; the items, which take seconds to read on a large store,
//! are read by the count at start, in the background while the daemon serves
//! ([`super::census`]). Damage found there marks the store suspect (`store.suspect` in the
//! data dir), and the next start reads every item before serving, as here, so that it is
//! moved aside and salvaged.

use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fs2::FileExt;

use super::salvage::{self, Salvaged};
use super::{FORMAT_KEY, FORMAT_MARKER};
use crate::error::Error;

/// How the store came up.
#[derive(Debug, Default)]
pub(crate) struct OpenReport {
    /// Where a damaged store was moved to, if one was.
    pub moved_aside: Option<PathBuf>,
    /// Why it was found damaged.
    pub reason: Option<String>,
    /// What was read back from the damaged store into the fresh one.
    pub salvaged: Option<Salvaged>,
}

/// Why a store did not open.
pub(super) enum OpenError {
    /// Not usable as it is, through no fault of its own (locked, no access, no space):
    /// the daemon must exit and leave it alone.
    Unusable(String),
    /// Its contents are damaged.
    Damaged(String),
}

/// Opens (or creates) the store under `data_dir`; a damaged one is quarantined and
/// salvaged into a fresh one. Every other failure is an error that leaves the files alone.
pub(super) fn open_db(
    data_dir: &Path,
    flush_interval: Duration,
    read_items: bool,
) -> Result<(sled::Db, OpenReport), Error> {
    std::fs::create_dir_all(data_dir).map_err(|e| {
        Error::Store(format!(
            "cannot create data dir {}: {e}",
            data_dir.display()
        ))
    })?;
    let path = data_dir.join("store");
    let suspect = data_dir.join(SUSPECT);
    let read_items = read_items || suspect.exists();
    let mut report = OpenReport::default();
    let reason = match try_open(data_dir, &path, flush_interval, read_items) {
        Ok(db) => {
            if read_items {
                cleared(&suspect);
            }
            return Ok((db, report));
        }
        Err(OpenError::Unusable(msg)) => return Err(Error::Store(msg)),
        Err(OpenError::Damaged(reason)) => reason,
    };
    let aside = quarantine_path(data_dir);
    std::fs::rename(&path, &aside).map_err(|e| {
        Error::Store(format!(
            "store at {} is damaged ({reason}) and cannot be moved aside: {e}",
            path.display()
        ))
    })?;
    cleared(&suspect);
    let db = try_open(data_dir, &path, flush_interval, true).map_err(|e| {
        let (OpenError::Unusable(m) | OpenError::Damaged(m)) = e;
        Error::Store(format!("cannot create a fresh store: {m}"))
    })?;
    report.salvaged = Some(salvage::salvage(&aside, data_dir, &db, flush_interval)?);
    report.moved_aside = Some(aside);
    report.reason = Some(reason);
    Ok((db, report))
}

/// In the data dir: the count at start found damage in the items; the next start reads
/// every item before serving.
const SUSPECT: &str = "store.suspect";

/// Marks the store under `data_dir` suspect: the next start reads it all through first.
pub(super) fn mark_suspect(data_dir: &Path) {
    if let Err(e) = std::fs::write(data_dir.join(SUSPECT), b"") {
        tracing::error!(error = %e, "cannot mark the store suspect");
    }
}

fn cleared(suspect: &Path) {
    match std::fs::remove_file(suspect) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => tracing::error!(error = %e, "cannot remove {}", suspect.display()),
    }
}

/// A name for the quarantined store that no earlier quarantine took (two failed starts
/// within one second must not collide).
fn quarantine_path(data_dir: &Path) -> PathBuf {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let first = data_dir.join(format!("store.corrupt-{stamp}"));
    if !first.exists() {
        return first;
    }
    (1u32..)
        .map(|n| data_dir.join(format!("store.corrupt-{stamp}-{n}")))
        .find(|p| !p.exists())
        .expect("some numbered name is free")
}

/// Whether another process holds sled's lock on the store: the same `flock` sled takes,
/// tried and released at once. `Err` names an OS error that makes the store unusable.
fn held_by_another(path: &Path) -> Result<bool, OpenError> {
    let db = path.join("db");
    let file = match File::open(&db) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(unusable(&db, &e)),
    };
    match file.try_lock_exclusive() {
        Ok(()) => {
            // Dropping the file releases the lock for sled to take.
            let _ = FileExt::unlock(&file);
            Ok(false)
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.raw_os_error() == Some(11) => Ok(true),
        Err(e) => Err(unusable(&db, &e)),
    }
}

fn unusable(path: &Path, e: &std::io::Error) -> OpenError {
    OpenError::Unusable(format!(
        "cannot use the store at {}: {e}; it is left as it is",
        path.display()
    ))
}

fn locked(data_dir: &Path) -> OpenError {
    OpenError::Unusable(format!(
        "another cachebackd holds {} (its store is locked by another process)",
        data_dir.display()
    ))
}

/// Opens the store at `path` and checks its format; `read_items`: reads every item
/// through too.
pub(super) fn try_open(
    data_dir: &Path,
    path: &Path,
    flush_interval: Duration,
    read_items: bool,
) -> Result<sled::Db, OpenError> {
    if held_by_another(path)? {
        return Err(locked(data_dir));
    }
    let existed = ["conf", "db"].iter().any(|f| path.join(f).exists());
    let config = sled::Config::new()
        .path(path)
        .flush_every_ms(Some(flush_interval.as_millis().max(1) as u64));
    let db = match salvage::quietly(|| config.open()) {
        Some(Ok(db)) => db,
        Some(Err(e)) => return Err(classify(data_dir, path, e)),
        // sled panics on some damaged files instead of returning an error.
        None => return Err(OpenError::Damaged("sled panicked while opening it".into())),
    };
    // sled opens some damaged stores as empty ones. Every store we create holds a format
    // marker, so files that exist but hold no marker are damage, not a fresh start.
    let check = || -> Result<(), OpenError> {
        let io = |e: sled::Error| classify(data_dir, path, e);
        let meta = db.open_tree("meta").map_err(io)?;
        match meta.get(FORMAT_KEY).map_err(io)? {
            Some(v) if v.as_ref() == FORMAT_MARKER => {}
            Some(v) => {
                return Err(OpenError::Damaged(format!(
                    "unknown store format {:?}",
                    String::from_utf8_lossy(&v)
                )))
            }
            None if existed => {
                return Err(OpenError::Damaged(
                    "its files hold no cachebackd store".into(),
                ))
            }
            None => {
                meta.insert(FORMAT_KEY, FORMAT_MARKER).map_err(io)?;
                db.flush().map_err(io)?;
            }
        }
        // Every record is read once: sled reports some damage only when a page is read.
        // The items are read by the count at start, unless asked for here.
        let trees: &[&str] = match read_items {
            true => &["jobs", "invalidated", "items"],
            false => &["jobs", "invalidated"],
        };
        for &name in trees {
            let tree = db.open_tree(name).map_err(io)?;
            tree.iter().try_for_each(|kv| kv.map(|_| ()).map_err(io))?;
        }
        Ok(())
    };
    match salvage::quietly(check) {
        Some(Ok(())) => Ok(db),
        outcome => {
            // A damaged sled may hang in its drop (its flusher waits for a thread that is
            // gone): the handle is left to the process rather than dropped.
            std::mem::forget(db);
            match outcome {
                Some(Err(e)) => Err(e),
                _ => Err(OpenError::Damaged("sled panicked while reading it".into())),
            }
        }
    }
}

/// An error from sled: an OS error makes the store unusable (exit, leave it alone), sled's
/// own verdicts on the contents mean damage.
fn classify(data_dir: &Path, path: &Path, e: sled::Error) -> OpenError {
    match e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            locked(data_dir)
        }
        // Content that ends early or does not parse: the files, not the system.
        sled::Error::Io(io)
            if matches!(io.kind(), ErrorKind::UnexpectedEof | ErrorKind::InvalidData)
                && io.raw_os_error().is_none() =>
        {
            OpenError::Damaged(io.to_string())
        }
        sled::Error::Io(io) => unusable(path, &io),
        other => OpenError::Damaged(other.to_string()),
    }
}
