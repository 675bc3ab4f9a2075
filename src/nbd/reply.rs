//! The reply writer of a connection: gathers finished requests and sends their
//! replies with one vectored write, payloads taken from the read buffers uncopied.

use std::io::IoSlice;
use std::ops::Range;

use std::future::Future;
use std::pin::Pin;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::io::{AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::mpsc;

use super::proto::{self, ReplyHeader};
use super::transmission::Permits;
use crate::storage::{Extent, IoBuf};

/// Most replies gathered into one write.
const BATCH_REPLIES_MAX: usize = 64;
/// Most slices per writev: the kernel refuses more than IOV_MAX (1024).
const IOV_MAX: usize = 1024;
/// Holes shorter than this are sent as data: a chunk header costs more.
const HOLE_BYTES_MIN: u64 = 4096;
/// Most chunks one read reply is split into.
const READ_CHUNKS_MAX: usize = 64;

/// What a finished request answers.
pub(super) enum Body {
    /// Success (0) or an NBD errno, with no payload.
    Status(u32),
    /// Read data; `extents` (possibly empty) marks holes to send as OFFSET_HOLE.
    Read {
        offset: u64,
        data: IoBuf,
        extents: Vec<Extent>,
    },
    /// `base:allocation` descriptors (length, state).
    BlockStatus(Vec<(u32, u32)>),
}

/// What the reader hands the writer: a finished reply, or a request still
/// running whose future yields its reply.
pub(super) enum Job {
    Ready(Outgoing),
    Pending(Pin<Box<dyn Future<Output = Outgoing> + Send>>),
}

/// A reply ready to send; its permits are released once it is written.
pub(super) struct Outgoing {
    pub cookie: u64,
    /// Held only so that dropping the reply frees its slot.
    pub _permits: Permits,
    pub body: Body,
}

enum Seg {
    Head(Range<usize>),
    Data(usize, Range<usize>),
}

/// Write replies until every sender is gone and every pending request has
/// finished. After a socket error the rest are dropped (the client is gone),
/// but requests still run to completion.
pub(super) async fn writer<S: AsyncWrite>(
    mut wr: WriteHalf<S>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    structured: bool,
) {
    let mut pending = FuturesUnordered::new();
    let mut batch: Vec<Outgoing> = Vec::with_capacity(BATCH_REPLIES_MAX);
    let mut heads: Vec<u8> = Vec::with_capacity(BATCH_REPLIES_MAX * 64);
    let mut segs: Vec<Seg> = Vec::new();
    let mut open = true;
    let mut broken = false;
    while open || !pending.is_empty() {
        tokio::select! {
            biased;
            Some(o) = pending.next(), if !pending.is_empty() => batch.push(o),
            job = rx.recv(), if open => match job {
                Some(Job::Ready(o)) => batch.push(o),
                Some(Job::Pending(f)) => pending.push(f),
                None => open = false,
            },
        }
        // Take whatever else is already there, without waiting.
        while batch.len() < BATCH_REPLIES_MAX {
            match rx.try_recv() {
                Ok(Job::Ready(o)) => batch.push(o),
                Ok(Job::Pending(f)) => pending.push(f),
                Err(_) => break,
            }
        }
        while batch.len() < BATCH_REPLIES_MAX {
            match pending.next().now_or_never() {
                Some(Some(o)) => batch.push(o),
                _ => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        if !broken {
            heads.clear();
            segs.clear();
            for (i, o) in batch.iter().enumerate() {
                encode(i, o, structured, &mut heads, &mut segs);
            }
            if let Err(e) = write_segments(&mut wr, &heads, &segs, &batch).await {
                tracing::debug!("reply write failed, dropping further replies: {e}");
                broken = true;
            }
        }
        batch.clear();
    }
    let _ = wr.shutdown().await;
}

/// Append the reply of `o` as header bytes in `heads` and segments to send.
fn encode(i: usize, o: &Outgoing, structured: bool, heads: &mut Vec<u8>, segs: &mut Vec<Seg>) {
    let start = heads.len();
    let mut data_seg = None;
    match &o.body {
        Body::Status(errno) => proto::encode_done(heads, o.cookie, structured, *errno),
        Body::Read { data, .. } if !structured => {
            ReplyHeader::Simple {
                errno: 0,
                cookie: o.cookie,
            }
            .encode(heads);
            data_seg = Some(0..data.len());
        }
        Body::Read {
            offset,
            data,
            extents,
        } => {
            return encode_read_chunks(
                i,
                o.cookie,
                *offset,
                data.len(),
                extents,
                heads,
                segs,
                start,
            );
        }
        Body::BlockStatus(ext) => {
            proto::encode_block_status(heads, o.cookie, super::consts::META_BASE_ALLOCATION_ID, ext)
        }
    }
    segs.push(Seg::Head(start..heads.len()));
    if let Some(r) = data_seg {
        if !r.is_empty() {
            segs.push(Seg::Data(i, r));
        }
    }
}

/// A structured read: data chunks, with holes of the device as OFFSET_HOLE
/// chunks (doc/proto.md "Structured reply types"); the last carries DONE.
#[allow(clippy::too_many_arguments)]
fn encode_read_chunks(
    i: usize,
    cookie: u64,
    offset: u64,
    len: usize,
    extents: &[Extent],
    heads: &mut Vec<u8>,
    segs: &mut Vec<Seg>,
    mut start: usize,
) {
    if len == 0 {
        proto::encode_done(heads, cookie, true, 0);
        segs.push(Seg::Head(start..heads.len()));
        return;
    }
    // Runs of (is_hole, range within the buffer), merged and bounded in number.
    let mut runs: Vec<(bool, Range<usize>)> = Vec::new();
    let mut pos = 0usize;
    for e in extents.iter().take(READ_CHUNKS_MAX) {
        if pos >= len {
            break;
        }
        let end = (pos as u64).saturating_add(e.len).min(len as u64) as usize;
        let hole = e.hole && (end - pos) as u64 >= HOLE_BYTES_MIN;
        match runs.last_mut() {
            Some((h, r)) if *h == hole => r.end = end,
            _ => runs.push((hole, pos..end)),
        }
        pos = end;
    }
    if pos < len {
        match runs.last_mut() {
            Some((false, r)) => r.end = len,
            _ => runs.push((false, pos..len)),
        }
    }
    let n = runs.len();
    for (k, (hole, r)) in runs.into_iter().enumerate() {
        let done = k + 1 == n;
        let at = offset + r.start as u64;
        if hole {
            proto::encode_hole_chunk(heads, cookie, at, r.len() as u32, done);
            segs.push(Seg::Head(start..heads.len()));
        } else {
            proto::encode_data_chunk(heads, cookie, at, r.len() as u32, done);
            segs.push(Seg::Head(start..heads.len()));
            segs.push(Seg::Data(i, r));
        }
        start = heads.len();
    }
}

async fn write_segments<S: AsyncWrite>(
    wr: &mut WriteHalf<S>,
    heads: &[u8],
    segs: &[Seg],
    batch: &[Outgoing],
) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = segs
        .iter()
        .map(|s| match s {
            Seg::Head(r) => IoSlice::new(&heads[r.clone()]),
            Seg::Data(i, r) => match &batch[*i].body {
                Body::Read { data, .. } => IoSlice::new(&data[r.clone()]),
                _ => IoSlice::new(&[]),
            },
        })
        .collect();
    let mut rest: &mut [IoSlice<'_>] = &mut slices;
    while !rest.is_empty() {
        let n = wr.write_vectored(&rest[..rest.len().min(IOV_MAX)]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    wr.flush().await
}
