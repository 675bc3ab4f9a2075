//! The ring thread of the io_uring engine: turns requests into SQEs,
//! continues short transfers, retries interrupted ones, falls back where
//! fallocate is refused, and answers each request exactly once.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;

use io_uring::{opcode, types, IoUring};

use super::sys;
use super::uring::{Disk, Msg, Waker};
use super::{Completion, IoBuf, Reply, Request, UninitBuf};

/// Retries of one operation interrupted by EINTR/EAGAIN before giving up.
const RETRIES_MAX: u32 = 16;
/// Largest single write used to zero a range where fallocate cannot.
pub(crate) const ZERO_CHUNK_BYTES: usize = 1 << 20;
/// user_data of the eventfd read; operations use their slot index.
const WAKE_TOKEN: u64 = u64::MAX;

/// What an operation in the ring is doing now.
enum Step {
    Read,
    Write {
        fua: bool,
    },
    Flush,
    /// fallocate with `mode`; on refusal, `fallback` says what to try next.
    Fallocate {
        mode: i32,
        fallback: Fallback,
    },
    /// Write zeroes from the shared zero buffer, chunk by chunk.
    WriteZeroes,
}

#[derive(Clone, Copy)]
enum Fallback {
    /// Trim on a block device: BLKDISCARD (contents become undefined, which
    /// NBD `doc/proto.md` "NBD_CMD_TRIM" allows).
    Discard,
    /// Make the range zero by writing zeroes.
    Write,
}

struct Op {
    step: Step,
    offset: u64,
    len: u64,
    /// Bytes done so far: short reads and writes continue from here.
    done_bytes: u64,
    /// A write's data.
    buf: Option<IoBuf>,
    /// A read's destination, filled as completions arrive (never zeroed:
    /// the kernel overwrites it whole).
    dest: Option<UninitBuf>,
    retries: u32,
    completion: Completion,
}

pub(crate) struct Worker {
    ring: IoUring,
    rx: mpsc::Receiver<Msg>,
    waker: Arc<Waker>,
    disk: Disk,
    /// Slot per operation in flight; the index is the SQE's user_data.
    ops: Vec<Option<Op>>,
    free: Vec<usize>,
    zeroes: IoBuf,
    /// Target of the armed eventfd read; boxed so its address is stable.
    wake_buf: Box<u64>,
    wake_armed: bool,
    closed: bool,
}

impl Worker {
    /// A worker for `ring` serving `disk`, taking requests from `rx`.
    pub(crate) fn new(
        ring: IoUring,
        rx: mpsc::Receiver<Msg>,
        waker: Arc<Waker>,
        disk: Disk,
    ) -> Worker {
        let slots = disk.depth as usize - 1; // one entry is the eventfd read
        Worker {
            ring,
            rx,
            waker,
            disk,
            ops: (0..slots).map(|_| None).collect(),
            free: (0..slots).rev().collect(),
            zeroes: IoBuf::zeroed(ZERO_CHUNK_BYTES),
            wake_buf: Box::new(0),
            wake_armed: false,
            closed: false,
        }
    }

