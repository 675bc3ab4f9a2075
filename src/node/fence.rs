//! Lease fencing of the production host: its NBD export acknowledges
//! writes only while a majority of the voters keeps confirming it (the
//! lease, `lease.rs`), and reports when it stops and resumes.
//!
//! Why EIO and not holding the writes (DRBD's `on-no-quorum io-error` rather
//! than `suspend-io`): a production host whose lease ran out cannot know
//! whether the rest of the group has moved production elsewhere, so a write
//! it acknowledged might be lost or diverge. Held writes would pile up in
//! memory (unbounded or, bounded, a stall the client cannot tell from a
//! hang, with the kernel's NBD timeout eventually failing them anyway). An
//! immediate error is bounded, visible, and lets a file system on top go
//! read-only. Reads and flushes are still answered: they change nothing, and
//! a flush only makes durable what was acknowledged under the lease.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::lease::lease_end;
pub use super::lease::FenceGate;
use super::report::LocalView;
use crate::group::engine::{Confirmation, Engine};
use crate::group::{GroupState, MemberId, ResourceId};
use crate::obs::{Event, EventBus};
use crate::storage::{BlockDevice, Completion, Extent, Inline, Reply, Request, StorageError};

/// Period of the fence's check, besides every confirmation and state change.
const CHECK_PERIOD_MS: u64 = 200;

/// A change of the fence, for the log, status and events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceChange {
    /// Writes are refused from now on; the text says why.
    Fenced(String),
    /// Writes are acknowledged again.
    Resumed,
}

/// Keeps the gate's lease from the engine's confirmations and decides what
/// to report.
#[derive(Debug)]
pub struct LeaseFence {
    gate: Arc<FenceGate>,
    lease: Duration,
    /// The sending time of the latest confirmation applied.
    applied: Option<Instant>,
    /// Why writes are refused, while that is reported.
    reason: Option<String>,
}

impl LeaseFence {
    pub fn new(lease: Duration) -> LeaseFence {
        LeaseFence {
            gate: Arc::default(),
            lease,
            applied: None,
            reason: None,
        }
    }

    /// The gate the export's device consults.
    pub fn gate(&self) -> Arc<FenceGate> {
        self.gate.clone()
    }

    /// Why writes are fenced, while they are.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// Takes a confirmation into the lease: a grant extends it to its
    /// sending plus the lease, a refusal revokes it. One older than the
    /// latest applied is ignored.
    pub fn apply(&mut self, c: Confirmation) {
        if self.applied.is_some_and(|t| t > c.sent_at) {
            return;
        }
        self.applied = Some(c.sent_at);
        match lease_end(&c, self.lease) {
            Some(end) => self.gate.extend_to(end),
            None => self.gate.revoke(),
        }
    }

    /// One observation at `now`, with whether the replicated state still
    /// names this member the production host. Only a serving production
    /// host is reported fenced; it is reported resumed once its lease is
    /// valid again and it still hosts production (a member that lost the
    /// role stops serving through the join protocol instead, and stays
    /// reported fenced until then). The device obeys the lease itself, on
    /// every write: this only reports.
    pub fn observe(&mut self, is_host: bool, now: Instant) -> Option<FenceChange> {
        let valid = self.gate.is_valid_at(now);
        if self.reason.is_none() {
            if is_host && self.gate.is_serving() && !valid {
                let why = format!(
                    "no lease: a majority of the voters has not confirmed this production \
                     host within the last {} ms, so the group may move production \
                     elsewhere; writes fail (EIO) until a majority confirms it again",
                    self.lease.as_millis()
                );
                self.reason = Some(why.clone());
                return Some(FenceChange::Fenced(why));
            }
            return None;
        }
        if valid && is_host {
            self.reason = None;
            return Some(FenceChange::Resumed);
        }
        None
    }
}

/// What the fence watcher needs of the daemon.
#[derive(Clone)]
pub struct FenceWatch {
    pub fence: Arc<Mutex<LeaseFence>>,
    pub engine: Arc<Engine<GroupState>>,
    pub state: watch::Receiver<Arc<GroupState>>,
    /// The production resource: its host is the one member fenced.
    pub production: ResourceId,
    pub me: MemberId,
    pub member: String,
    pub bus: EventBus,
    pub local: Arc<Mutex<LocalView>>,
}

