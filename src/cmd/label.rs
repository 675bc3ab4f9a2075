//! `geomirror label`: print a disk's label (readable key/value text, or
//! JSON with stable field names) and how much of it is dirty; with
//! `--discard-data`, give up a copy disk's data to resolve a split brain.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;

use crate::storage::{DirtyBitmap, Generations, HostedDisk, Label, LabelError};
use crate::units::format_size;

/// Arguments of `geomirror label`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON: the label's fields plus `dirty_bytes`.
    #[arg(long)]
    pub json: bool,
    /// Resolve a split brain by giving up this copy disk's data (DRBD's
    /// `--discard-my-data`): its generations are cleared and it is marked
    /// incomplete, so the next time its member joins it gets a full sync
    /// from production. Refused while a member holds the disk, and on a
    /// disk that has been the production disk.
    #[arg(long)]
    pub discard_data: bool,
    /// Disk to read: a regular file or a block device.
    pub disk: PathBuf,
}

/// The JSON document: the label's own fields, flattened, then the bitmap.
#[derive(Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    label: &'a Label,
    dirty_bytes: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.discard_data {
        discard_data(&args.disk)?;
    }
    let shown = args.disk.display();
    let file = std::fs::File::open(&args.disk).with_context(|| format!("open {shown}"))?;
    let label = Label::read(&file).with_context(|| format!("read the label of {shown}"))?;
    // Only looking: a damaged block is reported here and repaired by the
    // next member (or serve) that hosts the disk.
    let bitmap = DirtyBitmap::inspect(Arc::new(file), label.layout)
        .with_context(|| format!("read the dirty bitmap of {shown}"))?;
    for d in bitmap.damaged() {
        eprintln!("warning: {shown}: {d}; the next host of the disk rewrites the block");
    }
    let dirty_bytes = bitmap.dirty_bytes();
    if args.json {
        let doc = serde_json::to_string_pretty(&Shown {
            label: &label,
            dirty_bytes,
        })?;
        println!("{doc}");
        return Ok(());
    }
    let l = &label;
    let sized = |n: u64| format!("{n} ({})", format_size(n));
    let yes = |b: bool| if b { "yes" } else { "no" };
    let g = &l.generations;
    let rows = [
        ("group", l.group.clone()),
        ("resource", l.resource.clone()),
        ("disk id", format!("{:016x}", l.disk_id)),
        ("disk size", sized(l.layout.disk_bytes)),
        ("data size", sized(l.data_size())),
        ("bitmap chunk", sized(l.layout.bitmap_chunk_bytes)),
        (
            "bitmap",
            format!(
                "{} blocks at offset {}",
                l.layout.bitmap_blocks, l.layout.bitmap_offset
            ),
        ),
        (
            "label slots",
            format!("at offset {}", l.layout.label_offset),
        ),
        ("generation current", format!("{:016x}", g.current)),
        ("generation bitmap", format!("{:016x}", g.bitmap)),
        (
            "generation history",
            g.history
                .iter()
                .map(|h| format!("{h:016x}"))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        ("consistent", consistent(l.flags.consistent).into()),
        ("primary seen", yes(l.flags.primary_seen).into()),
        ("sequence", l.seq.to_string()),
        ("dirty", sized(dirty_bytes)),
    ];
    for (k, v) in rows {
        println!("{:<20}{v}", format!("{k}:"));
    }
    Ok(())
}

/// The `consistent` line: a disk that is not says why it may not be.
fn consistent(yes: bool) -> &'static str {
    if yes {
        "yes"
    } else {
        // A copy's label says so from the first request of a resync to the
        // flush at its end; a freshly formatted disk, before its first
        // sync, says so too.
        "no (resync in progress or interrupted, or never synced)"
    }
}

/// Marks the copy disk at `path` as holding nothing worth keeping: no
/// generation, not consistent, nothing dirty. Its data stays in place
/// until the full sync overwrites it.
fn discard_data(path: &Path) -> anyhow::Result<()> {
    let shown = path.display();
    let disk = match HostedDisk::open(path, None) {
        Ok(d) => d,
        Err(LabelError::Locked { .. }) => anyhow::bail!(
            "{shown} is held by another process (a running member hosts it): stop that member first"
        ),
        Err(e) => return Err(e).with_context(|| format!("open {shown}")),
    };
    let before = disk.label();
    anyhow::ensure!(
        !before.flags.primary_seen,
        "{shown} has been the production disk of group {:?}: its data is the volume's, \
         discarding it would lose the volume (to keep a copy's writes instead, copy them \
         onto the production volume, then discard the copy)",
        before.group
    );
    disk.bitmap()
        .clear_all()
        .with_context(|| format!("clear the dirty bitmap of {shown}"))?;
    disk.update_label(|l| {
        l.generations = Generations::default();
        l.flags.consistent = false;
    })
    .with_context(|| format!("write the label of {shown}"))?;
    eprintln!(
        "{shown}: data discarded (generations were {}); the next join of its member copies \
         everything from production",
        before.generations
    );
    Ok(())
}
