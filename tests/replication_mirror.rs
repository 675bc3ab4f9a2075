//! The mirrored volume end to end on loopback TCP: production and copy
//! disks are real files behind the plain engine, receivers are real
//! listeners, and faults come from a relay task between the two.

mod common;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use geomirror::replication::{
    verify, CopyConfig, CopyLink, Generations, LinkState, MemDirtyLog, MirroredVolume, Mode,
    Receiver, ReceiverConfig, VolumeConfig,
};
use geomirror::storage::{self, plain::PlainEngine, BlockDevice, IoBuf, Request};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const SECRET: &[u8] = b"recovery-domain-secret";
const CHUNK: u64 = 64 * 1024;
const SIZE: u64 = 16 << 20;
const EPOCH: u64 = 7;

fn gens(current: u64) -> Generations {
    Generations {
        current,
        bitmap: 0,
        history: [0, 0],
    }
}

fn make_disk(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    File::create(&p)
        .and_then(|f| f.set_len(size))
        .expect("create disk file");
    p
}

fn open(path: &Path) -> Arc<dyn BlockDevice> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open disk");
    let size = f.metadata().expect("stat").len();
    Arc::new(PlainEngine::new(f, size))
}

async fn receiver_on(listener: TcpListener, path: &Path, g: Generations) -> Receiver {
    Receiver::start(listener, open(path), ReceiverConfig::new(SECRET, EPOCH, g))
        .expect("start receiver")
}

async fn receiver(path: &Path, g: Generations) -> Receiver {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    receiver_on(l, path, g).await
}

fn volume(path: &Path, mode: Mode, g: Generations) -> Arc<MirroredVolume> {
    MirroredVolume::new(
        open(path),
        VolumeConfig {
            mode,
            epoch: EPOCH,
            generations: g,
        },
    )
}

fn copy_cfg(name: &str, addr: &str) -> CopyConfig {
    let mut c = CopyConfig::new(name, addr, SECRET);
    c.reconnect_backoff_ms_min = 20;
    c.reconnect_backoff_ms_max = 200;
    c
}

fn add(vol: &MirroredVolume, cfg: CopyConfig) -> (Arc<CopyLink>, Arc<MemDirtyLog>) {
    let log = Arc::new(MemDirtyLog::new(vol.size(), CHUNK));
    (vol.add_copy(cfg, log.clone()).expect("add copy"), log)
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Up to date with nothing left unacknowledged.
async fn settled(link: &CopyLink) {
    wait_for("copy up to date and idle", || {
        let s = link.stats();
        s.state == LinkState::UpToDate && s.lag_bytes == 0
    })
    .await;
}

fn same_files(a: &Path, b: &Path) -> bool {
    let (x, y) = (
        std::fs::read(a).expect("read"),
        std::fs::read(b).expect("read"),
    );
    let n = x.len().min(y.len());
    if let Some(i) = (0..n).find(|&i| x[i] != y[i]) {
        eprintln!("first difference at byte {i} (chunk {})", i as u64 / CHUNK);
        return false;
    }
    true
}

async fn write(vol: &MirroredVolume, offset: u64, data: &[u8]) {
    let req = Request::Write {
        offset,
        data: IoBuf::from_slice(data),
        fua: false,
    };
    storage::call(vol, req).await.expect("write");
}

/// Random writes from `tasks` concurrent writers, in 4 KiB units, many
/// overlapping (a small hot region), some unaligned and some large.
async fn burst(vol: &Arc<MirroredVolume>, seed: u64, tasks: usize, per_task: usize) {
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let vol = vol.clone();
        set.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 1000 + t as u64);
            for _ in 0..per_task {
                let hot = rng.random_bool(0.3);
                let span = if hot { 1 << 20 } else { SIZE };
                let len = match rng.random_range(0..10) {
                    0 => rng.random_range(1..20_000),
                    1 => 256 * 1024,
                    _ => 4096 * rng.random_range(1..4),
                };
                let offset = rng.random_range(0..span - len as u64)
                    & !if len % 4096 == 0 { 4095 } else { 0 };
                let mut data = vec![0u8; len];
                rng.fill(&mut data[..]);
                write(&vol, offset, &data).await;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("writer task");
    }
}

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
    assert_eq!(
        log.dirty_count(),
        0,
        "acknowledged writes leave no dirty mark"
    );
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
async fn outage_resync_sends_only_the_dirty_chunks() {
    let dir = common::tempdir();
    let (p, c) = (
        make_disk(dir.path(), "prod", SIZE),
        make_disk(dir.path(), "copy", SIZE),
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
        s.resynced_bytes < SIZE / 4,
        "resync copied about the whole disk"
    );
    assert!(same_files(&p, &c), "copy differs after the resync");
}

/// A TCP relay between production and copy; `cut` drops every connection
/// it carries, and `flip_at` flips one bit of the first connection's
/// production→copy stream at that byte.
struct Relay {
    addr: String,
    cut: watch::Sender<u64>,
    conns: Arc<AtomicU64>,
}

async fn relay(target: std::net::SocketAddr, flip_at: Option<u64>) -> Relay {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let addr = l.local_addr().expect("addr").to_string();
    let (cut, cut_rx) = watch::channel(0u64);
    let conns = Arc::new(AtomicU64::new(0));
    let n = conns.clone();
    tokio::spawn(async move {
        while let Ok((down, _)) = l.accept().await {
            let Ok(up) = TcpStream::connect(target).await else {
                continue;
            };
            let first = n.fetch_add(1, Ordering::SeqCst) == 0;
            let mut cut = cut_rx.clone();
            cut.borrow_and_update();
            tokio::spawn(async move {
                let (mut dr, mut dw) = down.into_split();
                let (mut ur, mut uw) = up.into_split();
                let forward = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut at = 0u64;
                    loop {
                        let k = dr.read(&mut buf).await?;
                        if k == 0 {
                            return Ok::<_, std::io::Error>(());
                        }
                        if let Some(f) = flip_at.filter(|_| first) {
                            if (at..at + k as u64).contains(&f) {
                                buf[(f - at) as usize] ^= 0x01;
                            }
                        }
                        at += k as u64;
                        uw.write_all(&buf[..k]).await?;
                    }
                };
                let back = tokio::io::copy(&mut ur, &mut dw);
                tokio::select! {
                    _ = forward => {}
                    _ = back => {}
                    _ = cut.changed() => {}
                }
            });
        }
    });
    Relay { addr, cut, conns }
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
    let (link, _log) = add(&vol, cfg);
    wait_for("resync under way", || link.stats().resynced_bytes > 0).await;
    assert_eq!(
        link.state(),
        LinkState::Inconsistent,
        "a syncing copy is Inconsistent"
    );
    r.cut.send_modify(|g| *g += 1);
    burst(&vol, 6, 4, 10).await;
    settled(&link).await;
    assert!(
        r.conns.load(Ordering::SeqCst) >= 2,
        "the link did not reconnect"
    );
    assert!(link.stats().sessions >= 2);
    assert!(
        same_files(&p, &c),
        "copy differs after an interrupted resync"
    );
}

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
