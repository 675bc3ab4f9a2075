//! The transmission phase (NBD `doc/proto.md` "Transmission"): usable on its own,
//! given a connected stream and an export, as the kernel client needs.
//!
//! A reader parses requests from a buffered stream and starts each on the device;
//! completions go to a writer task that gathers replies and sends them with one
//! vectored write. Every request gets exactly one reply, in completion order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, BufReader};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use super::consts::*;
use super::proto::{validate, Command, Limits, RequestHeader, PAYLOAD_LEN_MAX};
use super::reply::{writer, Body, Job, Outgoing};
use super::{Export, NbdError};
use crate::storage::{call, run_here, Inline, Reply, Request, StorageError};

/// Size of the request reader's buffer: many small requests per read syscall.
const READ_BUFFER_BYTES: usize = 256 * 1024;
/// Unit in which payload bytes in flight are counted.
const PAGE_BYTES: u32 = 4096;
/// After a write payload this large, the next header is read on its own, so
/// that the payload behind it goes from the socket straight into its aligned
/// buffer instead of through the reader's buffer (a copy of up to
/// [`READ_BUFFER_BYTES`] per request on a stream of large writes).
const DIRECT_PAYLOAD_BYTES_MIN: u32 = 64 * 1024;

/// How a connection behaves after negotiation.
#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    /// Structured replies were negotiated (else simple replies only).
    pub structured: bool,
    /// `base:allocation` was selected, so BLOCK_STATUS is allowed.
    pub meta_allocation: bool,
    /// Requests accepted before their replies are written.
    pub requests_in_flight_max: usize,
    /// Read and write payload bytes held in flight.
    pub bytes_in_flight_max: usize,
    /// When this turns true, stop reading requests, answer those in flight, end.
    pub shutdown: Option<watch::Receiver<bool>>,
}

impl Default for ConnectionOptions {
    fn default() -> ConnectionOptions {
        ConnectionOptions {
            structured: false,
            meta_allocation: false,
            requests_in_flight_max: 128,
            bytes_in_flight_max: 32 * 1024 * 1024,
            shutdown: None,
        }
    }
}

/// Serve requests on `stream` until the client disconnects (or sends DISC),
/// a protocol error, or shutdown. In-flight requests are always answered (if
/// the socket still takes it) and the device is flushed after any write.
pub async fn serve_connection<S>(
    stream: S,
    export: Arc<Export>,
    opts: ConnectionOptions,
) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(writer(wr, rx, opts.structured));
    let dirty = Arc::new(AtomicBool::new(false));
    let session = Session {
        export: export.clone(),
        limits: Limits {
            size: export.device.size(),
            read_only: export.read_only,
            structured: opts.structured,
            meta_allocation: opts.meta_allocation,
        },
        tx,
        requests: Arc::new(Semaphore::new(opts.requests_in_flight_max.max(1))),
        requests_max: opts.requests_in_flight_max.max(1),
        pages: Arc::new(Semaphore::new(pages_max(&opts))),
        pages_max: pages_max(&opts) as u32,
        dirty: dirty.clone(),
    };
    let result = session
        .read_loop(
            BufReader::with_capacity(READ_BUFFER_BYTES, rd),
            opts.shutdown,
        )
        .await;
    // The writer ends once every in-flight request has sent its reply.
    let _ = writer.await;
    if dirty.load(Ordering::Acquire) {
        if let Err(e) = call(export.device.as_ref(), Request::Flush).await {
            tracing::warn!("flush at end of connection failed: {e}");
        }
    }
    result
}

fn pages_max(o: &ConnectionOptions) -> usize {
    (o.bytes_in_flight_max / PAGE_BYTES as usize).max((PAYLOAD_LEN_MAX / PAGE_BYTES) as usize)
}

struct Session {
    export: Arc<Export>,
    limits: Limits,
    tx: mpsc::UnboundedSender<Job>,
    requests: Arc<Semaphore>,
    requests_max: usize,
    pages: Arc<Semaphore>,
    pages_max: u32,
    dirty: Arc<AtomicBool>,
}

/// Permits held until the reply is written: they bound memory and queue depth.
pub(super) struct Permits {
    _request: OwnedSemaphorePermit,
    _pages: OwnedSemaphorePermit,
}

