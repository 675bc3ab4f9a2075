//! Catch-up of a copy that comes (back) up: send the dirty chunks while new
//! writes keep flowing, or, with `checksum_resync`, compare per-chunk crc32
//! first and send only the chunks that differ.
//!
//! Runs of adjacent dirty chunks travel as one request of up to
//! [`RESYNC_REQUEST_BYTES_MAX`]: one gate admission, one (O_DIRECT) read,
//! one crc32 per side, one frame, one disk write and one ack per run, so
//! the disks and the socket, not per-chunk overhead, set the pace. A run
//! that reads as all zeroes is sent as a `Zero` range instead of its pages.
//!
//! A resync write never overwrites a newer application write: each run is
//! admitted through the volume's ordering gate, read and queued while it
//! holds its place, so a later application write to it is queued after it
//! and an earlier one is already in the data read.

use std::ops::RangeInclusive;
use std::sync::Arc;

use super::error::ReplicationError;
use super::link::{CopyLink, Op, SessionTx};
use super::wire::{PAYLOAD_BYTES_MAX, SUMS_COUNT_MAX};
use crate::storage::{self, IoBuf, Reply, Request};

/// Largest resync request: a run of dirty chunks read and sent as one
/// `Write` frame (the wire's page bound).
pub(crate) const RESYNC_REQUEST_BYTES_MAX: u64 = PAYLOAD_BYTES_MAX as u64;
/// Resync requests being read at once: enough to keep the local disk busy
/// (4 × 4 MiB reads in its queue) while earlier ones are on the wire; the
/// link's window bounds what is sent and not yet acknowledged.
const RESYNC_READS_MAX: usize = 4;
/// Bytes compared per checksum request (one local read).
const COMPARE_BYTES_MAX: u64 = 4 << 20;

