//! Online verification of a copy: only per-chunk crc32 cross the wire, and
//! the report names exactly the chunks that differ.

use std::sync::Arc;

use super::error::ReplicationError;
use super::link::CopyLink;
use super::resync::{compare, run_chunks};

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub chunk_bytes: u64,
    pub chunks_compared: u64,
    /// Indices of the chunks whose checksums differ, ascending.
    pub differing: Vec<u64>,
}

/// Where a verification stands after one compared batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VerifyStep {
    /// Bytes of the disk compared so far.
    pub bytes_compared: u64,
    /// Bytes of the disk in all.
    pub bytes_total: u64,
    /// Chunks found differing so far.
    pub differing_chunks: u64,
}

/// Compare every chunk of production with the copy behind `link`. Each
/// batch is compared at one point of the write order; under concurrent
/// writes a chunk may differ transiently, so verify a quiesced volume for
/// an exact answer.
pub async fn verify(link: &Arc<CopyLink>) -> Result<VerifyReport, ReplicationError> {
    verify_with_progress(link, |_| {}).await
}

/// [`verify`], calling `on_batch` after each compared batch (at most
/// 4 MiB of disk, see `resync::run_chunks`), so a caller can show how far
/// it got. The callback runs on the verifying task: it must not block.
pub async fn verify_with_progress(
    link: &Arc<CopyLink>,
    mut on_batch: impl FnMut(VerifyStep),
) -> Result<VerifyReport, ReplicationError> {
    let sess = link
        .lock()
        .session
        .clone()
        .ok_or(ReplicationError::LinkDown)?;
    let cb = link.chunk_bytes();
    let size = link.primary.local.size();
    let total = size.div_ceil(cb);
    let step = run_chunks(cb);
    let mut differing = Vec::new();
    let mut first = 0;
    while first < total {
        let n = step.min(total - first);
        differing.extend(compare(link, &sess, first, n).await?);
        first += n;
        on_batch(VerifyStep {
            bytes_compared: first.saturating_mul(cb).min(size),
            bytes_total: size,
            differing_chunks: differing.len() as u64,
        });
    }
    Ok(VerifyReport {
        chunk_bytes: cb,
        chunks_compared: total,
        differing,
    })
}
