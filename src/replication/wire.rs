//! The replication wire format: a pure codec (no sockets). A frame is a
//! crc-protected prefix, a bincode header and an optional page payload.
//!
//! ```text
//! prefix (20 bytes, little endian):
//!   magic u32 | header_len u32 | payload_len u32 | header_crc u32 | prefix_crc u32
//! header: bincode (standard config) of `Msg`, header_len bytes
//! payload: the page of a `Write`, payload_len bytes, its crc32 in the header
//! ```
//!
//! `prefix_crc` covers the first 16 bytes, so a damaged length is caught
//! before it is trusted; both lengths are bounded before anything is
//! allocated. `check` then `parse`, as in mini-redis: a partial frame is
//! [`Check::Incomplete`], a normal result.

use serde::{Deserialize, Serialize};

use super::error::ReplicationError;
use super::generation::Generations;

/// First four bytes of every frame ("GMR1").
pub const MAGIC: u32 = 0x474d_5231;
/// Bytes of the fixed prefix.
pub const PREFIX_BYTES: usize = 20;
/// Largest header we decode (the biggest is a `Sums` reply).
pub const HEADER_BYTES_MAX: usize = 64 * 1024;
/// Largest page a single `Write` frame carries; bigger writes are split.
pub const PAYLOAD_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest number of chunk checksums asked for in one `SumsRequest`.
pub const SUMS_COUNT_MAX: u32 = 4096;
/// Largest whole frame.
pub const FRAME_BYTES_MAX: usize = PREFIX_BYTES + HEADER_BYTES_MAX + PAYLOAD_BYTES_MAX;

/// One message. Every message after the challenge carries the group epoch
/// so that a copy host can fence a production host that lost its role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// Copy → production, first message: a fresh random challenge.
    Challenge { nonce: [u8; 32] },
    /// Production → copy: proof of the secret over the copy's challenge and
    /// our own fresh challenge for the copy, and production's generations:
    /// a copy whose label is inconsistent reports its own generation only
    /// when production knows it (an interrupted partial resync, resumed),
    /// and none otherwise (a fresh disk or an interrupted full sync).
    Auth {
        epoch: u64,
        nonce: [u8; 32],
        mac: [u8; 32],
        generations: Generations,
    },
    /// Copy → production: proof of the secret over our challenge, the epoch
    /// it knows, its generations and its disk size.
    Welcome {
        epoch: u64,
        mac: [u8; 32],
        generations: Generations,
        size: u64,
    },
    /// Write the payload at `offset`; `crc` is the crc32 of the payload,
    /// computed on the production host before sending.
    Write {
        epoch: u64,
        seq: u64,
        offset: u64,
        len: u32,
        crc: u32,
        fua: bool,
    },
    /// Zero (or discard, when `trim`) a range: sent as a range, not as pages.
    Zero {
        epoch: u64,
        seq: u64,
        offset: u64,
        len: u64,
        trim: bool,
        punch: bool,
    },
    /// Make every earlier write durable (a barrier for the earlier ones).
    Flush { epoch: u64, seq: u64 },
    /// A resync begins (the first request of a session that has chunks to
    /// resync): the copy durably marks its label inconsistent before it
    /// acknowledges and before it applies any later request, since resync
    /// writes land out of write order and the disk is no image of any
    /// moment until the resync ends (`InSync`). `full`: every chunk is
    /// sent, so the copy's own generation no longer describes its data.
    ResyncBegin { epoch: u64, seq: u64, full: bool },
    /// Ask for the crc32 of `count` chunks of `chunk_bytes` from `offset`.
    SumsRequest {
        epoch: u64,
        seq: u64,
        offset: u64,
        chunk_bytes: u32,
        count: u32,
    },
    /// The copy now holds all of production's data of generation
    /// `current` (sent once a resync is complete): the copy makes earlier
    /// writes durable, then adopts the generation and marks its label
    /// consistent, durably, before it acknowledges.
    InSync { epoch: u64, seq: u64, current: u64 },
    /// Copy → production: request `seq` is applied (durably when asked).
    Ack { epoch: u64, seq: u64 },
    /// Copy → production: the checksums asked for by `seq`.
    Sums {
        epoch: u64,
        seq: u64,
        sums: Vec<u32>,
    },
    /// Copy → production: request `seq`, over `[offset, offset+len)` of
    /// the copy disk (`len` 0 for a request without a range: a flush, a
    /// label update), failed with `errno`.
    Nack {
        epoch: u64,
        seq: u64,
        errno: i32,
        offset: u64,
        len: u64,
    },
}

