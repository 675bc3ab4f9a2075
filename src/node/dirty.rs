//! The production disk's durable dirty bitmap, shared by every copy link:
//! each link keeps its own set of chunks the copy lacks, the disk keeps
//! their union, activity-log style.
//!
//! A chunk is marked on disk before a write to it is answered (a crash of
//! the production host loses no mark). Clears are deferred: a chunk's
//! durable bit is dropped only when no link needs it and no write touched it
//! for one clear period, so a hot working set costs no bitmap I/O at all
//! (DRBD's activity log makes the same trade with 4 MiB extents).

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::replication::{dirty::chunk_span, ChunkSet, DirtyLog};
use crate::storage::DirtyBitmap;

/// The union bitmap on disk plus the links' own sets.
/// Durable marks are made a whole extent at a time (DRBD's activity-log
/// extents are 4 MiB too): a write to a fresh extent costs one bitmap write
/// and fdatasync, later writes anywhere in it cost none. The links keep
/// their own sets chunk by chunk, so an ordinary resync stays precise; only
/// after a crash of the production host is a whole extent resent.
pub const EXTENT_BYTES: u64 = 4 << 20;

pub struct SharedBitmap {
    disk: Arc<DirtyBitmap>,
    chunks: u64,
    data_bytes: u64,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Per link: the chunks its copy lacks.
    links: Vec<(String, ChunkSet)>,
    /// Chunks written since the last clear pass (kept dirty on disk one more period).
    recent: ChunkSet,
}

impl SharedBitmap {
    pub fn new(disk: Arc<DirtyBitmap>, data_bytes: u64) -> Arc<SharedBitmap> {
        let chunks = data_bytes.div_ceil(disk.chunk_bytes());
        Arc::new(SharedBitmap {
            disk,
            chunks,
            data_bytes,
            inner: Mutex::new(Inner {
                links: Vec::new(),
                recent: ChunkSet::new(chunks),
            }),
        })
    }

    /// The dirty log of the link to `name`. It starts with every chunk the
    /// disk holds dirty: after a crash nobody knows which copy lacks what.
    pub fn link(self: &Arc<Self>, name: &str) -> Arc<LinkLog> {
        let link = Arc::new(LinkLog {
            shared: self.clone(),
            name: name.to_string(),
        });
        // The same copy host again (a restart, a reconnect): its own set,
        // kept marked while it was away, is exact.
        if self.lock().links.iter().any(|(n, _)| n == name) {
            return link;
        }
        let mut set = ChunkSet::new(self.chunks);
        let cb = self.disk.chunk_bytes();
        for (off, len) in self.disk.dirty_ranges() {
            for c in chunk_span(off, len, cb) {
                set.insert(c);
            }
        }
        let mut g = self.lock();
        g.links.retain(|(n, _)| n != name);
        g.links.push((name.to_string(), set));
        link
    }

    /// Forget the link to `name` for good (another link now tracks its
    /// disk); its chunks stay dirty on disk until a clear pass finds no
    /// other reason to keep them.
    pub fn forget_link(&self, name: &str) {
        self.lock().links.retain(|(n, _)| n != name);
    }

    /// One clear pass: drop the durable bit of every chunk that no link
    /// needs and no write touched since the previous pass, then persist.
    /// Only while at least one link exists: with no copy connected at all,
    /// every chunk written stays dirty for the copies that come back.
    pub fn clear_pass(&self) -> io::Result<()> {
        self.clear(false)
    }

    /// The last pass, on a clean stop: every extent no link needs is
    /// cleared, however recently it was written.
    pub fn final_pass(&self) -> io::Result<()> {
        self.clear(true)
    }

    fn clear(&self, last: bool) -> io::Result<()> {
        let cb = self.disk.chunk_bytes();
        let per_extent = (EXTENT_BYTES / cb).max(1);
        let mut g = self.lock();
        if g.links.is_empty() {
            return Ok(());
        }
        let mut extents: Vec<u64> = Vec::new();
        for (off, len) in self.disk.dirty_ranges() {
            for c in chunk_span(off, len, cb) {
                let e = c / per_extent;
                if extents.last() != Some(&e) {
                    extents.push(e);
                }
            }
        }
        for e in extents {
            let first = e * per_extent;
            let end = (first + per_extent).min(self.chunks);
            let needed = (first..end).any(|c| {
                (!last && g.recent.contains(c)) || g.links.iter().any(|(_, s)| s.contains(c))
            });
            if !needed {
                self.disk.clear(first * cb, (end - first) * cb);
            }
        }
        g.recent = ChunkSet::new(self.chunks);
        drop(g);
        self.disk.flush().map_err(io::Error::other)
    }

    /// Run [`clear_pass`](Self::clear_pass) every `period` until the task is dropped.
    pub async fn clear_loop(self: Arc<Self>, period: Duration) {
        let mut t = tokio::time::interval(period);
        t.tick().await;
        loop {
            t.tick().await;
            let me = self.clone();
            let r = tokio::task::spawn_blocking(move || me.clear_pass()).await;
            if let Ok(Err(e)) = r {
                tracing::warn!("dirty bitmap clear pass: {e}");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_link<R>(
        &self,
        name: &str,
        f: impl FnOnce(&mut ChunkSet, &mut ChunkSet) -> R,
    ) -> Option<R> {
        let mut g = self.lock();
        let Inner { links, recent } = &mut *g;
        links
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, s)| f(s, recent))
    }
}

/// One link's view of the shared bitmap.
pub struct LinkLog {
    shared: Arc<SharedBitmap>,
    name: String,
}

impl DirtyLog for LinkLog {
    fn chunk_bytes(&self) -> u64 {
        self.shared.disk.chunk_bytes()
    }

    fn mark(&self, offset: u64, len: u64) -> io::Result<()> {
        // Durable first: no I/O when the chunks are already dirty on disk.
        let start = offset - offset % EXTENT_BYTES;
        let end = offset
            .saturating_add(len.max(1))
            .div_ceil(EXTENT_BYTES)
            .saturating_mul(EXTENT_BYTES)
            .min(self.shared.data_bytes);
        self.shared
            .disk
            .mark(start, end.saturating_sub(start).max(1))
            .map_err(io::Error::other)?;
        let cb = self.chunk_bytes();
        self.shared.with_link(&self.name, |set, recent| {
            for c in chunk_span(offset, len, cb) {
                set.insert(c);
                recent.insert(c);
            }
        });
        Ok(())
    }

    fn clear(&self, offset: u64, len: u64) -> io::Result<()> {
        let cb = self.chunk_bytes();
        self.shared.with_link(&self.name, |set, _| {
            for c in chunk_span(offset, len, cb) {
                set.remove(c);
            }
        });
        Ok(())
    }

    fn dirty_chunks(&self) -> ChunkSet {
        let chunks = self.shared.chunks;
        self.shared
            .with_link(&self.name, |set, _| set.clone())
            .unwrap_or_else(|| ChunkSet::new(chunks))
    }

    fn set_all(&self) -> io::Result<()> {
        self.shared.disk.set_all().map_err(io::Error::other)?;
        let chunks = self.shared.chunks;
        self.shared.with_link(&self.name, |set, _| {
            for c in 0..chunks {
                set.insert(c);
            }
        });
        Ok(())
    }
}
