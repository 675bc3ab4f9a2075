//! The mirrored volume: a `BlockDevice` that applies every request to the
//! production disk and replicates writes, zeroes and trims to every copy
//! link (DRBD protocol C in `Sync` mode).

use std::ops::RangeInclusive;
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

/// The production disk plus its copies, as one `BlockDevice`.
pub struct MirroredVolume {
    primary: Arc<Primary>,
    copies: Arc<RwLock<Copies>>,
    rt: Handle,
}

/// Who hears of a write: every tracked dirty log marks it, every link
/// sends it.
#[derive(Clone, Default)]
struct Copies {
    /// One per copy the volume knows, connected or not: each write is
    /// marked in every one of them before it is sent or answered.
    logs: Vec<Arc<dyn DirtyLog>>,
    links: Vec<Arc<CopyLink>>,
}

impl Copies {
    fn tracks(&self, log: &Arc<dyn DirtyLog>) -> bool {
        self.logs.iter().any(|l| Arc::ptr_eq(l, log))
    }
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
                failure: Default::default(),
            }),
            copies: Arc::default(),
            rt: Handle::current(),
        })
    }

    /// Track every write from now on in `log`, the dirty log of a copy
    /// that has no link yet (or no longer has one). Idempotent.
    pub fn track(&self, log: Arc<dyn DirtyLog>) {
        let mut c = self.copies.write().expect("copies lock poisoned");
        if !c.tracks(&log) {
            c.logs.push(log);
        }
    }

    /// Start mirroring to a copy host; `log` is that copy's dirty log,
    /// tracked from now on if it was not already.
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
        let link = Arc::new(CopyLink::new(cfg, self.primary.clone(), log.clone()));
        {
            let mut c = self.copies.write().expect("copies lock poisoned");
            if !c.tracks(&log) {
                c.logs.push(log);
            }
            c.links.push(link.clone());
        }
        self.rt.spawn(run_link(link.clone()));
        Ok(link)
    }

    /// Stop and forget the link named `name`. Its dirty log stays tracked:
    /// every later write is marked in it for when the copy comes back.
    pub fn remove_copy(&self, name: &str) {
        self.copies
            .write()
            .expect("copies lock poisoned")
            .links
            .retain(|l| {
                if l.name() == name {
                    l.stop();
                }
                l.name() != name
            });
    }

    pub fn links(&self) -> Vec<Arc<CopyLink>> {
        self.copies
            .read()
            .expect("copies lock poisoned")
            .links
            .clone()
    }

    /// Why the production disk failed, once it has (None until then): from
    /// then on every write is refused and no dirty chunk is cleared.
    pub fn disk_failure(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.primary.failure.watch()
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
        for l in self
            .copies
            .read()
            .expect("copies lock poisoned")
            .links
            .iter()
        {
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
        let copies = self.copies.read().expect("copies lock poisoned").clone();
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
            let _ = done.send(replicate(&primary, &copies, req, ticket).await);
        });
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, StorageError> {
        self.primary.local.extents(offset, len)
    }
}

/// Apply `req` locally and on every link, in the gate's order.
async fn replicate(
    primary: &Primary,
    copies: &Copies,
    req: Request,
    ticket: Option<Ticket>,
) -> Result<Reply, StorageError> {
    let size = primary.local.size();
    let (offset, len) = match &req {
        Request::Write { offset, data, .. } => (*offset, data.len() as u64),
        Request::Trim { offset, len } | Request::WriteZeroes { offset, len, .. } => (*offset, *len),
        Request::Flush => return flush(primary, &copies.links).await,
        Request::Read { .. } => return storage::call(&*primary.local, req).await,
    };
    storage::check_range(offset, len, size)?;
    if primary.disk_failed() {
        return Err(disk_failed(offset));
    }
    let links = &copies.links[..];
    let mut ticket = ticket.unwrap_or_else(|| primary.gate.admit(offset, len));
    ticket.ready().await;
    // Mark the range in every copy's log before anything is sent, so a log
    // that cannot record it fails the write before any copy has it. Every
    // copy the volume knows, linked or not: one that is away gets exactly
    // this range when it comes back.
    if !copies.logs.is_empty() && !matches!(&req, Request::Write { data, .. } if data.is_empty()) {
        if let Err(e) = mark_all(primary, &copies.logs, offset, len).await {
            return Err(refused(offset, e));
        }
    }
    let fua = matches!(&req, Request::Write { fua: true, .. });
    let mut sent = Sent::default();
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
                    send(link, at, n as u64, op, lease, &mut sent).await;
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
                send(link, offset, len, op, None, &mut sent).await;
            }
            req
        }
        req => req,
    };
    if let Some(e) = sent.failed.take() {
        // Only a log failing between two marks of the same range gets here.
        sent.local_done();
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
    if let Err(e) = &local {
        // Before the chunks are let go below: a copy may already hold this
        // write, so they must stay dirty for good.
        primary.failure.set(format!("{e}"));
    }
    sent.local_done();
    drop(ticket);
    if primary.mode == Mode::Sync {
        // A copy that fails keeps the range dirty and is resynced; it does
        // not fail a plain write (the application sees the production disk,
        // and the copy is no longer connected). A FUA write promises
        // durability on every connected copy: a copy that cannot confirm it
        // fails the write.
        for (name, a) in sent.acks {
            let r = a.await;
            if fua && local.is_ok() {
                not_durable(&name, r).map_err(|e| StorageError::Io { offset, source: e })?;
            }
        }
    }
    local
}

