//! Catch-up of a copy that comes (back) up: send the dirty chunks while new
//! writes keep flowing, or, with `checksum_resync`, compare per-chunk crc32
//! first and send only the chunks that differ.
//!
//! A resync write never overwrites a newer application write: each chunk is
//! admitted through the volume's ordering gate, read and queued while it
//! holds its place, so a later application write to the chunk is queued
//! after it and an earlier one is already in the data read.

use std::sync::Arc;

use super::error::ReplicationError;
use super::link::{CopyLink, Op, SessionTx};
use super::wire::{PAYLOAD_BYTES_MAX, SUMS_COUNT_MAX};
use crate::storage::{self, IoBuf, Reply, Request};

/// Chunk reads in flight during a resync.
const RESYNC_READS_MAX: usize = 8;
/// Bytes compared per checksum request (one local read).
const COMPARE_BYTES_MAX: u64 = 4 << 20;

/// Resync every chunk the link owes its copy; returns when all are acked.
pub(crate) async fn run(
    link: &Arc<CopyLink>,
    sess: &Arc<SessionTx>,
) -> Result<(), ReplicationError> {
    let todo = link.lock().pending_resync.clone();
    if link.cfg.checksum_resync {
        let run_max = run_chunks(link.chunk_bytes());
        let mut run: Option<(u64, u64)> = None;
        for c in todo.iter() {
            run = match run {
                Some((first, n)) if first + n == c && n < run_max => Some((first, n + 1)),
                Some((first, n)) => {
                    compare_and_send(link, sess, first, n).await?;
                    Some((c, 1))
                }
                None => Some((c, 1)),
            };
        }
        if let Some((first, n)) = run {
            compare_and_send(link, sess, first, n).await?;
        }
    } else {
        // A few chunks are read at once so that the local disk, not one
        // read at a time, sets the pace; the window bounds what is sent.
        let mut reads = tokio::task::JoinSet::new();
        for c in todo.iter() {
            if reads.len() >= RESYNC_READS_MAX {
                joined(reads.join_next().await)?;
            }
            let (link, sess) = (link.clone(), sess.clone());
            reads.spawn(async move { send_chunk(&link, &sess, c).await });
        }
        while let Some(r) = reads.join_next().await {
            joined(Some(r))?;
        }
    }
    loop {
        let notified = link.progress.notified();
        {
            let g = link.lock();
            if g.pending_resync.is_empty() {
                return Ok(());
            }
            if !g.session.as_ref().is_some_and(|s| Arc::ptr_eq(s, sess)) {
                return Err(ReplicationError::LinkDown);
            }
        }
        notified.await;
    }
}

fn joined(
    r: Option<Result<Result<(), ReplicationError>, tokio::task::JoinError>>,
) -> Result<(), ReplicationError> {
    match r {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(ReplicationError::Malformed(format!(
            "resync task failed: {e}"
        ))),
        None => Ok(()),
    }
}

/// Chunks per checksum request.
pub(crate) fn run_chunks(chunk_bytes: u64) -> u64 {
    (COMPARE_BYTES_MAX / chunk_bytes).clamp(1, u64::from(SUMS_COUNT_MAX))
}

async fn compare_and_send(
    link: &Arc<CopyLink>,
    sess: &Arc<SessionTx>,
    first: u64,
    n: u64,
) -> Result<(), ReplicationError> {
    let differ = compare(link, sess, first, n).await?;
    for c in first..first + n {
        if differ.contains(&c) {
            send_chunk(link, sess, c).await?;
        } else {
            link.resync_chunk_equal(c);
        }
    }
    Ok(())
}

/// The byte range of chunk `c`, cut at the end of the disk.
fn chunk_range(link: &CopyLink, c: u64) -> (u64, u64) {
    let cb = link.chunk_bytes();
    let size = link.primary.local.size();
    let offset = (c * cb).min(size);
    (offset, cb.min(size - offset))
}

async fn read_local(link: &CopyLink, offset: u64, len: u64) -> Result<IoBuf, ReplicationError> {
    let len =
        u32::try_from(len).map_err(|_| ReplicationError::Malformed("read too large".into()))?;
    match storage::call(&*link.primary.local, Request::Read { offset, len }).await? {
        Reply::Read(b) => Ok(b),
        Reply::Done => Err(ReplicationError::Unexpected("read answered without data")),
    }
}

/// Send chunk `c` under the ordering gate.
async fn send_chunk(
    link: &Arc<CopyLink>,
    sess: &Arc<SessionTx>,
    c: u64,
) -> Result<(), ReplicationError> {
    let (offset, len) = chunk_range(link, c);
    if len == 0 {
        link.resync_chunk_equal(c);
        return Ok(());
    }
    let mut ticket = link.primary.gate.admit(offset, len);
    ticket.ready().await;
    let data = read_local(link, offset, len).await?;
    let op = Op::Write {
        offset,
        crc: crc32fast::hash(&data),
        start: 0,
        len: data.len(),
        data: Arc::new(data),
        fua: false,
    };
    let permit = link.reserve(&op).await;
    link.prepare_resync(c, sess)?;
    // The answer is tracked through the pending set, not awaited here, so
    // many chunks are in flight (bounded by the window).
    drop(link.send(sess, op, Some(c..=c), Some(c), permit));
    drop(ticket);
    Ok(())
}

/// Compare chunks `first..first+n` of production and copy at one point of
/// the write order; returns the chunks whose crc32 differ.
pub(crate) async fn compare(
    link: &CopyLink,
    sess: &SessionTx,
    first: u64,
    n: u64,
) -> Result<Vec<u64>, ReplicationError> {
    let cb = link.chunk_bytes();
    if cb as usize > PAYLOAD_BYTES_MAX {
        return Err(ReplicationError::Malformed(format!("chunk of {cb} bytes")));
    }
    let size = link.primary.local.size();
    let offset = (first * cb).min(size);
    let len = (n * cb).min(size - offset);
    if len == 0 {
        return Ok(Vec::new());
    }
    let count = len.div_ceil(cb);
    let mut ticket = link.primary.gate.admit(offset, len);
    ticket.ready().await;
    let data = read_local(link, offset, len).await?;
    let op = Op::Sums {
        offset,
        chunk_bytes: cb as u32,
        count: count as u32,
    };
    let rx = link.enqueue(sess, op).await;
    drop(ticket);
    let remote =
        rx.await
            .map_err(|_| ReplicationError::LinkDown)??
            .ok_or(ReplicationError::Unexpected(
                "sums request answered without sums",
            ))?;
    if remote.len() as u64 != count {
        return Err(ReplicationError::Malformed(format!(
            "{} sums for {count} chunks",
            remote.len()
        )));
    }
    Ok(data
        .chunks(cb as usize)
        .zip(remote)
        .enumerate()
        .filter(|(_, (local, theirs))| crc32fast::hash(local) != *theirs)
        .map(|(i, _)| first + i as u64)
        .collect())
}
