//! A disk opened for hosting: exclusively locked so two members can never
//! write it, with its label, dirty bitmap and engines over the data area.
//!
//! A regular file is locked with an OFD write lock (`F_OFD_SETLK`), held by
//! this open file description and released when its last fd closes (also
//! when the process dies); a block device is opened with O_EXCL, which the
//! kernel refuses while anyone else holds it exclusively (or has it mounted).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::bitmap::DirtyBitmap;
use super::label::{Label, LabelError};
use super::sys::{self, LockOutcome};
use super::{open_engine, BlockDevice, EngineKind, StorageError};

/// Interval between attempts while waiting for a held disk.
const LOCK_POLL_MS: u64 = 50;

/// A disk this process hosts.
pub struct HostedDisk {
    path: PathBuf,
    file: Arc<File>,
    label: Mutex<Label>,
    bitmap: Arc<DirtyBitmap>,
}

impl HostedDisk {
    /// Opens and locks the disk at `path`, reads its label and bitmap. With
    /// `wait`, a disk held by another process is retried every 50 ms until
    /// `wait` has passed; without, it fails at once with `Locked`.
    pub fn open(path: &Path, wait: Option<Duration>) -> Result<HostedDisk, LabelError> {
        let deadline = Instant::now() + wait.unwrap_or_default();
        let file = loop {
            match try_lock(path)? {
                Some(f) => break f,
                None if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(LOCK_POLL_MS));
                }
                None => {
                    return Err(LabelError::Locked {
                        path: path.display().to_string(),
                    })
                }
            }
        };
        let label = Label::read(&file)?;
        let file = Arc::new(file);
        let bitmap = Arc::new(DirtyBitmap::load(file.clone(), label.layout)?);
        Ok(HostedDisk {
            path: path.to_path_buf(),
            file,
            label: Mutex::new(label),
            bitmap,
        })
    }

    /// The disk's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A copy of the current label.
    pub fn label(&self) -> Label {
        self.label.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Size of the data area: the volume's size.
    pub fn data_size(&self) -> u64 {
        self.label().data_size()
    }

    /// The dirty bitmap.
    pub fn bitmap(&self) -> &Arc<DirtyBitmap> {
        &self.bitmap
    }

    /// An engine over the data area only: requests that reach into the
    /// metadata are out of range. The engine's fd shares this open file
    /// description, so the lock lasts as long as the engine too.
    pub fn device(&self, kind: EngineKind) -> Result<Arc<dyn BlockDevice>, StorageError> {
        let f = self
            .file
            .try_clone()
            .map_err(|source| StorageError::Io { offset: 0, source })?;
        open_engine(f, self.data_size(), kind)
    }

    /// Changes the label with `f` and writes it durably (next slot,
    /// fdatasync); returns the label as written. On error the label in
    /// memory is left as it was on disk.
    pub fn update_label(&self, f: impl FnOnce(&mut Label)) -> Result<Label, LabelError> {
        let mut guard = self.label.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = guard.clone();
        f(&mut next);
        // Fields that describe the disk itself are not the caller's to change.
        next.layout = guard.layout;
        next.seq = guard.seq;
        next.write(&self.file)?;
        *guard = next.clone();
        Ok(next)
    }
}

/// Opens `path` read-write and takes the exclusive hold; None when another
/// process holds it.
fn try_lock(path: &Path) -> Result<Option<File>, LabelError> {
    let what = || format!("open {}", path.display());
    let meta = std::fs::metadata(path).map_err(LabelError::io(what()))?;
    let mut opts = OpenOptions::new();
    opts.read(true).write(true);
    if meta.file_type().is_block_device() {
        match opts.custom_flags(libc::O_EXCL).open(path) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(None),
            Err(e) => Err(LabelError::io(what())(e)),
        }
    } else {
        let f = opts.open(path).map_err(LabelError::io(what()))?;
        match sys::ofd_write_lock(&f).map_err(LabelError::io(format!("lock {}", path.display())))? {
            LockOutcome::Taken => Ok(Some(f)),
            LockOutcome::Busy => Ok(None),
        }
    }
}

/// Opens `path` read-write with the same exclusive hold as hosting uses,
/// without reading the label (for `format`): fails with `Locked` when
/// another process holds the disk.
pub fn open_exclusive(path: &Path) -> Result<File, LabelError> {
    try_lock(path)?.ok_or_else(|| LabelError::Locked {
        path: path.display().to_string(),
    })
}

impl Drop for HostedDisk {
    /// Lazy bitmap clears reach the disk on a clean close (losing them
    /// would cost only a resend, so an error is just logged).
    fn drop(&mut self) {
        if let Err(e) = self.bitmap.flush() {
            tracing::warn!(
                "flushing the dirty bitmap of {} on close: {e}",
                self.path.display()
            );
        }
    }
}
