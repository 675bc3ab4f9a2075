//! Quorum fencing of the production host: once the group engine has had no
//! quorum for longer than a grace period, the NBD export stops acknowledging
//! writes (EIO) until quorum is back and this member still hosts production.
//!
//! Why EIO and not holding the writes (DRBD's `on-no-quorum io-error` rather
//! than `suspend-io`): a cut-off production host cannot know whether the
//! rest of the group has moved production elsewhere, so a write it
//! acknowledged might be lost or diverge. Held writes would pile up in
//! memory (unbounded or, bounded, a stall the client cannot tell from a
//! hang, with the kernel's NBD timeout eventually failing them anyway). An
//! immediate error is bounded, visible, and lets a file system on top go
//! read-only. Reads and flushes are still answered: they change nothing, and
//! a flush only makes durable what was acknowledged before the fence.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::report::LocalView;
use crate::group::engine::Engine;
use crate::group::{GroupState, MemberId, ResourceId};
use crate::obs::{Event, EventBus};
use crate::storage::{BlockDevice, Completion, Extent, Inline, Request, StorageError};

/// How long the engine may report no quorum before writes are fenced: three
/// election timeouts of the engine (1 s each by default), so an ordinary
/// leader election, which ends within two, never fences anything.
pub const NO_QUORUM_GRACE_MS: u64 = 3_000;

/// Period of the quorum check.
const CHECK_PERIOD_MS: u64 = 200;

/// The switch shared by the fence watcher and the export's device.
#[derive(Debug, Default)]
pub struct FenceGate {
    fenced: AtomicBool,
    /// Whether the export runs: only a serving host has writes to fence (a
    /// member restarting with a state that still names it host does not
    /// fence itself while it waits for the group's first leader).
    serving: AtomicBool,
}

impl FenceGate {
    /// Whether writes are refused now.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// The export started (true) or stopped (false) serving.
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Release);
    }

    fn set(&self, fenced: bool) {
        self.fenced.store(fenced, Ordering::Release);
    }
}

/// A change of the fence, for the log, status and events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceChange {
    /// Writes are refused from now on; the text says why.
    Fenced(String),
    /// Writes are acknowledged again.
    Resumed,
}

/// Decides when to fence from the engine's quorum, observed on every tick.
#[derive(Debug)]
pub struct QuorumFence {
    gate: Arc<FenceGate>,
    grace: Duration,
    /// When the engine last went from quorum to none (None while it has one).
    lost_at: Option<Instant>,
    reason: Option<String>,
}

impl QuorumFence {
    pub fn new(grace: Duration) -> QuorumFence {
        QuorumFence {
            gate: Arc::default(),
            grace,
            lost_at: None,
            reason: None,
        }
    }

    /// The gate the export's device consults.
    pub fn gate(&self) -> Arc<FenceGate> {
        self.gate.clone()
    }

    /// Why writes are fenced, when they are.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// One observation at `now`: whether the engine has quorum and whether
    /// the replicated state still names this member the production host.
    /// Fencing applies only to a production host; resuming needs both
    /// quorum and the role (a member that lost the role stops serving through
    /// the join protocol instead, and stays fenced until then).
    pub fn observe(&mut self, quorum: bool, is_host: bool, now: Instant) -> Option<FenceChange> {
        if quorum {
            self.lost_at = None;
        } else if self.lost_at.is_none() {
            self.lost_at = Some(now);
        }
        let fenced = self.gate.is_fenced();
        if !fenced {
            let lost_for = self.lost_at.map(|t| now.saturating_duration_since(t));
            let serving = self.gate.serving.load(Ordering::Acquire);
            if is_host && serving && lost_for.is_some_and(|d| d > self.grace) {
                let why = format!(
                    "no quorum for more than {} ms: this production host cannot tell whether \
                     the group moved production elsewhere, so it refuses writes (EIO) until \
                     a majority of the voters is reachable again",
                    self.grace.as_millis()
                );
                self.gate.set(true);
                self.reason = Some(why.clone());
                return Some(FenceChange::Fenced(why));
            }
            return None;
        }
        if quorum && is_host {
            self.gate.set(false);
            self.reason = None;
            return Some(FenceChange::Resumed);
        }
        None
    }
}

