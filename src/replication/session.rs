//! The connection of one copy link: connect, authenticate, decide the
//! sync from the generations, then pipeline requests (acks matched by
//! sequence number) while the resync runs; reconnect with bounded backoff.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::auth::{self, Role};
use super::disk_failure::{is_disk_failure, DiskRetry};
use super::error::ReplicationError;
use super::framed::{write_frame, FrameReader};
use super::generation::{decide, Generations, SyncPlan};
use super::link::{CopyLink, LinkState, Op, SessionTx};
use super::resync;
use super::sender::{write_loop, Sent};
use super::wire::Msg;

/// Write buffer of the handshake (requests are sent by `sender.rs`).
const WRITE_BUF_BYTES: usize = 4096;
/// How often the ack deadline is checked.
const WATCHDOG_MS: u64 = 200;
/// Period of the flushes that make what the copy acknowledged durable
/// there, so that its chunks can be cleared (a copy's acknowledgement alone
/// means its page cache). One fdatasync a second on a busy copy; an idle
/// link sends none.
const FLUSH_PERIOD_MS: u64 = 1_000;

/// Drive `link` until it is stopped or refused. A copy whose disk failed
/// a request is retried on a backoff of its own (see `disk_failure.rs`);
/// any other failure reconnects on the link's short network backoff.
pub(crate) async fn run_link(link: Arc<CopyLink>) {
    let mut stop = link.stop.subscribe();
    let mut backoff_ms = link.cfg.reconnect_backoff_ms_min;
    let mut disk_retry = DiskRetry::default();
    let mut failed_attempts = 0u32;
    loop {
        if *stop.borrow() {
            break;
        }
        let started = Instant::now();
        let sessions = link.counters.sessions.load(Ordering::Relaxed);
        let result = session(&link, &mut stop).await;
        if link.counters.sessions.load(Ordering::Relaxed) == sessions {
            failed_attempts += 1;
        } else {
            failed_attempts = 0;
        }
        if link.lock().disk_failure.is_none() {
            disk_retry.reset();
        }
        let mut pause = None;
        match result {
            Err(ReplicationError::Remote { errno, offset, len }) if is_disk_failure(errno) => {
                let e = ReplicationError::Remote { errno, offset, len };
                link.set_error(&e);
                let news = link.disk_failed(errno, offset, len);
                let wait = disk_retry.next_pause();
                let f = link.disk_failure().expect("just recorded");
                if news {
                    tracing::error!(
                        copy = %link.cfg.name,
                        "the copy disk fails writes with {}: the copy is not \
                         updated (production keeps every write marked for it); \
                         retrying in {} s, then less and less often",
                        f.describe(),
                        wait.as_secs()
                    );
                } else {
                    tracing::warn!(
                        copy = %link.cfg.name,
                        "the copy disk still fails writes with {} ({} failed retries \
                         since it first failed); next retry in {} s",
                        f.describe(),
                        f.failures - 1,
                        wait.as_secs()
                    );
                }
                pause = Some(wait);
            }
            Err(e) => {
                tracing::warn!(copy = %link.cfg.name, "replication link: {e}");
                link.set_error(&e);
                let terminal = match e {
                    ReplicationError::SplitBrain { .. } => Some(LinkState::SplitBrain),
                    ReplicationError::GenerationRefused(_)
                    | ReplicationError::CopyTooSmall { .. }
                    | ReplicationError::Fenced { .. } => Some(LinkState::Refused),
                    _ => None,
                };
                if let Some(state) = terminal {
                    link.lock().state = state;
                    return;
                }
            }
            Ok(()) => {}
        }
        if *stop.borrow() {
            break;
        }
        if link
            .cfg
            .reconnect_attempts_max
            .is_some_and(|max| failed_attempts >= max)
        {
            link.lock().last_error = Some(format!(
                "gave up after {failed_attempts} failed connection attempts"
            ));
            break;
        }
        if started.elapsed() > Duration::from_secs(1) {
            backoff_ms = link.cfg.reconnect_backoff_ms_min;
        }
        let pause = pause.unwrap_or(Duration::from_millis(backoff_ms));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => break,
        }
        backoff_ms = (backoff_ms * 2).min(link.cfg.reconnect_backoff_ms_max);
    }
    link.lock().state = LinkState::Stopped;
}

type Conn = (
    FrameReader<OwnedReadHalf>,
    BufWriter<OwnedWriteHalf>,
    Generations,
    u64,
);

