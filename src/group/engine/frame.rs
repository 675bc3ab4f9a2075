//! Length + crc32 framing of engine RPC messages: the header is checked
//! before any payload buffer is allocated, so a bad length costs nothing.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest payload accepted in one frame. Snapshots are sent in chunks of at
/// most [`SNAPSHOT_CHUNK_BYTES_MAX`], so they always fit.
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// Size of one snapshot chunk handed to openraft (`snapshot_max_chunk_size`):
/// small enough to cross a slow link within the RPC timeout.
pub const SNAPSHOT_CHUNK_BYTES_MAX: u64 = 1 << 20;
/// Header: payload length (u32 LE) then crc32 of the payload (u32 LE).
pub const HEADER_BYTES: usize = 8;

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The announced length exceeds the bound; nothing was allocated.
    #[error("frame of {len} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// Announced payload length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The payload does not match its checksum.
    #[error("frame checksum mismatch (header {expected:#010x}, payload {actual:#010x})")]
    Checksum {
        /// crc32 announced in the header.
        expected: u32,
        /// crc32 of the bytes received.
        actual: u32,
    },
    /// The stream ended or failed.
    #[error("frame i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A parsed, validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Payload length in bytes, already checked against the limit.
    pub len: usize,
    /// crc32 of the payload.
    pub crc: u32,
}

impl Header {
    /// Parses and bounds a header; the length check happens here, before
    /// any caller allocates the payload.
    pub fn parse(raw: &[u8; HEADER_BYTES], max: usize) -> Result<Header, FrameError> {
        let len = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
        let crc = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
        if len > max {
            return Err(FrameError::TooLarge { len, max });
        }
        Ok(Header { len, crc })
    }
}

/// Pure decode of a buffer: `Ok(None)` while the frame is incomplete,
/// `Ok(Some((payload, consumed)))` once it is whole and its crc matches.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(raw) = buf.first_chunk::<HEADER_BYTES>() else {
        return Ok(None);
    };
    let h = Header::parse(raw, max)?;
    let end = HEADER_BYTES + h.len;
    let Some(payload) = buf.get(HEADER_BYTES..end) else {
        return Ok(None);
    };
    check_crc(&h, payload)?;
    Ok(Some((payload, end)))
}

/// Encodes one frame (header + payload) into a new buffer.
pub fn encode(payload: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    if payload.len() > max {
        return Err(FrameError::TooLarge {
            len: payload.len(),
            max,
        });
    }
    let len = u32::try_from(payload.len()).expect("bounded by FRAME_BYTES_MAX < 4 GiB");
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

fn check_crc(h: &Header, payload: &[u8]) -> Result<(), FrameError> {
    let actual = crc32fast::hash(payload);
    if actual != h.crc {
        return Err(FrameError::Checksum {
            expected: h.crc,
            actual,
        });
    }
    Ok(())
}

/// Reads one whole frame from a stream: header first, bounded, then exactly
/// the announced payload.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut raw = [0u8; HEADER_BYTES];
    r.read_exact(&mut raw).await?;
    let h = Header::parse(&raw, max)?;
    let mut payload = vec![0u8; h.len];
    r.read_exact(&mut payload).await?;
    check_crc(&h, &payload)?;
    Ok(payload)
}

/// Writes one frame and flushes it.
pub async fn write<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
    max: usize,
) -> Result<(), FrameError> {
    let buf = encode(payload, max)?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_bytes_decode_without_panic(buf in proptest::collection::vec(any::<u8>(), 0..64)) {
            // Whatever arrives, the result is a frame, "incomplete" or an error.
            if let Ok(Some((p, used))) = decode(&buf, 16) {
                prop_assert!(p.len() <= 16 && used <= buf.len());
            }
        }

        #[test]
        fn encoded_frames_decode_to_their_payload(p in proptest::collection::vec(any::<u8>(), 0..512)) {
            let f = encode(&p, 512).expect("within bound");
            let (got, used) = decode(&f, 512).expect("valid").expect("whole");
            prop_assert_eq!(got, &p[..]);
            prop_assert_eq!(used, f.len());
        }
    }

    #[test]
    fn round_trip_and_incomplete_is_not_an_error() {
        let f = encode(b"hello", FRAME_BYTES_MAX).expect("small frame");
        for cut in 0..f.len() {
            assert!(decode(&f[..cut], FRAME_BYTES_MAX)
                .expect("partial")
                .is_none());
        }
        let (p, used) = decode(&f, FRAME_BYTES_MAX).expect("ok").expect("whole");
        assert_eq!((p, used), (&b"hello"[..], f.len()));
    }

    #[test]
    fn oversize_length_is_refused_from_the_header_alone() {
        let mut raw = [0u8; HEADER_BYTES];
        raw[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        // Only the header is present: the refusal cannot depend on a payload buffer.
        assert!(matches!(
            decode(&raw, FRAME_BYTES_MAX),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn flipped_payload_bit_fails_the_checksum() {
        let mut f = encode(b"payload", FRAME_BYTES_MAX).expect("small frame");
        let last = f.len() - 1;
        f[last] ^= 1;
        assert!(matches!(
            decode(&f, FRAME_BYTES_MAX),
            Err(FrameError::Checksum { .. })
        ));
    }
}
