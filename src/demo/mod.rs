//! `geomirror demo`: a one-command tour that runs a three-member group on
//! this machine, writes through NBD, crashes the copy host, and checks the disks.
//!
//! The tour drives the real binary (`geomirror format`, `geomirror up`)
//! as child processes and reads the group only through `status`, so what it
//! shows is what an operator would see. Each step records checks; the exit
//! code says whether all of them held.

mod cluster;
mod error;
mod steps;
mod tour;
mod verify;
mod watch;
mod workload;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

pub use error::DemoError;

/// Smallest volume the tour accepts: room for the bulk and scattered writes.
pub const SIZE_BYTES_MIN: u64 = 8 << 20;
/// Largest volume: the tour writes sparse files in one directory.
pub const SIZE_BYTES_MAX: u64 = 64 << 30;

/// How to run the tour.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Size of each disk file.
    pub size_bytes: u64,
    /// Directory under which the demo's own directory is made.
    pub parent_dir: PathBuf,
    /// Keep the demo directory (disks, logs, config) at the end.
    pub keep: bool,
}

/// Set by SIGINT/SIGTERM: every loop of the tour checks it and unwinds,
/// so the member guard stops the children.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Runs the tour; Ok(true) when every check held.
pub fn run(opts: &DemoOptions) -> anyhow::Result<bool> {
    anyhow::ensure!(
        (SIZE_BYTES_MIN..=SIZE_BYTES_MAX).contains(&opts.size_bytes),
        "--size must be between {} and {}",
        crate::units::format_size(SIZE_BYTES_MIN),
        crate::units::format_size(SIZE_BYTES_MAX)
    );
    // One worker is plenty: status polls and the signal watch are all it runs.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let shutdown = {
        let _g = rt.enter();
        crate::cmd::shutdown_signal()?
    };
    rt.spawn(async move {
        shutdown.await;
        INTERRUPTED.store(true, Ordering::Relaxed);
    });
    tour::tour(opts, rt.handle().clone())
}

/// Prints a line to stdout at once (the tour is watched live); a closed
/// pipe is not a reason to stop the tour half-way.
fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}
