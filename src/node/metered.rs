//! The production volume as the NBD export sees it, counting each write's
//! bytes and latency into the member's metrics on its way through.
//!
//! Reads, flushes and the rest pass straight through untouched.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::obs::WriteMetrics;
use crate::storage::{BlockDevice, Completion, Extent, Inline, Request, StorageError};

/// A [`BlockDevice`] that forwards to `inner` and records every write.
pub struct MeteredVolume {
    inner: Arc<dyn BlockDevice>,
    writes: WriteMetrics,
    rt: tokio::runtime::Handle,
}

impl MeteredVolume {
    /// Wraps `inner`; must be called inside the daemon's runtime, where
    /// the completion of each write is awaited.
    pub fn new(inner: Arc<dyn BlockDevice>, writes: WriteMetrics) -> MeteredVolume {
        MeteredVolume {
            inner,
            writes,
            rt: tokio::runtime::Handle::current(),
        }
    }
}

impl BlockDevice for MeteredVolume {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn submit(&self, req: Request, done: Completion) {
        let bytes = match &req {
            Request::Write { data, .. } => data.len() as u64,
            _ => return self.inner.submit(req, done),
        };
        // The latency is the time until the mirrored volume answers (local
        // disk and, in sync mode, every copy): what the NBD client waits.
        // Observing the answer takes one channel and one small task per
        // write, the same as the volume's own fan-out costs.
        let (tx, rx) = oneshot::channel();
        let started = Instant::now();
        self.inner.submit(req, tx);
        let writes = self.writes.clone();
        self.rt.spawn(async move {
            let r = rx.await.unwrap_or(Err(StorageError::Stopped));
            match &r {
                Ok(_) => writes.record(bytes, started.elapsed()),
                Err(_) => writes.record_error(),
            }
            // The client may have hung up: its answer has nowhere to go.
            let _ = done.send(r);
        });
    }

    fn inline_ready(&self, req: &Request) -> bool {
        self.inner.inline_ready(req)
    }

    fn run_inline(&self, req: Request) -> Inline {
        let bytes = match &req {
            Request::Write { data, .. } => data.len() as u64,
            _ => return self.inner.run_inline(req),
        };
        // Measured the same way as `submit`, without its task: the answer
        // is here on this thread.
        let started = Instant::now();
        let out = self.inner.run_inline(req);
        if let Inline::Done(r) = &out {
            match r {
                Ok(_) => self.writes.record(bytes, started.elapsed()),
                Err(_) => self.writes.record_error(),
            }
        }
        out
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, StorageError> {
        self.inner.extents(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::Metrics;
    use crate::storage::{call, plain::PlainEngine, IoBuf, Reply};

    #[tokio::test]
    async fn writes_are_counted_and_reads_pass_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("create");
        f.set_len(1 << 20).expect("size");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        let m = Metrics::serve(port).expect("metrics");
        let dev = MeteredVolume::new(Arc::new(PlainEngine::new(f, 1 << 20)), m.writes());
        let data = IoBuf::from_slice(&[0x5a; 8192]);
        for i in 0..3u64 {
            let req = Request::Write {
                offset: i * 8192,
                data: data.clone(),
                fua: false,
            };
            call(&dev, req).await.expect("write");
        }
        let r = call(
            &dev,
            Request::Read {
                offset: 0,
                len: 4096,
            },
        )
        .await
        .expect("read");
        assert!(matches!(r, Reply::Read(b) if b.iter().all(|&x| x == 0x5a)));
        let text = m.render();
        assert!(text.contains("geomirror_writes_total 3"), "{text}");
        assert!(text.contains("geomirror_write_bytes_total 24576"), "{text}");
    }
}
