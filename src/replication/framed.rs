//! Frames over a byte stream: a reader that buffers until [`wire::check`]
//! says a frame is complete (never more than one bounded frame), and a
//! writer helper that sends a header and its page without copying the page.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::ReplicationError;
use super::wire::{self, Check, Msg, FRAME_BYTES_MAX};
use crate::storage::IoBuf;

/// Buffer size the reader starts with; grows up to one frame.
const READ_BUF_BYTES: usize = 256 * 1024;
/// Pages at least this large skip the read buffer.
const DIRECT_PAYLOAD_BYTES_MIN: usize = 64 * 1024;

/// Reads whole frames from `R`.
pub struct FrameReader<R> {
    r: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(r: R) -> FrameReader<R> {
        FrameReader {
            r,
            buf: vec![0; READ_BUF_BYTES],
            start: 0,
            end: 0,
        }
    }

    /// The next frame: its message and (for writes) its page; `None` on a
    /// clean end of stream between frames.
    pub async fn next(&mut self) -> Result<Option<(Msg, Option<IoBuf>)>, ReplicationError> {
        loop {
            let avail = &self.buf[self.start..self.end];
            if let Check::Complete(n) = wire::check(avail)? {
                let (msg, payload) = wire::parse(&avail[..n])?;
                let page = (!payload.is_empty()).then(|| IoBuf::from_slice(payload));
                self.start += n;
                return Ok(Some((msg, page)));
            }
            // A large page is received straight into its own aligned
            // buffer (one copy less than going through `buf`).
            if let Some(head) = wire::parse_head(avail)? {
                if head.payload_len >= DIRECT_PAYLOAD_BYTES_MIN {
                    return self.read_page(head).await.map(Some);
                }
            }
            if self.end == self.buf.len() {
                if self.start > 0 {
                    self.buf.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                } else {
                    // check() validated the lengths, so a frame fits in
                    // FRAME_BYTES_MAX: growing stays bounded.
                    let grown = (self.buf.len() * 2).min(FRAME_BYTES_MAX);
                    self.buf.resize(grown, 0);
                }
            }
            let n = self.r.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return if self.start == self.end {
                    Ok(None)
                } else {
                    Err(ReplicationError::TruncatedFrame)
                };
            }
            self.end += n;
        }
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    async fn read_page(
        &mut self,
        head: wire::Head,
    ) -> Result<(Msg, Option<IoBuf>), ReplicationError> {
        // Overwritten whole below: not zeroed first.
        let mut page = IoBuf::uninit(head.payload_len);
        let have = self.end - self.start - head.head_bytes;
        let from = self.start + head.head_bytes;
        // check() said Incomplete, so fewer than payload_len bytes are here.
        page.extend_from_slice(&self.buf[from..from + have]);
        self.start = 0;
        self.end = 0;
        let page = match page.read_exact_from(&mut self.r).await {
            Ok(()) => page.finish().expect("read_exact_from filled it"),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(ReplicationError::TruncatedFrame)
            }
            Err(e) => return Err(e.into()),
        };
        wire::check_payload(&head.msg, &page)?;
        Ok((head.msg, Some(page)))
    }
}

/// Append the frame for `msg` + `page` to a buffered writer.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    scratch: &mut Vec<u8>,
    msg: &Msg,
    page: &[u8],
) -> Result<(), ReplicationError> {
    scratch.clear();
    wire::encode_head(msg, page.len(), scratch);
    w.write_all(scratch).await?;
    if !page.is_empty() {
        w.write_all(page).await?;
    }
    Ok(())
}
