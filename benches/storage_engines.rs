//! Throughput of the storage engines on a real file: 4 KiB random writes
//! at queue depth 32 and 1 MiB sequential writes at queue depth 8, each
//! ended by a flush, for plain, io_uring buffered and io_uring O_DIRECT.
//!
//! Run: `cargo bench --bench storage_engines` (env `GEOMIRROR_BENCH_DIR`
//! picks the filesystem, default the system temp dir;
//! `GEOMIRROR_BENCH_SECS` the time per random-write run, default 5;
//! `GEOMIRROR_BENCH_ENGINES` which engines, in order, default
//! `plain,uring-buffered,uring-direct,uring`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use geomirror::storage::{call, open_engine, BlockDevice, EngineKind, IoBuf, Reply, Request};
use geomirror::storage::{UringEngine, UringOptions};
use rand::{Rng, SeedableRng};

const FILE_BYTES: u64 = 1 << 30;
const RAND_QD: u64 = 32;
const SEQ_QD: u64 = 8;
const SEQ_BLOCK: u64 = 1 << 20;

async fn flush(dev: &dyn BlockDevice) {
    let r = call(dev, Request::Flush).await;
    assert!(matches!(r, Ok(Reply::Done)), "flush: {r:?}");
}

/// 4 KiB random writes from RAND_QD tasks for `secs`; returns IOPS.
async fn rand_4k(dev: Arc<dyn BlockDevice>, secs: u64) -> f64 {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for t in 0..RAND_QD {
        let dev = dev.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(t);
            let mut n = 0u64;
            let data = IoBuf::from_slice(&[t as u8; 4096]);
            while Instant::now() < deadline {
                let offset = rng.random_range(0..FILE_BYTES / 4096) * 4096;
                let r = call(
                    &*dev,
                    Request::Write {
                        offset,
                        data: data.clone(),
                        fua: false,
                    },
                )
                .await;
                assert!(r.is_ok(), "write: {r:?}");
                n += 1;
            }
            n
        }));
    }
    let mut ops = 0;
    for t in tasks {
        ops += t.await.expect("writer task");
    }
    flush(&*dev).await;
    ops as f64 / start.elapsed().as_secs_f64()
}

/// The whole file written in 1 MiB blocks, SEQ_QD in flight; returns MiB/s.
async fn seq_1m(dev: Arc<dyn BlockDevice>) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..SEQ_QD {
        let dev = dev.clone();
        tasks.push(tokio::spawn(async move {
            let data = IoBuf::from_slice(&vec![0x5A; SEQ_BLOCK as usize]);
            let mut block = t;
            while block * SEQ_BLOCK < FILE_BYTES {
                let offset = block * SEQ_BLOCK;
                let r = call(
                    &*dev,
                    Request::Write {
                        offset,
                        data: data.clone(),
                        fua: false,
                    },
                )
                .await;
                assert!(r.is_ok(), "write: {r:?}");
                block += SEQ_QD;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    flush(&*dev).await;
    (FILE_BYTES >> 20) as f64 / start.elapsed().as_secs_f64()
}

fn open_rw(path: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open bench file")
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (e.g. `cargo test
    // --benches`) only checks that the bench starts.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = std::env::var("GEOMIRROR_BENCH_DIR")
        .unwrap_or_else(|_| std::env::temp_dir().display().to_string());
    let secs: u64 = std::env::var("GEOMIRROR_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let tmp = tempfile::Builder::new()
        .prefix("geomirror-bench-")
        .tempdir_in(&dir)
        .expect("bench dir");
    let path = tmp.path().join("disk.img");
    // Laid out once, fully written, so no run pays for block allocation.
    std::fs::write(&path, vec![0u8; FILE_BYTES as usize]).expect("lay out the bench file");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "file {} ({} MiB), random runs {secs} s",
        path.display(),
        FILE_BYTES >> 20
    );
    let kinds: Vec<EngineKind> = std::env::var("GEOMIRROR_BENCH_ENGINES")
        .unwrap_or_else(|_| "plain,uring-buffered,uring-direct,uring".into())
        .split(',')
        .map(|k| k.parse().expect("engine name"))
        .collect();
    for kind in kinds {
        let iops = rt.block_on(rand_4k(
            open_engine(open_rw(&path), FILE_BYTES, kind).expect("engine"),
            secs,
        ));
        let mibs = rt.block_on(seq_1m(
            open_engine(open_rw(&path), FILE_BYTES, kind).expect("engine"),
        ));
        println!(
            "{:<14} 4k randwrite QD{RAND_QD}: {:>8.0} IOPS ({:>6.1} MiB/s) | 1M seqwrite QD{SEQ_QD}: {:>7.1} MiB/s",
            format!("{kind:?}"),
            iops,
            iops * 4096.0 / (1 << 20) as f64,
            mibs
        );
    }
    // How often submitters had to wake the ring thread with a syscall.
    let opts = UringOptions::default();
    let dev = Arc::new(UringEngine::new(open_rw(&path), FILE_BYTES, opts).expect("engine"));
    rt.block_on(rand_4k(dev.clone(), 2));
    let s = dev.stats();
    println!(
        "uring wake-ups: {} eventfd writes and {} io_uring_enter calls for {} requests ({:.3} and {:.3} per request)",
        s.wakeups,
        s.enters,
        s.requests,
        s.wakeups as f64 / s.requests as f64,
        s.enters as f64 / s.requests as f64
    );
}
