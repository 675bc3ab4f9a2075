//! Bounded length + crc32 framing of one message on a stream, shared by the
//! group engine's RPC and the control channel.
//!
//! A frame is an 8-byte header (payload length, crc32 of the payload) then
//! the payload. The header is checked against the limit before any payload
//! buffer is allocated, so a bad length costs nothing; the crc is checked
//! before the payload is handed on. Each protocol fixes its own limit and the
//! header's byte order (both wires were deployed before they shared this
//! code, so neither changed a byte). Replication has its own codec: its frames
//! carry a typed header and are parsed in place for speed.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Header: payload length (u32) then crc32 of the payload (u32).
pub const HEADER_BYTES: usize = 8;

/// Byte order of the two header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteOrder {
    /// Most significant byte first (the control channel).
    Big,
    /// Least significant byte first (the group engine).
    Little,
}

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

/// One protocol's framing: its payload limit and header byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// Largest payload accepted or sent; at most `u32::MAX`.
    pub payload_bytes_max: usize,
    /// Byte order of the header.
    pub order: ByteOrder,
}

impl Framing {
    /// A framing refusing payloads above `payload_bytes_max` (clamped to
    /// what the u32 length field can say).
    pub const fn new(payload_bytes_max: usize, order: ByteOrder) -> Framing {
        let max = if payload_bytes_max > u32::MAX as usize {
            u32::MAX as usize
        } else {
            payload_bytes_max
        };
        Framing {
            payload_bytes_max: max,
            order,
        }
    }

    fn get(&self, b: [u8; 4]) -> u32 {
        match self.order {
            ByteOrder::Big => u32::from_be_bytes(b),
            ByteOrder::Little => u32::from_le_bytes(b),
        }
    }

    fn put(&self, v: u32) -> [u8; 4] {
        match self.order {
            ByteOrder::Big => v.to_be_bytes(),
            ByteOrder::Little => v.to_le_bytes(),
        }
    }

    /// Parses and bounds a header; the length check happens here, before
    /// any caller allocates the payload.
    pub fn parse_header(&self, raw: &[u8; HEADER_BYTES]) -> Result<Header, FrameError> {
        let len = self.get([raw[0], raw[1], raw[2], raw[3]]) as usize;
        let crc = self.get([raw[4], raw[5], raw[6], raw[7]]);
        if len > self.payload_bytes_max {
            return Err(FrameError::TooLarge {
                len,
                max: self.payload_bytes_max,
            });
        }
        Ok(Header { len, crc })
    }

