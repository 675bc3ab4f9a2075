//! The replicated state machine contract and the openraft type configuration
//! built from it; nothing outside `group::engine` names these openraft types.

use std::cmp::Ordering;
use std::fmt::{self, Debug};
use std::io::Cursor;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::frame::FRAME_BYTES_MAX;
use super::snapshot::SNAPSHOT_BYTES_MAX;

/// A deterministic state machine ordered by the engine: every member applies
/// the same commands in the same order and reaches the same state.
///
/// The engine publishes the state as an `Arc<Self>` after each applied
/// batch, so a batch clones it once (copy-on-write): keep it small, as
/// the group state is (members, sites, roles, epoch).
pub trait Replicated:
    Clone + Default + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// A state change proposed by any member.
    type Command: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What applying a command returns to its proposer (e.g. `Result<_, String>`).
    type Outcome: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static;
    /// Applies one committed command. Must be pure: no I/O, no clock, no randomness.
    fn apply(&mut self, cmd: &Self::Command) -> Self::Outcome;

    /// The member this state names as its one writer, with the generation
    /// of that naming, which changes every time the state names a writer
    /// anew (`lease.rs`): the leader grants the write lease to that member
    /// only, and a failure decision revokes that one naming. A state with
    /// no writer grants it to nobody; its confirmations still prove the
    /// majority.
    fn lease_holder(&self) -> Option<(NodeId, u64)> {
        None
    }
}

/// Member identifier, as in the recovery domain.
pub type NodeId = u64;

/// openraft's type configuration for a state machine `S`. A hand-written
/// impl because `declare_raft_types!` cannot declare a generic config.
pub struct Tc<S>(PhantomData<fn() -> S>);

impl<S> Clone for Tc<S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S> Copy for Tc<S> {}
impl<S> Default for Tc<S> {
    fn default() -> Self {
        Tc(PhantomData)
    }
}
impl<S> Debug for Tc<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tc")
    }
}
impl<S> PartialEq for Tc<S> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<S> Eq for Tc<S> {}
impl<S> PartialOrd for Tc<S> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<S> Ord for Tc<S> {
    fn cmp(&self, _: &Self) -> Ordering {
        Ordering::Equal
    }
}

impl<S: Replicated> openraft::RaftTypeConfig for Tc<S> {
    type D = S::Command;
    /// `None` for the entries openraft writes itself (blank, membership).
    type R = Option<S::Outcome>;
    type NodeId = NodeId;
    type Node = openraft::BasicNode;
    type Entry = openraft::Entry<Self>;
    type SnapshotData = Cursor<Vec<u8>>;
    type AsyncRuntime = openraft::TokioRuntime;
    type Responder = openraft::impls::OneshotResponder<Self>;
}

pub(crate) type LogId = openraft::LogId<NodeId>;
pub(crate) type Vote = openraft::Vote<NodeId>;
pub(crate) type Node = openraft::BasicNode;
pub(crate) type Membership = openraft::StoredMembership<NodeId, Node>;
pub(crate) type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub(crate) type StorageError = openraft::StorageError<NodeId>;
pub(crate) type Raft<S> = openraft::Raft<Tc<S>>;

/// The bincode configuration of every encoding in the engine (frames, log
/// entries, snapshots): fixed, so all members agree on the bytes. The
/// limit `N` caps what a decode may claim, so a forged length prefix
/// inside a small buffer cannot make it allocate gigabytes.
type Cfg<const N: usize> = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<N>,
>;

fn cfg<const N: usize>() -> Cfg<N> {
    bincode::config::standard().with_limit::<N>()
}

/// Encodes `v` with the engine's bincode configuration.
pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(v, cfg::<{ FRAME_BYTES_MAX }>())
}

/// Decodes a frame or a log entry, claiming at most `FRAME_BYTES_MAX`.
pub(crate) fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<T, bincode::error::DecodeError> {
    decode_with(buf, cfg::<{ FRAME_BYTES_MAX }>())
}

/// Decodes a snapshot or a state, claiming at most `SNAPSHOT_BYTES_MAX`.
pub(crate) fn decode_snapshot<T: DeserializeOwned>(
    buf: &[u8],
) -> Result<T, bincode::error::DecodeError> {
    decode_with(buf, cfg::<{ SNAPSHOT_BYTES_MAX as usize }>())
}

/// Trailing bytes are an error: every buffer we decode was framed with its
/// exact length.
fn decode_with<T: DeserializeOwned, C: bincode::config::Config>(
    buf: &[u8],
    c: C,
) -> Result<T, bincode::error::DecodeError> {
    let (v, used) = bincode::serde::decode_from_slice(buf, c)?;
    if used != buf.len() {
        return Err(bincode::error::DecodeError::OtherString(format!(
            "{} trailing bytes",
            buf.len() - used
        )));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_length_prefix_is_refused_without_allocating_it() {
        // Varint u64 marker (253) then 2^40 as the string length, and no bytes.
        let mut buf = vec![253u8];
        buf.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(decode::<String>(&buf).is_err());
        assert!(decode::<Vec<u8>>(&buf).is_err());
        assert!(decode_snapshot::<Vec<u64>>(&buf).is_err());
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut buf = encode(&7u32).expect("encode");
        buf.push(0);
        assert!(decode::<u32>(&buf).is_err());
    }
}
