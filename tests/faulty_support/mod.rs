//! A disk that fails on command: one file in a FUSE mount served by the test
//! process, passed through to a real file, whose requests fail once a fault is on.
//!
//! The kernel here has no dm-error or dm-flakey; FUSE stands in for them.
//! `geomirror format`, `serve --disk` and `up` use the file unchanged (OFD
//! lock, O_DIRECT, io_uring, fdatasync, fallocate, SEEK_DATA); the test
//! switches faults on and off while they run ([`FaultyDisk::fail`],
//! [`FaultyDisk::heal`]) and reads what the disk saw
//! ([`FaultyDisk::counters`]). A fault can be limited to one process, so
//! the same disk fails for one member and not for the next host of its site.
//!
//! Dropping the disk unmounts it, also while a test unwinds from a panic;
//! declare it before the processes that use it, so that they are killed
//! first (locals drop in reverse order). A test process killed outright
//! leaves a dead mount behind, which the next [`FaultyDisk::new`] removes.
#![allow(dead_code)]

mod faults;
mod fs;

#[allow(unused_imports)]
pub use faults::{Counters, Fault, Faults, Op, OpCounts};

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, Config, MountOption};
use nix::mount::MntFlags;

use crate::common;

/// The name of the file in the mount.
pub const FILE_NAME: &str = "disk.img";
/// The mount's source is `geomirror-faulty:MOUNTPOINT` (in mountinfo): how a
/// dead mount left by a killed test is recognised.
const FS_NAME: &str = "geomirror-faulty";
/// Threads serving requests: a sync that waits for the backing disk does
/// not hold up the reads and writes of other processes.
const THREADS: usize = 4;
/// How long an unmount may wait for the last process using the file to
/// close it (a child killed just before is still being torn down).
const UNMOUNT_PATIENCE: Duration = Duration::from_secs(10);
const UNMOUNT_RETRY_MS: u64 = 50;

/// Whether this machine can mount a faulty disk: root and `/dev/fuse`.
/// False (said loudly) when it cannot; panics instead under
/// [`common::strict`], so CI never skips silently.
#[must_use]
pub fn require_fuse() -> bool {
    if !common::require_root() {
        return false;
    }
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    let msg = "SKIPPED: this test needs /dev/fuse (modprobe fuse)";
    if common::strict() {
        panic!("{msg}");
    }
    eprintln!("\n*** {msg} ***\n");
    false
}

/// A mounted faulty disk. Its file is [`FaultyDisk::path`]; the real file
/// behind it is [`FaultyDisk::backing`].
pub struct FaultyDisk {
    faults: Arc<Faults>,
    path: PathBuf,
    backing: PathBuf,
    mountpoint: PathBuf,
    /// The mount's device number: names its connection in fusectl.
    dev: u64,
    /// The threads serving the mount; None once unmounted.
    fuse: Option<BackgroundSession>,
    /// Dropped last (fields drop after `Drop::drop`), once unmounted.
    dir: tempfile::TempDir,
}

