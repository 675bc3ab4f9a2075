//! An NBD client with several requests in flight on one connection: callers
//! on any thread send a request and wait; one reader thread routes the simple
//! replies back by cookie (NBD `doc/proto.md` § "Transmission phase").
//!
//! Used by the FUSE frontend; bounded in requests in flight and request size.

use super::address::NbdAddress;
use super::client::{self, ExportInfo, Stream};
use super::error::AttachError;
use super::sys::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Most requests in flight on one connection.
pub const INFLIGHT_MAX: usize = 64;
/// How long one request may wait for its reply. After that the connection
/// is considered dead (as the kernel driver does on its timeout): every
/// waiter fails rather than hanging the filesystem forever.
pub const REQUEST_TIMEOUT_MS: u64 = 120_000;
/// Largest payload of one request: the spec's 32 MiB, or less if the server
/// says so (doc/proto.md § "Block size constraints").
pub const REQUEST_BYTES_MAX: u32 = 32 << 20;

type Reply = Result<Vec<u8>, AttachError>;

/// A request waiting for its reply.
struct Pending {
    /// Bytes of data that follow a successful reply (reads only).
    read_len: u32,
    done: SyncSender<Reply>,
}

#[derive(Default)]
struct Inflight {
    next_cookie: u64,
    pending: HashMap<u64, Pending>,
    closed: bool,
    /// The server answered ESHUTDOWN: no new requests, and we owe it a
    /// soft disconnect (doc/proto.md § "Terminating the transmission phase").
    server_shutdown: bool,
}

struct Shared {
    inflight: Mutex<Inflight>,
    /// Signalled when a slot frees or the connection closes.
    slot_free: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inflight> {
        // A panic while holding the lock leaves plain data behind: keep going.
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the connection dead and fails every waiter (dropping its sender).
    fn close(&self) {
        let mut g = self.lock();
        g.closed = true;
        g.pending.clear();
        self.slot_free.notify_all();
    }
}

/// The sending side: requests go out whole under this lock.
struct Writer {
    stream: Stream,
    disc_sent: bool,
}

/// One NBD connection in transmission phase, shared by many threads.
pub struct NbdClient {
    info: ExportInfo,
    writer: Mutex<Writer>,
    /// Another handle on the socket, to shut it down without the writer lock.
    control: Stream,
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
}

impl NbdClient {
    /// Connects to `addr` and negotiates its export.
    pub fn connect(addr: &NbdAddress) -> Result<NbdClient, AttachError> {
        let h = client::connect(addr)?;
        NbdClient::start(h.stream, h.info)
    }

    /// Drives an already negotiated `stream`.
    pub fn start(stream: Stream, info: ExportInfo) -> Result<NbdClient, AttachError> {
        let read_half = stream.try_clone()?;
        let control = stream.try_clone()?;
        let shared = Arc::new(Shared {
            inflight: Mutex::new(Inflight::default()),
            slot_free: Condvar::new(),
        });
        let s2 = Arc::clone(&shared);
        let reader = std::thread::Builder::new()
            .name("nbd-replies".into())
            .spawn(move || read_replies(read_half, &s2))?;
        Ok(NbdClient {
            info,
            writer: Mutex::new(Writer {
                stream,
                disc_sent: false,
            }),
            control,
            shared,
            reader: Some(reader),
        })
    }

    /// What the handshake said about the export.
    pub fn info(&self) -> ExportInfo {
        self.info
    }

    /// Largest payload per request for this export.
    pub fn request_bytes_max(&self) -> u32 {
        self.info.block_max.min(REQUEST_BYTES_MAX)
    }

    /// Reads `len` bytes at `offset`, split into requests the server accepts.
    pub fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, AttachError> {
        self.check(offset, u64::from(len))?;
        let step = self.request_bytes_max();
        let mut out = Vec::with_capacity(len as usize);
        let mut done = 0u32;
        while done < len {
            let n = step.min(len - done);
            let chunk = self.request(NBD_CMD_READ, 0, offset + u64::from(done), n, &[])?;
            if chunk.len() != n as usize {
                return Err(AttachError::Protocol("short read reply".into()));
            }
            out.extend_from_slice(&chunk);
            done += n;
        }
        Ok(out)
    }

