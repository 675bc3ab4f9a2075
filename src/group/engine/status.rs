//! This member's view of the group for status output: metrics, quorum,
//! and the leader's failure detector over peers' last answers.

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
    /// Whether this member can currently get a command committed: as leader,
    /// a majority acknowledged it within the election timeout; as follower,
    /// the leader reached it within that time. False for a lone survivor of
    /// a two-voter group.
    pub fn has_quorum(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        let window_ms = self.cfg.election_timeout_ms.saturating_mul(2);
        match m.current_leader {
            Some(l) if l == self.cfg.node_id => {
                m.millis_since_quorum_ack.is_some_and(|ms| ms <= window_ms)
            }
            Some(_) => self
                .ctx
                .last_leader_contact
                .lock()
                .expect("lock not poisoned")
                .is_some_and(|t| t.elapsed() <= Duration::from_millis(window_ms)),
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

    /// On the leader: members that have not answered any RPC for longer
    /// than `timeout` (counted from when this member became leader at the
    /// earliest). Empty on other members, which do not send heartbeats.
    pub fn unreachable_peers(&self, timeout: Duration) -> Vec<NodeId> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader != Some(self.cfg.node_id) {
            return Vec::new();
        }
        let Some(since) = *self.leader_since.lock().expect("lock not poisoned") else {
            return Vec::new();
        };
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| *id != self.cfg.node_id)
            .filter(|id| {
                let last = self.net.last_ok(*id).map_or(since, |t| t.max(since));
                last.elapsed() > timeout
            })
            .collect()
    }
}

/// Records when this member becomes leader, for [`Engine::unreachable_peers`].
pub(crate) async fn watch_leadership(
    me: NodeId,
    mut m: watch::Receiver<openraft::RaftMetrics<NodeId, Node>>,
    since: Arc<Mutex<Option<Instant>>>,
) {
    let mut term_led = None;
    loop {
        {
            let cur = m.borrow_and_update();
            let leads = cur.current_leader == Some(me);
            let mut s = since.lock().expect("lock not poisoned");
            if !leads {
                *s = None;
                term_led = None;
            } else if term_led != Some(cur.current_term) {
                *s = Some(Instant::now());
                term_led = Some(cur.current_term);
            }
        }
        if m.changed().await.is_err() {
            return;
        }
    }
}