async fn handshake(link: &CopyLink) -> Result<Conn, ReplicationError> {
    let addr = link.cfg.addr.as_str();
    let mut stream = tokio::time::timeout(
        Duration::from_millis(link.cfg.connect_timeout_ms),
        TcpStream::connect(addr),
    )
    .await
    .map_err(|_| ReplicationError::Timeout("connect"))??;
    stream.set_nodelay(true)?;
    // The copy host's address also carries its group engine: say which
    // protocol this connection speaks.
    tokio::io::AsyncWriteExt::write_all(&mut stream, &super::receiver::REPLICATION_MAGIC).await?;
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r);
    let mut writer = BufWriter::with_capacity(WRITE_BUF_BYTES, w);
    let epoch = link.primary.epoch.load(Ordering::Acquire);
    let secret = &link.cfg.secret;
    let hs = async {
        let Some((Msg::Challenge { nonce: theirs }, _)) = reader.next().await? else {
            return Err(ReplicationError::Unexpected("expected Challenge"));
        };
        let mut ours = auth::nonce();
        while ours == theirs {
            ours = auth::nonce();
        }
        let msg = Msg::Auth {
            epoch,
            nonce: ours,
            mac: auth::mac(secret, Role::Production, &theirs, &ours, epoch),
            generations: link.primary.generations,
        };
        let mut scratch = Vec::new();
        write_frame(&mut writer, &mut scratch, &msg, &[]).await?;
        writer.flush().await?;
        let Some((msg, _)) = reader.next().await? else {
            return Err(ReplicationError::Unexpected(
                "end of stream during handshake",
            ));
        };
        let Msg::Welcome {
            epoch: known,
            mac,
            generations,
            size,
        } = msg
        else {
            return Err(ReplicationError::Unexpected("expected Welcome"));
        };
        auth::verify(secret, Role::Copy, &ours, &theirs, known, &mac)?;
        if known > epoch {
            return Err(ReplicationError::Fenced { ours: epoch, known });
        }
        Ok((generations, size))
    };
    let (generations, size) =
        tokio::time::timeout(Duration::from_millis(link.cfg.connect_timeout_ms * 2), hs)
            .await
            .map_err(|_| ReplicationError::Timeout("handshake"))??;
    Ok((reader, writer, generations, size))
}

async fn session(
    link: &Arc<CopyLink>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), ReplicationError> {
    let (reader, writer, generations, size) = handshake(link).await?;
    let local_size = link.primary.local.size();
    if size < local_size {
        return Err(ReplicationError::CopyTooSmall {
            copy: size,
            production: local_size,
        });
    }
    let log_empty = link.log.dirty_chunks().is_empty();
    let plan = decide(&link.primary.generations, &generations, log_empty);
    let full = plan == SyncPlan::Full;
    match plan {
        SyncPlan::SplitBrain => {
            return Err(ReplicationError::SplitBrain {
                production: link.primary.generations.to_string(),
                copy: generations.to_string(),
            })
        }
        SyncPlan::Refuse(why) => return Err(ReplicationError::GenerationRefused(why)),
        SyncPlan::Full => link.log.set_all().map_err(ReplicationError::DirtyLog)?,
        SyncPlan::Partial | SyncPlan::Nothing => {}
    }

    let sess = Arc::new(SessionTx::new(writer.into_inner()));
    // A session with chunks to resync first sends ResyncBegin, queued
    // while nobody else can see the session: the copy marks its label
    // inconsistent before any resync or mirrored write reaches its disk.
    // Queued outside the link's lock (queueing may take it); a chunk marked
    // in between is seen by the next pass, which then sends it.
    let mut begun = false;
    loop {
        if !begun && !link.log.dirty_chunks().is_empty() {
            let room = link.reserve(&Op::ResyncBegin { full }).await;
            drop(link.send(&sess, Op::ResyncBegin { full }, None, None, room));
            begun = true;
        }
        // Publishing the session and snapshotting the dirty chunks under
        // one lock: a write marked before this is in the snapshot, a write
        // prepared after it is sent on this session.
        let mut g = link.lock();
        let pending = link.log.dirty_chunks();
        if !begun && !pending.is_empty() {
            continue;
        }
        g.session = Some(sess.clone());
        g.pending_resync = pending;
        g.resync_bytes_total = g.pending_resync.len() * link.log.chunk_bytes();
        g.resync_started = (!g.pending_resync.is_empty()).then(Instant::now);
        g.state = if g.pending_resync.is_empty() {
            LinkState::UpToDate
        } else {
            link.counters.resynced_bytes.store(0, Ordering::Relaxed);
            LinkState::Inconsistent
        };
        link.counters.sessions.fetch_add(1, Ordering::Relaxed);
        break;
    }
    tracing::info!(copy = %link.cfg.name, "replication link up");

    let result = tokio::select! {
        r = write_loop(link, &sess) => r,
        r = read_loop(link, reader, &sess.sent) => r,
        r = resync_then_idle(link, &sess) => r,
        r = watchdog(link, &sess.sent) => r,
        r = flush_loop(link, &sess) => r,
        _ = stop.changed() => Ok(()),
    };

    // Tear down: every request queued or sent gets its answer (LinkDown);
    // its chunks stay dirty for the next resync.
    {
        let mut g = link.lock();
        g.session = None;
        g.state = LinkState::Disconnected;
        g.oldest_unacked = None;
    }
    for q in sess.close() {
        let super::link::Queued { op, lease, item } = q;
        // The page first, then its lease (the volume then takes the buffer back).
        drop(op);
        drop(lease);
        link.complete(item, Err(ReplicationError::LinkDown));
    }
    let unacked = std::mem::take(&mut *sess.sent.lock().expect("sent lock poisoned"));
    for (_, item) in unacked {
        link.complete(item, Err(ReplicationError::LinkDown));
    }
    link.progress.notify_waiters();
    result
}