/// What the fence watcher needs of the daemon.
#[derive(Clone)]
pub struct FenceWatch {
    pub fence: Arc<Mutex<QuorumFence>>,
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
    /// Observe the engine's quorum every 200 ms and on every committed
    /// state until the state channel closes. A task of its own: the
    /// daemon's loop can wait a whole proposal timeout while there is no
    /// quorum, and the fence must not wait with it.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(CHECK_PERIOD_MS));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                r = self.state.changed() => if r.is_err() { return },
            }
            let is_host = self.state.borrow_and_update().host(&self.production) == Some(self.me);
            self.check(is_host);
        }
    }

    /// One observation with the engine's quorum now: a change is logged,
    /// published as an event and shown in status.
    pub fn check(&self, is_host: bool) {
        let quorum = self.engine.metrics().has_quorum;
        // Status shows quorum as the fence saw it, even while the daemon's
        // loop waits on a proposal.
        self.local.lock().unwrap_or_else(|p| p.into_inner()).quorum = quorum;
        let mut fence = self.fence.lock().unwrap_or_else(|p| p.into_inner());
        match fence.observe(quorum, is_host, Instant::now()) {
            Some(FenceChange::Fenced(why)) => {
                tracing::error!("writes fenced: {why}");
                self.bus.publish(Event::WritesFenced {
                    member: self.member.clone(),
                    reason: why,
                });
            }
            Some(FenceChange::Resumed) => {
                tracing::warn!(
                    "quorum is back and this member still hosts production: writes resume"
                );
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

/// The export's device: `inner` while the gate is open; writes, zeroes and
/// trims fail with EIO while it is shut.
pub struct FencedDevice {
    inner: Arc<dyn BlockDevice>,
    gate: Arc<FenceGate>,
}

impl FencedDevice {
    pub fn new(inner: Arc<dyn BlockDevice>, gate: Arc<FenceGate>) -> FencedDevice {
        FencedDevice { inner, gate }
    }
}

impl BlockDevice for FencedDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn submit(&self, req: Request, done: Completion) {
        let offset = match &req {
            Request::Write { offset, .. }
            | Request::Trim { offset, .. }
            | Request::WriteZeroes { offset, .. } => Some(*offset),
            Request::Read { .. } | Request::Flush => None,
        };
        match offset {
            Some(offset) if self.gate.is_fenced() => {
                // No raw errno: the NBD edge maps it to EIO.
                let source = std::io::Error::other("writes fenced: the group has no quorum");
                let _ = done.send(Err(StorageError::Io { offset, source }));
            }
            _ => self.inner.submit(req, done),
        }
    }

    fn inline_ready(&self, req: &Request) -> bool {
        let modifies = !matches!(req, Request::Read { .. } | Request::Flush);
        !(modifies && self.gate.is_fenced()) && self.inner.inline_ready(req)
    }

    fn run_inline(&self, req: Request) -> Inline {
        // A write while fenced is declined, so that the caller submits it
        // and `submit` refuses it: the fast path lets nothing through that
        // the queued one would not.
        let modifies = !matches!(req, Request::Read { .. } | Request::Flush);
        if modifies && self.gate.is_fenced() {
            return Inline::Declined(req);
        }
        self.inner.run_inline(req)
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, StorageError> {
        self.inner.extents(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{self, IoBuf, Reply};

    const GRACE: Duration = Duration::from_millis(3_000);

    /// A fence whose export serves.
    fn serving() -> QuorumFence {
        let f = QuorumFence::new(GRACE);
        f.gate().set_serving(true);
        f
    }

    #[test]
    fn an_election_shorter_than_the_grace_fences_nothing() {
        let mut f = serving();
        let t0 = Instant::now();
        assert_eq!(f.observe(false, true, t0), None);
        assert_eq!(f.observe(false, true, t0 + GRACE), None);
        assert_eq!(f.observe(true, true, t0 + GRACE * 2), None);
        assert_eq!(f.observe(false, true, t0 + GRACE * 3), None);
        assert!(!f.gate().is_fenced());
    }

    #[test]
    fn a_production_host_without_quorum_past_the_grace_is_fenced_and_resumes_with_quorum() {
        let mut f = serving();
        let t0 = Instant::now();
        f.observe(false, true, t0);
        let later = t0 + GRACE + Duration::from_millis(1);
        assert!(matches!(
            f.observe(false, true, later),
            Some(FenceChange::Fenced(_))
        ));
        assert!(f.gate().is_fenced() && f.reason().is_some());
        assert_eq!(f.observe(false, true, later), None, "reported once");
        assert_eq!(f.observe(true, true, later), Some(FenceChange::Resumed));
        assert!(!f.gate().is_fenced() && f.reason().is_none());
    }

    #[test]
    fn a_member_that_lost_the_production_role_stays_fenced_with_quorum() {
        let mut f = serving();
        let t0 = Instant::now();
        f.observe(false, true, t0);
        f.observe(false, true, t0 + GRACE * 2);
        assert_eq!(f.observe(true, false, t0 + GRACE * 3), None);
        assert!(f.gate().is_fenced());
    }

    #[test]
    fn a_member_that_is_not_the_production_host_is_never_fenced() {
        let mut f = serving();
        let t0 = Instant::now();
        f.observe(false, false, t0);
        assert_eq!(f.observe(false, false, t0 + GRACE * 2), None);
        assert!(!f.gate().is_fenced());
    }

    #[test]
    fn a_named_host_that_does_not_serve_yet_is_not_fenced() {
        let mut f = QuorumFence::new(GRACE);
        let t0 = Instant::now();
        f.observe(false, true, t0);
        assert_eq!(f.observe(false, true, t0 + GRACE * 2), None);
        assert!(!f.gate().is_fenced());
    }

    #[tokio::test]
    async fn fenced_writes_fail_with_eio_and_reads_still_answer() {
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
        let write = || Request::Write {
            offset: 4096,
            data: IoBuf::zeroed(4096),
            fua: false,
        };
        storage::call(&dev, write())
            .await
            .expect("open gate writes");
        gate.set(true);
        let err = storage::call(&dev, write())
            .await
            .expect_err("fenced write");
        assert_eq!(err.errno(), libc::EIO);
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
        .expect("fenced read");
        assert!(matches!(read, Reply::Read(b) if b.len() == 4096));
        storage::call(&dev, Request::Flush)
            .await
            .expect("fenced flush");
    }
}
