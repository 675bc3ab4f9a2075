//! How a copy link's live figures read in the status report and in the
//! sync report the production host replicates: state names, rates, lag.

use crate::config::Mode;
use crate::group::CopyState;
use crate::replication::{errno_name, CopyStats, LinkState};

use super::status::ResourceStatus;

/// Whether a connected, up-to-date copy counts as lagging. In sync mode a
/// write completes only once every copy has it, so bytes the link still
/// holds are writes in flight (plus the link's per-request overhead), not
/// lag: only async mode lets a copy fall behind.
fn lagging(c: &CopyStats, mode: Mode) -> bool {
    mode == Mode::Async && c.lag_bytes > 0
}

/// Fill `r` from the live figures of its copy link. A link with nothing
/// left to resync shows no rate and no ETA (the link keeps its last
/// resync's mean rate).
pub fn live_figures(r: &mut ResourceStatus, c: &CopyStats, mode: Mode) {
    // A copy whose disk fails is not moving: no rate, no ETA.
    let resyncing = c.resync_bytes_to_go > 0 && c.state != LinkState::DiskFailed;
    r.state = link_state_name(c, mode).into();
    r.resynced_bytes = c.resynced_bytes;
    r.bytes_to_go = c.resync_bytes_to_go;
    r.rate_bytes_per_s = if resyncing {
        c.resync_rate_bytes_per_s
    } else {
        0.0
    };
    r.eta_s = c.resync_eta_s.filter(|_| resyncing);
    r.lag_bytes = c.lag_bytes;
    r.lag_s = c.lag_s;
    let failure = c.disk_failure.as_ref();
    r.disk_errno = failure.map(|f| f.errno);
    r.disk_error = failure.map(|f| errno_name(f.errno));
    r.disk_offset = failure.map(|f| f.offset);
}

/// Fill `r`'s disk failure from the report the group replicated.
pub fn reported_disk_failure(r: &mut ResourceStatus, rep: &crate::group::SyncReport) {
    let failed = rep.state == CopyState::DiskFailed;
    r.disk_errno = rep.disk_errno.filter(|_| failed);
    r.disk_error = r.disk_errno.map(errno_name);
    r.disk_offset = rep.disk_offset.filter(|_| failed);
}

/// The name status shows for a copy state reported through the group.
pub fn copy_state_name(s: CopyState) -> &'static str {
    match s {
        CopyState::Unknown => "Unknown",
        CopyState::Inconsistent | CopyState::Resyncing => "Inconsistent",
        CopyState::UpToDate => "UpToDate",
        CopyState::Lagging => "Lagging",
        CopyState::SplitBrain => "SplitBrain",
        CopyState::Failed => "Disconnected",
        CopyState::DiskFailed => "DiskFailed",
    }
}

fn link_state_name(c: &CopyStats, mode: Mode) -> &'static str {
    match c.state {
        LinkState::Disconnected => "Disconnected",
        LinkState::Inconsistent => "Inconsistent",
        LinkState::UpToDate if lagging(c, mode) => "Lagging",
        LinkState::UpToDate => "UpToDate",
        LinkState::SplitBrain => "SplitBrain",
        LinkState::Refused => "Refused",
        LinkState::Stopped => "Stopped",
        LinkState::DiskFailed => "DiskFailed",
    }
}

/// The report the production host replicates for a copy link.
pub fn sync_report(c: &CopyStats, mode: Mode) -> crate::group::SyncReport {
    let state = match c.state {
        LinkState::Disconnected | LinkState::Refused | LinkState::Stopped => CopyState::Failed,
        LinkState::Inconsistent => CopyState::Resyncing,
        LinkState::UpToDate if lagging(c, mode) => CopyState::Lagging,
        LinkState::UpToDate => CopyState::UpToDate,
        LinkState::SplitBrain => CopyState::SplitBrain,
        LinkState::DiskFailed => CopyState::DiskFailed,
    };
    let resyncing = c.resync_bytes_to_go > 0 && state != CopyState::DiskFailed;
    let failure = c
        .disk_failure
        .as_ref()
        .filter(|_| state == CopyState::DiskFailed);
    crate::group::SyncReport {
        state,
        resynced_bytes: c.resynced_bytes,
        bytes_to_go: c.resync_bytes_to_go,
        lag_bytes: c.lag_bytes,
        // Whole units are plenty for display and keep the report exact (Eq).
        // A finished resync has no rate: the report then stops changing, so
        // nothing more is replicated until something happens.
        rate_bytes_per_s: if resyncing {
            finite_u64(c.resync_rate_bytes_per_s)
        } else {
            0
        },
        eta_s: c
            .resync_eta_s
            .filter(|_| resyncing)
            .map(|s| finite_u64(s.ceil())),
        lag_ms: finite_u64(c.lag_s * 1000.0),
        disk_errno: failure.map(|f| f.errno),
        disk_offset: failure.map(|f| f.offset),
    }
}

