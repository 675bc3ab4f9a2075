//! Sync mode lends the request's own buffer to the links: no page copy,
//! and the copies still end byte-identical, also for pages larger than a
//! frame and bursts larger than the socket takes at once. And a dirty-log
//! mark that waits for its disk does not hold a runtime worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use geomirror::replication::{ChunkSet, DirtyLog, MemDirtyLog, MirroredVolume, Mode};
use geomirror::storage::{BlockDevice, IoBuf, Reply, Request, StorageError};
use tokio::sync::oneshot;

use super::common;
use super::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_writes_reach_two_copies_without_a_page_copy() {
    let dir = common::tempdir();
    let p = make_disk(dir.path(), "prod", SIZE);
    let (c1, c2) = (
        make_disk(dir.path(), "c1", SIZE),
        make_disk(dir.path(), "c2", SIZE),
    );
    let rx1 = receiver(&c1, gens(1)).await;
    let rx2 = receiver(&c2, gens(1)).await;
    let vol = volume(&p, Mode::Sync, gens(1));
    let (l1, _) = add(&vol, copy_cfg("site-b", &rx1.local_addr().to_string()));
    let (l2, _) = add(&vol, copy_cfg("site-c", &rx2.local_addr().to_string()));
    settled(&l1).await;
    settled(&l2).await;
    burst(&vol, 11, 16, 30).await;
    settled(&l1).await;
    settled(&l2).await;
    assert!(same_files(&p, &c1), "first copy differs");
    assert!(same_files(&p, &c2), "second copy differs");
    assert_eq!(
        vol.page_bytes_copied(),
        0,
        "a sync write was copied for its links"
    );
}

/// Writes of 6 MiB (two frames over one shared buffer) from many tasks at
/// once, overlapping: far more than a socket buffer, so batches are sent
/// in parts by the session's writer task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_larger_than_a_frame_and_the_socket_arrive_whole_and_in_order() {
    let dir = common::tempdir();
    let (p, c) = (
        make_disk(dir.path(), "prod", SIZE),
        make_disk(dir.path(), "copy", SIZE),
    );
    let rx = receiver(&c, gens(1)).await;
    let vol = volume(&p, Mode::Sync, gens(1));
    let (link, log) = add(&vol, copy_cfg("site-b", &rx.local_addr().to_string()));
    settled(&link).await;
    let len = 6 << 20;
    let mut waits = Vec::new();
    for i in 0..24u64 {
        let offset = (i % 3) * (5 << 20);
        let data: Vec<u8> = (0..len).map(|b| (b as u64 * 7 + i) as u8).collect();
        waits.push(submit(&vol, offset, data));
    }
    for w in waits {
        w.await.expect("answered").expect("write");
    }
    settled(&link).await;
    assert!(same_files(&p, &c), "copy differs after large writes");
    clean(&log, "acknowledged writes to be cleared once flushed").await;
    assert_eq!(vol.page_bytes_copied(), 0);
    assert!(link.stats().bytes_sent >= 24 * len as u64);
}

/// Submit a write without waiting for it.
fn submit(
    vol: &Arc<MirroredVolume>,
    offset: u64,
    data: Vec<u8>,
) -> oneshot::Receiver<Result<Reply, StorageError>> {
    let (tx, rx) = oneshot::channel();
    vol.submit(
        Request::Write {
            offset,
            data: IoBuf::from_slice(&data),
            fua: false,
        },
        tx,
    );
    rx
}

/// A dirty log whose first mark of offset 0 waits until the test lets it
/// go (or gives up after a while), as a bitmap mark waits for its
/// fdatasync.
struct SlowFirstMark {
    inner: MemDirtyLog,
    hold: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    gave_up: AtomicBool,
}

impl DirtyLog for SlowFirstMark {
    fn chunk_bytes(&self) -> u64 {
        self.inner.chunk_bytes()
    }
    fn mark(&self, offset: u64, len: u64) -> std::io::Result<()> {
        if offset == 0 {
            let hold = self.hold.lock().expect("hold lock").take();
            if let Some(rx) = hold {
                if rx.recv_timeout(Duration::from_secs(20)).is_err() {
                    self.gave_up.store(true, Ordering::SeqCst);
                }
            }
        }
        self.inner.mark(offset, len)
    }
    fn clear(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.clear(offset, len)
    }
    fn dirty_chunks(&self) -> ChunkSet {
        self.inner.dirty_chunks()
    }
    fn set_all(&self) -> std::io::Result<()> {
        self.inner.set_all()
    }
}

/// One runtime worker only: a mark that has to wait for the disk must not
/// hold it, or no other write could make progress meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_slow_first_mark_does_not_stall_writes_elsewhere() {
    let dir = common::tempdir();
    let (p, c) = (
        make_disk(dir.path(), "prod", SIZE),
        make_disk(dir.path(), "copy", SIZE),
    );
    let rx = receiver(&c, gens(1)).await;
    let vol = volume(&p, Mode::Sync, gens(1));
    let (release, hold) = std::sync::mpsc::channel();
    let log = Arc::new(SlowFirstMark {
        inner: MemDirtyLog::new(vol.size(), 64 * 1024),
        hold: std::sync::Mutex::new(Some(hold)),
        gave_up: AtomicBool::new(false),
    });
    let link = vol
        .add_copy(
            copy_cfg("site-b", &rx.local_addr().to_string()),
            log.clone(),
        )
        .expect("add copy");
    settled(&link).await;
    // A region marked once already: its later marks run inline.
    let far = 8 << 20;
    write(&vol, far, &[1u8; 4096]).await;
    let slow = submit(&vol, 0, vec![2u8; 4096]);
    for i in 0..8u8 {
        write(&vol, far + 4096 * u64::from(i), &[i; 4096]).await;
    }
    // Had the slow mark held the only worker, these writes would have run
    // only after it gave up waiting.
    assert!(
        !log.gave_up.load(Ordering::SeqCst),
        "writes elsewhere waited for a slow mark"
    );
    let _ = release.send(());
    slow.await.expect("answered").expect("write");
    settled(&link).await;
    assert!(same_files(&p, &c), "copy differs");
}
