//! Subcommands: one file each, holding its clap `Args` and its `run`.
//!
//! `run` functions return `anyhow::Result`: this is the edge where layer
//! errors become messages for a person.

pub mod attach;
pub mod bench;
pub mod demo;
pub mod detach;
pub mod events;
pub mod format;
pub mod label;
pub mod serve;
mod standalone;
pub mod status;
pub mod up;
pub mod verify;

use anyhow::Context as _;

/// Logs go to stderr so that stdout stays for machine-readable output;
/// colours only on a terminal, so a log file or a pipe gets plain lines.
pub fn init_logging(filter: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Completes on the first SIGTERM or SIGINT.
pub(crate) fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    })
}

/// Print to stdout; a closed pipe (`status | head`) is not an error.
pub(crate) fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// The members a control client asks, as (name, address): `member` alone,
/// or every member in backup order.
pub(crate) fn control_targets<'a>(
    domain: &'a crate::config::RecoveryDomain,
    member: Option<&str>,
) -> anyhow::Result<Vec<(&'a str, &'a str)>> {
    Ok(match member {
        Some(name) => {
            let m = domain
                .members
                .iter()
                .find(|m| m.name == name)
                .ok_or_else(|| anyhow::anyhow!("member {name:?} is not in the recovery domain"))?;
            vec![(m.name.as_str(), m.address.as_str())]
        }
        None => domain
            .members
            .iter()
            .map(|m| (m.name.as_str(), m.address.as_str()))
            .collect(),
    })
}
