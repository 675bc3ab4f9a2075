//! Replication benchmarks: the frame codec and crc32 on 4 KiB and 1 MiB
//! pages, and the mirrored volume on loopback (4 KiB random writes at
//! queue depth 32, 1 MiB sequential writes at depth 16) against the bare
//! plain engine on the same kind of file.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use geomirror::replication::wire::{self, Msg};
use geomirror::replication::{
    CopyConfig, Generations, LinkState, MemDirtyLog, MirroredVolume, Mode, Receiver,
    ReceiverConfig, VolumeConfig,
};
use geomirror::storage::{self, plain::PlainEngine, BlockDevice, IoBuf, Request};

const DISK_BYTES: u64 = 256 << 20;

fn write_msg(data: &[u8]) -> Msg {
    Msg::Write {
        epoch: 1,
        seq: 1,
        offset: 0,
        len: data.len() as u32,
        crc: crc32fast::hash(data),
        fua: false,
    }
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("wire");
    for size in [4096usize, 1 << 20] {
        let data = vec![0x5au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("encode", size), &data, |b, d| {
            let mut out = Vec::with_capacity(size + 64);
            b.iter(|| {
                out.clear();
                // What the sender does per page: crc, then the head; the page
                // itself goes to the socket without a copy.
                let msg = write_msg(d);
                wire::encode_head(&msg, d.len(), &mut out);
                black_box(&out);
            })
        });
        let frame = wire::encode(&write_msg(&data), &data);
        g.bench_with_input(BenchmarkId::new("check_parse", size), &frame, |b, f| {
            b.iter(|| {
                let wire::Check::Complete(n) = wire::check(f).expect("valid") else {
                    unreachable!("whole frame")
                };
                black_box(wire::parse(&f[..n]).expect("valid"));
            })
        });
        g.bench_with_input(BenchmarkId::new("crc32", size), &data, |b, d| {
            b.iter(|| black_box(crc32fast::hash(d)))
        });
    }
    g.finish();
}

fn disk(dir: &std::path::Path, name: &str) -> Arc<dyn BlockDevice> {
    let p = dir.join(name);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(p)
        .expect("create disk");
    f.set_len(DISK_BYTES).expect("size disk");
    Arc::new(PlainEngine::new(f, DISK_BYTES))
}

/// `n` writes of `size` bytes from `depth` concurrent writers; random
/// 4 KiB-aligned offsets when `random`, else sequential.
async fn load(
    dev: Arc<dyn BlockDevice>,
    n: u64,
    size: usize,
    depth: u64,
    random: bool,
) -> Duration {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let slots = DISK_BYTES / size as u64;
    for w in 0..depth {
        let dev = dev.clone();
        set.spawn(async move {
            let mut x = w.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut i = w;
            while i < n {
                let slot = if random {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x % slots
                } else {
                    i % slots
                };
                let req = Request::Write {
                    offset: slot * size as u64,
                    data: IoBuf::zeroed(size),
                    fua: false,
                };
                storage::call(&*dev, req).await.expect("write");
                i += depth;
            }
        });
    }
    while set.join_next().await.is_some() {}
    start.elapsed()
}

fn volume(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = disk(dir.path(), "plain");
    let mut devs: Vec<(&str, Arc<dyn BlockDevice>)> = vec![("plain", plain)];
    let mut keep = Vec::new();
    for (name, mode) in [("mirror_sync", Mode::Sync), ("mirror_async", Mode::Async)] {
        let (vol, rx) = rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let g = Generations {
                current: 1,
                bitmap: 0,
                history: [0, 0],
            };
            let rx = Receiver::start(
                l,
                disk(dir.path(), &format!("{name}-copy")),
                ReceiverConfig::new(b"s", 1, g),
            )
            .expect("receiver");
            let cfg = VolumeConfig {
                mode,
                epoch: 1,
                generations: g,
            };
            let vol = MirroredVolume::new(disk(dir.path(), &format!("{name}-prod")), cfg);
            let log = Arc::new(MemDirtyLog::new(DISK_BYTES, 64 * 1024));
            let link = vol
                .add_copy(
                    CopyConfig::new("bench", &rx.local_addr().to_string(), b"s"),
                    log,
                )
                .expect("add copy");
            while link.state() != LinkState::UpToDate {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (vol, rx)
        });
        devs.push((name, vol));
        keep.push(rx);
    }
    let mut g = c.benchmark_group("volume");
    g.sample_size(10);
    for (name, dev) in &devs {
        g.throughput(Throughput::Bytes(4096));
        g.bench_function(BenchmarkId::new("randwrite_4k_qd32", name), |b| {
            b.iter_custom(|n| rt.block_on(load(dev.clone(), n, 4096, 32, true)))
        });
        g.throughput(Throughput::Bytes(1 << 20));
        g.bench_function(BenchmarkId::new("seqwrite_1m_qd16", name), |b| {
            b.iter_custom(|n| rt.block_on(load(dev.clone(), n, 1 << 20, 16, false)))
        });
    }
    g.finish();
    drop(devs);
    rt.block_on(async move {
        for rx in keep {
            rx.shutdown().await;
        }
    });
}

criterion_group!(benches, codec, volume);
criterion_main!(benches);
