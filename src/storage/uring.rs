//! The io_uring engine: one thread owns the ring; tokio tasks hand it
//! requests over a channel and get each result back on its own oneshot.
//!
//! The thread drains every queued request into the ring and submits them in
//! one `io_uring_enter`. It sleeps in that same call, waiting for one
//! completion; an eventfd read kept armed in the ring is what wakes it for
//! new requests, and submitters write the eventfd only when the thread said
//! it is going to sleep, so a busy engine costs no extra syscall per request
//! (the storage bench counts about 0.07 eventfd writes and 0.2
//! `io_uring_enter` calls per request at queue depth 32).
//!
//! Some requests run on the caller's thread instead
//! ([`BlockDevice::run_inline`]): a small page-cache write (no FUA) at any
//! queue depth, and a small FUA or O_DIRECT write or a flush when the
//! engine is idle. The hop to the ring thread and back, plus the hop to an
//! io-wq worker (ext4 cannot start a page-cache write or an fsync without
//! blocking, so io_uring hands both to a worker), costs more than a
//! page-cache write itself, which takes a few microseconds on the caller's
//! thread, as nbdkit's file plugin does it.
//!
//! Registered buffers are not used: requests arrive in caller-owned
//! `IoBuf`s, so a registered pool would need a copy per request, and the
//! saving (page pinning per O_DIRECT request) has not been measured.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::ring::Worker;
use super::sys;
use super::{check_range, BlockDevice, Completion, Extent, Inline, Reply, Request, StorageError};

/// Ring entries by default: operations in flight at once (one slot is the
/// eventfd read).
pub const DEPTH_DEFAULT: u32 = 128;

/// How the engine opens its disk.
#[derive(Debug, Clone, Copy)]
pub struct UringOptions {
    /// Ring entries (operations in flight), 2..=4096.
    pub depth: u32,
    /// Use O_DIRECT for requests aligned to the disk's logical block size
    /// and at least `direct_min_bytes` long; the rest go through the page
    /// cache.
    pub direct: bool,
    /// Smallest request sent with O_DIRECT. Measured with the storage
    /// bench: page-cache writes beat O_DIRECT for 4 KiB random writes
    /// (even counting the final flush), O_DIRECT is on par or ahead for
    /// 1 MiB sequential writes and keeps them out of the page cache.
    pub direct_min_bytes: u64,
    /// Run small writes (at most [`INLINE_WRITE_BYTES_MAX`]) and flushes on
    /// the caller's thread when that is cheaper (see the module doc).
    pub inline: bool,
}

/// Largest write run inline: a page-cache copy of this size takes
/// microseconds, so the caller's thread is not held for long.
pub const INLINE_WRITE_BYTES_MAX: usize = 64 << 10;

/// Default smallest O_DIRECT request (see [`UringOptions::direct_min_bytes`]).
pub const DIRECT_MIN_BYTES_DEFAULT: u64 = 256 << 10;

impl Default for UringOptions {
    fn default() -> Self {
        UringOptions {
            depth: DEPTH_DEFAULT,
            direct: true,
            direct_min_bytes: DIRECT_MIN_BYTES_DEFAULT,
            inline: true,
        }
    }
}

pub(crate) type Msg = (Request, Completion);

/// Counters of the engine's work since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UringStats {
    /// Requests handed to the ring thread.
    pub requests: u64,
    /// Eventfd writes that woke the sleeping ring thread.
    pub wakeups: u64,
    /// `io_uring_enter` calls made by the ring thread.
    pub enters: u64,
    /// Requests run on the caller's thread instead of the ring.
    pub inline: u64,
}

/// Wakes the ring thread, with a syscall only when it sleeps.
pub(crate) struct Waker {
    pub(crate) fd: OwnedFd,
    pub(crate) sleeping: AtomicBool,
    requests: AtomicU64,
    wakeups: AtomicU64,
    pub(crate) enters: AtomicU64,
    /// Requests handed to the ring thread and not yet answered: the inline
    /// path runs only when this is 0.
    pub(crate) in_flight: AtomicUsize,
    inline: AtomicU64,
}

