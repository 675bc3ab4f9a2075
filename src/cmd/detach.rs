//! `geomirror detach`: disconnects a kernel NBD device attached by `attach`.

use crate::attach::kernel;

/// Arguments of `geomirror detach`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The device to disconnect, e.g. /dev/nbd0.
    #[arg(long)]
    pub device: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    kernel::detach(&args.device)?;
    println!("{} disconnected", args.device);
    Ok(())
}
