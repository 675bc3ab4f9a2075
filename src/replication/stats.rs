//! Per-copy figures for operators and the node daemon: state, bytes sent
//! and acknowledged, lag in bytes and seconds, resync progress, rate, ETA.

use std::sync::atomic::Ordering;

use super::disk_failure::{shown_state, DiskFailure};
use super::link::{CopyLink, LinkState};

/// A snapshot of a link's counters.
#[derive(Debug, Clone)]
pub struct CopyStats {
    pub name: String,
    pub state: LinkState,
    /// Page bytes written to the socket.
    pub bytes_sent: u64,
    /// Page bytes the copy acknowledged.
    pub bytes_acked: u64,
    /// Page bytes queued or sent and not yet acknowledged.
    pub lag_bytes: u64,
    /// Age of the oldest unacknowledged request, in seconds.
    pub lag_s: f64,
    /// Bytes sent by the current or last resync.
    pub resynced_bytes: u64,
    /// Chunks compared by checksum and found equal (not sent).
    pub resync_chunks_skipped: u64,
    /// Dirty bytes left to resync.
    pub resync_bytes_to_go: u64,
    pub resync_rate_bytes_per_s: f64,
    pub resync_eta_s: Option<f64>,
    /// Sessions established so far.
    pub sessions: u64,
    pub last_error: Option<String>,
    /// The failure of the copy's disk while the state is `DiskFailed`.
    pub disk_failure: Option<DiskFailure>,
}

impl CopyLink {
    /// Counters and state, now.
    pub fn stats(&self) -> CopyStats {
        let cb = self.log.chunk_bytes();
        let g = self.lock();
        let resynced = self.counters.resynced_bytes.load(Ordering::Relaxed);
        let to_go = g.pending_resync.len() * cb;
        // A finished resync keeps the rate it had from its start to
        // UpToDate; a running one is measured up to now.
        let rate = match g.resync_started {
            Some(t) => {
                let end = g.resync_finished.filter(|f| *f >= t);
                let secs = end.map_or_else(|| t.elapsed(), |f| f - t).as_secs_f64();
                resynced as f64 / secs.max(1e-3)
            }
            None => 0.0,
        };
        let state = shown_state(g.state, g.disk_failure.as_ref());
        CopyStats {
            name: self.cfg.name.clone(),
            state,
            bytes_sent: self.counters.bytes_sent.load(Ordering::Relaxed),
            bytes_acked: self.counters.bytes_acked.load(Ordering::Relaxed),
            lag_bytes: self.counters.lag_bytes.load(Ordering::Relaxed),
            lag_s: g.oldest_unacked.map_or(0.0, |t| t.elapsed().as_secs_f64()),
            resynced_bytes: resynced,
            resync_chunks_skipped: self.counters.resync_skipped.load(Ordering::Relaxed),
            resync_bytes_to_go: to_go,
            resync_rate_bytes_per_s: rate,
            resync_eta_s: (rate > 0.0 && to_go > 0).then(|| to_go as f64 / rate),
            sessions: self.counters.sessions.load(Ordering::Relaxed),
            last_error: g.last_error.clone(),
            disk_failure: g
                .disk_failure
                .clone()
                .filter(|_| state == LinkState::DiskFailed),
        }
    }
}