impl Session {
    async fn read_loop<R: AsyncRead + Unpin>(
        self,
        mut rd: BufReader<R>,
        mut shutdown: Option<watch::Receiver<bool>>,
    ) -> Result<(), NbdError> {
        let mut hdr = [0u8; REQUEST_LEN];
        let mut exact = false;
        loop {
            // Unbuffered only while nothing is buffered, so no byte is skipped.
            let exact_now = exact && rd.buffer().is_empty();
            let first = match shutdown.as_mut() {
                Some(sd) if *sd.borrow() => return Ok(()),
                Some(sd) => tokio::select! {
                    biased;
                    _ = sd.changed() => return Ok(()),
                    r = read_start(&mut rd, &mut hdr, exact_now) => r,
                },
                None => read_start(&mut rd, &mut hdr, exact_now).await,
            };
            let got = match first {
                // A client may simply close between requests.
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) => return Err(e.into()),
            };
            if exact_now {
                rd.get_mut().read_exact(&mut hdr[got..]).await?;
            } else {
                rd.read_exact(&mut hdr[got..]).await?;
            }
            let h = RequestHeader::parse(&hdr)?.expect("a full header was read");
            exact = false;
            if h.payload_len() > PAYLOAD_LEN_MAX {
                // We will not read an unbounded payload just to skip it; the spec
                // allows closing instead (doc/proto.md "Block size constraints").
                return Err(NbdError::PayloadTooLarge(h.len));
            }
            let pages = match h.kind {
                CMD_READ | CMD_WRITE => h
                    .len
                    .min(PAYLOAD_LEN_MAX)
                    .div_ceil(PAGE_BYTES)
                    .clamp(1, self.pages_max),
                _ => 0,
            };
            let permits = Permits {
                _request: self
                    .requests
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore is never closed"),
                _pages: self
                    .pages
                    .clone()
                    .acquire_many_owned(pages)
                    .await
                    .expect("semaphore is never closed"),
            };
            let cmd = match validate(&h, &self.limits) {
                Ok(c) => c,
                Err(errno) => {
                    skip(&mut rd, h.payload_len()).await?;
                    self.send(h.cookie, permits, Body::Status(errno));
                    continue;
                }
            };
            match cmd {
                Command::Disconnect => return Ok(()),
                Command::Write { offset, len, fua } => {
                    exact = len >= DIRECT_PAYLOAD_BYTES_MIN;
                    // Into the aligned buffer, not zeroed first: what the
                    // reader holds already is copied, the rest comes from
                    // the socket directly (a small tail through the
                    // reader's buffer would drag the next request's start
                    // in with it, to be copied in turn).
                    let mut data = crate::storage::IoBuf::uninit(len as usize);
                    let held = data.extend_from_slice(rd.buffer());
                    rd.consume(held);
                    data.read_exact_from(rd.get_mut()).await?;
                    let data = data.finish().expect("read_exact_from filled it");
                    self.dirty.store(true, Ordering::Release);
                    self.run(h.cookie, permits, Request::Write { offset, data, fua });
                }
                Command::Flush => self.run(h.cookie, permits, Request::Flush),
                Command::Trim { offset, len, fua } => {
                    self.dirty.store(true, Ordering::Release);
                    self.start(
                        h.cookie,
                        permits,
                        Request::Trim {
                            offset,
                            len: len.into(),
                        },
                        fua,
                    );
                }
                Command::WriteZeroes {
                    fast: true,
                    no_hole: true,
                    ..
                } => {
                    // Writing zeroes without punching is never fast here; FAST_ZERO
                    // asks to fail instead (doc/proto.md "NBD_CMD_FLAG_FAST_ZERO").
                    self.send(h.cookie, permits, Body::Status(ENOTSUP));
                }
                Command::WriteZeroes {
                    offset,
                    len,
                    fua,
                    no_hole,
                    ..
                } => {
                    self.dirty.store(true, Ordering::Release);
                    let req = Request::WriteZeroes {
                        offset,
                        len: len.into(),
                        punch: !no_hole,
                    };
                    self.start(h.cookie, permits, req, fua);
                }
                Command::Read { offset, len, df } => self.read(h.cookie, permits, offset, len, df),
                Command::BlockStatus {
                    offset,
                    len,
                    req_one,
                } => self.block_status(h.cookie, permits, offset, len, req_one),
            }
        }
    }

    fn send(&self, cookie: u64, permits: Permits, body: Body) {
        let o = Outgoing {
            cookie,
            _permits: permits,
            body,
        };
        // The writer only goes away after every sender is dropped.
        let _ = self.tx.send(Job::Ready(o));
    }

    /// Hand a running request to the writer, which polls its completion: no
    /// task per request, and replies that finish together leave in one write.
    fn pending(&self, fut: impl std::future::Future<Output = Outgoing> + Send + 'static) {
        let _ = self.tx.send(Job::Pending(Box::pin(fut)));
    }

    /// Run a write or a flush right here when the device takes it inline:
    /// a small page-cache write at any depth, anything else it offers when
    /// it is the connection's only request (the client waits for the reply
    /// before sending more, so a queue would only add thread wake-ups).
    /// Otherwise start it on the device.
    fn run(&self, cookie: u64, permits: Permits, req: Request) {
        // We hold one permit ourselves: all others free means nothing else
        // is in flight or waiting for its reply to be written.
        let alone = self.requests.available_permits() + 1 == self.requests_max;
        let plain_write = req.is_plain_write();
        if !alone && !plain_write {
            return self.start(cookie, permits, req, false);
        }
        let r = run_here(&*self.export.device, req);
        match r {
            Inline::Done(r) => self.send(cookie, permits, Body::Status(errno_of(r.err()))),
            Inline::Declined(req) => self.start(cookie, permits, req, false),
        }
    }

    /// Run a write-like request; `flush_after` makes TRIM/WRITE_ZEROES honour FUA.
    fn start(&self, cookie: u64, permits: Permits, req: Request, flush_after: bool) {
        let dev = self.export.device.clone();
        let (done, rx) = oneshot::channel();
        dev.submit(req, done);
        self.pending(async move {
            let mut r = rx.await.unwrap_or(Err(StorageError::Stopped));
            if flush_after && r.is_ok() {
                r = call(dev.as_ref(), Request::Flush).await;
            }
            Outgoing {
                cookie,
                _permits: permits,
                body: Body::Status(errno_of(r.err())),
            }
        });
    }

    fn read(&self, cookie: u64, permits: Permits, offset: u64, len: u32, df: bool) {
        let dev = self.export.device.clone();
        // Holes are only worth asking about for large structured reads.
        let want_holes = self.limits.structured && !df && len >= 64 * 1024;
        let (done, rx) = oneshot::channel();
        dev.submit(Request::Read { offset, len }, done);
        self.pending(async move {
            let body = match rx.await.unwrap_or(Err(StorageError::Stopped)) {
                Ok(Reply::Read(data)) => {
                    let holes = if want_holes {
                        dev.extents(offset, len.into()).unwrap_or_default()
                    } else {
                        Vec::new()
                    };
                    Body::Read {
                        offset,
                        data,
                        extents: holes,
                    }
                }
                Ok(Reply::Done) => Body::Status(EIO),
                Err(e) => Body::Status(errno_of(Some(e))),
            };
            Outgoing {
                cookie,
                _permits: permits,
                body,
            }
        });
    }

    fn block_status(&self, cookie: u64, permits: Permits, offset: u64, len: u32, req_one: bool) {
        let body = match self.export.device.extents(offset, len.into()) {
            Ok(ext) => {
                let mut out = Vec::new();
                let mut left = u64::from(len);
                for e in ext.iter().take(if req_one { 1 } else { 1024 }) {
                    let l = e.len.min(left);
                    if l == 0 {
                        break;
                    }
                    let state = if e.hole { STATE_HOLE | STATE_ZERO } else { 0 };
                    out.push((l as u32, state));
                    left -= l;
                }
                if out.is_empty() {
                    out.push((len, 0));
                }
                Body::BlockStatus(out)
            }
            Err(e) => Body::Status(errno_of(Some(e))),
        };
        self.send(cookie, permits, body);
    }
}