/// What a request left on the links: the answers to wait for, the counts
/// to take back once the local write is done, a log failure.
#[derive(Default)]
struct Sent {
    acks: Vec<(String, oneshot::Receiver<ItemReply>)>,
    counted: Vec<(Arc<CopyLink>, RangeInclusive<u64>)>,
    failed: Option<ReplicationError>,
}

impl Sent {
    /// The local write is over (done, or failed and recorded as such):
    /// let go of its count.
    fn local_done(&mut self) {
        for (link, chunks) in self.counted.drain(..) {
            link.local_done(chunks);
        }
    }
}

/// Ok when the copy confirmed a FUA write or a flush; otherwise the error
/// for the client, naming the copy.
fn not_durable(
    name: &str,
    r: Result<ItemReply, oneshot::error::RecvError>,
) -> Result<(), std::io::Error> {
    let e = match r {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(e)) => e.to_string(),
        Err(_) => ReplicationError::LinkDown.to_string(),
    };
    Err(std::io::Error::other(format!(
        "copy {name} could not make the data durable: {e}"
    )))
}

/// Mark the range in every tracked log: inline when the region was marked
/// lately (no disk I/O expected), else on the blocking pool, so a bitmap
/// fdatasync does not stall a runtime worker.
async fn mark_all(
    primary: &Primary,
    logs: &[Arc<dyn DirtyLog>],
    offset: u64,
    len: u64,
) -> Result<(), ReplicationError> {
    let mark = move |logs: &[Arc<dyn DirtyLog>]| {
        logs.iter()
            .try_for_each(|l| l.mark(offset, len))
            .map_err(ReplicationError::DirtyLog)
    };
    if primary.mark_hint.recently_marked(offset, len) {
        return mark(logs);
    }
    let owned = logs.to_vec();
    tokio::task::spawn_blocking(move || mark(&owned))
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

/// A write refused because the production disk failed earlier.
fn disk_failed(offset: u64) -> StorageError {
    StorageError::Io {
        offset,
        source: std::io::Error::other("the production disk failed: writes are refused"),
    }
}

/// Take window room, count the range in flight (it is already marked),
/// then queue it on the link's session if it has one. No await between the
/// count and the queueing, so the count is always answered.
async fn send(
    link: &Arc<CopyLink>,
    offset: u64,
    len: u64,
    op: Op,
    lease: Option<PageLease>,
    sent: &mut Sent,
) {
    let permit = link.reserve(&op).await;
    match link.prepare(offset, len) {
        Ok(Some(sess)) => {
            let chunks = chunk_span(offset, len, link.chunk_bytes());
            let ack = link.send_leased(&sess, op, Some(chunks.clone()), None, permit, lease);
            sent.acks.push((link.name().to_string(), ack));
            sent.counted.push((link.clone(), chunks));
        }
        Ok(None) => release(op, lease),
        Err(e) => {
            release(op, lease);
            sent.failed = Some(e);
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

/// A FLUSH: a barrier on every connected copy and on the production disk.
/// In sync mode it is answered only once every copy that had it queued made
/// it durable; a copy that could not (an error, or its session ended before
/// the answer) fails the flush, since what it acknowledged may be only in
/// its page cache.
async fn flush(primary: &Primary, links: &[Arc<CopyLink>]) -> Result<Reply, StorageError> {
    let mut acks = Vec::new();
    for link in links {
        let sess = link.lock().session.clone();
        if let Some(sess) = sess {
            acks.push((
                link.name().to_string(),
                link.enqueue(&sess, Op::Flush).await,
            ));
        }
    }
    let local = local_io(primary, Request::Flush).await;
    if let Err(e) = &local {
        primary.failure.set(format!("flush: {e}"));
    }
    if primary.mode == Mode::Sync {
        for (name, a) in acks {
            let r = a.await;
            if local.is_ok() {
                not_durable(&name, r).map_err(|e| StorageError::Io {
                    offset: 0,
                    source: e,
                })?;
            }
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
