//! This member's view of the group for status output: metrics, quorum
//! (from lease confirmations), and the leader's failure detector over
//! peers' last answers and lease requests.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::types::{Node, NodeId, Replicated};
use super::Engine;

/// A summary of this member's view of the group, for status output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineMetrics {
    /// This member.
    pub id: NodeId,
    /// Current Raft term.
    pub term: u64,
    /// The leader this member knows of.
    pub leader: Option<NodeId>,
    /// Voting members.
    pub voters: BTreeSet<NodeId>,
    /// Non-voting members (joining, catching up).
    pub learners: BTreeSet<NodeId>,
    /// Index of the last entry in the local log.
    pub last_log_index: Option<u64>,
    /// Index of the last entry applied to the state.
    pub last_applied_index: Option<u64>,
    /// Index covered by the latest snapshot.
    pub snapshot_index: Option<u64>,
    /// Index up to which the log was purged (compacted into the snapshot).
    pub purged_index: Option<u64>,
    /// Whether this member can currently get anything committed.
    pub has_quorum: bool,
}

impl<S: Replicated> Engine<S> {
    /// Whether a majority of the voters confirmed, within the last lease,
    /// the leader this member follows (or, on the leader, its leadership;
    /// there openraft's age of the last majority acknowledgement must be
    /// within the lease too). A member cut off with its leader, and that
    /// leader, lose it within one lease. False for a lone survivor of a
    /// two-voter group.
    pub fn has_quorum(&self) -> bool {
        let (leader, acked_ms) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_leader, m.millis_since_quorum_ack)
        };
        match leader {
            Some(l) if l == self.cfg.node_id => {
                acked_ms.is_some_and(|ms| ms <= self.cfg.lease_ms) && self.confirmer.has_quorum()
            }
            Some(_) => self.confirmer.has_quorum(),
            None => false,
        }
    }

    /// A summary of this member's view.
    pub fn metrics(&self) -> EngineMetrics {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        EngineMetrics {
            id: self.cfg.node_id,
            term: m.current_term,
            leader: m.current_leader,
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            has_quorum: self.has_quorum(),
        }
    }

    /// The leader's failure detector: members silent for longer than
    /// `timeout`, counting as contact their last answered RPC, their last
    /// lease request, and this member's election. Reporting a member is the
    /// decision to fail it: its lease is revoked (`lease.rs` says why that,
    /// with `timeout >= lease + margin`, keeps two hosts from writing), and
    /// it is reported again on every call until the state no longer lets
    /// it write, so the caller carries the decision out. Empty on other
    /// members, which do not send heartbeats.
    pub fn unreachable_peers(&self, timeout: Duration) -> Vec<NodeId> {
        let (term, ids) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            if m.current_leader != Some(self.cfg.node_id) {
                return Vec::new();
            }
            let ids: Vec<NodeId> = m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .filter(|id| *id != self.cfg.node_id)
                .collect();
            (m.current_term, ids)
        };
        // Counted from the election of this term only: a leadership of an
        // earlier term says nothing about leases granted since.
        let since = match *self.leader_since.lock().expect("lock not poisoned") {
            Some((t, since)) if t == term => since,
            _ => return Vec::new(),
        };
        let state = self.state.borrow().clone();
        self.ctx
            .lease
            .declare_failed(ids.into_iter(), term, &*state, |id, asked| {
                let last = [self.net.last_ok(id), asked]
                    .into_iter()
                    .flatten()
                    .fold(since, Instant::max);
                last.elapsed() > timeout
            })
    }
}

/// Records the term this member leads and when it saw itself elected, for
/// [`Engine::unreachable_peers`] (seeing it later than it happened only
/// delays failure decisions).
pub(crate) async fn watch_leadership(
    me: NodeId,
    mut m: watch::Receiver<openraft::RaftMetrics<NodeId, Node>>,
    since: Arc<Mutex<Option<(u64, Instant)>>>,
) {
    loop {
        {
            let cur = m.borrow_and_update();
            let leads = cur.current_leader == Some(me);
            let mut s = since.lock().expect("lock not poisoned");
            if !leads {
                *s = None;
            } else if s.is_none_or(|(t, _)| t != cur.current_term) {
                *s = Some((cur.current_term, Instant::now()));
            }
        }
        if m.changed().await.is_err() {
            return;
        }
    }
}
