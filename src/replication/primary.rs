//! What the mirrored volume and its copy links share on the production
//! host: the local disk, the ordering gate, the epoch and the mode.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

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
}
