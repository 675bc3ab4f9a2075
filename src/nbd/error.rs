//! Errors of the NBD frontend: why a handshake or a connection ended.
//! Per-request failures are not errors here: they become an errno in the reply.

/// Why the NBD layer gave up on a connection (or could not start serving).
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The socket failed or the peer closed it.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// A message did not start with the magic the protocol requires at that
    /// point (e.g. a transmission request sent during negotiation).
    #[error("bad magic {got:#x} (expected {expected:#x})")]
    BadMagic { expected: u64, got: u64 },
    /// The client set handshake flags this server does not know; the spec
    /// requires closing the connection (doc/proto.md "Client flags").
    #[error("unknown client flags {0:#x}")]
    UnknownClientFlags(u32),
    /// NBD_OPT_EXPORT_NAME cannot carry an error reply, so a bad name ends
    /// the session (doc/proto.md "NBD_OPT_EXPORT_NAME").
    #[error("client asked for export {0:?}, which does not exist or is invalid")]
    UnknownExport(String),
    /// The client did not finish negotiation in time.
    #[error("handshake not finished within {0} ms")]
    HandshakeTimeout(u64),
    /// The client ended negotiation with NBD_OPT_ABORT or closed it.
    #[error("client ended the negotiation")]
    Aborted,
    /// A write announced a payload larger than we accept; we cannot skip it
    /// cheaply, so the connection is closed (doc/proto.md "Block size constraints").
    #[error("write payload of {0} bytes exceeds the maximum")]
    PayloadTooLarge(u32),
    /// The server is shutting down.
    #[error("server shutting down")]
    ShuttingDown,
    /// A listen address could not be parsed or bound.
    #[error("listen address {addr:?}: {reason}")]
    Listen { addr: String, reason: String },
}

impl NbdError {
    /// True when the peer simply went away, which is logged quietly.
    pub fn is_disconnect(&self) -> bool {
        match self {
            NbdError::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
            ),
            NbdError::Aborted => true,
            _ => false,
        }
    }
}
