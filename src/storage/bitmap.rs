//! The dirty bitmap: one bit per chunk of the data area, persisted in the
//! metadata area so that a crash of the production host loses no mark.
//!
//! A mark is durable before `mark` returns: the changed 4 KiB bitmap
//! blocks are written and fdatasynced while the lock is held, so a second
//! writer to the same chunk cannot answer its client before the mark is on
//! disk. Marks of chunks already dirty cost no I/O. Clears are lazy and
//! reach the disk on `flush` (a lost clear costs only a resend). The I/O is
//! a blocking pwrite+fdatasync of a few blocks; async callers either accept
//! that short block or use `spawn_blocking`.
//!
//! Block format: crc32 of bytes 4..4096 (4) | block index (4) | bits, LSB
//! first (chunk `i` is bit `i % 8` of byte `i / 8` of the payload).
//!
//! Blocks are rewritten in place, so a power cut can tear one. A block that
//! fails its crc or carries another index is read as all dirty for the
//! chunks it covers (a dirty chunk costs a resend, a clean one that differs
//! costs data), and [`DirtyBitmap::load`] writes it back that way: the disk
//! stays usable and the damage is reported once.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, MutexGuard};

use super::label::LabelError;
use super::meta::{MetaLayout, BITMAP_HEADER_BYTES, BITS_PER_BLOCK, BLOCK_BYTES};

const PAYLOAD_BYTES: usize = BLOCK_BYTES as usize - BITMAP_HEADER_BYTES;

/// The dirty bitmap of one disk.
pub struct DirtyBitmap {
    file: Arc<File>,
    layout: MetaLayout,
    inner: Mutex<Inner>,
    /// Blocks that failed their check when the bitmap was read.
    damaged: Vec<DamagedBlock>,
}

struct Inner {
    /// Payload of every block, concatenated.
    bits: Vec<u8>,
    /// Dirty chunks, kept in step with `bits`.
    dirty_chunks: u64,
    /// Blocks whose clears are not yet on disk.
    unflushed: BTreeSet<u64>,
}

impl Inner {
    fn get(&self, chunk: u64) -> bool {
        self.bits[(chunk / 8) as usize] & (1 << (chunk % 8)) != 0
    }
    fn set(&mut self, chunk: u64, dirty: bool) -> bool {
        let (byte, bit) = ((chunk / 8) as usize, 1u8 << (chunk % 8));
        let was = self.bits[byte] & bit != 0;
        if was != dirty {
            self.bits[byte] ^= bit;
            if dirty {
                self.dirty_chunks += 1;
            } else {
                self.dirty_chunks -= 1;
            }
        }
        was != dirty
    }
}

fn encode_block(index: u64, payload: &[u8]) -> Vec<u8> {
    let mut raw = vec![0u8; BLOCK_BYTES as usize];
    raw[4..8].copy_from_slice(&(index as u32).to_le_bytes());
    raw[BITMAP_HEADER_BYTES..].copy_from_slice(payload);
    let crc = crc32fast::hash(&raw[4..]);
    raw[..4].copy_from_slice(&crc.to_le_bytes());
    raw
}

/// Writes a clean bitmap (used by `format`).
pub(crate) fn write_empty(file: &File, layout: &MetaLayout) -> Result<(), LabelError> {
    let zero = [0u8; PAYLOAD_BYTES];
    for b in 0..layout.bitmap_blocks {
        let off = layout.bitmap_offset + b * BLOCK_BYTES;
        file.write_all_at(&encode_block(b, &zero), off)
            .map_err(LabelError::io(format!("write bitmap block {b}")))?;
    }
    file.sync_data().map_err(LabelError::io("fdatasync bitmap"))
}

/// A bitmap block that failed its check when the bitmap was read: its
/// chunks are taken as dirty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedBlock {
    /// Index of the block in the bitmap.
    pub index: u64,
    /// Where the block sits on the disk.
    pub disk_offset: u64,
    /// Why it was refused (crc mismatch, wrong index).
    pub why: String,
    /// The part of the data area its chunks cover, as (offset, len);
    /// `len` is 0 for a block past the end of the data area.
    pub data_range: (u64, u64),
}

