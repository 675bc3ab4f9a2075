//! The sending half of one copy-link session: requests get their sequence
//! numbers in queue order and go out in batches, header and page side by
//! side in one `writev`, so no page is copied on its way to the socket.
//!
//! Whoever queues onto an idle session with nothing in flight writes the
//! frame itself, without waiting (a QD1 write reaches the wire with no task
//! switch, and a lent page is handed back before its owner yields). With
//! requests in flight the session's writer task sends instead, gathering
//! what queued meanwhile into one batch; it also finishes a batch the
//! socket took only in part. While anyone writes, the others only queue.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, IoSlice};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

use super::error::ReplicationError;
use super::link::{CopyLink, Item, PageLease, Queued};
use super::wire;
use crate::storage::IoBuf;

/// Frames gathered into one batch at most: two iovecs each, well under
/// the kernel's IOV_MAX of 1024.
pub(crate) const BATCH_FRAMES_MAX: usize = 256;
/// Page bytes gathered into one batch at most; a single larger page is a
/// batch of its own.
pub(crate) const BATCH_BYTES_MAX: usize = 2 << 20;

/// Requests sent and not yet answered, by sequence number.
pub(crate) type Sent = Mutex<BTreeMap<u64, Item>>;

/// The sending end of one connection.
pub(crate) struct SessionTx {
    w: OwnedWriteHalf,
    state: Mutex<TxState>,
    /// Wakes the writer task: a batch was parked or a write failed.
    wake: Notify,
    /// Requests written (or being written) and not answered yet.
    pub(crate) sent: Sent,
}

struct TxState {
    queue: VecDeque<Queued>,
    /// Someone is writing (a submitter or the writer task); the others
    /// only queue, so frames never interleave on the wire.
    busy: bool,
    /// `busy` was handed to the writer task: only then may it write.
    writer_owns: bool,
    /// A batch the socket took only part of, for the writer task.
    parked: Option<Batch>,
    /// A submitter's write failed; the writer task ends the session.
    failed: Option<io::Error>,
    /// The session is over: nothing more is queued or written.
    closed: bool,
    seq: u64,
}

/// Frames on their way out: headers in one buffer, pages where they are.
struct Batch {
    heads: Vec<u8>,
    frames: Vec<Frame>,
    page_bytes: usize,
    /// Bytes of the batch the socket has taken.
    written: usize,
}

/// One frame of a batch: its header ends at `head_end` in the batch's
/// header buffer, its page follows it on the wire.
struct Frame {
    head_end: usize,
    /// Declared before `_lease`: the buffer is let go of before the lease
    /// tells its owner so.
    page: Option<(Arc<IoBuf>, usize, usize)>,
    _lease: Option<PageLease>,
}

