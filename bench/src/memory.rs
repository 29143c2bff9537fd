//! Memory and disk: a daemon of its own, on an empty data dir, is sent N items of 1 KiB;
//! its RSS (VmRSS) before and after, the store's size on disk once it has stopped (and
//! flushed), and the time from starting it again to the first Get it serves with those
//! items on disk — next to the same time on an empty store — then the same after that
//! daemon is killed with SIGKILL (a crash: no saved counts), with the time until its
//! ListJobs counts every item again.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use cachebackd_proto::v1 as pb;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::load::Throughput;
use crate::procs::{self, Proc};
use crate::redis_bench::item_data;
use crate::rpc;

/// The job the items belong to.
const JOB: &str = "bench.mem";
/// Bytes of data per item.
pub const ITEM_BYTES: usize = 1024;

/// What the memory run measured.
pub struct Memory {
    /// Items stored.
    pub items: u64,
    /// RSS of the empty daemon (a job registered, one Get served), bytes.
    pub rss_empty: u64,
    /// RSS once the items are stored, bytes.
    pub rss_loaded: u64,
    /// Peak RSS over that run, bytes.
    pub rss_peak: u64,
    /// RSS right after the restarted daemon served its first Get, bytes.
    pub rss_restarted: u64,
    /// The data dir's apparent size and allocated size after a clean stop, bytes.
    pub disk: (u64, u64),
    /// The same of the empty store.
    pub disk_empty: (u64, u64),
    /// The Sets that stored the items.
    pub sets: Throughput,
    /// Start to first Get served, empty store.
    pub first_get_empty: Duration,
    /// Start to first Get served, with the items on disk, after a clean stop.
    pub first_get_loaded: Duration,
    /// Start to first Get served, with the items on disk, after a SIGKILL.
    pub first_get_crashed: Duration,
    /// Start to ListJobs counting every item, after that SIGKILL.
    pub counted_crashed: Duration,
}

impl Memory {
    /// Raw data bytes stored.
    pub fn raw(&self) -> u64 {
        self.items * ITEM_BYTES as u64
    }

    /// RSS growth per item, bytes.
    pub fn rss_per_item(&self) -> f64 {
        self.rss_loaded.saturating_sub(self.rss_empty) as f64 / self.items as f64
    }

    /// On-disk bytes per item (allocated), bytes.
    pub fn disk_per_item(&self) -> f64 {
        self.disk.1.saturating_sub(self.disk_empty.1) as f64 / self.items as f64
    }

    /// For the JSON report.
    pub fn to_json(&self) -> Value {
        json!({
            "items": self.items,
            "item_bytes": ITEM_BYTES,
            "raw_bytes": self.raw(),
            "rss_empty_bytes": self.rss_empty,
            "rss_loaded_bytes": self.rss_loaded,
            "rss_peak_bytes": self.rss_peak,
            "rss_restarted_bytes": self.rss_restarted,
            "rss_per_item_bytes": self.rss_per_item(),
            "disk_apparent_bytes": self.disk.0,
            "disk_allocated_bytes": self.disk.1,
            "disk_empty_allocated_bytes": self.disk_empty.1,
            "disk_per_item_bytes": self.disk_per_item(),
            "sets": self.sets.to_json(),
            "first_get_empty_ms": self.first_get_empty.as_secs_f64() * 1e3,
            "first_get_loaded_ms": self.first_get_loaded.as_secs_f64() * 1e3,
            "first_get_after_sigkill_ms": self.first_get_crashed.as_secs_f64() * 1e3,
            "counted_after_sigkill_ms": self.counted_crashed.as_secs_f64() * 1e3,
        })
    }
}