async fn resync_then_idle(
    link: &Arc<CopyLink>,
    sess: &Arc<SessionTx>,
) -> Result<(), ReplicationError> {
    resync::run(link, sess).await?;
    // DRBD-style: at the end of a sync the copy takes production's
    // current generation, so a later reconnect is a partial sync.
    let current = link.primary.generations.current;
    link.enqueue(sess, Op::InSync { current })
        .await
        .await
        .map_err(|_| ReplicationError::LinkDown)??;
    link.resync_done(sess);
    std::future::pending().await
}

async fn read_loop(
    link: &CopyLink,
    mut r: FrameReader<OwnedReadHalf>,
    sent: &Sent,
) -> Result<(), ReplicationError> {
    loop {
        let Some((msg, _)) = r.next().await? else {
            return Err(ReplicationError::Io(
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        };
        let ours = link.primary.epoch.load(Ordering::Acquire);
        let (seq, result) = match msg {
            Msg::Ack { epoch, seq } => (epoch_ok(ours, epoch).map(|_| seq)?, Ok(None)),
            Msg::Sums { epoch, seq, sums } => (epoch_ok(ours, epoch).map(|_| seq)?, Ok(Some(sums))),
            Msg::Nack {
                epoch,
                seq,
                errno,
                offset,
                len,
            } => (
                epoch_ok(ours, epoch).map(|_| seq)?,
                Err(ReplicationError::Remote { errno, offset, len }),
            ),
            _ => {
                return Err(ReplicationError::Unexpected(
                    "request message sent to a production host",
                ))
            }
        };
        let item = sent
            .lock()
            .expect("sent lock poisoned")
            .remove(&seq)
            .ok_or(ReplicationError::Unexpected(
                "ack for an unknown sequence number",
            ))?;
        let failed = result.as_ref().err().map(|e| match e {
            ReplicationError::Remote { errno, offset, len } => (*errno, *offset, *len),
            _ => (libc::EIO, 0, 0),
        });
        link.complete(item, result);
        if let Some((errno, offset, len)) = failed {
            // The copy could not apply it: drop the link, resync later.
            return Err(ReplicationError::Remote { errno, offset, len });
        }
    }
}

/// Every [`FLUSH_PERIOD_MS`], a flush covering what the copy acknowledged
/// since the last one, if anything. Its answer clears those chunks (see
/// `CopyLink::complete`); a failure leaves them dirty and the reader or
/// the writer ends the session.
async fn flush_loop(link: &CopyLink, sess: &SessionTx) -> Result<(), ReplicationError> {
    let mut tick = tokio::time::interval(Duration::from_millis(FLUSH_PERIOD_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if link.lock().unflushed.is_empty() {
            continue;
        }
        let _ = link.enqueue(sess, Op::Flush).await.await;
    }
}

fn epoch_ok(ours: u64, theirs: u64) -> Result<(), ReplicationError> {
    if theirs > ours {
        Err(ReplicationError::Fenced {
            ours,
            known: theirs,
        })
    } else {
        Ok(())
    }
}

async fn watchdog(link: &CopyLink, sent: &Sent) -> Result<(), ReplicationError> {
    let limit = Duration::from_millis(link.cfg.ack_timeout_ms);
    loop {
        tokio::time::sleep(Duration::from_millis(WATCHDOG_MS)).await;
        let oldest = sent
            .lock()
            .expect("sent lock poisoned")
            .values()
            .next()
            .map(|i| i.enqueued);
        link.lock().oldest_unacked = oldest;
        if oldest.is_some_and(|t| t.elapsed() > limit) {
            return Err(ReplicationError::Timeout("acknowledgement"));
        }
    }
}
