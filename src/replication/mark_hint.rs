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

    /// Were all regions of `[offset, offset+len)` marked lately? They count
    /// as marked from now on (the caller is about to mark them).
    pub(crate) fn recently_marked(&self, offset: u64, len: u64) -> bool {
        let mut g = self.inner.lock().expect("mark hint lock poisoned");
        if g.since.elapsed() > Duration::from_millis(FRESH_MS) {
            g.marked = ChunkSet::new(self.regions);
            g.since = Instant::now();
        }
        let first = offset / REGION_BYTES;
        let last = offset.saturating_add(len.max(1) - 1) / REGION_BYTES;
        let mut all = true;
        for r in first..=last.min(self.regions - 1) {
            if g.marked.insert(r) {
                all = false;
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_write_to_a_region_is_not_recently_marked_the_second_is() {
        let h = MarkHint::new(64 << 20);
        assert!(!h.recently_marked(0, 4096));
        assert!(h.recently_marked(4096, 4096));
        // Spanning into a fresh region is not.
        assert!(!h.recently_marked(REGION_BYTES - 4096, 8192));
        assert!(h.recently_marked(REGION_BYTES, 4096));
    }

    #[test]
    fn ranges_past_the_end_do_not_panic() {
        let h = MarkHint::new(REGION_BYTES);
        // Nothing of the disk in range: nothing to wait for.
        assert!(h.recently_marked(u64::MAX - 10, 100));
        assert!(!h.recently_marked(0, u64::MAX));
    }
}
