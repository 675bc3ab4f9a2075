//! The FUSE file system of a faulty disk: a root directory with one regular
//! file, passed through to a real file after the faults in force are checked.
//!
//! The file is opened with FOPEN_DIRECT_IO, so the kernel keeps no page cache
//! for it: every read, write and sync of every process reaches this code and
//! can fail, as on a disk behind a controller that reports errors. Locks stay
//! with the kernel (no FUSE_POSIX_LOCKS is asked for at init), so OFD and
//! POSIX locks work between the processes of this machine as on any local
//! file.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, KernelConfig,
    LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::faults::{Faults, Op};

/// The inode of the one file.
const FILE_INO: INodeNo = INodeNo(2);
/// Attributes are not cached: the size follows the backing file at once
/// (`format --size` grows it through setattr).
const ATTR_TTL: Duration = Duration::ZERO;
/// Largest request the kernel sends (it splits larger ones): what geomirror's
/// largest O_DIRECT write is, so a write reaches the faults in one piece.
const WRITE_BYTES_MAX: u32 = 1 << 20;

/// One file (`name`) passed through to `backing`.
pub struct PassThrough {
    backing: File,
    name: OsString,
    faults: Arc<Faults>,
}

impl PassThrough {
    pub fn new(backing: File, name: &str, faults: Arc<Faults>) -> PassThrough {
        PassThrough {
            backing,
            name: OsString::from(name),
            faults,
        }
    }

    fn attr(&self, ino: INodeNo) -> io::Result<FileAttr> {
        let m = self.backing.metadata()?;
        let time = |secs: i64, nsecs: i64| {
            UNIX_EPOCH
                + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
                + Duration::from_nanos(u64::try_from(nsecs).unwrap_or(0))
        };
        let file = ino == FILE_INO;
        Ok(FileAttr {
            ino,
            size: if file { m.len() } else { 0 },
            blocks: if file { m.blocks() } else { 0 },
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            crtime: SystemTime::UNIX_EPOCH,
            kind: if file {
                FileType::RegularFile
            } else {
                FileType::Directory
            },
            perm: if file { 0o644 } else { 0o755 },
            nlink: if file { 1 } else { 2 },
            uid: m.uid(),
            gid: m.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn reply_attr(&self, ino: INodeNo, reply: ReplyAttr) {
        match self.attr(ino) {
            Ok(a) => reply.attr(&ATTR_TTL, &a),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// Fails the request when a fault matches it.
    fn fault(&self, req: &Request, op: Op, offset: u64, len: u64) -> Result<(), Errno> {
        match self
            .faults
            .check(op, offset..offset.saturating_add(len), req.pid())
        {
            Some(e) => Err(Errno::from_i32(e)),
            None => Ok(()),
        }
    }

    fn sync(&self, req: &Request, all: bool) -> Result<(), Errno> {
        self.fault(req, Op::Sync, 0, 0)?;
        let r = if all {
            self.backing.sync_all()
        } else {
            self.backing.sync_data()
        };
        r.map_err(|e| errno(&e))
    }
}

fn errno(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

impl Filesystem for PassThrough {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // The kernel clamps to what it supports; a smaller value only splits
        // large writes, which the faults then see piece by piece.
        let _ = config.set_max_write(WRITE_BYTES_MAX);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent != INodeNo::ROOT || name != self.name {
            return reply.error(Errno::ENOENT);
        }
        match self.attr(FILE_INO) {
            Ok(a) => reply.entry(&ATTR_TTL, &a, fuser::Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino != INodeNo::ROOT && ino != FILE_INO {
            return reply.error(Errno::ENOENT);
        }
        self.reply_attr(ino, reply);
    }

    /// Size changes (truncate, `format --size` growing the file) pass
    /// through; owner, mode and times are not kept.
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        if let Some(len) = size {
            if let Err(e) = self.backing.set_len(len) {
                return reply.error(errno(&e));
            }
        }
        self.reply_attr(ino, reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        self.faults.opened(flags.0 & libc::O_DIRECT != 0);
        // No page cache, so every request reaches the faults; writes never
        // extend the file under the inode lock, so they may run in parallel.
        reply.opened(
            FileHandle(0),
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES,
        );
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        if let Err(e) = self.fault(req, Op::Read, offset, size.into()) {
            return reply.error(e);
        }
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        // Short only at the end of the file.
        while done < buf.len() {
            match self.backing.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(errno(&e)),
            }
        }
        self.faults.done(Op::Read, done as u64);
        reply.data(&buf[..done]);
    }

    /// A write with O_DSYNC or O_SYNC (the kernel sets them for RWF_DSYNC,
    /// FUA in geomirror's terms) is durable when answered, so it is also a
    /// sync request: a sync fault fails it after its data is written, as a
    /// disk that cannot flush its cache does.
    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        if let Err(e) = self.fault(req, Op::Write, offset, data.len() as u64) {
            return reply.error(e);
        }
        if let Err(e) = self.backing.write_all_at(data, offset) {
            return reply.error(errno(&e));
        }
        self.faults.done(Op::Write, data.len() as u64);
        if flags.0 & (libc::O_DSYNC | libc::O_SYNC) != 0 {
            if let Err(e) = self.sync(req, false) {
                return reply.error(e);
            }
        }
        reply.written(u32::try_from(data.len()).expect("a FUSE write is at most max_write"));
    }

    /// close(2) is not a durability point: nothing to do.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.sync(req, !datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// Every fallocate (punch, zero range, allocate) changes the file's
    /// blocks, so a write fault over its range fails it.
    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        if let Err(e) = self.fault(req, Op::Write, offset, length) {
            return reply.error(e);
        }
        let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(length)) else {
            return reply.error(Errno::EINVAL);
        };
        // SAFETY: fallocate on an fd we own, with integer arguments only.
        let rc = unsafe { libc::fallocate(self.backing.as_raw_fd(), mode, off, len) };
        if rc < 0 {
            return reply.error(errno(&io::Error::last_os_error()));
        }
        reply.ok();
    }

    /// SEEK_DATA and SEEK_HOLE (the only ones the kernel forwards) answered
    /// by the backing file, so extent queries see its holes.
    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        // SAFETY: lseek on an fd we own; no memory is passed. Reads and
        // writes here are positional, so moving the fd's offset is harmless.
        let r = unsafe { libc::lseek(self.backing.as_raw_fd(), offset, whence) };
        if r < 0 {
            return reply.error(errno(&io::Error::last_os_error()));
        }
        reply.offset(r);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, OsStr::new(".")),
            (INodeNo::ROOT, FileType::Directory, OsStr::new("..")),
            (FILE_INO, FileType::RegularFile, self.name.as_os_str()),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}
