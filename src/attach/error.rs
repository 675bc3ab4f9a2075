//! Errors of the attach layer: reaching the export, the NBD handshake, the
//! kernel interfaces (netlink, ioctl, loop) and the FUSE mount.

use std::io;

/// Everything that can go wrong while attaching or serving an attached volume.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The `--nbd` address could not be understood.
    #[error("bad NBD address {addr:?}: {reason}")]
    BadAddress { addr: String, reason: String },
    /// Connecting to the export's socket failed.
    #[error("cannot connect to {addr}: {cause}")]
    Connect { addr: String, cause: io::Error },
    /// A read or write on an NBD connection failed.
    #[error("NBD connection I/O: {0}")]
    Io(io::Error),
    /// The server broke the NBD protocol (bad magic, impossible length…).
    #[error("NBD protocol violation: {0}")]
    Protocol(String),
    /// The server refused the export (an NBD_REP_ERR_* reply to NBD_OPT_GO).
    #[error("server refused export {export:?}: {reason}")]
    Refused { export: String, reason: String },
    /// The server answered a transmission request with an error (an errno
    /// from NBD `doc/proto.md` "Error values").
    #[error("server answered with errno {errno}")]
    Server { errno: i32 },
    /// A request is malformed before it reaches the wire (out of range,
    /// too large, misaligned, or not allowed by the export's flags).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The connection to the server is gone; requests can no longer be served.
    #[error("NBD connection closed")]
    Closed,
    /// The kernel has no NBD driver: no `nbd` netlink family, no /dev/nbd0.
    #[error(
        "the kernel NBD driver is not available (no \"nbd\" generic netlink family and no \
         /dev/nbd0): load it with `modprobe nbd`, or attach without it through FUSE with \
         `--fuse DIR` (add `--loop` for a block device)"
    )]
    NoNbdModule,
    /// A netlink exchange with the kernel failed.
    #[error("netlink {what}: {cause}")]
    Netlink {
        what: &'static str,
        cause: io::Error,
    },
    /// An ioctl on a device failed.
    #[error("{what} on {device}: {cause}")]
    Ioctl {
        what: &'static str,
        device: String,
        cause: io::Error,
    },
    /// A value does not fit the kernel interface (e.g. a size in an unsigned
    /// long on a 32-bit machine).
    #[error("{0}")]
    Unrepresentable(String),
    /// Mounting or serving the FUSE file failed.
    #[error("FUSE mount on {dir}: {cause}")]
    Fuse { dir: String, cause: io::Error },
}

// Causes are part of each message rather than a `source()` chain: the CLI
// prints chains with `{:#}`, which would say every cause twice.
impl From<io::Error> for AttachError {
    fn from(e: io::Error) -> AttachError {
        AttachError::Io(e)
    }
}

impl AttachError {
    /// The errno a FUSE reply carries for this error.
    pub fn errno(&self) -> i32 {
        match self {
            AttachError::Server { errno } => *errno,
            AttachError::InvalidRequest(_) => libc::EINVAL,
            AttachError::Closed => libc::ESHUTDOWN,
            _ => libc::EIO,
        }
    }

    /// Wraps an OS error of an ioctl on `device`.
    pub fn ioctl(what: &'static str, device: &str) -> AttachError {
        AttachError::Ioctl {
            what,
            device: device.to_string(),
            cause: io::Error::last_os_error(),
        }
    }
}
