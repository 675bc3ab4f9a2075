//! Raw constants of the interfaces `attach` talks to: the NBD wire protocol,
//! the kernel's NBD netlink family and ioctls, generic netlink, loop devices.
//!
//! Every number used by the attach code is defined here and nowhere else.
//! Sources: NBD `doc/proto.md`; Linux uapi `linux/nbd.h`, `linux/nbd-netlink.h`,
//! `linux/netlink.h`, `linux/genetlink.h`, `linux/loop.h`.

// --- NBD wire protocol (doc/proto.md) -------------------------------------

/// "NBDMAGIC": first eight bytes the server sends (§ "Newstyle negotiation").
pub const NBD_INIT_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": newstyle marker, and the prefix of every client option.
pub const NBD_OPTS_MAGIC: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply (§ "Option reply").
pub const NBD_REP_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Handshake flag: the server speaks fixed newstyle.
pub const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server may omit the 124 zero bytes.
pub const NBD_FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: the client does not want the 124 zero bytes.
pub const NBD_FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Option: select an export, no reply, transmission follows (old way).
pub const NBD_OPT_EXPORT_NAME: u32 = 1;
/// Option: end negotiation without transmission.
pub const NBD_OPT_ABORT: u32 = 2;
/// Option: select an export with info replies, then transmission.
pub const NBD_OPT_GO: u32 = 7;

/// Option reply: the option is done.
pub const NBD_REP_ACK: u32 = 1;
/// Option reply: one piece of information about the export.
pub const NBD_REP_INFO: u32 = 3;
/// Bit set on every option error reply.
pub const NBD_REP_FLAG_ERROR: u32 = 1 << 31;
/// Option error: the server does not know this option.
pub const NBD_REP_ERR_UNSUP: u32 = NBD_REP_FLAG_ERROR | 1;

/// Info type: export size and transmission flags.
pub const NBD_INFO_EXPORT: u16 = 0;
/// Info type: block size constraints.
pub const NBD_INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flag: the flags field is meaningful.
pub const NBD_FLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: the export is read-only.
pub const NBD_FLAG_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: the server accepts NBD_CMD_FLUSH.
pub const NBD_FLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: the server accepts NBD_CMD_FLAG_FUA.
pub const NBD_FLAG_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: the server accepts NBD_CMD_TRIM.
pub const NBD_FLAG_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: the server accepts NBD_CMD_WRITE_ZEROES.
pub const NBD_FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag: flushes on one connection cover all connections.
pub const NBD_FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Magic of a transmission request (§ "Request message").
pub const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply (§ "Simple reply message").
pub const NBD_SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Command: read.
pub const NBD_CMD_READ: u16 = 0;
/// Command: write.
pub const NBD_CMD_WRITE: u16 = 1;
/// Command: disconnect (no reply).
pub const NBD_CMD_DISC: u16 = 2;
/// Command: flush.
pub const NBD_CMD_FLUSH: u16 = 3;
/// Command: write zeroes (the server may deallocate the range).
pub const NBD_CMD_WRITE_ZEROES: u16 = 6;
/// Command flag: forced unit access.
pub const NBD_CMD_FLAG_FUA: u16 = 1 << 0;

// --- netlink / generic netlink (linux/netlink.h, linux/genetlink.h) --------

/// Flag: this is a request.
pub const NLM_F_REQUEST: u16 = 0x01;
/// Flag: ask for an acknowledgement (an NLMSG_ERROR with error 0).
pub const NLM_F_ACK: u16 = 0x04;
/// Message type of an error or acknowledgement.
pub const NLMSG_ERROR: u16 = 0x02;
/// Message type that ends a multipart dump.
pub const NLMSG_DONE: u16 = 0x03;
/// Size of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
/// Size of `struct genlmsghdr`.
pub const GENL_HDRLEN: usize = 4;
/// Size of `struct nlattr`.
pub const NLA_HDRLEN: usize = 4;
/// Attributes are padded to this alignment.
pub const NLA_ALIGNTO: usize = 4;
/// Bit marking a nested attribute.
pub const NLA_F_NESTED: u16 = 1 << 15;
/// The generic netlink controller's fixed family id.
pub const GENL_ID_CTRL: u16 = 0x10;
/// Controller command: look a family up by name.
pub const CTRL_CMD_GETFAMILY: u8 = 3;
/// Controller version we speak.
pub const CTRL_VERSION: u8 = 2;
/// Controller attribute: family id (u16).
pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
/// Controller attribute: family name (NUL-terminated string).
pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;

