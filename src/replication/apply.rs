//! Copy-host request handling: validation (epoch, range, bounds), ordering
//! through the overlap gate, the disk call, and the acknowledgement.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, Semaphore};

use super::error::ReplicationError;
use super::framed::write_frame;
use super::generation::Generations;
use super::order::OverlapGate;
use super::receiver::{CopyLabel, Shared};
use super::wire::{Msg, PAYLOAD_BYTES_MAX, SUMS_COUNT_MAX};
use crate::storage::run_here;
use crate::storage::{self, Inline, IoBuf, Reply, Request, StorageError};

pub(super) async fn ack_writer(
    mut w: BufWriter<OwnedWriteHalf>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
) {
    let mut scratch = Vec::new();
    while let Some(m) = rx.recv().await {
        if write_frame(&mut w, &mut scratch, &m, &[]).await.is_err() {
            return;
        }
        while let Ok(m) = rx.try_recv() {
            if write_frame(&mut w, &mut scratch, &m, &[]).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
}

fn check_range(offset: u64, len: u64, size: u64) -> Result<(), ReplicationError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(ReplicationError::OutOfRange { offset, len, size }),
    }
}

/// What bounds one session's requests in flight.
#[derive(Clone, Copy)]
pub(super) struct Limits<'a> {
    pub ops: &'a Arc<Semaphore>,
    pub bytes: &'a Arc<Semaphore>,
}

/// Validate one request, admit it in arrival order and run it.
pub(super) async fn dispatch(
    shared: &Arc<Shared>,
    gate: &OverlapGate,
    limits: Limits<'_>,
    acks: &mpsc::UnboundedSender<Msg>,
    msg: Msg,
    page: Option<IoBuf>,
) -> Result<(), ReplicationError> {
    let epoch = msg
        .epoch()
        .ok_or(ReplicationError::Unexpected("challenge after handshake"))?;
    // Fencing: a host speaking for an older epoch lost its role.
    let known = shared
        .cfg
        .epoch
        .fetch_max(epoch, Ordering::AcqRel)
        .max(epoch);
    if epoch < known {
        return Err(ReplicationError::StaleEpoch { got: epoch, known });
    }
    let size = shared.disk.size();
    if let Msg::ResyncBegin { seq, full, .. } = msg {
        // A barrier that also holds back every later request: the reader
        // reads the next frame only once this returns, so nothing of the
        // resync lands while the label still says consistent.
        let mut ticket = gate.barrier();
        ticket.ready().await;
        let reply = begin_resync(shared, full).await.map(|()| None);
        drop(ticket);
        let failed = reply.as_ref().err().map(StorageError::errno);
        let _ = acks.send(reply_msg(shared, seq, (0, 0), reply));
        return match failed {
            None => Ok(()),
            // The resync writes queued behind it must not land on a disk
            // whose label still says consistent: end the session here
            // (its answer still goes out first).
            Some(errno) => Err(ReplicationError::Storage(StorageError::Io {
                offset: 0,
                source: std::io::Error::from_raw_os_error(errno),
            })),
        };
    }
    let (seq, req, ticket, range) = match msg {
        Msg::Write {
            seq,
            offset,
            len,
            fua,
            ..
        } => {
            check_range(offset, len.into(), size)?;
            let data = page.unwrap_or_else(|| IoBuf::zeroed(0));
            (
                seq,
                Op::Disk(Request::Write { offset, data, fua }),
                gate.admit(offset, len.into()),
                (offset, len.into()),
            )
        }
        Msg::Zero {
            seq,
            offset,
            len,
            trim,
            punch,
            ..
        } => {
            check_range(offset, len, size)?;
            let req = if trim {
                Request::Trim { offset, len }
            } else {
                Request::WriteZeroes { offset, len, punch }
            };
            (seq, Op::Disk(req), gate.admit(offset, len), (offset, len))
        }
        Msg::Flush { seq, .. } => (seq, Op::Disk(Request::Flush), gate.barrier(), (0, 0)),
        Msg::InSync { seq, current, .. } => (seq, Op::InSync { current }, gate.barrier(), (0, 0)),
        Msg::SumsRequest {
            seq,
            offset,
            chunk_bytes,
            count,
            ..
        } => {
            if count > SUMS_COUNT_MAX
                || chunk_bytes == 0
                || chunk_bytes as usize > PAYLOAD_BYTES_MAX
            {
                return Err(ReplicationError::Malformed(format!(
                    "sums of {count} chunks of {chunk_bytes}"
                )));
            }
            let len = (u64::from(chunk_bytes) * u64::from(count)).min(size.saturating_sub(offset));
            check_range(offset, len, size)?;
            (
                seq,
                Op::Sums {
                    offset,
                    len,
                    chunk_bytes,
                },
                gate.admit(offset, len),
                (offset, len),
            )
        }
        _ => {
            return Err(ReplicationError::Unexpected(
                "reply message sent to a copy host",
            ))
        }
    };
    // A lone write or flush (nothing else in the order gate), or a plain
    // write that overlaps nothing still in flight, runs on this task's
    // thread when the engine offers it: the hop to the engine's thread and
    // back is most of a small write's time on the copy. The engine takes a
    // plain write at any depth only when it is a small page-cache copy.
    let req = match req {
        Op::Disk(r) if gate.is_alone(&ticket) || (ticket.is_ready() && r.is_plain_write()) => {
            let bytes = write_bytes(&r);
            match run_here(&*shared.disk, r) {
                Inline::Done(res) => {
                    let reply = res.map(|_| {
                        applied(shared, bytes);
                        None
                    });
                    drop(ticket);
                    let _ = acks.send(reply_msg(shared, seq, range, reply));
                    return Ok(());
                }
                Inline::Declined(r) => Op::Disk(r),
            }
        }
        other => other,
    };
    let page_bytes = match &req {
        Op::Disk(Request::Write { data, .. }) => data.len() as u32,
        _ => 0,
    };
    let permit = limits
        .ops
        .clone()
        .acquire_owned()
        .await
        .expect("ops semaphore is never closed");
    let held = limits
        .bytes
        .clone()
        .acquire_many_owned(page_bytes.min(shared.cfg.inflight_bytes_max.max(1)))
        .await
        .expect("bytes semaphore is never closed");
    let shared = shared.clone();
    let acks = acks.clone();
    let mut ticket = ticket;
    tokio::spawn(async move {
        ticket.ready().await;
        let reply = run(&shared, req).await;
        drop(ticket);
        let _ = acks.send(reply_msg(&shared, seq, range, reply));
        drop(held);
        drop(permit);
    });
    Ok(())
}