    pub(crate) fn run(mut self) {
        loop {
            self.take_requests();
            let in_flight = self.ops.len() - self.free.len();
            if self.closed && in_flight == 0 {
                break;
            }
            if !self.closed && !self.wake_armed {
                self.arm_wake();
            }
            // Announce sleep, then look once more: a request sent after
            // this check finds `sleeping` set and writes the eventfd.
            let mut wait = 1;
            self.waker.sleeping.store(true, Ordering::SeqCst);
            if self.take_requests() > 0 {
                self.waker.sleeping.store(false, Ordering::SeqCst);
                wait = 0;
            }
            self.waker.enters.fetch_add(1, Ordering::Relaxed);
            match self.ring.submit_and_wait(wait) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // EBUSY: completions must be reaped before more submits.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => {
                    tracing::error!("io_uring_enter failed: {e}; the engine stops");
                    return self.abandon(e);
                }
            }
            self.waker.sleeping.store(false, Ordering::SeqCst);
            self.reap();
        }
        if self.wake_armed {
            // Complete our own eventfd read so nothing in the ring still
            // points at wake_buf when the ring is torn down.
            let _ = sys::eventfd_signal(self.waker.fd.as_raw_fd());
            while self.wake_armed && self.ring.submit_and_wait(1).is_ok() {
                self.reap();
            }
        }
    }

    /// The ring is unusable: answer every operation with the error, and
    /// leak the buffers, since the kernel may still write into them.
    fn abandon(mut self, e: std::io::Error) {
        for op in self.ops.drain(..).flatten() {
            let source = std::io::Error::new(e.kind(), format!("io_uring failed: {e}"));
            let reply = Err(super::StorageError::Io {
                offset: op.offset,
                source,
            });
            let _ = op.completion.send(reply);
            std::mem::forget(op.buf);
        }
        std::mem::forget(self.zeroes);
        std::mem::forget(self.wake_buf);
        std::mem::forget(self.ring);
    }

    /// Moves queued requests into free slots; returns how many started.
    fn take_requests(&mut self) -> usize {
        let mut started = 0;
        while !self.free.is_empty() {
            let msg = match self.rx.try_recv() {
                Ok(m) => m,
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.closed = true;
                    break;
                }
            };
            self.start(msg);
            started += 1;
        }
        started
    }

    fn arm_wake(&mut self) {
        let sqe = opcode::Read::new(
            types::Fd(self.waker.fd.as_raw_fd()),
            (&mut *self.wake_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(WAKE_TOKEN);
        // SAFETY: wake_buf is boxed and lives in self until the read has
        // completed (run() waits for it before returning).
        if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
            self.wake_armed = true;
        }
    }

    fn start(&mut self, (req, completion): Msg) {
        let mut dest = None;
        let (step, offset, len, buf) = match req {
            Request::Read { offset, len } => {
                dest = Some(IoBuf::uninit(len as usize));
                (Step::Read, offset, u64::from(len), None)
            }
            Request::Write { offset, data, fua } => {
                (Step::Write { fua }, offset, data.len() as u64, Some(data))
            }
            Request::Flush => (Step::Flush, 0, 0, None),
            Request::Trim { offset, len } => {
                let fallback = if self.disk.block {
                    Fallback::Discard
                } else {
                    Fallback::Write
                };
                let step = Step::Fallocate {
                    mode: sys::FALLOC_PUNCH,
                    fallback,
                };
                (step, offset, len, None)
            }
            Request::WriteZeroes { offset, len, punch } => {
                let mode = if punch {
                    sys::FALLOC_PUNCH
                } else {
                    sys::FALLOC_ZERO
                };
                let step = Step::Fallocate {
                    mode,
                    fallback: Fallback::Write,
                };
                (step, offset, len, None)
            }
        };
        if len == 0 && !matches!(step, Step::Flush) {
            self.waker.in_flight.fetch_sub(1, Ordering::SeqCst);
            let _ = completion.send(Ok(match dest {
                Some(d) => Reply::Read(d.into_filled()),
                None => Reply::Done,
            }));
            return;
        }
        let slot = self
            .free
            .pop()
            .expect("start is called only with a free slot");
        self.ops[slot] = Some(Op {
            step,
            offset,
            len,
            done_bytes: 0,
            buf,
            dest,
            retries: 0,
            completion,
        });
        self.push(slot);
    }

    /// Queues the next SQE of the operation in `slot`.
    fn push(&mut self, slot: usize) {
        let op = self.ops[slot]
            .as_mut()
            .expect("push is called on a live slot");
        let pos = op.offset + op.done_bytes;
        let rest = op.len - op.done_bytes;
        let file = self
            .disk
            .direct_file(pos, rest, op.len)
            .unwrap_or(&self.disk.file);
        let fd = types::Fd(file.as_raw_fd());
        // A single SQE moves at most u32::MAX bytes; requests are u32-sized
        // already, so this only bounds zero-writing.
        let chunk = rest.min(u64::from(u32::MAX)) as u32;
        let done = op.done_bytes as usize;
        let sqe = match op.step {
            Step::Read => {
                let dest = op.dest.as_mut().expect("reads carry a destination");
                debug_assert_eq!(dest.filled(), done);
                // The spare part starts at `done` and is `rest` >= chunk long.
                opcode::Read::new(fd, dest.spare_ptr(), chunk)
                    .offset(pos)
                    .build()
            }
            Step::Write { fua } => {
                let buf = op.buf.as_ref().expect("writes carry a buffer");
                // SAFETY: done <= len = buf.len(); the pointer stays in the buffer.
                let ptr = unsafe { buf.as_ptr().add(done) };
                let flags = if fua { sys::RWF_DSYNC } else { 0 };
                opcode::Write::new(fd, ptr, chunk)
                    .offset(pos)
                    .rw_flags(flags)
                    .build()
            }
            Step::Flush => opcode::Fsync::new(types::Fd(self.disk.file.as_raw_fd()))
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Step::Fallocate { mode, .. } => {
                opcode::Fallocate::new(types::Fd(self.disk.file.as_raw_fd()), rest)
                    .offset(pos)
                    .mode(mode)
                    .build()
            }
            Step::WriteZeroes => {
                let n = rest.min(ZERO_CHUNK_BYTES as u64) as u32;
                let fd = if pos % self.disk.align == 0 && u64::from(n) % self.disk.align == 0 {
                    fd
                } else {
                    types::Fd(self.disk.file.as_raw_fd())
                };
                opcode::Write::new(fd, self.zeroes.as_ptr(), n)
                    .offset(pos)
                    .build()
            }
        };
        let sqe = sqe.user_data(slot as u64);
        // SAFETY: the buffers the SQE points into (the op's IoBuf, the shared
        // zero buffer) stay alive and unmoved in self until its CQE is reaped.
        while unsafe { self.ring.submission().push(&sqe) }.is_err() {
            // The SQ is as deep as the slots plus the wake read, so it is
            // full only with SQEs not yet handed to the kernel: hand them over.
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() != Some(libc::EBUSY) && e.raw_os_error() != Some(libc::EINTR) {
                    self.finish(slot, Err(e));
                    return;
                }
            }
        }
    }

    fn reap(&mut self) {
        let done: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (token, res) in done {
            if token == WAKE_TOKEN {
                self.wake_armed = false;
            } else {
                self.complete(token as usize, res);
            }
        }
    }

    fn complete(&mut self, slot: usize, res: i32) {
        let block_fd = self.disk.file.as_raw_fd();
        let Some(op) = self.ops.get_mut(slot).and_then(Option::as_mut) else {
            tracing::error!("io_uring completion for unknown slot {slot}");
            return;
        };
        if res < 0 {
            let errno = -res;
            if (errno == libc::EINTR || errno == libc::EAGAIN) && op.retries < RETRIES_MAX {
                op.retries += 1;
                return self.push(slot);
            }
            if let Step::Fallocate { fallback, .. } = op.step {
                if matches!(errno, libc::EOPNOTSUPP | libc::EINVAL | libc::ENODEV) {
                    match fallback {
                        Fallback::Discard => {
                            let r = sys::discard(block_fd, op.offset, op.len);
                            return self.finish(slot, r);
                        }
                        Fallback::Write => {
                            op.step = Step::WriteZeroes;
                            return self.push(slot);
                        }
                    }
                }
            }
            return self.finish(slot, Err(std::io::Error::from_raw_os_error(errno)));
        }
        let n = res as u64;
        match op.step {
            Step::Read | Step::Write { .. } | Step::WriteZeroes => {
                if n == 0 {
                    let e = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                    return self.finish(slot, Err(e));
                }
                if let (Step::Read, Some(dest)) = (&op.step, op.dest.as_mut()) {
                    if n > dest.remaining() as u64 {
                        let e = std::io::Error::other("io_uring read returned more than asked");
                        return self.finish(slot, Err(e));
                    }
                    // SAFETY: the kernel wrote n bytes at the spare pointer
                    // this read was submitted with (n is within it, above).
                    unsafe { dest.advance(n as usize) };
                }
                op.done_bytes += n;
                op.retries = 0;
                if op.done_bytes < op.len {
                    return self.push(slot);
                }
                self.finish(slot, Ok(()))
            }
            Step::Flush | Step::Fallocate { .. } => self.finish(slot, Ok(())),
        }
    }

    /// Answers the operation in `slot` and frees the slot.
    fn finish(&mut self, slot: usize, res: std::io::Result<()>) {
        let Some(op) = self.ops[slot].take() else {
            return;
        };
        self.free.push(slot);
        self.waker.in_flight.fetch_sub(1, Ordering::SeqCst);
        let reply = match res {
            Err(source) => Err(super::StorageError::Io {
                offset: op.offset + op.done_bytes,
                source,
            }),
            Ok(()) => Ok(match op.dest {
                Some(dest) => Reply::Read(
                    dest.finish()
                        .expect("a read finishes once all its bytes arrived"),
                ),
                None => Reply::Done,
            }),
        };
        let _ = op.completion.send(reply);
    }
}
