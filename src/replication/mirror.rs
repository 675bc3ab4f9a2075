//! The mirrored volume: a `BlockDevice` that applies every request to the
//! production disk and replicates writes, zeroes and trims to every copy
//! link (DRBD protocol C in `Sync` mode).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::dirty::{chunk_span, DirtyLog};
use super::error::ReplicationError;
use super::generation::Generations;
use super::link::{CopyConfig, CopyLink, ItemReply, Op, PageLease};
use super::mark_hint::MarkHint;
use super::order::{OverlapGate, Ticket};
use super::primary::{Mode, Primary};
use super::session::run_link;
use super::wire::PAYLOAD_BYTES_MAX;
use crate::storage::run_here;
use crate::storage::{
    self, BlockDevice, Completion, Extent, Inline, IoBuf, Reply, Request, StorageError,
};

/// How the production host mirrors.
#[derive(Debug, Clone)]
pub struct VolumeConfig {
    pub mode: Mode,
    /// The group epoch this production host speaks for.
    pub epoch: u64,
    /// Generations of the production disk (from its label).
    pub generations: Generations,
}

/// The production disk plus its copy links, as one `BlockDevice`.
pub struct MirroredVolume {
    primary: Arc<Primary>,
    links: Arc<RwLock<Vec<Arc<CopyLink>>>>,
    rt: Handle,
}

impl MirroredVolume {
    /// Wrap `local`. Must be called from within a tokio runtime, which
    /// runs the requests and the links.
    pub fn new(local: Arc<dyn BlockDevice>, cfg: VolumeConfig) -> Arc<MirroredVolume> {
        Arc::new(MirroredVolume {
            primary: Arc::new(Primary {
                mark_hint: MarkHint::new(local.size()),
                page_bytes_copied: AtomicU64::new(0),
                local,
                gate: OverlapGate::new(),
                epoch: AtomicU64::new(cfg.epoch),
                generations: cfg.generations,
                mode: cfg.mode,
            }),
            links: Arc::default(),
            rt: Handle::current(),
        })
    }

    /// Start mirroring to a copy host; `log` is that copy's dirty bitmap.
    pub fn add_copy(
        &self,
        cfg: CopyConfig,
        log: Arc<dyn DirtyLog>,
    ) -> Result<Arc<CopyLink>, ReplicationError> {
        let cb = log.chunk_bytes();
        if cb == 0 || cb as usize > PAYLOAD_BYTES_MAX {
            return Err(ReplicationError::Malformed(format!(
                "dirty log chunk of {cb} bytes (1 ..= {PAYLOAD_BYTES_MAX})"
            )));
        }
        let link = Arc::new(CopyLink::new(cfg, self.primary.clone(), log));
        self.links
            .write()
            .expect("links lock poisoned")
            .push(link.clone());
        self.rt.spawn(run_link(link.clone()));
        Ok(link)
    }

    /// Stop and forget the link named `name` (its dirty log keeps its marks).
    pub fn remove_copy(&self, name: &str) {
        self.links
            .write()
            .expect("links lock poisoned")
            .retain(|l| {
                if l.name() == name {
                    l.stop();
                }
                l.name() != name
            });
    }

    pub fn links(&self) -> Vec<Arc<CopyLink>> {
        self.links.read().expect("links lock poisoned").clone()
    }

    /// Raise the epoch (a newer group decision); later messages carry it.
    pub fn set_epoch(&self, epoch: u64) {
        self.primary.epoch.fetch_max(epoch, Ordering::AcqRel);
    }

    pub fn mode(&self) -> Mode {
        self.primary.mode
    }

    /// Page bytes copied so that the links could send them: zero in sync
    /// mode, where the links borrow the request's own buffer.
    pub fn page_bytes_copied(&self) -> u64 {
        self.primary.page_bytes_copied.load(Ordering::Relaxed)
    }
}

impl Drop for MirroredVolume {
    fn drop(&mut self) {
        for l in self.links.read().expect("links lock poisoned").iter() {
            l.stop();
        }
    }
}

impl BlockDevice for MirroredVolume {
    fn size(&self) -> u64 {
        self.primary.local.size()
    }

