//! The store is never moved aside unless it is proven damaged, and damage costs only what
//! is damaged: a second daemon, a read-only or unreadable store, a garbled `conf`, a flipped
//! byte in the log.

use std::path::Path;

use cachebackd_proto::v1::{get_result::Outcome, GetManyRequest, GetRequest, ItemState};

use crate::bounds_support::*;
use crate::harness::*;

const JOB: &str = "damage";

fn data(i: usize) -> Vec<u8> {
    format!("{i:04}").repeat(75).into_bytes()
}

/// A daemon with `n` items of [`JOB`] set.
async fn daemon_with_items(n: usize) -> Daemon {
    let d = Daemon::start().await;
    let w = TestWorker::register(&d, JOB, job_config(3600.0, 30.0)).await;
    let mut c = d.client();
    for i in 0..n {
        set(&mut c, JOB, format!("[{i}]"), data(i), None).await;
    }
    drop(w);
    d
}

/// Which of the first `n` items the daemon serves (peeking: nothing is fetched), each
/// checked to be exactly what was set.
async fn items_served(d: &Daemon, n: usize) -> usize {
    let mut c = d.client();
    let mut served = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let requests = chunk
            .iter()
            .map(|i| GetRequest {
                job: JOB.into(),
                args: format!("[{i}]").into_bytes(),
                peek: true,
                ..Default::default()
            })
            .collect();
        let results = c
            .get_many(GetManyRequest { requests })
            .await
            .expect("GetMany")
            .into_inner()
            .results;
        for (i, r) in chunk.iter().zip(results) {
            match r.outcome {
                Some(Outcome::Response(r)) if r.state == ItemState::Miss as i32 => {}
                Some(Outcome::Response(r)) => {
                    assert_eq!(r.data, data(*i), "item {i} is served with other data");
                    served += 1;
                }
                // The job itself may be gone with the damage.
                Some(Outcome::Error(e)) => {
                    assert_eq!(e.code, tonic::Code::NotFound as i32, "{e:?}")
                }
                None => panic!("an empty GetResult"),
            }
        }
    }
    served
}

/// The number after `field=` in the daemon's damage report, if it made one.
fn reported(stderr: &str, field: &str) -> Option<u64> {
    let line = stderr
        .lines()
        .find(|l| l.contains("THE STORE WAS DAMAGED"))?;
    let at = line.find(&format!("{field}="))? + field.len() + 1;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[tokio::test]
async fn a_second_daemon_on_the_same_data_dir_exits_and_the_first_keeps_its_store() {
    let mut d = daemon_with_items(50).await;
    let (status, stderr) = run_to_exit(d.data_dir(), &[], None).await;
    assert!(!status.success(), "the second daemon ran: {stderr}");
    let expected = format!("another cachebackd holds {}", d.data_dir().display());
    assert!(stderr.contains(&expected), "{stderr}");
    assert_eq!(quarantined(d.data_dir()), Vec::<String>::new());
    assert_eq!(items_served(&d, 50).await, 50);
    d.restart().await;
    assert_eq!(items_served(&d, 50).await, 50, "after a restart");
    assert!(!d.stderr_log().contains("THE STORE WAS DAMAGED"));
}

#[tokio::test]
async fn a_read_only_store_is_an_exit_naming_the_error_and_is_left_alone() {
    let mut d = daemon_with_items(20).await;
    d.stop().await;
    let store = d.data_dir().join("store");
    let (status, stderr) = if is_root() {
        let _ro = ReadOnly::bind(d.data_dir());
        run_to_exit(d.data_dir(), &[], None).await
    } else {
        chmod_all(&store, 0o555, 0o444);
        let r = run_to_exit(d.data_dir(), &[], None).await;
        chmod_all(&store, 0o755, 0o644);
        r
    };
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("Read-only file system") || stderr.contains("Permission denied"),
        "the OS error is named: {stderr}"
    );
    assert!(stderr.contains("it is left as it is"), "{stderr}");
    assert_eq!(quarantined(d.data_dir()), Vec::<String>::new());
    d.start_again().await;
    assert_eq!(items_served(&d, 20).await, 20);
}

