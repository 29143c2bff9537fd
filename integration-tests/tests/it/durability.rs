//! What is kept and for how long: restarts, SIGKILL with `--durability always`, the hard
//! `cache_ttl` and its sweeper, a corrupt store (PROTOCOL.md, "Durability"; DESIGN.md,
//! "Data model in sled").

use std::{fs, path::Path, time::Duration};

use cachebackd_proto::v1::{ItemState, JobConfig};

use crate::harness::*;

const JOB: &str = "durability";

#[tokio::test]
async fn items_and_configs_survive_restart() {
    let mut d = Daemon::start().await;
    let mut c = d.client();
    let cfg = JobConfig {
        fetch_on_miss: Some(false),
        ..job_config(100.0, 5.0)
    };
    let w = TestWorker::register(&d, JOB, cfg).await;
    set(&mut c, JOB, b"[1]", b"\"kept\"".to_vec(), None).await;
    set(&mut c, JOB, b"[2]", b"\"seven\"".to_vec(), Some(dur(7.0))).await;
    let before1 = get(&mut c, JOB, b"[1]").await;
    let before2 = get(&mut c, JOB, b"[2]").await;
    drop(w);

    let status = d.restart().await.expect("was running");
    assert!(status.success(), "clean stop: {status}");
    let mut c = d.client();

    for (args, before) in [(&b"[1]"[..], before1), (b"[2]", before2)] {
        let r = get(&mut c, JOB, args).await;
        assert_eq!(r.state(), ItemState::Fresh);
        assert_eq!(r.data, before.data);
        assert_same_instant(
            r.stored_at.as_ref().unwrap(),
            before.stored_at.as_ref().unwrap(),
            "stored_at survives",
        );
        assert_same_instant(
            r.expires_at.as_ref().unwrap(),
            before.expires_at.as_ref().unwrap(),
            "expires_at survives",
        );
    }
    // The job's config survived too: known job, fetch_on_miss = false, lifetime 100 s.
    let r = get(&mut c, JOB, b"[3]").await;
    assert_eq!(r.state(), ItemState::Miss);
    let s = set(&mut c, JOB, b"[4]", b"4".to_vec(), None).await;
    assert_span(
        seconds_from_now(s.expires_at.as_ref().unwrap()),
        100.0,
        "lifetime",
    );
}

#[tokio::test]
async fn durability_always_survives_sigkill() {
    let mut d = Daemon::builder()
        .args(["--durability", "always"])
        .start()
        .await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;

    set(&mut c, JOB, b"[\"set\"]", b"\"set\"".to_vec(), None).await;
    // A stored fetch result.
    let pending = spawn_get(&c, JOB, b"[\"fetched\"]", None);
    let f = w.next_fetch().await;
    w.reply_value(&f.request_id, b"\"fetched\"".to_vec(), None)
        .await;
    join_get(pending).await.expect("Get");
    // A Delete and an Invalidate.
    set(&mut c, JOB, b"[\"deleted\"]", b"1".to_vec(), None).await;
    assert!(delete(&mut c, JOB, b"[\"deleted\"]").await.found);
    set(&mut c, JOB, b"[\"stale\"]", b"\"stale\"".to_vec(), None).await;
    assert!(invalidate(&mut c, JOB, b"[\"stale\"]").await.found);
    w.next_fetch().await; // the refresh, left unanswered

    let status = d.kill().await;
    assert!(!status.success());
    d.start_again().await;
    let mut c = d.client();

    for (args, data) in [
        (&b"[\"set\"]"[..], &b"\"set\""[..]),
        (b"[\"fetched\"]", b"\"fetched\""),
    ] {
        let r = get_no_wait(&mut c, JOB, args).await;
        assert_eq!(
            r.state(),
            ItemState::Fresh,
            "{}",
            String::from_utf8_lossy(args)
        );
        assert_eq!(r.data, data);
    }
    let r = get_no_wait(&mut c, JOB, b"[\"deleted\"]").await;
    assert_eq!(r.state(), ItemState::Miss, "the Delete survived");
    let r = get_no_wait(&mut c, JOB, b"[\"stale\"]").await;
    assert_eq!(r.state(), ItemState::Stale, "the Invalidate survived");
    assert_eq!(r.data, b"\"stale\"");
}

#[tokio::test]
async fn cache_ttl_item_is_never_served() {
    let d = Daemon::start().await;
    let mut c = d.client();
    // A job's cache_ttl is at least its lifetime; an item's own lifetime may be longer.
    let cfg = JobConfig {
        cache_ttl: Some(dur(2.0)),
        ..job_config(1.0, 30.0)
    };
    let mut w = TestWorker::register(&d, JOB, cfg).await;
    set(
        &mut c,
        JOB,
        b"[1]",
        b"\"short-lived\"".to_vec(),
        Some(dur(300.0)),
    )
    .await;
    let r = get(&mut c, JOB, b"[1]").await;
    assert_eq!(
        r.state(),
        ItemState::Fresh,
        "fresh for 300 s, gone after 2 s"
    );
    let stored_at = r.stored_at.unwrap();

    // The default sweeper runs every 60 s: this is the read path refusing it.
    sleep_until_wall(wall(&stored_at) + Duration::from_millis(2100)).await;
    let r = get_no_wait(&mut c, JOB, b"[1]").await;
    assert_eq!(r.state(), ItemState::Miss, "past cache_ttl: never served");
    assert!(r.data.is_empty());
    let fill = w.next_fetch().await;
    w.reply_error(&fill.request_id, "not now").await;
    w.assert_no_fetch(&c, JOB).await;

    let pending = spawn_get(&c, JOB, b"[1]", None);
    let f = w.next_fetch().await;
    assert_eq!(f.args, b"[1]");
    w.reply_value(&f.request_id, b"\"refetched\"".to_vec(), None)
        .await;
    let r = join_get(pending).await.expect("Get");
    assert_eq!(r.data, b"\"refetched\"");
    assert!(r.fetched);
}