/// Resync every chunk the link owes its copy; returns when all are acked.
pub(crate) async fn run(
    link: &Arc<CopyLink>,
    sess: &Arc<SessionTx>,
) -> Result<(), ReplicationError> {
    let todo = link.lock().pending_resync.clone();
    if link.cfg.checksum_resync {
        for (first, n) in todo.runs(run_chunks(link.chunk_bytes())) {
            compare_and_send(link, sess, first, n).await?;
        }
    } else {
        // A few runs are read at once so that the local disk, not one read
        // at a time, sets the pace; the window bounds what is sent.
        let per_run = request_chunks(link.chunk_bytes());
        let mut reads = tokio::task::JoinSet::new();
        for (first, n) in todo.runs(per_run) {
            if reads.len() >= RESYNC_READS_MAX {
                joined(reads.join_next().await)?;
            }
            let (link, sess) = (link.clone(), sess.clone());
            reads.spawn(async move { send_run(&link, &sess, first, n).await });
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

/// Chunks per resync request (at least one, even for a chunk larger than
/// a frame, which [`send_run`] refuses).
pub(crate) fn request_chunks(chunk_bytes: u64) -> u64 {
    (RESYNC_REQUEST_BYTES_MAX / chunk_bytes).max(1)
}

async fn compare_and_send(
    link: &Arc<CopyLink>,
    sess: &Arc<SessionTx>,
    first: u64,
    n: u64,
) -> Result<(), ReplicationError> {
    let differ = compare(link, sess, first, n).await?;
    for c in first..first + n {
        if differ.binary_search(&c).is_err() {
            link.resync_chunk_equal(c);
        }
    }
    // The chunks that differ, sent as runs (read again under the gate: the
    // data compared may have been overwritten since).
    let per_run = request_chunks(link.chunk_bytes());
    let mut i = 0;
    while let Some(&start) = differ.get(i) {
        let mut len = 1;
        while len < per_run && differ.get(i + len as usize) == Some(&(start + len)) {
            len += 1;
        }
        send_run(link, sess, start, len).await?;
        i += len as usize;
    }
    Ok(())
}

/// The byte range of chunks `first..first+n`, cut at the end of the disk.
fn run_range(link: &CopyLink, first: u64, n: u64) -> (u64, u64) {
    let cb = link.chunk_bytes();
    let size = link.primary.local.size();
    let offset = first.saturating_mul(cb).min(size);
    (offset, n.saturating_mul(cb).min(size - offset))
}

async fn read_local(link: &CopyLink, offset: u64, len: u64) -> Result<IoBuf, ReplicationError> {
    let len =
        u32::try_from(len).map_err(|_| ReplicationError::Malformed("read too large".into()))?;
    match storage::call(&*link.primary.local, Request::Read { offset, len }).await? {
        Reply::Read(b) => Ok(b),
        Reply::Done => Err(ReplicationError::Unexpected("read answered without data")),
    }
}

/// True when every byte of `data` is zero.
pub(crate) fn is_zero(data: &[u8]) -> bool {
    // Word at a time; random data fails on the first word.
    let (head, words, tail) = {
        // SAFETY: every bit pattern is a valid u64; align_to only splits
        // the slice at alignment boundaries and reads nothing out of it.
        unsafe { data.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0)
        && words
            .chunks(64)
            .all(|w| w.iter().fold(0, |a, &x| a | x) == 0)
        && tail.iter().all(|&b| b == 0)
}

/// Send chunks `first..first+n` as one request, under the ordering gate.
async fn send_run(
    link: &Arc<CopyLink>,
    sess: &Arc<SessionTx>,
    first: u64,
    n: u64,
) -> Result<(), ReplicationError> {
    let (offset, len) = run_range(link, first, n);
    if len == 0 {
        for c in first..first + n {
            link.resync_chunk_equal(c);
        }
        return Ok(());
    }
    if len > RESYNC_REQUEST_BYTES_MAX {
        return Err(ReplicationError::Malformed(format!(
            "resync request of {len} bytes exceeds {RESYNC_REQUEST_BYTES_MAX}"
        )));
    }
    let chunks: RangeInclusive<u64> = first..=first + n - 1;
    let mut ticket = link.primary.gate.admit(offset, len);
    ticket.ready().await;
    let data = read_local(link, offset, len).await?;
    let op = if is_zero(&data) {
        Op::Zero {
            offset,
            len,
            trim: false,
            punch: false,
        }
    } else {
        Op::Write {
            offset,
            crc: crc32fast::hash(&data),
            start: 0,
            len: data.len(),
            data: Arc::new(data),
            fua: false,
        }
    };
    let permit = link.reserve(&op).await;
    link.prepare_resync(chunks.clone(), sess)?;
    // The answer is tracked through the pending set, not awaited here, so
    // many runs are in flight (bounded by the window).
    drop(link.send(sess, op, Some(chunks.clone()), Some(chunks), permit));
    drop(ticket);
    Ok(())
}

/// Compare chunks `first..first+n` of production and copy at one point of
/// the write order; returns the chunks whose crc32 differ, in order.
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
    let (offset, len) = run_range(link, first, n);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection_sees_one_set_byte_anywhere() {
        let mut page = vec![0u8; 3 * 4096 + 7];
        assert!(is_zero(&page));
        assert!(is_zero(&[]));
        for at in [0, 1, 4095, 4096, 8191, page.len() - 1] {
            page[at] = 1;
            assert!(!is_zero(&page), "byte {at} set");
            assert!(!is_zero(&page[1..]) || at == 0, "unaligned view, byte {at}");
            page[at] = 0;
        }
    }

    #[test]
    fn resync_requests_fit_a_frame() {
        assert_eq!(
            request_chunks(64 << 10) * (64 << 10),
            RESYNC_REQUEST_BYTES_MAX
        );
        assert_eq!(request_chunks(8 << 20), 1, "an oversize chunk is one run");
        assert!(RESYNC_REQUEST_BYTES_MAX as usize <= PAYLOAD_BYTES_MAX);
    }
}
