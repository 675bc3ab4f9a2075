//! `geomirror format`: write a label, an empty dirty bitmap and the
//! metadata layout at the end of a disk (a file is created when missing).

use std::path::PathBuf;

use anyhow::Context;

use crate::storage::hosted::open_exclusive;
use crate::storage::meta::CHUNK_BYTES_DEFAULT;
use crate::storage::{sys, FormatOptions, Label};
use crate::units::{format_size, parse_size};

/// Arguments of `geomirror format`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Group (mirrored volume) the disk belongs to.
    #[arg(long)]
    pub group: String,
    /// Resource id of this disk in the group.
    #[arg(long)]
    pub resource: String,
    /// Size of the disk file (e.g. 256M, 10G): creates the file when it
    /// does not exist, grows it when it is smaller. Not for block devices.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Data bytes per dirty-bitmap bit (a power of two, 4K to 1G).
    #[arg(long, value_parser = parse_size, default_value_t = CHUNK_BYTES_DEFAULT)]
    pub bitmap_chunk: u64,
    /// Overwrite the label of another group or resource, or a damaged one.
    #[arg(long)]
    pub force: bool,
    /// Disk to format: a regular file or a block device.
    pub disk: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let disk = &args.disk;
    let shown = disk.display();
    match std::fs::metadata(disk) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let size = args
                .size
                .with_context(|| format!("{shown} does not exist: give --size to create it"))?;
            let f = std::fs::File::create_new(disk).with_context(|| format!("create {shown}"))?;
            f.set_len(size)
                .with_context(|| format!("size {shown} to {size} bytes"))?;
        }
        Err(e) => return Err(e).with_context(|| format!("stat {shown}")),
        Ok(_) => {}
    }
    let file = open_exclusive(disk)?;
    let current = sys::disk_size(&file).with_context(|| format!("size of {shown}"))?;
    if let Some(size) = args.size {
        if sys::is_block_device(&file)? {
            anyhow::ensure!(
                size == current,
                "--size does not apply to block device {shown} ({current} bytes)"
            );
        } else if size > current {
            file.set_len(size)
                .with_context(|| format!("grow {shown} to {size} bytes"))?;
        } else if size < current {
            anyhow::bail!("{shown} has {current} bytes; --size {size} would cut data off (shrinking is refused)");
        }
    }
    let opts = FormatOptions {
        group: args.group,
        resource: args.resource,
        bitmap_chunk_bytes: args.bitmap_chunk,
        force: args.force,
    };
    let label = Label::format(&file, &opts).with_context(|| format!("format {shown}"))?;
    println!(
        "formatted {shown}: group {:?}, resource {:?}, data {} ({} bytes), metadata {} bytes, bitmap chunk {}",
        label.group,
        label.resource,
        format_size(label.data_size()),
        label.data_size(),
        label.layout.meta_bytes(),
        format_size(label.layout.bitmap_chunk_bytes),
    );
    Ok(())
}
