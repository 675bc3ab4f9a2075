//! The write lease and the quorum it proves: a member asks the leader to
//! confirm its leadership with a majority, and the leader says whether the
//! state lets that member write; the leader's failure detector meets it here.
//!
//! # Why two hosts never write at once
//!
//! The production host P sends a request at `t_send` (its monotonic clock)
//! and, on a grant, acknowledges writes until `t_send + lease`. A grant
//! means: the request reached the leader L at `t_recv >= t_send`, L then had
//! a heartbeat round granted by a majority (openraft `get_read_log_id`, so L
//! still led), applied the log up to its read index, and found that this
//! state names P its writer and that L has not declared P failed while
//! the state names it so (in this term).
//!
//! Production moves away from P only through a committed `Fail` of P (or
//! P's own leave), and a `Fail` is proposed by a leader's failure detector:
//! it reports P once `last_contact(P) + fail_timeout` has passed, where
//! `last_contact(P)` is the latest of the last answered RPC, the last
//! confirmation request received from P, and the moment it became leader.
//!
//! - Decided by L after the grant: `last_contact(P) >= t_recv >= t_send`, so
//!   the decision comes after `t_send + fail_timeout`.
//! - Decided by L before the grant: the decision revoked this naming of P
//!   ([`LeaseBook::declare_failed`]), and L grants P nothing under it this
//!   term; once the `Fail` is applied, the state no longer names P, and a
//!   later naming (P rejoined and hosts again) is a new generation.
//! - Decided by a later leader L2: the majority that granted L's round
//!   (after `t_send`) overlaps the majority that elected L2, and a voter
//!   that voted for L2's higher term would have refused L's round; so L2
//!   was elected after `t_send`, and counts from its election.
//! - Decided by an earlier leader whose `Fail` L has not applied yet: it
//!   is either in L's log, and committed by the time L reaches its read
//!   index (which covers L's first entry), so the state check refuses P; or
//!   it is not, and will never be committed.
//!
//! So every decision that moves production comes after `t_send +
//! fail_timeout`, and the next host writes only after that decision is
//! committed. With `fail_timeout >= lease + margin`, P's lease ran out
//! before: the margin covers the rate difference of the two monotonic
//! clocks and the time between P's last check of its lease and its reply
//! leaving the host. The recovery domain checks that inequality
//! (`config::check_lease_timing`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use super::error::EngineError;
use super::network::Net;
use super::server::ServerCtx;
use super::types::{Node, NodeId, Raft, Replicated};
use super::wire::{Fault, Request, Response};

/// One successful confirmation, as the asking member records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmation {
    /// When the request left this member: a granted lease runs from here.
    pub sent_at: Instant,
    /// Whether the leader granted this member the write lease.
    pub holder: bool,
}

/// The leader's side: who asked when, and whom it declared failed.
#[derive(Debug, Default)]
pub(crate) struct LeaseBook {
    /// One lock for both, so that a failure decision and a request's
    /// arrival are ordered: either the decision sees the request as
    /// contact, or the request's grant sees the revocation.
    inner: Mutex<Book>,
}

#[derive(Debug, Default)]
struct Book {
    /// When each member's latest confirmation request arrived.
    contact: HashMap<NodeId, Instant>,
    /// Writers this member declared failed while leading: the term of the
    /// decision and the generation of the naming it revoked.
    revoked: HashMap<NodeId, (u64, u64)>,
}

impl Book {
    /// Whether `id` is revoked in `term`: `state` still names it writer
    /// under the generation a decision of `term` revoked. A revocation
    /// that no longer applies (the decision is applied, or lost with its
    /// term) is forgotten.
    fn is_revoked<S: Replicated>(&mut self, id: NodeId, term: u64, state: &S) -> bool {
        let Some(&(t, generation)) = self.revoked.get(&id) else {
            return false;
        };
        if t == term && state.lease_holder() == Some((id, generation)) {
            return true;
        }
        self.revoked.remove(&id);
        false
    }
}