    /// Pure decode of a buffer: `Ok(None)` while the frame is incomplete,
    /// `Ok(Some((payload, consumed)))` once it is whole and its crc matches.
    pub fn decode<'a>(&self, buf: &'a [u8]) -> Result<Option<(&'a [u8], usize)>, FrameError> {
        let Some(raw) = buf.first_chunk::<HEADER_BYTES>() else {
            return Ok(None);
        };
        let h = self.parse_header(raw)?;
        let end = HEADER_BYTES + h.len;
        let Some(payload) = buf.get(HEADER_BYTES..end) else {
            return Ok(None);
        };
        check_crc(&h, payload)?;
        Ok(Some((payload, end)))
    }

    /// Encodes one frame (header + payload) into a new buffer.
    pub fn encode(&self, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
        let too_large = || FrameError::TooLarge {
            len: payload.len(),
            max: self.payload_bytes_max,
        };
        if payload.len() > self.payload_bytes_max {
            return Err(too_large());
        }
        let len = u32::try_from(payload.len()).map_err(|_| too_large())?;
        let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
        out.extend_from_slice(&self.put(len));
        out.extend_from_slice(&self.put(crc32fast::hash(payload)));
        out.extend_from_slice(payload);
        Ok(out)
    }

    /// Reads one whole frame from a stream: header first, bounded, then
    /// exactly the announced payload.
    pub async fn read<R: AsyncRead + Unpin>(&self, r: &mut R) -> Result<Vec<u8>, FrameError> {
        let mut raw = [0u8; HEADER_BYTES];
        r.read_exact(&mut raw).await?;
        let h = self.parse_header(&raw)?;
        let mut payload = vec![0u8; h.len];
        r.read_exact(&mut payload).await?;
        check_crc(&h, &payload)?;
        Ok(payload)
    }

    /// Writes one frame in a single write and flushes it.
    pub async fn write<W: AsyncWrite + Unpin>(
        &self,
        w: &mut W,
        payload: &[u8],
    ) -> Result<(), FrameError> {
        let buf = self.encode(payload)?;
        w.write_all(&buf).await?;
        w.flush().await?;
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BOTH: [ByteOrder; 2] = [ByteOrder::Big, ByteOrder::Little];

    proptest! {
        #[test]
        fn any_bytes_decode_without_panic(buf in proptest::collection::vec(any::<u8>(), 0..64), big in any::<bool>()) {
            let f = Framing::new(16, if big { ByteOrder::Big } else { ByteOrder::Little });
            // Whatever arrives, the result is a frame, "incomplete" or an error.
            if let Ok(Some((p, used))) = f.decode(&buf) {
                prop_assert!(p.len() <= 16 && used <= buf.len());
            }
        }

        #[test]
        fn encoded_frames_decode_to_their_payload(p in proptest::collection::vec(any::<u8>(), 0..512), big in any::<bool>()) {
            let f = Framing::new(512, if big { ByteOrder::Big } else { ByteOrder::Little });
            let bytes = f.encode(&p).expect("within bound");
            let (got, used) = f.decode(&bytes).expect("valid").expect("whole");
            prop_assert_eq!(got, &p[..]);
            prop_assert_eq!(used, bytes.len());
        }
    }

    #[test]
    fn round_trip_and_incomplete_is_not_an_error() {
        for order in BOTH {
            let f = Framing::new(1 << 20, order);
            let bytes = f.encode(b"hello").expect("small frame");
            for cut in 0..bytes.len() {
                assert!(f.decode(&bytes[..cut]).expect("partial").is_none());
            }
            let (p, used) = f.decode(&bytes).expect("ok").expect("whole");
            assert_eq!((p, used), (&b"hello"[..], bytes.len()));
        }
    }

    #[test]
    fn the_header_is_length_then_crc_in_the_protocols_byte_order() {
        let crc = crc32fast::hash(b"hello");
        let big = Framing::new(64, ByteOrder::Big)
            .encode(b"hello")
            .expect("ok");
        assert_eq!(big[..4], 5u32.to_be_bytes());
        assert_eq!(big[4..8], crc.to_be_bytes());
        let little = Framing::new(64, ByteOrder::Little)
            .encode(b"hello")
            .expect("ok");
        assert_eq!(little[..4], 5u32.to_le_bytes());
        assert_eq!(little[4..8], crc.to_le_bytes());
        assert_eq!(big[8..], little[8..]);
    }

    #[test]
    fn oversize_length_is_refused_from_the_header_alone_and_never_sent() {
        for order in BOTH {
            let f = Framing::new(1 << 20, order);
            // Only the header is present: the refusal cannot depend on a payload buffer.
            let raw = [0xff; HEADER_BYTES];
            assert!(matches!(
                f.decode(&raw),
                Err(FrameError::TooLarge { len, max: 0x10_0000 }) if len == u32::MAX as usize
            ));
            let small = Framing::new(4, order);
            assert!(matches!(
                small.encode(b"hello"),
                Err(FrameError::TooLarge { len: 5, max: 4 })
            ));
        }
    }

    #[test]
    fn flipped_payload_bit_fails_the_checksum() {
        for order in BOTH {
            let f = Framing::new(1 << 20, order);
            let mut bytes = f.encode(b"payload").expect("small frame");
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            assert!(matches!(f.decode(&bytes), Err(FrameError::Checksum { .. })));
        }
    }

    #[tokio::test]
    async fn a_stream_carries_frames_back_to_back_and_eof_is_an_io_error() {
        let f = Framing::new(1 << 20, ByteOrder::Big);
        let (mut a, mut b) = tokio::io::duplex(4096);
        f.write(&mut a, b"one").await.expect("write");
        f.write(&mut a, b"").await.expect("write");
        drop(a);
        assert_eq!(f.read(&mut b).await.expect("first"), b"one");
        assert!(f.read(&mut b).await.expect("empty").is_empty());
        assert!(matches!(f.read(&mut b).await, Err(FrameError::Io(_))));
    }
}
