//! The calling-thread fast path through the layers above the engine: the
//! fence must refuse on it what it refuses on the queued path, and a copy
//! host applying lone writes and flushes inline must end byte-identical.

use std::sync::Arc;
use std::time::{Duration, Instant};

use geomirror::node::fence::{FenceGate, FencedDevice};
use geomirror::replication::{MirroredVolume, Mode, Receiver, ReceiverConfig, VolumeConfig};
use geomirror::storage::uring::{UringEngine, UringOptions};
use geomirror::storage::{self, BlockDevice, Inline, IoBuf, Request};
use tokio::net::TcpListener;

use super::harness::*;

fn uring_disk(dir: &std::path::Path) -> Arc<dyn BlockDevice> {
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dir.join("d"))
        .expect("create disk");
    file.set_len(1 << 20).expect("size disk");
    Arc::new(UringEngine::new(file, 1 << 20, UringOptions::default()).expect("uring engine"))
}

fn a_write() -> Request {
    Request::Write {
        offset: 4096,
        data: IoBuf::from_slice(&[0x6b; 4096]),
        fua: false,
    }
}

#[test]
fn fenced_device_runs_open_writes_inline_and_declines_fenced_ones() {
    let dir = crate::common::tempdir();
    let gate = Arc::new(FenceGate::default());
    gate.set_serving(true);
    gate.extend_to(Instant::now() + Duration::from_secs(60));
    let dev = FencedDevice::new(uring_disk(dir.path()), gate.clone());

    // Inside the lease, idle ring: a small write and a flush run on this thread.
    assert!(dev.inline_ready(&a_write()));
    assert!(matches!(dev.run_inline(a_write()), Inline::Done(Ok(_))));
    assert!(matches!(
        dev.run_inline(Request::Flush),
        Inline::Done(Ok(_))
    ));

    // No lease: the write is handed back for `submit`, which refuses it;
    // a flush still runs.
    gate.revoke();
    assert!(!gate.is_valid_at(Instant::now()));
    assert!(!dev.inline_ready(&a_write()));
    assert!(matches!(
        dev.run_inline(a_write()),
        Inline::Declined(Request::Write { .. })
    ));
    assert!(matches!(
        dev.run_inline(Request::Flush),
        Inline::Done(Ok(_))
    ));
}

/// One write at a time, each followed by a flush, as a QD1 client does:
/// the copy's order gate is empty for each, so it applies them on its
/// session's thread; a burst afterwards goes through the ring. Both must
/// leave the copy identical and every write counted. The production side
/// does its local write and flush inline the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_writes_and_flushes_run_inline_on_both_hosts_and_copies_end_identical() {
    let dir = crate::common::tempdir();
    let (p, c) = (
        make_disk(dir.path(), "prod", SIZE),
        make_disk(dir.path(), "copy", SIZE),
    );
    let uring = |path: &std::path::Path| {
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .open(path)
            .expect("open disk");
        Arc::new(UringEngine::new(file, SIZE, UringOptions::default()).expect("uring"))
    };
    let engine = uring(&c);
    let prod = uring(&p);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let rx = Receiver::start(
        listener,
        engine.clone(),
        ReceiverConfig::new(SECRET, EPOCH, gens(1)),
    )
    .expect("start receiver");
    let vol = MirroredVolume::new(
        prod.clone(),
        VolumeConfig {
            mode: Mode::Sync,
            epoch: EPOCH,
            generations: gens(1),
        },
    );
    let (link, _) = add(&vol, copy_cfg("site-b", &rx.local_addr().to_string()));
    settled(&link).await;
    let before = rx
        .stats()
        .writes_applied
        .load(std::sync::atomic::Ordering::Relaxed);
    let lone = 40u64;
    for i in 0..lone {
        let page = [(i as u8).wrapping_mul(37) | 1; 4096];
        write(&vol, (i * 7919 * 4096) % (SIZE - 4096) / 4096 * 4096, &page).await;
        storage::call(&*vol, Request::Flush).await.expect("flush");
    }
    assert!(
        engine.stats().inline >= lone,
        "the copy ran {} requests inline, fewer than its {lone} lone writes",
        engine.stats().inline
    );
    assert!(
        prod.stats().inline >= lone,
        "the production disk ran {} requests inline, fewer than its {lone} lone writes",
        prod.stats().inline
    );
    burst(&vol, 5, 8, 20).await;
    settled(&link).await;
    assert!(same_files(&p, &c), "copy differs");
    let applied = rx
        .stats()
        .writes_applied
        .load(std::sync::atomic::Ordering::Relaxed)
        - before;
    assert!(applied >= lone, "only {applied} writes counted on the copy");
}