impl FenceWatch {
    /// Applies every confirmation of the engine to the lease as it arrives,
    /// tells the engine whether this member wants the lease, and observes
    /// the fence on each of them, every 200 ms and on every committed state,
    /// until the state channel closes. A task of its own: the daemon's loop
    /// can wait a whole proposal timeout while there is no quorum, and the
    /// lease must not wait with it.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(CHECK_PERIOD_MS));
        let mut confirmations = self.engine.confirmations();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                r = self.state.changed() => if r.is_err() { return },
                r = confirmations.changed() => if r.is_err() { return },
            }
            let latest = *confirmations.borrow_and_update();
            if let Some(c) = latest {
                self.lock_fence().apply(c);
            }
            let is_host = self.is_host();
            self.engine.set_lease_wanted(is_host);
            self.check(is_host);
        }
    }

    fn lock_fence(&self) -> std::sync::MutexGuard<'_, LeaseFence> {
        self.fence.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_host(&self) -> bool {
        self.state.borrow().host(&self.production) == Some(self.me)
    }

    /// Before this member starts serving as production host: a lease now,
    /// if it has none, so that the export's first writes are not refused
    /// while the renewals catch up. Without an answer (no majority) the
    /// export starts anyway and refuses writes until one comes.
    pub async fn acquire(&self) {
        self.engine.set_lease_wanted(true);
        let gate = self.lock_fence().gate();
        if gate.is_valid_at(Instant::now()) {
            return;
        }
        match self.engine.confirm().await {
            Ok(c) => self.lock_fence().apply(c),
            Err(e) => tracing::warn!("no write lease yet for this production host: {e}"),
        }
    }

    /// One observation now: a change is logged, published as an event and
    /// shown in status.
    pub fn check(&self, is_host: bool) {
        let quorum = self.engine.metrics().has_quorum;
        // Status shows quorum as the fence saw it, even while the daemon's
        // loop waits on a proposal.
        self.local.lock().unwrap_or_else(|p| p.into_inner()).quorum = quorum;
        let mut fence = self.lock_fence();
        match fence.observe(is_host, Instant::now()) {
            Some(FenceChange::Fenced(why)) => {
                tracing::error!("writes fenced: {why}");
                self.bus.publish(Event::WritesFenced {
                    member: self.member.clone(),
                    reason: why,
                });
            }
            Some(FenceChange::Resumed) => {
                tracing::warn!("a majority confirmed this production host again: writes resume");
                self.bus.publish(Event::WritesResumed {
                    member: self.member.clone(),
                });
            }
            None => return,
        }
        self.local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .writes_fenced = fence.reason().map(str::to_owned);
    }
}

/// The export's device: `inner` for reads and flushes; writes, zeroes and
/// trims only inside the lease, checked when they are submitted and again
/// when they complete.
pub struct FencedDevice {
    inner: Arc<dyn BlockDevice>,
    gate: Arc<FenceGate>,
}

impl FencedDevice {
    pub fn new(inner: Arc<dyn BlockDevice>, gate: Arc<FenceGate>) -> FencedDevice {
        FencedDevice { inner, gate }
    }
}

/// The offset of a request that changes the disk; None for reads and flushes.
fn modified_offset(req: &Request) -> Option<u64> {
    match req {
        Request::Write { offset, .. }
        | Request::Trim { offset, .. }
        | Request::WriteZeroes { offset, .. } => Some(*offset),
        Request::Read { .. } | Request::Flush => None,
    }
}

/// The error of a write outside the lease (EIO at the NBD edge).
fn outside_lease(offset: u64) -> StorageError {
    let source = std::io::Error::other(
        "writes fenced: this production host holds no lease from a majority of the group",
    );
    StorageError::Io { offset, source }
}

/// The answer to a write that completed at `now`: a success only inside
/// the lease. What the write did to the disk stays (as after any EIO, the
/// client may not rely on the range), but it is not acknowledged.
fn answer(
    gate: &FenceGate,
    offset: u64,
    r: Result<Reply, StorageError>,
    now: Instant,
) -> Result<Reply, StorageError> {
    match r {
        Ok(_) if !gate.is_valid_at(now) => Err(outside_lease(offset)),
        r => r,
    }
}