/// Runs the memory and disk measurement with `items` items in `dir`.
pub async fn run(bin: &Path, dir: &Path, items: u64) -> Result<Memory, String> {
    let data_dir = dir.join("mem-data");
    let log = |n: &str| dir.join(format!("cachebackd-mem-{n}.log"));

    // Empty store: time to the first Get, then register the job and serve one Get.
    let (proc, addr, first_get_empty) = start_timed(bin, &data_dir, log("empty"), None).await?;
    let channels = rpc::channels(addr, 4).await?;
    rpc::register(channels[0].clone(), JOB, rpc::job_config(24.0 * 3600.0)).await?;
    get(&channels[0], 0).await.ok();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_empty = proc.rss_bytes().unwrap_or(0);
    let disk_empty = procs::dir_size(&data_dir);

    eprintln!("  storing {items} items of {ITEM_BYTES} B …");
    let sets = rpc::set_items(&channels, 64, JOB, items, None, |i| {
        item_data(i, ITEM_BYTES)
    })
    .await?;
    // Two flush intervals: what is left to write is written.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_loaded = proc.rss_bytes().unwrap_or(0);
    let rss_peak = proc.peak_rss_bytes().unwrap_or(0);
    drop(channels);
    stop(proc).await?;
    let disk = procs::dir_size(&data_dir);

    let (proc, addr, first_get_loaded) =
        start_timed(bin, &data_dir, log("restart"), Some(items - 1)).await?;
    let rss_restarted = proc.rss_bytes().unwrap_or(0);
    // Let it finish its own start (a count in the background, if any), then crash it.
    counted(&proc, addr, items).await?;
    proc.kill().await?;

    let (proc, addr, first_get_crashed) =
        start_timed(bin, &data_dir, log("crashed"), Some(items - 1)).await?;
    let counted_crashed = counted(&proc, addr, items).await?;
    stop(proc).await?;

    Ok(Memory {
        items,
        rss_empty,
        rss_loaded,
        rss_peak,
        rss_restarted,
        disk,
        disk_empty,
        sets,
        first_get_empty,
        first_get_loaded,
        first_get_crashed,
        counted_crashed,
    })
}

/// Time from `proc`'s start until ListJobs counts `items` items of the job.
async fn counted(proc: &Proc, addr: SocketAddr, items: u64) -> Result<Duration, String> {
    let channel = rpc::channels(addr, 1).await?.remove(0);
    let mut admin = pb::cacheback_admin_client::CachebackAdminClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let jobs = admin
            .list_jobs(pb::ListJobsRequest {})
            .await
            .map_err(|s| format!("ListJobs: {s}"))?
            .into_inner()
            .jobs;
        if jobs.iter().any(|j| j.name == JOB && j.items == items) {
            return Ok(proc.started.elapsed());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "ListJobs did not count {items} items within 10 minutes"
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Starts the daemon and polls until a Get is served: any answer from the service on an
/// empty store (the job is unknown there), the item `expect` FRESH on a loaded one.
async fn start_timed(
    bin: &Path,
    data_dir: &Path,
    log: std::path::PathBuf,
    expect: Option<u64>,
) -> Result<(Proc, SocketAddr, Duration), String> {
    let addr = procs::free_addr();
    let args = vec![
        "--listen".to_string(),
        addr.to_string(),
        "--data-dir".to_string(),
        data_dir.display().to_string(),
    ];
    let mut proc = Proc::spawn("cachebackd", bin, &args, log)?;
    let deadline = proc.started + Duration::from_secs(600);
    loop {
        if let Ok(channels) = rpc::channels(addr, 1).await {
            let served = match expect {
                None => match get(&channels[0], 0).await {
                    Ok(_) => true,
                    // A status from the service itself (not a transport failure).
                    Err(s) => s.code() != tonic::Code::Unavailable,
                },
                Some(i) => get(&channels[0], i)
                    .await
                    .is_ok_and(|r| r.state == pb::ItemState::Fresh as i32),
            };
            if served {
                let took = proc.started.elapsed();
                return Ok((proc, addr, took));
            }
        }
        proc.check_running()?;
        if Instant::now() >= deadline {
            return Err("the daemon served no Get within 10 minutes of starting".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn get(
    channel: &tonic::transport::Channel,
    i: u64,
) -> Result<pb::GetResponse, tonic::Status> {
    let mut client = rpc::client(channel.clone());
    Ok(client
        .get(pb::GetRequest {
            job: JOB.into(),
            args: rpc::args(i),
            fetch_on_miss: Some(false),
            ..Default::default()
        })
        .await?
        .into_inner())
}

async fn stop(proc: Proc) -> Result<(), String> {
    let status = proc.stop(Duration::from_secs(60)).await?;
    if !status.success() {
        return Err(format!("the daemon exited with {status} on SIGTERM"));
    }
    Ok(())
}
