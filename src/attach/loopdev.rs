//! A loop device over the FUSE file (`--loop`): LOOP_CTL_GET_FREE, then
//! LOOP_SET_FD (linux/loop.h), detached with LOOP_CLR_FD at exit.

use super::error::AttachError;
use super::sys::{LOOP_CLR_FD, LOOP_CTL_GET_FREE, LOOP_SET_FD};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

/// Attempts at grabbing a free device: another process may take the one
/// LOOP_CTL_GET_FREE named before our LOOP_SET_FD (EBUSY).
const GRAB_ATTEMPTS_MAX: u32 = 8;
/// Major number of loop block devices (Documentation/admin-guide/devices.txt).
const LOOP_MAJOR: u64 = 7;

/// A loop device bound to a backing file; detach it with [`LoopDevice::detach`].
#[derive(Debug)]
pub struct LoopDevice {
    pub path: String,
    dev: File,
}

/// Binds a free loop device to `backing`.
pub fn attach(backing: &Path, read_only: bool) -> Result<LoopDevice, AttachError> {
    let ioctl_err = |what, device: &str, cause| AttachError::Ioctl {
        what,
        device: device.to_string(),
        cause,
    };
    let ctl =
        File::open("/dev/loop-control").map_err(|e| ioctl_err("open", "/dev/loop-control", e))?;
    let file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(backing)
        .map_err(|e| ioctl_err("open", &backing.display().to_string(), e))?;
    for _ in 0..GRAB_ATTEMPTS_MAX {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(AttachError::ioctl("LOOP_CTL_GET_FREE", "/dev/loop-control"));
        }
        let path = format!("/dev/loop{n}");
        ensure_node(&path, n as u64)?;
        let dev = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&path)
            .map_err(|e| ioctl_err("open", &path, e))?;
        // SAFETY: LOOP_SET_FD takes the backing file's descriptor by value.
        let rc = unsafe {
            libc::ioctl(
                dev.as_raw_fd(),
                LOOP_SET_FD,
                file.as_raw_fd() as libc::c_ulong,
            )
        };
        if rc == 0 {
            return Ok(LoopDevice { path, dev });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(ioctl_err("LOOP_SET_FD", &path, e));
        }
    }
    Err(AttachError::Ioctl {
        what: "LOOP_SET_FD",
        device: "/dev/loop*".into(),
        cause: io::Error::from_raw_os_error(libc::EBUSY),
    })
}

/// Creates `/dev/loopN` when devtmpfs has not (yet) made it, e.g. in a
/// container without udev.
fn ensure_node(path: &str, n: u64) -> Result<(), AttachError> {
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() => Ok(()),
        Ok(_) => Err(AttachError::Ioctl {
            what: "open",
            device: path.into(),
            cause: io::Error::other("exists but is not a block device"),
        }),
        Err(_) => nix::sys::stat::mknod(
            path,
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::from_bits_truncate(0o660),
            nix::sys::stat::makedev(LOOP_MAJOR, n),
        )
        .map_err(|e| AttachError::Ioctl {
            what: "mknod",
            device: path.into(),
            cause: e.into(),
        }),
    }
}

impl LoopDevice {
    /// Detaches the backing file (LOOP_CLR_FD). If the device is still open
    /// (mounted), the kernel detaches it at last close instead.
    pub fn detach(self) -> Result<(), AttachError> {
        // SAFETY: LOOP_CLR_FD takes no argument.
        let rc = unsafe { libc::ioctl(self.dev.as_raw_fd(), LOOP_CLR_FD, 0) };
        if rc < 0 {
            return Err(AttachError::ioctl("LOOP_CLR_FD", &self.path));
        }
        Ok(())
    }
}