    fn submit(&self, req: Request, done: Completion) {
        if let Request::Read { .. } = req {
            return self.primary.local.submit(req, done);
        }
        let primary = self.primary.clone();
        let links = self.links.read().expect("links lock poisoned").clone();
        // The place in the order is taken here, synchronously: requests
        // submitted one after another are applied (locally and on every
        // copy) in submission order where they overlap.
        let ticket = match &req {
            Request::Write { offset, data, .. } => {
                Some(primary.gate.admit(*offset, data.len() as u64))
            }
            Request::Trim { offset, len } | Request::WriteZeroes { offset, len, .. } => {
                Some(primary.gate.admit(*offset, *len))
            }
            _ => None,
        };
        self.rt.spawn(async move {
            let _ = done.send(replicate(&primary, &links, req, ticket).await);
        });
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, StorageError> {
        self.primary.local.extents(offset, len)
    }
}

/// Apply `req` locally and on every link, in the gate's order.
async fn replicate(
    primary: &Primary,
    links: &[Arc<CopyLink>],
    req: Request,
    ticket: Option<Ticket>,
) -> Result<Reply, StorageError> {
    let size = primary.local.size();
    let (offset, len) = match &req {
        Request::Write { offset, data, .. } => (*offset, data.len() as u64),
        Request::Trim { offset, len } | Request::WriteZeroes { offset, len, .. } => (*offset, *len),
        Request::Flush => return flush(primary, links).await,
        Request::Read { .. } => return storage::call(&*primary.local, req).await,
    };
    storage::check_range(offset, len, size)?;
    let mut ticket = ticket.unwrap_or_else(|| primary.gate.admit(offset, len));
    ticket.ready().await;
    // Mark the range in every copy's log before anything is sent, so a log
    // that cannot record it fails the write before any copy has it.
    if !links.is_empty() && !matches!(&req, Request::Write { data, .. } if data.is_empty()) {
        if let Err(e) = mark_all(primary, links, offset, len).await {
            return Err(refused(offset, e));
        }
    }
    let mut acks: Vec<oneshot::Receiver<ItemReply>> = Vec::new();
    let mut failed = None;
    let req = match req {
        // An empty write changes nothing and is not replicated.
        Request::Write { offset, data, fua } if !links.is_empty() && !data.is_empty() => {
            // Sync mode lends the request's own buffer to the links and
            // takes it back for the local write once every link has it in
            // its socket: no page copy, and the delay is hidden behind the
            // copy's round trip, which the answer waits for anyway. Async
            // mode must not hold the local write behind a lagging link, so
            // the links get a copy there.
            let (page, local) = match primary.mode {
                Mode::Sync => (Arc::new(data), None),
                Mode::Async => {
                    let n = data.len() as u64;
                    primary.page_bytes_copied.fetch_add(n, Ordering::Relaxed);
                    (Arc::new(IoBuf::from_slice(&data)), Some(data))
                }
            };
            let mut released = Vec::new();
            let mut start = 0usize;
            while start < page.len() {
                let n = PAYLOAD_BYTES_MAX.min(page.len() - start);
                // Computed once, before sending; every copy checks it.
                let crc = crc32fast::hash(&page[start..start + n]);
                let at = offset + start as u64;
                for link in links {
                    let op = Op::Write {
                        offset: at,
                        data: page.clone(),
                        start,
                        len: n,
                        crc,
                        fua,
                    };
                    let lease = local.is_none().then(|| {
                        let (lease, back) = oneshot::channel();
                        released.push(back);
                        lease
                    });
                    send(link, at, n as u64, op, lease, &mut acks, &mut failed).await;
                }
                start += n;
            }
            let data = match local {
                Some(data) => data,
                None => take_back(primary, page, released).await,
            };
            Request::Write { offset, data, fua }
        }
        Request::Trim { .. } | Request::WriteZeroes { .. } => {
            let (trim, punch) = match &req {
                Request::WriteZeroes { punch, .. } => (false, *punch),
                _ => (true, true),
            };
            for link in links {
                let op = Op::Zero {
                    offset,
                    len,
                    trim,
                    punch,
                };
                send(link, offset, len, op, None, &mut acks, &mut failed).await;
            }
            req
        }
        req => req,
    };
    if let Some(e) = failed {
        // Only a log failing between two marks of the same range gets here.
        drop(ticket);
        return Err(refused(offset, e));
    }
    // A lone write, or a plain one the engine takes as a small page-cache
    // copy at any depth, runs on this thread while the links send: the hop
    // to the engine's thread and back is most of a small write's local time.
    let plain = req.is_plain_write();
    let local = if plain || primary.gate.is_alone(&ticket) {
        local_io(primary, req).await
    } else {
        storage::call(&*primary.local, req).await
    };
    drop(ticket);
    if primary.mode == Mode::Sync {
        // A copy that fails keeps the range dirty and is resynced; it does
        // not fail the write (the application sees the production disk).
        for a in acks {
            let _ = a.await;
        }
    }
    local
}

/// Mark the range in every link's log: inline when the region was marked
/// lately (no disk I/O expected), else on the blocking pool, so a bitmap
/// fdatasync does not stall a runtime worker.
async fn mark_all(
    primary: &Primary,
    links: &[Arc<CopyLink>],
    offset: u64,
    len: u64,
) -> Result<(), ReplicationError> {
    if primary.mark_hint.recently_marked(offset, len) {
        return links.iter().try_for_each(|l| l.mark(offset, len));
    }
    let links = links.to_vec();
    tokio::task::spawn_blocking(move || links.iter().try_for_each(|l| l.mark(offset, len)))
        .await
        .map_err(|e| ReplicationError::DirtyLog(std::io::Error::other(e.to_string())))??;
    primary.mark_hint.record(offset, len);
    Ok(())
}

/// A write refused because a dirty log could not record it: refusing is
/// safer than a copy silently missing the write.
fn refused(offset: u64, e: ReplicationError) -> StorageError {
    tracing::error!("write refused: {e}");
    StorageError::Io {
        offset,
        source: std::io::Error::other(e.to_string()),
    }
}

/// Take window room, count the range in flight (it is already marked),
/// then queue it on the link's session if it has one. No await between the
/// count and the queueing, so the count is always answered.
async fn send(
    link: &CopyLink,
    offset: u64,
    len: u64,
    op: Op,
    lease: Option<PageLease>,
    acks: &mut Vec<oneshot::Receiver<ItemReply>>,
    failed: &mut Option<ReplicationError>,
) {
    let permit = link.reserve(&op).await;
    match link.prepare(offset, len) {
        Ok(Some(sess)) => {
            let chunks = chunk_span(offset, len, link.chunk_bytes());
            acks.push(link.send_leased(&sess, op, Some(chunks), None, permit, lease));
        }
        Ok(None) => release(op, lease),
        Err(e) => {
            release(op, lease);
            *failed = Some(e);
        }
    }
}

/// An unsent request lets go of its page before its lease.
fn release(op: Op, lease: Option<PageLease>) {
    drop(op);
    drop(lease);
}

/// The buffer lent to the links, once each has dropped its lease (a link
/// lets go of the page before its lease, so the last reference is ours).
async fn take_back(
    primary: &Primary,
    page: Arc<IoBuf>,
    released: Vec<oneshot::Receiver<()>>,
) -> IoBuf {
    for r in released {
        // Never sent: the lease is only dropped, so this is always Err.
        let _ = r.await;
    }
    Arc::try_unwrap(page).unwrap_or_else(|shared| {
        // Not expected; copying is correct, only slower.
        tracing::debug!("lent page still shared; copying it");
        let n = shared.len() as u64;
        primary.page_bytes_copied.fetch_add(n, Ordering::Relaxed);
        IoBuf::from_slice(&shared)
    })
}

async fn flush(primary: &Primary, links: &[Arc<CopyLink>]) -> Result<Reply, StorageError> {
    let mut acks = Vec::new();
    for link in links {
        let sess = link.lock().session.clone();
        if let Some(sess) = sess {
            acks.push(link.enqueue(&sess, Op::Flush).await);
        }
    }
    let local = local_io(primary, Request::Flush).await;
    if primary.mode == Mode::Sync {
        for a in acks {
            let _ = a.await;
        }
    }
    local
}

/// `req` on the production disk: inline when the engine takes it now.
async fn local_io(primary: &Primary, req: Request) -> Result<Reply, StorageError> {
    match run_here(&*primary.local, req) {
        Inline::Done(r) => r,
        Inline::Declined(req) => storage::call(&*primary.local, req).await,
    }
}
