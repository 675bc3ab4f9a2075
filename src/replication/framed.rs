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
/// After a large page, the next read takes at most this much: enough for a
/// write frame's prefix and header, so that its page, if large too, is
/// received straight into its buffer instead of partly through `buf` (a
/// copy of up to [`READ_BUF_BYTES`] per frame on a stream of large writes).
const HEAD_READ_BYTES: usize = 256;

/// Reads whole frames from `R`.
pub struct FrameReader<R> {
    r: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The last frame had a large page: read the next head on its own.
    head_only: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(r: R) -> FrameReader<R> {
        FrameReader {
            r,
            buf: vec![0; READ_BUF_BYTES],
            start: 0,
            end: 0,
            head_only: false,
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
            let mut want = self.buf.len() - self.end;
            if std::mem::take(&mut self.head_only) {
                want = want.min(HEAD_READ_BYTES);
            }
            let n = self
                .r
                .read(&mut self.buf[self.end..self.end + want])
                .await?;
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
        // The page's crc is computed piece by piece as it arrives.
        let mut crc = crc32fast::Hasher::new();
        crc.update(page.filled_bytes());
        let page = match page.read_exact_seen(&mut self.r, |p| crc.update(p)).await {
            Ok(()) => page.finish().expect("read_exact_from filled it"),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(ReplicationError::TruncatedFrame)
            }
            Err(e) => return Err(e.into()),
        };
        wire::check_page_crc(&head.msg, crc.finalize())?;
        self.head_only = true;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn page(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    fn write(seq: u64, data: &[u8]) -> Msg {
        Msg::Write {
            epoch: 1,
            seq,
            offset: seq * 4096,
            len: data.len() as u32,
            crc: crc32fast::hash(data),
            fua: false,
        }
    }

    #[tokio::test]
    async fn frames_after_large_pages_parse_whole_however_the_stream_is_cut() {
        // Large pages back to back, small frames between them, a page just
        // under the direct size: each one's bytes must come out as sent.
        let pages = [
            page(1 << 20, 1),
            page(200 * 1024, 2),
            page(4096, 3),
            page(DIRECT_PAYLOAD_BYTES_MIN - 1, 4),
            page(4 << 20, 5),
        ];
        let mut stream = Vec::new();
        for (i, p) in pages.iter().enumerate() {
            stream.extend(wire::encode(&write(i as u64, p), p));
            stream.extend(wire::encode(
                &Msg::Ack {
                    epoch: 1,
                    seq: 100 + i as u64,
                },
                &[],
            ));
        }
        for pipe_bytes in [4096, 64 * 1024, 1 << 20] {
            let (mut tx, rx) = tokio::io::duplex(pipe_bytes);
            let sent = stream.clone();
            let feeder = tokio::spawn(async move {
                tx.write_all(&sent).await.expect("feed");
            });
            let mut r = FrameReader::new(rx);
            for (i, p) in pages.iter().enumerate() {
                let (msg, got) = r.next().await.expect("frame").expect("not the end");
                assert!(matches!(msg, Msg::Write { seq, .. } if seq == i as u64));
                assert!(
                    got.expect("a page")[..] == p[..],
                    "page {i}, pipe {pipe_bytes}"
                );
                let (ack, none) = r.next().await.expect("frame").expect("not the end");
                assert!(matches!(ack, Msg::Ack { seq, .. } if seq == 100 + i as u64));
                assert!(none.is_none());
            }
            feeder.await.expect("feeder");
            assert!(r.next().await.expect("clean end").is_none());
        }
    }

    #[tokio::test]
    async fn a_large_page_that_does_not_match_its_crc_is_refused() {
        for len in [DIRECT_PAYLOAD_BYTES_MIN, 1 << 20] {
            let p = page(len, 9);
            let mut frame = wire::encode(&write(1, &p), &p);
            let last = frame.len() - 1;
            frame[last] ^= 0x10;
            let (mut tx, rx) = tokio::io::duplex(16 * 1024);
            let feeder = tokio::spawn(async move { tx.write_all(&frame).await });
            let got = FrameReader::new(rx).next().await;
            assert!(
                matches!(got, Err(ReplicationError::Checksum { what: "page" })),
                "{len} B page with a flipped bit: {got:?}"
            );
            feeder.await.expect("feeder").expect("fed");
        }
    }
}
