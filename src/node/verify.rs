//! Online verify on the production host: compare the production disk with
//! every copy online, chunk by chunk, with only checksums on the wire.
//!
//! The answer names exactly the chunks that differ (as byte offsets), so an
//! operator can resync or inspect them; the `verify` command prints it. A
//! streamed verify sends [`VerifyFrame::Progress`] frames before the answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::replication::{self, CopyLink};

/// Most differing offsets listed per copy, so a reply always fits a control
/// frame (16 copies × 2048 offsets stays far below 1 MiB of JSON); the
/// count is always exact.
pub const DIFFERING_LISTED_MAX: usize = 2048;

/// What one copy's verify found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyVerify {
    /// The copy host's member name.
    pub copy: String,
    /// Bytes per compared chunk (the copy's dirty-bitmap chunk).
    pub chunk_bytes: u64,
    /// Chunks compared.
    pub chunks_compared: u64,
    /// How many chunks differ.
    pub differing_chunks: u64,
    /// Byte offsets of the chunks whose checksums differ, ascending (the
    /// first [`DIFFERING_LISTED_MAX`]).
    pub differing_offsets: Vec<u64>,
    /// Why this copy could not be verified (link down, …); `None` when it was.
    pub error: Option<String>,
}

/// The production host's answer to `Request::Verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct VerifyReply {
    /// The member that answered.
    pub member: String,
    /// Why nothing was verified (not the production host, …).
    pub error: Option<String>,
    /// One entry per copy link, in the order the volume holds them.
    pub copies: Vec<CopyVerify>,
}

impl VerifyReply {
    /// Whether every copy was verified and none differs.
    pub fn all_identical(&self) -> bool {
        self.error.is_none()
            && self
                .copies
                .iter()
                .all(|c| c.error.is_none() && c.differing_chunks == 0)
    }

    /// The text `geomirror verify` prints.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        if let Some(e) = &self.error {
            let _ = writeln!(s, "{}: {e}", self.member);
            return s;
        }
        if self.copies.is_empty() {
            let _ = writeln!(s, "{}: no copy is mirrored: nothing to verify", self.member);
        }
        for c in &self.copies {
            if let Some(e) = &c.error {
                let _ = writeln!(s, "{} -> {}: not verified: {e}", self.member, c.copy);
                continue;
            }
            let _ = writeln!(
                s,
                "{} -> {}: {} chunks of {} compared, {} differing",
                self.member,
                c.copy,
                c.chunks_compared,
                crate::units::format_size(c.chunk_bytes),
                c.differing_chunks
            );
            for off in &c.differing_offsets {
                let _ = writeln!(s, "  differs at offset {off} (+{})", c.chunk_bytes);
            }
            let unlisted = c
                .differing_chunks
                .saturating_sub(c.differing_offsets.len() as u64);
            if unlisted > 0 {
                let _ = writeln!(s, "  ... and {unlisted} more");
            }
        }
        s
    }
}

/// How far a streamed verify got, over all copies together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct VerifyProgress {
    /// The copy being compared now (empty before the first starts).
    pub copy: String,
    /// Bytes compared so far, all copies together.
    pub bytes_compared: u64,
    /// Bytes to compare in all: the disk size times the number of copies
    /// (0 until the first batch tells the size).
    pub bytes_total: u64,
    /// Chunks found differing so far, all copies together.
    pub differing_chunks: u64,
}

/// One frame of the answer to `Request::VerifyStreamed`: any number of
/// `Progress` frames, then exactly one `Done`, then the member closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VerifyFrame {
    /// Where the verify stands.
    Progress(VerifyProgress),
    /// The final answer, as `Request::Verify` gets it.
    Done(VerifyReply),
}

/// Verifies every link in turn. Each link's verify is bounded by the disk's
/// chunk count; a link that is down is reported, not waited for.
pub async fn verify_links(member: &str, links: &[Arc<CopyLink>]) -> VerifyReply {
    verify_links_with_progress(member, links, |_| {}).await
}