impl LeaseBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.inner.lock().expect("lock not poisoned")
    }

    /// A confirmation request from `from` arrived now.
    pub(crate) fn record_contact(&self, from: NodeId) {
        self.lock().contact.insert(from, Instant::now());
    }

    /// Whether `id` is revoked in `term` under `state`.
    pub(crate) fn is_revoked<S: Replicated>(&self, id: NodeId, term: u64, state: &S) -> bool {
        self.lock().is_revoked(id, term, state)
    }

    /// The failure decision of the leader in `term`: the members of `ids`
    /// for which `silent(id, last confirmation request)` holds are declared
    /// failed, and the writer among them loses the lease under its current
    /// naming; with them comes a writer declared earlier this term that
    /// `state` still names under that naming (the decision is not applied
    /// yet, so it is still to be carried out).
    pub(crate) fn declare_failed<S: Replicated>(
        &self,
        ids: impl Iterator<Item = NodeId>,
        term: u64,
        state: &S,
        silent: impl Fn(NodeId, Option<Instant>) -> bool,
    ) -> Vec<NodeId> {
        let mut book = self.lock();
        let mut failed: Vec<NodeId> = ids
            .filter(|id| silent(*id, book.contact.get(id).copied()))
            .collect();
        if let Some((writer, generation)) = state.lease_holder() {
            if failed.contains(&writer) {
                book.revoked.insert(writer, (term, generation));
            }
        }
        let earlier: Vec<NodeId> = book.revoked.keys().copied().collect();
        for id in earlier {
            if !failed.contains(&id) && book.is_revoked(id, term, state) {
                failed.push(id);
            }
        }
        failed.sort_unstable();
        failed
    }
}

/// On the leader: confirm the leadership with a majority, then say whether
/// `from` may hold the lease (see the module's argument).
pub(crate) async fn confirm_as_leader<S: Replicated>(
    ctx: &ServerCtx<S>,
    from: NodeId,
    timeout: Duration,
) -> Result<bool, Fault> {
    ctx.lease.record_contact(from);
    let confirmed = tokio::time::timeout(timeout, ctx.raft.ensure_linearizable()).await;
    match confirmed {
        Err(_) => {
            return Err(Fault::Failed(format!(
                "no majority confirmed the leadership within {} ms",
                timeout.as_millis()
            )))
        }
        Ok(Err(e)) => {
            return Err(match e.forward_to_leader::<Node>() {
                Some(f) => Fault::NotLeader {
                    leader: f
                        .leader_id
                        .zip(f.leader_node.as_ref().map(|n| n.addr.clone())),
                },
                None => Fault::Failed(e.to_string()),
            })
        }
        Ok(Ok(_)) => {}
    }
    let term = ctx.raft.metrics().borrow().current_term;
    let state = ctx.state.borrow().clone();
    let named = state.lease_holder().is_some_and(|(w, _)| w == from);
    Ok(named && !ctx.lease.is_revoked(from, term, &*state))
}

/// The asking side, shared by the engine and its renewal task.
pub(crate) struct Confirmer<S: Replicated> {
    pub(crate) me: NodeId,
    pub(crate) raft: Raft<S>,
    pub(crate) net: Arc<Net>,
    pub(crate) ctx: Arc<ServerCtx<S>>,
    /// How long a grant lasts, counted from the request's sending.
    pub(crate) lease: Duration,
    /// Bound on one confirmation: an answer later than this would grant
    /// little or nothing of the lease.
    pub(crate) timeout: Duration,
    /// Pause after a failed confirmation.
    pub(crate) retry: Duration,
    /// Set while this member wants the lease (it serves production): it
    /// then renews every quarter lease instead of every half.
    pub(crate) wanted: AtomicBool,
    pub(crate) kick: Notify,
    pub(crate) confirmed: watch::Sender<Option<Confirmation>>,
}

impl<S: Replicated> Confirmer<S> {
    /// One confirmation through the current leader (this member itself
    /// when it leads); the latest success is published.
    pub(crate) async fn confirm(&self) -> Result<Confirmation, EngineError> {
        let sent_at = Instant::now();
        let (leader, addr) = {
            let m = self.raft.metrics().borrow().clone();
            let l = m
                .current_leader
                .ok_or(EngineError::NoLeader { attempts: 1 })?;
            let addr = m
                .membership_config
                .membership()
                .get_node(&l)
                .map(|n| n.addr.clone());
            (l, addr)
        };
        let holder = if leader == self.me {
            confirm_as_leader(&self.ctx, self.me, self.timeout)
                .await
                .map_err(fault_err)?
        } else {
            let addr = addr.ok_or(EngineError::NoLeader { attempts: 1 })?;
            let req = Request::<S>::Confirm { from: self.me };
            match self.net.call(&addr, &req, self.timeout, true).await {
                Ok(Response::Confirmed(r)) => r.map_err(fault_err)?,
                Ok(_) => return Err(EngineError::Codec("answer of the wrong kind".into())),
                Err(e) => return Err(e.into_inner()),
            }
        };
        let c = Confirmation { sent_at, holder };
        // Two confirmations may finish out of order (the renewal task and
        // a caller): the one sent last is the news.
        self.confirmed.send_if_modified(|last| match last {
            Some(l) if l.sent_at > sent_at => false,
            _ => {
                *last = Some(c);
                true
            }
        });
        Ok(c)
    }

    /// Whether a majority confirmed this member's leader within the lease.
    pub(crate) fn has_quorum(&self) -> bool {
        self.confirmed
            .borrow()
            .is_some_and(|c| c.sent_at.elapsed() <= self.lease)
    }

