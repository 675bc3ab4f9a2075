//! Keeps glibc from handing large I/O buffers back to the kernel after each
//! request, so a full sync does not page-fault its buffers in again.
//!
//! Every resync request reads into a fresh 4 MiB `IoBuf` (allocated by the
//! storage engine) and frees it once the copy acknowledges it; the copy
//! receives each one into a fresh buffer freed after its write. With glibc's
//! defaults such a buffer is an mmap, or sits at the top of an arena that is
//! trimmed when it is freed, so each request paid ~1,000 page faults and
//! the kernel's page clearing (a third of the production host's CPU in a
//! profile of a 1 GiB sync). Fixing the thresholds keeps freed buffers in
//! the heap for the next request; what stays resident is bounded by the
//! buffers in flight (the link window, the reads in flight).

/// Allocations at least this large are mmapped (well above a request).
const MMAP_THRESHOLD_BYTES: i32 = 32 << 20;
/// Free heap top kept rather than returned to the kernel.
const TRIM_THRESHOLD_BYTES: i32 = 256 << 20;

/// Apply the thresholds once per process (later calls do nothing).
pub(crate) fn keep_in_heap() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(target_env = "gnu")]
        {
            // SAFETY: mallopt only sets allocator parameters; glibc takes
            // its own lock, so calling it while other threads allocate is
            // allowed. A refused value (0 returned) leaves the defaults.
            let ok = unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
                    && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
            };
            if !ok {
                tracing::warn!("allocator thresholds not set: resync buffers may page-fault");
            }
        }
    });
}
