//! `geomirror demo`: the one-command tour of a mirrored volume on this
//! machine (three members, NBD writes, a copy-host crash, disk comparison).

use std::path::PathBuf;

use crate::demo::{self, DemoOptions};
use crate::units::parse_size;

/// Arguments of `geomirror demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Keep the demo directory (disks, logs, recovery domain) at the end.
    #[arg(long)]
    pub keep: bool,
    /// Size of each disk (e.g. 64M, 1G).
    #[arg(long, value_parser = parse_size, default_value = "256M")]
    pub size: u64,
    /// Make the demo directory under DIR instead of the system temp dir.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let opts = DemoOptions {
        size_bytes: args.size,
        parent_dir: args.dir.unwrap_or_else(std::env::temp_dir),
        keep: args.keep,
    };
    if demo::run(&opts)? {
        Ok(())
    } else {
        anyhow::bail!("demo: at least one check failed (see the summary above)")
    }
}
