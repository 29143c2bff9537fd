//! The one table (Markdown, so that docs/BENCHMARKS.md can hold it as printed) and the JSON.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::hits;
use crate::load::{Histogram, Throughput};
use crate::memory::{Memory, ITEM_BYTES};
use crate::near::{self, NearRow};
use crate::redis_bench::RedisMemory;
use crate::refresh::{Mode, Refresh};
use crate::storm::Storm;

/// Everything one run measured.
#[derive(Default)]
pub struct Report {
    /// The header lines (machine, load, settings).
    pub header: Vec<(String, Value)>,
    /// Get hits.
    pub hits: Vec<hits::Row>,
    /// Miss storms against the daemon.
    pub storm: Vec<Storm>,
    /// The same storm against the baseline.
    pub storm_baseline: Option<Storm>,
    /// Refresh runs against the daemon, each with its ping-pong baseline.
    pub refresh: Vec<(Refresh, Refresh)>,
    /// The near cache's hit beside a plain Get and Redis GET.
    pub near: Option<NearRow>,
    /// Hot-key runs, without and with early refresh.
    pub hot_key: Vec<crate::additions::HotKey>,
    /// Batched refresh drains, by max_batch.
    pub batched: Vec<crate::additions::Batched>,
    /// Memory and disk.
    pub memory: Option<Memory>,
    /// Redis's memory for the same items.
    pub redis_memory: Option<RedisMemory>,
    /// Why Redis was not measured, if it was not.
    pub redis_skipped: Option<String>,
    /// Get hits with a token and with TLS.
    pub security: Vec<crate::secure::Row>,
    /// The fleet rows (a daemon on Redis beside one on sled).
    pub fleet: Option<crate::fleet::Fleet>,
    /// Anything else left out, and why.
    pub notes: Vec<String>,
}

