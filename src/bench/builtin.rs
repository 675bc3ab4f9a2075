//! The built-in load generator: `iodepth` threads share one pipelined NBD
//! connection, each writing its own stripe of blocks, then a verify pass
//! reads a sample back and checks every byte.

use super::error::BenchError;
use super::histogram::Histogram;
use super::pattern::{Pattern, Rng};
use super::workload::{Measurement, RunSpec, CDF_PERCENTILES};
use crate::attach::NbdClient;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Most blocks one run may track (a generation counter each, 4 bytes).
pub const BLOCKS_MAX: u64 = 1 << 24;
/// Most bytes the verify pass reads back.
pub const VERIFY_BYTES_MAX: u64 = 64 << 20;

/// What one worker hands back: its latencies and, per block of its stripe,
/// how many times it wrote it (0: never).
struct WorkerResult {
    hist: Histogram,
    flush_hist: Histogram,
    ios: u64,
    generations: Vec<u32>,
}

/// Runs `spec` against `client` and verifies a sample of what was written.
pub fn run(client: NbdClient, label: &str, spec: &RunSpec) -> Result<Measurement, BenchError> {
    let bs = u64::from(spec.workload.block_bytes());
    let blocks = spec.size_bytes / bs;
    let depth = u64::from(spec.iodepth);
    if blocks < depth {
        return Err(BenchError::BadSize {
            target: label.to_string(),
            reason: format!(
                "{} bytes hold {blocks} blocks of {bs}: fewer than iodepth {depth}",
                spec.size_bytes
            ),
        });
    }
    if blocks > BLOCKS_MAX {
        return Err(BenchError::BadSize {
            target: label.to_string(),
            reason: format!("--size gives {blocks} blocks, more than {BLOCKS_MAX}"),
        });
    }
    if spec.workload.fsync() && !client.info().can_flush() {
        return Err(BenchError::Io {
            target: label.to_string(),
            cause: crate::attach::AttachError::InvalidRequest(
                "the export does not accept NBD_CMD_FLUSH, needed by the fsync workload".into(),
            ),
        });
    }
    let pattern = Arc::new(Pattern::new(bs as usize, 0x6765_6f6d ^ spec.runtime_s));
    let client = Arc::new(client);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    let end = start + Duration::from_secs(spec.runtime_s);
    for w in 0..depth {
        let (client, stop, tx, spec) = (Arc::clone(&client), Arc::clone(&stop), tx.clone(), *spec);
        let pattern = Arc::clone(&pattern);
        std::thread::Builder::new()
            .name(format!("bench-w{w}"))
            .spawn(move || {
                let r = worker(&client, &pattern, &spec, w, end, &stop);
                if r.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
                let _ = tx.send((w, r));
            })
            .map_err(|e| BenchError::Local(format!("spawn worker: {e}")))?;
    }
    drop(tx);
    let mut results: Vec<Option<WorkerResult>> = (0..depth).map(|_| None).collect();
    let deadline = end + Duration::from_millis(spec.io_timeout_ms);
    for _ in 0..depth {
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok((w, Ok(r))) => results[w as usize] = Some(r),
            Ok((_, Err(cause))) => {
                return Err(BenchError::Io {
                    target: label.to_string(),
                    cause,
                })
            }
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                return Err(BenchError::Stalled {
                    target: label.to_string(),
                    timeout_ms: spec.io_timeout_ms,
                });
            }
        }
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let io_err = |cause| BenchError::Io {
        target: label.to_string(),
        cause,
    };
    client.flush().map_err(io_err)?;
    let mut hist = Histogram::default();
    let mut flush_hist = Histogram::default();
    let mut ios = 0;
    for r in results.iter().flatten() {
        hist.merge(&r.hist);
        flush_hist.merge(&r.flush_hist);
        ios += r.ios;
    }
    let verified_blocks = verify(&client, &pattern, label, spec, &results)?;
    let us = |ns: u64| ns as f64 / 1000.0;
    let bytes = ios * bs;
    Ok(Measurement {
        engine: "builtin",
        iodepth: spec.iodepth,
        bytes,
        ios,
        elapsed_s,
        mb_per_s: bytes as f64 / 1e6 / elapsed_s,
        iops: ios as f64 / elapsed_s,
        p50_us: us(hist.percentile(50.0)),
        p99_us: us(hist.percentile(99.0)),
        p99_9_us: us(hist.percentile(99.9)),
        mean_us: hist.mean() / 1000.0,
        cdf_us: CDF_PERCENTILES
            .iter()
            .map(|&p| (p, us(hist.percentile(p))))
            .collect(),
        verified_blocks,
        flush_us: (flush_hist.count() > 0)
            .then(|| [50.0, 99.0, 99.9].map(|p| us(flush_hist.percentile(p)))),
    })
}

