//! Why an observability operation failed: the metrics endpoint, an event
//! subscription or a watched report. Mapped to a CLI message at the edge.

use crate::node::control::ControlError;
use std::net::SocketAddr;

/// Errors of the observability layer.
#[derive(Debug, thiserror::Error)]
pub enum ObsError {
    /// The Prometheus endpoint could not be set up (e.g. the address is in use).
    #[error("metrics endpoint on {addr}: {reason}")]
    MetricsListen {
        /// The address it was asked to listen on.
        addr: SocketAddr,
        /// What the exporter reported.
        reason: String,
    },
    /// A process-wide metrics recorder is already installed.
    #[error("a metrics recorder is already installed in this process")]
    AlreadyInstalled,
    /// The endpoint needs a tokio runtime to serve from, and there is none.
    #[error("the metrics endpoint must be started inside a tokio runtime")]
    NoRuntime,
    /// The event bus already has its maximum number of subscribers.
    #[error("too many event subscribers (at most {0})")]
    TooManySubscribers(usize),
    /// An event line from a member is longer than the bound; the stream stops.
    #[error("event line longer than {0} bytes")]
    EventLineTooLong(usize),
    /// An event line from a member is not JSON.
    #[error("event line is not valid JSON: {0}")]
    BadEventLine(serde_json::Error),
    /// An event could not be serialised (a bug: every field is plain data).
    #[error("event cannot be serialised: {0}")]
    Encode(serde_json::Error),
    /// Connecting to a member took longer than the bound.
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    /// The control request that opens a subscription failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A socket or the terminal failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
