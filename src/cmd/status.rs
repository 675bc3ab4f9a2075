//! `geomirror status`: ask a running member how the group stands.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::RecoveryDomain;
use crate::node::control::{self, Request};
use crate::node::status::StatusReport;

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
    let report = rt.block_on(fetch(&domain, args.member.as_deref()))?;
    let text = if args.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        report.to_text()
    };
    super::print_stdout(&text)
}

/// The report of `member`, or of the first member that answers.
pub async fn fetch(domain: &RecoveryDomain, member: Option<&str>) -> anyhow::Result<StatusReport> {
    let targets: Vec<(&str, &str)> = match member {
        Some(name) => {
            let m = domain
                .members
                .iter()
                .find(|m| m.name == name)
                .ok_or_else(|| anyhow!("member {name:?} is not in the recovery domain"))?;
            vec![(m.name.as_str(), m.address.as_str())]
        }
        None => domain
            .members
            .iter()
            .map(|m| (m.name.as_str(), m.address.as_str()))
            .collect(),
    };
    let mut errors = Vec::new();
    for (name, addr) in targets {
        match tokio::time::timeout(Duration::from_millis(ASK_TIMEOUT_MS), ask(addr)).await {
            Ok(Ok(r)) => return Ok(r),
            Ok(Err(e)) => errors.push(format!("{name} ({addr}): {e:#}")),
            Err(_) => errors.push(format!("{name} ({addr}): no answer")),
        }
    }
    Err(anyhow!("no member answered:\n  {}", errors.join("\n  ")))
}

async fn ask(addr: &str) -> anyhow::Result<StatusReport> {
    let mut s = TcpStream::connect(addr).await.context("connect")?;
    s.write_all(&control::MAGIC).await?;
    control::write_frame(&mut s, &Request::Status).await?;
    Ok(control::read_frame(&mut s).await?)
}
