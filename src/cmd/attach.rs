//! `geomirror attach`: the volume as /dev/nbdN (kernel NBD driver), or as a
//! file in a FUSE mount with an optional loop device on it.

use crate::attach::kernel::{self, Attached, KernelOptions};
use crate::attach::{fuse, loopdev, process, NbdAddress, NbdClient};
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;

/// How often the foreground loop checks whether the device went away.
const POLL_MS: u64 = 200;

/// Arguments of `geomirror attach`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The group's recovery-domain file: attach its volume where the group
    /// says the production host serves it.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "nbd",
        conflicts_with = "nbd"
    )]
    pub config: Option<PathBuf>,
    /// Or an NBD address directly: unix:PATH, HOST:PORT,
    /// nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH.
    #[arg(long)]
    pub nbd: Option<String>,
    /// Export name (overrides one in the URI); also names the volume.
    #[arg(long)]
    pub name: Option<String>,
    /// Kernel device to use, e.g. /dev/nbd0 (default: the kernel picks).
    #[arg(long, conflicts_with = "fuse")]
    pub device: Option<String>,
    /// Without the nbd module: expose the volume as DIR/<name> through FUSE.
    #[arg(long, value_name = "DIR")]
    pub fuse: Option<PathBuf>,
    /// With --fuse: also set up a loop device on the file and print it.
    #[arg(long = "loop", requires = "fuse")]
    pub loop_device: bool,
    /// Kernel path: sockets to open (used only if the server allows multi-conn).
    #[arg(long, default_value_t = 1)]
    pub connections: u32,
    /// Kernel path: request timeout in seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout_s: u64,
    /// Kernel path: how long to wait for a dead connection to come back, seconds.
    #[arg(long, default_value_t = 120)]
    pub dead_conn_timeout_s: u64,
}

/// Where the address comes from: `--nbd` as given, or `--config`: ask the
/// group (any member answering `status`) which member hosts the production
/// disk, and use that member's `nbd` address with the group's export name.
fn resolve_address(args: &Args) -> anyhow::Result<NbdAddress> {
    let Some(path) = &args.config else {
        let nbd = args
            .nbd
            .as_deref()
            .context("give --config FILE or --nbd ADDRESS")?;
        return Ok(NbdAddress::parse(nbd, args.name.as_deref())?);
    };
    let domain = crate::config::RecoveryDomain::load(path)
        .with_context(|| format!("recovery domain {}", path.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    let report = rt.block_on(super::status::fetch(&domain, None))?;
    let production = report
        .resources
        .iter()
        .find(|r| r.role == "production")
        .context("the status report names no production resource")?;
    let host = production.host.as_deref().with_context(|| {
        format!(
            "group {} has no production host right now (nothing serves the volume)",
            domain.group
        )
    })?;
    let member = domain
        .members
        .iter()
        .find(|m| m.name == host)
        .with_context(|| format!("production host {host} is not in {}", path.display()))?;
    let nbd = member
        .nbd
        .as_ref()
        .with_context(|| format!("production host {host} has no `nbd` address"))?;
    let text = match nbd {
        crate::config::NbdAddress::Unix(p) => format!("unix:{}", p.display()),
        crate::config::NbdAddress::Tcp(a) => a.clone(),
    };
    let export = args.name.clone().unwrap_or_else(|| domain.group.clone());
    tracing::info!(%host, address = %text, "attaching the volume served by the production host");
    Ok(NbdAddress::parse(&text, Some(&export))?)
}

/// The volume's name: the export name, else `volume`.
fn volume_name(addr: &NbdAddress) -> String {
    if addr.export.is_empty() {
        "volume".to_string()
    } else {
        addr.export.clone()
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let addr = resolve_address(&args)?;
    // Before any thread starts, so that only our wait sees SIGTERM/SIGINT.
    let signals = process::block_stop_signals().context("block SIGTERM/SIGINT")?;
    process::harden();
    match &args.fuse {
        Some(dir) => run_fuse(&addr, dir, args.loop_device, &signals),
        None => run_kernel(&addr, &args, &signals),
    }
}

fn run_kernel(
    addr: &NbdAddress,
    args: &Args,
    signals: &nix::sys::signal::SigSet,
) -> anyhow::Result<()> {
    let opts = KernelOptions {
        device: args.device.clone(),
        connections: args.connections,
        timeout_s: args.timeout_s,
        dead_conn_timeout_s: args.dead_conn_timeout_s,
        name: volume_name(addr),
    };
    match kernel::attach(addr, &opts)? {
        Attached::Netlink { device, info } => {
            // The kernel holds the sockets now: nothing left for us to run.
            println!("{device}");
            tracing::info!(
                "attached {} ({} bytes) as {device}",
                addr.endpoint,
                info.size
            );
            Ok(())
        }
        Attached::Ioctl { attachment, info } => {
            println!("{}", attachment.device);
            tracing::info!(
                "attached {} ({} bytes) as {} (ioctl); stop with SIGTERM or `geomirror detach`",
                addr.endpoint,
                info.size,
                attachment.device
            );
            if process::wait_for_stop(signals, POLL_MS, || attachment.is_finished()).is_some() {
                attachment.disconnect()?;
            }
            attachment.wait()?;
            Ok(())
        }
    }
}

fn run_fuse(
    addr: &NbdAddress,
    dir: &std::path::Path,
    with_loop: bool,
    signals: &nix::sys::signal::SigSet,
) -> anyhow::Result<()> {
    let client = Arc::new(NbdClient::connect(addr)?);
    let info = client.info();
    let name = volume_name(addr);
    let session = fuse::mount(Arc::clone(&client), dir, &name)?;
    let file = dir.join(&name);
    tracing::info!(
        "{} ({} bytes) is {}",
        addr.endpoint,
        info.size,
        file.display()
    );
    let loop_dev = if with_loop {
        match loopdev::attach(&file, info.read_only()) {
            Ok(l) => Some(l),
            Err(e) => {
                let _ = session.umount_and_join();
                return Err(e).context("set up a loop device on the FUSE file");
            }
        }
    } else {
        None
    };
    match &loop_dev {
        Some(l) => println!("{}", l.path),
        None => println!("{}", file.display()),
    }
    let sig = process::wait_for_stop(signals, POLL_MS, || session.guard.is_finished());
    tracing::info!(
        "stopping ({})",
        sig.map_or("filesystem unmounted".to_string(), |s| s.to_string())
    );
    let mut result = Ok(());
    if let Some(l) = loop_dev {
        if let Err(e) = l.detach() {
            result = Err(anyhow::Error::new(e).context("detach the loop device"));
        }
    }
    if let Err(e) = fuse::unmount(session, dir) {
        result = result.and(Err(
            anyhow::Error::new(e).context(format!("unmount {}", dir.display()))
        ));
    }
    if let Err(e) = client.flush() {
        // After an external unmount the connection may already be gone.
        tracing::debug!("flush at exit: {e}");
    }
    result
}
