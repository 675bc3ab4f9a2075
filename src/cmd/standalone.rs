//! A geomirror disk served on its own by `geomirror serve` (outside the
//! group, like a DRBD resource used standalone): only its data area is
//! exposed, and its first write starts a new data generation in the label.
//!
//! The new generation is what lets the group see, on the next join, that
//! this disk was written apart from production: if production wrote too,
//! the generations say split brain and nothing is synced in either
//! direction (replication/generation.rs `decide`). Every write is also
//! marked in the disk's dirty bitmap before it reaches the disk, as a
//! production host marks what its absent copies lack.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::runtime::Handle;
use tokio::sync::OnceCell;

use crate::storage::{
    BlockDevice, Completion, EngineKind, Extent, HostedDisk, Label, LabelError, Request,
    StorageError,
};

/// What `serve` does with a disk, judged from its label.
pub enum Opened {
    /// No geomirror label: serve the whole disk as it is.
    Plain,
    /// A geomirror disk: serve this device (its data area only).
    Labeled {
        device: Arc<dyn BlockDevice>,
        label: Label,
    },
}

/// Opens `path` as a geomirror disk when it carries a label: locked as a
/// member hosting it would lock it (so a disk a running member holds is
/// refused), the engine covering the data area only. `rt` runs the label
/// and bitmap updates of writes.
pub fn open_labeled(
    path: &Path,
    read_only: bool,
    engine: EngineKind,
    rt: &Handle,
) -> anyhow::Result<Opened> {
    let shown = path.display();
    match Label::read_path(path) {
        Ok(_) => {}
        Err(LabelError::NotFormatted) => return Ok(Opened::Plain),
        Err(LabelError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Opened::Plain)
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!("{shown} looks like a geomirror disk but its label cannot be used")
            })
        }
    }
    let disk = match HostedDisk::open(path, None) {
        Ok(d) => d,
        Err(LabelError::Locked { .. }) => bail!(
            "{shown} is held by another process (a running `geomirror up` member hosts it, \
             or another serve): stop it first, a disk is written by one host at a time"
        ),
        Err(e) => return Err(e).with_context(|| format!("open {shown}")),
    };
    let label = disk.label();
    if !read_only && !label.flags.consistent {
        // A copy's label says inconsistent from the first request of a
        // resync until its end is durable: resync writes land out of write
        // order, so the data area is no image of any moment in between.
        bail!(
            "{shown} does not hold a complete image of the volume: its label says \
             inconsistent (a resync onto it is in progress or was interrupted, its data was \
             discarded, or it was never synced); refusing to serve it for writing. \
             `--read-only` serves it as it is, for inspection only. To get a usable image, \
             start its member again while the production host runs: the resync resumes \
             and completes"
        );
    }
    let inner = disk
        .device(engine)
        .with_context(|| format!("open the engine of {shown}"))?;
    let device: Arc<dyn BlockDevice> = if read_only {
        // The engine shares the locked open file description: the hold
        // lasts as long as it does.
        inner
    } else {
        Arc::new(GenerationOnWrite {
            inner,
            disk: Arc::new(disk),
            started: Arc::new(OnceCell::new()),
            rt: rt.clone(),
        })
    };
    Ok(Opened::Labeled { device, label })
}

/// The data area of a labeled disk; a write first makes the new generation
/// and its dirty mark durable (both only once per generation and chunk).
struct GenerationOnWrite {
    inner: Arc<dyn BlockDevice>,
    disk: Arc<HostedDisk>,
    /// Set once the label names the new generation.
    started: Arc<OnceCell<()>>,
    rt: Handle,
}

