//! The copy-host side: accepts the production host's connection,
//! authenticates it, fences it by epoch, and applies its requests to the
//! copy disk (overlapping writes in arrival order, others in parallel).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

use super::apply::{ack_writer, dispatch, Limits};
use super::auth::{self, Role};
use super::error::ReplicationError;
use super::framed::{write_frame, FrameReader};
use super::generation::Generations;
use super::order::OverlapGate;
use super::wire::Msg;
use crate::storage::BlockDevice;

/// What the copy disk's label says about its data: the part a receiver
/// changes (the node owns the rest of the label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyLabel {
    pub generations: Generations,
    /// The data area is a complete image of `generations.current`: false
    /// from the first request of a resync until its end is durable.
    pub consistent: bool,
}

impl CopyLabel {
    /// The generations to report to a production host at `production`.
    ///
    /// A consistent copy reports its own. An inconsistent one holds no
    /// image of any moment: it reports its generation only when production
    /// knows it, which is an interrupted partial resync. Production then
    /// still has every chunk of that resync dirty (it clears a chunk only
    /// once this copy acknowledged it), so `decide` resumes it as a partial
    /// sync when the generation is still production's current or bitmap
    /// one, and asks for a full sync when it has moved to history. Any
    /// other inconsistent copy (a fresh disk, whose random generation
    /// nobody knows, or an interrupted full sync, whose label holds none)
    /// reports no generation: `decide` gives it a full sync.
    pub fn reported_to(&self, production: &Generations) -> Generations {
        let c = self.generations.current;
        let known = c != 0
            && (c == production.current
                || c == production.bitmap
                || production.history.contains(&c));
        if self.consistent || known {
            self.generations
        } else {
            Generations::default()
        }
    }
}

/// Writes the copy disk's label durably (the node supplies it: the
/// receiver has only the data area). Run on the blocking pool; the
/// receiver acknowledges the request that changed the label only after it
/// returned `Ok`.
pub type LabelWriter = Arc<dyn Fn(CopyLabel) -> std::io::Result<()> + Send + Sync>;

/// How the copy host serves its disk.
#[derive(Clone)]
pub struct ReceiverConfig {
    /// The recovery domain's secret.
    pub secret: Vec<u8>,
    /// The group epoch this member knows; raised by the group engine and by
    /// any authenticated peer speaking for a newer one.
    pub epoch: Arc<AtomicU64>,
    /// Generations of the copy disk (from its label).
    pub generations: Generations,
    /// Whether the label says the data area is a complete image.
    pub consistent: bool,
    /// Persists label changes (resync begun, resync done); without one
    /// they are kept in memory only.
    pub write_label: Option<LabelWriter>,
    /// Time allowed for the handshake.
    pub handshake_timeout_ms: u64,
    /// Requests applied concurrently per session (back-pressure beyond).
    pub inflight_ops_max: usize,
    /// Page bytes held in memory by the requests of one session.
    pub inflight_bytes_max: u32,
    /// Connections open at once (handshaking or serving).
    pub connections_max: usize,
}

impl ReceiverConfig {
    /// A copy at `generations`, consistent when it has one (current != 0).
    pub fn new(secret: &[u8], epoch: u64, generations: Generations) -> ReceiverConfig {
        ReceiverConfig {
            secret: secret.to_vec(),
            epoch: Arc::new(AtomicU64::new(epoch)),
            generations,
            consistent: generations.current != 0,
            write_label: None,
            handshake_timeout_ms: 5_000,
            inflight_ops_max: 1024,
            inflight_bytes_max: 128 << 20,
            connections_max: 4,
        }
    }
}

/// Counters of a receiver.
#[derive(Default, Debug)]
pub struct ReceiverStats {
    /// Authenticated sessions so far.
    pub sessions: AtomicU64,
    /// Connections refused or dropped for a protocol error.
    pub refused: AtomicU64,
    /// Write frames applied to the copy disk.
    pub writes_applied: AtomicU64,
    /// Page bytes written to the copy disk.
    pub bytes_written: AtomicU64,
    /// Requests the copy disk failed (each answered with a Nack).
    pub disk_failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ReceiverStats {
    /// The last reason a connection was refused or dropped.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("stats lock poisoned").clone()
    }
}

