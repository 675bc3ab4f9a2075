//! A copy that goes away and comes back: resync of the dirty chunks only,
//! an interrupted resync, checksum resync and online verify.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use geomirror::replication::{verify, Generations, LinkState, Mode};
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;

use super::common;
use super::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_resync_sends_only_the_dirty_chunks() {
    let dir = common::tempdir();
    // A disk four times the span the load writes to, so that a full copy
    // and a dirty-only resync are far apart.
    let size = 4 * SIZE;
    let (p, c) = (
        make_disk(dir.path(), "prod", size),
        make_disk(dir.path(), "copy", size),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let rx = receiver_on(listener, &c, gens(1)).await;
    let vol = volume(&p, Mode::Sync, gens(1));
    let (link, log) = add(&vol, copy_cfg("site-b", &addr.to_string()));
    settled(&link).await;
    burst(&vol, 3, 4, 10).await;
    settled(&link).await;

    // The copy host goes away mid-load; writes keep completing.
    let load = {
        let vol = vol.clone();
        tokio::spawn(async move { burst(&vol, 4, 4, 30).await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    rx.shutdown().await;
    wait_for("link down", || link.state() == LinkState::Disconnected).await;
    for i in 0..10u64 {
        write(&vol, i * 4 * CHUNK + 100, &[0x5a; 3000]).await;
    }
    load.await.expect("load");
    let dirty = log.dirty_count();
    assert!(
        dirty >= 10,
        "writes during the outage were not marked dirty"
    );

    let listener = TcpListener::bind(addr).await.expect("rebind the copy port");
    let _rx = receiver_on(listener, &c, gens(1)).await;
    settled(&link).await;
    let s = link.stats();
    assert_eq!(
        s.resynced_bytes,
        dirty * CHUNK,
        "resync sent other than the dirty chunks"
    );
    assert!(
        s.resynced_bytes < size / 4,
        "resync copied about the whole disk"
    );
    assert!(same_files(&p, &c), "copy differs after the resync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_dropped_during_its_own_resync_still_converges() {
    let dir = common::tempdir();
    let (p, c) = (
        make_disk(dir.path(), "prod", SIZE),
        make_disk(dir.path(), "copy", SIZE),
    );
    let mut data = vec![0u8; SIZE as usize];
    rand::rngs::StdRng::seed_from_u64(5).fill(&mut data[..]);
    std::fs::write(&p, &data).expect("fill production");
    let rx = receiver(&c, Generations::default()).await;
    let r = relay(rx.local_addr(), None).await;
    let vol = volume(&p, Mode::Sync, gens(1));
    let mut cfg = copy_cfg("site-b", &r.addr);
    cfg.window_bytes_max = 256 * 1024;
    let (link, log) = add(&vol, cfg);
    wait_for("resync under way", || link.stats().resynced_bytes > 0).await;
    let mid = link.stats();
    assert_eq!(
        mid.state,
        LinkState::Inconsistent,
        "a syncing copy is Inconsistent"
    );
    assert!(mid.resync_bytes_to_go > 0 && mid.resync_bytes_to_go < SIZE);
    assert!(mid.resync_rate_bytes_per_s > 0.0);
    assert!(mid.resync_eta_s.is_some_and(|s| s > 0.0));
    r.cut.send_modify(|g| *g += 1);
    burst(&vol, 6, 4, 10).await;
    settled(&link).await;
    assert!(
        r.conns.load(Ordering::SeqCst) >= 2,
        "the link did not reconnect"
    );
    assert!(link.stats().sessions >= 2);
    clean(&log, "no chunk left counted in flight after the drop").await;
    assert!(
        same_files(&p, &c),
        "copy differs after an interrupted resync"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_resync_sends_only_differing_chunks() {
    let dir = common::tempdir();
    let (p, c) = (
        make_disk(dir.path(), "prod", SIZE),
        make_disk(dir.path(), "copy", SIZE),
    );
    let mut data = vec![0u8; SIZE as usize];
    rand::rngs::StdRng::seed_from_u64(9).fill(&mut data[..]);
    std::fs::write(&p, &data).expect("fill production");
    for ch in [1usize, 50, 200] {
        data[ch * CHUNK as usize + 10] ^= 0xff;
    }
    std::fs::write(&c, &data).expect("fill copy");
    let rx = receiver(&c, Generations::default()).await;
    let vol = volume(&p, Mode::Sync, gens(1));
    let mut cfg = copy_cfg("site-b", &rx.local_addr().to_string());
    cfg.checksum_resync = true;
    let (link, _log) = add(&vol, cfg);
    settled(&link).await;
    let s = link.stats();
    assert_eq!(
        s.resynced_bytes,
        3 * CHUNK,
        "checksum resync sent chunks that were equal"
    );
    assert_eq!(s.resync_chunks_skipped, SIZE / CHUNK - 3);
    assert!(same_files(&p, &c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_exactly_the_corrupted_chunks() {
    let dir = common::tempdir();
    let (p, c) = (
        make_disk(dir.path(), "prod", SIZE),
        make_disk(dir.path(), "copy", SIZE),
    );
    let rx = receiver(&c, Generations::default()).await;
    let vol = volume(&p, Mode::Sync, gens(1));
    let (link, _log) = add(&vol, copy_cfg("site-b", &rx.local_addr().to_string()));
    burst(&vol, 8, 4, 20).await;
    settled(&link).await;
    let clean = verify(&link).await.expect("verify");
    assert_eq!(clean.differing, Vec::<u64>::new());
    assert_eq!(clean.chunks_compared, SIZE / CHUNK);
    let copy = OpenOptions::new().write(true).open(&c).expect("open copy");
    let bad = [3u64, 100, 255];
    for &ch in &bad {
        copy.write_all_at(&[0xee; 7], ch * CHUNK + 1234)
            .expect("corrupt copy");
    }
    let report = verify(&link).await.expect("verify");
    assert_eq!(report.differing, bad.to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synced_copy_takes_the_generation_and_later_resyncs_partially() {
    let dir = common::tempdir();
    let (p, c) = (
        make_disk(dir.path(), "prod", SIZE),
        make_disk(dir.path(), "copy", SIZE),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let rx = receiver_on(listener, &c, Generations::default()).await;
    let vol = volume(&p, Mode::Sync, gens(42));
    let (link, _log) = add(&vol, copy_cfg("site-b", &addr.to_string()));
    settled(&link).await;
    assert_eq!(
        link.stats().resynced_bytes,
        SIZE,
        "a fresh copy gets a full sync"
    );
    let label = rx.generations();
    assert_eq!(
        label.current, 42,
        "the synced copy holds production's generation"
    );

    // The copy host restarts with the generations it persisted.
    rx.shutdown().await;
    wait_for("link down", || link.state() == LinkState::Disconnected).await;
    write(&vol, 5 * CHUNK, &[1u8; 4096]).await;
    write(&vol, 9 * CHUNK, &[2u8; 4096]).await;
    let listener = TcpListener::bind(addr).await.expect("rebind the copy port");
    let _rx = receiver_on(listener, &c, label).await;
    settled(&link).await;
    assert_eq!(
        link.stats().resynced_bytes,
        2 * CHUNK,
        "reconnect after the sync was not partial"
    );
    assert!(same_files(&p, &c));
}
