//! Disks: the block-device interface every layer above talks to, its two
//! engines (io_uring on its own thread, and plain pread/pwrite as the oracle),
//! and the on-disk label and metadata.
//!
//! Requests are submitted with a one-shot completion; a failed request is
//! still answered exactly once, with its error.

pub mod bitmap;
mod buf;
mod buf_fill;
mod buf_pool;
pub mod generation;
pub mod heap;
pub mod hosted;
pub mod label;
pub mod meta;
pub mod plain;
mod ring;
pub mod sys;
pub mod uring;

pub use bitmap::DirtyBitmap;
pub use buf::{IoBuf, UninitBuf};
pub use generation::{Generations, SyncPlan};
pub use hosted::HostedDisk;
pub use label::{FormatOptions, Label, LabelError, LabelFlags};
pub use meta::MetaLayout;
pub use uring::{UringEngine, UringOptions, UringStats};

use std::fs::File;
use std::sync::Arc;

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

impl Request {
    /// A write without FUA: one that a device may take as a page-cache copy
    /// on the caller's thread whatever else is in flight
    /// ([`BlockDevice::run_inline`]).
    pub fn is_plain_write(&self) -> bool {
        matches!(self, Request::Write { fua: false, .. })
    }
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

/// What [`BlockDevice::run_inline`] did with a request.
#[derive(Debug)]
pub enum Inline {
    /// It ran on the calling thread; here is its result.
    Done(Result<Reply, StorageError>),
    /// Not a request to run inline now: submit it instead.
    Declined(Request),
}

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
    /// Whether [`BlockDevice::run_inline`] would take `req` now: a cheap
    /// check, so that a caller can skip preparing to block.
    fn inline_ready(&self, _req: &Request) -> bool {
        false
    }
    /// Run `req` on the calling thread, blocking it for the I/O, when that
    /// is quicker than queueing it: for a small page-cache write, or a flush
    /// while the device has nothing else in flight, a queue costs thread
    /// wake-ups that are most of the latency. Devices without such a path
    /// decline.
    fn run_inline(&self, req: Request) -> Inline {
        Inline::Declined(req)
    }
    /// Allocation of `[offset, offset+len)`, in order, covering at least the
    /// first byte. Engines that cannot tell report one allocated extent.
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, StorageError>;
}

/// Run `req` on the calling task's thread if `dev` takes it inline now,
/// else hand it back: the one way the NBD layer and both sides of the
/// replication use [`BlockDevice::run_inline`].
///
/// A flush waits for the disk (milliseconds when it is busy), so it runs
/// under `block_in_place`, which lets the runtime move this worker's other
/// tasks to another thread meanwhile. Measured at QD1 on ext4, it also keeps
/// the flush's tail short: blocking the worker outright gave a flush p90 of
/// ~4 ms (median of six runs) against ~0.8 ms with it (BENCHMARKS.md). On a
/// current-thread runtime, where `block_in_place` panics, the flush is
/// declined. A small page-cache write takes microseconds and runs directly.
pub fn run_here(dev: &dyn BlockDevice, req: Request) -> Inline {
    if !dev.inline_ready(&req) {
        return Inline::Declined(req);
    }
    if matches!(req, Request::Flush) {
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if !multi {
            return Inline::Declined(req);
        }
        return tokio::task::block_in_place(|| dev.run_inline(req));
    }
    dev.run_inline(req)
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

/// Which engine serves a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// io_uring on its own thread: O_DIRECT for large aligned requests,
    /// the page cache for the rest (the fastest mix measured).
    #[default]
    Uring,
    /// io_uring, page cache only.
    UringBuffered,
    /// io_uring, O_DIRECT for every aligned request.
    UringDirect,
    /// pread/pwrite on the blocking pool: the oracle.
    Plain,
}

impl std::str::FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "uring" => Ok(EngineKind::Uring),
            "uring-buffered" => Ok(EngineKind::UringBuffered),
            "uring-direct" => Ok(EngineKind::UringDirect),
            "plain" => Ok(EngineKind::Plain),
            _ => Err(format!(
                "unknown engine {s:?} (uring, uring-buffered, uring-direct, plain)"
            )),
        }
    }
}

/// Serve the first `data_size` bytes of `file` with the engine `kind`.
/// The plain engine needs a tokio runtime at submit time.
pub fn open_engine(
    file: File,
    data_size: u64,
    kind: EngineKind,
) -> Result<Arc<dyn BlockDevice>, StorageError> {
    Ok(match kind {
        EngineKind::Plain => Arc::new(plain::PlainEngine::new(file, data_size)),
        EngineKind::Uring | EngineKind::UringBuffered | EngineKind::UringDirect => {
            let mut opts = UringOptions::default();
            match kind {
                EngineKind::UringBuffered => opts.direct = false,
                EngineKind::UringDirect => opts.direct_min_bytes = 0,
                _ => {}
            }
            Arc::new(UringEngine::new(file, data_size, opts)?)
        }
    })
}

/// Size in bytes of a regular file or block device.
pub fn disk_size(file: &File) -> Result<u64, StorageError> {
    sys::disk_size(file).map_err(|source| StorageError::Io { offset: 0, source })
}
