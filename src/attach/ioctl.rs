//! The older ioctl interface of the kernel NBD driver (linux/nbd.h), used when
//! the netlink family is missing but /dev/nbdN exists: set sizes, flags and
//! sockets, then NBD_DO_IT, which blocks in a thread until disconnect.

use super::client::ExportInfo;
use super::error::AttachError;
use super::sys::*;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::thread::JoinHandle;

/// One ioctl with its unsigned long argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    pub name: &'static str,
    pub request: libc::Ioctl,
    pub arg: libc::c_ulong,
}

fn ulong(v: u64, what: &str) -> Result<libc::c_ulong, AttachError> {
    libc::c_ulong::try_from(v).map_err(|_| {
        AttachError::Unrepresentable(format!(
            "{what} {v} does not fit the ioctl's unsigned long on this machine; use the netlink interface"
        ))
    })
}

/// The size ioctls for an export of `size` bytes and `block` byte blocks.
/// NBD_SET_SIZE_BLOCKS when the size is a whole number of blocks, else
/// NBD_SET_SIZE in bytes; both take an unsigned long, computed in u64 and
/// converted without truncation (sizes over 2 GiB and 4 GiB stay exact).
pub fn size_calls(size: u64, block: u32) -> Result<Vec<Call>, AttachError> {
    if !block.is_power_of_two() || !(512..=65536).contains(&block) {
        return Err(AttachError::Unrepresentable(format!(
            "block size {block} is not a power of two between 512 and 65536"
        )));
    }
    let mut calls = vec![Call {
        name: "NBD_SET_BLKSIZE",
        request: NBD_SET_BLKSIZE,
        arg: ulong(u64::from(block), "block size")?,
    }];
    if size % u64::from(block) == 0 {
        calls.push(Call {
            name: "NBD_SET_SIZE_BLOCKS",
            request: NBD_SET_SIZE_BLOCKS,
            arg: ulong(size / u64::from(block), "size in blocks")?,
        });
    } else {
        calls.push(Call {
            name: "NBD_SET_SIZE",
            request: NBD_SET_SIZE,
            arg: ulong(size, "size in bytes")?,
        });
    }
    Ok(calls)
}

fn call(dev: &File, device: &str, c: Call) -> Result<(), AttachError> {
    // SAFETY: the NBD ioctls take their argument by value (an unsigned long
    // or a descriptor), never a pointer, so no memory is handed to the kernel.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), c.request, c.arg) };
    if rc < 0 {
        return Err(AttachError::ioctl(c.name, device));
    }
    Ok(())
}

/// A device attached through ioctls, served by a thread inside NBD_DO_IT.
pub struct IoctlAttachment {
    pub device: String,
    dev: File,
    serving: Option<JoinHandle<Result<(), AttachError>>>,
    _sockets: Vec<OwnedFd>,
}

/// Attaches `sockets` (in transmission phase) to `device`.
pub fn attach(
    device: &str,
    sockets: Vec<OwnedFd>,
    info: &ExportInfo,
    block: u32,
    timeout_s: u64,
) -> Result<IoctlAttachment, AttachError> {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(|cause| AttachError::Ioctl {
            what: "open",
            device: device.to_string(),
            cause,
        })?;
    for c in size_calls(info.size, block)? {
        call(&dev, device, c)?;
    }
    call(
        &dev,
        device,
        Call {
            name: "NBD_SET_TIMEOUT",
            request: NBD_SET_TIMEOUT,
            arg: ulong(timeout_s, "timeout")?,
        },
    )?;
    call(
        &dev,
        device,
        Call {
            name: "NBD_SET_FLAGS",
            request: NBD_SET_FLAGS,
            arg: libc::c_ulong::from(info.flags),
        },
    )?;
    for s in &sockets {
        let arg = libc::c_ulong::try_from(s.as_raw_fd())
            .map_err(|_| AttachError::Unrepresentable("negative fd".into()))?;
        call(
            &dev,
            device,
            Call {
                name: "NBD_SET_SOCK",
                request: NBD_SET_SOCK,
                arg,
            },
        )?;
    }
    let runner = dev.try_clone()?;
    let name = device.to_string();
    let serving = std::thread::Builder::new()
        .name("nbd-do-it".into())
        .spawn(move || {
            // NBD_DO_IT returns when the device is disconnected.
            let r = call(
                &runner,
                &name,
                Call {
                    name: "NBD_DO_IT",
                    request: NBD_DO_IT,
                    arg: 0,
                },
            );
            let _ = call(
                &runner,
                &name,
                Call {
                    name: "NBD_CLEAR_SOCK",
                    request: NBD_CLEAR_SOCK,
                    arg: 0,
                },
            );
            r
        })?;
    Ok(IoctlAttachment {
        device: device.to_string(),
        dev,
        serving: Some(serving),
        _sockets: sockets,
    })
}

