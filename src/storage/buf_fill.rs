//! `UninitBuf`: an aligned buffer being filled, so that a read's destination
//! is not zeroed first; only bytes already written can ever be seen.

use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;

use tokio::io::{AsyncRead, ReadBuf};

use super::buf::IoBuf;

/// A buffer of a fixed target length, filled front to back.
///
/// The bytes written so far (`filled()`) are initialised; the rest
/// ("spare") are only ever exposed as `MaybeUninit<u8>` or as a raw pointer
/// for the kernel to write into. [`UninitBuf::finish`] turns a full buffer
/// into an [`IoBuf`].
pub struct UninitBuf {
    /// Visible length = initialised length = bytes filled.
    buf: IoBuf,
    target: usize,
}

impl UninitBuf {
    pub(super) fn new(buf: IoBuf, target: usize) -> UninitBuf {
        debug_assert!(target <= buf.capacity() && buf.is_empty());
        UninitBuf { buf, target }
    }

    /// The length the buffer will have when full.
    pub fn target(&self) -> usize {
        self.target
    }

    /// Bytes written so far.
    pub fn filled(&self) -> usize {
        self.buf.len()
    }

    /// Bytes still to write.
    pub fn remaining(&self) -> usize {
        self.target - self.buf.len()
    }

    pub fn is_full(&self) -> bool {
        self.remaining() == 0
    }