impl Report {
    /// The table, in Markdown.
    pub fn table(&self) -> String {
        let mut rows: Vec<[String; 6]> = Vec::new();
        let redis_na = || match &self.redis_skipped {
            Some(_) => "skipped".to_string(),
            None => "—".to_string(),
        };
        for row in &self.hits {
            let batch = row.setting.batch;
            let (figure, redis) = if batch == 1 {
                (
                    "Get hit",
                    row.redis
                        .as_ref()
                        .map_or_else(redis_na, |r| throughput(r, 1)),
                )
            } else {
                (
                    "GetMany hits (items/s)",
                    row.redis
                        .as_ref()
                        .map_or_else(redis_na, |r| format!("MGET: {}", throughput(r, batch))),
                )
            };
            rows.push([
                figure.into(),
                row.setting.label(),
                throughput(&row.daemon, batch),
                throughput(&row.baseline, batch),
                match row.cpu_ratio() {
                    Some(cpu) => format!("**{:.2}×** (CPU/call {cpu:.2}×)", row.ratio()),
                    None => format!("**{:.2}×**", row.ratio()),
                },
                redis,
            ]);
        }
        if let Some(near) = &self.near {
            rows.push([
                "near-cache hit (reads/s, one task)".into(),
                format!("{} B, one hot item, read after read", near::PAYLOAD),
                format!(
                    "**{}/s** in-process ({} hits, {} miss)",
                    thousands(near.near),
                    near.counted.0,
                    near.counted.1
                ),
                format!("plain Get: {}/s", thousands(near.get)),
                match near.redis {
                    Some(r) => format!(
                        "**{:.0}×** Redis GET, {:.0}× plain Get",
                        near.near / r,
                        near.near / near.get
                    ),
                    None => format!("{:.0}× plain Get", near.near / near.get),
                },
                near.redis.map_or_else(redis_na, |r| {
                    format!("GET one at a time: {}/s", thousands(r))
                }),
            ]);
        }
        for daemon in &self.storm {
            let setting = format!(
                "{} Gets of 1 missing key, fetch {}",
                thousands(daemon.gets as f64),
                duration_s(daemon.fetch_delay.as_secs_f64())
            );
            rows.push([
                "miss storm: fetches issued".into(),
                setting.clone(),
                daemon.fetches.map_or("?".into(), |f| format!("**{f}**")),
                "1 (required)".into(),
                String::new(),
                String::new(),
            ]);
            rows.push([
                "miss storm: Get latency".into(),
                setting,
                format!(
                    "{} ({} ok, {} joined the fetch, {} failed)",
                    percentiles(&daemon.latency, true),
                    daemon.ok,
                    daemon.waited,
                    daemon.errors
                ),
                self.storm_baseline.as_ref().map_or(String::new(), |b| {
                    format!(
                        "{} (the same storm of no-op Gets)",
                        percentiles(&b.latency, true)
                    )
                }),
                String::new(),
                String::new(),
            ]);
        }
        for (daemon, baseline) in &self.refresh {
            rows.push([
                "refresh (stale items/s)".into(),
                format!(
                    "{}, {}",
                    daemon.mode.map_or("", Mode::label),
                    daemon.shape.label()
                ),
                format!(
                    "{}/s ({} items, {} fetches){}{}",
                    thousands(daemon.per_sec()),
                    daemon.items,
                    daemon.fetches,
                    cpu_note(daemon.cpu_per_answer_us(), "refresh"),
                    daemon
                        .fresh_gets_per_sec()
                        .map_or_else(String::new, |hits| format!(
                            " · the same Gets once fresh {}/s: **{:.2}×** of them",
                            thousands(hits),
                            daemon.per_sec() / hits.max(f64::MIN_POSITIVE)
                        ))
                ),
                format!(
                    "{}/s bidi ping-pong{}",
                    thousands(baseline.per_sec()),
                    cpu_note(baseline.cpu_per_answer_us(), "exchange")
                ),
                format!(
                    "**{:.2}×**",
                    daemon.per_sec() / baseline.per_sec().max(f64::MIN_POSITIVE)
                ),
                String::new(),
            ]);
        }
        if let Some(m) = &self.memory {
            let setting = format!("{} items × {} B", thousands(m.items as f64), ITEM_BYTES);
            let redis_rss = self.redis_memory.as_ref().map_or_else(redis_na, |r| {
                let used = r.used_memory.1.saturating_sub(r.used_memory.0) as f64 / r.items as f64;
                let rss = r.rss.1.saturating_sub(r.rss.0) as f64 / r.items as f64;
                format!(
                    "{} B (RSS); {} B (used_memory)",
                    thousands(rss),
                    thousands(used)
                )
            });
            rows.push([
                "memory: RSS per item".into(),
                setting.clone(),
                format!(
                    "{} B (RSS {} → {})",
                    thousands(m.rss_per_item()),
                    bytes(m.rss_empty),
                    bytes(m.rss_loaded)
                ),
                format!("{ITEM_BYTES} B raw"),
                format!("{:.2}×", m.rss_per_item() / ITEM_BYTES as f64),
                redis_rss,
            ]);
            rows.push([
                "disk per item".into(),
                setting.clone(),
                format!(
                    "{} B ({} allocated, {} apparent)",
                    thousands(m.disk_per_item()),
                    bytes(m.disk.1),
                    bytes(m.disk.0)
                ),
                format!("{ITEM_BYTES} B raw"),
                format!("{:.2}×", m.disk_per_item() / ITEM_BYTES as f64),
                "— (persistence off)".into(),
            ]);
            rows.push([
                "start to first Get".into(),
                format!("{setting} on disk"),
                format!(
                    "{} (RSS then {})",
                    duration_s(m.first_get_loaded.as_secs_f64()),
                    bytes(m.rss_restarted)
                ),
                format!(
                    "{} on an empty store",
                    duration_s(m.first_get_empty.as_secs_f64())
                ),
                String::new(),
                String::new(),
            ]);
            rows.push([
                "start to first Get".into(),
                format!("{setting} on disk, after SIGKILL"),
                format!(
                    "{} (every item counted after {})",
                    duration_s(m.first_get_crashed.as_secs_f64()),
                    duration_s(m.counted_crashed.as_secs_f64())
                ),
                format!(
                    "{} after a clean stop",
                    duration_s(m.first_get_loaded.as_secs_f64())
                ),
                String::new(),
                String::new(),
            ]);
            rows.push([
                "Set (loading those items)".into(),
                "1 KiB, c=64, 4 ch".into(),
                throughput(&m.sets, 1),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        for h in &self.hot_key {
            rows.push([
                "hot key: Gets answered STALE".into(),
                format!(
                    "1 item, lifetime 1 s, fetch 50 ms, c={}, {:.0} s, {}",
                    64,
                    h.secs,
                    if h.early {
                        "early_refresh_beta 1"
                    } else {
                        "no early refresh"
                    }
                ),
                format!(
                    "{:.3}% ({} of {} Gets; {} fetches)",
                    100.0 * h.stale_share(),
                    h.stale,
                    h.gets,
                    h.fetches
                ),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        for b in &self.batched {
            rows.push([
                "refresh, queued, drained (items/s)".into(),
                format!("1 stream, window 64, max_batch {}", b.max_batch),
                format!(
                    "{}/s ({} FetchBatch){}",
                    thousands(b.per_sec()),
                    b.batches,
                    cpu_note(b.cpu_per_refresh_us(), "refresh")
                ),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        for note in &self.notes {
            rows.push([
                "note".into(),
                String::new(),
                note.clone(),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        if let Some(why) = &self.redis_skipped {
            rows.push([
                "Redis".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                format!("skipped: {why}"),
            ]);
        }

        let head = [
            "figure",
            "setting",
            "cachebackd",
            "baseline",
            "ratio",
            "Redis (context)",
        ];
        let mut out = String::new();
        for (k, v) in &self.header {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let _ = writeln!(out, "{k}: {v}  ");
        }
        out.push('\n');
        let _ = writeln!(out, "| {} |", head.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
        for r in rows {
            let _ = writeln!(out, "| {} |", r.join(" | "));
        }
        if !self.security.is_empty() {
            out += &crate::secure::table(&self.security);
        }
        if let Some(fleet) = &self.fleet {
            out += &crate::fleet::table(fleet);
        }
        out
    }

    /// The same figures, raw, as JSON.
    pub fn json(&self) -> Value {
        let header: serde_json::Map<String, Value> = self.header.iter().cloned().collect();
        json!({
            "run": header,
            "get_hits": self.hits.iter().map(hits::Row::to_json).collect::<Vec<_>>(),
            "security": self.security.iter().map(crate::secure::Row::to_json).collect::<Vec<_>>(),
            "miss_storm": {
                "cachebackd": self.storm.iter().map(Storm::to_json).collect::<Vec<_>>(),
                "baseline": self.storm_baseline.as_ref().map(Storm::to_json),
            },
            "refresh": self.refresh.iter().map(|(d, b)| json!({
                "streams": d.shape.streams,
                "window": d.shape.window,
                "mode": d.mode.map(Mode::label),
                "cachebackd": d.to_json(),
                "ping_pong": b.to_json(),
                "ratio": d.per_sec() / b.per_sec().max(f64::MIN_POSITIVE),
            })).collect::<Vec<_>>(),
            "near_cache": self.near.as_ref().map(NearRow::to_json),
            "fleet": self.fleet.as_ref().map(crate::fleet::Fleet::to_json),
            "hot_key": self.hot_key.iter().map(crate::additions::HotKey::to_json).collect::<Vec<_>>(),
            "batched_refresh": self.batched.iter().map(crate::additions::Batched::to_json).collect::<Vec<_>>(),
            "memory": self.memory.as_ref().map(Memory::to_json),
            "notes": self.notes,
            "redis": {
                "skipped": self.redis_skipped,
                "memory": self.redis_memory.as_ref().map(|r| json!({
                    "items": r.items,
                    "rss_bytes": [r.rss.0, r.rss.1],
                    "used_memory_bytes": [r.used_memory.0, r.used_memory.1],
                })),
            },
        })
    }
}

/// `12,345/s (p50 …, p99 …, p999 …)`: calls per second times `items` per call, and the
/// calls' latency.
fn throughput(t: &Throughput, items: usize) -> String {
    let mut s = format!(
        "{}/s ({})",
        thousands(t.per_sec() * items as f64),
        percentiles(&t.latency, false)
    );
    if let Some(cpu) = t.cpu_per_call_us() {
        let _ = write!(s, " · CPU {cpu:.1} µs/call");
    }
    if t.errors > 0 {
        let _ = write!(s, " {} errors", t.errors);
    }
    s
}

fn cpu_note(us: Option<f64>, per: &str) -> String {
    us.map_or(String::new(), |us| format!(" · CPU {us:.1} µs/{per}"))
}

fn percentiles(h: &Histogram, with_max: bool) -> String {
    let q = |q: f64| duration_ns(h.value_at_quantile(q));
    let mut s = format!("p50 {} · p99 {} · p999 {}", q(0.5), q(0.99), q(0.999));
    if with_max {
        let _ = write!(s, " · max {}", duration_ns(h.max()));
    }
    s
}

fn duration_ns(ns: u64) -> String {
    duration_s(ns as f64 / 1e9)
}

fn duration_s(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.0} µs", s * 1e6)
    } else if s < 0.01 {
        format!("{:.2} ms", s * 1e3)
    } else if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

fn bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else {
        format!("{:.0} KiB", b / 1024.0)
    }
}

/// `12345.6` as `12,346`.
fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_a_person_writes_them() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(duration_s(0.000412), "412 µs");
        assert_eq!(duration_s(0.0523), "52.3 ms");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
