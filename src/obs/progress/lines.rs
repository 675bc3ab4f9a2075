//! The arithmetic and pacing of progress lines: percent, mean rate, ETA,
//! and when a line is due. Pure functions of the counts and a given clock.

use crate::units::format_size;
use std::time::{Duration, Instant};

/// Where long work stands.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// Bytes done so far (at most the total).
    pub done_bytes: u64,
    /// Bytes to do in all.
    pub total_bytes: u64,
    /// 0 to 100; 100 for empty work.
    pub percent: f64,
    /// Mean rate since the start; 0 before any time has passed.
    pub rate_bytes_per_s: f64,
    /// Time left at that rate; `None` while the rate is 0 and work remains.
    pub eta: Option<Duration>,
}

/// Percent, mean rate and time left after `done` of `total` bytes in `elapsed`.
/// The mean since the start is steadier than a recent window for a resync,
/// whose rate is bounded by the link and the disks rather than bursts.
pub fn estimate(done_bytes: u64, total_bytes: u64, elapsed: Duration) -> Estimate {
    let done = done_bytes.min(total_bytes);
    let percent = if total_bytes == 0 {
        100.0
    } else {
        100.0 * done as f64 / total_bytes as f64
    };
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let left = total_bytes - done;
    let eta = if left == 0 {
        Some(Duration::ZERO)
    } else if rate > 0.0 {
        Duration::try_from_secs_f64(left as f64 / rate).ok()
    } else {
        None
    };
    Estimate {
        done_bytes: done,
        total_bytes,
        percent,
        rate_bytes_per_s: rate,
        eta,
    }
}

/// `resync payroll-dr: 42.0% (420.0 MiB of 1000.0 MiB) at 100.0 MiB/s, eta 6s`
pub fn format_line(what: &str, e: &Estimate) -> String {
    let eta = match e.eta {
        Some(d) => format!("eta {}s", d.as_secs_f64().ceil() as u64),
        None => "eta unknown".to_owned(),
    };
    format!(
        "{what}: {:.1}% ({} of {}) at {}/s, {eta}",
        e.percent,
        format_size(e.done_bytes),
        format_size(e.total_bytes),
        format_size(e.rate_bytes_per_s as u64)
    )
}

/// Throttled progress lines, driven by the caller's clock: one when
/// `interval` has passed since the last, or a new tenth of the work is done
/// (so short work still shows a few lines, and long work one every interval).
#[derive(Debug)]
pub struct LogProgress {
    what: String,
    total_bytes: u64,
    done_bytes: u64,
    start: Instant,
    last_line: Instant,
    /// Tenth of the work (0 to 10) shown by the last line.
    last_tenth: u64,
    interval: Duration,
}

impl LogProgress {
    /// Work of `total_bytes` called `what`, started at `start`.
    pub fn new(total_bytes: u64, what: &str, start: Instant, interval: Duration) -> LogProgress {
        LogProgress {
            what: what.to_owned(),
            total_bytes,
            done_bytes: 0,
            start,
            last_line: start,
            last_tenth: 0,
            interval,
        }
    }

    /// Adds `bytes` done at `now`; returns a line when one is due.
    pub fn inc_at(&mut self, bytes: u64, now: Instant) -> Option<String> {
        self.set_at(self.done_bytes.saturating_add(bytes), now)
    }

    /// `done_bytes` are done in all at `now`; returns a line when `interval`
    /// has passed since the last one or a new tenth is reached.
    pub fn set_at(&mut self, done_bytes: u64, now: Instant) -> Option<String> {
        self.done_bytes = done_bytes;
        let tenth = tenths(done_bytes, self.total_bytes);
        if now.saturating_duration_since(self.last_line) < self.interval && tenth <= self.last_tenth
        {
            return None;
        }
        self.last_line = now;
        self.last_tenth = tenth;
        Some(self.line(now))
    }

    /// The work turned out to be `total_bytes` in all.
    pub fn set_total(&mut self, total_bytes: u64) {
        self.total_bytes = total_bytes;
    }

    /// Names the work anew (e.g. the copy a verify moved on to).
    pub fn set_what(&mut self, what: &str) {
        what.clone_into(&mut self.what);
    }

    /// The closing line at `now`.
    pub fn finish_at(&mut self, now: Instant) -> String {
        format!(
            "{} (done in {:.1}s)",
            self.line(now),
            (now - self.start).as_secs_f64()
        )
    }