    /// Writes `data` at `offset`; with `fua` it is durable when this returns.
    pub fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), AttachError> {
        if self.info.read_only() {
            return Err(AttachError::Server { errno: libc::EPERM });
        }
        self.check(offset, data.len() as u64)?;
        let flags = if fua && self.info.can_fua() {
            NBD_CMD_FLAG_FUA
        } else {
            0
        };
        let step = self.request_bytes_max() as usize;
        for (i, chunk) in data.chunks(step).enumerate() {
            let at = offset + (i * step) as u64;
            self.request(NBD_CMD_WRITE, flags, at, chunk.len() as u32, chunk)?;
        }
        if fua && !self.info.can_fua() {
            self.flush()?;
        }
        Ok(())
    }

    /// Makes `[offset, offset+len)` read as zeroes (NBD_CMD_WRITE_ZEROES,
    /// allowed to deallocate); EOPNOTSUPP when the server cannot.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), AttachError> {
        if self.info.read_only() {
            return Err(AttachError::Server { errno: libc::EPERM });
        }
        if !self.info.can_write_zeroes() {
            return Err(AttachError::Server {
                errno: libc::EOPNOTSUPP,
            });
        }
        self.check(offset, len)?;
        // No payload, but the length field is 32 bits: 1 GiB steps stay
        // aligned to any block size the spec allows.
        const STEP: u64 = 1 << 30;
        let mut done = 0;
        while done < len {
            let n = STEP.min(len - done);
            self.request(NBD_CMD_WRITE_ZEROES, 0, offset + done, n as u32, &[])?;
            done += n;
        }
        Ok(())
    }

    /// Makes every write acknowledged so far durable (NBD_CMD_FLUSH); a no-op
    /// when the server has no volatile cache (no NBD_FLAG_SEND_FLUSH).
    pub fn flush(&self) -> Result<(), AttachError> {
        if !self.info.can_flush() {
            return Ok(());
        }
        self.request(NBD_CMD_FLUSH, 0, 0, 0, &[]).map(|_| ())
    }

    /// Range and alignment checks, so the server never sees a request it
    /// must refuse (doc/proto.md § "Block size constraints").
    fn check(&self, offset: u64, len: u64) -> Result<(), AttachError> {
        let end = offset.checked_add(len);
        if end.is_none_or(|e| e > self.info.size) {
            return Err(AttachError::InvalidRequest(format!(
                "{offset}+{len} is past the end of the export ({} bytes)",
                self.info.size
            )));
        }
        let min = u64::from(self.info.block_min);
        if offset % min != 0 || len % min != 0 {
            return Err(AttachError::InvalidRequest(format!(
                "{offset}+{len} is not aligned to the export's {min}-byte blocks"
            )));
        }
        Ok(())
    }

    /// Sends one request and waits for its reply.
    fn request(&self, cmd: u16, flags: u16, offset: u64, len: u32, data: &[u8]) -> Reply {
        let (tx, rx) = sync_channel(1);
        let cookie = {
            let mut g = self.shared.lock();
            while !g.closed && g.pending.len() >= INFLIGHT_MAX {
                g = self
                    .shared
                    .slot_free
                    .wait(g)
                    .unwrap_or_else(|p| p.into_inner());
            }
            if g.closed || g.server_shutdown {
                let disc = g.server_shutdown && g.pending.is_empty();
                drop(g);
                if disc {
                    self.send_disc();
                }
                return Err(AttachError::Closed);
            }
            let cookie = g.next_cookie;
            g.next_cookie = g.next_cookie.wrapping_add(1);
            let read_len = if cmd == NBD_CMD_READ { len } else { 0 };
            g.pending.insert(cookie, Pending { read_len, done: tx });
            cookie
        };
        let mut header = [0u8; 28];
        header[0..4].copy_from_slice(&NBD_REQUEST_MAGIC.to_be_bytes());
        header[4..6].copy_from_slice(&flags.to_be_bytes());
        header[6..8].copy_from_slice(&cmd.to_be_bytes());
        header[8..16].copy_from_slice(&cookie.to_be_bytes());
        header[16..24].copy_from_slice(&offset.to_be_bytes());
        header[24..28].copy_from_slice(&len.to_be_bytes());
        let sent = {
            let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            w.stream
                .write_all(&header)
                .and_then(|()| w.stream.write_all(data))
        };
        if let Err(e) = sent {
            // A half-written request desynchronises the stream: give up on it.
            self.shared.close();
            return Err(AttachError::Io(e));
        }
        match rx.recv_timeout(Duration::from_millis(REQUEST_TIMEOUT_MS)) {
            Ok(reply) => reply,
            Err(RecvTimeoutError::Disconnected) => Err(AttachError::Closed),
            Err(RecvTimeoutError::Timeout) => {
                tracing::error!(
                    "NBD request unanswered after {REQUEST_TIMEOUT_MS} ms: dropping the connection"
                );
                self.shared.close();
                let _ = self.control.shutdown();
                Err(AttachError::Io(std::io::ErrorKind::TimedOut.into()))
            }
        }
    }
}