impl Msg {
    /// The group epoch the message speaks for (none for the challenge).
    pub fn epoch(&self) -> Option<u64> {
        match self {
            Msg::Challenge { .. } => None,
            Msg::Auth { epoch, .. }
            | Msg::Welcome { epoch, .. }
            | Msg::Write { epoch, .. }
            | Msg::Zero { epoch, .. }
            | Msg::Flush { epoch, .. }
            | Msg::ResyncBegin { epoch, .. }
            | Msg::SumsRequest { epoch, .. }
            | Msg::InSync { epoch, .. }
            | Msg::Ack { epoch, .. }
            | Msg::Sums { epoch, .. }
            | Msg::Nack { epoch, .. } => Some(*epoch),
        }
    }
}

/// Result of [`check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// More bytes are needed; nothing was allocated.
    Incomplete,
    /// A whole frame of this many bytes is at the start of the buffer.
    Complete(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<HEADER_BYTES_MAX>()
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

/// Is a whole, well-formed-looking frame at the start of `buf`? Validates
/// the prefix (magic, crc, bounds) so that a caller may size its buffer.
pub fn check(buf: &[u8]) -> Result<Check, ReplicationError> {
    if buf.len() < PREFIX_BYTES {
        return Ok(Check::Incomplete);
    }
    let magic = u32_at(buf, 0);
    if crc32fast::hash(&buf[..16]) != u32_at(buf, 16) {
        return Err(ReplicationError::Checksum { what: "prefix" });
    }
    if magic != MAGIC {
        return Err(ReplicationError::BadMagic(magic));
    }
    let header_len = u32_at(buf, 4) as usize;
    let payload_len = u32_at(buf, 8) as usize;
    if header_len > HEADER_BYTES_MAX {
        return Err(ReplicationError::FrameTooLarge {
            len: header_len as u64,
            max: HEADER_BYTES_MAX as u64,
        });
    }
    if payload_len > PAYLOAD_BYTES_MAX {
        return Err(ReplicationError::FrameTooLarge {
            len: payload_len as u64,
            max: PAYLOAD_BYTES_MAX as u64,
        });
    }
    let total = PREFIX_BYTES + header_len + payload_len;
    if buf.len() < total {
        Ok(Check::Incomplete)
    } else {
        Ok(Check::Complete(total))
    }
}

/// Decode the frame at the start of `buf` (after [`check`] said
/// `Complete`): the message and its payload, every crc verified.
pub fn parse(buf: &[u8]) -> Result<(Msg, &[u8]), ReplicationError> {
    let total = match check(buf)? {
        Check::Complete(n) => n,
        Check::Incomplete => return Err(ReplicationError::TruncatedFrame),
    };
    let Some(head) = parse_head(buf)? else {
        return Err(ReplicationError::TruncatedFrame);
    };
    let payload = &buf[head.head_bytes..total];
    check_payload(&head.msg, payload)?;
    Ok((head.msg, payload))
}

/// The decoded start of a frame whose payload may not be there yet.
#[derive(Debug)]
pub struct Head {
    pub msg: Msg,
    /// Bytes of prefix and header (where the payload starts).
    pub head_bytes: usize,
    pub payload_len: usize,
}

/// Decode prefix and header as soon as they are in `buf` (crc verified),
/// so a reader can receive a large page straight into its own buffer.
/// `None` while the header is incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, ReplicationError> {
    check(buf)?;
    if buf.len() < PREFIX_BYTES {
        return Ok(None);
    }
    let header_len = u32_at(buf, 4) as usize;
    let payload_len = u32_at(buf, 8) as usize;
    let Some(header) = buf.get(PREFIX_BYTES..PREFIX_BYTES + header_len) else {
        return Ok(None);
    };
    if crc32fast::hash(header) != u32_at(buf, 12) {
        return Err(ReplicationError::Checksum { what: "header" });
    }
    let (msg, used): (Msg, usize) = bincode::serde::decode_from_slice(header, config())
        .map_err(|e| ReplicationError::Malformed(e.to_string()))?;
    if used != header.len() {
        return Err(ReplicationError::Malformed(
            "trailing bytes in header".into(),
        ));
    }
    match &msg {
        Msg::Write { len, .. } if *len as usize != payload_len => {
            return Err(ReplicationError::Malformed(format!(
                "write of {len} bytes carries {payload_len} bytes"
            )));
        }
        Msg::Write { .. } => {}
        _ if payload_len != 0 => {
            return Err(ReplicationError::Malformed(
                "payload on a message without one".into(),
            ));
        }
        _ => {}
    }
    Ok(Some(Head {
        msg,
        head_bytes: PREFIX_BYTES + header_len,
        payload_len,
    }))
}

