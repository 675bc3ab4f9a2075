//! `geomirror format`.

/// Arguments of `geomirror format`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`geomirror format` is not implemented yet")
}