impl std::fmt::Display for DamagedBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (off, len) = self.data_range;
        write!(
            f,
            "bitmap block {} at offset {} is damaged ({}): data bytes {}..{} are taken as dirty \
             and will be resynced",
            self.index,
            self.disk_offset,
            self.why,
            off,
            off + len
        )
    }
}

/// Why block `b` read into `raw` cannot be trusted, if it cannot.
fn check_block(b: u64, raw: &[u8]) -> Option<String> {
    let stored = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let computed = crc32fast::hash(&raw[4..]);
    if stored != computed {
        return Some(format!(
            "crc mismatch: stored {stored:08x}, computed {computed:08x}"
        ));
    }
    let index = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
    (u64::from(index) != b).then(|| format!("carries the index of block {index}"))
}

impl DirtyBitmap {
    /// Reads the bitmap of a disk with `layout`. A damaged block (bad crc
    /// or index, e.g. torn by a power cut while it was rewritten) is read
    /// as all dirty, logged once, and written back that way (fdatasynced),
    /// so the next load finds it whole: a disk is never unusable for its
    /// bitmap, and no chunk it may have marked is lost.
    pub fn load(file: Arc<File>, layout: MetaLayout) -> Result<DirtyBitmap, LabelError> {
        let bm = DirtyBitmap::inspect(file, layout)?;
        if bm.damaged.is_empty() {
            return Ok(bm);
        }
        for d in &bm.damaged {
            tracing::warn!("{d}; the block is rewritten");
        }
        let blocks: BTreeSet<u64> = bm.damaged.iter().map(|d| d.index).collect();
        bm.persist(&bm.lock(), &blocks)?;
        Ok(bm)
    }

    /// Reads the bitmap without writing anything (for tools that only
    /// look): damaged blocks are read as all dirty and listed by
    /// [`damaged`](Self::damaged), not repaired.
    pub fn inspect(file: Arc<File>, layout: MetaLayout) -> Result<DirtyBitmap, LabelError> {
        let mut bits = vec![0u8; layout.bitmap_blocks as usize * PAYLOAD_BYTES];
        let mut raw = vec![0u8; BLOCK_BYTES as usize];
        let mut damaged = Vec::new();
        for b in 0..layout.bitmap_blocks {
            let off = layout.bitmap_offset + b * BLOCK_BYTES;
            file.read_exact_at(&mut raw, off)
                .map_err(LabelError::io(format!("read bitmap block {b}")))?;
            let at = b as usize * PAYLOAD_BYTES;
            let payload = &mut bits[at..at + PAYLOAD_BYTES];
            match check_block(b, &raw) {
                None => payload.copy_from_slice(&raw[BITMAP_HEADER_BYTES..]),
                Some(why) => {
                    // Bits past the data area are cleared below.
                    payload.fill(0xff);
                    let c = layout.bitmap_chunk_bytes;
                    let start = (b * BITS_PER_BLOCK * c).min(layout.data_bytes);
                    let end = ((b + 1) * BITS_PER_BLOCK * c).min(layout.data_bytes);
                    damaged.push(DamagedBlock {
                        index: b,
                        disk_offset: off,
                        why,
                        data_range: (start, end - start),
                    });
                }
            }
        }
        // Bits past the data area are ignored, whatever they hold.
        let used = layout.bitmap_bits();
        let mut inner = Inner {
            bits,
            dirty_chunks: 0,
            unflushed: BTreeSet::new(),
        };
        // Cleared bit by bit without counting: nothing is counted yet.
        for c in used..layout.bitmap_blocks * BITS_PER_BLOCK {
            inner.bits[(c / 8) as usize] &= !(1u8 << (c % 8));
        }
        inner.dirty_chunks = (0..used).filter(|&c| inner.get(c)).count() as u64;
        Ok(DirtyBitmap {
            file,
            layout,
            inner: Mutex::new(inner),
            damaged,
        })
    }

