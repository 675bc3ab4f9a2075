//! `geomirror events`: follow a member's group events, one JSON line per
//! change (joins, leaves, failures, host changes, mirroring, sync state).
//!
//! The member first sends the current state as events, then each change,
//! in the spirit of `drbdsetup events2`.

use std::path::PathBuf;

use anyhow::{anyhow, Context};

use crate::config::RecoveryDomain;
use crate::node::control::{self, Request};
use crate::obs::bus::copy_event_lines;

/// Arguments of `geomirror events`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The recovery-domain file.
    #[arg(long)]
    pub config: PathBuf,
    /// Follow this member (default: the first one that answers, in backup order).
    #[arg(long)]
    pub member: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let domain = RecoveryDomain::load(&args.config)
        .with_context(|| format!("recovery domain {}", args.config.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    rt.block_on(async {
        let shutdown = super::shutdown_signal()?;
        tokio::select! {
            r = follow(&domain, args.member.as_deref()) => r,
            () = shutdown => Ok(()),
        }
    })
}

/// Subscribes at the first member that accepts, and prints its lines until
/// it closes the stream (it stopped): then the command ends with an error.
async fn follow(domain: &RecoveryDomain, member: Option<&str>) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for (name, addr) in super::control_targets(domain, member)? {
        let mut s = match control::connect(addr, &domain.secret).await {
            Ok(s) => s,
            Err(e) => {
                errors.push(format!("{name} ({addr}): {e}"));
                continue;
            }
        };
        control::write_frame(&mut s, &Request::Events).await?;
        let mut out = tokio::io::stdout();
        match copy_event_lines(s, &mut out).await {
            Err(crate::obs::ObsError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                return Ok(())
            }
            r => {
                r.with_context(|| format!("events of {name}"))?;
            }
        }
        return Err(anyhow!("member {name} ({addr}) closed the event stream"));
    }
    Err(anyhow!("no member answered:\n  {}", errors.join("\n  ")))
}