pub(super) struct Shared {
    pub disk: Arc<dyn BlockDevice>,
    pub cfg: ReceiverConfig,
    pub stats: Arc<ReceiverStats>,
    /// The copy's label as last made durable; held while it is rewritten,
    /// so changes land in order.
    pub label: tokio::sync::Mutex<CopyLabel>,
    /// The generations of `label`, readable without waiting.
    pub generations: watch::Sender<Generations>,
    /// Held by the serving session: a newer session waits until the old
    /// one has finished every disk write, so no stale write lands late.
    apply: tokio::sync::Mutex<()>,
    /// Tells the serving session to stop.
    current: Mutex<Option<watch::Sender<bool>>>,
    conns: Arc<Semaphore>,
}

/// First bytes of a replication connection: one member address carries the
/// group engine, replication and control, told apart by these.
pub const REPLICATION_MAGIC: [u8; 4] = *b"GMRP";

/// Where a receiver's connections come from.
enum Source {
    /// Its own listener: each connection starts with [`REPLICATION_MAGIC`].
    Listener(TcpListener),
    /// Connections accepted elsewhere, magic already read.
    Streams(mpsc::Receiver<TcpStream>),
}

impl Source {
    async fn next(&mut self) -> Option<TcpStream> {
        match self {
            Source::Listener(l) => loop {
                match l.accept().await {
                    Ok((mut s, _)) => {
                        let mut magic = [0u8; 4];
                        let read = tokio::time::timeout(
                            Duration::from_millis(5_000),
                            tokio::io::AsyncReadExt::read_exact(&mut s, &mut magic),
                        )
                        .await;
                        if matches!(read, Ok(Ok(_))) && magic == REPLICATION_MAGIC {
                            return Some(s);
                        }
                    }
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            },
            Source::Streams(rx) => rx.recv().await,
        }
    }
}

/// A running receiver; dropping it (or [`Receiver::shutdown`]) stops it.
pub struct Receiver {
    addr: Option<std::net::SocketAddr>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Serve `disk` to production hosts connecting to `listener`.
    pub fn start(
        listener: TcpListener,
        disk: Arc<dyn BlockDevice>,
        cfg: ReceiverConfig,
    ) -> std::io::Result<Receiver> {
        let addr = listener.local_addr()?;
        Ok(Receiver::start_source(
            Source::Listener(listener),
            Some(addr),
            disk,
            cfg,
        ))
    }

    /// Serve `disk` to connections accepted by someone else (the member's
    /// one listener), their magic already read.
    pub fn start_streams(
        streams: mpsc::Receiver<TcpStream>,
        disk: Arc<dyn BlockDevice>,
        cfg: ReceiverConfig,
    ) -> Receiver {
        Receiver::start_source(Source::Streams(streams), None, disk, cfg)
    }

    fn start_source(
        source: Source,
        addr: Option<std::net::SocketAddr>,
        disk: Arc<dyn BlockDevice>,
        cfg: ReceiverConfig,
    ) -> Receiver {
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            disk,
            label: tokio::sync::Mutex::new(CopyLabel {
                generations: cfg.generations,
                consistent: cfg.consistent,
            }),
            generations: watch::channel(cfg.generations).0,
            conns: Arc::new(Semaphore::new(cfg.connections_max.max(1))),
            cfg,
            stats: Arc::default(),
            apply: tokio::sync::Mutex::new(()),
            current: Mutex::new(None),
        });
        let task = tokio::spawn(accept_loop(source, shared.clone(), stop_rx));
        Receiver {
            addr,
            shared,
            stop,
            task: Some(task),
        }
    }

    /// The listening address (receivers started on their own listener).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
            .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub fn stats(&self) -> &ReceiverStats {
        &self.shared.stats
    }

    /// The copy disk's generations now.
    pub fn generations(&self) -> Generations {
        *self.shared.generations.borrow()
    }

    /// The copy's label as the receiver last made it durable.
    pub async fn label(&self) -> CopyLabel {
        *self.shared.label.lock().await
    }

    /// The epoch this receiver knows (shared with the group engine).
    pub fn epoch(&self) -> &Arc<AtomicU64> {
        &self.shared.cfg.epoch
    }

    /// Stop accepting, drop the sessions and wait until every disk write
    /// already started has finished.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        let _guard = self.shared.apply.lock().await;
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn accept_loop(mut source: Source, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = shared.conns.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.changed() => break,
        };
        let stream = tokio::select! {
            r = source.next() => match r {
                Some(s) => s,
                None => break,
            },
            _ = stop.changed() => break,
        };
        let shared = shared.clone();
        let stop = stop.clone();
        sessions.spawn(async move {
            if let Err(e) = serve(stream, &shared, stop).await {
                tracing::warn!("replication session ended: {e}");
                shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                *shared.stats.last_error.lock().expect("stats lock poisoned") = Some(e.to_string());
            }
            drop(permit);
        });
        while sessions.try_join_next().is_some() {}
    }
    // Stopping: sessions see `stop` and finish their in-flight writes.
    while sessions.join_next().await.is_some() {}
}