/// [`verify_links`], calling `on_progress` after each compared batch with
/// the totals over all copies. A copy found down adds nothing to the bytes
/// compared, so the last progress can stay below the total.
pub async fn verify_links_with_progress(
    member: &str,
    links: &[Arc<CopyLink>],
    mut on_progress: impl FnMut(&VerifyProgress),
) -> VerifyReply {
    let mut copies = Vec::with_capacity(links.len());
    let mut p = VerifyProgress::default();
    let mut disk_bytes = 0u64;
    let mut before = 0u64;
    let count = links.len() as u64;
    for link in links {
        let started = std::time::Instant::now();
        p.copy = link.name().to_owned();
        let differing_before = p.differing_chunks;
        let result = replication::verify::verify_with_progress(link, |step| {
            disk_bytes = step.bytes_total;
            p.bytes_total = step.bytes_total.saturating_mul(count);
            p.bytes_compared = before.saturating_add(step.bytes_compared);
            p.differing_chunks = differing_before.saturating_add(step.differing_chunks);
            on_progress(&p);
        })
        .await;
        before = before.saturating_add(disk_bytes);
        p.bytes_compared = before;
        let c = match result {
            Ok(r) => CopyVerify {
                copy: link.name().to_owned(),
                chunk_bytes: r.chunk_bytes,
                chunks_compared: r.chunks_compared,
                differing_chunks: r.differing.len() as u64,
                differing_offsets: r
                    .differing
                    .iter()
                    .take(DIFFERING_LISTED_MAX)
                    .map(|i| i.saturating_mul(r.chunk_bytes))
                    .collect(),
                error: None,
            },
            Err(e) => CopyVerify {
                copy: link.name().to_owned(),
                chunk_bytes: 0,
                chunks_compared: 0,
                differing_chunks: 0,
                differing_offsets: Vec::new(),
                error: Some(e.to_string()),
            },
        };
        tracing::info!(copy = %c.copy, chunks = c.chunks_compared, differing = c.differing_chunks, elapsed_ms = started.elapsed().as_millis() as u64, "verify");
        copies.push(c);
    }
    VerifyReply {
        member: member.to_owned(),
        error: None,
        copies,
    }
}

/// When a streamed verify sends a progress frame: the first one, then each
/// time a new tenth of the work is done or `interval` has passed since the
/// last one sent. At most 10 + (duration / interval) frames per verify.
#[derive(Debug)]
pub struct ProgressPacer {
    interval: Duration,
    /// When the last frame went and the tenth it showed.
    last: Option<(Instant, u64)>,
}

impl ProgressPacer {
    /// A pacer sending at most every `interval` between tenths.
    pub fn new(interval: Duration) -> ProgressPacer {
        ProgressPacer {
            interval,
            last: None,
        }
    }

    /// Whether `p`, reached at `now`, is to be sent; if so it counts as sent.
    pub fn due(&mut self, p: &VerifyProgress, now: Instant) -> bool {
        let tenth = tenths(p);
        let due = match self.last {
            None => true,
            Some((at, shown)) => {
                tenth > shown || now.saturating_duration_since(at) >= self.interval
            }
        };
        if due {
            self.last = Some((now, tenth));
        }
        due
    }
}

/// Tenths of the work done, 0 to 10 (0 while the total is unknown).
fn tenths(p: &VerifyProgress) -> u64 {
    if p.bytes_total == 0 {
        return 0;
    }
    let done = u128::from(p.bytes_compared.min(p.bytes_total));
    u64::try_from(done * 10 / u128::from(p.bytes_total)).unwrap_or(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_with_a_differing_chunk_or_an_unverified_copy_is_not_identical() {
        let ok = CopyVerify {
            copy: "b1".into(),
            chunk_bytes: 65536,
            chunks_compared: 16,
            differing_chunks: 0,
            differing_offsets: vec![],
            error: None,
        };
        let mut r = VerifyReply {
            member: "a1".into(),
            error: None,
            copies: vec![ok.clone()],
        };
        assert!(r.all_identical());
        assert!(
            r.to_text()
                .contains("16 chunks of 64.0 KiB compared, 0 differing"),
            "{}",
            r.to_text()
        );
        r.copies[0].differing_chunks = 1;
        r.copies[0].differing_offsets = vec![131072];
        assert!(!r.all_identical());
        assert!(r.to_text().contains("differs at offset 131072"));
        r.copies[0] = CopyVerify {
            error: Some("link down".into()),
            ..ok
        };
        assert!(!r.all_identical());
        r.copies.clear();
        r.error = Some("not the production host".into());
        assert!(!r.all_identical());
    }

    #[test]
    fn progress_frames_go_at_each_tenth_or_after_the_interval_only() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let at = |bytes_compared| VerifyProgress {
            copy: "b1".into(),
            bytes_compared,
            bytes_total: 1000,
            differing_chunks: 0,
        };
        let mut pacer = ProgressPacer::new(ms(250));
        assert!(pacer.due(&at(1), t0), "the first frame goes at once");
        assert!(!pacer.due(&at(50), t0 + ms(10)), "same tenth, too soon");
        assert!(pacer.due(&at(100), t0 + ms(20)), "a new tenth goes at once");
        assert!(!pacer.due(&at(150), t0 + ms(200)));
        assert!(pacer.due(&at(160), t0 + ms(270)), "interval passed");
        // However fast the batches, a verify sends at most 10 + duration/interval frames.
        let mut fast = ProgressPacer::new(ms(250));
        let sent = (0..=1000u64)
            .filter(|&b| fast.due(&at(b), t0 + Duration::from_micros(b)))
            .count();
        assert_eq!(sent, 11);
        // An unknown total is tenth 0: paced by time alone.
        let mut unknown = ProgressPacer::new(ms(250));
        let zero = VerifyProgress::default();
        assert!(unknown.due(&zero, t0));
        assert!(!unknown.due(&zero, t0 + ms(1)));
    }
}
