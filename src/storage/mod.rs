//! Disks: the block-device interface every layer above talks to, its two
//! engines (io_uring on its own thread, and plain pread/pwrite as the oracle),
//! and the on-disk label and metadata.
//!
//! Requests are submitted with a one-shot completion; a failed request is
//! still answered exactly once, with its error.

mod buf;
pub mod plain;

pub use buf::IoBuf;

use tokio::sync::oneshot;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The operating system refused or failed an I/O call.
    #[error("I/O error at offset {offset}: {source}")]
    Io {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    /// A request reaches past the end of the disk.
    #[error("range {offset}+{len} is outside the disk ({size} bytes)")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// The engine has stopped and takes no more requests.
    #[error("storage engine stopped")]
    Stopped,
}

impl StorageError {
    /// The errno an NBD reply carries for this error (NBD `doc/proto.md`,
    /// "Error values"): EIO for I/O failures, ENOSPC past the end, ESHUTDOWN
    /// when the engine is going away.
    pub fn errno(&self) -> i32 {
        match self {
            StorageError::Io { source, .. } => match source.raw_os_error() {
                Some(libc::ENOSPC) => libc::ENOSPC,
                Some(libc::EPERM) => libc::EPERM,
                Some(libc::EOPNOTSUPP) => libc::ENOTSUP,
                _ => libc::EIO,
            },
            StorageError::OutOfRange { .. } => libc::ENOSPC,
            StorageError::Stopped => libc::ESHUTDOWN,
        }
    }
}

/// One disk operation. Offsets and lengths are in bytes and are checked
/// against the disk size by the engine.
#[derive(Debug)]
pub enum Request {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        data: IoBuf,
        fua: bool,
    },
    Flush,
    /// Discard: the range may read back as anything (we punch a hole: zeroes).
    Trim {
        offset: u64,
        len: u64,
    },
    /// Make the range read as zeroes; `punch` allows deallocating it.
    WriteZeroes {
        offset: u64,
        len: u64,
        punch: bool,
    },
}

/// What a completed request hands back.
#[derive(Debug)]
pub enum Reply {
    Read(IoBuf),
    Done,
}

/// Where an engine sends a request's result; dropped unanswered only when
/// the engine itself dies, which the waiter sees as [`StorageError::Stopped`].
pub type Completion = oneshot::Sender<Result<Reply, StorageError>>;

/// A run of the disk that is allocated or not (NBD `base:allocation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    /// Not allocated (reads as zeroes).
    pub hole: bool,
}

/// The interface of a disk, implemented by both engines and by the mirrored
/// volume that fans writes out to copies.
pub trait BlockDevice: Send + Sync + 'static {
    /// Size of the data area in bytes.
    fn size(&self) -> u64;
    /// Queue one request; its result goes to `done`.
    fn submit(&self, req: Request, done: Completion);
    /// Allocation of `[offset, offset+len)`, in order, covering at least the
    /// first byte. Engines that cannot tell report one allocated extent.
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, StorageError>;
}

/// Submit a request and wait for its result.
pub async fn call(dev: &dyn BlockDevice, req: Request) -> Result<Reply, StorageError> {
    let (tx, rx) = oneshot::channel();
    dev.submit(req, tx);
    rx.await.unwrap_or(Err(StorageError::Stopped))
}

/// Checks `[offset, offset+len)` against `size`, without overflow.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<(), StorageError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(StorageError::OutOfRange { offset, len, size }),
    }
}
