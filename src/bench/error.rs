//! Errors of the benchmark layer: each names the target it happened on, so
//! the command line can say which export failed and why.

use crate::attach::AttachError;

/// What can stop a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The target's socket refused or failed the connection or handshake.
    #[error("target {target}: cannot reach the NBD export: {cause}")]
    Unreachable { target: String, cause: AttachError },

    /// Connecting and negotiating took longer than the connect timeout.
    #[error("target {target}: no NBD handshake within {timeout_ms} ms")]
    ConnectTimeout { target: String, timeout_ms: u64 },

    /// The export refuses writes, so a write benchmark cannot run on it.
    #[error("target {target}: the export is read-only; a write benchmark needs a writable export")]
    ReadOnly { target: String },

    /// The export or `--size` does not fit the workload: too small for its
    /// blocks and queue depth, or more blocks than a run tracks.
    #[error("target {target}: {reason}")]
    BadSize { target: String, reason: String },

    /// A request failed while the load ran.
    #[error("target {target}: NBD request failed: {cause}")]
    Io { target: String, cause: AttachError },

    /// Requests stopped completing: the run is abandoned instead of hanging.
    #[error("target {target}: requests still unanswered {timeout_ms} ms after the run ended (--io-timeout-ms); the server stopped answering")]
    Stalled { target: String, timeout_ms: u64 },

    /// Reading back a written block gave other bytes than were written.
    #[error("target {target}: verify failed at offset {offset}: data read back differs from data written")]
    Verify { target: String, offset: u64 },

    /// fio could not be run, failed, or printed something we cannot read.
    #[error("target {target}: fio: {reason}")]
    Fio { target: String, reason: String },

    /// `--engine fio` was asked for but fio is not on PATH.
    #[error("fio is not installed (apt-get install fio), or use --engine builtin")]
    FioMissing,

    /// The throwaway local set-up of `--local` could not be started.
    #[error("local set-up: {0}")]
    Local(String),

    /// The recovery-domain file gave no export to measure.
    #[error("recovery domain {path}: {reason}")]
    Config { path: String, reason: String },

    /// Bad command-line values (caught before anything connects).
    #[error("{0}")]
    Usage(String),
}
