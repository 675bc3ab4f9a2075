//! What replication needs from the durable dirty bitmap ([`DirtyLog`]),
//! an in-memory implementation for tests, and a chunk bitset.

use std::io;
use std::sync::Mutex;

/// A set of chunk indices, one bit each (16 Mi chunks cost 2 MiB).
#[derive(Debug, Clone, Default)]
pub struct ChunkSet {
    words: Vec<u64>,
    count: u64,
    chunks: u64,
}

impl ChunkSet {
    /// An empty set able to hold chunks `0..chunks`.
    pub fn new(chunks: u64) -> ChunkSet {
        ChunkSet {
            words: vec![0; chunks.div_ceil(64) as usize],
            count: 0,
            chunks,
        }
    }

    /// Add `c`; returns true when it was not there. Chunks past the end
    /// are ignored.
    pub fn insert(&mut self, c: u64) -> bool {
        if c >= self.chunks {
            return false;
        }
        let (w, b) = ((c / 64) as usize, c % 64);
        let Some(word) = self.words.get_mut(w) else {
            return false;
        };
        let was = *word & (1 << b) != 0;
        *word |= 1 << b;
        if !was {
            self.count += 1;
        }
        !was
    }

    /// Remove `c`; returns true when it was there.
    pub fn remove(&mut self, c: u64) -> bool {
        let (w, b) = ((c / 64) as usize, c % 64);
        let Some(word) = self.words.get_mut(w) else {
            return false;
        };
        let was = *word & (1 << b) != 0;
        *word &= !(1 << b);
        if was {
            self.count -= 1;
        }
        was
    }

    pub fn contains(&self, c: u64) -> bool {
        self.words
            .get((c / 64) as usize)
            .is_some_and(|w| w & (1 << (c % 64)) != 0)
    }

    /// Moves the members out, leaving this set empty.
    pub fn take(&mut self) -> ChunkSet {
        let empty = ChunkSet::new(self.chunks);
        std::mem::replace(self, empty)
    }

    /// Number of chunks in the set.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The chunks in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        // Walk the set bits only: clean words cost one test each.
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut left = w;
            std::iter::from_fn(move || {
                if left == 0 {
                    return None;
                }
                let b = u64::from(left.trailing_zeros());
                left &= left - 1;
                Some(i as u64 * 64 + b)
            })
        })
    }

    /// Runs of adjacent chunks in increasing order, as `(first, count)`,
    /// each at most `max` long (a longer stretch is cut into several).
    pub fn runs(&self, max: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let max = max.max(1);
        let mut chunks = self.iter().peekable();
        std::iter::from_fn(move || {
            let first = chunks.next()?;
            let mut n = 1;
            while n < max && chunks.peek() == Some(&(first + n)) {
                chunks.next();
                n += 1;
            }
            Some((first, n))
        })
    }
}

/// The durable dirty bitmap of one copy, in chunks of [`DirtyLog::chunk_bytes`].
/// Bound at merge to the storage layer's on-disk bitmap.
pub trait DirtyLog: Send + Sync + 'static {
    /// Bytes covered by one bit.
    fn chunk_bytes(&self) -> u64;
    /// Mark every chunk touching `[offset, offset+len)` dirty, durably
    /// before returning. Chunks already dirty must cost (almost) nothing.
    fn mark(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Clear every chunk touching `[offset, offset+len)`: the caller knows
    /// the copy holds them.
    fn clear(&self, offset: u64, len: u64) -> io::Result<()>;
    /// The dirty chunks, by index.
    fn dirty_chunks(&self) -> ChunkSet;
    /// Mark the whole disk dirty (before a full sync).
    fn set_all(&self) -> io::Result<()>;
    /// The copy has caught up (a resync finished): many chunks were just
    /// cleared, and a log that defers its durable clears may write them now.
    fn settled(&self) {}
}

/// Chunks touching `[offset, offset+len)`, as an inclusive index range.
pub fn chunk_span(offset: u64, len: u64, chunk_bytes: u64) -> std::ops::RangeInclusive<u64> {
    let first = offset / chunk_bytes;
    let last = (offset + len.max(1) - 1) / chunk_bytes;
    first..=last
}

/// An in-memory [`DirtyLog`] (not durable): for tests, and as the model
/// the on-disk bitmap must follow.
pub struct MemDirtyLog {
    chunk_bytes: u64,
    chunks: u64,
    set: Mutex<ChunkSet>,
}

impl MemDirtyLog {
    /// A clean log for a disk of `size` bytes.
    pub fn new(size: u64, chunk_bytes: u64) -> MemDirtyLog {
        assert!(chunk_bytes > 0, "chunk size is positive");
        let chunks = size.div_ceil(chunk_bytes);
        MemDirtyLog {
            chunk_bytes,
            chunks,
            set: Mutex::new(ChunkSet::new(chunks)),
        }
    }

    /// Number of dirty chunks.
    pub fn dirty_count(&self) -> u64 {
        self.set.lock().expect("dirty log lock poisoned").len()
    }
}

impl DirtyLog for MemDirtyLog {
    fn chunk_bytes(&self) -> u64 {
        self.chunk_bytes
    }

    fn mark(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut set = self.set.lock().expect("dirty log lock poisoned");
        for c in chunk_span(offset, len, self.chunk_bytes) {
            set.insert(c);
        }
        Ok(())
    }

    fn clear(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut set = self.set.lock().expect("dirty log lock poisoned");
        for c in chunk_span(offset, len, self.chunk_bytes) {
            set.remove(c);
        }
        Ok(())
    }

    fn dirty_chunks(&self) -> ChunkSet {
        self.set.lock().expect("dirty log lock poisoned").clone()
    }

    fn set_all(&self) -> io::Result<()> {
        let mut set = self.set.lock().expect("dirty log lock poisoned");
        for c in 0..self.chunks {
            set.insert(c);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_set_iterates_exactly_its_members_in_order() {
        let mut s = ChunkSet::new(300);
        for c in [0, 63, 64, 130, 299] {
            assert!(s.insert(c));
        }
        assert!(!s.insert(64));
        assert!(!s.insert(300), "out of range is ignored");
        assert!(s.remove(63));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 64, 130, 299]);
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn marking_covers_every_touched_chunk() {
        let log = MemDirtyLog::new(1 << 20, 65536);
        log.mark(65535, 2).expect("memory log marks");
        let d: Vec<u64> = log.dirty_chunks().iter().collect();
        assert_eq!(d, vec![0, 1]);
        log.clear(65536, 1).expect("memory log clears");
        assert_eq!(log.dirty_chunks().iter().collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn runs_join_adjacent_chunks_and_cut_at_the_bound() {
        let mut s = ChunkSet::new(1000);
        for c in (0..10).chain([63, 64, 65]).chain(100..200).chain([999]) {
            s.insert(c);
        }
        let runs: Vec<_> = s.runs(40).collect();
        assert_eq!(
            runs,
            vec![(0, 10), (63, 3), (100, 40), (140, 40), (180, 20), (999, 1)]
        );
        let covered: u64 = runs.iter().map(|r| r.1).sum();
        assert_eq!(covered, s.len(), "every chunk in exactly one run");
        assert_eq!(ChunkSet::new(10).runs(4).count(), 0);
        assert_eq!(
            s.runs(0).count() as u64,
            s.len(),
            "a zero bound means one chunk"
        );
    }
}