#[tokio::test]
async fn an_unreadable_store_is_an_exit_naming_the_error_and_is_left_alone() {
    let mut d = daemon_with_items(20).await;
    d.stop().await;
    let store = d.data_dir().join("store");
    let (status, stderr) = if is_root() {
        // Root reads everything: the daemon runs as nobody, beside a store only root owns.
        use std::os::unix::fs::PermissionsExt;
        for dir in [d.data_dir().parent().unwrap(), d.data_dir()] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        run_to_exit(d.data_dir(), &[], Some(65534)).await
    } else {
        chmod_all(&store, 0o700, 0o000);
        let r = run_to_exit(d.data_dir(), &[], None).await;
        chmod_all(&store, 0o755, 0o644);
        r
    };
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("Permission denied"),
        "the OS error is named: {stderr}"
    );
    assert_eq!(quarantined(d.data_dir()), Vec::<String>::new());
    d.start_again().await;
    assert_eq!(items_served(&d, 20).await, 20);
}

#[tokio::test]
async fn a_garbled_conf_alone_loses_no_item() {
    let mut d = daemon_with_items(500).await;
    d.stop().await;
    std::fs::write(d.data_dir().join("store/conf"), vec![0xA5; 62]).unwrap();
    d.start_again().await;
    assert_eq!(
        quarantined(d.data_dir()).len(),
        1,
        "the damaged store is kept aside"
    );
    let log = d.stderr_log();
    assert_eq!(reported(&log, "kept_items"), Some(500), "{log}");
    assert_eq!(reported(&log, "kept_jobs"), Some(1), "{log}");
    assert_eq!(items_served(&d, 500).await, 500);
}

/// sled 0.34 reads a flipped byte late in its log as a torn tail (it drops what follows,
/// silently), and one earlier in it as damage (it panics). Either way every item the daemon
/// then serves is exactly what was set, and damage is quarantined with a report of what
/// salvage kept, which is exactly what is served (how much can be read back varies with
/// where the byte fell: salvage keeps the longest part of the log that sled can replay).
#[tokio::test]
async fn a_flipped_byte_costs_only_what_cannot_be_read() {
    const N: usize = 3000;
    let mut d = daemon_with_items(N).await;
    d.stop().await;
    let original = d.data_dir().join("store");
    let len = std::fs::metadata(original.join("db")).unwrap().len() as usize;
    let mut damaged = 0;
    for tenth in 3..=9 {
        let scratch = tempfile::tempdir().unwrap();
        let copy = scratch.path().join("store");
        copy_dir(&original, &copy);
        let mut bytes = std::fs::read(copy.join("db")).unwrap();
        for b in &mut bytes[len * tenth / 10..][..16] {
            *b ^= 0xFF;
        }
        std::fs::write(copy.join("db"), bytes).unwrap();
        let d = Daemon::builder().data_dir(scratch.path()).start().await;
        let served = items_served(&d, N).await;
        let log = d.stderr_log();
        if let Some(kept) = reported(&log, "kept_items") {
            damaged += 1;
            assert_eq!(served as u64, kept, "at {tenth}/10: {log}");
            assert!(reported(&log, "lost_records").is_some(), "{log}");
            assert!(reported(&log, "unread_log_bytes").is_some(), "{log}");
            assert_eq!(quarantined(scratch.path()).len(), 1);
        } else {
            assert!(
                served > 0,
                "at {tenth}/10 every item is gone unreported: {log}"
            );
        }
    }
    assert!(damaged > 0, "no flipped byte was found to be damage");
}

fn chmod_all(dir: &Path, dir_mode: u32, file_mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file_mode)).unwrap();
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode)).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}
