//! Attaching to the kernel NBD driver: finds the driver (netlink family, else
//! /dev/nbdN for ioctls), negotiates the sockets and hands them over.
//!
//! Says clearly when the driver is missing, before touching the server.

use super::address::NbdAddress;
use super::client::{self, ExportInfo};
use super::error::AttachError;
use super::genl::GenlSocket;
use super::ioctl::{self, IoctlAttachment};
use super::netlink::ConnectParams;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

/// Most sockets per device (the kernel driver has one queue per socket).
pub const CONNECTIONS_MAX: u32 = 16;
/// Prefix of the backend identifier; `udev/99-geomirror.rules` matches it.
pub const BACKEND_PREFIX: &str = "geomirror:";

/// How to attach.
#[derive(Debug, Clone)]
pub struct KernelOptions {
    /// `/dev/nbdN`; None lets the kernel pick (netlink) or uses /dev/nbd0.
    pub device: Option<String>,
    /// Sockets to open; more than one only if the server allows multi-conn.
    pub connections: u32,
    /// Request timeout, seconds.
    pub timeout_s: u64,
    /// How long the kernel keeps a dead connection's requests, seconds.
    pub dead_conn_timeout_s: u64,
    /// Group or export name, shown as `backend` = `geomirror:<name>`.
    pub name: String,
}

/// A device handed to the kernel.
pub enum Attached {
    /// The kernel owns the sockets; the device outlives this process.
    Netlink { device: String, info: ExportInfo },
    /// A thread of this process sits in NBD_DO_IT until disconnect.
    Ioctl {
        attachment: IoctlAttachment,
        info: ExportInfo,
    },
}

/// Which kernel interface is there.
enum Driver {
    Netlink(GenlSocket, u16),
    Ioctl(String),
}

/// `geomirror:<name>` with any byte outside `[A-Za-z0-9._-]` replaced by `_`,
/// so udev can make a symlink of it and nothing else.
pub fn backend_identifier(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect();
    let clean = if clean.is_empty() || clean.chars().all(|c| c == '.') {
        "volume".to_string()
    } else {
        clean
    };
    format!("{BACKEND_PREFIX}{clean}")
}

/// The N of `/dev/nbdN`.
pub fn device_index(device: &str) -> Result<u32, AttachError> {
    Path::new(device)
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("nbd"))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| AttachError::BadAddress {
            addr: device.to_string(),
            reason: "not an NBD device path (expected /dev/nbdN)".into(),
        })
}

fn find_driver(device: Option<&str>) -> Result<Driver, AttachError> {
    match GenlSocket::open().and_then(|mut s| s.nbd_family().map(|f| (s, f))) {
        Ok((s, Some(family))) => return Ok(Driver::Netlink(s, family)),
        Ok((_, None)) => {}
        Err(e) => tracing::debug!("generic netlink unavailable: {e}"),
    }
    let dev = device.unwrap_or("/dev/nbd0");
    match std::fs::metadata(dev) {
        Ok(m) if m.file_type().is_block_device() => Ok(Driver::Ioctl(dev.to_string())),
        Ok(_) => Err(AttachError::BadAddress {
            addr: dev.to_string(),
            reason: "not a block device".into(),
        }),
        Err(_) => Err(AttachError::NoNbdModule),
    }
}

/// Attaches the export at `addr` as a kernel NBD device.
pub fn attach(addr: &NbdAddress, opts: &KernelOptions) -> Result<Attached, AttachError> {
    if let Some(d) = &opts.device {
        device_index(d)?;
    }
    let driver = find_driver(opts.device.as_deref())?;
    let first = client::connect(addr)?;
    let info = first.info;
    let mut wanted = opts.connections.clamp(1, CONNECTIONS_MAX);
    if wanted > 1 && !info.can_multi_conn() {
        tracing::warn!("server does not allow multiple connections: using one");
        wanted = 1;
    }
    let mut sockets: Vec<OwnedFd> = vec![first.stream.into_fd()];
    for _ in 1..wanted {
        let h = client::connect(addr)?;
        if h.info != info {
            return Err(AttachError::Protocol(
                "connections disagree on the export".into(),
            ));
        }
        sockets.push(h.stream.into_fd());
    }
    // The kernel device's logical block size: the server's preferred size,
    // kept between 512 and 4096 (what the block layer accepts everywhere).
    let block = info.block_preferred.clamp(512, 4096);
    match driver {
        Driver::Netlink(mut sock, family) => {
            let params = ConnectParams {
                index: opts.device.as_deref().map(device_index).transpose()?,
                socket_fds: sockets.iter().map(|s| s.as_raw_fd() as u32).collect(),
                size_bytes: info.size,
                block_size_bytes: u64::from(block),
                server_flags: u64::from(info.flags),
                timeout_s: opts.timeout_s,
                dead_conn_timeout_s: opts.dead_conn_timeout_s,
                backend: backend_identifier(&opts.name),
            };
            let index = sock.connect(family, &params)?;
            // The kernel took its own references to the sockets.
            drop(sockets);
            Ok(Attached::Netlink {
                device: format!("/dev/nbd{index}"),
                info,
            })
        }
        Driver::Ioctl(device) => {
            let attachment = ioctl::attach(&device, sockets, &info, block, opts.timeout_s)?;
            Ok(Attached::Ioctl { attachment, info })
        }
    }
}

/// Disconnects `/dev/nbdN` (netlink, else ioctl). The udev name
/// `/dev/geomirror/<group>` works too: it is resolved to its device.
pub fn detach(device: &str) -> Result<(), AttachError> {
    let resolved = std::fs::canonicalize(device)
        .ok()
        .and_then(|p| p.to_str().map(str::to_string));
    let device = resolved.as_deref().unwrap_or(device);
    let index = device_index(device)?;
    match find_driver(Some(device))? {
        Driver::Netlink(mut sock, family) => sock.disconnect(family, index),
        Driver::Ioctl(dev) => ioctl::disconnect(&dev),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_identifier_is_prefixed_and_safe_for_udev() {
        assert_eq!(backend_identifier("db-vol.1"), "geomirror:db-vol.1");
        assert_eq!(backend_identifier("a/b c"), "geomirror:a_b_c");
        assert_eq!(backend_identifier(""), "geomirror:volume");
        assert_eq!(backend_identifier(".."), "geomirror:volume");
    }

    #[test]
    fn device_paths_give_their_index() {
        assert_eq!(device_index("/dev/nbd12").ok(), Some(12));
        assert!(device_index("/dev/sda").is_err());
        assert!(device_index("/dev/nbd").is_err());
    }
}
