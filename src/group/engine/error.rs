//! The engine's error type: what `Engine` calls report to the node, each
//! variant a distinct reason the caller can act on.

use std::io;
use std::path::PathBuf;

use super::auth::AuthError;
use super::frame::FrameError;

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The configuration is inconsistent (timeouts, ids, addresses).
    #[error("invalid engine configuration: {0}")]
    Config(String),
    /// The state directory or one of its files could not be used.
    #[error("state directory {path}: {source}")]
    StateDir {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying failure.
        source: io::Error,
    },
    /// The log store (redb) failed.
    #[error("log store: {0}")]
    Store(String),
    /// The listener could not be bound.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The configured listen address.
        addr: std::net::SocketAddr,
        /// The underlying failure.
        source: io::Error,
    },
    /// A peer could not be reached or the connection broke before a request was sent.
    #[error("peer {addr}: {source}")]
    Unreachable {
        /// The peer's address.
        addr: String,
        /// The underlying failure.
        source: io::Error,
    },
    /// The peer refused our credentials or could not prove its own.
    #[error("authentication with {addr}: {source}")]
    Auth {
        /// The peer's address.
        addr: String,
        /// What failed.
        source: AuthError,
    },
    /// A frame was malformed or too large.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// A message could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(String),
    /// The request was sent but no answer came back: it may or may not have
    /// been applied (the caller decides whether retrying is safe).
    #[error("no answer from {addr} after the request was sent: {reason}")]
    Indeterminate {
        /// The peer's address.
        addr: String,
        /// Why no answer arrived.
        reason: String,
    },
    /// No leader could be found within the retry budget (an election is
    /// running, or this member has no quorum).
    #[error("no leader reachable after {attempts} attempts")]
    NoLeader {
        /// How many attempts were made.
        attempts: u32,
    },
    /// Raft refused the operation (membership change conflict, not a member, ...).
    #[error("raft: {0}")]
    Raft(String),
    /// The engine has been shut down or its Raft core stopped.
    #[error("engine stopped")]
    Stopped,
}
