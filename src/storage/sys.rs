//! The kernel ABI the storage layer touches: block-device ioctls, fallocate
//! modes, SEEK_DATA/SEEK_HOLE, OFD locks, eventfd and io_uring setup.
//! Raw numbers live here and nowhere else.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

use io_uring::IoUring;

use super::Extent;

// Block-device ioctls from <linux/fs.h>: BLKSSZGET = _IO(0x12,104),
// BLKGETSIZE64 = _IOR(0x12,114,size_t), BLKDISCARD = _IO(0x12,119).
nix::ioctl_read_bad!(blk_sszget, nix::request_code_none!(0x12, 104), libc::c_int);
nix::ioctl_read!(blk_getsize64, 0x12, 114, u64);
nix::ioctl_write_ptr_bad!(blk_discard, nix::request_code_none!(0x12, 119), [u64; 2]);

/// fallocate mode that deallocates a range and keeps the file size: the
/// range reads back as zeroes.
pub const FALLOC_PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
/// fallocate mode that makes a range read as zeroes and stay allocated.
pub const FALLOC_ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
/// `pwritev2`/io_uring flag: this write is durable (as O_DSYNC) when it completes.
pub const RWF_DSYNC: i32 = libc::RWF_DSYNC;

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Whether `file` is a block device (as opposed to a regular file).
pub fn is_block_device(file: &File) -> io::Result<bool> {
    Ok(file.metadata()?.file_type().is_block_device())
}

/// Size in bytes of a regular file or a block device.
pub fn disk_size(file: &File) -> io::Result<u64> {
    if is_block_device(file)? {
        let mut size = 0u64;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which
        // points at a live local.
        unsafe { blk_getsize64(file.as_raw_fd(), &mut size) }.map_err(io::Error::from)?;
        Ok(size)
    } else {
        Ok(file.metadata()?.len())
    }
}

/// The alignment O_DIRECT needs for offsets, lengths and buffers: the
/// logical block size of a block device; 4096 for a regular file, which
/// covers every logical block size a filesystem sits on here.
pub fn direct_align(file: &File) -> io::Result<u64> {
    if is_block_device(file)? {
        let mut ssz: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int through the pointer to a live local.
        unsafe { blk_sszget(file.as_raw_fd(), &mut ssz) }.map_err(io::Error::from)?;
        Ok(u64::try_from(ssz).unwrap_or(4096).clamp(512, 4096))
    } else {
        Ok(4096)
    }
}

/// A second open file description of the same file with O_DIRECT, or None
/// where the filesystem refuses O_DIRECT (tmpfs, some FUSE filesystems).
/// Going through /proc/self/fd keeps the caller's description (and the OFD
/// lock it holds) untouched.
pub fn reopen_direct(file: &File) -> Option<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()
}

/// fallocate(2) on the calling thread.
pub fn fallocate(file: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let (off, len) = (to_off(offset)?, to_off(len)?);
    // SAFETY: fallocate on an open fd with integer arguments; no memory is passed.
    cvt(unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) }).map(drop)
}

/// Writes all of `data` at `offset` on the calling thread with
/// `pwritev2(2)`; `flags` is 0 or [`RWF_DSYNC`] (the write is durable when
/// this returns). Short writes continue; EINTR is retried, up to a bound.
pub fn pwrite_all(file: &File, data: &[u8], offset: u64, flags: i32) -> io::Result<()> {
    /// Consecutive EINTRs before giving up.
    const RETRIES_MAX: u32 = 16;
    let mut done = 0usize;
    let mut retries = 0;
    while done < data.len() {
        let rest = &data[done..];
        let iov = libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        };
        let off = to_off(offset + done as u64)?;
        // SAFETY: one iovec pointing into `data`, which outlives the call;
        // the kernel only reads from it.
        let n = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, off, flags) };
        if n > 0 {
            done += n as usize;
            retries = 0;
            continue;
        }
        let e = if n == 0 {
            io::Error::from(io::ErrorKind::WriteZero)
        } else {
            io::Error::last_os_error()
        };
        retries += 1;
        if e.raw_os_error() != Some(libc::EINTR) || retries > RETRIES_MAX {
            return Err(e);
        }
    }
    Ok(())
}

/// BLKDISCARD on a block device: the range's contents become undefined.
pub fn discard(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    let range = [offset, len];
    // SAFETY: BLKDISCARD reads two u64 (start, length) through the pointer,
    // which points at a live local array.
    unsafe { blk_discard(fd, &range) }
        .map(drop)
        .map_err(io::Error::from)
}

