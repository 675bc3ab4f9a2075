//! What the demo writes through NBD, and a compact model of it: each chunk
//! written holds bytes generated from (seed, chunk, tag), so the expected
//! content of any chunk can be rebuilt without keeping the data.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::{Rng, RngCore, SeedableRng};

use super::error::DemoError;
use super::interrupted;
use crate::attach::{NbdAddress, NbdClient};

/// Time for the production NBD socket to accept a connection.
const CONNECT_TIMEOUT_MS: u64 = 10_000;

/// Requests the demo keeps in flight on its NBD connection.
pub const WRITERS: usize = 8;
/// Chunks per request of the bulk write.
const CHUNKS_PER_REQUEST: u64 = 4;

/// The volume as the demo wrote it: chunk index → tag of the last write.
/// Bounded by the number of chunks written.
pub struct Model {
    seed: u64,
    pub chunk_bytes: u64,
    written: BTreeMap<u64, u64>,
}

impl Model {
    pub fn new(chunk_bytes: u64) -> Model {
        Model {
            seed: rand::random(),
            chunk_bytes,
            written: BTreeMap::new(),
        }
    }

    /// Fills `buf` (one chunk) with what chunk `index` should hold.
    pub fn expected(&self, index: u64, buf: &mut [u8]) {
        match self.written.get(&index) {
            Some(&tag) => fill(self.seed, index, tag, buf),
            None => buf.fill(0),
        }
    }

    /// Chunks written so far.
    pub fn chunks_written(&self) -> usize {
        self.written.len()
    }
}

/// Bytes generated for chunk `index` written with `tag`.
fn fill(seed: u64, index: u64, tag: u64, buf: &mut [u8]) {
    let key = seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ tag.rotate_left(32);
    rand::rngs::SmallRng::seed_from_u64(key).fill_bytes(buf);
}

/// Writes chunks `first..first+count` in requests of several chunks, with
/// [`WRITERS`] in flight, then flushes. Returns the elapsed time.
pub fn write_range(
    client: &NbdClient,
    model: &mut Model,
    first: u64,
    count: u64,
    tag: u64,
) -> anyhow::Result<Duration> {
    let requests: Vec<Vec<u64>> = (first..first + count)
        .collect::<Vec<_>>()
        .chunks(CHUNKS_PER_REQUEST as usize)
        .map(|c| c.to_vec())
        .collect();
    write_requests(client, model, &requests, tag)
}

/// Writes `count` distinct chunks chosen at random among the first
/// `chunks_total`, one chunk per request. Returns the elapsed time.
pub fn write_scattered(
    client: &NbdClient,
    model: &mut Model,
    chunks_total: u64,
    count: u64,
    tag: u64,
) -> anyhow::Result<Duration> {
    let mut rng = rand::rng();
    let mut picked = std::collections::BTreeSet::new();
    // Rejection sampling ends quickly: callers ask for at most an eighth.
    while (picked.len() as u64) < count.min(chunks_total) {
        picked.insert(rng.random_range(0..chunks_total));
    }
    let requests: Vec<Vec<u64>> = picked.into_iter().map(|c| vec![c]).collect();
    write_requests(client, model, &requests, tag)
}

/// Each request is a run of consecutive chunks.
fn write_requests(
    client: &NbdClient,
    model: &mut Model,
    requests: &[Vec<u64>],
    tag: u64,
) -> anyhow::Result<Duration> {
    let next = AtomicUsize::new(0);
    let (seed, chunk) = (model.seed, model.chunk_bytes);
    let start = Instant::now();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..WRITERS)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    let mut buf = Vec::new();
                    loop {
                        if interrupted() {
                            return Err(DemoError::Interrupted.into());
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(req) = requests.get(i) else {
                            return Ok(());
                        };
                        buf.resize(req.len() * chunk as usize, 0);
                        for (j, &index) in req.iter().enumerate() {
                            let at = j * chunk as usize;
                            fill(seed, index, tag, &mut buf[at..at + chunk as usize]);
                        }
                        let offset = req[0] * chunk;
                        client
                            .write(offset, &buf, false)
                            .with_context(|| format!("NBD write at offset {offset}"))?;
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a writer thread panicked")))
        })
    })?;
    client.flush().context("NBD flush")?;
    for req in requests {
        for &index in req {
            model.written.insert(index, tag);
        }
    }
    Ok(start.elapsed())
}

/// Connects to the production NBD socket, retrying while it comes up.
pub fn connect(addr: &NbdAddress) -> anyhow::Result<NbdClient> {
    let deadline = Instant::now() + Duration::from_millis(CONNECT_TIMEOUT_MS);
    loop {
        match NbdClient::connect(addr) {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("connect to {}", addr.endpoint))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
