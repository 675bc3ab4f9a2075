//! Faults between the hosts: a flipped bit on the wire, a wrong secret,
//! and split brain; each refused, nothing corrupt written.

use std::sync::atomic::Ordering;

use geomirror::replication::{Generations, LinkState, Mode};

use super::common;
use super::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bit_is_detected_never_written_and_recovered() {
    let dir = common::tempdir();
    let (p, c) = (
        make_disk(dir.path(), "prod", SIZE),
        make_disk(dir.path(), "copy", SIZE),
    );
    let rx = receiver(&c, gens(1)).await;
    // Same generation and a clean log: nothing to resync, so the first
    // frame after the handshake is our 1 MiB page, and byte 64 Ki of the
    // stream lies inside it.
    let r = relay(rx.local_addr(), Some(64 * 1024)).await;
    let vol = volume(&p, Mode::Sync, gens(1));
    let (link, _log) = add(&vol, copy_cfg("site-b", &r.addr));
    settled(&link).await;
    write(&vol, 0, &vec![0xaa; 1 << 20]).await;
    settled(&link).await;
    assert!(
        rx.stats().refused.load(Ordering::Relaxed) >= 1,
        "corrupt frame not refused"
    );
    let why = rx.stats().last_error().unwrap_or_default();
    assert!(why.contains("crc32"), "refused for another reason: {why}");
    let copy = std::fs::read(&c).expect("read copy");
    assert!(!copy.contains(&0xab), "the copy holds the flipped byte");
    assert!(
        same_files(&p, &c),
        "copy differs after recovering from a corrupt frame"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_refused_and_nothing_written() {
    let dir = common::tempdir();
    let (p, c) = (
        make_disk(dir.path(), "prod", SIZE),
        make_disk(dir.path(), "copy", SIZE),
    );
    let rx = receiver(&c, Generations::default()).await;
    let vol = volume(&p, Mode::Sync, gens(1));
    let mut cfg = copy_cfg("site-b", &rx.local_addr().to_string());
    cfg.secret = b"not the secret".to_vec();
    let (link, log) = add(&vol, cfg);
    wait_for("refusal", || {
        rx.stats().refused.load(Ordering::Relaxed) >= 1
    })
    .await;
    // The production host keeps serving; the copy just stays behind.
    write(&vol, 0, &[1u8; 4096]).await;
    assert_eq!(link.state(), LinkState::Disconnected);
    assert!(log.dirty_count() > 0);
    assert_eq!(rx.stats().bytes_written.load(Ordering::Relaxed), 0);
    assert!(rx
        .stats()
        .last_error()
        .unwrap_or_default()
        .contains("secret"));
    assert!(std::fs::read(&c).expect("read").iter().all(|&b| b == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_brain_is_refused_and_nothing_written() {
    let dir = common::tempdir();
    let (p, c) = (
        make_disk(dir.path(), "prod", SIZE),
        make_disk(dir.path(), "copy", SIZE),
    );
    std::fs::write(&c, vec![3u8; SIZE as usize]).expect("fill copy");
    let prod = Generations {
        current: 6,
        bitmap: 5,
        history: [4, 0],
    };
    let copy = Generations {
        current: 7,
        bitmap: 5,
        history: [4, 0],
    };
    let rx = receiver(&c, copy).await;
    let vol = volume(&p, Mode::Sync, prod);
    let (link, _log) = add(&vol, copy_cfg("site-b", &rx.local_addr().to_string()));
    wait_for("split brain", || link.state() == LinkState::SplitBrain).await;
    write(&vol, 0, &[1u8; 4096]).await;
    let why = link.stats().last_error.unwrap_or_default();
    assert!(why.contains("split brain"), "unclear error: {why}");
    assert_eq!(rx.stats().bytes_written.load(Ordering::Relaxed), 0);
    assert!(std::fs::read(&c).expect("read").iter().all(|&b| b == 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_fences_a_production_host_of_an_older_epoch() {
    let dir = common::tempdir();
    let (p, c) = (
        make_disk(dir.path(), "prod", SIZE),
        make_disk(dir.path(), "copy", SIZE),
    );
    let rx = receiver(&c, gens(1)).await;
    // The group moved on: the copy host knows a newer epoch.
    rx.epoch().store(EPOCH + 2, Ordering::SeqCst);
    let vol = volume(&p, Mode::Sync, gens(1));
    let (link, log) = add(&vol, copy_cfg("site-b", &rx.local_addr().to_string()));
    wait_for("fencing", || {
        rx.stats().refused.load(Ordering::Relaxed) >= 1
    })
    .await;
    write(&vol, 0, &[1u8; 4096]).await;
    assert_ne!(link.state(), LinkState::UpToDate);
    assert!(rx
        .stats()
        .last_error()
        .unwrap_or_default()
        .contains("stale epoch"));
    assert_eq!(rx.stats().bytes_written.load(Ordering::Relaxed), 0);
    assert!(log.dirty_count() > 0, "the fenced write is kept dirty");

    // Once this host is confirmed in the newer epoch, mirroring resumes.
    vol.set_epoch(EPOCH + 2);
    settled(&link).await;
    assert!(same_files(&p, &c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_link_times_out_and_a_new_session_takes_over() {
    let dir = common::tempdir();
    let (p, c) = (
        make_disk(dir.path(), "prod", SIZE),
        make_disk(dir.path(), "copy", SIZE),
    );
    let rx = receiver(&c, gens(1)).await;
    let r = relay(rx.local_addr(), None).await;
    let vol = volume(&p, Mode::Sync, gens(1));
    let mut cfg = copy_cfg("site-b", &r.addr);
    cfg.ack_timeout_ms = 500;
    let (link, log) = add(&vol, cfg);
    settled(&link).await;
    // The network goes silent without closing: a sync write must still
    // complete once the ack deadline drops the link.
    r.stall.send_modify(|g| *g += 1);
    write(&vol, 3 * CHUNK, &[4u8; 8192]).await;
    write(&vol, 7 * CHUNK, &[5u8; 8192]).await;
    settled(&link).await;
    assert!(link.stats().sessions >= 2, "the link did not reconnect");
    assert!(rx.stats().sessions.load(Ordering::Relaxed) >= 2);
    assert!(same_files(&p, &c), "copy differs after the takeover");
    assert_eq!(
        log.dirty_count(),
        0,
        "a chunk stayed dirty after the copy caught up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_attempts_are_bounded_when_asked() {
    let dir = common::tempdir();
    let p = make_disk(dir.path(), "prod", SIZE);
    let vol = volume(&p, Mode::Sync, gens(1));
    // A port nobody listens on.
    let addr = format!("127.0.0.1:{}", common::free_port());
    let mut cfg = copy_cfg("site-b", &addr);
    cfg.reconnect_attempts_max = Some(3);
    let (link, log) = add(&vol, cfg);
    wait_for("the link to give up", || link.state() == LinkState::Stopped).await;
    let why = link.stats().last_error.unwrap_or_default();
    assert!(why.contains("gave up after 3"), "unexpected: {why}");
    write(&vol, 0, &[1u8; 4096]).await;
    assert!(log.dirty_count() > 0, "writes to a stopped copy stay dirty");
}