    /// The bytes written so far.
    pub fn filled_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The part still to write.
    pub fn spare_mut(&mut self) -> &mut [MaybeUninit<u8>] {
        let filled = self.buf.len();
        // SAFETY: filled <= target <= capacity, so the range is in the allocation;
        // MaybeUninit<u8> may hold any (or no) value; &mut self is exclusive.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.buf.raw().add(filled).cast::<MaybeUninit<u8>>(),
                self.target - filled,
            )
        }
    }

    /// Where the next byte goes, for a kernel (io_uring) read of at most
    /// [`remaining`](Self::remaining) bytes. The pointer stays valid while
    /// `self` is neither moved out of its owner's storage nor dropped (the
    /// allocation itself never moves).
    pub fn spare_ptr(&mut self) -> *mut u8 {
        self.spare_mut().as_mut_ptr().cast()
    }

    /// Record that the first `n` spare bytes have been written.
    ///
    /// # Safety
    /// The first `n` bytes of [`spare_mut`](Self::spare_mut) must have been
    /// initialised (by safe writes through it, or by the kernel through
    /// [`spare_ptr`](Self::spare_ptr)).
    // SAFETY: unsafe to call, not to run: the caller vouches that the
    // first `n` spare bytes are initialised (see # Safety above).
    pub unsafe fn advance(&mut self, n: usize) {
        assert!(n <= self.remaining(), "UninitBuf::advance past its target");
        let len = self.buf.len() + n;
        // SAFETY: the caller vouches for the n new bytes; those before were
        // already initialised; len <= target <= capacity.
        unsafe { self.buf.set_init_len(len) }
    }

    /// Copy as much of `data` as fits; returns the bytes copied.
    pub fn extend_from_slice(&mut self, data: &[u8]) -> usize {
        let spare = self.spare_mut();
        let n = spare.len().min(data.len());
        for (d, s) in spare[..n].iter_mut().zip(&data[..n]) {
            d.write(*s);
        }
        // SAFETY: the loop above wrote the first n spare bytes.
        unsafe { self.advance(n) };
        n
    }

    /// Fill the rest from `file` at `offset` (pread, continuing short
    /// reads); end of file before the target is `UnexpectedEof`.
    pub fn read_exact_at(&mut self, file: &File, mut offset: u64) -> io::Result<()> {
        while !self.is_full() {
            let want = self.remaining();
            let pos = libc::off_t::try_from(offset)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            // SAFETY: spare_ptr is valid for `want` writable bytes; pread
            // writes at most `want` bytes there and returns how many.
            let rc = unsafe { libc::pread(file.as_raw_fd(), self.spare_ptr().cast(), want, pos) };
            match rc {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n if n > 0 => {
                    let n = n as usize;
                    // SAFETY: pread initialised the first n spare bytes.
                    unsafe { self.advance(n) };
                    offset += n as u64;
                }
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Fill the rest from a stream; end of stream before the target is
    /// `UnexpectedEof`.
    pub async fn read_exact_from<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> io::Result<()> {
        self.read_exact_seen(r, |_| {}).await
    }

    /// [`read_exact_from`](Self::read_exact_from), handing each piece to
    /// `seen` as it lands, while it is still in the CPU's cache (a checksum
    /// computed there costs less than a second pass over the whole buffer).
    pub async fn read_exact_seen<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        mut seen: impl FnMut(&[u8]),
    ) -> io::Result<()> {
        while !self.is_full() {
            let n = std::future::poll_fn(|cx| {
                let mut rb = ReadBuf::uninit(self.spare_mut());
                std::pin::Pin::new(&mut *r)
                    .poll_read(cx, &mut rb)
                    .map_ok(|()| rb.filled().len())
            })
            .await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            // SAFETY: ReadBuf only counts bytes as filled once they have been
            // initialised, and its storage is the start of the spare part.
            unsafe { self.advance(n) };
            let filled = self.filled_bytes();
            seen(&filled[filled.len() - n..]);
        }
        Ok(())
    }

    /// The full buffer, or `self` back if some bytes are still missing.
    pub fn finish(self) -> Result<IoBuf, UninitBuf> {
        if self.is_full() {
            Ok(self.buf)
        } else {
            Err(self)
        }
    }

    /// The bytes written so far, as a buffer of that length.
    pub fn into_filled(self) -> IoBuf {
        self.buf
    }
}

impl std::fmt::Debug for UninitBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UninitBuf({}/{} bytes)", self.filled(), self.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn only_written_bytes_are_visible() {
        let mut b = IoBuf::uninit(10_000);
        assert_eq!(b.filled(), 0);
        assert_eq!(b.extend_from_slice(&[1; 4000]), 4000);
        assert_eq!(b.filled_bytes(), &[1; 4000][..]);
        assert_eq!(b.extend_from_slice(&[2; 8000]), 6000, "copies what fits");
        let full = b.finish().expect("full");
        assert_eq!(full.len(), 10_000);
        assert_eq!(full.as_ptr() as usize % super::super::buf::ALIGN, 0);
        assert!(full[4000..].iter().all(|&x| x == 2));
    }

    #[test]
    fn unfinished_buffer_is_refused_and_keeps_its_bytes() {
        let mut b = IoBuf::uninit(100);
        b.extend_from_slice(b"abc");
        let b = b.finish().expect_err("97 bytes missing");
        assert_eq!(b.remaining(), 97);
        assert_eq!(&b.into_filled()[..], b"abc");
    }

    #[test]
    fn file_read_fills_or_reports_eof() {
        let mut f = tempfile::tempfile().expect("temp file");
        let data: Vec<u8> = (0..9000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).expect("write");
        let mut b = IoBuf::uninit(5000);
        b.read_exact_at(&f, 3000).expect("read");
        assert_eq!(&b.finish().expect("full")[..], &data[3000..8000]);
        let mut b = IoBuf::uninit(5000);
        let e = b.read_exact_at(&f, 6000).expect_err("past the end");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(b.filled(), 3000, "the bytes that were there are kept");
    }

    #[tokio::test]
    async fn stream_read_fills_across_short_reads_or_reports_eof() {
        let (mut tx, mut rx) = tokio::io::duplex(64);
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(&sent).await.expect("send");
        });
        let mut b = IoBuf::uninit(4096);
        b.read_exact_from(&mut rx).await.expect("read");
        assert_eq!(&b.finish().expect("full")[..], &data[..4096]);
        // The writer ends (closing the stream) once the rest is taken.
        let mut b = IoBuf::uninit(4096);
        let e = b.read_exact_from(&mut rx).await.expect_err("stream ends");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(b.filled_bytes(), &data[4096..]);
        writer.await.expect("writer");
    }
}
