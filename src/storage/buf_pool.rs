//! Recycling of large [`IoBuf`](super::IoBuf) allocations.
//!
//! Even with the allocator thresholds of [`heap`](super::heap), the large
//! buffers of a full sync (allocated on one thread, freed on another) kept
//! coming back with fresh pages, each faulted in and zeroed by the kernel on
//! first touch, which is most often an O_DIRECT read or a socket receive
//! about to overwrite it anyway: a fifth of all CPU in a profile. Freed buffers of
//! [`POOLED_BYTES_MIN`] ..= [`POOLED_BYTES_MAX`] are kept here instead, by
//! power-of-two size class, up to [`KEPT_BYTES_MAX`] in all, and handed out
//! again with their pages already mapped. Like DRBD's page pool, the memory
//! kept is not returned to the system; it is bounded.

use std::ptr::NonNull;
use std::sync::Mutex;

/// Smallest capacity recycled: below it the allocator's own free lists do
/// the job.
pub(super) const POOLED_BYTES_MIN: usize = 64 * 1024;
/// Largest capacity recycled: the largest NBD request.
pub(super) const POOLED_BYTES_MAX: usize = 32 << 20;
/// Bytes kept at most, all classes together: a full resync window of
/// 4 MiB requests, or 64 writes of 1 MiB.
pub(super) const KEPT_BYTES_MAX: usize = 64 << 20;

const CLASSES: usize = (POOLED_BYTES_MAX / POOLED_BYTES_MIN).ilog2() as usize + 1;

/// A free allocation of its class's capacity, aligned to `buf::ALIGN`.
struct Free(NonNull<u8>);

// SAFETY: a pooled allocation is owned by the pool alone (its IoBuf was
// dropped); handing it to another thread moves that ownership.
unsafe impl Send for Free {}

struct Pool {
    free: [Vec<Free>; CLASSES],
    kept: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: [const { Vec::new() }; CLASSES],
    kept: 0,
});

/// The capacity to allocate for `len` bytes: a power of two where the pool
/// recycles it, else `len` rounded up to the alignment (at least one page).
pub(super) fn capacity(len: usize) -> usize {
    if (POOLED_BYTES_MIN..=POOLED_BYTES_MAX).contains(&len) {
        len.next_power_of_two()
    } else {
        len.div_ceil(super::buf::ALIGN).max(1) * super::buf::ALIGN
    }
}

fn class(cap: usize) -> Option<usize> {
    ((POOLED_BYTES_MIN..=POOLED_BYTES_MAX).contains(&cap) && cap.is_power_of_two())
        .then(|| (cap / POOLED_BYTES_MIN).ilog2() as usize)
}

impl Pool {
    fn take(&mut self, cap: usize) -> Option<NonNull<u8>> {
        let Free(ptr) = self.free[class(cap)?].pop()?;
        self.kept -= cap;
        Some(ptr)
    }

    fn give(&mut self, ptr: NonNull<u8>, cap: usize) -> bool {
        let Some(c) = class(cap) else {
            return false;
        };
        if self.kept + cap > KEPT_BYTES_MAX {
            return false;
        }
        self.kept += cap;
        self.free[c].push(Free(ptr));
        true
    }
}

/// A kept allocation of exactly `cap` bytes, if there is one.
pub(super) fn take(cap: usize) -> Option<NonNull<u8>> {
    class(cap)?;
    POOL.lock().ok()?.take(cap)
}

/// Keep the allocation `ptr` of `cap` bytes for reuse; false when it is
/// not of a pooled size or the pool is full (the caller frees it).
pub(super) fn give(ptr: NonNull<u8>, cap: usize) -> bool {
    class(cap).is_some() && POOL.lock().is_ok_and(|mut p| p.give(ptr, cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_sizes_round_to_a_power_of_two_and_others_to_a_page() {
        assert_eq!(capacity(0), 4096);
        assert_eq!(capacity(5000), 8192);
        assert_eq!(capacity(POOLED_BYTES_MIN - 1), POOLED_BYTES_MIN);
        assert_eq!(capacity(POOLED_BYTES_MIN), POOLED_BYTES_MIN);
        assert_eq!(capacity(POOLED_BYTES_MIN + 1), 2 * POOLED_BYTES_MIN);
        assert_eq!(capacity(3 << 20), 4 << 20);
        assert_eq!(capacity(POOLED_BYTES_MAX), POOLED_BYTES_MAX);
        assert_eq!(capacity(POOLED_BYTES_MAX + 1), POOLED_BYTES_MAX + 4096);
        assert_eq!(class(POOLED_BYTES_MIN), Some(0));
        assert_eq!(class(POOLED_BYTES_MAX), Some(CLASSES - 1));
        assert_eq!(class(POOLED_BYTES_MAX + 4096), None);
        assert_eq!(class(3 * POOLED_BYTES_MIN), None);
    }

    #[test]
    fn the_pool_hands_back_what_it_kept_by_class_and_keeps_a_bounded_amount() {
        // Pointers only: the pool never dereferences what it keeps.
        let mut pool = Pool {
            free: [const { Vec::new() }; CLASSES],
            kept: 0,
        };
        let p = |addr: usize| NonNull::new(addr as *mut u8).expect("non-zero");
        assert!(!pool.give(p(4096), 4096), "too small to pool");
        assert!(
            !pool.give(p(4096), 3 * POOLED_BYTES_MIN),
            "not a class size"
        );
        assert!(pool.give(p(1 << 30), 1 << 20));
        assert!(pool.take(2 << 20).is_none(), "nothing of that class");
        assert_eq!(pool.take(1 << 20), Some(p(1 << 30)));
        assert!(pool.take(1 << 20).is_none());
        for i in 0..KEPT_BYTES_MAX / POOLED_BYTES_MAX {
            assert!(pool.give(p((i + 1) << 32), POOLED_BYTES_MAX));
        }
        assert_eq!(pool.kept, KEPT_BYTES_MAX);
        assert!(!pool.give(p(1 << 31), POOLED_BYTES_MIN), "full");
        assert!(pool.take(POOLED_BYTES_MAX).is_some());
        assert!(pool.give(p(1 << 31), POOLED_BYTES_MIN), "room again");
    }
}
