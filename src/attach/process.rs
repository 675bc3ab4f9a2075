//! Process setup for a process that serves or attaches a block device: no
//! deadlock under memory pressure, and a clean stop on SIGTERM/SIGINT.

use super::sys::PR_SET_IO_FLUSHER;
use nix::sys::signal::{SigSet, Signal};
use std::io;

/// Sets PR_SET_IO_FLUSHER and locks memory (mlockall), so reclaim never
/// waits on writeback through our own device while we need memory to serve
/// it. Where not permitted (not root, old kernel) it warns and goes on.
pub fn harden() {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(
            "PR_SET_IO_FLUSHER refused ({}): under memory pressure this process may \
             deadlock against its own device",
            io::Error::last_os_error()
        );
    }
    if !nix::unistd::geteuid().is_root() {
        // Without CAP_IPC_LOCK, MCL_FUTURE would make later allocations fail
        // once RLIMIT_MEMLOCK is reached: better not lock at all.
        tracing::warn!("not root: memory is not locked (mlockall skipped)");
        return;
    }
    // SAFETY: mlockall takes flags only.
    let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
    if rc != 0 {
        tracing::warn!("mlockall failed: {}", io::Error::last_os_error());
    }
}

/// Blocks SIGTERM and SIGINT in this thread and every thread started after,
/// so that only [`wait_for_stop`] receives them. Call before starting threads.
pub fn block_stop_signals() -> io::Result<SigSet> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().map_err(io::Error::from)?;
    Ok(set)
}

/// Waits for SIGTERM/SIGINT, or until `done()` says there is nothing left to
/// wait for (checked every `poll_ms`). Returns the signal, if one came.
pub fn wait_for_stop(set: &SigSet, poll_ms: u64, done: impl Fn() -> bool) -> Option<Signal> {
    let ts = libc::timespec {
        tv_sec: (poll_ms / 1000) as libc::time_t,
        tv_nsec: ((poll_ms % 1000) * 1_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: `set` is a valid sigset_t, `ts` a valid timespec, and a
        // null siginfo pointer is allowed.
        let sig = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
        if sig > 0 {
            return Signal::try_from(sig).ok();
        }
        if done() {
            return None;
        }
    }
}
