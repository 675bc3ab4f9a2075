//! The production disk's durable dirty bitmap, shared by the trackers of
//! every copy site: each site keeps its own set of chunks its copy lacks,
//! the disk keeps their union, activity-log style.
//!
//! Every copy site the recovery domain names has a tracker from the moment
//! the production volume exists, connected or not, so every write a
//! production host serves is tracked for every copy. A chunk is marked on
//! disk before a write to it is answered (a crash of the production host
//! loses no mark). Clears are deferred: a chunk's durable bit is dropped
//! only when no site needs it and no write touched it for one clear period,
//! so a hot working set costs no bitmap I/O at all (DRBD's activity log
//! makes the same trade with 4 MiB extents). After a restart every site
//! starts from the union on disk: a superset of what each one lacks.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::replication::{dirty::chunk_span, ChunkSet, DirtyLog};
use crate::storage::DirtyBitmap;

/// Durable marks are made a whole extent at a time (DRBD's activity-log
/// extents are 4 MiB too): a write to a fresh extent costs one bitmap write
/// and fdatasync, later writes anywhere in it cost none. The sites keep
/// their own sets chunk by chunk, so an ordinary resync stays precise; only
/// after a crash of the production host is a whole extent resent.
pub const EXTENT_BYTES: u64 = 4 << 20;

pub struct SharedBitmap {
    disk: Arc<DirtyBitmap>,
    chunks: u64,
    data_bytes: u64,
    inner: Mutex<Inner>,
    /// A site has settled (a resync finished): run a clear pass now, so a
    /// crash soon after does not resend what that site already holds.
    settled: Notify,
}

struct Inner {
    /// Per copy site: the chunks its copy lacks.
    sites: Vec<(String, ChunkSet)>,
    /// Chunks written since the last clear pass (kept dirty on disk one more period).
    recent: ChunkSet,
    /// The production disk failed: the durable bits stay as they are.
    frozen: bool,
}

/// What a clear pass may drop.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Extents no site needs and not written since the previous pass; the
    /// written set starts afresh.
    Periodic,
    /// The same extents, keeping the written set (an extra pass between
    /// two periodic ones must not shorten the activity log's memory).
    Early,
    /// On a clean stop: every extent no site needs.
    Final,
}

impl SharedBitmap {
    pub fn new(disk: Arc<DirtyBitmap>, data_bytes: u64) -> Arc<SharedBitmap> {
        let chunks = data_bytes.div_ceil(disk.chunk_bytes());
        Arc::new(SharedBitmap {
            disk,
            chunks,
            data_bytes,
            inner: Mutex::new(Inner {
                sites: Vec::new(),
                recent: ChunkSet::new(chunks),
                frozen: false,
            }),
            settled: Notify::new(),
        })
    }

    /// The tracker of copy site `name` (its resource id). The first call
    /// for a name starts it with every chunk the disk holds dirty: after a
    /// crash nobody knows which copy lacks what. Later calls return a view
    /// of the same set, exact since then.
    pub fn site(self: &Arc<Self>, name: &str) -> Arc<SiteLog> {
        let log = Arc::new(SiteLog {
            shared: self.clone(),
            name: name.to_string(),
        });
        if self.lock().sites.iter().any(|(n, _)| n == name) {
            return log;
        }
        let mut set = ChunkSet::new(self.chunks);
        let cb = self.disk.chunk_bytes();
        for (off, len) in self.disk.dirty_ranges() {
            for c in chunk_span(off, len, cb) {
                set.insert(c);
            }
        }
        let mut g = self.lock();
        if !g.sites.iter().any(|(n, _)| n == name) {
            g.sites.push((name.to_string(), set));
        }
        log
    }

    /// The production disk failed: from now on no clear pass changes the
    /// durable bits, which still cover every write that may differ.
    pub fn freeze(&self) {
        self.lock().frozen = true;
    }

