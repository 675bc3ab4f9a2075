//! Snapshot files: the applied state at a log id, checksummed, written to a
//! temp file, fsynced and renamed so a crash leaves the old or the new one.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::EngineError;
use super::types::{decode_snapshot, encode, SnapshotMeta};

const MAGIC: &[u8; 8] = b"GMSNAP01";
const FILE_NAME: &str = "snapshot.bin";
/// magic(8) ‖ payload length u64 LE ‖ crc32 u32 LE.
const HEADER_BYTES: usize = 20;
/// Largest snapshot accepted, on disk or assembled from received chunks.
/// The group state is a few kilobytes; this bound only stops a runaway.
pub const SNAPSHOT_BYTES_MAX: u64 = 1 << 30;

/// What a snapshot file holds: openraft's metadata and the encoded state.
#[derive(Serialize, Deserialize)]
pub(crate) struct Stored {
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

fn state_err(p: &Path, source: io::Error) -> EngineError {
    EngineError::StateDir {
        path: p.to_path_buf(),
        source,
    }
}

/// Atomically replaces the snapshot in `dir` (blocking).
pub(crate) fn save(dir: &Path, stored: &Stored) -> Result<(), EngineError> {
    let payload = encode(stored).map_err(|e| EngineError::Codec(e.to_string()))?;
    if payload.len() as u64 > SNAPSHOT_BYTES_MAX {
        return Err(EngineError::Codec(format!(
            "snapshot of {} bytes exceeds {SNAPSHOT_BYTES_MAX}",
            payload.len()
        )));
    }
    let tmp = dir.join(format!("{FILE_NAME}.tmp-{}", rand::random::<u64>()));
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&(payload.len() as u64).to_le_bytes())?;
        f.write_all(&crc32fast::hash(&payload).to_le_bytes())?;
        f.write_all(&payload)?;
        f.sync_all()?;
        fs::rename(&tmp, path(dir))?;
        // The rename itself is durable only once the directory is synced.
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        state_err(&path(dir), e)
    })
}

/// Loads the snapshot in `dir`, if any (blocking). A damaged file is an
/// error, never silently skipped: the log before it may have been purged.
pub(crate) fn load(dir: &Path) -> Result<Option<Stored>, EngineError> {
    let p = path(dir);
    let mut f = match File::open(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(state_err(&p, e)),
    };
    let mut h = [0u8; HEADER_BYTES];
    f.read_exact(&mut h).map_err(|e| state_err(&p, e))?;
    let bad = |what: &str| {
        state_err(
            &p,
            io::Error::new(io::ErrorKind::InvalidData, what.to_string()),
        )
    };
    if &h[..8] != MAGIC {
        return Err(bad("not a geomirror snapshot"));
    }
    let len = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes"));
    if len > SNAPSHOT_BYTES_MAX {
        return Err(bad("snapshot length exceeds the limit"));
    }
    let mut payload = vec![0u8; len as usize];
    f.read_exact(&mut payload).map_err(|e| state_err(&p, e))?;
    if crc32fast::hash(&payload) != crc {
        return Err(bad("snapshot checksum mismatch"));
    }
    decode_snapshot(&payload)
        .map(Some)
        .map_err(|e| bad(&format!("snapshot decode: {e}")))
}

/// Removes temp files left by a crash in the middle of [`save`].
pub(crate) fn clean_temps(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(&format!("{FILE_NAME}.tmp-"))
        {
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: None,
            last_membership: Default::default(),
            snapshot_id: "t".into(),
        }
    }

    #[test]
    fn saved_snapshot_loads_back() {
        let d = tempfile::tempdir().expect("tempdir");
        assert!(load(d.path()).expect("empty dir").is_none());
        save(
            d.path(),
            &Stored {
                meta: meta(),
                data: vec![1, 2, 3],
            },
        )
        .expect("save");
        let s = load(d.path()).expect("load").expect("present");
        assert_eq!(s.data, vec![1, 2, 3]);
    }

    #[test]
    fn corrupted_snapshot_is_an_error() {
        let d = tempfile::tempdir().expect("tempdir");
        save(
            d.path(),
            &Stored {
                meta: meta(),
                data: vec![7; 100],
            },
        )
        .expect("save");
        let p = path(d.path());
        let mut b = fs::read(&p).expect("read");
        let n = b.len();
        b[n - 1] ^= 0xff;
        fs::write(&p, b).expect("write");
        assert!(load(d.path()).is_err());
    }
}