impl Waker {
    fn wake(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            // A failed write leaves the thread asleep until its next
            // completion; there is nothing better to do with the error.
            let _ = sys::eventfd_signal(self.fd.as_raw_fd());
        }
    }
}

/// The disk a worker serves and how.
#[derive(Clone)]
pub(crate) struct Disk {
    pub(crate) file: Arc<File>,
    /// The O_DIRECT description and the smallest request sent through it.
    pub(crate) direct: Option<(Arc<File>, u64)>,
    /// Alignment O_DIRECT needs.
    pub(crate) align: u64,
    pub(crate) block: bool,
    /// Ring entries.
    pub(crate) depth: u32,
}

impl Disk {
    /// The O_DIRECT description, when the `rest` bytes at `pos` of a
    /// request of `len` bytes go through it: both aligned, and the request
    /// at least the direct minimum. The ring and the inline path choose
    /// with this, so a request takes the same path either way.
    pub(crate) fn direct_file(&self, pos: u64, rest: u64, len: u64) -> Option<&Arc<File>> {
        self.direct
            .as_ref()
            .filter(|(_, min)| pos % self.align == 0 && rest % self.align == 0 && len >= *min)
            .map(|(d, _)| d)
    }
}

/// A disk served by an io_uring on its own thread.
pub struct UringEngine {
    tx: Option<mpsc::Sender<Msg>>,
    waker: Arc<Waker>,
    /// The ring thread's disk, for the inline path.
    disk: Disk,
    inline: bool,
    size: u64,
    thread: Option<JoinHandle<()>>,
}

