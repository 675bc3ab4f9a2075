//! The engine's RPC messages (one request, one response per frame): Raft's
//! three RPCs plus client writes, membership changes and lease
//! confirmations sent to the leader.

use openraft::error::SnapshotMismatch;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::types::{NodeId, Replicated, Tc};

/// Protocol tag for [`super::auth::Authenticator`] on engine connections.
pub const AUTH_CONTEXT: [u8; 8] = *b"GMRAFT01";

/// A request from one member to another.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) enum Request<S: Replicated> {
    /// Raft AppendEntries (log replication and heartbeat).
    Append(AppendEntriesRequest<Tc<S>>),
    /// Raft RequestVote.
    Vote(VoteRequest<NodeId>),
    /// One chunk of a Raft InstallSnapshot.
    Snapshot(InstallSnapshotRequest<Tc<S>>),
    /// A command to commit; only the leader accepts it.
    Propose(S::Command),
    /// Add a member as learner, then promote it to voter (block 72: it then
    /// receives the group state by snapshot or log replay). Leader only.
    AddMember {
        /// The member's id.
        id: NodeId,
        /// Where the other members reach it.
        addr: String,
    },
    /// Remove a member from the voters and learners. Leader only.
    RemoveMember {
        /// The member's id.
        id: NodeId,
    },
    /// Where the answering member stands in the group's founding (see
    /// `super::rendezvous`). After the older variants, so they keep their tags.
    Phase,
    /// Confirm, with a majority, that the answering member still leads,
    /// and say whether `from` may hold the write lease (`super::lease`).
    /// Leader only. Last, so older variants keep their tags.
    Confirm {
        /// The asking member: the leader counts the request as contact.
        from: NodeId,
    },
}

/// Why a remote member could not serve a request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Fault {
    /// It is not the leader; `leader` is its best knowledge of who is.
    NotLeader {
        /// The leader's id and address, if known.
        leader: Option<(NodeId, String)>,
    },
    /// A snapshot chunk arrived out of order (openraft restarts the transfer).
    SnapshotMismatch(SnapshotMismatch),
    /// Anything else, as text.
    Failed(String),
}

/// The answer to a [`Request`], same variant order.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) enum Response<S: Replicated> {
    /// Answer to [`Request::Append`].
    Append(Result<AppendEntriesResponse<NodeId>, Fault>),
    /// Answer to [`Request::Vote`].
    Vote(Result<VoteResponse<NodeId>, Fault>),
    /// Answer to [`Request::Snapshot`].
    Snapshot(Result<InstallSnapshotResponse<NodeId>, Fault>),
    /// Answer to [`Request::Propose`]: the outcome of applying the command.
    Proposed(Result<S::Outcome, Fault>),
    /// Answer to [`Request::AddMember`] and [`Request::RemoveMember`].
    Membership(Result<(), Fault>),
    /// Answer to [`Request::Phase`].
    Phase(super::rendezvous::PeerPhase),
    /// Answer to [`Request::Confirm`]: the leadership was confirmed by a
    /// majority after the request arrived; `true` when the asking member
    /// holds the lease from the time it sent the request.
    Confirmed(Result<bool, Fault>),
}
