//! The production host's write lease as its export sees it: until when a
//! majority's confirmation lets it acknowledge writes, read on every write.
//!
//! A confirmation the leader granted for a request sent at `t_send` is
//! valid until `t_send + lease` on this host's monotonic clock; why the
//! group moves production only after that is argued in the engine's
//! `lease.rs`. The clock is checked when a write is submitted and again
//! when it completes: a write that could not complete inside the lease is
//! answered EIO, whatever it did to the disk, rather than acknowledged
//! after another host may have started writing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::group::engine::Confirmation;

/// The end of the lease a confirmation grants: `sent_at + lease` for a
/// grant, none for a refusal.
pub fn lease_end(c: &Confirmation, lease: Duration) -> Option<Instant> {
    c.holder.then(|| c.sent_at + lease)
}

/// The lease shared by the fence watcher, which renews it, and the
/// export's device, which obeys it. Lock-free: read on every write.
#[derive(Debug)]
pub struct FenceGate {
    /// Origin of `valid_until_ns`.
    base: Instant,
    /// Nanoseconds after `base` until which writes may be acknowledged;
    /// 0 while no lease is held.
    valid_until_ns: AtomicU64,
    /// Whether the export runs: only a serving host has writes to fence
    /// (a member restarting with a state that still names it host does
    /// not report itself fenced while it waits for the group's leader).
    serving: AtomicBool,
}

impl Default for FenceGate {
    fn default() -> Self {
        FenceGate {
            base: Instant::now(),
            valid_until_ns: AtomicU64::new(0),
            serving: AtomicBool::new(false),
        }
    }
}

impl FenceGate {
    /// The export started (true) or stopped (false) serving.
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Release);
    }

    /// Whether the export runs.
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    /// Writes may be acknowledged until `until` (a lease never shrinks by
    /// an extension: a late answer to an earlier request grants less).
    pub fn extend_to(&self, until: Instant) {
        let ns = until.saturating_duration_since(self.base).as_nanos();
        let ns = u64::try_from(ns).unwrap_or(u64::MAX);
        self.valid_until_ns.fetch_max(ns, Ordering::AcqRel);
    }

    /// No lease from now on (the leader refused it).
    pub fn revoke(&self) {
        self.valid_until_ns.store(0, Ordering::Release);
    }

    /// Whether the lease covers `now`.
    pub fn is_valid_at(&self, now: Instant) -> bool {
        let now_ns = now.saturating_duration_since(self.base).as_nanos();
        u128::from(self.valid_until_ns.load(Ordering::Acquire)) > now_ns
    }

    /// When the lease ends, if one is held.
    pub fn valid_until(&self) -> Option<Instant> {
        match self.valid_until_ns.load(Ordering::Acquire) {
            0 => None,
            ns => self.base.checked_add(Duration::from_nanos(ns)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(3_000);

    #[test]
    fn a_grant_is_valid_until_its_sending_plus_the_lease() {
        let gate = FenceGate::default();
        let sent_at = Instant::now();
        let c = Confirmation {
            sent_at,
            holder: true,
        };
        let end = lease_end(&c, LEASE).expect("a grant");
        assert_eq!(end, sent_at + LEASE);
        assert!(!gate.is_valid_at(sent_at), "nothing before the grant");
        gate.extend_to(end);
        assert!(gate.is_valid_at(sent_at));
        assert!(gate.is_valid_at(end - Duration::from_nanos(1)));
        assert!(!gate.is_valid_at(end), "the end itself is outside");
        assert!(!gate.is_valid_at(end + Duration::from_millis(1)));
    }

    #[test]
    fn a_refusal_grants_nothing_and_revokes() {
        let gate = FenceGate::default();
        let now = Instant::now();
        gate.extend_to(now + LEASE);
        let refused = Confirmation {
            sent_at: now,
            holder: false,
        };
        assert_eq!(lease_end(&refused, LEASE), None);
        gate.revoke();
        assert!(!gate.is_valid_at(now));
        assert_eq!(gate.valid_until(), None);
    }

    #[test]
    fn a_late_answer_to_an_earlier_request_does_not_shorten_the_lease() {
        let gate = FenceGate::default();
        let t0 = Instant::now();
        gate.extend_to(t0 + 2 * LEASE);
        gate.extend_to(t0 + LEASE);
        assert!(gate.is_valid_at(t0 + LEASE + Duration::from_millis(1)));
        assert_eq!(gate.valid_until(), Some(t0 + 2 * LEASE));
    }
}
