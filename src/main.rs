//! The `geomirror` command line: parses arguments and hands off to `cmd`.

use clap::{Parser, Subcommand};
use geomirror::cmd;

#[derive(Parser)]
#[command(
    name = "geomirror",
    version,
    about = "Userspace block-device mirroring over NBD"
)]
struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. `info`, `geomirror=debug`.
    #[arg(
        long,
        global = true,
        env = "GEOMIRROR_LOG",
        default_value = "info,openraft=warn"
    )]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a disk (file or block device) over NBD.
    Serve(cmd::serve::Args),
    /// Write a geomirror label at the end of a disk.
    Format(cmd::format::Args),
    /// Print the label of a disk.
    Label(cmd::label::Args),
    /// Attach a served volume: kernel NBD device, or a FUSE file (+ loop device).
    Attach(cmd::attach::Args),
    /// Disconnect a kernel NBD device attached by `attach`.
    Detach(cmd::detach::Args),
    /// Run one member of a group in the foreground (SIGTERM: leave cleanly).
    Up(cmd::up::Args),
    /// Show how the group stands, as one running member sees it.
    Status(cmd::status::Args),
    /// Measure write throughput and latency of NBD exports, mirrored against unmirrored.
    Bench(cmd::bench::Args),
    /// Follow the group's events, one JSON line per change.
    Events(cmd::events::Args),
    /// Compare the production disk with every copy online (checksums only).
    Verify(cmd::verify::Args),
    /// Run a three-member group on this machine and show it at work, end to end.
    Demo(cmd::demo::Args),
}

fn main() -> std::process::ExitCode {
    // Before any thread or runtime exists, so every arena starts with them.
    let in_heap = geomirror::storage::heap::keep_buffers_in_heap();
    let cli = Cli::parse();
    cmd::init_logging(&cli.log);
    if !in_heap {
        tracing::warn!("allocator thresholds not set: large buffers may be page-faulted in");
    }
    let result = match cli.command {
        Command::Serve(a) => cmd::serve::run(a),
        Command::Format(a) => cmd::format::run(a),
        Command::Label(a) => cmd::label::run(a),
        Command::Attach(a) => cmd::attach::run(a),
        Command::Detach(a) => cmd::detach::run(a),
        Command::Up(a) => cmd::up::run(a),
        Command::Status(a) => cmd::status::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Events(a) => cmd::events::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Demo(a) => cmd::demo::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("geomirror: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