/// Verify the page of a `Write` against the crc32 its header carries (it
/// was computed on the production host before sending); a mismatch means
/// the page is never written.
/// Check a write's page crc computed by the reader (whose length
/// [`parse_head`] already matched to the header).
pub fn check_page_crc(msg: &Msg, got: u32) -> Result<(), ReplicationError> {
    match msg {
        Msg::Write { crc, .. } if *crc == got => Ok(()),
        Msg::Write { .. } => Err(ReplicationError::Checksum { what: "page" }),
        _ => Err(ReplicationError::Malformed(
            "payload on a message without one".into(),
        )),
    }
}

pub fn check_payload(msg: &Msg, payload: &[u8]) -> Result<(), ReplicationError> {
    match msg {
        Msg::Write { len, .. } => {
            if *len as usize != payload.len() {
                return Err(ReplicationError::Malformed(format!(
                    "write of {len} bytes carries {} bytes",
                    payload.len()
                )));
            }
            check_page_crc(msg, crc32fast::hash(payload))
        }
        _ if !payload.is_empty() => Err(ReplicationError::Malformed(
            "payload on a message without one".into(),
        )),
        _ => Ok(()),
    }
}

/// Append the prefix and header of a frame for `msg` to `out`; the caller
/// sends `payload_len` payload bytes right after (so pages are not copied).
pub fn encode_head(msg: &Msg, payload_len: usize, out: &mut Vec<u8>) {
    assert!(
        payload_len <= PAYLOAD_BYTES_MAX,
        "payload bounded by the sender"
    );
    let start = out.len();
    out.extend_from_slice(&[0u8; PREFIX_BYTES]);
    let header_len = bincode::serde::encode_into_std_write(msg, out, config())
        .expect("encoding into a Vec cannot fail for a bounded message");
    let header_crc = crc32fast::hash(&out[start + PREFIX_BYTES..]);
    let prefix = &mut out[start..start + PREFIX_BYTES];
    prefix[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    prefix[4..8].copy_from_slice(&(header_len as u32).to_le_bytes());
    prefix[8..12].copy_from_slice(&(payload_len as u32).to_le_bytes());
    prefix[12..16].copy_from_slice(&header_crc.to_le_bytes());
    let prefix_crc = crc32fast::hash(&prefix[..16]);
    prefix[16..20].copy_from_slice(&prefix_crc.to_le_bytes());
}

/// A whole frame in one buffer (handy for tests and small messages).
pub fn encode(msg: &Msg, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_BYTES + 64 + payload.len());
    encode_head(msg, payload.len(), &mut out);
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(data: &[u8]) -> Msg {
        Msg::Write {
            epoch: 3,
            seq: 9,
            offset: 4096,
            len: data.len() as u32,
            crc: crc32fast::hash(data),
            fua: false,
        }
    }

    #[test]
    fn partial_frame_is_incomplete_not_an_error() {
        let f = encode(&write(&[7u8; 100]), &[7u8; 100]);
        for cut in 0..f.len() {
            assert_eq!(
                check(&f[..cut]).expect("a prefix is never malformed"),
                Check::Incomplete
            );
        }
        assert_eq!(
            check(&f).expect("a whole frame checks"),
            Check::Complete(f.len())
        );
    }

    #[test]
    fn flipped_page_bit_is_a_checksum_error() {
        let data = [5u8; 4096];
        let mut f = encode(&write(&data), &data);
        let n = f.len();
        f[n - 10] ^= 0x10;
        assert!(matches!(
            parse(&f),
            Err(ReplicationError::Checksum { what: "page" })
        ));
    }

    #[test]
    fn oversize_length_is_refused_before_allocation() {
        let mut f = encode(&Msg::Flush { epoch: 1, seq: 1 }, &[]);
        f[8..12].copy_from_slice(&(PAYLOAD_BYTES_MAX as u32 + 1).to_le_bytes());
        let crc = crc32fast::hash(&f[..16]);
        f[16..20].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            check(&f),
            Err(ReplicationError::FrameTooLarge { .. })
        ));
    }
}
