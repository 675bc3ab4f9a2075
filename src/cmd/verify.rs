//! `geomirror verify`: ask the production host to compare the production
//! disk with every copy online, and name the chunks that differ.
//!
//! Only per-chunk checksums cross the wire; progress shows on stderr (a bar
//! on a terminal, log lines otherwise). Exits non-zero when any chunk
//! differs or a copy could not be verified.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::io::AsyncRead;

use crate::config::RecoveryDomain;
use crate::node::control::{self, ControlError, Request};
use crate::node::verify::{VerifyFrame, VerifyProgress, VerifyReply};
use crate::obs::Progress;

/// Arguments of `geomirror verify`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The recovery-domain file.
    #[arg(long)]
    pub config: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Give up after this long (a verify reads the whole disk on both sides).
    #[arg(long, default_value_t = 3_600_000)]
    pub timeout_ms: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let domain = RecoveryDomain::load(&args.config)
        .with_context(|| format!("recovery domain {}", args.config.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    let reply = rt.block_on(async {
        tokio::time::timeout(Duration::from_millis(args.timeout_ms), ask(&domain))
            .await
            .map_err(|_| anyhow!("verify did not finish in {} ms", args.timeout_ms))?
    })?;
    let text = if args.json {
        serde_json::to_string_pretty(&reply)? + "\n"
    } else {
        reply.to_text()
    };
    super::print_stdout(&text)?;
    if !reply.all_identical() {
        let differing: u64 = reply.copies.iter().map(|c| c.differing_chunks).sum();
        bail!("verify found {differing} differing chunk(s) or an unverified copy");
    }
    Ok(())
}

/// Finds the production host in a member's status, then asks it to verify
/// and shows its progress on stderr.
async fn ask(domain: &RecoveryDomain) -> anyhow::Result<VerifyReply> {
    let status = super::status::fetch(domain, None).await?;
    let host = status
        .resources
        .first()
        .and_then(|r| r.host.clone())
        .ok_or_else(|| anyhow!("the production disk has no host: nothing serves the volume"))?;
    let member = domain
        .members
        .iter()
        .find(|m| m.name == host)
        .ok_or_else(|| anyhow!("production host {host:?} is not in the recovery domain"))?;
    let mut s = control::connect(&member.address, &domain.secret)
        .await
        .with_context(|| format!("production host {host} ({})", member.address))?;
    eprintln!("verifying the copies of {host} (reads the whole disk on each side)...");
    control::write_frame(&mut s, &Request::VerifyStreamed).await?;
    let mut shown = Shown {
        host,
        what: String::new(),
        start: Instant::now(),
        progress: None,
    };
    let idle = Duration::from_millis(control::STREAM_IDLE_TIMEOUT_MS);
    let reply = read_verify_stream(&mut s, idle, |p| shown.update(p)).await;
    if let Some(p) = &shown.progress {
        p.finish();
    }
    reply
}

/// Reads a streamed verify answer: progress frames, handed to
/// `on_progress`, until the final reply. Each frame must come within
/// `idle` (the member sends one at least every `PROGRESS_HEARTBEAT_MS`).
pub async fn read_verify_stream<R: AsyncRead + Unpin>(
    r: &mut R,
    idle: Duration,
    mut on_progress: impl FnMut(&VerifyProgress),
) -> anyhow::Result<VerifyReply> {
    loop {
        let frame = tokio::time::timeout(idle, control::read_frame::<_, VerifyFrame>(r))
            .await
            .map_err(|_| {
                anyhow!(
                    "the production host sent nothing for {} ms",
                    idle.as_millis()
                )
            })?;
        match frame {
            Ok(VerifyFrame::Progress(p)) => on_progress(&p),
            Ok(VerifyFrame::Done(reply)) => return Ok(reply),
            Err(ControlError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => bail!(
                "the production host closed the connection without an answer \
                 (a member older than this client does not know streamed verify: upgrade it)"
            ),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The progress display, made on the first frame that tells the total.
struct Shown {
    host: String,
    what: String,
    /// When the verify was asked for: rates count from then.
    start: Instant,
    progress: Option<Progress>,
}

impl Shown {
    fn update(&mut self, p: &VerifyProgress) {
        if p.bytes_total == 0 {
            return;
        }
        let mut what = format!("verify {} -> {}", self.host, p.copy);
        if p.differing_chunks > 0 {
            what.push_str(&format!(" ({} differing)", p.differing_chunks));
        }
        let progress = self
            .progress
            .get_or_insert_with(|| Progress::started_at(p.bytes_total, &what, self.start));
        if what != self.what {
            progress.set_what(&what);
            self.what = what;
        }
        progress.set(p.bytes_compared);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::verify::CopyVerify;

    fn done() -> VerifyReply {
        VerifyReply {
            member: "a1".into(),
            error: None,
            copies: vec![CopyVerify {
                copy: "b1".into(),
                chunk_bytes: 65536,
                chunks_compared: 256,
                differing_chunks: 3,
                differing_offsets: vec![0, 65536, 131072],
                error: None,
            }],
        }
    }

    #[tokio::test]
    async fn a_stream_hands_over_every_progress_then_the_reply() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        for i in 1..=3u64 {
            let p = VerifyProgress {
                copy: "b1".into(),
                bytes_compared: i << 22,
                bytes_total: 16 << 20,
                differing_chunks: i,
            };
            control::write_frame(&mut a, &VerifyFrame::Progress(p))
                .await
                .expect("write");
        }
        control::write_frame(&mut a, &VerifyFrame::Done(done()))
            .await
            .expect("write");
        let mut seen = Vec::new();
        let reply = read_verify_stream(&mut b, Duration::from_secs(5), |p| {
            seen.push(p.bytes_compared)
        })
        .await
        .expect("reply");
        assert_eq!(seen, vec![4 << 20, 8 << 20, 12 << 20]);
        assert_eq!(reply, done());
    }

    #[tokio::test]
    async fn a_member_that_closes_without_answering_is_reported_not_waited_for() {
        // What a member older than `VerifyStreamed` does: it cannot decode
        // the request and drops the connection.
        let (a, mut b) = tokio::io::duplex(1024);
        drop(a);
        let err = read_verify_stream(&mut b, Duration::from_secs(60), |_| {})
            .await
            .expect_err("closed");
        assert!(err.to_string().contains("older"), "{err}");
    }

    #[tokio::test]
    async fn a_silent_member_is_given_up_after_the_idle_time() {
        let (_a, mut b) = tokio::io::duplex(1024);
        let err = read_verify_stream(&mut b, Duration::from_millis(50), |_| {})
            .await
            .expect_err("silent");
        assert!(err.to_string().contains("sent nothing"), "{err}");
    }
}