fn to_off(v: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Most extents reported for one query; the reply still covers the first
/// byte, and the caller asks again from where it stopped.
pub const EXTENTS_MAX: usize = 1024;

/// Allocation of `[offset, offset+len)` of a regular file from
/// SEEK_DATA/SEEK_HOLE; a block device or a filesystem without them is
/// reported as one allocated extent.
pub fn extents(file: &File, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
    let whole = vec![Extent { len, hole: false }];
    if len == 0 || is_block_device(file)? {
        return Ok(whole);
    }
    let fd = file.as_raw_fd();
    let end = offset + len;
    let mut out: Vec<Extent> = Vec::new();
    let mut push = |len: u64, hole: bool| match out.last_mut() {
        Some(last) if last.hole == hole => last.len += len,
        _ => out.push(Extent { len, hole }),
    };
    let mut pos = offset;
    let mut count = 0;
    while pos < end && count < EXTENTS_MAX {
        count += 1;
        let data = match seek(fd, pos, libc::SEEK_DATA) {
            Ok(d) => d.min(end),
            // ENXIO: no data at or after pos; the rest is a hole.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => end,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(whole),
            Err(e) => return Err(e),
        };
        if data > pos {
            push(data - pos, true);
            pos = data;
            continue;
        }
        let hole = match seek(fd, pos, libc::SEEK_HOLE) {
            Ok(h) => h.min(end),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => end,
            Err(e) => return Err(e),
        };
        // A file shorter than the range ends in an implicit hole at EOF.
        let hole = hole.max(pos + 1);
        push(hole - pos, false);
        pos = hole;
    }
    Ok(out)
}

fn seek(fd: RawFd, pos: u64, whence: libc::c_int) -> io::Result<u64> {
    // SAFETY: lseek on an open fd; no memory is passed.
    let r = unsafe { libc::lseek(fd, to_off(pos)?, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

/// Outcome of trying to take an OFD lock.
#[derive(Debug, PartialEq, Eq)]
pub enum LockOutcome {
    Taken,
    /// Another open file description holds a conflicting lock.
    Busy,
}

/// Takes a whole-file write lock owned by this open file description
/// (`F_OFD_SETLK`): it is released when the description's last fd closes,
/// and a second open of the file, even in this process, conflicts with it.
pub fn ofd_write_lock(file: &File) -> io::Result<LockOutcome> {
    // SAFETY: flock is plain data; all-zero is a valid value before we set fields.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = 0;
    // To the end of the file, however it grows.
    fl.l_len = 0;
    // Required 0 for OFD locks.
    fl.l_pid = 0;
    // SAFETY: F_OFD_SETLK reads the flock struct through a pointer to a live local.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if rc == 0 {
        return Ok(LockOutcome::Taken);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(LockOutcome::Busy),
        _ => Err(e),
    }
}

/// An eventfd in blocking mode (io_uring polls it; writers never block in
/// practice since the counter cannot reach its 2^64-1 limit).
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd has no memory arguments; a non-negative result is a
    // new fd that we own.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })?;
    // SAFETY: fd was just returned by eventfd and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add 1 to an eventfd's counter, waking whoever reads it.
pub fn eventfd_signal(fd: RawFd) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local u64 to an open eventfd.
    let n = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    if n == 8 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An io_uring of `depth` entries, with a completion queue twice as deep
/// (the kernel default) so it cannot overflow while at most `depth`
/// operations are in flight. Single issuer with deferred task work: only
/// the creating thread submits, and completions are run when it enters the
/// ring to wait, rather than by interrupting it.
pub fn new_ring(depth: u32) -> io::Result<IoUring> {
    let tuned = IoUring::builder()
        .setup_clamp()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(depth);
    let ring = match tuned {
        // Kernels before 6.1 lack these flags: a plain ring works the same.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            IoUring::builder().setup_clamp().build(depth)?
        }
        r => r?,
    };
    // Writes the filesystem cannot start without blocking (most ext4
    // writes: page-cache writes, O_DIRECT writes that must update mtime)
    // run on io_uring's worker threads, by default at most 4 per CPU for
    // disk I/O; allow one per ring entry so the queue depth is real.
    let mut max = [depth, 0];
    if let Err(e) = ring.submitter().register_iowq_max_workers(&mut max) {
        tracing::debug!("io_uring worker limit left as is: {e}");
    }
    Ok(ring)
}
