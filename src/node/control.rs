//! The control channel: `status` (and later other commands) asking a running
//! member over its group address, in small checksummed JSON frames.
//!
//! A connection to a member's address starts with a 4-byte magic naming the
//! protocol, so one listener carries the group engine, replication and
//! control: [`MAGIC`] is control's.

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// First bytes of a control connection.
pub const MAGIC: [u8; 4] = *b"GMCT";
/// Largest control frame either side accepts (a status report is a few KiB).
pub const FRAME_BYTES_MAX: u32 = 1 << 20;

/// Errors of the control channel.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The connection failed or closed mid-frame.
    #[error("control connection: {0}")]
    Io(#[from] std::io::Error),
    /// A frame announced a length above [`FRAME_BYTES_MAX`]; nothing was allocated.
    #[error("control frame of {0} bytes is over the {FRAME_BYTES_MAX}-byte limit")]
    TooLong(u32),
    /// The payload does not match its crc32.
    #[error("control frame checksum mismatch")]
    Checksum,
    /// The payload is not the JSON we expect.
    #[error("control frame is not valid: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Requests a control client can make.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Request {
    Status,
}

/// Writes one frame: length (u32 BE), crc32 of the payload (u32 BE), payload (JSON).
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), ControlError> {
    let payload = serde_json::to_vec(msg)?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l <= FRAME_BYTES_MAX)
        .ok_or(ControlError::TooLong(u32::MAX))?;
    let mut buf = Vec::with_capacity(8 + payload.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
    buf.extend_from_slice(&payload);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame, checking the length bound before allocating and the
/// checksum before decoding.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<T, ControlError> {
    let mut head = [0u8; 8];
    r.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    if len > FRAME_BYTES_MAX {
        return Err(ControlError::TooLong(len));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    if crc32fast::hash(&payload) != crc {
        return Err(ControlError::Checksum);
    }
    Ok(serde_json::from_slice(&payload)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        write_frame(&mut a, &Request::Status).await.expect("write");
        let got: Request = read_frame(&mut b).await.expect("read");
        assert_eq!(got, Request::Status);
    }

    #[tokio::test]
    async fn oversize_frame_is_refused_before_allocation() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
        a.write_all(&[0; 4]).await.expect("write");
        let r: Result<Request, _> = read_frame(&mut b).await;
        assert!(matches!(r, Err(ControlError::TooLong(u32::MAX))));
    }

    #[tokio::test]
    async fn corrupt_frame_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let payload = serde_json::to_vec(&Request::Status).expect("json");
        a.write_all(&(payload.len() as u32).to_be_bytes()).await.expect("w");
        a.write_all(&(crc32fast::hash(&payload) ^ 1).to_be_bytes()).await.expect("w");
        a.write_all(&payload).await.expect("w");
        let r: Result<Request, _> = read_frame(&mut b).await;
        assert!(matches!(r, Err(ControlError::Checksum)));
    }
}
