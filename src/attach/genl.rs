//! A generic netlink socket to the kernel: sends one request built by
//! `netlink` and collects the answers up to its acknowledgement.
//!
//! Only what attach needs: resolving the `nbd` family, connect, disconnect.

use super::error::AttachError;
use super::netlink::{self, Answer, ConnectParams};
use super::sys::NBD_GENL_FAMILY_NAME;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// How long the kernel may take to answer one request.
const ANSWER_TIMEOUT_MS: u64 = 10_000;
/// Most datagrams read while waiting for one acknowledgement.
const DATAGRAMS_MAX: usize = 64;
/// Receive buffer: one page holds any answer to our requests.
const DATAGRAM_BYTES_MAX: usize = 16 * 1024;

/// An open NETLINK_GENERIC socket.
pub struct GenlSocket {
    fd: OwnedFd,
    seq: u32,
}

impl GenlSocket {
    pub fn open() -> Result<GenlSocket, AttachError> {
        let err = |cause| AttachError::Netlink {
            what: "socket",
            cause,
        };
        // SAFETY: socket(2) with constant arguments; the result is checked
        // and owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_GENERIC,
            )
        };
        if raw < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let tv = libc::timeval {
            tv_sec: Duration::from_millis(ANSWER_TIMEOUT_MS).as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: `tv` is a valid timeval that outlives the call, and the
        // length passed is its size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        Ok(GenlSocket { fd, seq: 1 })
    }

    /// Sends `msg` (built with sequence number `seq`) and returns the
    /// generic netlink answers that came before its acknowledgement.
    fn exchange(
        &mut self,
        what: &'static str,
        seq: u32,
        msg: &[u8],
    ) -> Result<Vec<Answer>, AttachError> {
        let err = |cause| AttachError::Netlink { what, cause };
        // SAFETY: the kernel's address (all zero, nl_family AF_NETLINK) is a
        // valid sockaddr_nl; `msg` is valid for its length.
        let sent = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        let mut got = Vec::new();
        let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
        for _ in 0..DATAGRAMS_MAX {
            let (fd, ptr, len) = (self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len());
            // SAFETY: `ptr` points at `buf`, valid for writes of `len` bytes.
            let n = unsafe { libc::recv(fd, ptr, len, 0) };
            if n < 0 {
                return Err(err(io::Error::last_os_error()));
            }
            for a in netlink::parse(&buf[..n as usize])? {
                match a {
                    Answer::Ack { seq: s } if s == seq => return Ok(got),
                    Answer::Error { seq: s, errno } if s == seq => {
                        return Err(err(io::Error::from_raw_os_error(errno)))
                    }
                    a @ Answer::Genl { seq: s, .. } if s == seq => got.push(a),
                    _ => {}
                }
            }
        }
        Err(err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no acknowledgement",
        )))
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// The id of generic netlink family `name`; `Ok(None)` when the kernel
    /// has no such family.
    pub fn family(&mut self, name: &str) -> Result<Option<u16>, AttachError> {
        let seq = self.next_seq();
        let msg = netlink::get_family(seq, name);
        match self.exchange("CTRL_CMD_GETFAMILY", seq, &msg) {
            Ok(answers) => Ok(answers.iter().find_map(|a| match a {
                Answer::Genl { attrs, .. } => netlink::family_id(attrs),
                _ => None,
            })),
            Err(AttachError::Netlink { cause, .. })
                if cause.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The id of the `nbd` family; `Ok(None)` when the nbd module is not
    /// loaded (or not built).
    pub fn nbd_family(&mut self) -> Result<Option<u16>, AttachError> {
        self.family(NBD_GENL_FAMILY_NAME)
    }

    /// NBD_CMD_CONNECT; returns the index of the device the kernel used.
    pub fn connect(&mut self, family: u16, p: &ConnectParams) -> Result<u32, AttachError> {
        let seq = self.next_seq();
        let msg = netlink::connect(family, seq, p);
        let answers = self.exchange("NBD_CMD_CONNECT", seq, &msg)?;
        let index = answers.iter().find_map(|a| match a {
            Answer::Genl { attrs, .. } => netlink::device_index(attrs),
            _ => None,
        });
        index.or(p.index).ok_or_else(|| AttachError::Netlink {
            what: "NBD_CMD_CONNECT",
            cause: io::Error::new(io::ErrorKind::InvalidData, "no device index in the answer"),
        })
    }

    /// NBD_CMD_DISCONNECT of `/dev/nbd<index>`.
    pub fn disconnect(&mut self, family: u16, index: u32) -> Result<(), AttachError> {
        let seq = self.next_seq();
        let msg = netlink::disconnect(family, seq, index);
        self.exchange("NBD_CMD_DISCONNECT", seq, &msg).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getfamily_against_the_running_kernel_finds_the_controller() {
        let mut s = GenlSocket::open().expect("generic netlink socket");
        // The controller names itself "nlctrl" with the fixed id GENL_ID_CTRL.
        let id = s.family("nlctrl").expect("exchange");
        assert_eq!(id, Some(crate::attach::sys::GENL_ID_CTRL));
        assert_eq!(s.family("gm-nosuchfam").expect("exchange"), None);
        // Several requests on one socket keep their sequence numbers apart.
        assert_eq!(s.family("nlctrl").expect("exchange"), id);
    }

    #[test]
    fn nbd_family_matches_whether_the_module_is_loaded() {
        let mut s = GenlSocket::open().expect("generic netlink socket");
        let loaded = std::path::Path::new("/sys/module/nbd").exists();
        assert_eq!(s.nbd_family().expect("exchange").is_some(), loaded);
    }
}