impl IoctlAttachment {
    /// Asks the device to disconnect (NBD_DISCONNECT); `wait` then returns.
    pub fn disconnect(&self) -> Result<(), AttachError> {
        disconnect_file(&self.dev, &self.device)
    }

    /// Whether the serving thread has returned (the device was disconnected).
    pub fn is_finished(&self) -> bool {
        self.serving.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Blocks until the device is disconnected.
    pub fn wait(mut self) -> Result<(), AttachError> {
        match self.serving.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(AttachError::Protocol("NBD_DO_IT thread panicked".into())),
            None => Ok(()),
        }
    }
}

fn disconnect_file(dev: &File, device: &str) -> Result<(), AttachError> {
    call(
        dev,
        device,
        Call {
            name: "NBD_DISCONNECT",
            request: NBD_DISCONNECT,
            arg: 0,
        },
    )
}

/// NBD_DISCONNECT on `device`, for `geomirror detach` without netlink.
pub fn disconnect(device: &str) -> Result<(), AttachError> {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(|cause| AttachError::Ioctl {
            what: "open",
            device: device.to_string(),
            cause,
        })?;
    disconnect_file(&dev, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux_nbd_h() {
        // _IO(0xab, n) = 0xab00 | n.
        assert_eq!(NBD_SET_SOCK, 0xab00 as libc::Ioctl);
        assert_eq!(NBD_SET_SIZE_BLOCKS, 0xab07 as libc::Ioctl);
        assert_eq!(NBD_SET_FLAGS, 0xab0a as libc::Ioctl);
    }

    #[test]
    // `c_ulong` is u64 here but u32 on 32-bit targets: the conversion is
    // needed there.
    #[allow(clippy::useless_conversion)]
    fn ioctl_sizes_over_2_and_4_gib_are_not_truncated() {
        let three_gib = 3u64 << 30;
        let c = size_calls(three_gib, 4096).expect("fits");
        assert_eq!(c[0].arg, 4096);
        assert_eq!(c[1].name, "NBD_SET_SIZE_BLOCKS");
        assert_eq!(u64::from(c[1].arg) * 4096, three_gib);

        // Not a whole number of blocks: bytes, exactly, past 4 GiB.
        let odd = (5u64 << 30) + 512;
        let c = size_calls(odd, 4096).expect("fits");
        assert_eq!(c[1].name, "NBD_SET_SIZE");
        assert_eq!(u64::from(c[1].arg), odd);
        // 16 TiB in 4 KiB blocks is 2^32 blocks: past u32, still exact on
        // 64-bit, and refused (not wrapped to 0) where unsigned long is 32 bits.
        match size_calls(16u64 << 40, 4096) {
            Ok(c) => assert_eq!(u64::from(c[1].arg), 1u64 << 32),
            Err(e) => assert!(std::mem::size_of::<libc::c_ulong>() == 4, "{e}"),
        }
    }

    #[test]
    fn bad_block_sizes_are_refused() {
        assert!(size_calls(1 << 20, 1000).is_err());
        assert!(size_calls(1 << 20, 256).is_err());
    }
}