    /// The blocks found damaged when this bitmap was read (repaired by
    /// [`load`](Self::load), only reported by [`inspect`](Self::inspect)).
    pub fn damaged(&self) -> &[DamagedBlock] {
        &self.damaged
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves bits that are at worst too
        // dirty, never too clean (marks persist before they are reported).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Data bytes per bit.
    pub fn chunk_bytes(&self) -> u64 {
        self.layout.bitmap_chunk_bytes
    }

    /// Chunks touched by `[offset, offset+len)`, clipped to the data area.
    fn touched(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        let end = offset.saturating_add(len).min(self.layout.data_bytes);
        if len == 0 || offset >= end {
            return 0..0;
        }
        let c = self.layout.bitmap_chunk_bytes;
        offset / c..end.div_ceil(c)
    }

    /// Marks the chunks under `[offset, offset+len)` dirty and makes that
    /// durable before returning. Returns whether any chunk was newly dirty
    /// (and so written); chunks already dirty cost no I/O.
    pub fn mark(&self, offset: u64, len: u64) -> Result<bool, LabelError> {
        let mut inner = self.lock();
        let mut newly = Vec::new();
        for c in self.touched(offset, len) {
            if inner.set(c, true) {
                newly.push(c);
            }
        }
        if newly.is_empty() {
            return Ok(false);
        }
        let blocks: BTreeSet<u64> = newly.iter().map(|c| c / BITS_PER_BLOCK).collect();
        if let Err(e) = self.persist(&inner, &blocks) {
            // Not durable, so not marked: a retry must write again.
            for c in newly {
                inner.set(c, false);
            }
            return Err(e);
        }
        for b in blocks {
            inner.unflushed.remove(&b);
        }
        Ok(true)
    }

    /// Clears the chunks lying wholly inside `[offset, offset+len)` (a
    /// partly covered chunk stays dirty: the rest of it may still differ).
    /// The clear reaches the disk on the next [`flush`](Self::flush) or mark.
    pub fn clear(&self, offset: u64, len: u64) {
        let c = self.layout.bitmap_chunk_bytes;
        let end = offset.saturating_add(len).min(self.layout.data_bytes);
        let first = offset.div_ceil(c);
        // The last chunk may be cut short by the end of the data area.
        let last = if end == self.layout.data_bytes {
            end.div_ceil(c)
        } else {
            end / c
        };
        let mut inner = self.lock();
        for chunk in first..last.max(first) {
            if inner.set(chunk, false) {
                inner.unflushed.insert(chunk / BITS_PER_BLOCK);
            }
        }
    }

    /// Writes pending clears and fdatasyncs.
    pub fn flush(&self) -> Result<(), LabelError> {
        let mut inner = self.lock();
        if inner.unflushed.is_empty() {
            return Ok(());
        }
        let blocks = std::mem::take(&mut inner.unflushed);
        if let Err(e) = self.persist(&inner, &blocks) {
            inner.unflushed = blocks;
            return Err(e);
        }
        Ok(())
    }

    /// Marks the whole data area dirty (a full sync is due), durably.
    pub fn set_all(&self) -> Result<(), LabelError> {
        self.fill(true)
    }

    /// Marks the whole data area clean, durably.
    pub fn clear_all(&self) -> Result<(), LabelError> {
        self.fill(false)
    }

    fn fill(&self, dirty: bool) -> Result<(), LabelError> {
        let mut inner = self.lock();
        for c in 0..self.layout.bitmap_bits() {
            inner.set(c, dirty);
        }
        let all: BTreeSet<u64> = (0..self.layout.bitmap_blocks).collect();
        self.persist(&inner, &all)?;
        inner.unflushed.clear();
        Ok(())
    }

    fn persist(&self, inner: &Inner, blocks: &BTreeSet<u64>) -> Result<(), LabelError> {
        for &b in blocks {
            let at = b as usize * PAYLOAD_BYTES;
            let raw = encode_block(b, &inner.bits[at..at + PAYLOAD_BYTES]);
            let off = self.layout.bitmap_offset + b * BLOCK_BYTES;
            self.file
                .write_all_at(&raw, off)
                .map_err(LabelError::io(format!("write bitmap block {b}")))?;
        }
        self.file
            .sync_data()
            .map_err(LabelError::io("fdatasync bitmap"))
    }

    /// Whether the chunk holding `offset` is dirty.
    pub fn is_dirty(&self, offset: u64) -> bool {
        let r = self.touched(offset, 1);
        !r.is_empty() && self.lock().get(r.start)
    }

    /// Dirty bytes of the data area (whole chunks, the last one clipped).
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty_ranges().map(|(_, len)| len).sum()
    }

