//! The bytes the built-in generator writes: random filler made once per run,
//! with every 4 KiB page stamped with its offset and write generation, so a
//! verify pass can recompute what each block must hold.

/// Bytes stamped at the start of each page: offset (8) and generation (8).
const STAMP_BYTES: usize = 16;
/// Stamp granularity: the page size writes are replicated in.
const PAGE_BYTES: usize = 4096;

/// splitmix64: tiny, fast, and good enough for offsets and filler bytes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`); the modulo bias is negligible here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Random filler of one block. Stamping only rewrites page headers, so a
/// 1 MiB write costs 256 small stores, not 1 MiB of fresh random bytes.
#[derive(Clone)]
pub struct Pattern {
    filler: Vec<u8>,
}

impl Pattern {
    /// Filler for blocks of `block_bytes`, from `seed`.
    pub fn new(block_bytes: usize, seed: u64) -> Pattern {
        let mut rng = Rng::new(seed);
        let mut filler = vec![0u8; block_bytes];
        for chunk in filler.chunks_mut(8) {
            let v = rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Pattern { filler }
    }

    /// A buffer holding the filler, to be [`stamp`](Self::stamp)ed per write.
    pub fn buffer(&self) -> Vec<u8> {
        self.filler.clone()
    }

    /// Makes `buf` (a [`buffer`](Self::buffer)) the block written at
    /// `offset` for its `gen`-th time. A lost, stale or misplaced write then
    /// reads back with another stamp.
    pub fn stamp(&self, buf: &mut [u8], offset: u64, gen: u32) {
        for (i, page) in buf.chunks_mut(PAGE_BYTES).enumerate() {
            let n = STAMP_BYTES.min(page.len());
            let mut stamp = [0u8; STAMP_BYTES];
            stamp[..8].copy_from_slice(&(offset + (i * PAGE_BYTES) as u64).to_le_bytes());
            stamp[8..].copy_from_slice(&(u64::from(gen) ^ 0x6765_6f6d_6972_726f).to_le_bytes());
            page[..n].copy_from_slice(&stamp[..n]);
        }
    }

    /// What the block at `offset` holds after its `gen`-th write.
    pub fn expected(&self, offset: u64, gen: u32) -> Vec<u8> {
        let mut b = self.buffer();
        self.stamp(&mut b, offset, gen);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_depends_on_offset_and_generation() {
        let p = Pattern::new(8192, 1);
        let a = p.expected(8192, 1);
        assert_eq!(a, p.expected(8192, 1));
        let b = p.expected(8192, 2);
        let c = p.expected(16384, 1);
        for page in [0..4096, 4096..8192] {
            assert_ne!(a[page.clone()], b[page.clone()]);
            assert_ne!(a[page.clone()], c[page]);
        }
        // The filler is random, not zeroes, so a sink cannot pass.
        assert!(a[STAMP_BYTES..4096].iter().filter(|&&x| x == 0).count() < 64);
    }

    #[test]
    fn below_stays_in_range() {
        let mut r = Rng::new(7);
        assert!((0..10_000).all(|_| r.below(13) < 13));
    }
}
