//! Membership changes and client writes as run on the leader, shared by the
//! local API and the RPC server (a follower answers with a leader hint).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;

use super::types::{encode, Node, NodeId, Raft, Replicated};
use super::wire::Fault;

type WriteErr = RaftError<NodeId, ClientWriteError<NodeId, Node>>;

fn to_fault(e: WriteErr) -> Fault {
    match e.forward_to_leader::<Node>() {
        Some(f) => Fault::NotLeader {
            leader: f
                .leader_id
                .zip(f.leader_node.as_ref().map(|n| n.addr.clone())),
        },
        None => Fault::Failed(e.to_string()),
    }
}

/// Commits `cmd` if this member leads; returns the outcome of applying it.
pub(crate) async fn propose<S: Replicated>(
    raft: &Raft<S>,
    cmd: S::Command,
) -> Result<S::Outcome, Fault> {
    check_command_size::<S>(&cmd)?;
    let resp = raft.client_write(cmd).await.map_err(to_fault)?;
    resp.data
        .ok_or_else(|| Fault::Failed("a normal entry applied without an outcome".into()))
}

/// Largest encoded command. openraft 0.9 must get each AppendEntries
/// answered within one heartbeat period, so a full batch
/// (`ENTRIES_PER_APPEND_MAX` × this, ≤ 1 MiB) has to stay small; group
/// state commands are a few hundred bytes.
pub const COMMAND_BYTES_MAX: usize = 16 << 10;
/// Entries sent in one AppendEntries (openraft `max_payload_entries`).
pub(crate) const ENTRIES_PER_APPEND_MAX: u64 = 64;
const _: () = assert!(
    (COMMAND_BYTES_MAX as u64 + 1024) * ENTRIES_PER_APPEND_MAX
        < super::frame::FRAME_BYTES_MAX as u64
);

/// Refuses commands too large to replicate within one frame.
pub(crate) fn check_command_size<S: Replicated>(cmd: &S::Command) -> Result<(), Fault> {
    let len = encode(cmd).map_err(|e| Fault::Failed(e.to_string()))?.len();
    if len > COMMAND_BYTES_MAX {
        return Err(Fault::Failed(format!(
            "command of {len} bytes exceeds {COMMAND_BYTES_MAX}"
        )));
    }
    Ok(())
}

/// Adds `id` as a learner, waits until it has caught up (snapshot or log
/// replay, patent block 72), then promotes it to voter. A member that
/// already belongs is left as it is, so a restarted member may call it again.
pub(crate) async fn add_member<S: Replicated>(
    raft: &Raft<S>,
    id: NodeId,
    addr: String,
    timeout: Duration,
) -> Result<(), Fault> {
    let work = async {
        let m = raft.metrics().borrow().membership_config.clone();
        if m.membership().voter_ids().any(|v| v == id) {
            // Already a voter: check leadership so a stale follower does not claim success.
            raft.ensure_linearizable()
                .await
                .map_err(|e| match e.forward_to_leader::<Node>() {
                    Some(f) => Fault::NotLeader {
                        leader: f
                            .leader_id
                            .zip(f.leader_node.as_ref().map(|n| n.addr.clone())),
                    },
                    None => Fault::Failed(e.to_string()),
                })?;
            return Ok(());
        }
        raft.add_learner(id, Node::new(addr), true)
            .await
            .map_err(to_fault)?;
        raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(to_fault)?;
        Ok(())
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        Fault::Failed(format!(
            "membership change timed out after {} ms",
            timeout.as_millis()
        ))
    })?
}

/// Removes `id` from the voters and from the members altogether.
pub(crate) async fn remove_member<S: Replicated>(
    raft: &Raft<S>,
    id: NodeId,
    timeout: Duration,
) -> Result<(), Fault> {
    let work = async {
        let m = raft.metrics().borrow().membership_config.clone();
        let change = if m.membership().voter_ids().any(|v| v == id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if m.membership().get_node(&id).is_some() {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Ok(());
        };
        raft.change_membership(change, false)
            .await
            .map_err(to_fault)?;
        Ok(())
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        Fault::Failed(format!(
            "membership change timed out after {} ms",
            timeout.as_millis()
        ))
    })?
}

/// The one-member group a founding member initializes.
pub(crate) fn founding(id: NodeId, addr: String) -> BTreeMap<NodeId, Node> {
    BTreeMap::from([(id, Node::new(addr))])
}
