//! Bursts of concurrent writes in sync and async mode, write ordering,
//! ranges (trim, zeroes) and two copies: the copies end byte-identical.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use geomirror::replication::{Generations, Mode};
use geomirror::storage::{self, BlockDevice, IoBuf, Request};

use super::common;
use super::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_burst_leaves_copy_byte_identical() {
    let dir = common::tempdir();
    let (p, c) = (
        make_disk(dir.path(), "prod", SIZE),
        make_disk(dir.path(), "copy", SIZE),
    );
    let rx = receiver(&c, Generations::default()).await;
    let vol = volume(&p, Mode::Sync, gens(1));
    let (link, log) = add(&vol, copy_cfg("site-b", &rx.local_addr().to_string()));
    settled(&link).await;
    burst(&vol, 1, 16, 40).await;
    settled(&link).await;
    assert!(
        same_files(&p, &c),
        "copy differs from production after a sync burst"
    );
    clean(
        &log,
        "acknowledged writes to leave no dirty mark once flushed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_burst_leaves_copy_byte_identical_within_window() {
    let dir = common::tempdir();
    let (p, c) = (
        make_disk(dir.path(), "prod", SIZE),
        make_disk(dir.path(), "copy", SIZE),
    );
    let rx = receiver(&c, Generations::default()).await;
    let vol = volume(&p, Mode::Async, gens(1));
    let mut cfg = copy_cfg("site-b", &rx.local_addr().to_string());
    cfg.window_bytes_max = 512 * 1024;
    let (link, _log) = add(&vol, cfg);
    settled(&link).await;
    let watcher = {
        let link = link.clone();
        tokio::spawn(async move {
            let mut max = 0;
            for _ in 0..200 {
                max = max.max(link.stats().lag_bytes);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            max
        })
    };
    burst(&vol, 2, 16, 40).await;
    let lag_max = watcher.await.expect("watcher");
    assert!(
        lag_max <= 512 * 1024,
        "unacknowledged bytes {lag_max} exceed the window"
    );
    settled(&link).await;
    assert!(
        same_files(&p, &c),
        "copy differs from production after an async burst"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_write_is_on_the_copy_when_it_completes() {
    let dir = common::tempdir();
    let (p, c) = (
        make_disk(dir.path(), "prod", SIZE),
        make_disk(dir.path(), "copy", SIZE),
    );
    let rx = receiver(&c, gens(1)).await;
    let vol = volume(&p, Mode::Sync, gens(1));
    let (link, _log) = add(&vol, copy_cfg("site-b", &rx.local_addr().to_string()));
    settled(&link).await;
    let copy = File::open(&c).expect("open copy");
    for i in 0..20u64 {
        let data = vec![i as u8 + 1; 4096];
        write(&vol, i * 8192, &data).await;
        let mut back = vec![0u8; 4096];
        copy.read_exact_at(&mut back, i * 8192).expect("read copy");
        assert_eq!(back, data, "write {i} completed before the copy had it");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_writes_reach_the_copy_in_order() {
    let dir = common::tempdir();
    let (p, c) = (
        make_disk(dir.path(), "prod", SIZE),
        make_disk(dir.path(), "copy", SIZE),
    );
    let rx = receiver(&c, gens(1)).await;
    for mode in [Mode::Sync, Mode::Async] {
        let vol = volume(&p, mode, gens(1));
        let (link, _log) = add(&vol, copy_cfg("site-b", &rx.local_addr().to_string()));
        settled(&link).await;
        // 64 writes to the same block (and a neighbour overlap), all in
        // flight at once: the last one submitted must win everywhere.
        let mut waits = Vec::new();
        for i in 0..64u8 {
            let (tx, wait) = tokio::sync::oneshot::channel();
            let len = if i % 2 == 0 { 4096 } else { 8192 };
            vol.submit(
                Request::Write {
                    offset: 4096,
                    data: IoBuf::from_slice(&vec![i; len]),
                    fua: false,
                },
                tx,
            );
            waits.push(wait);
        }
        for w in waits {
            w.await.expect("answered").expect("write");
        }
        settled(&link).await;
        let copy = std::fs::read(&c).expect("read copy");
        assert!(
            copy[4096..12288].iter().all(|&b| b == 63),
            "copy holds an earlier write ({mode:?})"
        );
        assert!(same_files(&p, &c));
        vol.remove_copy("site-b");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_and_zeroes_are_replicated_as_ranges() {
    let dir = common::tempdir();
    let (p, c) = (
        make_disk(dir.path(), "prod", SIZE),
        make_disk(dir.path(), "copy", SIZE),
    );
    let rx = receiver(&c, gens(1)).await;
    let vol = volume(&p, Mode::Sync, gens(1));
    let (link, _log) = add(&vol, copy_cfg("site-b", &rx.local_addr().to_string()));
    settled(&link).await;
    write(&vol, 0, &vec![9u8; 4 << 20]).await;
    let sent = link.stats().bytes_sent;
    let zero = Request::WriteZeroes {
        offset: 1 << 20,
        len: 1 << 20,
        punch: false,
    };
    storage::call(&*vol, zero).await.expect("write zeroes");
    storage::call(
        &*vol,
        Request::Trim {
            offset: 3 << 20,
            len: 1 << 20,
        },
    )
    .await
    .expect("trim");
    settled(&link).await;
    assert!(same_files(&p, &c));
    let copy = std::fs::read(&c).expect("read copy");
    assert!(copy[(1 << 20)..(2 << 20)].iter().all(|&b| b == 0));
    assert_eq!(
        link.stats().bytes_sent,
        sent,
        "zeroes were sent as pages, not ranges"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_copies_both_end_identical() {
    let dir = common::tempdir();
    let p = make_disk(dir.path(), "prod", SIZE);
    let (c1, c2) = (
        make_disk(dir.path(), "c1", SIZE),
        make_disk(dir.path(), "c2", SIZE),
    );
    let rx1 = receiver(&c1, Generations::default()).await;
    let rx2 = receiver(&c2, Generations::default()).await;
    let vol = volume(&p, Mode::Sync, gens(1));
    let (l1, _) = add(&vol, copy_cfg("site-b", &rx1.local_addr().to_string()));
    let (l2, _) = add(&vol, copy_cfg("site-c", &rx2.local_addr().to_string()));
    burst(&vol, 7, 8, 30).await;
    settled(&l1).await;
    settled(&l2).await;
    assert!(same_files(&p, &c1), "first copy differs");
    assert!(same_files(&p, &c2), "second copy differs");
}