    /// One clear pass: drop the durable bit of every extent that no site
    /// needs and no write touched since the previous pass, then persist.
    pub fn clear_pass(&self) -> io::Result<()> {
        self.clear(Pass::Periodic)
    }

    /// The last pass, on a clean stop: every extent no site needs is
    /// cleared, however recently it was written.
    pub fn final_pass(&self) -> io::Result<()> {
        self.clear(Pass::Final)
    }

    fn clear(&self, pass: Pass) -> io::Result<()> {
        let cb = self.disk.chunk_bytes();
        let per_extent = (EXTENT_BYTES / cb).max(1);
        let mut g = self.lock();
        if g.frozen {
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
                (pass != Pass::Final && g.recent.contains(c))
                    || g.sites.iter().any(|(_, s)| s.contains(c))
            });
            if !needed {
                self.disk.clear(first * cb, (end - first) * cb);
            }
        }
        if pass == Pass::Periodic {
            g.recent = ChunkSet::new(self.chunks);
        }
        drop(g);
        self.disk.flush().map_err(io::Error::other)
    }

    /// Run a clear pass every `period`, and an early one whenever a site
    /// settles, until the task is dropped.
    pub async fn clear_loop(self: Arc<Self>, period: Duration) {
        let mut t = tokio::time::interval(period);
        t.tick().await;
        loop {
            let periodic = tokio::select! {
                _ = t.tick() => true,
                _ = self.settled.notified() => false,
            };
            let me = self.clone();
            let r = tokio::task::spawn_blocking(move || {
                if periodic {
                    me.clear_pass()
                } else {
                    me.clear(Pass::Early)
                }
            })
            .await;
            if let Ok(Err(e)) = r {
                tracing::warn!("dirty bitmap clear pass: {e}");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_site<R>(
        &self,
        name: &str,
        f: impl FnOnce(&mut ChunkSet, &mut ChunkSet) -> R,
    ) -> Option<R> {
        let mut g = self.lock();
        let Inner { sites, recent, .. } = &mut *g;
        sites
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, s)| f(s, recent))
    }
}

/// One copy site's view of the shared bitmap.
pub struct SiteLog {
    shared: Arc<SharedBitmap>,
    name: String,
}

impl DirtyLog for SiteLog {
    fn chunk_bytes(&self) -> u64 {
        self.shared.disk.chunk_bytes()
    }

    fn mark(&self, offset: u64, len: u64) -> io::Result<()> {
        // In memory first, then durable. A clear pass looks at the sets
        // under the same lock: once the chunks are in `recent` no pass drops
        // their extent, so the durable bit checked (or written) below stays
        // until this write is long answered. The other order lost marks: a
        // pass between "already dirty on disk, nothing to write" and the
        // insert cleared the extent under a write in flight.
        let cb = self.chunk_bytes();
        self.shared.with_site(&self.name, |set, recent| {
            for c in chunk_span(offset, len, cb) {
                set.insert(c);
                recent.insert(c);
            }
        });
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
        Ok(())
    }

    fn clear(&self, offset: u64, len: u64) -> io::Result<()> {
        let cb = self.chunk_bytes();
        self.shared.with_site(&self.name, |set, _| {
            for c in chunk_span(offset, len, cb) {
                set.remove(c);
            }
        });
        Ok(())
    }

    fn dirty_chunks(&self) -> ChunkSet {
        let chunks = self.shared.chunks;
        self.shared
            .with_site(&self.name, |set, _| set.clone())
            .unwrap_or_else(|| ChunkSet::new(chunks))
    }

    fn set_all(&self) -> io::Result<()> {
        let chunks = self.shared.chunks;
        self.shared.with_site(&self.name, |set, _| {
            for c in 0..chunks {
                set.insert(c);
            }
        });
        self.shared.disk.set_all().map_err(io::Error::other)
    }

