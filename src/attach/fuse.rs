//! The volume as one file in a FUSE mount (`DIR/<name>`), for machines
//! without the nbd module: reads and writes go to the export through
//! [`NbdClient`], fsync becomes NBD_CMD_FLUSH.

use super::error::AttachError;
use super::pipeline::NbdClient;
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, KernelConfig,
    LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Attempts at unmounting while the mount is briefly busy (a process
/// closing the file, a child still holding an inherited descriptor).
const UNMOUNT_ATTEMPTS_MAX: u32 = 50;
/// Pause between those attempts.
const UNMOUNT_RETRY_MS: u64 = 100;
/// Threads serving FUSE requests: each can have one NBD request in flight.
pub const FUSE_THREADS: usize = 4;
/// Largest write the kernel sends us in one request.
const FUSE_WRITE_BYTES_MAX: u32 = 1 << 20;
/// How long the kernel may cache names and attributes (they never change).
const ATTR_TTL: Duration = Duration::from_secs(60);
const FILE_INO: INodeNo = INodeNo(2);

/// The filesystem: a root directory holding the volume file.
pub struct VolumeFs {
    client: Arc<NbdClient>,
    name: OsString,
    uid: u32,
    gid: u32,
    mounted_at: SystemTime,
}

impl VolumeFs {
    pub fn new(client: Arc<NbdClient>, name: &str) -> VolumeFs {
        VolumeFs {
            client,
            name: OsString::from(name),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            mounted_at: SystemTime::now(),
        }
    }

    fn attr(&self, ino: INodeNo) -> FileAttr {
        let file = ino == FILE_INO;
        let size = if file { self.client.info().size } else { 0 };
        let perm = match (file, self.client.info().read_only()) {
            (false, _) => 0o755,
            (true, true) => 0o444,
            (true, false) => 0o644,
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind: if file {
                FileType::RegularFile
            } else {
                FileType::Directory
            },
            perm,
            nlink: if file { 1 } else { 2 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn known(ino: INodeNo) -> bool {
        ino == INodeNo::ROOT || ino == FILE_INO
    }

    /// Reads `[offset, offset+len)`, widened to the export's block size
    /// when the kernel asks for a misaligned range.
    fn read_range(&self, offset: u64, len: u32) -> Result<Vec<u8>, AttachError> {
        let min = u64::from(self.client.info().block_min);
        let start = offset - offset % min;
        let end = (offset + u64::from(len)).div_ceil(min) * min;
        let wide = u32::try_from(end - start)
            .map_err(|_| AttachError::InvalidRequest("read too large".into()))?;
        let data = self.client.read(start, wide)?;
        let skip = (offset - start) as usize;
        Ok(data[skip..skip + len as usize].to_vec())
    }
}

fn errno(e: &AttachError) -> Errno {
    tracing::warn!("volume I/O failed: {e}");
    Errno::from_i32(e.errno())
}

impl Filesystem for VolumeFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let max = FUSE_WRITE_BYTES_MAX.min(self.client.request_bytes_max());
        // The kernel clamps to what it supports; either value is fine.
        let _ = config.set_max_write(max);
        let _ = config.set_max_readahead(max);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.client.flush() {
            tracing::warn!("final flush failed: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == self.name {
            reply.entry(&ATTR_TTL, &self.attr(FILE_INO), fuser::Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if Self::known(ino) {
            reply.attr(&ATTR_TTL, &self.attr(ino));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

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
        if !Self::known(ino) {
            return reply.error(Errno::ENOENT);
        }
        // The volume has a fixed size: only a no-op truncate is accepted.
        // Owner, mode and times are not stored and are silently kept.
        match size {
            Some(s) if ino != FILE_INO || s != self.client.info().size => {
                reply.error(Errno::EINVAL)
            }
            _ => reply.attr(&ATTR_TTL, &self.attr(ino)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino != FILE_INO {
            return reply.error(if ino == INodeNo::ROOT {
                Errno::EISDIR
            } else {
                Errno::ENOENT
            });
        }
        if flags.acc_mode() != OpenAccMode::O_RDONLY && self.client.info().read_only() {
            return reply.error(Errno::EROFS);
        }
        // Writes never extend the file, so O_DIRECT writers need not be
        // serialised on the inode lock: the NBD client keeps them in flight
        // together, as a block device would.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES);
    }

    fn read(
        &self,
        _req: &Request,
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
        let vol = self.client.info().size;
        if offset >= vol {
            return reply.data(&[]);
        }
        let len = u64::from(size).min(vol - offset) as u32;
        match self.read_range(offset, len) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
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
        let vol = self.client.info().size;
        if offset >= vol {
            return reply.error(Errno::ENOSPC);
        }
        // A write running past the end is cut short, as on a block device.
        let n = (data.len() as u64).min(vol - offset) as usize;
        let fua = flags.0 & (libc::O_SYNC | libc::O_DSYNC) != 0;
        match self.client.write(offset, &data[..n], fua) {
            Ok(()) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) is not a durability point; fsync is.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.client.flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// Discards from a loop device arrive as PUNCH_HOLE|KEEP_SIZE, zeroing
    /// as ZERO_RANGE: both become NBD_CMD_WRITE_ZEROES. Plain allocation is
    /// a no-op (the volume is all there); growing it is refused.
    fn fallocate(
        &self,
        _req: &Request,
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
        let vol = self.client.info().size;
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let end = offset.saturating_add(length);
        if end > vol && !keep_size {
            return reply.error(Errno::EFBIG);
        }
        let length = end.min(vol).saturating_sub(offset);
        let zero = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !(zero | libc::FALLOC_FL_KEEP_SIZE) != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        if mode & zero == 0 || length == 0 {
            return reply.ok();
        }
        match self.client.write_zeroes(offset, length) {
            Ok(()) => reply.ok(),
            Err(e) if e.errno() == libc::EOPNOTSUPP => reply.error(Errno::EOPNOTSUPP),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// No extended attributes are stored; say so without noise.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
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

/// Mounts the volume at `dir` as `dir/<name>`; unmounted when the returned
/// session is dropped or [`fuser::BackgroundSession::umount_and_join`]ed.
pub fn mount(
    client: Arc<NbdClient>,
    dir: &Path,
    name: &str,
) -> Result<fuser::BackgroundSession, AttachError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(AttachError::InvalidRequest(format!(
            "{name:?} cannot be a file name"
        )));
    }
    let read_only = client.info().read_only();
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::FSName(format!("geomirror:{name}")),
        MountOption::Subtype("geomirror".into()),
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
        if read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    cfg.n_threads = Some(FUSE_THREADS);
    let fs = VolumeFs::new(client, name);
    fuser::spawn_mount(fs, dir, &cfg).map_err(|cause| AttachError::Fuse {
        dir: dir.display().to_string(),
        cause,
    })
}

/// Unmounts `dir` and stops the session, retrying a bounded number of times
/// while the mount is busy rather than failing on a transient holder.
pub fn unmount(session: fuser::BackgroundSession, dir: &Path) -> Result<(), AttachError> {
    let err = |cause| AttachError::Fuse {
        dir: dir.display().to_string(),
        cause,
    };
    for _ in 0..UNMOUNT_ATTEMPTS_MAX {
        match nix::mount::umount2(dir, nix::mount::MntFlags::empty()) {
            Err(nix::errno::Errno::EBUSY) => {
                std::thread::sleep(Duration::from_millis(UNMOUNT_RETRY_MS));
            }
            // Unmounted now, or already (EINVAL: someone ran umount): the
            // session ends by itself. (fuser then tries its own unmount once
            // more when dropped, and logs that it found nothing to unmount.)
            Ok(()) | Err(nix::errno::Errno::EINVAL) => return session.join().map_err(err),
            // EPERM: not root, fuser unmounts through fusermount3.
            Err(_) => break,
        }
    }
    session.umount_and_join().map_err(err)
}
