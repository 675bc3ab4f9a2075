//! Online verify on the production host: compare the production disk with
//! every copy online, chunk by chunk, with only checksums on the wire.
//!
//! The answer names exactly the chunks that differ (as byte offsets), so an
//! operator can resync or inspect them; the `verify` command prints it.

use std::sync::Arc;

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

/// Verifies every link in turn. Each link's verify is bounded by the disk's
/// chunk count; a link that is down is reported, not waited for.
pub async fn verify_links(member: &str, links: &[Arc<CopyLink>]) -> VerifyReply {
    let mut copies = Vec::with_capacity(links.len());
    for link in links {
        let started = std::time::Instant::now();
        let c = match replication::verify(link).await {
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
}
