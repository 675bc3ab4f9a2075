//! The transmission-phase codec: request headers and their validation, simple replies
//! and structured chunks, without sockets. A short buffer is a normal result (`Ok(None)`).

use super::consts::*;
use super::error::NbdError;

/// Longest string we accept (export names, queries): the spec's hard limit
/// (doc/proto.md "Conventions": strings MUST be no longer than 4096 bytes).
pub const NAME_LEN_MAX: usize = 4096;
/// Longest option payload we read into memory; longer ones are drained and
/// answered NBD_REP_ERR_TOO_BIG. Room for a name and a few queries.
pub const OPTION_LEN_MAX: u32 = 16 * 1024;
/// Largest read or write payload served (advertised as the maximum block size).
pub const PAYLOAD_LEN_MAX: u32 = 32 * 1024 * 1024;
/// Most queries accepted in one LIST/SET_META_CONTEXT.
pub const META_QUERIES_MAX: usize = 64;

pub(super) fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
pub(super) fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
pub(super) fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// A transmission request header as sent (doc/proto.md "Request message").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

impl RequestHeader {
    /// Parse a header from the front of `buf`; `Ok(None)` until 28 bytes are there.
    pub fn parse(buf: &[u8]) -> Result<Option<RequestHeader>, NbdError> {
        if buf.len() < REQUEST_LEN {
            return Ok(None);
        }
        let magic = be32(buf);
        if magic != REQUEST_MAGIC {
            return Err(NbdError::BadMagic {
                expected: REQUEST_MAGIC.into(),
                got: magic.into(),
            });
        }
        Ok(Some(RequestHeader {
            flags: be16(&buf[4..]),
            kind: be16(&buf[6..]),
            cookie: be64(&buf[8..]),
            offset: be64(&buf[16..]),
            len: be32(&buf[24..]),
        }))
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        out.extend_from_slice(&self.kind.to_be_bytes());
        out.extend_from_slice(&self.cookie.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
    }

    /// Bytes of payload that follow this header on the wire.
    pub fn payload_len(&self) -> u32 {
        if self.kind == CMD_WRITE {
            self.len
        } else {
            0
        }
    }
}

/// What the server knows when it judges a request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub size: u64,
    pub read_only: bool,
    pub structured: bool,
    pub meta_allocation: bool,
}

/// A request that passed every check: in range, known flags, allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read {
        offset: u64,
        len: u32,
        df: bool,
    },
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Disconnect,
    Flush,
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
        fast: bool,
    },
    BlockStatus {
        offset: u64,
        len: u32,
        req_one: bool,
    },
}

/// Judge a request header: the command to run, or the errno to reply with
/// (doc/proto.md "Request types" and "Error values").
pub fn validate(h: &RequestHeader, l: &Limits) -> Result<Command, u32> {
    let allowed = match h.kind {
        CMD_READ if l.structured => CMD_FLAG_DF,
        CMD_READ => 0,
        CMD_WRITE | CMD_TRIM | CMD_FLUSH => CMD_FLAG_FUA,
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
        CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
        CMD_DISC => 0,
        _ => return Err(EINVAL),
    };
    if h.flags & !allowed != 0 {
        return Err(EINVAL);
    }
    let writes = matches!(h.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && l.read_only {
        return Err(EPERM);
    }
    let in_range = h
        .offset
        .checked_add(h.len.into())
        .is_some_and(|end| end <= l.size);
    // Past the end: ENOSPC for writes (doc/proto.md says so for WRITE,
    // WRITE_ZEROES and TRIM), EINVAL for reads and status queries.
    let range_errno = if writes { ENOSPC } else { EINVAL };
    let fua = h.flags & CMD_FLAG_FUA != 0;
    let (offset, len) = (h.offset, h.len);
    match h.kind {
        CMD_DISC => Ok(Command::Disconnect),
        CMD_FLUSH => Ok(Command::Flush),
        // Over the advertised maximum block size (doc/proto.md "Block size
        // constraints": the server may fail it with EINVAL).
        _ if (h.kind == CMD_READ || h.kind == CMD_WRITE) && len > PAYLOAD_LEN_MAX => Err(EINVAL),
        _ if !in_range => Err(range_errno),
        CMD_READ => Ok(Command::Read {
            offset,
            len,
            df: h.flags & CMD_FLAG_DF != 0,
        }),
        CMD_WRITE => Ok(Command::Write { offset, len, fua }),
        CMD_TRIM => Ok(Command::Trim { offset, len, fua }),
        CMD_WRITE_ZEROES => Ok(Command::WriteZeroes {
            offset,
            len,
            fua,
            no_hole: h.flags & CMD_FLAG_NO_HOLE != 0,
            fast: h.flags & CMD_FLAG_FAST_ZERO != 0,
        }),
        // BLOCK_STATUS needs a negotiated context and a non-zero length.
        _ if !l.meta_allocation || len == 0 => Err(EINVAL),
        _ => Ok(Command::BlockStatus {
            offset,
            len,
            req_one: h.flags & CMD_FLAG_REQ_ONE != 0,
        }),
    }
}

/// A reply header as a client sees it (simple reply or structured chunk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    Simple {
        errno: u32,
        cookie: u64,
    },
    Chunk {
        flags: u16,
        kind: u16,
        cookie: u64,
        len: u32,
    },
}