async fn serve(
    stream: TcpStream,
    shared: &Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ReplicationError> {
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r);
    let mut writer = BufWriter::with_capacity(64 * 1024, w);
    let mut scratch = Vec::new();
    let cfg = &shared.cfg;

    // Authenticate before anything else crosses the wire.
    let ours = auth::nonce();
    let hs = async {
        write_frame(
            &mut writer,
            &mut scratch,
            &Msg::Challenge { nonce: ours },
            &[],
        )
        .await?;
        writer.flush().await?;
        let Some((msg, _)) = reader.next().await? else {
            return Err(ReplicationError::Unexpected(
                "end of stream during handshake",
            ));
        };
        let Msg::Auth {
            epoch,
            nonce,
            mac,
            generations: production,
        } = msg
        else {
            return Err(ReplicationError::Unexpected("expected Auth"));
        };
        if nonce == ours {
            return Err(ReplicationError::ReflectedChallenge);
        }
        auth::verify(&cfg.secret, Role::Production, &ours, &nonce, epoch, &mac)?;
        let known = cfg.epoch.fetch_max(epoch, Ordering::AcqRel).max(epoch);
        if epoch < known {
            return Err(ReplicationError::StaleEpoch { got: epoch, known });
        }
        Ok((nonce, known, production))
    };
    let (theirs, known, production) =
        tokio::time::timeout(Duration::from_millis(cfg.handshake_timeout_ms), hs)
            .await
            .map_err(|_| ReplicationError::Timeout("handshake"))??;

    // Take over from an older session once it has drained its writes.
    let (my_stop, mut my_stop_rx) = watch::channel(false);
    if let Some(old) = shared
        .current
        .lock()
        .expect("lock poisoned")
        .replace(my_stop)
    {
        let _ = old.send(true);
    }
    let _apply = shared.apply.lock().await;
    shared.stats.sessions.fetch_add(1, Ordering::Relaxed);

    let label = *shared.label.lock().await;
    let generations = label.reported_to(&production);
    if !label.consistent {
        tracing::info!(
            label = %label.generations,
            reported = %generations,
            "the copy disk is inconsistent (a resync was under way): {}",
            if generations.current == 0 {
                "it gets a full sync"
            } else {
                "production decides whether it resumes"
            }
        );
    }
    let welcome = Msg::Welcome {
        epoch: known,
        mac: auth::mac(&cfg.secret, Role::Copy, &theirs, &ours, known),
        generations,
        size: shared.disk.size(),
    };
    write_frame(&mut writer, &mut scratch, &welcome, &[]).await?;
    writer.flush().await?;

    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let writer_task = tokio::spawn(ack_writer(writer, ack_rx));
    let ops = Arc::new(Semaphore::new(cfg.inflight_ops_max.max(1)));
    let bytes = Arc::new(Semaphore::new(cfg.inflight_bytes_max.max(1) as usize));
    let gate = OverlapGate::new();
    let result = loop {
        let next = tokio::select! {
            n = reader.next() => n,
            _ = stop.changed() => break Ok(()),
            _ = my_stop_rx.changed() => break Ok(()),
        };
        let (msg, page) = match next {
            Ok(Some(f)) => f,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        let limits = Limits {
            ops: &ops,
            bytes: &bytes,
        };
        if let Err(e) = dispatch(shared, &gate, limits, &ack_tx, msg, page).await {
            break Err(e);
        }
    };
    // Let every write already admitted finish before giving up the disk.
    let _all = ops.acquire_many(cfg.inflight_ops_max.max(1) as u32).await;
    drop(ack_tx);
    let _ = writer_task.await;
    result
}
