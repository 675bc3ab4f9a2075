//! Errors of the replication layer: the wire, the handshake, the links and
//! the receiver. Mapped to an NBD errno at the edge by [`ReplicationError::errno`].

use crate::storage::StorageError;

/// Everything that can go wrong while replicating.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The socket failed or closed.
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    TruncatedFrame,
    /// A frame does not start with our magic number.
    #[error("bad frame magic {0:#010x}")]
    BadMagic(u32),
    /// A frame's prefix, header or page fails its crc32: it is never applied.
    #[error("crc32 mismatch in frame {what}")]
    Checksum { what: &'static str },
    /// A frame announces more bytes than we accept; refused before allocating.
    #[error("frame too large: {len} bytes (at most {max})")]
    FrameTooLarge { len: u64, max: u64 },
    /// The header of a frame does not decode to a message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The peer sent a message that is not valid at this point of the protocol.
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
    /// The peer does not prove knowledge of the recovery domain's secret.
    #[error("authentication failed: the peer does not know the secret")]
    BadMac,
    /// The peer answered our own challenge with itself (reflection attack).
    #[error("reflected challenge refused")]
    ReflectedChallenge,
    /// The peer speaks for an epoch older than the one we know (fencing).
    #[error("stale epoch {got}: this host knows epoch {known}")]
    StaleEpoch { got: u64, known: u64 },
    /// The copy knows a newer epoch than ours: this host lost its role.
    #[error("fenced: the copy knows epoch {known}, we are at {ours}")]
    Fenced { ours: u64, known: u64 },
    /// A request reaches outside the copy disk.
    #[error("range {offset}+{len} is outside the disk ({size} bytes)")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// The copy disk is smaller than the production disk.
    #[error("copy disk is {copy} bytes, production needs {production}")]
    CopyTooSmall { copy: u64, production: u64 },
    /// Both sides wrote while apart: the generations diverged (never merged).
    #[error("split brain: production {production} and copy {copy} both changed since they parted")]
    SplitBrain { production: String, copy: String },
    /// The generations say the copy holds newer data than production.
    #[error("refused: {0}")]
    GenerationRefused(String),
    /// The copy host failed to apply a request over `[offset, offset+len)`
    /// of its disk (`len` 0: a request without a range) with `errno`.
    #[error("copy host failed a request at offset {offset} (+{len} bytes) with {}", super::disk_failure::errno_name(*errno))]
    Remote { errno: i32, offset: u64, len: u64 },
    /// The peer did not answer within the time allowed.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The link to the copy host is down; the range stays marked dirty.
    #[error("copy link down")]
    LinkDown,
    /// The dirty log (bitmap) could not record or clear a range.
    #[error("dirty log: {0}")]
    DirtyLog(std::io::Error),
    /// A disk underneath failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl ReplicationError {
    /// The errno an NBD reply carries for this error (NBD `doc/proto.md`,
    /// "Error values"). Only local failures reach a client: a copy that
    /// fails is disconnected and resynced instead.
    pub fn errno(&self) -> i32 {
        match self {
            ReplicationError::Storage(e) => e.errno(),
            ReplicationError::OutOfRange { .. } => libc::ENOSPC,
            ReplicationError::Fenced { .. } => libc::EPERM,
            _ => libc::EIO,
        }
    }
}