    fn settled(&self) {
        self.shared.settled.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::meta::MetaLayout;
    use std::fs::File;
    use std::sync::Barrier;

    const CHUNK: u64 = 64 << 10;
    const DISK: u64 = 64 << 20;

    fn bitmap() -> (
        tempfile::NamedTempFile,
        Arc<File>,
        MetaLayout,
        Arc<DirtyBitmap>,
    ) {
        let tmp = tempfile::NamedTempFile::new().expect("temp file");
        tmp.as_file().set_len(DISK).expect("size");
        let layout = MetaLayout::compute(DISK, CHUNK).expect("layout");
        let file = Arc::new(tmp.reopen().expect("reopen"));
        crate::storage::bitmap::write_empty(&file, &layout).expect("empty bitmap");
        let disk = Arc::new(DirtyBitmap::load(file.clone(), layout).expect("load"));
        (tmp, file, layout, disk)
    }

    /// A write to an extent that is already dirty on disk costs no bitmap
    /// I/O; a clear pass running at that very moment must still leave the
    /// extent dirty on disk once the mark has returned.
    #[test]
    fn a_mark_racing_a_clear_pass_is_never_lost() {
        let (_tmp, file, layout, disk) = bitmap();
        let shared = SharedBitmap::new(disk.clone(), layout.data_bytes);
        let site = shared.site("dr");
        for round in 0..400 {
            // Written, acknowledged and flushed long ago: dirty on disk,
            // clean for the site, no longer recent.
            site.mark(0, 4096).expect("mark");
            site.clear(0, 4096).expect("clear");
            shared.clear_pass().expect("pass");
            assert!(disk.is_dirty(0), "recent extents stay dirty one period");
            let barrier = Arc::new(Barrier::new(2));
            let pass = {
                let (shared, barrier) = (shared.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    shared.clear_pass().expect("racing pass");
                })
            };
            barrier.wait();
            site.mark(0, 4096).expect("racing mark");
            let after_mark = disk.is_dirty(0);
            pass.join().expect("pass thread");
            let reloaded = DirtyBitmap::load(file.clone(), layout).expect("reload");
            assert!(
                after_mark && reloaded.is_dirty(0),
                "round {round}: a clear pass dropped the extent under a write in flight"
            );
        }
    }

    #[test]
    fn every_site_keeps_its_chunks_dirty_until_it_has_them() {
        let (_tmp, _file, layout, disk) = bitmap();
        let shared = SharedBitmap::new(disk.clone(), layout.data_bytes);
        let (dr1, dr2) = (shared.site("dr1"), shared.site("dr2"));
        dr1.mark(0, 4096).expect("mark");
        dr2.mark(0, 4096).expect("mark");
        // dr1 has it; dr2 is away.
        dr1.clear(0, 4096).expect("clear");
        shared.final_pass().expect("pass");
        assert!(disk.is_dirty(0), "cleared while dr2 still lacks it");
        dr2.clear(0, 4096).expect("clear");
        shared.final_pass().expect("pass");
        assert!(!disk.is_dirty(0), "kept although every site has it");
        // After a restart both start from the union on disk.
        dr2.mark(EXTENT_BYTES, 4096).expect("mark");
        let again = SharedBitmap::new(disk.clone(), layout.data_bytes);
        let chunk = EXTENT_BYTES / CHUNK;
        assert!(again.site("dr1").dirty_chunks().contains(chunk));
        assert!(again.site("dr2").dirty_chunks().contains(chunk));
    }

    #[test]
    fn a_frozen_bitmap_clears_nothing() {
        let (_tmp, _file, layout, disk) = bitmap();
        let shared = SharedBitmap::new(disk.clone(), layout.data_bytes);
        let dr = shared.site("dr");
        dr.mark(0, 4096).expect("mark");
        dr.clear(0, 4096).expect("clear");
        shared.freeze();
        shared.final_pass().expect("pass");
        assert!(disk.is_dirty(0), "a failed disk's marks must stay");
    }
}
