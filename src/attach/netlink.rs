//! Generic netlink messages for the kernel NBD driver, as bytes: encoding of
//! CTRL_CMD_GETFAMILY, NBD_CMD_CONNECT and NBD_CMD_DISCONNECT, and parsing of
//! the kernel's answers. Pure functions, no sockets (see `genl` for those).
//!
//! Layout (linux/netlink.h, linux/genetlink.h, linux/nbd-netlink.h): a
//! 16-byte `nlmsghdr`, a 4-byte `genlmsghdr`, then attributes, each a 4-byte
//! `nlattr` header and a payload padded to 4 bytes. Integers are in host order.

use super::error::AttachError;
use super::sys::*;
use std::io;

/// What NBD_CMD_CONNECT tells the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectParams {
    /// Device index (`/dev/nbdN`); None lets the kernel pick a free one.
    pub index: Option<u32>,
    /// Sockets in transmission phase, one per connection.
    pub socket_fds: Vec<u32>,
    pub size_bytes: u64,
    pub block_size_bytes: u64,
    /// Transmission flags from the handshake.
    pub server_flags: u64,
    pub timeout_s: u64,
    pub dead_conn_timeout_s: u64,
    /// Shown in sysfs as `backend`; our udev rule matches `geomirror:*`.
    pub backend: String,
}

