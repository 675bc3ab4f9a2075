//! The bytes the built-in generator writes: pseudo-random, but a pure
//! function of (offset, generation), so a verify pass can recompute them.

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

/// Fills `buf` (the block written at `offset`) for its `gen`-th write.
/// Different blocks and different generations give different bytes, so a
/// lost, stale or misplaced write shows up on read-back.
pub fn fill_block(buf: &mut [u8], offset: u64, gen: u32) {
    let mut rng =
        Rng::new(offset.rotate_left(17) ^ u64::from(gen).wrapping_mul(0xa076_1d64_78bd_642f));
    for chunk in buf.chunks_mut(8) {
        let v = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_depends_on_offset_and_generation() {
        let mut a = vec![0u8; 4096];
        let mut b = vec![0u8; 4096];
        fill_block(&mut a, 4096, 1);
        fill_block(&mut b, 4096, 1);
        assert_eq!(a, b);
        fill_block(&mut b, 4096, 2);
        assert_ne!(a, b);
        fill_block(&mut b, 8192, 1);
        assert_ne!(a, b);
    }

    #[test]
    fn below_stays_in_range() {
        let mut r = Rng::new(7);
        assert!((0..10_000).all(|_| r.below(13) < 13));
    }
}
