//! Full sync in large requests: runs of dirty chunks travel as one frame,
//! zero runs as ranges, and a resync run never overwrites a newer write.

use std::sync::atomic::Ordering;

use geomirror::replication::{Generations, LinkState, Mode};
use rand::{Rng, SeedableRng};

use super::common;
use super::harness::*;

/// Largest resync request (the wire's page bound).
const REQUEST_BYTES_MAX: u64 = 4 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sync_coalesces_runs_and_sends_zero_runs_as_ranges() {
    let dir = common::tempdir();
    let (p, c) = (
        make_disk(dir.path(), "prod", SIZE),
        make_disk(dir.path(), "copy", SIZE),
    );
    // Production: random data in the first half, zeroes in the second. The
    // copy starts full of garbage, so a zero run that is skipped instead of
    // written leaves it different.
    let mut data = vec![0u8; SIZE as usize];
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    rng.fill(&mut data[..(SIZE / 2) as usize]);
    std::fs::write(&p, &data).expect("fill production");
    let garbage = vec![0xa5u8; SIZE as usize];
    std::fs::write(&c, &garbage).expect("fill copy");

    let rx = receiver(&c, Generations::default()).await;
    let vol = volume(&p, Mode::Sync, gens(1));
    let (link, log) = add(&vol, copy_cfg("site-b", &rx.local_addr().to_string()));
    settled(&link).await;

    let s = link.stats();
    assert_eq!(s.resynced_bytes, SIZE, "every byte counted once");
    assert_eq!(log.dirty_count(), 0);
    let frames = rx.stats().writes_applied.load(Ordering::Relaxed);
    assert_eq!(
        frames,
        (SIZE / 2).div_ceil(REQUEST_BYTES_MAX),
        "the random half went as whole runs, the zero half without pages"
    );
    assert_eq!(
        rx.stats().bytes_written.load(Ordering::Relaxed),
        SIZE / 2,
        "zero runs carried pages"
    );
    assert!(same_files(&p, &c), "copy differs after the full sync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_full_sync_are_never_overwritten_by_resync_runs() {
    let dir = common::tempdir();
    // Four times the span the burst writes to: a longer resync to land in.
    let size = 4 * SIZE;
    let (p, c) = (
        make_disk(dir.path(), "prod", size),
        make_disk(dir.path(), "copy", size),
    );
    let mut data = vec![0u8; size as usize];
    rand::rngs::StdRng::seed_from_u64(12).fill(&mut data[..]);
    std::fs::write(&p, &data).expect("fill production");
    let rx = receiver(&c, Generations::default()).await;
    let vol = volume(&p, Mode::Sync, gens(1));
    // A window of one request: the resync is slow enough for the writes
    // below to land in runs still being read, queued or sent.
    let mut cfg = copy_cfg("site-b", &rx.local_addr().to_string());
    cfg.window_bytes_max = REQUEST_BYTES_MAX as u32;
    let (link, _log) = add(&vol, cfg);
    wait_for("resync under way", || link.stats().resynced_bytes > 0).await;
    assert_eq!(link.state(), LinkState::Inconsistent);
    burst(&vol, 21, 4, 40).await;
    // The last word on every chunk, written while the resync still runs.
    for i in 0..size / CHUNK {
        write(&vol, i * CHUNK + 512, &[i as u8 ^ 0x3c; 1024]).await;
    }
    settled(&link).await;
    assert!(same_files(&p, &c), "a resync run overwrote a newer write");
}
