//! What the mirrored volume and its copy links share on the production
//! host: the local disk, the ordering gate, the epoch and the mode.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use super::generation::Generations;
use super::mark_hint::MarkHint;
use super::order::OverlapGate;
use crate::storage::BlockDevice;

/// When a write completes (DRBD protocol C is `Sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A write completes when the production disk and every connected copy
    /// have it; FUA and FLUSH when durable on all of them.
    Sync,
    /// A write completes after the production disk; copies trail within
    /// each link's window; FLUSH durability covers the production disk.
    Async,
}

pub(crate) struct Primary {
    pub local: Arc<dyn BlockDevice>,
    /// One order for the local disk and every link: overlapping requests
    /// are applied locally and queued to the copies in the same order.
    pub gate: OverlapGate,
    pub epoch: AtomicU64,
    pub generations: Generations,
    pub mode: Mode,
    /// Which marks run inline and which on the blocking pool.
    pub mark_hint: MarkHint,
    /// Page bytes copied for the links (async mode, or a lent page that
    /// came back still shared).
    pub page_bytes_copied: AtomicU64,
    /// Set once the production disk failed a write or a flush.
    pub failure: DiskFailure,
}

impl Primary {
    /// Whether the production disk has failed (see [`DiskFailure`]).
    pub fn disk_failed(&self) -> bool {
        self.failure.failed.load(Ordering::Acquire)
    }
}

/// The production disk's failure, once seen: from then on the volume takes
/// no write, and no copy's dirty chunk is cleared, since a copy may hold a
/// write that the production disk lost (in sync mode it is sent before the
/// local write), so the disks may differ wherever a write was in flight.
#[derive(Debug)]
pub(crate) struct DiskFailure {
    failed: AtomicBool,
    why: watch::Sender<Option<String>>,
}

impl Default for DiskFailure {
    fn default() -> DiskFailure {
        DiskFailure {
            failed: AtomicBool::new(false),
            why: watch::channel(None).0,
        }
    }
}

impl DiskFailure {
    /// Record the first failure; later ones change nothing.
    pub fn set(&self, why: String) {
        if !self.failed.swap(true, Ordering::AcqRel) {
            tracing::error!("production disk failed: {why}");
            self.why.send_replace(Some(why));
        }
    }

    /// Why the disk failed, as soon as it has.
    pub fn watch(&self) -> watch::Receiver<Option<String>> {
        self.why.subscribe()
    }
}
