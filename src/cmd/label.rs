//! `geomirror label`.

/// Arguments of `geomirror label`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`geomirror label` is not implemented yet")
}
