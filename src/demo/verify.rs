//! Checks on the disks once every member has stopped: production and copy
//! data areas identical, and the copy holding exactly what was written.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::Context;

use super::workload::Model;

/// Bytes compared per read.
const COMPARE_CHUNK_BYTES: usize = 1 << 20;

/// The first byte offset where `a` and `b` differ within their first
/// `len` bytes, or None when they are equal there.
pub fn first_difference(a: &Path, b: &Path, len: u64) -> anyhow::Result<Option<u64>> {
    let fa = File::open(a).with_context(|| format!("open {}", a.display()))?;
    let fb = File::open(b).with_context(|| format!("open {}", b.display()))?;
    let mut ba = vec![0u8; COMPARE_CHUNK_BYTES];
    let mut bb = vec![0u8; COMPARE_CHUNK_BYTES];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(COMPARE_CHUNK_BYTES as u64) as usize;
        fa.read_exact_at(&mut ba[..n], off)
            .with_context(|| format!("read {} at {off}", a.display()))?;
        fb.read_exact_at(&mut bb[..n], off)
            .with_context(|| format!("read {} at {off}", b.display()))?;
        if let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y) {
            return Ok(Some(off + i as u64));
        }
        off += n as u64;
    }
    Ok(None)
}

/// The first byte offset where `disk` differs from the model within the
/// first `chunks` chunks, or None when it matches.
pub fn first_model_difference(
    disk: &Path,
    model: &Model,
    chunks: u64,
) -> anyhow::Result<Option<u64>> {
    let f = File::open(disk).with_context(|| format!("open {}", disk.display()))?;
    let chunk = model.chunk_bytes as usize;
    let mut want = vec![0u8; chunk];
    let mut got = vec![0u8; chunk];
    for index in 0..chunks {
        let off = index * model.chunk_bytes;
        f.read_exact_at(&mut got, off)
            .with_context(|| format!("read {} at {off}", disk.display()))?;
        model.expected(index, &mut want);
        if let Some(i) = want.iter().zip(&got).position(|(x, y)| x != y) {
            return Ok(Some(off + i as u64));
        }
    }
    Ok(None)
}