/// The answer to the frame numbered `seq`, over `range` (offset, len) of
/// the copy disk: a failure names the range, so production can say where
/// the copy disk fails.
fn reply_msg(
    shared: &Shared,
    seq: u64,
    range: (u64, u64),
    reply: Result<Option<Vec<u32>>, StorageError>,
) -> Msg {
    let epoch = shared.cfg.epoch.load(Ordering::Acquire);
    match reply {
        Ok(None) => Msg::Ack { epoch, seq },
        Ok(Some(sums)) => Msg::Sums { epoch, seq, sums },
        Err(e) => {
            // A full disk fails every request in flight, on every retry:
            // said at the 1st, 2nd, 4th, 8th ... failure, not each time.
            let n = shared.stats.disk_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    offset = range.0,
                    len = range.1,
                    failures = n,
                    "the copy disk failed a request: {e}"
                );
            }
            Msg::Nack {
                epoch,
                seq,
                errno: e.errno(),
                offset: range.0,
                len: range.1,
            }
        }
    }
}

/// Changes the copy's label with `f` and makes it durable through the
/// node's writer before it counts (unchanged, nothing is written).
async fn update_label(shared: &Shared, f: impl FnOnce(&mut CopyLabel)) -> Result<(), StorageError> {
    let mut label = shared.label.lock().await;
    let mut next = *label;
    f(&mut next);
    if next == *label {
        return Ok(());
    }
    if let Some(write) = shared.cfg.write_label.clone() {
        let io = |source| StorageError::Io { offset: 0, source };
        tokio::task::spawn_blocking(move || write(next))
            .await
            .map_err(|e| io(std::io::Error::other(format!("label writer: {e}"))))?
            .map_err(io)?;
    }
    *label = next;
    shared.generations.send_replace(next.generations);
    Ok(())
}

/// A resync begins: the label says inconsistent, durably. A full sync
/// overwrites everything, so the copy's generation no longer names its
/// data: it is dropped, and an interrupted full sync starts over.
async fn begin_resync(shared: &Shared, full: bool) -> Result<(), StorageError> {
    update_label(shared, |l| {
        l.consistent = false;
        if full {
            l.generations = Generations::default();
        }
    })
    .await?;
    tracing::info!(
        full,
        "resync begins: the copy disk is inconsistent until it ends"
    );
    Ok(())
}

fn write_bytes(req: &Request) -> Option<u64> {
    match req {
        Request::Write { data, .. } => Some(data.len() as u64),
        _ => None,
    }
}

/// Counts a write that reached the copy disk.
fn applied(shared: &Shared, bytes: Option<u64>) {
    if let Some(b) = bytes {
        shared.stats.writes_applied.fetch_add(1, Ordering::Relaxed);
        shared.stats.bytes_written.fetch_add(b, Ordering::Relaxed);
    }
}

enum Op {
    Disk(Request),
    InSync {
        current: u64,
    },
    Sums {
        offset: u64,
        len: u64,
        chunk_bytes: u32,
    },
}

async fn run(shared: &Shared, op: Op) -> Result<Option<Vec<u32>>, StorageError> {
    match op {
        Op::Disk(req) => {
            let bytes = write_bytes(&req);
            storage::call(&*shared.disk, req).await?;
            applied(shared, bytes);
            Ok(None)
        }
        Op::InSync { current } => {
            // Durable first: the generation must never claim data the
            // disk could still lose. Then the label, durable before the
            // acknowledgement: production calls the copy UpToDate on it.
            storage::call(&*shared.disk, Request::Flush).await?;
            update_label(shared, |l| {
                let g = &mut l.generations;
                if g.current != current {
                    g.history = [g.current, g.history[0]];
                    g.current = current;
                }
                g.bitmap = 0;
                l.consistent = true;
            })
            .await?;
            Ok(None)
        }
        Op::Sums {
            offset,
            len,
            chunk_bytes,
        } => {
            let mut sums = Vec::new();
            let mut at = offset;
            while at < offset + len {
                let n = u64::from(chunk_bytes).min(offset + len - at) as u32;
                let Reply::Read(buf) =
                    storage::call(&*shared.disk, Request::Read { offset: at, len: n }).await?
                else {
                    return Err(StorageError::Stopped);
                };
                sums.push(crc32fast::hash(&buf));
                at += u64::from(n);
            }
            Ok(Some(sums))
        }
    }
}
