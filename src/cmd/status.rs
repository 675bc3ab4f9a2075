//! `geomirror status`: ask a running member how the group stands, once or
//! every interval (`--watch`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};

use crate::config::RecoveryDomain;
use crate::node::control::{self, Request};
use crate::node::status::StatusReport;
use crate::obs::{watch, WatchOptions};

/// Arguments of `geomirror status`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The recovery-domain file.
    #[arg(long)]
    pub config: PathBuf,
    /// Ask this member (default: the first one that answers, in backup order).
    #[arg(long)]
    pub member: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Ask again every interval: redrawn in place on a terminal, printed
    /// one after another otherwise. Runs until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// Time between two reports with `--watch` (100 ms to one hour).
    #[arg(long, default_value_t = 2000)]
    pub interval_ms: u64,
}

/// Time to wait for one member's answer.
const ASK_TIMEOUT_MS: u64 = 3_000;

pub fn run(args: Args) -> anyhow::Result<()> {
    let domain = RecoveryDomain::load(&args.config)
        .with_context(|| format!("recovery domain {}", args.config.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    let member = args.member.as_deref();
    let json = args.json;
    if args.watch {
        let opts = WatchOptions::for_stdout(Duration::from_millis(args.interval_ms));
        return rt.block_on(async {
            let mut out = tokio::io::stdout();
            let fetch = || async { render(&fetch(&domain, member).await?, json) };
            let shutdown = super::shutdown_signal()?;
            tokio::select! {
                r = watch(opts, &mut out, fetch) => match r {
                    Err(crate::obs::ObsError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                    r => r.map(|_| ()).map_err(anyhow::Error::from),
                },
                () = shutdown => Ok(()),
            }
        });
    }
    let report = rt.block_on(fetch(&domain, member))?;
    super::print_stdout(&render(&report, json)?)
}

fn render(report: &StatusReport, json: bool) -> anyhow::Result<String> {
    Ok(if json {
        serde_json::to_string_pretty(report)? + "\n"
    } else {
        report.to_text()
    })
}

/// The report of `member`, or of the first member that answers.
pub async fn fetch(domain: &RecoveryDomain, member: Option<&str>) -> anyhow::Result<StatusReport> {
    let targets = super::control_targets(domain, member)?;
    let mut errors = Vec::new();
    for (name, addr) in targets {
        match tokio::time::timeout(
            Duration::from_millis(ASK_TIMEOUT_MS),
            ask(addr, &domain.secret),
        )
        .await
        {
            Ok(Ok(r)) => return Ok(r),
            Ok(Err(e)) => errors.push(format!("{name} ({addr}): {e:#}")),
            Err(_) => errors.push(format!("{name} ({addr}): no answer")),
        }
    }
    Err(anyhow!("no member answered:\n  {}", errors.join("\n  ")))
}

async fn ask(addr: &str, secret: &str) -> anyhow::Result<StatusReport> {
    let mut s = control::connect(addr, secret).await?;
    control::write_frame(&mut s, &Request::Status).await?;
    Ok(control::read_frame(&mut s).await?)
}
