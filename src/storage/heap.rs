//! Allocator settings applied once at process start-up, so that large I/O
//! buffers stay in the heap between requests instead of being page-faulted in.
//!
//! Each 1 MiB NBD write payload, each 4 MiB resync read and each page the
//! copy receives is a fresh `IoBuf`, freed once written. With glibc's
//! defaults a block that large is an mmap (above the dynamic mmap
//! threshold), or sits at the top of an arena that is trimmed when it is
//! freed: every request then paid about one page fault and one kernel page
//! clear per 4 KiB (13–15% of the production member's CPU in a profile of
//! mirrored 1 MiB writes, a third in a full sync). Fixed thresholds keep
//! freed buffers for the next request; what stays resident is bounded by
//! the buffers in flight (NBD pages in flight, the link window, resync reads).
//!
//! [`IoBuf`](super::IoBuf)s of 64 KiB to 32 MiB are recycled by the buffer
//! pool (`buf_pool`, which says why the thresholds alone were not enough);
//! these thresholds cover what the pool does not keep.

/// Allocations at least this large are mmapped (well above any request).
const MMAP_THRESHOLD_BYTES: i32 = 32 << 20;
/// Free heap top kept rather than returned to the kernel.
const TRIM_THRESHOLD_BYTES: i32 = 256 << 20;

/// Apply the thresholds (once per process; later calls do nothing). Call
/// before threads start so that every arena sees them from the beginning.
/// Returns whether the allocator took them (always false off glibc).
pub fn keep_buffers_in_heap() -> bool {
    static APPLIED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *APPLIED.get_or_init(|| {
        #[cfg(target_env = "gnu")]
        {
            // SAFETY: mallopt only sets allocator parameters, under glibc's own
            // lock; a refused value (0 returned) leaves that default in place.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
                    && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
            }
        }
        #[cfg(not(target_env = "gnu"))]
        {
            false
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_env = "gnu")]
    fn glibc_takes_the_thresholds() {
        assert!(super::keep_buffers_in_heap());
        assert!(
            super::keep_buffers_in_heap(),
            "a second call reports the same"
        );
    }
}