// --- the kernel NBD driver (linux/nbd-netlink.h, linux/nbd.h) --------------

/// Generic netlink family name of the NBD driver.
pub const NBD_GENL_FAMILY_NAME: &str = "nbd";
/// Version of that family.
pub const NBD_GENL_VERSION: u8 = 1;
/// Netlink command: connect a device.
pub const NBD_CMD_CONNECT: u8 = 1;
/// Netlink command: disconnect a device.
pub const NBD_CMD_DISCONNECT: u8 = 2;
/// Attribute: device index (u32).
pub const NBD_ATTR_INDEX: u16 = 1;
/// Attribute: size in bytes (u64).
pub const NBD_ATTR_SIZE_BYTES: u16 = 2;
/// Attribute: logical block size in bytes (u64).
pub const NBD_ATTR_BLOCK_SIZE_BYTES: u16 = 3;
/// Attribute: request timeout in seconds (u64).
pub const NBD_ATTR_TIMEOUT: u16 = 4;
/// Attribute: transmission flags from the handshake (u64).
pub const NBD_ATTR_SERVER_FLAGS: u16 = 5;
/// Attribute: nested list of socket items.
pub const NBD_ATTR_SOCKETS: u16 = 7;
/// Attribute: how long to wait for a reconnect, in seconds (u64).
pub const NBD_ATTR_DEAD_CONN_TIMEOUT: u16 = 8;
/// Attribute: backend identifier, exposed in sysfs as `backend` (string).
pub const NBD_ATTR_BACKEND_IDENTIFIER: u16 = 10;
/// Nested in NBD_ATTR_SOCKETS: one socket.
pub const NBD_SOCK_ITEM: u16 = 1;
/// Nested in NBD_SOCK_ITEM: the socket's file descriptor (u32).
pub const NBD_SOCK_FD: u16 = 1;

/// `_IO(0xab, n)`: the NBD ioctls carry no size or direction bits.
const fn nbd_io(n: u32) -> libc::Ioctl {
    (0xab << 8 | n) as libc::Ioctl
}
/// ioctl: hand a connected socket to the device.
pub const NBD_SET_SOCK: libc::Ioctl = nbd_io(0);
/// ioctl: logical block size (unsigned long).
pub const NBD_SET_BLKSIZE: libc::Ioctl = nbd_io(1);
/// ioctl: size in bytes (unsigned long).
pub const NBD_SET_SIZE: libc::Ioctl = nbd_io(2);
/// ioctl: run the device until it is disconnected (blocks).
pub const NBD_DO_IT: libc::Ioctl = nbd_io(3);
/// ioctl: drop the sockets.
pub const NBD_CLEAR_SOCK: libc::Ioctl = nbd_io(4);
/// ioctl: size in blocks of NBD_SET_BLKSIZE (unsigned long).
pub const NBD_SET_SIZE_BLOCKS: libc::Ioctl = nbd_io(7);
/// ioctl: disconnect.
pub const NBD_DISCONNECT: libc::Ioctl = nbd_io(8);
/// ioctl: request timeout in seconds (unsigned long).
pub const NBD_SET_TIMEOUT: libc::Ioctl = nbd_io(9);
/// ioctl: transmission flags (unsigned long).
pub const NBD_SET_FLAGS: libc::Ioctl = nbd_io(10);

// --- loop devices (linux/loop.h) ------------------------------------------

/// ioctl on /dev/loop-control: number of a free loop device.
pub const LOOP_CTL_GET_FREE: libc::Ioctl = 0x4C82 as libc::Ioctl;
/// ioctl on /dev/loopN: back it with an open file.
pub const LOOP_SET_FD: libc::Ioctl = 0x4C00 as libc::Ioctl;
/// ioctl on /dev/loopN: detach the backing file.
pub const LOOP_CLR_FD: libc::Ioctl = 0x4C01 as libc::Ioctl;

// --- process (linux/prctl.h) ----------------------------------------------

/// prctl: mark this process as one that writeback depends on, so its own
/// allocations do not recurse into I/O on the device it serves.
pub const PR_SET_IO_FLUSHER: libc::c_int = 57;
