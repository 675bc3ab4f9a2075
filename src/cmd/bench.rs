//! `geomirror bench`: the write-replication benchmark, same workloads against
//! each target, a comparison table (or JSON) and an optional latency plot.

use crate::bench::{self, domain, local::LocalSetup, target, Engine, Options, Workload};
use crate::units::parse_size;
use anyhow::Context;
use std::path::PathBuf;

/// Arguments of `geomirror bench`.
#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("targets").required(true).multiple(true).args(["config", "local", "uri"]))]
pub struct Args {
    /// Recovery-domain file: measures the production member's NBD export
    /// (after any `--local` or `--uri` targets, so those are the baseline).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Start a throwaway local set-up and measure it first: unmirrored
    /// `geomirror serve` on a temporary disk (the baseline), then a local
    /// group in sync mode mirroring to a copy disk over loopback.
    #[arg(long)]
    pub local: bool,
    /// An NBD export to measure (`nbd://HOST[:PORT]/NAME`,
    /// `nbd+unix:///NAME?socket=PATH`, `unix:PATH`, `HOST:PORT`); repeat to
    /// compare several, ratios are against the first.
    #[arg(long)]
    pub uri: Vec<String>,
    /// Name of the target given by the `--uri` in the same position.
    #[arg(long, requires = "uri")]
    pub label: Vec<String>,
    /// Workload to run; repeat for several [default: all three].
    #[arg(long, value_enum)]
    pub workload: Vec<Workload>,
    /// Requests in flight [default: 32 randwrite4k, 16 seqwrite1m, 1 randwrite4k-fsync].
    #[arg(long)]
    pub iodepth: Option<u32>,
    /// Seconds each workload runs on each target.
    #[arg(long, default_value_t = 10)]
    pub runtime_s: u64,
    /// Bytes of the export written over (e.g. 256M, 1G).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub size: u64,
    /// Load generator.
    #[arg(long, value_enum, default_value_t = Engine::Auto)]
    pub engine: Engine,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write a latency CDF plot (SVG) to this file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Time allowed to connect and finish the NBD handshake.
    #[arg(long, default_value_t = target::CONNECT_TIMEOUT_MS_DEFAULT)]
    pub connect_timeout_ms: u64,
    /// Time requests may take to complete after a run ends before the target
    /// is declared stalled (and the benchmark fails instead of hanging).
    #[arg(long, default_value_t = bench::IO_TIMEOUT_MS_DEFAULT)]
    pub io_timeout_ms: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let opts = Options {
        workloads: if args.workload.is_empty() {
            Workload::ALL.to_vec()
        } else {
            args.workload.clone()
        },
        iodepth: args.iodepth,
        runtime_s: args.runtime_s,
        size_bytes: args.size,
        engine: args.engine,
        connect_timeout_ms: args.connect_timeout_ms,
        io_timeout_ms: args.io_timeout_ms,
    };
    opts.check()?;
    // Targets in comparison order: the local baseline, the given exports,
    // then the group's production export. The local set-up is kept alive
    // until the runs are over; dropping it stops its servers.
    // Bad addresses are refused before any server is started.
    let given = target::from_uris(&args.uri, &args.label)?;
    let mut targets = Vec::new();
    let mut _local: Option<LocalSetup> = None;
    if args.local {
        let (setup, local) = LocalSetup::start(args.size)?;
        _local = Some(setup);
        targets.extend(local);
    }
    targets.extend(given);
    if let Some(path) = &args.config {
        targets.extend(domain::resolve_targets(path, args.connect_timeout_ms)?);
    }
    let report = bench::run(&targets, &opts, |line| eprintln!("{line}"))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("encode the report")?
        );
    } else {
        print!("{}", report.table());
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, bench::plot::svg(&report))
            .with_context(|| format!("write plot {}", path.display()))?;
        eprintln!("bench: latency plot written to {}", path.display());
    }
    Ok(())
}
