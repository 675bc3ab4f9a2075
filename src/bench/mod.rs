//! `geomirror bench`: measures write replication by running the same write
//! workloads against several NBD exports (mirrored, unmirrored) in one run.
//!
//! ```text
//!  targets (--uri | --config → production member | --local → spawned servers)
//!     │ probe: reachable? writable? size?
//!     ▼
//!  for each target, for each workload:  fio --ioengine=nbd  |  builtin (our NBD client)
//!     ▼
//!  report (table / JSON, ratios to the first target)  +  plot (SVG latency CDF)
//! ```

pub mod builtin;
pub mod domain;
pub mod error;
pub mod fio;
pub mod histogram;
pub mod local;
pub mod pattern;
pub mod plot;
pub mod report;
pub mod target;
pub mod workload;

pub use error::BenchError;
pub use report::Report;
pub use target::Target;
pub use workload::{Measurement, RunSpec, Workload};

/// Most targets compared in one run.
pub const TARGETS_MAX: usize = 16;
/// Longest run per workload.
pub const RUNTIME_S_MAX: u64 = 3600;
/// Most requests in flight: the NBD client's own bound.
pub const IODEPTH_MAX: u32 = crate::attach::pipeline::INFLIGHT_MAX as u32;
/// Default of `--io-timeout-ms`.
pub const IO_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Longest `--io-timeout-ms`: the NBD client gives up on a request by then.
pub const IO_TIMEOUT_MS_MAX: u64 = crate::attach::pipeline::REQUEST_TIMEOUT_MS;

/// Which load generator drives the exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// fio with its `nbd` ioengine (libnbd).
    Fio,
    /// Our own generator over our NBD client, with a verify pass.
    Builtin,
    /// fio when it is installed, else the built-in generator.
    Auto,
}

impl Engine {
    /// The engine actually used.
    pub fn resolve(self) -> Result<Engine, BenchError> {
        match self {
            Engine::Auto if fio::installed() => Ok(Engine::Fio),
            Engine::Auto => Ok(Engine::Builtin),
            Engine::Fio if !fio::installed() => Err(BenchError::FioMissing),
            e => Ok(e),
        }
    }
}

/// What to run against every target.
#[derive(Clone, Debug)]
pub struct Options {
    pub workloads: Vec<Workload>,
    /// Overrides every workload's default queue depth.
    pub iodepth: Option<u32>,
    pub runtime_s: u64,
    /// Bytes of each export written over (clamped to the smallest export).
    pub size_bytes: u64,
    pub engine: Engine,
    pub connect_timeout_ms: u64,
    /// See [`RunSpec::io_timeout_ms`].
    pub io_timeout_ms: u64,
}

impl Options {
    /// Refuses values outside the bounds before anything connects.
    pub fn check(&self) -> Result<(), BenchError> {
        let usage = |s: String| Err(BenchError::Usage(s));
        if self.workloads.is_empty() {
            return usage("no workload given".into());
        }
        if !(1..=RUNTIME_S_MAX).contains(&self.runtime_s) {
            return usage(format!("--runtime-s must be 1..={RUNTIME_S_MAX}"));
        }
        if let Some(d) = self.iodepth.filter(|d| !(1..=IODEPTH_MAX).contains(d)) {
            return usage(format!("--iodepth {d}: must be 1..={IODEPTH_MAX}"));
        }
        if !(1..=IO_TIMEOUT_MS_MAX).contains(&self.io_timeout_ms) {
            return usage(format!("--io-timeout-ms must be 1..={IO_TIMEOUT_MS_MAX}"));
        }
        if self.size_bytes < 1 << 20 {
            return usage("--size must be at least 1M".into());
        }
        Ok(())
    }
}

/// Runs every workload against every target, in order, and collects the
/// comparison. `progress` gets one line per run as it finishes.
pub fn run(
    targets: &[Target],
    opts: &Options,
    mut progress: impl FnMut(&str),
) -> Result<Report, BenchError> {
    opts.check()?;
    if targets.is_empty() || targets.len() > TARGETS_MAX {
        return Err(BenchError::Usage(format!(
            "give 1..={TARGETS_MAX} targets (--uri, --config or --local)"
        )));
    }
    let engine = opts.engine.resolve()?;
    // Probe every target first: a typo in the last one must not cost the
    // whole run. Every target is written over the same range.
    let mut size_bytes = opts.size_bytes;
    for t in targets {
        let c = t.connect(opts.connect_timeout_ms)?;
        size_bytes = size_bytes.min(c.info().size);
    }
    // Whole 1 MiB blocks, so the sequential workload fits too.
    size_bytes &= !((1u64 << 20) - 1);
    if size_bytes == 0 {
        return Err(BenchError::BadSize {
            target: targets[0].describe(),
            reason: "an export is smaller than 1 MiB".into(),
        });
    }
    if size_bytes < opts.size_bytes {
        progress(&format!(
            "bench: an export is smaller than --size; writing over the first {size_bytes} bytes of each"
        ));
    }
    let mut report = Report {
        runtime_s: opts.runtime_s,
        size_bytes,
        rows: Vec::new(),
    };
    for t in targets {
        for &w in &opts.workloads {
            let spec = RunSpec {
                workload: w,
                iodepth: opts.iodepth.unwrap_or(w.default_iodepth()),
                runtime_s: opts.runtime_s,
                size_bytes,
                io_timeout_ms: opts.io_timeout_ms,
            };
            let m = match engine {
                Engine::Fio => fio::run(t, &spec)?,
                _ => builtin::run(t.connect(opts.connect_timeout_ms)?, &t.describe(), &spec)?,
            };
            let flush = m.flush_us.map_or(String::new(), |[p50, p99, _]| {
                format!("; flush p50 {p50:.1} µs, p99 {p99:.1} µs")
            });
            progress(&format!(
                "bench: {} {} ({}, QD{}, {} s): {:.1} MB/s, {:.0} IOPS, p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs{flush}",
                t.label, w, m.engine, m.iodepth, spec.runtime_s, m.mb_per_s, m.iops, m.p50_us, m.p99_us, m.p99_9_us
            ));
            report.push(&t.label, &t.uri(), w, m);
        }
    }
    Ok(report)
}