/// `v` rounded down to a u64; NaN and negatives are 0, huge values saturate.
fn finite_u64(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up_to_date() -> CopyStats {
        CopyStats {
            name: "b1".into(),
            state: LinkState::UpToDate,
            bytes_sent: 0,
            bytes_acked: 0,
            lag_bytes: 0,
            lag_s: 0.0,
            resynced_bytes: 0,
            resync_chunks_skipped: 0,
            resync_bytes_to_go: 0,
            resync_rate_bytes_per_s: 0.0,
            resync_eta_s: None,
            sessions: 1,
            last_error: None,
            disk_failure: None,
        }
    }

    fn blank() -> ResourceStatus {
        ResourceStatus {
            id: "payroll-dr".into(),
            site: "dr".into(),
            role: "copy".into(),
            host: Some("b1".into()),
            state: "Unknown".into(),
            size_bytes: None,
            resynced_bytes: 0,
            bytes_to_go: 0,
            rate_bytes_per_s: 0.0,
            eta_s: None,
            lag_bytes: 0,
            lag_s: 0.0,
            disk_errno: None,
            disk_error: None,
            disk_offset: None,
        }
    }

    #[test]
    fn in_sync_mode_writes_in_flight_are_not_lag() {
        let c = CopyStats {
            lag_bytes: 64,
            ..up_to_date()
        };
        let mut r = blank();
        live_figures(&mut r, &c, Mode::Sync);
        assert_eq!(r.state, "UpToDate");
        assert_eq!(sync_report(&c, Mode::Sync).state, CopyState::UpToDate);
        live_figures(&mut r, &c, Mode::Async);
        assert_eq!(r.state, "Lagging");
        assert_eq!(sync_report(&c, Mode::Async).state, CopyState::Lagging);
    }

    #[test]
    fn a_finished_resync_shows_no_rate_and_no_eta() {
        let c = CopyStats {
            resynced_bytes: 32 << 20,
            resync_rate_bytes_per_s: 1_700_000.0,
            resync_eta_s: Some(3.0),
            ..up_to_date()
        };
        let mut r = blank();
        live_figures(&mut r, &c, Mode::Sync);
        assert_eq!((r.rate_bytes_per_s, r.eta_s), (0.0, None));
        assert_eq!(r.resynced_bytes, 32 << 20);
        let going = CopyStats {
            state: LinkState::Inconsistent,
            resync_bytes_to_go: 1 << 20,
            ..c
        };
        live_figures(&mut r, &going, Mode::Sync);
        assert_eq!((r.rate_bytes_per_s, r.eta_s), (1_700_000.0, Some(3.0)));
    }

    #[test]
    fn the_replicated_report_of_a_finished_resync_carries_no_rate() {
        let mut c = CopyStats {
            name: "b1".into(),
            state: LinkState::UpToDate,
            bytes_sent: 0,
            bytes_acked: 0,
            lag_bytes: 0,
            lag_s: 0.0,
            resynced_bytes: 8 << 20,
            resync_chunks_skipped: 0,
            resync_bytes_to_go: 0,
            resync_rate_bytes_per_s: 123_456.7,
            resync_eta_s: None,
            sessions: 1,
            last_error: None,
            disk_failure: None,
        };
        let done = sync_report(&c, Mode::Sync);
        assert_eq!(
            (done.state, done.rate_bytes_per_s, done.eta_s),
            (CopyState::UpToDate, 0, None)
        );
        c.state = LinkState::Inconsistent;
        c.resync_bytes_to_go = 1 << 20;
        c.resync_eta_s = Some(f64::NAN);
        let moving = sync_report(&c, Mode::Sync);
        assert_eq!(
            (moving.state, moving.rate_bytes_per_s, moving.eta_s),
            (CopyState::Resyncing, 123_456, Some(0))
        );
    }
}