impl BlockDevice for FencedDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn submit(&self, req: Request, done: Completion) {
        let Some(offset) = modified_offset(&req) else {
            return self.inner.submit(req, done);
        };
        if !self.gate.is_valid_at(Instant::now()) {
            let _ = done.send(Err(outside_lease(offset)));
            return;
        }
        // The export runs on the daemon's runtime; without one there is
        // nowhere to check the completion, so nothing is started.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            let _ = done.send(Err(outside_lease(offset)));
            return;
        };
        let (tx, rx) = oneshot::channel();
        self.inner.submit(req, tx);
        let gate = self.gate.clone();
        rt.spawn(async move {
            let r = rx.await.unwrap_or(Err(StorageError::Stopped));
            let _ = done.send(answer(&gate, offset, r, Instant::now()));
        });
    }

    fn inline_ready(&self, req: &Request) -> bool {
        let outside = modified_offset(req).is_some() && !self.gate.is_valid_at(Instant::now());
        !outside && self.inner.inline_ready(req)
    }

    fn run_inline(&self, req: Request) -> Inline {
        // A write outside the lease is declined, so that the caller submits
        // it and `submit` refuses it: the fast path lets nothing through
        // that the queued one would not, and checks the completion too.
        let Some(offset) = modified_offset(&req) else {
            return self.inner.run_inline(req);
        };
        if !self.gate.is_valid_at(Instant::now()) {
            return Inline::Declined(req);
        }
        match self.inner.run_inline(req) {
            Inline::Done(r) => Inline::Done(answer(&self.gate, offset, r, Instant::now())),
            declined => declined,
        }
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, StorageError> {
        self.inner.extents(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{self, IoBuf};

    const LEASE: Duration = Duration::from_millis(3_000);

    /// A fence whose export serves.
    fn serving() -> LeaseFence {
        let f = LeaseFence::new(LEASE);
        f.gate().set_serving(true);
        f
    }

    fn grant(sent_at: Instant) -> Confirmation {
        Confirmation {
            sent_at,
            holder: true,
        }
    }

    #[test]
    fn renewals_inside_the_lease_fence_nothing() {
        let mut f = serving();
        let t0 = Instant::now();
        f.apply(grant(t0));
        assert_eq!(f.observe(true, t0), None);
        // An election without renewals, shorter than the lease.
        assert_eq!(f.observe(true, t0 + LEASE - Duration::from_millis(1)), None);
        f.apply(grant(t0 + LEASE / 2));
        assert_eq!(f.observe(true, t0 + LEASE), None);
        assert!(f.reason().is_none());
    }

    #[test]
    fn a_serving_host_whose_lease_ran_out_is_fenced_and_resumes_with_a_grant() {
        let mut f = serving();
        let t0 = Instant::now();
        f.apply(grant(t0));
        let out = t0 + LEASE;
        assert!(matches!(f.observe(true, out), Some(FenceChange::Fenced(_))));
        assert!(f.reason().is_some_and(|r| r.contains("3000 ms")));
        assert_eq!(f.observe(true, out), None, "reported once");
        f.apply(grant(out));
        assert_eq!(f.observe(true, out), Some(FenceChange::Resumed));
        assert!(f.reason().is_none());
    }

    #[test]
    fn a_refusal_fences_at_once() {
        let mut f = serving();
        let t0 = Instant::now();
        f.apply(grant(t0));
        f.apply(Confirmation {
            sent_at: t0 + Duration::from_millis(1),
            holder: false,
        });
        assert!(matches!(
            f.observe(true, t0 + Duration::from_millis(2)),
            Some(FenceChange::Fenced(_))
        ));
        // A late answer to an earlier request does not undo it.
        f.apply(grant(t0));
        assert!(!f.gate().is_valid_at(t0 + Duration::from_millis(2)));
    }

    #[test]
    fn a_member_that_lost_the_production_role_stays_fenced() {
        let mut f = serving();
        let t0 = Instant::now();
        f.apply(grant(t0));
        assert!(f.observe(true, t0 + LEASE).is_some());
        f.apply(grant(t0 + LEASE));
        assert_eq!(f.observe(false, t0 + LEASE), None);
        assert!(f.reason().is_some());
    }

    #[test]
    fn a_member_that_is_not_the_production_host_is_never_fenced() {
        let mut f = serving();
        let t0 = Instant::now();
        assert_eq!(f.observe(false, t0 + LEASE * 2), None);
    }

    #[test]
    fn a_named_host_that_does_not_serve_yet_is_not_fenced() {
        let mut f = LeaseFence::new(LEASE);
        let t0 = Instant::now();
        assert_eq!(f.observe(true, t0 + LEASE * 2), None);
    }

    /// A disk whose requests complete only when the test says so.
    #[derive(Default)]
    struct Held {
        pending: Mutex<Vec<Completion>>,
    }

    impl Held {
        fn complete_all(&self) {
            for done in self.pending.lock().expect("lock").drain(..) {
                let _ = done.send(Ok(Reply::Done));
            }
        }
    }

    impl BlockDevice for Held {
        fn size(&self) -> u64 {
            1 << 20
        }
        fn submit(&self, _req: Request, done: Completion) {
            self.pending.lock().expect("lock").push(done);
        }
        fn extents(&self, _offset: u64, len: u64) -> Result<Vec<Extent>, StorageError> {
            Ok(vec![Extent { len, hole: false }])
        }
    }

    fn write() -> Request {
        Request::Write {
            offset: 4096,
            data: IoBuf::zeroed(4096),
            fua: false,
        }
    }

    #[tokio::test]
    async fn a_write_completing_after_the_lease_ran_out_is_answered_eio() {
        let held = Arc::new(Held::default());
        let gate = Arc::new(FenceGate::default());
        let dev = FencedDevice::new(held.clone(), gate.clone());
        let end = Instant::now() + Duration::from_millis(50);
        gate.extend_to(end);
        let (tx, rx) = oneshot::channel();
        dev.submit(write(), tx);
        // The disk answers only once the lease is over.
        while Instant::now() < end {
            tokio::task::yield_now().await;
        }
        held.complete_all();
        let err = rx.await.expect("answered").expect_err("outside the lease");
        assert_eq!(err.errno(), libc::EIO);

        // The same inside the lease is acknowledged.
        gate.extend_to(Instant::now() + LEASE);
        let (tx, rx) = oneshot::channel();
        dev.submit(write(), tx);
        held.complete_all();
        rx.await.expect("answered").expect("inside the lease");
    }

    #[tokio::test]
    async fn writes_outside_the_lease_fail_with_eio_and_reads_still_answer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("d"))
            .expect("create disk");
        file.set_len(1 << 20).expect("size disk");
        let inner: Arc<dyn BlockDevice> = Arc::new(storage::plain::PlainEngine::new(file, 1 << 20));
        let gate = Arc::new(FenceGate::default());
        let dev = FencedDevice::new(inner, gate.clone());
        let err = storage::call(&dev, write())
            .await
            .expect_err("no lease yet");
        assert_eq!(err.errno(), libc::EIO);
        gate.extend_to(Instant::now() + LEASE);
        storage::call(&dev, write())
            .await
            .expect("inside the lease");
        gate.revoke();
        let err = storage::call(&dev, write()).await.expect_err("revoked");
        assert_eq!(err.errno(), libc::EIO);
        assert!(!dev.inline_ready(&write()), "the fast path declines too");
        assert!(matches!(dev.run_inline(write()), Inline::Declined(_)));
        let zero = Request::WriteZeroes {
            offset: 0,
            len: 4096,
            punch: false,
        };
        assert!(storage::call(&dev, zero).await.is_err());
        let read = storage::call(
            &dev,
            Request::Read {
                offset: 0,
                len: 4096,
            },
        )
        .await
        .expect("read outside the lease");
        assert!(matches!(read, Reply::Read(b) if b.len() == 4096));
        storage::call(&dev, Request::Flush)
            .await
            .expect("flush outside the lease");
    }
}