impl NbdClient {
    /// NBD_CMD_DISC, once: the server finishes outstanding requests, then
    /// closes the connection.
    fn send_disc(&self) {
        // Closed first, so the reader takes the end of the stream that
        // follows for the disconnect it is and not for a lost connection.
        self.shared.close();
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if w.disc_sent {
            return;
        }
        let mut header = [0u8; 28];
        header[0..4].copy_from_slice(&NBD_REQUEST_MAGIC.to_be_bytes());
        header[6..8].copy_from_slice(&NBD_CMD_DISC.to_be_bytes());
        let _ = w.stream.write_all(&header);
        w.disc_sent = true;
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        self.send_disc();
        let _ = self.control.shutdown();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// The reader thread: one simple reply at a time, routed by cookie.
fn read_replies(mut s: Stream, shared: &Shared) {
    loop {
        match read_one(&mut s, shared) {
            Ok(()) => {}
            Err(e) => {
                let g = shared.lock();
                if !g.closed {
                    tracing::warn!("NBD connection lost: {e}");
                }
                drop(g);
                shared.close();
                return;
            }
        }
    }
}

fn read_one(s: &mut Stream, shared: &Shared) -> Result<(), AttachError> {
    let mut h = [0u8; 16];
    s.read_exact(&mut h)?;
    let magic = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    if magic != NBD_SIMPLE_REPLY_MAGIC {
        return Err(AttachError::Protocol(format!("bad reply magic {magic:#x}")));
    }
    let errno = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let mut c = [0u8; 8];
    c.copy_from_slice(&h[8..16]);
    let cookie = u64::from_be_bytes(c);
    let pending = shared
        .lock()
        .pending
        .remove(&cookie)
        .ok_or_else(|| AttachError::Protocol(format!("reply to unknown cookie {cookie}")))?;
    shared.slot_free.notify_one();
    // doc/proto.md § "Simple reply message" lists read data after the
    // header; with an error, servers (qemu-nbd, nbdkit) and clients (the
    // kernel driver, libnbd) agree that none follows, and so do we.
    if errno == libc::ESHUTDOWN as u32 {
        shared.lock().server_shutdown = true;
    }
    let reply = if errno != 0 {
        Err(AttachError::Server {
            errno: i32::try_from(errno).unwrap_or(libc::EIO),
        })
    } else {
        // The length was bounded by us when the request was made.
        let mut data = vec![0u8; pending.read_len as usize];
        s.read_exact(&mut data)?;
        Ok(data)
    };
    let _ = pending.done.send(reply);
    Ok(())
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