impl FaultyDisk {
    /// Mounts a disk of `size_bytes` (a sparse file, reading as zeroes) in a
    /// fresh temp dir, with no fault in force. Panics when it cannot mount:
    /// check [`require_fuse`] first.
    pub fn new(size_bytes: u64) -> FaultyDisk {
        sweep_dead_mounts();
        let dir = common::tempdir();
        let backing = dir.path().join("backing.img");
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).expect("create the mount point");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&backing)
            .expect("create the backing file");
        file.set_len(size_bytes).expect("size the backing file");
        let faults = Arc::new(Faults::default());
        let fuse = mount(file, &mountpoint, faults.clone())
            .unwrap_or_else(|e| panic!("mount a FUSE disk at {}: {e}", mountpoint.display()));
        let path = mountpoint.join(FILE_NAME);
        let dev = std::fs::metadata(&mountpoint)
            .expect("stat the mount")
            .dev();
        FaultyDisk {
            faults,
            path,
            backing,
            mountpoint,
            dev,
            fuse: Some(fuse),
            dir,
        }
    }

    /// The disk as processes see it: `MOUNT/disk.img`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The real file behind the disk, for checking what reached it without
    /// going through the faults.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Where the file system is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The temp dir holding the mount point and the backing file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The faults and counters, to switch faults from another thread.
    pub fn faults(&self) -> Arc<Faults> {
        self.faults.clone()
    }

    /// Switches a fault on for `op`, from the next request on; faults add up.
    pub fn fail(&self, op: Op, fault: Fault) {
        self.faults.fail(op, fault);
    }

    /// Switches off the faults of `op`.
    pub fn heal_op(&self, op: Op) {
        self.faults.heal_op(op);
    }

    /// Switches off every fault: the disk works again.
    pub fn heal(&self) {
        self.faults.heal();
    }

    /// What the disk has seen since it was mounted.
    pub fn counters(&self) -> Counters {
        self.faults.counters()
    }

    /// Unmounts now (as dropping does), reporting a failure instead of
    /// leaving the mount detached.
    pub fn unmount(mut self) -> io::Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> io::Result<()> {
        let Some(fuse) = self.fuse.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + UNMOUNT_PATIENCE;
        loop {
            match nix::mount::umount2(&self.mountpoint, MntFlags::empty()) {
                // Unmounted (or by someone else already): the serving
                // threads see the connection end and return.
                Ok(()) | Err(nix::errno::Errno::EINVAL) => return fuse.join(),
                Err(nix::errno::Errno::EBUSY) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(UNMOUNT_RETRY_MS));
                }
                Err(e) => {
                    // Still held: take the mount out of the tree so nothing
                    // stale stays visible. Where fusectl is mounted, end the
                    // connection too (the holder's requests then fail), so
                    // the threads can be joined; elsewhere they go on serving
                    // the holder until its last close.
                    let _ = nix::mount::umount2(&self.mountpoint, MntFlags::MNT_DETACH);
                    if abort_connection(self.dev) {
                        let _ = fuse.join();
                    } else {
                        // The threads end with the holder's last close.
                        std::mem::forget(fuse);
                    }
                    return Err(io::Error::other(format!(
                        "{} was still in use after {UNMOUNT_PATIENCE:?} ({e}): detached",
                        self.mountpoint.display()
                    )));
                }
            }
        }
    }
}

impl Drop for FaultyDisk {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            eprintln!("faulty disk: {e}");
        }
    }
}

/// Whether something is mounted at `at` (mountinfo's fifth field).
pub fn is_mounted(at: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| {
        info.lines()
            .any(|l| l.split(' ').nth(4).is_some_and(|p| Path::new(p) == at))
    })
}

fn mount(file: File, at: &Path, faults: Arc<Faults>) -> io::Result<BackgroundSession> {
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::FSName(format!("{FS_NAME}:{}", at.display())),
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::RW,
    ];
    cfg.n_threads = Some(THREADS);
    fuser::spawn_mount(fs::PassThrough::new(file, FILE_NAME, faults), at, &cfg)
}

/// Ends a FUSE connection through fusectl, where it is mounted; false where
/// it is not.
fn abort_connection(dev: u64) -> bool {
    let abort = format!(
        "/sys/fs/fuse/connections/{}/abort",
        nix::sys::stat::minor(dev)
    );
    std::fs::write(abort, "1").is_ok()
}

/// Lazily unmounts faulty disks whose test process died without unmounting
/// them (their connection is gone: a stat of the mount point says ENOTCONN).
/// A live mount of a running test never answers ENOTCONN, so it is left alone.
fn sweep_dead_mounts() {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let source = format!("{FS_NAME}:");
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        // After the separator: file system type, then source.
        let mut fields = right.split(' ');
        let fuse = fields.next().is_some_and(|t| t.starts_with("fuse"));
        if !fuse || !fields.next().is_some_and(|s| s.starts_with(&source)) {
            continue;
        }
        // Field 5 is the mount point; a path with spaces is escaped, and
        // temp dirs have none, so an escaped one is not ours.
        let Some(at) = left.split(' ').nth(4) else {
            continue;
        };
        let dead = std::fs::metadata(at)
            .err()
            .and_then(|e| e.raw_os_error())
            .is_some_and(|e| e == libc::ENOTCONN);
        if dead {
            let _ = nix::mount::umount2(at, MntFlags::MNT_DETACH);
        }
    }
}
