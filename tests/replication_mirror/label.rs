//! The copy's label through a resync: inconsistent, durably, before the
//! first resync write reaches the copy disk; consistent again, durably,
//! before the copy is called in sync; an interrupted partial resync resumes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use geomirror::replication::{
    CopyLabel, DirtyLog, Generations, LinkState, MemDirtyLog, Mode, Receiver, ReceiverConfig,
};
use tokio::net::TcpListener;

use super::common;
use super::harness::*;

/// Each label the receiver wrote, and whether the copy disk was untouched then.
type Written = Arc<Mutex<Vec<(CopyLabel, bool)>>>;

/// A receiver on `copy` whose label starts as `label`; its writes are recorded.
async fn recording(copy: &Path, label: CopyLabel) -> (Receiver, Written) {
    let written: Written = Arc::default();
    let mut cfg = ReceiverConfig::new(SECRET, EPOCH, label.generations);
    cfg.consistent = label.consistent;
    let (path, log) = (PathBuf::from(copy), written.clone());
    cfg.write_label = Some(Arc::new(move |l| {
        let untouched = std::fs::read(&path)?.iter().all(|&b| b == 0);
        log.lock().expect("lock").push((l, untouched));
        Ok(())
    }));
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let rx = Receiver::start(l, open(copy), cfg).expect("start receiver");
    (rx, written)
}

fn label(current: u64, consistent: bool) -> CopyLabel {
    CopyLabel {
        generations: gens(current),
        consistent,
    }
}

/// Production with data in its first 2 MiB.
fn production(dir: &Path) -> PathBuf {
    let p = make_disk(dir, "prod", SIZE);
    let mut data = vec![0u8; SIZE as usize];
    data[..2 << 20].fill(0x5c);
    std::fs::write(&p, &data).expect("fill production");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sync_marks_the_copy_inconsistent_before_its_first_write_and_consistent_after_its_flush(
) {
    let dir = common::tempdir();
    let p = production(dir.path());
    let c = make_disk(dir.path(), "copy", SIZE);
    // A freshly formatted copy: a random generation nobody knows.
    let (rx, written) = recording(&c, label(0x77, false)).await;
    let vol = volume(&p, Mode::Sync, gens(42));
    let (link, _log) = add(&vol, copy_cfg("site-b", &rx.local_addr().to_string()));
    settled(&link).await;
    assert_eq!(link.stats().resynced_bytes, SIZE, "a full sync");
    let written = written.lock().expect("lock").clone();
    assert_eq!(
        written,
        vec![
            (
                CopyLabel {
                    generations: Generations::default(),
                    consistent: false
                },
                true
            ),
            (
                CopyLabel {
                    generations: Generations {
                        current: 42,
                        bitmap: 0,
                        history: [0, 0],
                    },
                    consistent: true
                },
                false
            ),
        ],
        "inconsistent (and no generation) before any resync write, consistent at the end"
    );
    assert_eq!(rx.label().await, written[1].0);
    assert!(same_files(&p, &c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_resync_marks_the_copy_inconsistent_and_resumes_after_an_interruption() {
    let dir = common::tempdir();
    let p = production(dir.path());
    let c = make_disk(dir.path(), "copy", SIZE);
    // Production moved on from generation 5 (the copy's) with 2 MiB dirty.
    let prod = Generations {
        current: 6,
        bitmap: 5,
        history: [0, 0],
    };
    let dirty = || {
        let log = Arc::new(MemDirtyLog::new(SIZE, CHUNK));
        log.mark(0, 2 << 20).expect("mark");
        log
    };

    // A consistent copy: marked inconsistent first, then consistent at 6.
    let (rx, written) = recording(&c, label(5, true)).await;
    let vol = volume(&p, Mode::Sync, prod);
    let link = vol
        .add_copy(copy_cfg("site-b", &rx.local_addr().to_string()), dirty())
        .expect("add copy");
    settled(&link).await;
    assert_eq!(link.stats().resynced_bytes, 2 << 20, "a partial resync");
    let first = written.lock().expect("lock").clone();
    assert_eq!(first.len(), 2, "{first:?}");
    assert_eq!(first[0], (label(5, false), true));
    assert_eq!(first[1].0.generations.current, 6);
    assert!(first[1].0.consistent);
    drop(vol);
    rx.shutdown().await;

    // The same copy as an interrupted partial resync leaves it: still at
    // 5, inconsistent. Production knows 5, so the resync resumes partially
    // (a fresh disk's unknown generation got the full sync above).
    std::fs::write(&c, vec![0u8; SIZE as usize]).expect("blank the copy");
    let (rx, written) = recording(&c, label(5, false)).await;
    let vol = volume(&p, Mode::Sync, prod);
    let link = vol
        .add_copy(copy_cfg("site-b", &rx.local_addr().to_string()), dirty())
        .expect("add copy");
    settled(&link).await;
    assert_eq!(link.stats().resynced_bytes, 2 << 20, "resumed, not full");
    let again = written.lock().expect("lock").clone();
    // Already inconsistent: nothing to write until the end.
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(
        again[0].0,
        CopyLabel {
            generations: Generations {
                current: 6,
                bitmap: 0,
                history: [5, 0],
            },
            consistent: true
        }
    );
    assert!(same_files(&p, &c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_with_nothing_to_resync_keeps_its_label_untouched() {
    let dir = common::tempdir();
    let p = make_disk(dir.path(), "prod", SIZE);
    let c = make_disk(dir.path(), "copy", SIZE);
    let (rx, written) = recording(&c, label(9, true)).await;
    let vol = volume(&p, Mode::Sync, gens(9));
    let (link, _log) = add(&vol, copy_cfg("site-b", &rx.local_addr().to_string()));
    settled(&link).await;
    write(&vol, 0, &[1u8; 4096]).await;
    settled(&link).await;
    assert_eq!(link.stats().resynced_bytes, 0);
    assert!(written.lock().expect("lock").is_empty(), "no label write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_whose_label_cannot_be_written_gets_no_resync_write() {
    let dir = common::tempdir();
    let p = production(dir.path());
    let c = make_disk(dir.path(), "copy", SIZE);
    // A consistent copy at 42; production moved on with 2 MiB dirty.
    let mut cfg = ReceiverConfig::new(SECRET, EPOCH, gens(42));
    cfg.write_label = Some(Arc::new(|_| {
        // A slow failing disk: the resync's writes are on their way by the
        // time the label write fails.
        std::thread::sleep(std::time::Duration::from_millis(300));
        Err(std::io::Error::from_raw_os_error(libc::EIO))
    }));
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let rx = Receiver::start(l, open(&c), cfg).expect("start receiver");
    let prod = Generations {
        current: 43,
        bitmap: 42,
        history: [0, 0],
    };
    let vol = volume(&p, Mode::Sync, prod);
    let log = Arc::new(MemDirtyLog::new(SIZE, CHUNK));
    log.mark(0, 2 << 20).expect("mark");
    let link = vol
        .add_copy(copy_cfg("site-b", &rx.local_addr().to_string()), log)
        .expect("add copy");
    wait_for("the copy's disk shown failed", || {
        link.state() == LinkState::DiskFailed
    })
    .await;
    let f = link.disk_failure().expect("a recorded failure");
    assert_eq!((f.errno, f.offset, f.len), (libc::EIO, 0, 0));
    assert_eq!(link.stats().state, LinkState::DiskFailed);
    assert!(
        std::fs::read(&c).expect("read").iter().all(|&b| b == 0),
        "a resync write reached a copy still labelled consistent"
    );
    assert_eq!(rx.label().await, label(42, true));
}