/// A message under construction: header fields are filled in by `finish`.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(family: u16, flags: u16, seq: u32, cmd: u8, version: u8) -> Msg {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set by finish
        buf.extend_from_slice(&family.to_ne_bytes()); // nlmsg_type
        buf.extend_from_slice(&flags.to_ne_bytes()); // nlmsg_flags
        buf.extend_from_slice(&seq.to_ne_bytes()); // nlmsg_seq
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
        buf.extend_from_slice(&[cmd, version, 0, 0]); // genlmsghdr
        Msg { buf }
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) {
        let len = (NLA_HDRLEN + payload.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
    }

    fn pad(&mut self) {
        while self.buf.len() % NLA_ALIGNTO != 0 {
            self.buf.push(0);
        }
    }

    /// Opens a nested attribute; returns where its length goes.
    fn nest_start(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn nest_end(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// CTRL_CMD_GETFAMILY for `name` (resolves a family id).
pub fn get_family(seq: u32, name: &str) -> Vec<u8> {
    let mut m = Msg::new(
        GENL_ID_CTRL,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        CTRL_CMD_GETFAMILY,
        CTRL_VERSION,
    );
    let mut z = name.as_bytes().to_vec();
    z.push(0);
    m.attr(CTRL_ATTR_FAMILY_NAME, &z);
    m.finish()
}

/// NBD_CMD_CONNECT with every attribute of `p`.
pub fn connect(family: u16, seq: u32, p: &ConnectParams) -> Vec<u8> {
    let mut m = Msg::new(
        family,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        NBD_CMD_CONNECT,
        NBD_GENL_VERSION,
    );
    if let Some(i) = p.index {
        m.attr(NBD_ATTR_INDEX, &i.to_ne_bytes());
    }
    m.attr(NBD_ATTR_SIZE_BYTES, &p.size_bytes.to_ne_bytes());
    m.attr(NBD_ATTR_BLOCK_SIZE_BYTES, &p.block_size_bytes.to_ne_bytes());
    m.attr(NBD_ATTR_SERVER_FLAGS, &p.server_flags.to_ne_bytes());
    m.attr(NBD_ATTR_TIMEOUT, &p.timeout_s.to_ne_bytes());
    m.attr(
        NBD_ATTR_DEAD_CONN_TIMEOUT,
        &p.dead_conn_timeout_s.to_ne_bytes(),
    );
    let mut id = p.backend.as_bytes().to_vec();
    id.push(0);
    m.attr(NBD_ATTR_BACKEND_IDENTIFIER, &id);
    let socks = m.nest_start(NBD_ATTR_SOCKETS);
    for fd in &p.socket_fds {
        let item = m.nest_start(NBD_SOCK_ITEM);
        m.attr(NBD_SOCK_FD, &fd.to_ne_bytes());
        m.nest_end(item);
    }
    m.nest_end(socks);
    m.finish()
}

/// NBD_CMD_DISCONNECT of device `index`.
pub fn disconnect(family: u16, seq: u32, index: u32) -> Vec<u8> {
    let mut m = Msg::new(
        family,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        NBD_CMD_DISCONNECT,
        NBD_GENL_VERSION,
    );
    m.attr(NBD_ATTR_INDEX, &index.to_ne_bytes());
    m.finish()
}

/// One message the kernel sent back.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// NLMSG_ERROR with error 0: the request with this seq succeeded.
    Ack { seq: u32 },
    /// NLMSG_ERROR with a negative errno.
    Error { seq: u32, errno: i32 },
    /// A generic netlink message: its command and attributes (type, payload).
    Genl {
        seq: u32,
        cmd: u8,
        attrs: Vec<(u16, Vec<u8>)>,
    },
    /// NLMSG_DONE or anything else we do not use.
    Other,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn bad(what: &str) -> AttachError {
    AttachError::Netlink {
        what: "reply",
        cause: io::Error::new(io::ErrorKind::InvalidData, what.to_string()),
    }
}

/// Splits a datagram from the kernel into messages; every length is checked
/// against the datagram before it is used.
pub fn parse(datagram: &[u8]) -> Result<Vec<Answer>, AttachError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= datagram.len() {
        let len = u32_at(datagram, at) as usize;
        if len < NLMSG_HDRLEN || at + len > datagram.len() {
            return Err(bad("netlink message length out of bounds"));
        }
        let kind = u16_at(datagram, at + 4);
        let seq = u32_at(datagram, at + 8);
        let body = &datagram[at + NLMSG_HDRLEN..at + len];
        out.push(match kind {
            NLMSG_ERROR => {
                if body.len() < 4 {
                    return Err(bad("short NLMSG_ERROR"));
                }
                match u32_at(body, 0) as i32 {
                    0 => Answer::Ack { seq },
                    e => Answer::Error { seq, errno: -e },
                }
            }
            NLMSG_DONE => Answer::Other,
            k if k >= GENL_ID_CTRL => {
                if body.len() < GENL_HDRLEN {
                    return Err(bad("short generic netlink message"));
                }
                Answer::Genl {
                    seq,
                    cmd: body[0],
                    attrs: parse_attrs(&body[GENL_HDRLEN..])?,
                }
            }
            _ => Answer::Other,
        });
        at += align(len);
    }
    Ok(out)
}

/// Attributes of one level, nested flag cleared from their types.
pub fn parse_attrs(mut b: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, AttachError> {
    let mut out = Vec::new();
    while b.len() >= NLA_HDRLEN {
        let len = u16_at(b, 0) as usize;
        if len < NLA_HDRLEN || len > b.len() {
            return Err(bad("attribute length out of bounds"));
        }
        let kind = u16_at(b, 2) & !NLA_F_NESTED & 0x3fff;
        out.push((kind, b[NLA_HDRLEN..len].to_vec()));
        b = &b[align(len).min(b.len())..];
    }
    Ok(out)
}

fn align(n: usize) -> usize {
    (n + NLA_ALIGNTO - 1) & !(NLA_ALIGNTO - 1)
}

/// The family id in a CTRL_CMD_GETFAMILY answer.
pub fn family_id(attrs: &[(u16, Vec<u8>)]) -> Option<u16> {
    attrs
        .iter()
        .find(|(k, v)| *k == CTRL_ATTR_FAMILY_ID && v.len() >= 2)
        .map(|(_, v)| u16_at(v, 0))
}

/// The device index in an NBD_CMD_CONNECT answer.
pub fn device_index(attrs: &[(u16, Vec<u8>)]) -> Option<u32> {
    attrs
        .iter()
        .find(|(k, v)| *k == NBD_ATTR_INDEX && v.len() >= 4)
        .map(|(_, v)| u32_at(v, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builders of the expected bytes, written from the header layouts and
    /// independent of `Msg`.
    fn nlmsghdr(len: u32, kind: u16, flags: u16, seq: u32) -> Vec<u8> {
        let mut v = len.to_ne_bytes().to_vec();
        v.extend(kind.to_ne_bytes());
        v.extend(flags.to_ne_bytes());
        v.extend(seq.to_ne_bytes());
        v.extend(0u32.to_ne_bytes());
        v
    }
    fn nla(len: u16, kind: u16) -> Vec<u8> {
        let mut v = len.to_ne_bytes().to_vec();
        v.extend(kind.to_ne_bytes());
        v
    }

    #[test]
    fn getfamily_message_matches_header_layout() {
        let got = get_family(7, "nbd");
        // 16 nlmsghdr + 4 genlmsghdr + 4 nla + "nbd\0" = 28.
        let mut want = nlmsghdr(28, 0x10, 0x01 | 0x04, 7);
        want.extend([3, 2, 0, 0]);
        want.extend(nla(8, 2));
        want.extend(b"nbd\0");
        assert_eq!(got, want);
    }

    #[test]
    fn connect_message_matches_header_layout_with_nested_sockets() {
        let p = ConnectParams {
            index: Some(3),
            socket_fds: vec![5, 9],
            size_bytes: 5 << 30,
            block_size_bytes: 4096,
            server_flags: 0x10d,
            timeout_s: 30,
            dead_conn_timeout_s: 120,
            backend: "geomirror:g1".into(),
        };
        let got = connect(0x1a, 42, &p);
        let mut body = vec![1u8, 1, 0, 0]; // NBD_CMD_CONNECT, version 1
        body.extend(nla(8, 1));
        body.extend(3u32.to_ne_bytes());
        for (kind, v) in [(2u16, 5u64 << 30), (3, 4096), (5, 0x10d), (4, 30), (8, 120)] {
            body.extend(nla(12, kind));
            body.extend(v.to_ne_bytes());
        }
        // "geomirror:g1\0" is 13 bytes: nla_len 17, padded to 20.
        body.extend(nla(17, 10));
        body.extend(b"geomirror:g1\0\0\0\0");
        // NBD_ATTR_SOCKETS (7|NLA_F_NESTED) holding two NBD_SOCK_ITEM (1|nested),
        // each holding NBD_SOCK_FD (1) u32: item = 4 + 8 = 12, sockets = 4 + 24.
        body.extend(nla(28, 7 | 0x8000));
        for fd in [5u32, 9] {
            body.extend(nla(12, 1 | 0x8000));
            body.extend(nla(8, 1));
            body.extend(fd.to_ne_bytes());
        }
        let mut want = nlmsghdr(16 + body.len() as u32, 0x1a, 0x05, 42);
        want.extend(body);
        assert_eq!(got, want);
        assert_eq!(got.len(), 16 + 4 + 8 + 5 * 12 + 20 + 28);
    }

    #[test]
    fn connect_without_index_lets_the_kernel_choose() {
        let p = ConnectParams {
            index: None,
            socket_fds: vec![4],
            size_bytes: 1,
            block_size_bytes: 512,
            server_flags: 1,
            timeout_s: 1,
            dead_conn_timeout_s: 1,
            backend: "geomirror:x".into(),
        };
        let m = connect(20, 1, &p);
        let attrs = parse_attrs(&m[20..]).expect("well formed");
        assert!(attrs.iter().all(|(k, _)| *k != NBD_ATTR_INDEX));
        assert_eq!(attrs[0].0, NBD_ATTR_SIZE_BYTES);
    }

    #[test]
    fn disconnect_message_matches_header_layout() {
        let mut want = nlmsghdr(28, 0x1a, 0x05, 9);
        want.extend([2, 1, 0, 0]);
        want.extend(nla(8, 1));
        want.extend(4u32.to_ne_bytes());
        assert_eq!(disconnect(0x1a, 9, 4), want);
    }

    #[test]
    fn kernel_answers_parse_to_ack_error_and_attributes() {
        // A GETFAMILY answer carrying CTRL_ATTR_FAMILY_ID = 0x21, then an ack.
        let mut d = nlmsghdr(28, 0x10, 0, 7);
        d.extend([1, 2, 0, 0]);
        d.extend(nla(6, 1));
        d.extend(0x21u16.to_ne_bytes());
        d.extend([0, 0]);
        let mut ack = nlmsghdr(36, 2, 0, 7);
        ack.extend(0i32.to_ne_bytes());
        ack.extend(nlmsghdr(16, 0x10, 0, 7));
        d.extend(ack);
        let mut err = nlmsghdr(20, 2, 0, 8);
        err.extend((-libc::ENOENT).to_ne_bytes());
        d.extend(err);
        let answers = parse(&d).expect("well formed");
        match &answers[0] {
            Answer::Genl { seq: 7, attrs, .. } => assert_eq!(family_id(attrs), Some(0x21)),
            a => panic!("unexpected {a:?}"),
        }
        assert_eq!(answers[1], Answer::Ack { seq: 7 });
        assert_eq!(
            answers[2],
            Answer::Error {
                seq: 8,
                errno: libc::ENOENT
            }
        );
    }

    #[test]
    fn lying_lengths_are_errors_not_panics() {
        let mut d = nlmsghdr(400, 0x10, 0, 1);
        d.extend([1, 2, 0, 0]);
        assert!(parse(&d).is_err());
        assert!(parse_attrs(&[200, 0, 1, 0, 0, 0]).is_err());
        assert!(parse_attrs(&[2, 0, 1, 0]).is_err());
    }
}
