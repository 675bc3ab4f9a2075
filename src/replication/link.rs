//! One copy link on the production host: its dirty log, its window of
//! unacknowledged bytes, its state and counters, and the bookkeeping that
//! decides when a dirty chunk may be cleared. The connection itself lives
//! in `session.rs`.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};

use super::dirty::{chunk_span, ChunkSet, DirtyLog};
use super::disk_failure::{shown_state, DiskFailure};
use super::error::ReplicationError;
pub(crate) use super::op::Op;
use super::primary::Primary;

pub(crate) use super::sender::SessionTx;
pub use super::stats::CopyStats;

/// Where a copy link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Not connected: writes are marked dirty and not sent.
    Disconnected,
    /// Connected and resyncing: the copy is not usable yet.
    Inconsistent,
    /// Connected and holding everything production acknowledged to it.
    UpToDate,
    /// Both sides wrote while apart; the link stopped (never merged).
    SplitBrain,
    /// The copy was refused (newer or unrelated data, too small, fenced).
    Refused,
    /// The copy's disk failed a request (its errno and range are in the
    /// link's `disk_failure`): retried with a longer backoff, shown until a
    /// later session brings the copy UpToDate. Not a sync in progress.
    DiskFailed,
    /// The link was stopped.
    Stopped,
}

/// How to reach and treat one copy host.
#[derive(Debug, Clone)]
pub struct CopyConfig {
    /// A name for logs and stats (e.g. the site).
    pub name: String,
    /// `host:port` of the copy host's receiver.
    pub addr: String,
    /// The recovery domain's secret.
    pub secret: Vec<u8>,
    /// Resync by exchanging per-chunk crc32 and sending only what differs.
    pub checksum_resync: bool,
    /// Unacknowledged bytes allowed on the link (async mode's lag bound).
    pub window_bytes_max: u32,
    pub connect_timeout_ms: u64,
    /// Time an unacknowledged request may wait before the link is dropped.
    pub ack_timeout_ms: u64,
    pub reconnect_backoff_ms_min: u64,
    pub reconnect_backoff_ms_max: u64,
    /// Consecutive failed connection attempts before the link stops;
    /// `None` retries until stopped (the group decides when a copy is
    /// given up, as DRBD keeps trying).
    pub reconnect_attempts_max: Option<u32>,
}

impl CopyConfig {
    /// Defaults: 64 MiB window, 10 s ack timeout, backoff 50 ms .. 2 s.
    pub fn new(name: &str, addr: &str, secret: &[u8]) -> CopyConfig {
        CopyConfig {
            name: name.to_string(),
            addr: addr.to_string(),
            secret: secret.to_vec(),
            checksum_resync: false,
            window_bytes_max: 64 << 20,
            connect_timeout_ms: 2_000,
            ack_timeout_ms: 10_000,
            reconnect_backoff_ms_min: 50,
            reconnect_backoff_ms_max: 2_000,
            reconnect_attempts_max: None,
        }
    }
}

/// The answer a request gets: `Some(sums)` for a `Sums` request.
pub(crate) type ItemReply = Result<Option<Vec<u32>>, ReplicationError>;

/// One request queued for a session's writer: what to send, and the
/// bookkeeping that waits for the copy's answer.
pub(crate) struct Queued {
    pub op: Op,
    /// Dropped once the page is in the socket (after `op` lets go of its
    /// buffer, fields drop in order): the volume waits for it before it
    /// hands the same buffer to the local disk.
    pub lease: Option<PageLease>,
    pub item: Item,
}

/// Held by a link while it still reads a page it was lent; its drop is the
/// signal that the link no longer needs the buffer.
pub(crate) type PageLease = oneshot::Sender<()>;

/// One request sent or about to be sent, until the copy answers it.
pub(crate) struct Item {
    /// Chunks counted in flight for this request.
    pub chunks: Option<RangeInclusive<u64>>,
    /// The resync chunks this request carries (a run of adjacent chunks).
    pub resync_chunks: Option<RangeInclusive<u64>>,
    /// The copy's acknowledgement means the data is durable there (a FUA
    /// write): its chunks may be cleared at once.
    pub durable: bool,
    /// For a flush (or InSync): the chunks acknowledged before it was
    /// queued, which its acknowledgement makes durable on the copy.
    pub covers: Option<ChunkSet>,
    pub reply: Option<oneshot::Sender<ItemReply>>,
    pub page_bytes: u64,
    /// Bytes of the volume the request covers (a zero range has no page).
    pub covered_bytes: u64,
    pub enqueued: Instant,
    /// This request's page bytes, counted in the link's lag while it lives.
    /// Declared before `_permit` so that it drops first: the lag is taken
    /// off before the window room is given back, and a request admitted
    /// into that room never finds this one still counted (the lag stays
    /// within the window).
    pub _lag: LagBytes,
    pub _permit: Option<OwnedSemaphorePermit>,
}

