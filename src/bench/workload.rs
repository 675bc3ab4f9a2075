//! The write workloads the benchmark runs, and what each one means in
//! block size, access pattern, queue depth and flushing.

use std::fmt;

/// One write workload. The three mirror the shared fio matrix so figures
/// can be put beside the peers' (shared bench `fio-matrix.sh`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// 4 KiB writes at random page-aligned offsets, deep queue.
    #[value(name = "randwrite4k")]
    RandWrite4k,
    /// 1 MiB writes in ascending offsets.
    #[value(name = "seqwrite1m")]
    SeqWrite1m,
    /// 4 KiB random writes, each followed by an NBD flush (fio `--fsync=1`):
    /// the latency a database commit sees.
    #[value(name = "randwrite4k-fsync")]
    RandWrite4kFsync,
}

impl Workload {
    /// Every workload, in the order a default run measures them.
    pub const ALL: [Workload; 3] = [
        Workload::RandWrite4k,
        Workload::SeqWrite1m,
        Workload::RandWrite4kFsync,
    ];

    /// Bytes per write request.
    pub fn block_bytes(self) -> u32 {
        match self {
            Workload::RandWrite4k | Workload::RandWrite4kFsync => 4096,
            Workload::SeqWrite1m => 1 << 20,
        }
    }

    /// Random offsets (true) or ascending ones.
    pub fn random(self) -> bool {
        !matches!(self, Workload::SeqWrite1m)
    }

    /// A flush after every write.
    pub fn fsync(self) -> bool {
        matches!(self, Workload::RandWrite4kFsync)
    }

    /// Queue depth when `--iodepth` is not given: the shared matrix's.
    pub fn default_iodepth(self) -> u32 {
        match self {
            Workload::RandWrite4k => 32,
            Workload::SeqWrite1m => 16,
            Workload::RandWrite4kFsync => 1,
        }
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::RandWrite4k => "randwrite4k",
            Workload::SeqWrite1m => "seqwrite1m",
            Workload::RandWrite4kFsync => "randwrite4k-fsync",
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything one measured run needs to know besides the target.
#[derive(Clone, Copy, Debug)]
pub struct RunSpec {
    pub workload: Workload,
    /// Requests in flight.
    pub iodepth: u32,
    /// How long the load runs.
    pub runtime_s: u64,
    /// Bytes of the export the writes are spread over (from offset 0).
    pub size_bytes: u64,
    /// How long past the end of the run requests may take to complete
    /// before the target is declared stalled.
    pub io_timeout_ms: u64,
}

/// Percentiles every run reports, and the points of the plotted CDF.
pub const REPORT_PERCENTILES: [f64; 3] = [50.0, 99.0, 99.9];
/// Points of the latency CDF kept per run; fio accepts at most 20.
pub const CDF_PERCENTILES: [f64; 16] = [
    1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99,
];

/// What one run measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Measurement {
    /// `fio` or `builtin`.
    pub engine: &'static str,
    pub iodepth: u32,
    /// Bytes written during the measured time.
    pub bytes: u64,
    /// Write requests completed.
    pub ios: u64,
    /// Measured wall time, seconds.
    pub elapsed_s: f64,
    /// Decimal megabytes per second.
    pub mb_per_s: f64,
    pub iops: f64,
    /// Write completion latency percentiles, microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    pub p99_9_us: f64,
    pub mean_us: f64,
    /// `(percent, microseconds)` points of the latency CDF.
    pub cdf_us: Vec<(f64, f64)>,
    /// Blocks read back and compared after the run (builtin engine only).
    pub verified_blocks: u64,
    /// Flush latency (p50, p99, p99.9 µs) of the fsync workload: what a
    /// commit waits for on top of its write.
    pub flush_us: Option<[f64; 3]>,
}
