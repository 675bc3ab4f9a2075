//! Where the metadata sits at the end of a disk: the dirty bitmap, then two
//! label slots. The data area starts at offset 0, so a copy disk is a plain
//! image of the volume.
//!
//! ```text
//! 0                      data_bytes     bitmap_offset        label_offset      disk end
//! | data (the volume)  ...|  (padding)  | bitmap blocks  ... | slot A | slot B |(tail)
//! ```
//! Every boundary is a multiple of [`BLOCK_BYTES`]; an unaligned tail of
//! the disk is left unused.

use serde::{Deserialize, Serialize};

use super::label::LabelError;

/// Unit of metadata I/O: one label slot, one bitmap block.
pub const BLOCK_BYTES: u64 = 4096;
/// Label slots kept (A and B), written alternately.
pub const LABEL_SLOTS: u64 = 2;
/// Bytes at the start of a bitmap block: crc32 then the block's index.
pub const BITMAP_HEADER_BYTES: usize = 8;
/// Dirty bits one bitmap block carries.
pub const BITS_PER_BLOCK: u64 = (BLOCK_BYTES - BITMAP_HEADER_BYTES as u64) * 8;
/// Default bytes of data per dirty bit.
pub const CHUNK_BYTES_DEFAULT: u64 = 64 << 10;
/// Smallest and largest chunk: at least a page, at most 1 GiB.
pub const CHUNK_BYTES_MIN: u64 = 4096;
pub const CHUNK_BYTES_MAX: u64 = 1 << 30;

/// Offsets and sizes of the metadata on one disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaLayout {
    /// Disk size the layout was computed for.
    pub disk_bytes: u64,
    /// Size of the data area, from offset 0; a multiple of 4096.
    pub data_bytes: u64,
    /// Data bytes per dirty bit (a power of two).
    pub bitmap_chunk_bytes: u64,
    /// Start of the bitmap blocks.
    pub bitmap_offset: u64,
    /// Number of bitmap blocks.
    pub bitmap_blocks: u64,
    /// Start of label slot A; slot B follows it.
    pub label_offset: u64,
}

impl MetaLayout {
    /// The layout for a disk of `disk_bytes` with one dirty bit per
    /// `chunk_bytes`: the data area is what is left after the metadata,
    /// rounded down to 4096.
    pub fn compute(disk_bytes: u64, chunk_bytes: u64) -> Result<MetaLayout, LabelError> {
        if !chunk_bytes.is_power_of_two()
            || !(CHUNK_BYTES_MIN..=CHUNK_BYTES_MAX).contains(&chunk_bytes)
        {
            return Err(LabelError::Invalid(format!(
                "bitmap chunk {chunk_bytes} must be a power of two from {CHUNK_BYTES_MIN} to {CHUNK_BYTES_MAX}"
            )));
        }
        let end = disk_bytes / BLOCK_BYTES * BLOCK_BYTES;
        let label_offset = end.saturating_sub(LABEL_SLOTS * BLOCK_BYTES);
        // Size the bitmap for the largest data area it could have to cover;
        // the real one is smaller by the bitmap itself, so it stays covered.
        let chunks = label_offset.div_ceil(chunk_bytes);
        let bitmap_blocks = chunks.div_ceil(BITS_PER_BLOCK).max(1);
        let needed = (LABEL_SLOTS + bitmap_blocks + 1) * BLOCK_BYTES;
        if end < needed {
            return Err(LabelError::TooSmall {
                disk_bytes,
                needed_bytes: needed,
            });
        }
        let bitmap_offset = label_offset - bitmap_blocks * BLOCK_BYTES;
        Ok(MetaLayout {
            disk_bytes,
            data_bytes: bitmap_offset,
            bitmap_chunk_bytes: chunk_bytes,
            bitmap_offset,
            bitmap_blocks,
            label_offset,
        })
    }

    /// Offset of label slot `slot` (0 = A, 1 = B).
    pub fn slot_offset(&self, slot: u64) -> u64 {
        self.label_offset + slot * BLOCK_BYTES
    }

    /// Offset of label slot `slot` on a disk of `disk_bytes`, before any
    /// label has been read (the slots are always the last two blocks).
    pub fn slot_offset_for(disk_bytes: u64, slot: u64) -> Option<u64> {
        let end = disk_bytes / BLOCK_BYTES * BLOCK_BYTES;
        end.checked_sub((LABEL_SLOTS - slot) * BLOCK_BYTES)
    }

    /// Bytes of metadata (everything after the data area).
    pub fn meta_bytes(&self) -> u64 {
        self.disk_bytes - self.data_bytes
    }

    /// Dirty bits in use: one per chunk of the data area.
    pub fn bitmap_bits(&self) -> u64 {
        self.data_bytes.div_ceil(self.bitmap_chunk_bytes)
    }

    /// Checks a layout read from disk against the disk it was read from.
    pub fn validate(&self, disk_bytes: u64) -> Result<(), LabelError> {
        let expect = MetaLayout::compute(self.disk_bytes, self.bitmap_chunk_bytes)
            .map_err(|e| LabelError::Corrupt(format!("layout: {e}")))?;
        if *self != expect {
            return Err(LabelError::Corrupt(format!(
                "layout {self:?} does not match the one computed for its disk size ({expect:?})"
            )));
        }
        if MetaLayout::slot_offset_for(disk_bytes, 0) != Some(self.label_offset) {
            return Err(LabelError::Corrupt(format!(
                "label written for a disk of {} bytes, but the disk has {disk_bytes}",
                self.disk_bytes
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_puts_metadata_at_the_end_and_covers_the_data() {
        for disk in [64 << 10, (1 << 30) + 123, 10 << 30, 3 << 40] {
            for chunk in [4096, CHUNK_BYTES_DEFAULT, 1 << 20] {
                let l = MetaLayout::compute(disk, chunk).expect("layout");
                assert_eq!(l.data_bytes % 4096, 0);
                assert!(l.data_bytes > 0 && l.data_bytes <= l.bitmap_offset);
                assert!(l.bitmap_bits() <= l.bitmap_blocks * BITS_PER_BLOCK);
                assert_eq!(l.slot_offset(1) + BLOCK_BYTES, disk / 4096 * 4096);
                assert_eq!(MetaLayout::slot_offset_for(disk, 0), Some(l.label_offset));
                l.validate(disk).expect("own layout validates");
            }
        }
    }

    #[test]
    fn layout_refuses_tiny_disks_and_odd_chunks() {
        assert!(matches!(
            MetaLayout::compute(8192, 65536),
            Err(LabelError::TooSmall { .. })
        ));
        assert!(matches!(
            MetaLayout::compute(1 << 30, 3000),
            Err(LabelError::Invalid(_))
        ));
        assert!(matches!(
            MetaLayout::compute(1 << 30, 2048),
            Err(LabelError::Invalid(_))
        ));
    }
}