/// Page bytes counted in a link's lag from when a request is queued until it
/// is answered or dropped, the same span as its window room; unlike the
/// room, no header overhead, so an idle copy's lag is exactly zero and a
/// busy one's is the data it has yet to acknowledge.
pub(crate) struct LagBytes {
    total: Arc<AtomicU64>,
    bytes: u64,
}

impl LagBytes {
    fn new(total: &Arc<AtomicU64>, bytes: u64) -> LagBytes {
        total.fetch_add(bytes, Ordering::Relaxed);
        LagBytes {
            total: total.clone(),
            bytes,
        }
    }
}

impl Drop for LagBytes {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

pub(crate) struct Inner {
    pub state: LinkState,
    pub session: Option<Arc<SessionTx>>,
    /// Requests in flight per chunk: a chunk is cleared only at zero. A
    /// volume write counts twice, once for the copy's answer and once for
    /// the production disk's, so that a chunk the copy holds is never
    /// cleared while the local write may still fail.
    pub inflight: HashMap<u64, u32>,
    /// Chunks the copy acknowledged and has not yet made durable: they stay
    /// dirty until a flush queued after their acknowledgement is answered
    /// (DRBD's barrier acks). A copy's acknowledgement alone means its page
    /// cache, which a power cut on the copy host loses.
    pub unflushed: ChunkSet,
    /// Chunks the running resync still owes the copy.
    pub pending_resync: ChunkSet,
    pub resync_bytes_total: u64,
    pub resync_started: Option<Instant>,
    /// When the resync that began at `resync_started` left the copy UpToDate.
    pub resync_finished: Option<Instant>,
    pub last_error: Option<String>,
    /// Enqueue time of the oldest request sent and not acknowledged.
    pub oldest_unacked: Option<Instant>,
    /// The last failure of the copy's disk, until the copy is UpToDate again.
    pub disk_failure: Option<DiskFailure>,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub bytes_sent: AtomicU64,
    pub bytes_acked: AtomicU64,
    pub resynced_bytes: AtomicU64,
    pub resync_skipped: AtomicU64,
    pub sessions: AtomicU64,
    /// Page bytes queued or sent and not yet answered.
    pub lag_bytes: Arc<AtomicU64>,
}

/// A copy link: created by `MirroredVolume::add_copy`, driven by its own task.
pub struct CopyLink {
    pub(crate) cfg: CopyConfig,
    pub(crate) primary: Arc<Primary>,
    pub(crate) log: Arc<dyn DirtyLog>,
    pub(crate) inner: Mutex<Inner>,
    pub(crate) window: Arc<Semaphore>,
    pub(crate) counters: Counters,
    /// Signalled when the resync's pending set empties or the session ends.
    pub(crate) progress: Notify,
    pub(crate) stop: watch::Sender<bool>,
}

impl CopyLink {
    pub(crate) fn new(cfg: CopyConfig, primary: Arc<Primary>, log: Arc<dyn DirtyLog>) -> CopyLink {
        let chunks = primary.local.size().div_ceil(log.chunk_bytes());
        CopyLink {
            window: Arc::new(Semaphore::new(cfg.window_bytes_max.max(1) as usize)),
            cfg,
            primary,
            log,
            inner: Mutex::new(Inner {
                state: LinkState::Disconnected,
                session: None,
                inflight: HashMap::new(),
                unflushed: ChunkSet::new(chunks),
                pending_resync: ChunkSet::new(chunks),
                resync_bytes_total: 0,
                resync_started: None,
                resync_finished: None,
                last_error: None,
                oldest_unacked: None,
                disk_failure: None,
            }),
            counters: Counters::default(),
            progress: Notify::new(),
            stop: watch::channel(false).0,
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("link lock poisoned")
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn state(&self) -> LinkState {
        let g = self.lock();
        shown_state(g.state, g.disk_failure.as_ref())
    }

    /// Chunk size of this link's dirty log.
    pub fn chunk_bytes(&self) -> u64 {
        self.log.chunk_bytes()
    }

    /// Stop the link: the connection closes and no reconnect follows.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Before a volume request touching `[offset, offset+len)` is sent or
    /// skipped: mark the range dirty (durably; activity-log style, so a
    /// crash of the production host loses no mark) and count it in flight
    /// twice, for the copy's answer and for the local write's
    /// ([`local_done`](Self::local_done)). Returns the session to send it
    /// on, if the link is up (nothing is counted otherwise).
    pub(crate) fn prepare(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<Option<Arc<SessionTx>>, ReplicationError> {
        let mut g = self.lock();
        // Under the lock, so a concurrent acknowledgement cannot clear the
        // chunk between our mark and our in-flight count.
        self.log
            .mark(offset, len)
            .map_err(ReplicationError::DirtyLog)?;
        let Some(s) = g.session.clone() else {
            return Ok(None);
        };
        for c in chunk_span(offset, len, self.log.chunk_bytes()) {
            *g.inflight.entry(c).or_insert(0) += 2;
        }
        Ok(Some(s))
    }

    /// The production disk finished the write counted by
    /// [`prepare`](Self::prepare) over `chunks`. A chunk both sides now
    /// hold waits for the copy's next flush; after a local failure
    /// (`primary.failed`) it stays dirty for good.
    pub(crate) fn local_done(&self, chunks: RangeInclusive<u64>) {
        let mut g = self.lock();
        let may_clear = self.may_clear(&g);
        for c in chunks {
            if self.uncount(&mut g, c) == 0 && may_clear && !g.pending_resync.contains(c) {
                g.unflushed.insert(c);
            }
        }
    }

    /// Take one request off chunk `c`'s in-flight count; returns what is left.
    fn uncount(&self, g: &mut Inner, c: u64) -> u32 {
        let left = match g.inflight.get_mut(&c) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        if left == 0 {
            g.inflight.remove(&c);
        }
        left
    }

    /// Whether answers may clean chunks now: a session is up and the
    /// production disk has not failed.
    fn may_clear(&self, g: &Inner) -> bool {
        matches!(g.state, LinkState::Inconsistent | LinkState::UpToDate)
            && !self.primary.disk_failed()
    }

    /// Room in the window for `op`: waits while the copy is that far
    /// behind (back-pressure). Taken before a request is counted in flight,
    /// so a caller cancelled while waiting leaves no count behind.
    pub(crate) async fn reserve(&self, op: &Op) -> OwnedSemaphorePermit {
        // Headers count too, so a stream of flushes is bounded as well.
        let cost = (op.page_bytes() + 64).min(self.cfg.window_bytes_max.max(1) as u64) as u32;
        self.window
            .clone()
            .acquire_many_owned(cost)
            .await
            .expect("the window semaphore is never closed")
    }

    /// Queue a request with its window room; it gets its answer through the
    /// returned receiver (LinkDown when the connection dies first).
    pub(crate) fn send(
        &self,
        session: &SessionTx,
        op: Op,
        chunks: Option<RangeInclusive<u64>>,
        resync_chunks: Option<RangeInclusive<u64>>,
        permit: OwnedSemaphorePermit,
    ) -> oneshot::Receiver<ItemReply> {
        self.send_leased(session, op, chunks, resync_chunks, permit, None)
    }

    /// [`send`](Self::send) for a page lent by the volume: `lease` is
    /// dropped as soon as the link is done reading the page.
    pub(crate) fn send_leased(
        &self,
        session: &SessionTx,
        op: Op,
        chunks: Option<RangeInclusive<u64>>,
        resync_chunks: Option<RangeInclusive<u64>>,
        permit: OwnedSemaphorePermit,
        lease: Option<PageLease>,
    ) -> oneshot::Receiver<ItemReply> {
        let (tx, rx) = oneshot::channel();
        // A run of zeroes travels as a range, without pages, yet counts as
        // resynced data.
        let covered_bytes = match &op {
            Op::Zero { len, .. } => *len,
            _ => op.page_bytes(),
        };
        // A flush covers what was acknowledged before it was queued; it is
        // queued just below, after every request those answers were for.
        let covers =
            matches!(op, Op::Flush | Op::InSync { .. }).then(|| self.lock().unflushed.take());
        let item = Item {
            page_bytes: op.page_bytes(),
            covered_bytes,
            chunks,
            resync_chunks,
            durable: matches!(op, Op::Write { fua: true, .. }),
            covers,
            reply: Some(tx),
            enqueued: Instant::now(),
            _lag: LagBytes::new(&self.counters.lag_bytes, op.page_bytes()),
            _permit: Some(permit),
        };
        if let Err(q) = session.push(self, Queued { op, lease, item }) {
            let Queued { op, lease, item } = *q;
            drop(op);
            drop(lease);
            self.complete(item, Err(ReplicationError::LinkDown));
        }
        rx
    }

    /// Queue a request that counts no chunk in flight: reserve, then send.
    pub(crate) async fn enqueue(
        &self,
        session: &SessionTx,
        op: Op,
    ) -> oneshot::Receiver<ItemReply> {
        let permit = self.reserve(&op).await;
        self.send(session, op, None, None, permit)
    }

    /// Answer a request. On an acknowledgement, chunks with nothing else in
    /// flight and no resync owed are on the copy: durable there after a FUA
    /// write, so cleared; otherwise they wait for a flush. A flush's
    /// acknowledgement clears the chunks it covers that nothing touched
    /// since.
    pub(crate) fn complete(&self, mut item: Item, result: ItemReply) {
        let acked = result.is_ok();
        {
            let mut g = self.lock();
            if acked {
                for c in item.resync_chunks.clone().into_iter().flatten() {
                    g.pending_resync.remove(c);
                }
            }
            let may_clear = acked && self.may_clear(&g);
            for c in item.chunks.clone().into_iter().flatten() {
                if self.uncount(&mut g, c) == 0 && may_clear && !g.pending_resync.contains(c) {
                    if item.durable {
                        self.clear_chunk(&mut g, c);
                    } else {
                        g.unflushed.insert(c);
                    }
                }
            }
            if let Some(covers) = item.covers.take().filter(|_| may_clear) {
                for c in covers.iter() {
                    let touched = g.inflight.contains_key(&c)
                        || g.pending_resync.contains(c)
                        || g.unflushed.contains(c);
                    if !touched {
                        self.clear_chunk(&mut g, c);
                    }
                }
            }
        }
        if acked {
            self.counters
                .bytes_acked
                .fetch_add(item.page_bytes, Ordering::Relaxed);
            if item.resync_chunks.is_some() {
                self.counters
                    .resynced_bytes
                    .fetch_add(item.covered_bytes, Ordering::Relaxed);
            }
        }
        if let Some(r) = item.reply.take() {
            let _ = r.send(result);
        }
        self.progress.notify_waiters();
    }

    fn clear_chunk(&self, g: &mut Inner, c: u64) {
        let cb = self.log.chunk_bytes();
        if let Err(e) = self.log.clear(c * cb, cb) {
            // Staying dirty is safe: it costs a resend.
            g.last_error = Some(format!("dirty log clear: {e}"));
        }
    }

    /// A checksum resync found chunk `c` equal on both sides.
    pub(crate) fn resync_chunk_equal(&self, c: u64) {
        let mut g = self.lock();
        g.pending_resync.remove(c);
        self.counters.resync_skipped.fetch_add(1, Ordering::Relaxed);
        // Equal may mean equal in the copy's page cache only (a write it
        // acknowledged in an earlier session): clean once a flush says so.
        if !g.inflight.contains_key(&c) && self.may_clear(&g) {
            g.unflushed.insert(c);
        }
        drop(g);
        self.progress.notify_waiters();
    }

    /// Count a run of resync chunks in flight on `session`, unless it is gone.
    pub(crate) fn prepare_resync(
        &self,
        chunks: RangeInclusive<u64>,
        session: &Arc<SessionTx>,
    ) -> Result<(), ReplicationError> {
        let mut g = self.lock();
        match &g.session {
            Some(s) if Arc::ptr_eq(s, session) => {
                for c in chunks {
                    *g.inflight.entry(c).or_insert(0) += 1;
                }
                Ok(())
            }
            _ => Err(ReplicationError::LinkDown),
        }
    }

    /// The resync on `session` is complete and the copy adopted our
    /// generation: it is UpToDate from now on (while the session lasts).
    pub(crate) fn resync_done(&self, session: &Arc<SessionTx>) {
        let mut g = self.lock();
        if !g.session.as_ref().is_some_and(|s| Arc::ptr_eq(s, session)) {
            return;
        }
        g.state = LinkState::UpToDate;
        if let Some(f) = g.disk_failure.take() {
            tracing::info!(copy = %self.cfg.name, "the copy disk accepts writes again (it failed with {})", f.describe());
        }
        self.log.settled();
        let now = Instant::now();
        if let Some(started) = g.resync_started {
            g.resync_finished = Some(now);
            let secs = now.duration_since(started).as_secs_f64();
            let bytes = self.counters.resynced_bytes.load(Ordering::Relaxed);
            tracing::info!(
                copy = %self.cfg.name,
                resynced_bytes = bytes,
                secs = format!("{secs:.3}"),
                rate_mb_per_s = format!("{:.0}", bytes as f64 / secs.max(1e-6) / 1e6),
                "copy up to date"
            );
        } else {
            tracing::info!(copy = %self.cfg.name, "copy up to date");
        }
    }

    pub(crate) fn set_error(&self, e: &ReplicationError) {
        self.lock().last_error = Some(e.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_page_bytes_while_requests_live() {
        let total = Arc::new(AtomicU64::new(0));
        let a = LagBytes::new(&total, 4096);
        let flush = LagBytes::new(&total, 0);
        let b = LagBytes::new(&total, 1 << 20);
        assert_eq!(total.load(Ordering::Relaxed), 4096 + (1 << 20));
        drop(a);
        assert_eq!(total.load(Ordering::Relaxed), 1 << 20);
        drop((flush, b));
        assert_eq!(total.load(Ordering::Relaxed), 0, "no header overhead left");
    }
}