    /// Number of dirty chunks.
    pub fn dirty_chunks(&self) -> u64 {
        self.lock().dirty_chunks
    }

    /// The first run of dirty chunks at or after `from`, as (offset, len)
    /// clipped to the data area, at most `len_max` bytes long.
    pub fn next_dirty_range(&self, from: u64, len_max: u64) -> Option<(u64, u64)> {
        let c = self.layout.bitmap_chunk_bytes;
        let bits = self.layout.bitmap_bits();
        let inner = self.lock();
        if inner.dirty_chunks == 0 {
            return None;
        }
        let mut chunk = from / c;
        while chunk < bits && !inner.get(chunk) {
            // Skip clean bytes eight chunks at a time.
            if chunk % 8 == 0 && inner.bits[(chunk / 8) as usize] == 0 {
                chunk += 8;
            } else {
                chunk += 1;
            }
        }
        if chunk >= bits {
            return None;
        }
        let start = chunk;
        let span_max = (len_max / c).max(1);
        while chunk < bits && inner.get(chunk) && chunk - start < span_max {
            chunk += 1;
        }
        let off = start * c;
        let end = (chunk * c).min(self.layout.data_bytes);
        Some((off, end - off))
    }

    /// All runs of dirty chunks, in order, as (offset, len). Each call to
    /// `next` takes the lock briefly, so writers are not held up.
    pub fn dirty_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut from = 0;
        std::iter::from_fn(move || {
            let (off, len) = self.next_dirty_range(from, u64::MAX)?;
            // Resume at the next chunk: the last run may end mid-chunk at
            // the end of the data area.
            let c = self.layout.bitmap_chunk_bytes;
            from = (off + len).div_ceil(c) * c;
            Some((off, len))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CHUNK: u64 = 4096;
    // Three bitmap blocks' worth of chunks, so runs cross block boundaries.
    const DISK: u64 = 300 << 20;

    fn fresh() -> (tempfile::NamedTempFile, Arc<File>, MetaLayout) {
        let tmp = tempfile::NamedTempFile::new().expect("temp file");
        tmp.as_file().set_len(DISK).expect("size");
        let layout = MetaLayout::compute(DISK, CHUNK).expect("layout");
        assert!(layout.bitmap_blocks >= 3);
        let file = Arc::new(tmp.reopen().expect("reopen"));
        write_empty(&file, &layout).expect("empty bitmap");
        (tmp, file, layout)
    }

    /// Runs of dirty chunks of a model, clipped to the data area.
    fn model_ranges(model: &[bool], data: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, _) in model.iter().enumerate().filter(|(_, d)| **d) {
            let off = i as u64 * CHUNK;
            let len = CHUNK.min(data - off);
            match out.last_mut() {
                Some((o, l)) if *o + *l == off => *l += len,
                _ => out.push((off, len)),
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        /// Marks and clears agree with a plain model, before and after a reload.
        #[test]
        fn bitmap_matches_a_model_across_reloads(
            ops in proptest::collection::vec((any::<bool>(), 0..DISK, 0..(1u64 << 22)), 1..60)
        ) {
            let (_tmp, file, layout) = fresh();
            let bm = DirtyBitmap::load(file.clone(), layout).expect("load");
            let mut model = vec![false; layout.bitmap_bits() as usize];
            let data = layout.data_bytes;
            for (is_mark, offset, len) in ops {
                let end = offset.saturating_add(len).min(data);
                if is_mark {
                    let newly = bm.mark(offset, len).expect("mark");
                    let mut any = false;
                    if len > 0 && offset < end {
                        for c in offset / CHUNK..end.div_ceil(CHUNK) {
                            any |= !model[c as usize];
                            model[c as usize] = true;
                        }
                    }
                    prop_assert_eq!(newly, any);
                } else {
                    bm.clear(offset, len);
                    let last = if end == data { end.div_ceil(CHUNK) } else { end / CHUNK };
                    for c in offset.div_ceil(CHUNK)..last.max(offset.div_ceil(CHUNK)) {
                        model[c as usize] = false;
                    }
                }
                prop_assert_eq!(bm.dirty_ranges().collect::<Vec<_>>(), model_ranges(&model, data));
            }
            bm.flush().expect("flush");
            let again = DirtyBitmap::load(file, layout).expect("reload");
            prop_assert_eq!(again.dirty_ranges().collect::<Vec<_>>(), model_ranges(&model, data));
            prop_assert_eq!(again.dirty_chunks(), model.iter().filter(|d| **d).count() as u64);
        }
    }

    /// Block `b` as it is on the disk.
    fn raw_block(file: &File, layout: &MetaLayout, b: u64) -> Vec<u8> {
        let mut raw = vec![0u8; BLOCK_BYTES as usize];
        file.read_exact_at(&mut raw, layout.bitmap_offset + b * BLOCK_BYTES)
            .expect("read block");
        raw
    }

    #[test]
    fn a_torn_block_reads_as_dirty_for_its_range_and_is_rewritten_once() {
        let (_tmp, file, layout) = fresh();
        let per_block = BITS_PER_BLOCK * CHUNK;
        let far = 2 * per_block + 7 * CHUNK;
        let bm = DirtyBitmap::load(file.clone(), layout).expect("load");
        bm.mark(5 * CHUNK, CHUNK).expect("mark in block 0");
        bm.mark(far, CHUNK).expect("mark in block 2");
        drop(bm);
        // A rewrite of block 1 cut short: half new bytes, the old crc.
        file.write_all_at(&[0x5a; 2048], layout.bitmap_offset + BLOCK_BYTES + 100)
            .expect("tear block 1");

        // Looking does not write: the block stays damaged on the disk.
        let looked = DirtyBitmap::inspect(file.clone(), layout).expect("inspect");
        assert_eq!(looked.damaged().len(), 1);
        assert!(check_block(1, &raw_block(&file, &layout, 1)).is_some());
        drop(looked);

        let bm = DirtyBitmap::load(file.clone(), layout).expect("a torn block is no failure");
        let d = bm.damaged();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!((d[0].index, d[0].data_range), (1, (per_block, per_block)));
        assert!(d[0].why.contains("crc mismatch"), "{}", d[0].why);
        assert!(d[0].to_string().contains("resynced"), "{}", d[0]);
        let expected = vec![(5 * CHUNK, CHUNK), (per_block, per_block), (far, CHUNK)];
        assert_eq!(bm.dirty_ranges().collect::<Vec<_>>(), expected);
        assert_eq!(bm.dirty_chunks(), 2 + BITS_PER_BLOCK);
        drop(bm);

        // Written back whole: the next load has nothing to report.
        let again = DirtyBitmap::load(file, layout).expect("reload");
        assert!(again.damaged().is_empty(), "{:?}", again.damaged());
        assert_eq!(again.dirty_ranges().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn a_block_carrying_another_index_is_damaged_and_the_last_block_is_clipped() {
        let (_tmp, file, layout) = fresh();
        let last = layout.bitmap_blocks - 1;
        // A block written to the wrong place: whole, but not this one.
        let stray = raw_block(&file, &layout, 0);
        file.write_all_at(&stray, layout.bitmap_offset + last * BLOCK_BYTES)
            .expect("misplace block 0");
        let bm = DirtyBitmap::load(file, layout).expect("load");
        let d = bm.damaged();
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].why.contains("index of block 0"), "{}", d[0].why);
        // Only chunks inside the data area turn dirty.
        let start = last * BITS_PER_BLOCK * CHUNK;
        assert_eq!(d[0].data_range, (start, layout.data_bytes - start));
        assert_eq!(bm.dirty_bytes(), layout.data_bytes - start);
    }

    #[test]
    fn dirty_runs_are_cut_at_the_requested_length() {
        let (_tmp, file, layout) = fresh();
        let bm = DirtyBitmap::load(file, layout).expect("load");
        bm.mark(CHUNK * 10, CHUNK * 100).expect("mark");
        assert_eq!(
            bm.next_dirty_range(0, CHUNK * 30),
            Some((CHUNK * 10, CHUNK * 30))
        );
        assert_eq!(
            bm.next_dirty_range(CHUNK * 40, u64::MAX),
            Some((CHUNK * 40, CHUNK * 70))
        );
        assert_eq!(bm.next_dirty_range(CHUNK * 110, u64::MAX), None);
    }
}