impl SessionTx {
    pub(crate) fn new(w: OwnedWriteHalf) -> SessionTx {
        SessionTx {
            w,
            state: Mutex::new(TxState {
                queue: VecDeque::new(),
                busy: false,
                writer_owns: false,
                parked: None,
                failed: None,
                closed: false,
                seq: 0,
            }),
            wake: Notify::new(),
            sent: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TxState> {
        self.state.lock().expect("sender lock poisoned")
    }

    /// Queue `q` and, when nobody is writing, write it (and whatever else
    /// is queued) now. Gives the request back if the session is over.
    pub(crate) fn push(&self, link: &CopyLink, q: Queued) -> Result<(), Box<Queued>> {
        let mut g = self.lock();
        if g.closed {
            return Err(Box::new(q));
        }
        g.queue.push_back(q);
        if g.busy {
            return Ok(());
        }
        g.busy = true;
        if !self.sent.lock().expect("sent lock poisoned").is_empty() {
            // Requests in flight: a deep queue, where throughput is won by
            // batching. The writer task gathers what queues up meanwhile
            // into one syscall (and the copy reads it in one).
            g.writer_owns = true;
            drop(g);
            self.wake.notify_one();
            return Ok(());
        }
        drop(g);
        self.pump(link);
        Ok(())
    }

    /// Write batches while the socket takes them without waiting. Runs
    /// holding `busy`; ends by clearing it (queue empty) or handing it to
    /// the writer task (socket full, or failed).
    fn pump(&self, link: &CopyLink) {
        while let Some(mut batch) = self.take_batch(link) {
            match batch.try_write(&self.w) {
                Ok(true) => count_sent(link, &batch),
                Ok(false) => {
                    let mut g = self.lock();
                    g.parked = Some(batch);
                    g.writer_owns = true;
                    drop(g);
                    self.wake.notify_one();
                    return;
                }
                Err(e) => {
                    let mut g = self.lock();
                    g.failed = Some(e);
                    g.writer_owns = true;
                    drop(g);
                    self.wake.notify_one();
                    return;
                }
            }
        }
    }

    /// The next batch from the queue, numbered and recorded as sent; `None`
    /// (and `busy` cleared) when there is nothing to write.
    fn take_batch(&self, link: &CopyLink) -> Option<Batch> {
        let mut g = self.lock();
        if g.closed || g.queue.is_empty() {
            g.busy = false;
            g.writer_owns = false;
            return None;
        }
        let mut batch = Batch {
            heads: Vec::with_capacity(g.queue.len().min(BATCH_FRAMES_MAX) * 64),
            frames: Vec::new(),
            page_bytes: 0,
            written: 0,
        };
        let mut sent = self.sent.lock().expect("sent lock poisoned");
        while batch.frames.len() < BATCH_FRAMES_MAX && batch.page_bytes < BATCH_BYTES_MAX {
            let Some(Queued { op, lease, item }) = g.queue.pop_front() else {
                break;
            };
            g.seq += 1;
            let epoch = link.primary.epoch.load(Ordering::Acquire);
            let (msg, page) = op.to_msg(epoch, g.seq);
            drop(op);
            let len = page.as_ref().map_or(0, |(_, _, l)| *l);
            wire::encode_head(&msg, len, &mut batch.heads);
            // Recorded before it is written, so its ack cannot come first
            // and a failure mid-write still answers it.
            sent.insert(g.seq, item);
            batch.frames.push(Frame {
                head_end: batch.heads.len(),
                page,
                _lease: lease,
            });
            batch.page_bytes += len;
        }
        Some(batch)
    }

    /// End the session: later requests are refused; the queued ones are
    /// handed back to be answered (the parked batch's are in `sent`).
    pub(crate) fn close(&self) -> Vec<Queued> {
        let mut g = self.lock();
        g.closed = true;
        g.parked = None;
        g.queue.drain(..).collect()
    }
}

/// The session's writer task: finishes what submitters could not write
/// without waiting, then drains the queue. Ends on the first write error.
pub(crate) async fn write_loop(link: &CopyLink, tx: &SessionTx) -> Result<(), ReplicationError> {
    loop {
        tx.wake.notified().await;
        let (parked, failed) = {
            let mut g = tx.lock();
            if !g.writer_owns {
                continue;
            }
            (g.parked.take(), g.failed.take())
        };
        if let Some(e) = failed {
            return Err(e.into());
        }
        let mut next = match parked {
            Some(b) => Some(b),
            None => tx.take_batch(link),
        };
        while let Some(mut batch) = next {
            batch.write_all(&tx.w).await?;
            count_sent(link, &batch);
            drop(batch);
            next = tx.take_batch(link);
        }
    }
}

fn count_sent(link: &CopyLink, batch: &Batch) {
    link.counters
        .bytes_sent
        .fetch_add(batch.page_bytes as u64, Ordering::Relaxed);
}

impl Batch {
    /// Write as much as the socket takes now: `Ok(true)` when all of it.
    fn try_write(&mut self, w: &OwnedWriteHalf) -> io::Result<bool> {
        loop {
            if self.written == self.total() {
                return Ok(true);
            }
            let mut slices = self.slices();
            let mut rest: &mut [IoSlice<'_>] = &mut slices;
            // `written` is below the total here, so this stays in bounds.
            IoSlice::advance_slices(&mut rest, self.written);
            match w.try_write_vectored(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Write all of it, waiting for room in the socket.
    async fn write_all(&mut self, w: &OwnedWriteHalf) -> io::Result<()> {
        while !self.try_write(w)? {
            w.writable().await?;
        }
        Ok(())
    }

    fn total(&self) -> usize {
        self.heads.len() + self.page_bytes
    }

    /// Every header and page of the batch, in wire order.
    fn slices(&self) -> Vec<IoSlice<'_>> {
        let mut slices = Vec::with_capacity(self.frames.len() * 2);
        let mut head_start = 0;
        for f in &self.frames {
            slices.push(IoSlice::new(&self.heads[head_start..f.head_end]));
            head_start = f.head_end;
            if let Some((buf, start, len)) = &f.page {
                if *len > 0 {
                    slices.push(IoSlice::new(&buf[*start..*start + *len]));
                }
            }
        }
        slices
    }
}
