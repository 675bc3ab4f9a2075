//! `geomirror verify`: ask the production host to compare the production
//! disk with every copy online, and name the chunks that differ.
//!
//! Only per-chunk checksums cross the wire; exits non-zero when any chunk
//! differs or a copy could not be verified.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use crate::config::RecoveryDomain;
use crate::node::control::{self, Request};
use crate::node::verify::VerifyReply;

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

/// Finds the production host in a member's status, then asks it to verify.
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
    control::write_frame(&mut s, &Request::Verify).await?;
    Ok(control::read_frame(&mut s).await?)
}
