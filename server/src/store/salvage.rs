//! Salvage: read every record that can still be read from a quarantined store into the
//! fresh one, so that damage costs what is damaged and not the whole cache.
//!
//! sled 0.34 recovers its tree by replaying its log, and fails the whole open (often with a
//! panic) on one bad byte in it; a garbled `conf` alone makes it refuse files whose data is
//! intact. So salvage works on a scratch copy (`store.salvage`, removed afterwards; the
//! quarantined files are never written) and tries, in order: the files as they are with a
//! fresh `conf`; without the snapshot; with each segment of the log blanked in turn; then
//! the longest prefix of the log that opens (sled reads a log cut short as one that ended
//! there; sled reuses segments, so the damaged one may sit anywhere in the file). The
//! attempt that reads the most records is copied; every record is checked as it is copied
//! (items by their header, job configs by their decoder), and what fails is counted as
//! lost.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use super::{decode_job, Item, FORMAT_KEY, FORMAT_MARKER};
use crate::error::Error;

/// What salvage kept and lost.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Salvaged {
    /// Items copied into the fresh store.
    pub items: u64,
    /// Job configs copied.
    pub jobs: u64,
    /// Records read that did not decode, dropped.
    pub lost_records: u64,
    /// Bytes at the end of the log that could not be read at all (what they held is lost).
    pub unread_log_bytes: u64,
}

/// sled 0.34's default segment size: the log is read in units of it.
const SEGMENT: u64 = 512 * 1024;

/// Which files of the quarantined store an attempt uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// Everything but `conf`.
    Whole,
    /// The log alone, without the snapshot (which may be what is damaged).
    NoSnapshot,
    /// The first `n` bytes of the log, without the snapshot.
    Prefix(u64),
    /// The log with one segment blanked (sled reuses segments, so the damaged one may sit
    /// anywhere in the file), without the snapshot.
    Blanked(u64),
}

/// Most segments tried one by one with [`Attempt::Blanked`]; a longer log goes straight to
/// prefixes.
const MAX_BLANKED: u64 = 64;

/// Copies what can be read of the store at `aside` into `fresh`.
pub(super) fn salvage(
    aside: &Path,
    data_dir: &Path,
    fresh: &sled::Db,
    flush_interval: Duration,
) -> Result<Salvaged, Error> {
    let work = data_dir.join("store.salvage");
    let log_len = fs::metadata(aside.join("db")).map_or(0, |m| m.len());
    let result = (|| {
        let mut best: Option<(Attempt, u64)> = None;
        let whole = probe(aside, &work, Attempt::Whole, flush_interval)?;
        consider(&mut best, Attempt::Whole, whole.complete());
        if whole.complete().is_none() {
            let no_snap = probe(aside, &work, Attempt::NoSnapshot, flush_interval)?;
            consider(&mut best, Attempt::NoSnapshot, no_snap.complete());
            if no_snap.complete().is_none() {
                let segments = log_len.div_ceil(SEGMENT);
                if segments <= MAX_BLANKED {
                    for segment in 0..segments {
                        let attempt = Attempt::Blanked(segment);
                        let p = probe(aside, &work, attempt, flush_interval)?;
                        consider(&mut best, attempt, p.complete());
                    }
                }
                if best.is_none() {
                    // The longest prefix, in whole segments, that opens and reads
                    // through: down from the end, in growing steps on a long log.
                    let (mut cut, mut step) = (segments, 1);
                    while cut > 0 {
                        cut = cut.saturating_sub(step);
                        let len = (cut * SEGMENT).min(log_len);
                        let p = probe(aside, &work, Attempt::Prefix(len), flush_interval)?;
                        if let Some(n) = p.complete() {
                            consider(&mut best, Attempt::Prefix(len), Some(n));
                            break;
                        }
                        if segments - cut >= 32 {
                            step *= 2;
                        }
                    }
                }
            }
        }
        let Some((attempt, _)) = best else {
            return Ok(Salvaged {
                unread_log_bytes: log_len,
                ..Salvaged::default()
            });
        };
        let db = prepare(aside, &work, attempt, flush_interval)?
            .ok_or_else(|| Error::Store("the salvage copy no longer opens".into()))?;
        let mut salvaged = copy_into(&db, fresh)?;
        salvaged.unread_log_bytes = match attempt {
            Attempt::Prefix(len) => log_len - len,
            Attempt::Blanked(_) => SEGMENT.min(log_len),
            _ => 0,
        };
        fresh.flush()?;
        Ok(salvaged)
    })();
    let _ = fs::remove_dir_all(&work);
    result
}

/// Keeps `attempt` if it read more than the best so far.
fn consider(best: &mut Option<(Attempt, u64)>, attempt: Attempt, read: Option<u64>) {
    if let Some(n) = read {
        if best.is_none_or(|(_, b)| n > b) {
            *best = Some((attempt, n));
        }
    }
}

/// What one attempt read.
struct Probe {
    opened: bool,
    records: u64,
    read_through: bool,
}

impl Probe {
    /// Records read, if the attempt opened and read every tree to its end.
    fn complete(&self) -> Option<u64> {
        (self.opened && self.read_through).then_some(self.records)
    }
}