impl ReplyHeader {
    /// Parse from the front of `buf`; `Ok(None)` until the whole header is there.
    pub fn parse(buf: &[u8]) -> Result<Option<ReplyHeader>, NbdError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        match be32(buf) {
            SIMPLE_REPLY_MAGIC if buf.len() >= SIMPLE_REPLY_LEN => Ok(Some(ReplyHeader::Simple {
                errno: be32(&buf[4..]),
                cookie: be64(&buf[8..]),
            })),
            STRUCTURED_REPLY_MAGIC if buf.len() >= CHUNK_HEADER_LEN => {
                Ok(Some(ReplyHeader::Chunk {
                    flags: be16(&buf[4..]),
                    kind: be16(&buf[6..]),
                    cookie: be64(&buf[8..]),
                    len: be32(&buf[16..]),
                }))
            }
            SIMPLE_REPLY_MAGIC | STRUCTURED_REPLY_MAGIC => Ok(None),
            got => Err(NbdError::BadMagic {
                expected: SIMPLE_REPLY_MAGIC.into(),
                got: got.into(),
            }),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            ReplyHeader::Simple { errno, cookie } => {
                out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
                out.extend_from_slice(&errno.to_be_bytes());
                out.extend_from_slice(&cookie.to_be_bytes());
            }
            ReplyHeader::Chunk {
                flags,
                kind,
                cookie,
                len,
            } => {
                out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
                out.extend_from_slice(&flags.to_be_bytes());
                out.extend_from_slice(&kind.to_be_bytes());
                out.extend_from_slice(&cookie.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
    }
}

fn done_flag(done: bool) -> u16 {
    if done {
        REPLY_FLAG_DONE
    } else {
        0
    }
}

/// Header of an OFFSET_DATA chunk; the `data_len` bytes follow it.
pub fn encode_data_chunk(out: &mut Vec<u8>, cookie: u64, offset: u64, data_len: u32, done: bool) {
    let len = data_len.saturating_add(8);
    ReplyHeader::Chunk {
        flags: done_flag(done),
        kind: REPLY_TYPE_OFFSET_DATA,
        cookie,
        len,
    }
    .encode(out);
    out.extend_from_slice(&offset.to_be_bytes());
}

/// An OFFSET_HOLE chunk: `hole_len` bytes at `offset` read as zeroes.
pub fn encode_hole_chunk(out: &mut Vec<u8>, cookie: u64, offset: u64, hole_len: u32, done: bool) {
    ReplyHeader::Chunk {
        flags: done_flag(done),
        kind: REPLY_TYPE_OFFSET_HOLE,
        cookie,
        len: 12,
    }
    .encode(out);
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&hole_len.to_be_bytes());
}

/// A final NONE chunk, or the success/error of a request in the mode in use.
pub fn encode_done(out: &mut Vec<u8>, cookie: u64, structured: bool, errno: u32) {
    match (structured, errno) {
        (false, _) => ReplyHeader::Simple { errno, cookie }.encode(out),
        (true, 0) => ReplyHeader::Chunk {
            flags: REPLY_FLAG_DONE,
            kind: REPLY_TYPE_NONE,
            cookie,
            len: 0,
        }
        .encode(out),
        (true, _) => encode_error_chunk(out, cookie, errno, ""),
    }
}

/// A final ERROR chunk carrying `errno` and a short message.
pub fn encode_error_chunk(out: &mut Vec<u8>, cookie: u64, errno: u32, msg: &str) {
    let msg = &msg.as_bytes()[..msg.len().min(NAME_LEN_MAX)];
    let len = 6 + msg.len() as u32;
    ReplyHeader::Chunk {
        flags: REPLY_FLAG_DONE,
        kind: REPLY_TYPE_ERROR,
        cookie,
        len,
    }
    .encode(out);
    out.extend_from_slice(&errno.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
}

/// A final BLOCK_STATUS chunk: (length, state flags) descriptors for `context_id`.
pub fn encode_block_status(
    out: &mut Vec<u8>,
    cookie: u64,
    context_id: u32,
    extents: &[(u32, u32)],
) {
    let len = 4 + 8 * extents.len() as u32;
    ReplyHeader::Chunk {
        flags: REPLY_FLAG_DONE,
        kind: REPLY_TYPE_BLOCK_STATUS,
        cookie,
        len,
    }
    .encode(out);
    out.extend_from_slice(&context_id.to_be_bytes());
    for (l, s) in extents {
        out.extend_from_slice(&l.to_be_bytes());
        out.extend_from_slice(&s.to_be_bytes());
    }
}