/// Block number of the `k`-th block of worker `w`'s stripe: stripes
/// interleave, so that no two requests in flight ever touch one block and
/// the order of writes to a block is the order its worker issued them.
fn block_of(w: u64, k: u64, depth: u64) -> u64 {
    w + k * depth
}

/// Blocks in worker `w`'s stripe.
fn stripe_len(w: u64, blocks: u64, depth: u64) -> u64 {
    (blocks - w).div_ceil(depth)
}

fn worker(
    client: &NbdClient,
    pattern: &Pattern,
    spec: &RunSpec,
    w: u64,
    end: Instant,
    stop: &AtomicBool,
) -> Result<WorkerResult, crate::attach::AttachError> {
    let bs = u64::from(spec.workload.block_bytes());
    let depth = u64::from(spec.iodepth);
    let stripe = stripe_len(w, spec.size_bytes / bs, depth);
    let mut generations = vec![0u32; stripe as usize];
    let mut hist = Histogram::default();
    let mut flush_hist = Histogram::default();
    let mut rng = Rng::new(0x9e37_79b9 ^ (w << 32) ^ spec.runtime_s);
    let mut buf = pattern.buffer();
    let mut next = 0u64;
    let mut ios = 0;
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        let k = if spec.workload.random() {
            rng.below(stripe)
        } else {
            let k = next;
            next = (next + 1) % stripe;
            k
        };
        let gen = generations[k as usize].wrapping_add(1).max(1);
        let offset = block_of(w, k, depth) * bs;
        pattern.stamp(&mut buf, offset, gen);
        let t0 = Instant::now();
        client.write(offset, &buf, false)?;
        hist.record(t0.elapsed().as_nanos() as u64);
        generations[k as usize] = gen;
        if spec.workload.fsync() {
            let t1 = Instant::now();
            client.flush()?;
            flush_hist.record(t1.elapsed().as_nanos() as u64);
        }
        ios += 1;
    }
    Ok(WorkerResult {
        hist,
        flush_hist,
        ios,
        generations,
    })
}

/// Reads back up to [`VERIFY_BYTES_MAX`] of the written blocks, spread over
/// all workers, and compares them with what was last written there.
fn verify(
    client: &NbdClient,
    pattern: &Pattern,
    label: &str,
    spec: &RunSpec,
    results: &[Option<WorkerResult>],
) -> Result<u64, BenchError> {
    let bs = u64::from(spec.workload.block_bytes());
    let depth = u64::from(spec.iodepth);
    let written: Vec<(u64, u32)> = results
        .iter()
        .enumerate()
        .filter_map(|(w, r)| Some((w as u64, r.as_ref()?)))
        .flat_map(|(w, r)| {
            r.generations
                .iter()
                .enumerate()
                .filter(|(_, &g)| g != 0)
                .map(move |(k, &g)| (block_of(w, k as u64, depth), g))
        })
        .collect();
    let budget = (VERIFY_BYTES_MAX / bs).max(1) as usize;
    let step = written.len().div_ceil(budget).max(1);
    let mut checked = 0;
    for &(block, gen) in written.iter().step_by(step) {
        let offset = block * bs;
        let got = client
            .read(offset, bs as u32)
            .map_err(|cause| BenchError::Io {
                target: label.to_string(),
                cause,
            })?;
        if got != pattern.expected(offset, gen) {
            return Err(BenchError::Verify {
                target: label.to_string(),
                offset,
            });
        }
        checked += 1;
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_cover_every_block_once() {
        for (blocks, depth) in [(10u64, 3u64), (64, 64), (100, 1), (4097, 32)] {
            let mut seen = vec![0u8; blocks as usize];
            for w in 0..depth {
                for k in 0..stripe_len(w, blocks, depth) {
                    seen[block_of(w, k, depth) as usize] += 1;
                }
            }
            assert!(
                seen.iter().all(|&n| n == 1),
                "{blocks} blocks, depth {depth}"
            );
        }
    }
}
