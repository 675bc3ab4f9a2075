//! `geomirror up`: run one member of a group in the foreground.

use std::path::PathBuf;

use anyhow::Context;

use crate::node::{self, NodeOptions};
use crate::storage::EngineKind;

/// Arguments of `geomirror up`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The recovery-domain file (identical on every member).
    #[arg(long)]
    pub config: PathBuf,
    /// This member's name in the recovery domain.
    #[arg(long)]
    pub member: String,
    /// Where the group engine keeps its log, vote and snapshots
    /// (default: /var/lib/geomirror/GROUP/MEMBER).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Disk engine: `uring` (io_uring on its own thread), `uring-buffered`,
    /// `uring-direct` or `plain` (pread/pwrite).
    #[arg(long, default_value = "uring")]
    pub engine: EngineKind,
    /// A member silent for this long is declared failed by the leader, in
    /// place of `fail_timeout_ms` in the recovery domain (which every
    /// member shares: prefer it). At least the domain's `lease_ms` plus
    /// 500 ms, or the member refuses to start.
    #[arg(long)]
    pub fail_timeout_ms: Option<u64>,
    /// Found the group with the members that answer, counting the others
    /// as gone. Without it, a member with an empty state directory founds
    /// only once every member of the recovery domain has answered that it
    /// has no group, so that a member cut off from the others never founds
    /// a second one. Use it once, on one member, when some member will
    /// never come (a site lost for good), then start without it: it does
    /// nothing to a member that already belongs to the group.
    #[arg(long)]
    pub bootstrap: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let state_dir = match args.state_dir {
        Some(d) => d,
        None => {
            let domain = crate::config::RecoveryDomain::load(&args.config)
                .with_context(|| format!("recovery domain {}", args.config.display()))?;
            PathBuf::from("/var/lib/geomirror")
                .join(&domain.group)
                .join(&args.member)
        }
    };
    let opts = NodeOptions {
        config: args.config,
        member: args.member,
        state_dir,
        engine: args.engine,
        fail_timeout_ms: args.fail_timeout_ms,
        bootstrap: args.bootstrap,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    rt.block_on(async move {
        let shutdown = super::shutdown_signal()?;
        node::run(opts, shutdown).await
    })
}
