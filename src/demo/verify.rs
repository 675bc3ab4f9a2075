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

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write a test disk");
        p
    }

    #[test]
    fn first_difference_is_the_exact_byte_even_past_one_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let len = COMPARE_CHUNK_BYTES * 2 + 100;
        let a = vec![7u8; len];
        let mut b = a.clone();
        let a = disk(dir.path(), "a", &a);
        assert_eq!(first_difference(&a, &a, len as u64).expect("compare"), None);
        b[COMPARE_CHUNK_BYTES + 5] = 8;
        let b = disk(dir.path(), "b", &b);
        assert_eq!(
            first_difference(&a, &b, len as u64).expect("compare"),
            Some(COMPARE_CHUNK_BYTES as u64 + 5)
        );
        // A difference beyond the compared length does not count.
        assert_eq!(
            first_difference(&a, &b, COMPARE_CHUNK_BYTES as u64).expect("compare"),
            None
        );
    }

    #[test]
    fn model_difference_finds_unwritten_chunks_that_are_not_zero() {
        let dir = tempfile::tempdir().expect("temp dir");
        let model = Model::new(4096);
        let mut bytes = vec![0u8; 4 * 4096];
        let d = disk(dir.path(), "d", &bytes);
        assert_eq!(first_model_difference(&d, &model, 4).expect("check"), None);
        bytes[2 * 4096 + 9] = 1;
        let d = disk(dir.path(), "d2", &bytes);
        assert_eq!(
            first_model_difference(&d, &model, 4).expect("check"),
            Some(2 * 4096 + 9)
        );
    }

    #[test]
    fn a_short_disk_is_an_error_not_a_match() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = disk(dir.path(), "a", &[0u8; 10]);
        assert!(first_difference(&a, &a, 20).is_err());
    }
}
