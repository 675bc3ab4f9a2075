//! A copy disk that fails writes, for real: a sparse copy image on a small
//! tmpfs runs out of space. The link shows `DiskFailed` with the errno and
//! offset, retries slowly, production keeps marking every write for it, and
//! the copy resyncs once its file system has room.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use geomirror::replication::{LinkState, Mode};

use super::common;
use super::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_disk_out_of_space_is_disk_failed_then_resyncs_once_it_has_room() {
    if !common::require_root() || !common::require(&["mount", "umount"]) {
        return;
    }
    let dir = common::tempdir();
    let fs = common::Tmpfs::mount(&dir.path().join("fs"), "4M");
    let p = make_disk(dir.path(), "prod", SIZE);
    // 16 MiB, sparse, on a 4 MiB file system.
    let c = make_disk(&fs.0, "copy", SIZE);
    let rx = receiver(&c, gens(1)).await;
    let vol = volume(&p, Mode::Sync, gens(1));
    let (link, log) = add(&vol, copy_cfg("site-b", &rx.local_addr().to_string()));
    settled(&link).await;

    // Every write is acknowledged to the client; the copy takes 4 MiB.
    for i in 0..8u8 {
        write(&vol, u64::from(i) << 20, &vec![i + 1; 1 << 20]).await;
    }
    wait_for("the copy shown DiskFailed", || {
        link.stats().state == LinkState::DiskFailed
    })
    .await;
    let f = link.disk_failure().expect("a recorded failure");
    assert_eq!(f.errno, libc::ENOSPC, "{f:?}");
    assert!(
        (2 << 20..8 << 20).contains(&f.offset) && f.len > 0,
        "the failed write lies where the file system filled up: {f:?}"
    );
    let s = link.stats();
    assert_eq!(s.disk_failure, Some(f.clone()));
    assert!(rx.stats().disk_failures.load(Ordering::Relaxed) > 0);
    assert!(s.last_error.unwrap_or_default().contains("ENOSPC"));

    // Production keeps marking what the copy lacks.
    write(&vol, 12 << 20, &[9u8; 4096]).await;
    assert!(log.dirty_count() > 0);

    // Retried about every second at first, then less often: never at the
    // network's pace (a 50 ms backoff would give dozens of sessions).
    let (t0, sessions0) = (Instant::now(), link.stats().sessions);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let retries = link.stats().sessions - sessions0;
    assert!(
        retries <= 3,
        "{retries} sessions in {:?} while the disk fails",
        t0.elapsed()
    );
    assert_eq!(
        link.stats().state,
        LinkState::DiskFailed,
        "kept through retries"
    );

    fs.resize("64M");
    settled(&link).await;
    assert_eq!(link.disk_failure(), None);
    assert!(same_files(&p, &c), "the copy differs after it resynced");
}