    /// The renewal task: confirms every half lease (a quarter while the
    /// lease is wanted), at once when the leader changes or on a kick, and
    /// again after a pause when a confirmation fails: a short one while the
    /// lease is wanted, doubling up to the period otherwise (each failed
    /// round of an isolated leader is a line per voter in openraft's log).
    pub(crate) async fn run(self: Arc<Self>) {
        let mut metrics = self.raft.metrics();
        let mut leader = metrics.borrow().current_leader;
        let mut failures: u32 = 0;
        loop {
            let ok = self.confirm().await.is_ok();
            let wanted = self.wanted.load(Ordering::Acquire);
            let period = if wanted {
                self.lease / 4
            } else {
                self.lease / 2
            };
            failures = if ok { 0 } else { failures.saturating_add(1) };
            let pause = match (ok, wanted) {
                (true, _) => period,
                (false, true) => self.retry.min(period),
                (false, false) => (self.retry * 2u32.pow(failures.min(5) - 1)).min(period),
            };
            let deadline = tokio::time::Instant::now() + pause;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = self.kick.notified() => break,
                    r = metrics.changed() => {
                        if r.is_err() {
                            return;
                        }
                        let now = metrics.borrow_and_update().current_leader;
                        if now != leader {
                            leader = now;
                            break;
                        }
                    }
                }
            }
        }
    }
}

fn fault_err(f: Fault) -> EngineError {
    match f {
        Fault::NotLeader { .. } => EngineError::NoLeader { attempts: 1 },
        Fault::SnapshotMismatch(m) => EngineError::Raft(m.to_string()),
        Fault::Failed(s) => EngineError::Raft(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    /// A state naming one writer, with the generation of that naming.
    #[derive(Clone, Default, Serialize, Deserialize)]
    struct Writer(Option<(NodeId, u64)>);

    impl Replicated for Writer {
        type Command = (NodeId, u64);
        type Outcome = ();
        fn apply(&mut self, cmd: &(NodeId, u64)) {
            self.0 = Some(*cmd);
        }
        fn lease_holder(&self) -> Option<(NodeId, u64)> {
            self.0
        }
    }

    /// Silent: no request since `since`.
    fn silent_since(since: Instant) -> impl Fn(NodeId, Option<Instant>) -> bool {
        move |_, contact| contact.is_none_or(|t| t < since)
    }

    #[test]
    fn a_request_before_the_decision_counts_as_contact() {
        let book = LeaseBook::default();
        let writes = Writer(Some((2, 7)));
        let before = Instant::now();
        book.record_contact(2);
        let failed = book.declare_failed([2, 3].into_iter(), 5, &writes, silent_since(before));
        assert_eq!(failed, vec![3], "2 asked after `before`");
        assert!(!book.is_revoked(2, 5, &writes));
    }

    #[test]
    fn a_declared_writer_gets_no_lease_under_that_naming_in_that_term() {
        let book = LeaseBook::default();
        let writes = Writer(Some((2, 7)));
        let failed = book.declare_failed([2].into_iter(), 5, &writes, |_, _| true);
        assert_eq!(failed, vec![2]);
        // A request arriving after the decision is contact, but no grant.
        book.record_contact(2);
        assert!(book.is_revoked(2, 5, &writes));
        // Still to be carried out while the state names it, silent or not.
        assert_eq!(
            book.declare_failed([2].into_iter(), 5, &writes, |_, _| false),
            vec![2]
        );
        // Another term: that leadership's decision is in the log or lost.
        assert!(!book.is_revoked(2, 6, &writes));
    }

    #[test]
    fn a_writer_named_anew_after_the_decision_is_granted_again() {
        let book = LeaseBook::default();
        book.declare_failed([2].into_iter(), 5, &Writer(Some((2, 7))), |_, _| true);
        // The Fail applied, and 2 named again (it rejoined), both before
        // the leader looked: a new generation, not the revoked one.
        let again = Writer(Some((2, 9)));
        assert!(!book.is_revoked(2, 5, &again));
        assert!(book
            .declare_failed([2].into_iter(), 5, &again, |_, _| false)
            .is_empty());
    }

    #[test]
    fn a_silent_member_that_is_not_the_writer_revokes_nothing() {
        let book = LeaseBook::default();
        let writes = Writer(Some((3, 7)));
        // 2 stays silent (already failed, still cut off) on every tick.
        for _ in 0..3 {
            assert_eq!(
                book.declare_failed([2].into_iter(), 5, &writes, |_, _| true),
                vec![2]
            );
        }
        // It comes back and becomes the writer under a new naming.
        let named = Writer(Some((2, 7)));
        assert!(!book.is_revoked(2, 5, &named));
        assert!(book
            .declare_failed([2].into_iter(), 5, &named, |_, _| false)
            .is_empty());
    }
}
