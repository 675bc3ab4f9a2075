//! A copy whose disk fails requests (ENOSPC on a thin or sparse disk, EIO):
//! what the link records of it, and how often it is retried and said.
//!
//! Such a copy is not a sync in progress: retrying at the network's pace
//! only rewrites the same chunks up to the same failure. The link keeps the
//! failure (errno, range, since when) until a later session brings the
//! copy UpToDate, retries with a backoff of its own, and logs the failure
//! when it changes and then once per retry, so the log slows down with it.
//! Production meanwhile marks every write dirty for the copy, as for any
//! copy that is not connected.

use std::time::{Duration, SystemTime};

use super::link::{CopyLink, LinkState};

/// First pause before a copy whose disk failed is retried: long enough
/// that a failing disk is not hammered, short enough that a copy whose
/// space was freed at once resyncs at once.
pub(crate) const DISK_RETRY_MS_MIN: u64 = 1_000;
/// Longest pause between two retries of a copy whose disk fails.
pub(crate) const DISK_RETRY_MS_MAX: u64 = 60_000;

/// The last failure of a copy's disk, kept until the copy is UpToDate again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFailure {
    /// The errno the copy host's disk answered.
    pub errno: i32,
    /// The range of the copy disk the failed request covered (`len` 0 for
    /// a request without one: a flush, a label update).
    pub offset: u64,
    pub len: u64,
    /// When the copy's disk first failed, for people.
    pub since: SystemTime,
    /// Sessions that ended on a failure of the disk since then.
    pub failures: u64,
}

impl DiskFailure {
    /// "ENOSPC at offset 104857600": what failed, for messages.
    pub fn describe(&self) -> String {
        format!("{} at offset {}", errno_name(self.errno), self.offset)
    }
}

/// The symbolic name of the errno values a copy host's disk reports.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::ENOSPC => "ENOSPC",
        libc::EIO => "EIO",
        libc::EPERM => "EPERM",
        libc::EROFS => "EROFS",
        libc::EDQUOT => "EDQUOT",
        libc::ENOTSUP => "ENOTSUP",
        libc::ESHUTDOWN => "ESHUTDOWN",
        libc::ENOMEM => "ENOMEM",
        _ => return format!("errno {errno}"),
    };
    name.into()
}

/// Whether a copy's answer `errno` means its disk failed: every errno but
/// the one of an engine that is shutting down (the copy host stopping).
pub(crate) fn is_disk_failure(errno: i32) -> bool {
    errno != libc::ESHUTDOWN
}

/// When to retry a copy whose disk failed, and when to say so.
#[derive(Debug)]
pub(crate) struct DiskRetry {
    pause_ms: u64,
}

impl Default for DiskRetry {
    fn default() -> DiskRetry {
        DiskRetry {
            pause_ms: DISK_RETRY_MS_MIN,
        }
    }
}

impl DiskRetry {
    /// The pause before the next retry; each one doubles the next, up to
    /// [`DISK_RETRY_MS_MAX`].
    pub(crate) fn next_pause(&mut self) -> Duration {
        let pause = self.pause_ms;
        self.pause_ms = (pause * 2).min(DISK_RETRY_MS_MAX);
        Duration::from_millis(pause)
    }

    /// The copy is healthy again: a later failure starts from the shortest pause.
    pub(crate) fn reset(&mut self) {
        self.pause_ms = DISK_RETRY_MS_MIN;
    }
}

impl CopyLink {
    /// The session ended because the copy's disk failed a request over
    /// `[offset, offset+len)` with `errno`: record it and show the link as
    /// `DiskFailed`. Returns whether this is news (no failure was recorded,
    /// or another errno), which the caller says louder than a repeat.
    pub(crate) fn disk_failed(&self, errno: i32, offset: u64, len: u64) -> bool {
        let mut g = self.lock();
        g.state = LinkState::DiskFailed;
        let news = g.disk_failure.as_ref().is_none_or(|f| f.errno != errno);
        let (since, failures) = match &g.disk_failure {
            Some(f) if !news => (f.since, f.failures + 1),
            _ => (SystemTime::now(), 1),
        };
        g.disk_failure = Some(DiskFailure {
            errno,
            offset,
            len,
            since,
            failures,
        });
        news
    }

    /// The recorded failure of the copy's disk, while there is one.
    pub fn disk_failure(&self) -> Option<DiskFailure> {
        self.lock().disk_failure.clone()
    }
}

/// The state a link shows: a copy whose disk failed stays `DiskFailed`
/// through the later sessions that retry it, until one brings it UpToDate
/// (a resync moving chunks it may fail again on is no sync in progress).
pub(crate) fn shown_state(state: LinkState, failure: Option<&DiskFailure>) -> LinkState {
    match (state, failure) {
        (LinkState::Disconnected | LinkState::Inconsistent, Some(_)) => LinkState::DiskFailed,
        (s, _) => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_from_a_second_to_a_minute() {
        let mut r = DiskRetry::default();
        let pauses: Vec<u64> = (0..9).map(|_| r.next_pause().as_millis() as u64).collect();
        assert_eq!(
            pauses,
            [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000]
        );
        r.reset();
        assert_eq!(r.next_pause(), Duration::from_secs(1));
    }

    #[test]
    fn a_disk_failure_shows_until_the_copy_is_up_to_date() {
        let f = DiskFailure {
            errno: libc::ENOSPC,
            offset: 4096,
            len: 4096,
            since: SystemTime::now(),
            failures: 1,
        };
        for s in [LinkState::Disconnected, LinkState::Inconsistent] {
            assert_eq!(shown_state(s, Some(&f)), LinkState::DiskFailed);
            assert_eq!(shown_state(s, None), s);
        }
        for s in [
            LinkState::UpToDate,
            LinkState::SplitBrain,
            LinkState::Refused,
            LinkState::Stopped,
        ] {
            assert_eq!(shown_state(s, Some(&f)), s);
        }
        assert_eq!(f.describe(), "ENOSPC at offset 4096");
        assert_eq!(errno_name(12345), "errno 12345");
    }
}
