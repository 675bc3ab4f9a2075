//! Subcommands: one file each, holding its clap `Args` and its `run`.
//!
//! `run` functions return `anyhow::Result`: this is the edge where layer
//! errors become messages for a person.

pub mod attach;
pub mod bench;
pub mod detach;
pub mod format;
pub mod label;
pub mod serve;

/// Logs go to stderr so that stdout stays for machine-readable output.
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
