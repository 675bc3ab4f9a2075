//! Shared pieces of the mirrored-volume tests: disks as files behind the
//! plain engine, receivers, volumes, waiting helpers and a faulty relay.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use geomirror::replication::{
    CopyConfig, CopyLink, Generations, LinkState, MemDirtyLog, MirroredVolume, Mode, Receiver,
    ReceiverConfig, VolumeConfig,
};
use geomirror::storage::{self, plain::PlainEngine, BlockDevice, IoBuf, Request};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub const SECRET: &[u8] = b"recovery-domain-secret";
pub const CHUNK: u64 = 64 * 1024;
pub const SIZE: u64 = 16 << 20;
pub const EPOCH: u64 = 7;

pub fn gens(current: u64) -> Generations {
    Generations {
        current,
        bitmap: 0,
        history: [0, 0],
    }
}

pub fn make_disk(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    File::create(&p)
        .and_then(|f| f.set_len(size))
        .expect("create disk file");
    p
}

pub fn open(path: &Path) -> Arc<dyn BlockDevice> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open disk");
    let size = f.metadata().expect("stat").len();
    Arc::new(PlainEngine::new(f, size))
}

pub async fn receiver_on(listener: TcpListener, path: &Path, g: Generations) -> Receiver {
    Receiver::start(listener, open(path), ReceiverConfig::new(SECRET, EPOCH, g))
        .expect("start receiver")
}

pub async fn receiver(path: &Path, g: Generations) -> Receiver {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    receiver_on(l, path, g).await
}

pub fn volume(path: &Path, mode: Mode, g: Generations) -> Arc<MirroredVolume> {
    MirroredVolume::new(
        open(path),
        VolumeConfig {
            mode,
            epoch: EPOCH,
            generations: g,
        },
    )
}

pub fn copy_cfg(name: &str, addr: &str) -> CopyConfig {
    let mut c = CopyConfig::new(name, addr, SECRET);
    c.reconnect_backoff_ms_min = 20;
    c.reconnect_backoff_ms_max = 200;
    c
}

pub fn add(vol: &MirroredVolume, cfg: CopyConfig) -> (Arc<CopyLink>, Arc<MemDirtyLog>) {
    let log = Arc::new(MemDirtyLog::new(vol.size(), CHUNK));
    (vol.add_copy(cfg, log.clone()).expect("add copy"), log)
}

pub async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Up to date with nothing left unacknowledged.
pub async fn settled(link: &CopyLink) {
    wait_for("copy up to date and idle", || {
        let s = link.stats();
        s.state == LinkState::UpToDate && s.lag_bytes == 0
    })
    .await;
}

/// Every dirty mark gone: what the copy acknowledged is cleared once a
/// flush made it durable there (the link flushes once a second).
pub async fn clean(log: &MemDirtyLog, what: &str) {
    wait_for(what, || log.dirty_count() == 0).await;
}

pub fn same_files(a: &Path, b: &Path) -> bool {
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

pub async fn write(vol: &MirroredVolume, offset: u64, data: &[u8]) {
    let req = Request::Write {
        offset,
        data: IoBuf::from_slice(data),
        fua: false,
    };
    storage::call(vol, req).await.expect("write");
}

/// Random writes from `tasks` concurrent writers, in 4 KiB units, many
/// overlapping (a small hot region), some unaligned and some large.
pub async fn burst(vol: &Arc<MirroredVolume>, seed: u64, tasks: usize, per_task: usize) {
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

/// A TCP relay between production and copy; `cut` drops every connection
/// it carries, and `flip_at` flips one bit of the first connection's
/// production→copy stream at that byte.
pub struct Relay {
    pub addr: String,
    pub cut: watch::Sender<u64>,
    /// Freezes the connections open now: nothing flows, nothing closes.
    pub stall: watch::Sender<u64>,
    pub conns: Arc<AtomicU64>,
}

pub async fn relay(target: std::net::SocketAddr, flip_at: Option<u64>) -> Relay {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let addr = l.local_addr().expect("addr").to_string();
    let (cut, cut_rx) = watch::channel(0u64);
    let (stall, stall_rx) = watch::channel(0u64);
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
            let mut stall = stall_rx.clone();
            stall.borrow_and_update();
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
                    _ = stall.changed() => {
                        // Keep both sockets open and silent until the test ends.
                        let _hold = (&dr, &dw, &ur, &uw);
                        std::future::pending::<()>().await;
                    }
                }
            });
        }
    });
    Relay {
        addr,
        cut,
        stall,
        conns,
    }
}
