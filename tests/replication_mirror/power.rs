//! Power cuts and flush failures on the copy host, with a disk model that
//! keeps unflushed writes in a volatile cache: what the copy acknowledged
//! is cleared from production's dirty log only once the copy made it
//! durable, and a FLUSH or FUA write the copy cannot make durable fails.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use geomirror::replication::{Generations, LinkState, Mode, Receiver, ReceiverConfig};
use geomirror::storage::{self, IoBuf, Request};
use tokio::net::TcpListener;

use super::common;
use super::harness::*;
use super::volatile::VolatileDisk;

fn start(listener: TcpListener, disk: &Arc<VolatileDisk>, g: Generations) -> Receiver {
    Receiver::start(
        listener,
        disk.clone(),
        ReceiverConfig::new(SECRET, EPOCH, g),
    )
    .expect("start receiver")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_on_the_copy_host_loses_no_acknowledged_write() {
    let dir = common::tempdir();
    let p = make_disk(dir.path(), "prod", SIZE);
    let copy = Arc::new(VolatileDisk::new(SIZE, &[]));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let rx = start(listener, &copy, Generations::default());
    let vol = volume(&p, Mode::Sync, gens(1));
    let (link, log) = add(&vol, copy_cfg("site-b", &addr.to_string()));
    // The full sync ends with InSync, which the copy makes durable first:
    // from here the copy's label holds generation 1.
    settled(&link).await;
    assert_eq!(copy.unflushed_sectors(), 0, "InSync flushed the copy");

    // Sync writes: each is answered once the copy has it, in its cache.
    burst(&vol, 9, 4, 20).await;
    // The power goes on the copy host right after the last answer.
    let lost = copy.power_cut();
    assert!(
        lost > 0,
        "the copy had made every write durable already: nothing tested"
    );
    rx.shutdown().await;
    wait_for("link down", || link.state() == LinkState::Disconnected).await;
    assert!(
        log.dirty_count() > 0,
        "acknowledged writes lost to the power cut were already cleared"
    );

    // The copy host comes back with what survived, at the generation its
    // label holds; the dirty log still names every lost write.
    let listener = TcpListener::bind(addr).await.expect("rebind the copy port");
    let _rx = start(listener, &copy, gens(1));
    settled(&link).await;
    clean(&log, "every chunk cleared once the copy flushed it").await;
    let prod = std::fs::read(&p).expect("read production");
    assert!(
        copy.durable() == prod,
        "the copy's durable image differs from production after the resync"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_or_fua_write_the_copy_cannot_make_durable_fails_in_sync_mode() {
    let dir = common::tempdir();
    let p = make_disk(dir.path(), "prod", SIZE);
    let copy = Arc::new(VolatileDisk::new(SIZE, &[]));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let _rx = start(listener, &copy, Generations::default());
    let vol = volume(&p, Mode::Sync, gens(1));
    let (link, log) = add(&vol, copy_cfg("site-b", &addr.to_string()));
    settled(&link).await;

    write(&vol, 3 * CHUNK, &[0x11; 4096]).await;
    copy.fail_flushes.store(true, Ordering::Relaxed);
    let flush = storage::call(&*vol, Request::Flush).await;
    assert!(
        flush.is_err(),
        "a FLUSH was answered as durable while the copy failed it"
    );
    assert!(log.dirty_count() > 0, "the unflushed write was cleared");

    // While its disk cannot flush, the copy cannot finish a resync either
    // (InSync flushes first): it comes back once the disk heals.
    copy.fail_flushes.store(false, Ordering::Relaxed);
    settled(&link).await;
    copy.fail_flushes.store(true, Ordering::Relaxed);
    let fua = Request::Write {
        offset: 5 * CHUNK,
        data: IoBuf::from_slice(&[0x22; 4096]),
        fua: true,
    };
    let fua = storage::call(&*vol, fua).await;
    assert!(
        fua.is_err(),
        "a FUA write was answered as durable while the copy could not make it so"
    );

    // Once the copy's disk flushes again, everything reaches it durably.
    copy.fail_flushes.store(false, Ordering::Relaxed);
    settled(&link).await;
    clean(&log, "the failed range resynced and flushed").await;
    let prod = std::fs::read(&p).expect("read production");
    assert!(copy.durable() == prod, "the copy differs after recovery");
}
