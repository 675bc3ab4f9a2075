//! `IoBuf`: a heap buffer aligned to 4096 bytes, so that the same buffer can
//! be handed to O_DIRECT reads and writes and to io_uring.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

pub use super::buf_fill::UninitBuf;
use super::buf_pool as pool;

/// Alignment of every buffer: the largest logical block size we meet.
pub const ALIGN: usize = 4096;

/// An owned byte buffer whose start is 4096-aligned.
///
/// Invariant: the first `init` bytes of the allocation are initialised and
/// `len <= init <= cap`; only the first `len` are visible. A buffer that
/// will be overwritten whole is built with [`IoBuf::uninit`], so that no
/// time goes into zeroing bytes about to be replaced.
pub struct IoBuf {
    ptr: NonNull<u8>,
    len: usize,
    init: usize,
    cap: usize,
}

// SAFETY: IoBuf owns its allocation exclusively, like Vec<u8>; moving it
// between threads moves that ownership.
unsafe impl Send for IoBuf {}
// SAFETY: shared access only reads through &[u8], like Vec<u8>.
unsafe impl Sync for IoBuf {}

impl IoBuf {
    /// An allocation of at least `len` bytes (rounded up to [`ALIGN`], or
    /// to a power of two where the pool recycles it), zeroed or not;
    /// nothing is visible yet (`len` and `init` are 0 unless zeroed).
    fn alloc(len: usize, zeroed: bool) -> IoBuf {
        let cap = pool::capacity(len);
        if let Some(ptr) = pool::take(cap) {
            let mut b = IoBuf {
                ptr,
                len: 0,
                init: 0,
                cap,
            };
            if zeroed {
                // SAFETY: ptr is valid for cap bytes (a pooled allocation
                // of exactly this capacity).
                unsafe { b.ptr.as_ptr().write_bytes(0, cap) };
                b.init = cap;
            }
            return b;
        }
        let layout = Layout::from_size_align(cap, ALIGN)
            .expect("size rounded to ALIGN cannot overflow isize here");
        // SAFETY: layout has a non-zero size.
        let raw = unsafe {
            if zeroed {
                alloc::alloc_zeroed(layout)
            } else {
                alloc::alloc(layout)
            }
        };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        let init = if zeroed { cap } else { 0 };
        IoBuf {
            ptr,
            len: 0,
            init,
            cap,
        }
    }

    /// A buffer of `len` zero bytes.
    pub fn zeroed(len: usize) -> IoBuf {
        let mut b = IoBuf::alloc(len, true);
        b.len = len;
        b
    }

    /// A buffer of `len` bytes to be filled (from a file, a socket, a
    /// slice) before it is read: see [`UninitBuf`].
    pub fn uninit(len: usize) -> UninitBuf {
        UninitBuf::new(IoBuf::alloc(len, false), len)
    }

    /// A copy of `data`.
    pub fn from_slice(data: &[u8]) -> IoBuf {
        let mut b = IoBuf::uninit(data.len());
        b.extend_from_slice(data);
        b.finish()
            .expect("a buffer the size of the slice is full after copying it")
    }

    /// Bytes in use.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes allocated (a multiple of [`ALIGN`]).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Shrink the visible length (the allocation stays).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Grow or shrink the visible length within the capacity; new bytes are
    /// whatever the buffer held before, or zero where it never held any.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "IoBuf::set_len beyond capacity");
        if len > self.init {
            // SAFETY: init < len <= cap, so the range lies in the allocation.
            unsafe {
                self.ptr
                    .as_ptr()
                    .add(self.init)
                    .write_bytes(0, len - self.init)
            };
            self.init = len;
        }
        self.len = len;
    }

    /// Start of the allocation, for the filler only.
    pub(super) fn raw(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Make the first `len` bytes visible.
    ///
    /// # Safety
    /// The first `len` bytes of the allocation must be initialised, and
    /// `len <= capacity()`.
    // SAFETY: unsafe to call, not to run: the caller vouches that the
    // first `len` bytes are initialised (see # Safety above).
    pub(super) unsafe fn set_init_len(&mut self, len: usize) {
        debug_assert!(len <= self.cap);
        self.init = self.init.max(len);
        self.len = len;
    }
}

impl std::ops::Deref for IoBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap bytes, of which the first init >= len
        // are initialised (the type's invariant).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for IoBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in Deref, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        if pool::give(self.ptr, self.cap) {
            return;
        }
        let layout =
            Layout::from_size_align(self.cap, ALIGN).expect("layout was valid at allocation");
        // SAFETY: allocated in `alloc` with this same layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) }
    }
}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IoBuf({} bytes)", self.len)
    }
}

impl Clone for IoBuf {
    fn clone(&self) -> IoBuf {
        IoBuf::from_slice(self)
    }
}

impl PartialEq for IoBuf {
    fn eq(&self, other: &IoBuf) -> bool {
        **self == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_zeroed() {
        for len in [0, 1, 4095, 4096, 4097, 1 << 20] {
            let b = IoBuf::zeroed(len);
            assert_eq!(b.as_ptr() as usize % ALIGN, 0);
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&x| x == 0));
        }
    }

    #[test]
    fn growing_past_what_was_written_shows_zeroes() {
        let mut b = IoBuf::from_slice(&[7; 100]);
        b.truncate(10);
        b.set_len(4000);
        assert!(b[..100].iter().all(|&x| x == 7));
        assert!(b[100..].iter().all(|&x| x == 0));
    }

    #[test]
    fn a_recycled_buffer_is_aligned_and_shows_only_zeroes_or_what_was_written() {
        for len in [64 * 1024, 100_000, 1 << 20, 3 << 20] {
            let mut dirty = IoBuf::zeroed(len);
            dirty.fill(0xa5);
            drop(dirty);
            let z = IoBuf::zeroed(len);
            assert_eq!(z.as_ptr() as usize % ALIGN, 0);
            assert!(z.iter().all(|&x| x == 0), "zeroed({len})");
            drop(z);
            let mut dirty = IoBuf::from_slice(&vec![0x5a; len]);
            dirty.truncate(0);
            drop(dirty);
            // An uninitialised buffer shows zeroes where it grows, never
            // what an earlier owner wrote.
            let mut u = IoBuf::alloc(len, false);
            u.set_len(len);
            assert!(u.iter().all(|&x| x == 0), "grown to {len}");
        }
    }

    #[test]
    fn copies_are_aligned_and_equal() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let b = IoBuf::from_slice(&data);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        assert_eq!(&b[..], &data[..]);
        assert_eq!(b.clone(), b);
    }
}