    fn line(&self, now: Instant) -> String {
        let e = estimate(self.done_bytes, self.total_bytes, now - self.start);
        format_line(&self.what, &e)
    }
}

/// Tenths of `total` that `done` covers, 0 to 10 (10 for empty work).
fn tenths(done: u64, total: u64) -> u64 {
    if total == 0 {
        return 10;
    }
    let t = u128::from(done.min(total)) * 10 / u128::from(total);
    u64::try_from(t).unwrap_or(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn rate_and_eta_follow_the_mean_since_the_start() {
        let e = estimate(400 * MIB, 1000 * MIB, Duration::from_secs(4));
        assert_eq!(e.percent, 40.0);
        assert_eq!(e.rate_bytes_per_s, (100 * MIB) as f64);
        assert_eq!(e.eta, Some(Duration::from_secs(6)));
    }

    #[test]
    fn no_time_or_no_progress_means_no_eta() {
        assert_eq!(estimate(0, MIB, Duration::from_secs(3)).eta, None);
        let e = estimate(10, MIB, Duration::ZERO);
        assert_eq!((e.rate_bytes_per_s, e.eta), (0.0, None));
    }

    #[test]
    fn finished_or_empty_work_is_complete_and_overshoot_is_clamped() {
        let empty = estimate(0, 0, Duration::ZERO);
        assert_eq!((empty.percent, empty.eta), (100.0, Some(Duration::ZERO)));
        let over = estimate(2 * MIB, MIB, Duration::from_secs(1));
        assert_eq!((over.done_bytes, over.percent), (MIB, 100.0));
        assert_eq!(over.eta, Some(Duration::ZERO));
    }

    #[test]
    fn line_shows_percent_sizes_rate_and_eta() {
        let e = estimate(400 * MIB, 1000 * MIB, Duration::from_secs(4));
        let line = format_line("resync payroll-dr", &e);
        assert!(line.starts_with("resync payroll-dr: 40.0% ("), "{line}");
        assert!(line.ends_with("/s, eta 6s"), "{line}");
        let stalled = format_line("verify", &estimate(0, MIB, Duration::from_secs(1)));
        assert!(stalled.ends_with("eta unknown"), "{stalled}");
    }

    #[test]
    fn within_a_tenth_log_lines_come_at_most_once_per_interval() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut p = LogProgress::new(100 * MIB, "resync", t0, 5 * s);
        assert_eq!(p.inc_at(MIB, t0 + s), None);
        assert_eq!(p.inc_at(MIB, t0 + 4 * s), None);
        let line = p.inc_at(MIB, t0 + 5 * s).expect("interval passed");
        assert!(line.starts_with("resync: 3.0%"), "{line}");
        assert_eq!(p.inc_at(MIB, t0 + 9 * s), None);
        assert!(p.inc_at(MIB, t0 + 10 * s).is_some());
        p.inc_at(95 * MIB, t0 + 11 * s);
        let last = p.finish_at(t0 + 12 * s);
        assert!(last.starts_with("resync: 100.0%"), "{last}");
        assert!(last.ends_with("(done in 12.0s)"), "{last}");
    }

    #[test]
    fn each_new_tenth_gets_a_line_however_fast_the_work_goes() {
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        let mut p = LogProgress::new(16 * MIB, "verify a1 -> b1", t0, Duration::from_secs(5));
        // 4 MiB steps cross a tenth each time: 25%, 50%, 75%, 100%.
        let lines: Vec<String> = (1..=4)
            .filter_map(|i| p.set_at(i * 4 * MIB, t0 + i as u32 * ms))
            .collect();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(lines[0].starts_with("verify a1 -> b1: 25.0%"), "{lines:?}");
        // Within the same tenth, nothing until the interval passes.
        let mut q = LogProgress::new(100 * MIB, "verify", t0, Duration::from_secs(5));
        assert!(q.set_at(10 * MIB, t0 + ms).is_some());
        assert!(q.set_at(15 * MIB, t0 + 2 * ms).is_none());
        q.set_what("verify a1 -> c1");
        let line = q
            .set_at(16 * MIB, t0 + Duration::from_secs(6))
            .expect("interval");
        assert!(line.starts_with("verify a1 -> c1: 16.0%"), "{line}");
    }
}
