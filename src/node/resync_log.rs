//! Resync progress in the daemon's log: from the copy links' figures the
//! member already reads every tick, a line every few seconds and at each
//! tenth of the work (bytes done, total, rate, ETA), and one at the end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::obs::progress::LogProgress;
use crate::replication::CopyStats;
use crate::units::format_size;

/// Least time between two progress lines of one resync.
pub const RESYNC_LOG_INTERVAL_MS: u64 = 5_000;

/// One resync being followed.
#[derive(Debug)]
struct Followed {
    log: LogProgress,
    /// Largest amount of work seen: what was resynced plus what is left.
    /// Writes during the resync can add dirty chunks, so it only grows.
    total_bytes: u64,
}

/// The resyncs of this production host's copy links, by copy host name.
#[derive(Debug, Default)]
pub struct ResyncLog {
    followed: BTreeMap<String, Followed>,
    /// Resynced bytes each link showed at the last tick.
    seen: BTreeMap<String, u64>,
}

impl ResyncLog {
    /// One tick at `now` with the links' figures; returns the lines due.
    /// Work done counts chunks found equal by checksum too (they leave the
    /// dirty set without being sent), so it is the total less what is left.
    pub fn tick(&mut self, copies: &[CopyStats], now: Instant) -> Vec<String> {
        let mut lines = Vec::new();
        for c in copies {
            let left = c.resync_bytes_to_go;
            match self.followed.get_mut(&c.name) {
                None if left > 0 => {
                    let total_bytes = c.resynced_bytes.saturating_add(left);
                    let what = format!("resync to {}", c.name);
                    let interval = Duration::from_millis(RESYNC_LOG_INTERVAL_MS);
                    let log = LogProgress::new(total_bytes, &what, now, interval);
                    lines.push(format!("{what}: started, {total_bytes} bytes to copy"));
                    self.followed
                        .insert(c.name.clone(), Followed { log, total_bytes });
                }
                // A short resync can start and end between two ticks: its
                // count moved while nothing was ever seen left to do.
                None => {
                    let before = self.seen.get(&c.name).copied().unwrap_or(0);
                    if c.resynced_bytes != before && c.resynced_bytes > 0 {
                        lines.push(format!(
                            "resync to {}: done, {} copied (between two progress checks)",
                            c.name,
                            format_size(c.resynced_bytes)
                        ));
                    }
                }
                Some(f) if left == 0 => {
                    f.log.set_total(f.total_bytes);
                    let _ = f.log.set_at(f.total_bytes, now);
                    lines.push(f.log.finish_at(now));
                    self.followed.remove(&c.name);
                }
                Some(f) => {
                    f.total_bytes = f.total_bytes.max(c.resynced_bytes.saturating_add(left));
                    f.log.set_total(f.total_bytes);
                    if let Some(l) = f.log.set_at(f.total_bytes - left, now) {
                        lines.push(l);
                    }
                }
            }
        }
        for c in copies {
            self.seen.insert(c.name.clone(), c.resynced_bytes);
        }
        // A link that went away (mirroring stopped) ends its resync silently.
        self.followed
            .retain(|name, _| copies.iter().any(|c| &c.name == name));
        self.seen
            .retain(|name, _| copies.iter().any(|c| &c.name == name));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::LinkState;

    const MIB: u64 = 1 << 20;

    fn link(resynced: u64, left: u64) -> CopyStats {
        CopyStats {
            name: "b1".into(),
            state: if left > 0 {
                LinkState::Inconsistent
            } else {
                LinkState::UpToDate
            },
            bytes_sent: 0,
            bytes_acked: 0,
            lag_bytes: 0,
            lag_s: 0.0,
            resynced_bytes: resynced,
            resync_chunks_skipped: 0,
            resync_bytes_to_go: left,
            resync_rate_bytes_per_s: 0.0,
            resync_eta_s: None,
            sessions: 1,
            last_error: None,
            disk_failure: None,
        }
    }

    #[test]
    fn a_resync_logs_its_start_tenths_or_every_interval_and_its_end() {
        let t0 = Instant::now();
        let mut r = ResyncLog::default();
        let s = |ms| t0 + Duration::from_millis(ms);
        let start = r.tick(&[link(0, 100 * MIB)], t0);
        assert_eq!(start.len(), 1);
        assert!(start[0].contains("started, 104857600 bytes"), "{start:?}");
        // Less than a tenth, before the interval: nothing.
        assert!(r.tick(&[link(5 * MIB, 95 * MIB)], s(1_000)).is_empty());
        // A new tenth: a line with percent, bytes, rate and ETA.
        let l = r.tick(&[link(20 * MIB, 80 * MIB)], s(2_000));
        assert_eq!(l.len(), 1);
        assert!(l[0].contains("20.0% (20.0 MiB of 100.0 MiB)"), "{l:?}");
        assert!(l[0].contains("/s, eta "), "{l:?}");
        // No new tenth, but the interval passed.
        assert_eq!(r.tick(&[link(21 * MIB, 79 * MIB)], s(7_500)).len(), 1);
        let end = r.tick(&[link(100 * MIB, 0)], s(9_000));
        assert_eq!(end.len(), 1);
        assert!(
            end[0].contains("100.0%") && end[0].contains("done in"),
            "{end:?}"
        );
        // Idle afterwards.
        assert!(r.tick(&[link(100 * MIB, 0)], s(20_000)).is_empty());
    }

    #[test]
    fn a_resync_over_between_two_ticks_still_gets_its_line() {
        let t0 = Instant::now();
        let mut r = ResyncLog::default();
        assert!(r.tick(&[link(0, 0)], t0).is_empty());
        let l = r.tick(&[link(48 * MIB, 0)], t0 + Duration::from_millis(500));
        assert_eq!(l.len(), 1);
        assert!(
            l[0].contains("resync to b1: done, 48.0 MiB copied"),
            "{l:?}"
        );
        // Said once.
        assert!(r
            .tick(&[link(48 * MIB, 0)], t0 + Duration::from_secs(1))
            .is_empty());
    }

    #[test]
    fn chunks_found_equal_count_as_done_and_new_writes_grow_the_total() {
        let t0 = Instant::now();
        let mut r = ResyncLog::default();
        r.tick(&[link(0, 10 * MIB)], t0);
        // Half the chunks were equal: nothing sent, yet half done.
        let l = r.tick(&[link(0, 5 * MIB)], t0 + Duration::from_secs(1));
        assert!(l[0].contains("50.0% (5.0 MiB of 10.0 MiB)"), "{l:?}");
        // Writes dirtied more than was done meanwhile: the total grows.
        let l = r.tick(&[link(8 * MIB, 8 * MIB)], t0 + Duration::from_secs(7));
        assert!(l[0].contains("of 16.0 MiB"), "{l:?}");
    }
}
