//! A disk with a volatile write cache, for power cuts: no real disk here can
//! lose power, so the tests model one. What is written reads back at once,
//! but reaches the durable image only on a flush (or a FUA write); a power
//! cut forgets every write since the last flush, as a disk's cache and the
//! page cache do.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use geomirror::storage::{BlockDevice, Completion, Extent, IoBuf, Reply, Request, StorageError};

/// Bytes the cache tracks as one unit (a torn write keeps whole sectors).
const SECTOR: u64 = 512;

pub struct VolatileDisk {
    inner: Mutex<Images>,
    size: u64,
    /// Flushes and FUA writes fail with EIO (a disk that cannot make data
    /// durable).
    pub fail_flushes: AtomicBool,
}

struct Images {
    /// What reads see: the durable image plus the unflushed writes.
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Sectors written since the last flush.
    unflushed: BTreeSet<u64>,
}

impl VolatileDisk {
    /// A disk of `size` bytes holding `image` (zeroes past its end), all durable.
    pub fn new(size: u64, image: &[u8]) -> VolatileDisk {
        let mut live = vec![0u8; size as usize];
        let n = image.len().min(live.len());
        live[..n].copy_from_slice(&image[..n]);
        VolatileDisk {
            inner: Mutex::new(Images {
                durable: live.clone(),
                live,
                unflushed: BTreeSet::new(),
            }),
            size,
            fail_flushes: AtomicBool::new(false),
        }
    }

    /// The power goes: every write since the last flush is lost.
    pub fn power_cut(&self) -> usize {
        let mut g = self.inner.lock().expect("disk lock");
        let Images {
            live,
            durable,
            unflushed,
        } = &mut *g;
        let lost = unflushed.len();
        for s in std::mem::take(unflushed) {
            let (a, b) = (
                s as usize * SECTOR as usize,
                (s + 1) as usize * SECTOR as usize,
            );
            live[a..b].copy_from_slice(&durable[a..b]);
        }
        lost
    }

    /// The image a power cut now would leave.
    pub fn durable(&self) -> Vec<u8> {
        self.inner.lock().expect("disk lock").durable.clone()
    }

    /// Sectors written and not yet flushed.
    pub fn unflushed_sectors(&self) -> usize {
        self.inner.lock().expect("disk lock").unflushed.len()
    }

    fn run(&self, req: Request) -> Result<Reply, StorageError> {
        let mut g = self.inner.lock().expect("disk lock");
        let range = |offset: u64, len: u64| -> Result<(usize, usize), StorageError> {
            match offset.checked_add(len) {
                Some(end) if end <= self.size => Ok((offset as usize, end as usize)),
                _ => Err(StorageError::OutOfRange {
                    offset,
                    len,
                    size: self.size,
                }),
            }
        };
        let written = |g: &mut Images, a: usize, b: usize, durable: bool| {
            for s in a as u64 / SECTOR..(b as u64).div_ceil(SECTOR) {
                if durable {
                    let (x, y) = (
                        s as usize * SECTOR as usize,
                        (s + 1) as usize * SECTOR as usize,
                    );
                    let y = y.min(g.live.len());
                    let live = g.live[x..y].to_vec();
                    g.durable[x..y].copy_from_slice(&live);
                    g.unflushed.remove(&s);
                } else {
                    g.unflushed.insert(s);
                }
            }
        };
        match req {
            Request::Read { offset, len } => {
                let (a, b) = range(offset, len.into())?;
                Ok(Reply::Read(IoBuf::from_slice(&g.live[a..b])))
            }
            Request::Write { fua: true, .. } if self.fail_flushes.load(Ordering::Relaxed) => {
                Err(StorageError::Io {
                    offset: 0,
                    source: std::io::Error::from_raw_os_error(libc::EIO),
                })
            }
            Request::Write { offset, data, fua } => {
                let (a, b) = range(offset, data.len() as u64)?;
                g.live[a..b].copy_from_slice(&data);
                written(&mut g, a, b, fua);
                Ok(Reply::Done)
            }
            Request::Trim { offset, len } | Request::WriteZeroes { offset, len, .. } => {
                let (a, b) = range(offset, len)?;
                g.live[a..b].fill(0);
                written(&mut g, a, b, false);
                Ok(Reply::Done)
            }
            Request::Flush if self.fail_flushes.load(Ordering::Relaxed) => Err(StorageError::Io {
                offset: 0,
                source: std::io::Error::from_raw_os_error(libc::EIO),
            }),
            Request::Flush => {
                let Images {
                    live,
                    durable,
                    unflushed,
                } = &mut *g;
                for s in std::mem::take(unflushed) {
                    let (a, b) = (
                        s as usize * SECTOR as usize,
                        (s + 1) as usize * SECTOR as usize,
                    );
                    let b = b.min(live.len());
                    durable[a..b].copy_from_slice(&live[a..b]);
                }
                Ok(Reply::Done)
            }
        }
    }
}

impl BlockDevice for VolatileDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn submit(&self, req: Request, done: Completion) {
        let _ = done.send(self.run(req));
    }

    fn extents(&self, _offset: u64, len: u64) -> Result<Vec<Extent>, StorageError> {
        Ok(vec![Extent { len, hole: false }])
    }
}