/// Reads the first bytes of a request header: one byte through the buffer,
/// or, when `exact`, up to a whole header straight from the socket (nothing
/// past it). Returns 0 at a clean end of stream. Cancel-safe: nothing is
/// consumed unless it returns.
async fn read_start<R: AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
    hdr: &mut [u8; REQUEST_LEN],
    exact: bool,
) -> std::io::Result<usize> {
    if exact {
        return rd.get_mut().read(&mut hdr[..]).await;
    }
    match rd.read_u8().await {
        Ok(b) => {
            hdr[0] = b;
            Ok(1)
        }
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
        Err(e) => Err(e),
    }
}

/// Discard the payload of a refused write, in bounded pieces.
async fn skip<R: AsyncRead + Unpin>(rd: &mut BufReader<R>, n: u32) -> Result<(), NbdError> {
    let mut taken = rd.take(n.into());
    let copied = tokio::io::copy(&mut taken, &mut tokio::io::sink()).await?;
    if copied < u64::from(n) {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok(())
}

/// The NBD errno for a storage result (0 for success).
fn errno_of(e: Option<StorageError>) -> u32 {
    match e {
        None => 0,
        Some(e) => match e.errno() {
            libc::EPERM => EPERM,
            libc::ENOSPC => ENOSPC,
            libc::EINVAL => EINVAL,
            libc::ENOMEM => ENOMEM,
            libc::ENOTSUP => ENOTSUP,
            libc::ESHUTDOWN => ESHUTDOWN,
            libc::EOVERFLOW => EOVERFLOW,
            _ => EIO,
        },
    }
}
