//! Salvage: read every record that can still be read from a quarantined store into the
//! fresh one, so that damage costs what is damaged and not the whole cache.
//!
//! sled 0.34 recovers its tree by replaying its log, and fails the whole open (often with a
//! panic) on one bad byte in it; a garbled `conf` alone makes it refuse files whose data is
//! intact. So salvage works on a scratch copy (`store.salvage`, removed afterwards; the
//! quarantined files are never written) and tries, in order: the files as they are with a
//! fresh `conf`; without the snapshot; then the log cut short, in log order, at the
//! latest point that opens (the latest segments dropped, as if the log had ended before
//! them: sled reads a log cut short as one that ended there). The
//! attempt that reads the most records is copied; every record is checked as it is copied
//! (items by their header, job configs by their decoder), and what fails is counted as
//! lost.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use super::{decode_job, Item, FORMAT_KEY, FORMAT_MARKER};
use crate::error::Error;

/// What salvage kept and lost.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Salvaged {
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
    /// The log as if it had ended before the segment that starts at this LSN: every
    /// segment from it on is dropped (its header blanked), without the snapshot.
    EndedBefore(i64),
}

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
                // The log cut short, in log order (sled reuses segments, so file order
                // means nothing): the latest segment dropped, then the two latest, and
                // so on, in growing steps on a long log; the first that reads through
                // keeps the most.
                let starts = segment_lsns(&aside.join("db"))?;
                let (mut dropped, mut step) = (0usize, 1usize);
                while dropped < starts.len() {
                    dropped = (dropped + step).min(starts.len());
                    let attempt = Attempt::EndedBefore(starts[starts.len() - dropped].1);
                    let p = probe(aside, &work, attempt, flush_interval)?;
                    if let Some(n) = p.complete() {
                        consider(&mut best, attempt, Some(n));
                        break;
                    }
                    if dropped >= 16 {
                        step *= 2;
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
        let copied = copy_into(&db, fresh);
        std::mem::forget(db);
        let mut salvaged = copied?;
        salvaged.unread_log_bytes = match attempt {
            Attempt::EndedBefore(lsn) => {
                let starts = segment_lsns(&aside.join("db"))?;
                starts.iter().filter(|(_, l)| *l >= lsn).count() as u64 * SEGMENT
            }
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
    // A sled that read damage may hang in its drop: left to the process (a few probes at
    // one start).
    std::mem::forget(db);
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
                fs::copy(&from, &to)?;
                if let Attempt::EndedBefore(lsn) = attempt {
                    for (offset, start) in segment_lsns(&to)? {
                        if start >= lsn {
                            blank_header(&to, offset)?;
                        }
                    }
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

/// The length of a segment header in sled 0.34's log: crc32, then the segment's first LSN
/// and the highest stable LSN, each xor-masked.
const SEGMENT_HEADER: usize = 20;

/// Every segment of the log at `path` that has a header: its offset and first LSN, in log
/// order.
fn segment_lsns(path: &Path) -> Result<Vec<(u64, i64)>, Error> {
    let mut file = fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut out = Vec::new();
    let mut header = [0u8; SEGMENT_HEADER];
    let mut offset = 0;
    while offset + SEGMENT_HEADER as u64 <= len {
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut header)?;
        if header != [0; SEGMENT_HEADER] {
            let masked = i64::from_le_bytes(header[4..12].try_into().expect("8 bytes"));
            out.push((offset, masked ^ 0x7FFF_FFFF_FFFF_FFFF));
        }
        offset += SEGMENT;
    }
    out.sort_by_key(|&(_, lsn)| lsn);
    Ok(out)
}

/// Zeroes the header of the segment at `offset`: sled then reads the segment as unused.
fn blank_header(path: &Path, offset: u64) -> Result<(), Error> {
    let mut file = fs::OpenOptions::new().write(true).open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(&[0; SEGMENT_HEADER])?;
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