impl BlockDevice for GenerationOnWrite {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn submit(&self, req: Request, done: Completion) {
        let (offset, len) = match &req {
            Request::Write { offset, data, .. } => (*offset, data.len() as u64),
            Request::Trim { offset, len } | Request::WriteZeroes { offset, len, .. } => {
                (*offset, *len)
            }
            Request::Read { .. } | Request::Flush => return self.inner.submit(req, done),
        };
        let inner = self.inner.clone();
        let disk = self.disk.clone();
        let started = self.started.clone();
        self.rt.spawn(async move {
            match prepare(disk, started, offset, len).await {
                Ok(()) => inner.submit(req, done),
                Err(e) => {
                    tracing::error!("write at {offset} refused: {e}");
                    let source = std::io::Error::other(e.to_string());
                    let _ = done.send(Err(StorageError::Io { offset, source }));
                }
            }
        });
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, StorageError> {
        self.inner.extents(offset, len)
    }
}

/// Before the first write: a new current generation in the label. Before
/// every write: its chunks marked dirty. Both durable (label and bitmap
/// writes are followed by fdatasync), so no write is on the disk that the
/// label or bitmap would not own up to after a crash.
async fn prepare(
    disk: Arc<HostedDisk>,
    started: Arc<OnceCell<()>>,
    offset: u64,
    len: u64,
) -> Result<(), LabelError> {
    started
        .get_or_try_init(|| {
            let disk = disk.clone();
            async move {
                let label =
                    blocking(move || disk.update_label(|l| l.generations.new_current())).await?;
                tracing::warn!(
                    generations = %label.generations,
                    "first write while apart from the group: new data generation started"
                );
                Ok::<(), LabelError>(())
            }
        })
        .await?;
    if len > 0 {
        blocking(move || disk.bitmap().mark(offset, len).map(|_| ())).await?;
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LabelError> + Send + 'static,
) -> Result<T, LabelError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(LabelError::Invalid(format!("label update task: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{self, FormatOptions, IoBuf};

    fn formatted(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("copy.img");
        let f = std::fs::File::create_new(&path).expect("create disk");
        f.set_len(8 << 20).expect("size disk");
        let opts = FormatOptions {
            group: "payroll".into(),
            resource: "payroll-dr".into(),
            bitmap_chunk_bytes: 64 << 10,
            force: false,
        };
        Label::format(&f, &opts).expect("format");
        let disk = HostedDisk::open(&path, None).expect("open");
        // As a finished full sync leaves it.
        disk.update_label(|l| l.flags.consistent = true)
            .expect("mark consistent");
        path
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn first_write_starts_a_new_generation_and_marks_the_bitmap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = formatted(dir.path());
        let before = Label::read_path(&path).expect("label");
        let Opened::Labeled { device, .. } =
            open_labeled(&path, false, EngineKind::Plain, &Handle::current()).expect("open")
        else {
            panic!("a formatted disk is served as labeled");
        };
        assert_eq!(device.size(), before.data_size(), "data area only");
        let past_end = Request::Read {
            offset: before.data_size(),
            len: 4096,
        };
        assert!(
            storage::call(&*device, past_end).await.is_err(),
            "metadata unreachable"
        );
        let read = Request::Read {
            offset: 0,
            len: 4096,
        };
        storage::call(&*device, read).await.expect("read");
        assert_eq!(
            Label::read_path(&path).expect("label").generations,
            before.generations
        );

        let write = Request::Write {
            offset: 1 << 20,
            data: IoBuf::zeroed(4096),
            fua: false,
        };
        storage::call(&*device, write).await.expect("write");
        let after = Label::read_path(&path).expect("label");
        assert_ne!(after.generations.current, before.generations.current);
        assert_eq!(after.generations.bitmap, before.generations.current);
        drop(device);
        let f = std::sync::Arc::new(std::fs::File::open(&path).expect("open"));
        let bitmap = crate::storage::DirtyBitmap::load(f, after.layout).expect("bitmap");
        assert!(bitmap.is_dirty(1 << 20));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_held_disk_is_refused_and_an_unformatted_one_is_plain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = formatted(dir.path());
        let held = HostedDisk::open(&path, None).expect("host it");
        let err = open_labeled(&path, false, EngineKind::Plain, &Handle::current())
            .err()
            .expect("held disk refused");
        assert!(err.to_string().contains("held by another process"), "{err}");
        drop(held);

        let plain = dir.path().join("plain.img");
        std::fs::File::create_new(&plain)
            .and_then(|f| f.set_len(1 << 20))
            .expect("plain disk");
        assert!(matches!(
            open_labeled(&plain, false, EngineKind::Plain, &Handle::current()),
            Ok(Opened::Plain)
        ));
    }
}