#[tokio::test]
async fn sweeper_removes_items_past_cache_ttl() {
    let d = Daemon::builder()
        .args(["--sweep-interval", "200ms"])
        .start()
        .await;
    let mut c = d.client();
    let short = JobConfig {
        fetch_on_miss: Some(false),
        cache_ttl: Some(dur(1.0)),
        ..job_config(1.0, 30.0)
    };
    let w = TestWorker::register(&d, JOB, short).await;
    set(&mut c, JOB, b"[1]", b"\"swept\"".to_vec(), Some(dur(300.0))).await;
    let stored_at = get(&mut c, JOB, b"[1]").await.stored_at.unwrap();

    // Ten sweeps after the item passed its ttl, with no read of it in between...
    sleep_until_wall(wall(&stored_at) + Duration::from_secs(3)).await;
    // ...then lift the ttl: an item the sweeper had missed would be served again.
    let long = JobConfig {
        fetch_on_miss: Some(false),
        ..job_config(300.0, 30.0)
    };
    let _w2 = TestWorker::register(&d, JOB, long).await;
    drop(w);
    let r = get(&mut c, JOB, b"[1]").await;
    assert_eq!(r.state(), ItemState::Miss, "the sweeper removed the item");
    set(&mut c, JOB, b"[2]", b"2".to_vec(), None).await;
    assert_eq!(get(&mut c, JOB, b"[2]").await.state(), ItemState::Fresh);
}

#[tokio::test]
async fn sweeper_removes_items_of_jobs_that_no_longer_exist() {
    let mut d = Daemon::builder()
        .args(["--sweep-interval", "200ms"])
        .start()
        .await;
    let mut c = d.client();
    let orphaned = "durability.orphaned";
    {
        let _a = TestWorker::register(&d, orphaned, job_config(300.0, 30.0)).await;
        let _b = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
        set(&mut c, orphaned, b"[1]", b"1".to_vec(), None).await;
        set(&mut c, orphaned, b"[2]", b"2".to_vec(), None).await;
        set(&mut c, JOB, b"[1]", b"\"kept\"".to_vec(), None).await;
    }
    assert!(d.stop().await.success());

    // The job's record goes, its items stay: what a job record dropped as corrupt leaves.
    let store = d.data_dir().join("store");
    {
        let db = sled::open(&store).expect("open the stopped daemon's store");
        let jobs = db.open_tree("jobs").expect("jobs tree");
        assert!(jobs.remove(orphaned).expect("remove").is_some());
        db.flush().expect("flush");
    }

    d.start_again().await;
    let mut c = d.client();
    let err = try_get(&mut c, orphaned, b"[1]", None)
        .await
        .expect_err("the job is unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);
    // The sweeper says so for each item it removes.
    eventually(WAIT, || {
        let log = d.stderr_log();
        async move {
            (log.matches("sweeping an item of a job that no longer exists")
                .count()
                == 2)
                .then_some(())
        }
    })
    .await;
    assert!(d.stop().await.success());

    let db = sled::open(&store).expect("reopen the store");
    let items = db.open_tree("items").expect("items tree");
    let keys: Vec<Vec<u8>> = items.iter().keys().map(|k| k.unwrap().to_vec()).collect();
    assert_eq!(
        keys,
        vec![[JOB.as_bytes(), b"\0[1]"].concat()],
        "only the known job's item is left"
    );
}

/// Overwrite every file under `dir` with garbage of the same size (at least 4 KiB).
fn scribble(dir: &Path) -> usize {
    let mut count = 0;
    for entry in fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            count += scribble(&path);
        } else {
            let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0).max(4096);
            let garbage: Vec<u8> = (0..len).map(|i| (i * 7 + 13) as u8 ^ 0xA5).collect();
            fs::write(&path, garbage).expect("overwrite store file");
            count += 1;
        }
    }
    count
}

#[tokio::test]
async fn corrupt_store_is_moved_aside_and_daemon_starts_cold() {
    let mut d = Daemon::start().await;
    let mut c = d.client();
    let w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    set(&mut c, JOB, b"[1]", b"\"precious\"".to_vec(), None).await;
    drop(w);
    assert!(d.stop().await.success());

    assert!(scribble(d.data_dir()) > 0, "the store left files behind");
    d.start_again().await;
    let mut c = d.client();

    // Cold: the job must register again, and the item is gone.
    let _w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    let r = get_no_wait(&mut c, JOB, b"[1]").await;
    assert_eq!(r.state(), ItemState::Miss);
    set(&mut c, JOB, b"[2]", b"2".to_vec(), None).await;
    assert_eq!(get(&mut c, JOB, b"[2]").await.data, b"2");

    let aside: Vec<String> = fs::read_dir(d.data_dir())
        .expect("read data dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("corrupt"))
        .collect();
    assert!(
        !aside.is_empty(),
        "the corrupt store was moved aside in {}",
        d.data_dir().display()
    );
}
