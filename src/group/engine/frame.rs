//! The engine RPC's framing: `crate::frame` with the engine's limits and a
//! little-endian header, as the engine has always sent it.

use tokio::io::{AsyncRead, AsyncWrite};

use crate::frame::{ByteOrder, Framing};
pub use crate::frame::{FrameError, Header, HEADER_BYTES};

/// Largest payload accepted in one frame. Snapshots are sent in chunks of at
/// most [`SNAPSHOT_CHUNK_BYTES_MAX`], so they always fit.
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// Size of one snapshot chunk handed to openraft (`snapshot_max_chunk_size`):
/// small enough to cross a slow link within the RPC timeout.
pub const SNAPSHOT_CHUNK_BYTES_MAX: u64 = 1 << 20;

/// The engine's framing with payloads of at most `max` bytes.
const fn framing(max: usize) -> Framing {
    Framing::new(max, ByteOrder::Little)
}

/// Pure decode of a buffer: `Ok(None)` while the frame is incomplete,
/// `Ok(Some((payload, consumed)))` once it is whole and its crc matches.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    framing(max).decode(buf)
}

/// Encodes one frame (header + payload) into a new buffer.
pub fn encode(payload: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    framing(max).encode(payload)
}

/// Reads one whole frame from a stream: header first, bounded, then exactly
/// the announced payload.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Vec<u8>, FrameError> {
    framing(max).read(r).await
}

/// Writes one frame and flushes it.
pub async fn write<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
    max: usize,
) -> Result<(), FrameError> {
    framing(max).write(w, payload).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_header_stays_little_endian() {
        // Members of different versions must keep understanding each other.
        let f = encode(b"hello", FRAME_BYTES_MAX).expect("small frame");
        assert_eq!(f[..4], 5u32.to_le_bytes());
        assert_eq!(f[4..8], crc32fast::hash(b"hello").to_le_bytes());
        let (p, used) = decode(&f, FRAME_BYTES_MAX).expect("ok").expect("whole");
        assert_eq!((p, used), (&b"hello"[..], f.len()));
    }

    #[test]
    fn a_length_over_the_engine_bound_is_refused_from_the_header() {
        let mut raw = [0u8; HEADER_BYTES];
        raw[..4].copy_from_slice(&(FRAME_BYTES_MAX as u32 + 1).to_le_bytes());
        assert!(matches!(
            decode(&raw, FRAME_BYTES_MAX),
            Err(FrameError::TooLarge { .. })
        ));
    }
}
