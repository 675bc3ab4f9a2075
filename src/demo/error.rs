//! What can stop the demo part-way: the conditions it detects itself.
//! Errors from the layers it drives are wrapped with context at the edge.

use std::process::ExitStatus;

/// Why a demo step could not go on.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// SIGINT or SIGTERM arrived; the members are being stopped.
    #[error("interrupted")]
    Interrupted,
    /// A condition the step waits for did not hold in time.
    #[error("timed out after {waited_ms} ms waiting for {what}{last}")]
    Timeout {
        /// What was awaited, in words.
        what: String,
        /// How long we waited.
        waited_ms: u64,
        /// The last thing seen (a status line or an error), prefixed by `: `.
        last: String,
    },
    /// A member process ended while the demo needed it running.
    #[error("member {member} exited unexpectedly ({status}); see {log}")]
    MemberExited {
        /// Member name.
        member: String,
        /// How it ended.
        status: ExitStatus,
        /// Its log file.
        log: String,
    },
    /// A stopped member did not exit within the allowed time.
    #[error("member {member} did not exit within {waited_ms} ms of SIGTERM")]
    StopTimeout {
        /// Member name.
        member: String,
        /// How long we waited.
        waited_ms: u64,
    },
}
