//! The memory figures of docs/BENCHMARKS.md ("Memory bounds"), through the real binary:
//! the daemon's RSS (`VmRSS`, `VmHWM` from /proc) while 500 workers each have a 4 MiB
//! answer on its way, and while 200 Gets of a 4 MiB item go unread (a zero HTTP/2 window),
//! each with the default budget and with the budget set out of reach (`1TiB`: as before
//! it). A bench-like example, not a test: it asserts nothing.
//!
//! `cargo run -p integration-tests --example memory_figures` (uses `$CACHEBACKD_BIN`, or
//! builds the debug binary as the tests do).

#[allow(unused_imports)]
#[path = "../tests/it/harness.rs"]
mod harness;

#[allow(unused_imports)]
#[path = "../tests/it/bounds_support.rs"]
mod bounds_support;

#[allow(unused_imports)]
#[path = "../tests/it/ops_support.rs"]
mod ops_support;

#[allow(unused_imports)]
#[path = "../tests/it/raw_grpc.rs"]
mod raw_grpc;

use std::time::Duration;

use cachebackd_proto::v1::GetRequest;

use bounds_support::proc_kib;
use harness::*;

const MIB: usize = 1024 * 1024;

async fn daemon(args: &[&str]) -> (Daemon, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::builder()
        .args(args)
        .args(["--metrics-listen", &metrics])
        .start()
        .await;
    (d, metrics)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// 500 workers on one connection each send a 4 MiB answer but for its last KiB.
async fn answers(budget: &str) {
    const WORKERS: usize = 500;
    let (d, metrics) = daemon(&["--max-answer-bytes", budget]).await;
    let pid = d.pid().unwrap();
    let mut conn = raw_grpc::connect(d.port(), 65_535).await;
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        workers.push(raw_grpc::raw_worker(&mut conn, "mem", 1).await);
    }
    let before = proc_kib(pid, "VmRSS");
    let answer = value_msg(&uuid::Uuid::new_v4().to_string(), vec![9u8; 4 * MIB], None);
    let mut rests = Vec::new();
    for (send, _) in &mut workers {
        let (sent, rest) = raw_grpc::framed_split(&answer, 1024);
        send.send(sent, false).await;
        rests.push(rest);
    }
    let during = proc_kib(pid, "VmRSS");
    let refused = ops_support::scrape(&metrics)
        .await
        .get("cachebackd_answers_refused_total");
    for ((send, _), rest) in workers.iter_mut().zip(rests) {
        send.send(rest, false).await;
    }
    while ops_support::scrape(&metrics)
        .await
        .get("cachebackd_answers_held_bytes")
        != 0.0
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = proc_kib(pid, "VmRSS");
    println!(
        "answers, max_answer_bytes {budget}: {WORKERS} x 4 MiB on their way: RSS {:.1} -> {:.1} MiB ({refused} refused); all done: {:.1} MiB; peak {:.1} MiB",
        mib(before),
        mib(during),
        mib(after),
        mib(proc_kib(pid, "VmHWM"))
    );
}

/// 200 Gets of a 4 MiB item on a connection with a zero window.
async fn unsent(budget: &str) {
    const STREAMS: usize = 200;
    let (d, _metrics) = daemon(&["--max-unsent-bytes", budget]).await;
    let pid = d.pid().unwrap();
    let _w = TestWorker::register(&d, "slow", job_config(3600.0, 30.0)).await;
    let mut c = d.client();
    set(&mut c, "slow", "[\"big\"]", vec![7u8; 4 * MIB], None).await;
    let before = proc_kib(pid, "VmRSS");
    let mut slow = raw_grpc::connect(d.port(), 0).await;
    let request = GetRequest {
        job: "slow".into(),
        args: b"[\"big\"]".to_vec(),
        ..Default::default()
    };
    let mut calls = Vec::new();
    for _ in 0..STREAMS {
        let (mut send, response) = raw_grpc::open(&mut slow, raw_grpc::GET).await;
        send.send(raw_grpc::framed(&request), true).await;
        calls.push((send, response));
    }
    let mut pinned = Vec::new();
    for (send, response) in calls {
        let opened = raw_grpc::opened(response).await;
        if opened.grpc_status.is_none() {
            pinned.push((send, opened));
        }
    }
    let during = proc_kib(pid, "VmRSS");
    let per = (during.saturating_sub(before)) as f64 / pinned.len().max(1) as f64;
    println!(
        "unread Gets, max_unsent_bytes {budget}: {STREAMS} x 4 MiB: RSS {:.1} -> {:.1} MiB, {} pinned ({:.0} KiB each), {} refused",
        mib(before),
        mib(during),
        pinned.len(),
        per,
        STREAMS - pinned.len()
    );
}

#[tokio::main]
async fn main() {
    answers("256MiB").await;
    answers("1TiB").await;
    unsent("512MiB").await;
    unsent("1TiB").await;
}
