//! `geomirror serve`.

/// Arguments of `geomirror serve`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`geomirror serve` is not implemented yet")
}
