//! The control channel: `status`, `events` and `verify` asking a running
//! member over its group address, in small checksummed JSON frames.
//!
//! A connection to a member's address starts with a 4-byte magic naming the
//! protocol, so one listener carries the group engine, replication and
//! control: [`MAGIC`] is control's. After the magic both sides prove the
//! recovery domain's secret ([`authenticator`]), then the client sends one
//! [`Request`] frame.

use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::frame::{ByteOrder, FrameError, Framing};

use crate::group::engine::auth::{AuthError, Authenticator};

/// First bytes of a control connection.
pub const MAGIC: [u8; 4] = *b"GMCT";
/// Largest control frame either side accepts (a status report is a few KiB).
pub const FRAME_BYTES_MAX: usize = 1 << 20;

/// The control channel's framing (`crate::frame`): big-endian header, as the
/// channel has always sent it.
const FRAMING: Framing = Framing::new(FRAME_BYTES_MAX, ByteOrder::Big);

/// Protocol tag of the control handshake: a proof made for the group engine
/// or replication cannot be replayed here.
pub const AUTH_CONTEXT: [u8; 8] = *b"gm-ctrl1";
/// Time allowed for the whole handshake.
pub const AUTH_TIMEOUT_MS: u64 = 3_000;
/// Time allowed to open the TCP connection.
pub const CONNECT_TIMEOUT_MS: u64 = 3_000;

/// Errors of the control channel.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The connection failed or closed mid-frame.
    #[error("control connection: {0}")]
    Io(#[from] std::io::Error),
    /// A frame announced a length above [`FRAME_BYTES_MAX`]; nothing was allocated.
    #[error("control frame of {0} bytes is over the {FRAME_BYTES_MAX}-byte limit")]
    TooLong(usize),
    /// The payload does not match its crc32.
    #[error("control frame checksum mismatch")]
    Checksum,
    /// The payload is not the JSON we expect.
    #[error("control frame is not valid: {0}")]
    Decode(#[from] serde_json::Error),
    /// The peer did not prove the recovery domain's secret, or refused ours.
    #[error("control authentication: {0} (is the secret the same as the member's?)")]
    Auth(#[from] AuthError),
    /// The member did not accept the connection in time.
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
}

impl From<FrameError> for ControlError {
    fn from(e: FrameError) -> ControlError {
        match e {
            FrameError::Io(e) => ControlError::Io(e),
            FrameError::TooLarge { len, .. } => ControlError::TooLong(len),
            FrameError::Checksum { .. } => ControlError::Checksum,
        }
    }
}

/// The authenticator of the control channel. Its key is derived from the
/// recovery domain's secret (any length a person chose) so it is always
/// 32 bytes, and differs from the group engine's key.
pub fn authenticator(secret: &str) -> Authenticator {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"geomirror control key\0");
    h.update(secret.as_bytes());
    let key = h.finalize();
    Authenticator::new(&key, AUTH_CONTEXT, Duration::from_millis(AUTH_TIMEOUT_MS))
        .expect("a SHA-256 digest is longer than the shortest accepted secret")
}

/// Opens an authenticated control connection to the member at `addr`,
/// ready for one [`Request`] frame.
pub async fn connect(addr: &str, secret: &str) -> Result<TcpStream, ControlError> {
    let mut s = tokio::time::timeout(
        Duration::from_millis(CONNECT_TIMEOUT_MS),
        TcpStream::connect(addr),
    )
    .await
    .map_err(|_| ControlError::ConnectTimeout(addr.to_owned()))??;
    s.write_all(&MAGIC).await?;
    authenticator(secret).client(&mut s).await?;
    Ok(s)
}

/// Requests a control client can make.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Request {
    /// One [`super::status::StatusReport`] frame in answer.
    Status,
    /// Subscribe to group events: after this frame the member sends
    /// newline-delimited JSON event lines until either side closes
    /// (see `crate::obs::bus`).
    Events,
    /// Compare the production disk with every copy online (production host
    /// only); one [`super::verify::VerifyReply`] frame in answer.
    Verify,
    /// As `Verify`, with progress: [`super::verify::VerifyFrame`] frames,
    /// `Progress` at most every [`PROGRESS_INTERVAL_MS`] (and at each tenth
    /// of the work) and at least every [`PROGRESS_HEARTBEAT_MS`], then one
    /// `Done`. A new variant rather than a change to `Verify`, so a client
    /// that expects one frame still gets one; a member that predates this
    /// variant cannot decode it and closes the connection, which the client
    /// reports instead of waiting.
    VerifyStreamed,
}

/// Least time between two progress frames of a streamed verify, except that
/// each tenth of the work done is always sent.
pub const PROGRESS_INTERVAL_MS: u64 = 250;
/// Most time between two frames of a streamed verify: the latest progress is
/// sent again even when unchanged (waiting for another verify to end, a slow
/// batch), so the client can tell a slow member from a dead one.
pub const PROGRESS_HEARTBEAT_MS: u64 = 5_000;
/// A streamed-verify client gives up after this long without a frame.
pub const STREAM_IDLE_TIMEOUT_MS: u64 = 6 * PROGRESS_HEARTBEAT_MS;

/// Writes one frame: length (u32 BE), crc32 of the payload (u32 BE), payload (JSON).
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), ControlError> {
    let payload = serde_json::to_vec(msg)?;
    Ok(FRAMING.write(w, &payload).await?)
}

/// Reads one frame, checking the length bound before allocating and the
/// checksum before decoding.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<T, ControlError> {
    let payload = FRAMING.read(r).await?;
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
    async fn the_control_header_stays_big_endian_for_older_clients() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        write_frame(&mut a, &Request::Status).await.expect("write");
        drop(a);
        let mut raw = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut b, &mut raw)
            .await
            .expect("read");
        let payload = br#""Status""#;
        assert_eq!(raw[..4], (payload.len() as u32).to_be_bytes());
        assert_eq!(raw[4..8], crc32fast::hash(payload).to_be_bytes());
        assert_eq!(&raw[8..], payload);
    }

    #[tokio::test]
    async fn handshake_with_the_same_secret_succeeds_and_another_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move { authenticator("s3cret").server(&mut b).await });
        authenticator("s3cret")
            .client(&mut a)
            .await
            .expect("same secret");
        server.await.expect("join").expect("server side");

        let (mut a, mut b) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move { authenticator("s3cret").server(&mut b).await });
        let r = authenticator("wrong").client(&mut a).await;
        assert!(matches!(r, Err(AuthError::BadProof)), "{r:?}");
        drop(a);
        assert!(server.await.expect("join").is_err());
    }

    #[tokio::test]
    async fn oversize_frame_is_refused_before_allocation() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
        a.write_all(&[0; 4]).await.expect("write");
        let r: Result<Request, _> = read_frame(&mut b).await;
        assert!(matches!(r, Err(ControlError::TooLong(l)) if l == u32::MAX as usize));
    }

    #[tokio::test]
    async fn corrupt_frame_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let payload = serde_json::to_vec(&Request::Status).expect("json");
        a.write_all(&(payload.len() as u32).to_be_bytes())
            .await
            .expect("w");
        a.write_all(&(crc32fast::hash(&payload) ^ 1).to_be_bytes())
            .await
            .expect("w");
        a.write_all(&payload).await.expect("w");
        let r: Result<Request, _> = read_frame(&mut b).await;
        assert!(matches!(r, Err(ControlError::Checksum)));
    }
}