fn probe(
    aside: &Path,
    work: &Path,
    attempt: Attempt,
    flush_interval: Duration,
) -> Result<Probe, Error> {
    let Some(db) = prepare(aside, work, attempt, flush_interval)? else {
        return Ok(Probe {
            opened: false,
            records: 0,
            read_through: false,
        });
    };
    let counted = quietly(|| {
        let meta = db.open_tree("meta").ok()?;
        let marked = meta.get(FORMAT_KEY).ok()?.as_deref() == Some(FORMAT_MARKER);
        let mut n = 0u64;
        for name in ["jobs", "invalidated", "items"] {
            let tree = db.open_tree(name).ok()?;
            for kv in tree.iter() {
                kv.ok()?;
                n += 1;
            }
        }
        // Neither our marker nor a record: the log replayed into an empty store (sled
        // opens some damaged logs so), not a copy worth taking.
        (marked || n > 0).then_some(n)
    });
    Ok(match counted.flatten() {
        Some(records) => Probe {
            opened: true,
            records,
            read_through: true,
        },
        None => Probe {
            opened: true,
            records: 0,
            read_through: false,
        },
    })
}

/// Lays out the scratch copy for `attempt` and opens it; `None` if sled will not.
fn prepare(
    aside: &Path,
    work: &Path,
    attempt: Attempt,
    flush_interval: Duration,
) -> Result<Option<sled::Db>, Error> {
    let _ = fs::remove_dir_all(work);
    fs::create_dir_all(work)?;
    for entry in fs::read_dir(aside)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let from = entry.path();
        let to = work.join(&*name);
        match name.as_ref() {
            // sled writes a fresh one: a garbled conf alone must not cost the data.
            "conf" => {}
            "db" => {
                let limit = match attempt {
                    Attempt::Prefix(len) => len,
                    _ => u64::MAX,
                };
                copy_prefix(&from, &to, limit)?;
                if let Attempt::Blanked(segment) = attempt {
                    blank(&to, segment)?;
                }
            }
            "blobs" => {
                // Large values live one per file and are never rewritten: links cost no
                // space (the disk may be nearly full), copies are the fallback.
                fs::create_dir_all(&to)?;
                for blob in fs::read_dir(&from)? {
                    let blob = blob?;
                    let dest = to.join(blob.file_name());
                    if fs::hard_link(blob.path(), &dest).is_err() {
                        fs::copy(blob.path(), &dest)?;
                    }
                }
            }
            n if n.starts_with("snap.") && attempt == Attempt::Whole => {
                fs::copy(&from, &to)?;
            }
            _ => {}
        }
    }
    let config = sled::Config::new()
        .path(work)
        .flush_every_ms(Some(flush_interval.as_millis().max(1) as u64));
    Ok(quietly(|| config.open()).and_then(Result::ok))
}

fn copy_prefix(from: &Path, to: &Path, limit: u64) -> Result<(), Error> {
    let mut src = fs::File::open(from)?.take(limit);
    let mut dst = fs::File::create(to)?;
    std::io::copy(&mut src, &mut dst)?;
    dst.flush()?;
    Ok(())
}

/// Overwrites one segment of the log at `path` with zeros.
fn blank(path: &Path, segment: u64) -> Result<(), Error> {
    use std::io::{Seek, SeekFrom};
    let mut file = fs::OpenOptions::new().write(true).open(path)?;
    let len = file.metadata()?.len();
    let start = segment * SEGMENT;
    let zeros = vec![0u8; SEGMENT.min(len.saturating_sub(start)) as usize];
    file.seek(SeekFrom::Start(start))?;
    file.write_all(&zeros)?;
    Ok(())
}

/// Copies every record of `from` that decodes into `to`.
fn copy_into(from: &sled::Db, to: &sled::Db) -> Result<Salvaged, Error> {
    let mut s = Salvaged::default();
    let read = quietly(|| -> Result<Salvaged, Error> {
        let jobs = to.open_tree("jobs")?;
        for (k, v) in from.open_tree("jobs")?.iter().map_while(Result::ok) {
            if std::str::from_utf8(&k).is_ok() && decode_job(&v).is_some() {
                jobs.insert(k, v)?;
                s.jobs += 1;
            } else {
                s.lost_records += 1;
            }
        }
        let marks = to.open_tree("invalidated")?;
        for (k, v) in from.open_tree("invalidated")?.iter().map_while(Result::ok) {
            if v.len() == 8 {
                marks.insert(k, v)?;
            } else {
                s.lost_records += 1;
            }
        }
        let items = to.open_tree("items")?;
        for (k, v) in from.open_tree("items")?.iter().map_while(Result::ok) {
            if k.contains(&0) && Item::decode_times(&v).is_some() {
                items.insert(k, v)?;
                s.items += 1;
            } else {
                s.lost_records += 1;
            }
        }
        Ok(s.clone())
    });
    match read {
        Some(r) => r,
        None => Err(Error::Store(
            "sled panicked while the salvage copy was read".into(),
        )),
    }
}

/// Runs `f`, turning a panic into `None` without printing it: sled panics on some damaged
/// files, and the daemon reports those as damage in one line of its own. (The panic hook
/// is process-wide; this runs only while the store opens, before anything else is
/// started.)
pub(super) fn quietly<T>(f: impl FnOnce() -> T) -> Option<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.ok()
}