impl UringEngine {
    /// Serve the first `size` bytes of `file`.
    pub fn new(file: File, size: u64, opts: UringOptions) -> Result<UringEngine, StorageError> {
        let io = |source| StorageError::Io { offset: 0, source };
        let depth = opts.depth.clamp(2, 4096);
        let waker = Arc::new(Waker {
            fd: sys::eventfd().map_err(io)?,
            sleeping: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
            enters: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            inline: AtomicU64::new(0),
        });
        let direct = if opts.direct {
            sys::reopen_direct(&file).map(|f| (Arc::new(f), opts.direct_min_bytes))
        } else {
            None
        };
        let align = sys::direct_align(&file).map_err(io)?;
        let file = Arc::new(file);
        let block = sys::is_block_device(&file).map_err(io)?;
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let w_waker = waker.clone();
        let disk = Disk {
            file,
            direct,
            align,
            block,
            depth,
        };
        let ring_disk = disk.clone();
        // The ring is made on its own thread: it is set up single-issuer,
        // so only the thread that creates it may submit to it.
        let thread = std::thread::Builder::new()
            .name("geomirror-uring".into())
            .spawn(move || match sys::new_ring(depth) {
                Ok(ring) => {
                    let _ = ready_tx.send(Ok(()));
                    Worker::new(ring, rx, w_waker, ring_disk).run();
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(io)?;
        let started = ready_rx
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the ring thread died while starting")));
        if let Err(e) = started {
            let _ = thread.join();
            return Err(io(e));
        }
        Ok(UringEngine {
            tx: Some(tx),
            waker,
            disk,
            inline: opts.inline,
            size,
            thread: Some(thread),
        })
    }
}

impl UringEngine {
    /// What the engine has done so far (for benchmarks and diagnostics).
    pub fn stats(&self) -> UringStats {
        UringStats {
            requests: self.waker.requests.load(Ordering::Relaxed),
            wakeups: self.waker.wakeups.load(Ordering::Relaxed),
            enters: self.waker.enters.load(Ordering::Relaxed),
            inline: self.waker.inline.load(Ordering::Relaxed),
        }
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        // Closing the channel tells the thread to finish what is in flight
        // and exit; it does so within one completion's time.
        self.tx = None;
        self.waker.sleeping.store(true, Ordering::SeqCst);
        self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl BlockDevice for UringEngine {
    fn size(&self) -> u64 {
        self.size
    }

    fn submit(&self, req: Request, done: Completion) {
        if let Err(e) = request_range(&req, self.size) {
            let _ = done.send(Err(e));
            return;
        }
        let Some(tx) = &self.tx else {
            let _ = done.send(Err(StorageError::Stopped));
            return;
        };
        // Counted before the ring thread can answer it, so the count never
        // goes below zero.
        self.waker.in_flight.fetch_add(1, Ordering::SeqCst);
        if let Err(mpsc::SendError((_, done))) = tx.send((req, done)) {
            self.waker.in_flight.fetch_sub(1, Ordering::SeqCst);
            let _ = done.send(Err(StorageError::Stopped));
            return;
        }
        self.waker.requests.fetch_add(1, Ordering::Relaxed);
        self.waker.wake();
    }

    fn inline_ready(&self, req: &Request) -> bool {
        // A small write into the page cache is a memory copy of a few
        // microseconds, cheaper than the hops to the ring thread and, as
        // page-cache writes do not complete without blocking on every
        // filesystem (ext4 refuses RWF_NOWAIT), to an io-wq worker and back:
        // it runs here whatever else is in flight. What waits for the disk
        // (FUA, flush, O_DIRECT) does so only while the ring is idle, so
        // that no completion waits behind the caller's thread.
        let idle = self.waker.in_flight.load(Ordering::SeqCst) == 0;
        let ok = match req {
            Request::Write { offset, data, fua } => {
                let len = data.len() as u64;
                len <= INLINE_WRITE_BYTES_MAX as u64
                    && (idle || (!fua && self.disk.direct_file(*offset, len, len).is_none()))
            }
            Request::Flush => idle,
            _ => false,
        };
        self.inline && self.tx.is_some() && ok
    }

    fn run_inline(&self, req: Request) -> Inline {
        if !self.inline_ready(&req) {
            return Inline::Declined(req);
        }
        let io = |offset| move |source| StorageError::Io { offset, source };
        let r = match req {
            Request::Write { offset, data, fua } => {
                if let Err(e) = check_range(offset, data.len() as u64, self.size) {
                    return Inline::Done(Err(e));
                }
                // The same choice of description as the ring makes.
                let len = data.len() as u64;
                let file = self
                    .disk
                    .direct_file(offset, len, len)
                    .unwrap_or(&self.disk.file);
                let flags = if fua { sys::RWF_DSYNC } else { 0 };
                sys::pwrite_all(file, &data, offset, flags).map_err(io(offset))
            }
            // fdatasync covers every write completed before it, through
            // either description and from any thread (NBD `doc/proto.md`
            // "NBD_CMD_FLUSH"; CAN_MULTI_CONN relies on it).
            Request::Flush => self.disk.file.sync_data().map_err(io(0)),
            other => return Inline::Declined(other),
        };
        self.waker.inline.fetch_add(1, Ordering::Relaxed);
        Inline::Done(r.map(|()| Reply::Done))
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, StorageError> {
        check_range(offset, len, self.size)?;
        sys::extents(&self.disk.file, offset, len)
            .map_err(|source| StorageError::Io { offset, source })
    }
}

/// Checks a request against the disk size before it reaches the ring.
pub(crate) fn request_range(req: &Request, size: u64) -> Result<(), StorageError> {
    match req {
        Request::Read { offset, len } => check_range(*offset, u64::from(*len), size),
        Request::Write { offset, data, .. } => check_range(*offset, data.len() as u64, size),
        Request::Flush => Ok(()),
        Request::Trim { offset, len } | Request::WriteZeroes { offset, len, .. } => {
            check_range(*offset, *len, size)
        }
    }
}
