//! Which writes will likely make the dirty log write to its disk: a hint of
//! the regions marked lately, so that a mark likely to fdatasync the
//! bitmap runs on the blocking pool instead of stalling a runtime worker.
//!
//! The production host's bitmap makes a mark durable with a pwrite and an
//! fdatasync, under its lock, the first time a region is written after a
//! clear (activity-log style). On a runtime worker that blocks every task
//! queued there, and a second write to the same region blocks a second
//! worker on the lock. Marks of regions marked in the last few seconds
//! almost never write (the daemon clears a region only after a whole clear
//! period without writes), so they stay inline: no thread hop at QD1. The
//! hint only picks the thread; the mark itself is made either way.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::dirty::ChunkSet;

/// Granularity of the hint (the daemon's bitmap marks 4 MiB at a time).
pub(crate) const REGION_BYTES: u64 = 4 << 20;
/// How long a region counts as marked: well under the daemon's clear
/// period, so a region still in the hint is still marked on disk.
const FRESH_MS: u64 = 4_000;

/// Regions marked lately, for one volume.
pub(crate) struct MarkHint {
    regions: u64,
    inner: Mutex<Inner>,
}

struct Inner {
    marked: ChunkSet,
    since: Instant,
}

impl MarkHint {
    pub(crate) fn new(size_bytes: u64) -> MarkHint {
        let regions = size_bytes.div_ceil(REGION_BYTES).max(1);
        MarkHint {
            regions,
            inner: Mutex::new(Inner {
                marked: ChunkSet::new(regions),
                since: Instant::now(),
            }),
        }
    }

    /// Were all regions of `[offset, offset+len)` marked lately? A region
    /// whose first mark is still running is not: a second write to it
    /// would wait inline on the bitmap's lock for that mark's fdatasync.
    pub(crate) fn recently_marked(&self, offset: u64, len: u64) -> bool {
        let mut g = self.lock();
        if g.since.elapsed() > Duration::from_millis(FRESH_MS) {
            g.marked = ChunkSet::new(self.regions);
            g.since = Instant::now();
        }
        self.span(offset, len).all(|r| g.marked.contains(r))
    }

    /// The range is marked now (its mark returned).
    pub(crate) fn record(&self, offset: u64, len: u64) {
        let mut g = self.lock();
        for r in self.span(offset, len) {
            g.marked.insert(r);
        }
    }

    fn span(&self, offset: u64, len: u64) -> std::ops::RangeInclusive<u64> {
        let first = offset / REGION_BYTES;
        let last = offset.saturating_add(len.max(1) - 1) / REGION_BYTES;
        first..=last.min(self.regions - 1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("mark hint lock poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_counts_as_marked_only_once_its_mark_returned() {
        let h = MarkHint::new(64 << 20);
        assert!(!h.recently_marked(0, 4096));
        // A second write while the first mark still runs: not marked yet.
        assert!(!h.recently_marked(4096, 4096));
        h.record(0, 4096);
        assert!(h.recently_marked(4096, 4096));
        // Spanning into a region never marked is not.
        assert!(!h.recently_marked(REGION_BYTES - 4096, 8192));
        h.record(REGION_BYTES - 4096, 8192);
        assert!(h.recently_marked(REGION_BYTES, 4096));
    }

    #[test]
    fn ranges_past_the_end_do_not_panic() {
        let h = MarkHint::new(REGION_BYTES);
        // Nothing of the disk in range: nothing to wait for.
        assert!(h.recently_marked(u64::MAX - 10, 100));
        assert!(!h.recently_marked(0, u64::MAX));
        h.record(0, u64::MAX);
        assert!(h.recently_marked(0, u64::MAX));
    }
}
