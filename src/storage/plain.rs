//! The plain engine: positional read/write on a blocking thread pool.
//! Slow but obviously right; the oracle the io_uring engine is tested against.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::{check_range, BlockDevice, Completion, Extent, IoBuf, Reply, Request, StorageError};

/// A disk served with pread/pwrite/fdatasync/fallocate.
pub struct PlainEngine {
    file: Arc<File>,
    size: u64,
}

impl PlainEngine {
    /// Serve the first `size` bytes of `file`.
    pub fn new(file: File, size: u64) -> PlainEngine {
        PlainEngine {
            file: Arc::new(file),
            size,
        }
    }

    fn run(file: &File, size: u64, req: Request) -> Result<Reply, StorageError> {
        let io = |offset: u64| move |source| StorageError::Io { offset, source };
        match req {
            Request::Read { offset, len } => {
                check_range(offset, len.into(), size)?;
                // Overwritten whole by the read: not zeroed first.
                let mut buf = IoBuf::uninit(len as usize);
                buf.read_exact_at(file, offset).map_err(io(offset))?;
                Ok(Reply::Read(buf.finish().expect("read_exact_at filled it")))
            }
            Request::Write { offset, data, fua } => {
                check_range(offset, data.len() as u64, size)?;
                file.write_all_at(&data, offset).map_err(io(offset))?;
                if fua {
                    file.sync_data().map_err(io(offset))?;
                }
                Ok(Reply::Done)
            }
            Request::Flush => {
                file.sync_data().map_err(io(0))?;
                Ok(Reply::Done)
            }
            Request::Trim { offset, len } => {
                check_range(offset, len, size)?;
                punch(file, offset, len).map_err(io(offset))?;
                Ok(Reply::Done)
            }
            Request::WriteZeroes {
                offset,
                len,
                punch: may_punch,
            } => {
                check_range(offset, len, size)?;
                if !(may_punch && punch(file, offset, len).is_ok()) {
                    write_zeroes(file, offset, len).map_err(io(offset))?;
                }
                Ok(Reply::Done)
            }
        }
    }
}

/// Deallocate a range, keeping the file size; it reads back as zeroes.
fn punch(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    super::sys::fallocate(file, super::sys::FALLOC_PUNCH, offset, len)
}

fn write_zeroes(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeroes = vec![0u8; CHUNK.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done) as usize;
        file.write_all_at(&zeroes[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

impl BlockDevice for PlainEngine {
    fn size(&self) -> u64 {
        self.size
    }

    fn submit(&self, req: Request, done: Completion) {
        let file = self.file.clone();
        let size = self.size;
        tokio::task::spawn_blocking(move || {
            let _ = done.send(PlainEngine::run(&file, size, req));
        });
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, StorageError> {
        check_range(offset, len, self.size)?;
        super::sys::extents(&self.file, offset, len)
            .map_err(|source| StorageError::Io { offset, source })
    }
}
