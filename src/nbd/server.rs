//! The NBD listener: accepts on unix and TCP sockets, caps connections, runs the
//! handshake under a deadline, then the transmission phase; shuts down gracefully.

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch, Semaphore};

use super::handshake::negotiate;
use super::transmission::serve_connection;
use super::{Export, NbdError};

/// Where to listen: `unix:PATH` or `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp(String),
}

impl FromStr for ListenAddr {
    type Err = NbdError;
    fn from_str(s: &str) -> Result<ListenAddr, NbdError> {
        let bad = |reason: &str| NbdError::Listen {
            addr: s.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(bad("empty socket path"));
            }
            return Ok(ListenAddr::Unix(p.into()));
        }
        match s.rsplit_once(':') {
            Some((_, port)) if port.parse::<u16>().is_ok() => Ok(ListenAddr::Tcp(s.to_owned())),
            _ => Err(bad("expected unix:PATH or HOST:PORT")),
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Tcp(a) => f.write_str(a),
        }
    }
}

/// Limits of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections served at once; more are closed right after accept.
    pub connections_max: usize,
    /// Time a client has to finish negotiation.
    pub handshake_timeout_ms: u64,
    /// After shutdown, how long in-flight requests may take before we stop waiting.
    pub drain_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            connections_max: 64,
            handshake_timeout_ms: 10_000,
            drain_timeout_ms: 30_000,
        }
    }
}

enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

/// Bound listeners, ready to serve exports.
pub struct Server {
    listeners: Vec<Listener>,
    config: ServerConfig,
}

impl Server {
    /// Bind every address. A stale unix socket file left by a dead server is replaced.
    pub async fn bind(addrs: &[ListenAddr], config: ServerConfig) -> Result<Server, NbdError> {
        let mut listeners = Vec::with_capacity(addrs.len());
        for a in addrs {
            let err = |e: std::io::Error| NbdError::Listen {
                addr: a.to_string(),
                reason: e.to_string(),
            };
            listeners.push(match a {
                ListenAddr::Unix(p) => {
                    use std::os::unix::fs::FileTypeExt;
                    if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
                        && std::os::unix::net::UnixStream::connect(p).is_err()
                    {
                        std::fs::remove_file(p).map_err(err)?;
                    }
                    Listener::Unix(UnixListener::bind(p).map_err(err)?, p.clone())
                }
                ListenAddr::Tcp(s) => {
                    Listener::Tcp(TcpListener::bind(s.as_str()).await.map_err(err)?)
                }
            });
        }
        Ok(Server { listeners, config })
    }

    /// The bound addresses (TCP with the actual port, useful after binding port 0).
    pub fn local_addrs(&self) -> Vec<ListenAddr> {
        self.listeners
            .iter()
            .filter_map(|l| match l {
                Listener::Unix(_, p) => Some(ListenAddr::Unix(p.clone())),
                Listener::Tcp(t) => t.local_addr().ok().map(|a| ListenAddr::Tcp(a.to_string())),
            })
            .collect()
    }

    /// Serve `exports` until `shutdown` completes; then stop accepting, let every
    /// connection answer its in-flight requests and flush, and return.
    pub async fn run(
        self,
        exports: Vec<Arc<Export>>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), NbdError> {
        let exports: Arc<[Arc<Export>]> = exports.into();
        let (stop_tx, stop_rx) = watch::channel(false);
        // Every connection holds a sender; all dropped means all finished.
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        let slots = Arc::new(Semaphore::new(self.config.connections_max.max(1)));
        let mut accepts = tokio::task::JoinSet::new();
        let mut sockets = Vec::new();
        for l in self.listeners {
            let ctx = ConnCtx {
                exports: exports.clone(),
                stop: stop_rx.clone(),
                _alive: alive_tx.clone(),
                slots: slots.clone(),
                config: self.config.clone(),
            };
            if let Listener::Unix(_, p) = &l {
                sockets.push(p.clone());
            }
            accepts.spawn(accept_loop(l, ctx));
        }
        drop(alive_tx);
        shutdown.await;
        tracing::info!("shutting down: no new connections, answering requests in flight");
        accepts.abort_all();
        while accepts.join_next().await.is_some() {}
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(
            Duration::from_millis(self.config.drain_timeout_ms),
            alive_rx.recv(),
        )
        .await;
        for p in sockets {
            let _ = std::fs::remove_file(p);
        }
        if drained.is_err() {
            tracing::warn!("some connections were still busy after the drain timeout");
        }
        Ok(())
    }
}

#[derive(Clone)]
struct ConnCtx {
    exports: Arc<[Arc<Export>]>,
    stop: watch::Receiver<bool>,
    /// Dropped with the connection: the server waits for all of them.
    _alive: mpsc::Sender<()>,
    slots: Arc<Semaphore>,
    config: ServerConfig,
}

async fn accept_loop(l: Listener, ctx: ConnCtx) {
    loop {
        let accepted = match &l {
            Listener::Unix(u, _) => u.accept().await.map(|(s, _)| Conn::Unix(s)),
            Listener::Tcp(t) => t.accept().await.map(|(s, peer)| {
                let _ = s.set_nodelay(true);
                tracing::debug!(%peer, "tcp connection");
                Conn::Tcp(s)
            }),
        };
        let conn = match accepted {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = ctx.slots.clone().try_acquire_owned() else {
            tracing::warn!(
                "connection limit ({}) reached, closing a new connection",
                ctx.config.connections_max
            );
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let r = match conn {
                Conn::Unix(s) => handle(s, &ctx).await,
                Conn::Tcp(s) => handle(s, &ctx).await,
            };
            match r {
                Ok(()) => tracing::debug!("connection closed"),
                Err(e) if e.is_disconnect() => tracing::debug!("connection ended: {e}"),
                Err(e) => tracing::info!("connection ended: {e}"),
            }
            drop(slot);
            drop(ctx);
        });
    }
}

enum Conn {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn handle<S>(mut s: S, ctx: &ConnCtx) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout_ms = ctx.config.handshake_timeout_ms;
    let mut stop = ctx.stop.clone();
    let negotiated = tokio::select! {
        r = tokio::time::timeout(Duration::from_millis(timeout_ms), negotiate(&mut s, &ctx.exports)) => {
            r.map_err(|_| NbdError::HandshakeTimeout(timeout_ms))??
        }
        _ = stop.wait_for(|v| *v) => return Err(NbdError::ShuttingDown),
    };
    tracing::debug!(export = %negotiated.export.name, structured = negotiated.options.structured, "transmission");
    let mut opts = negotiated.options;
    opts.shutdown = Some(ctx.stop.clone());
    let _counted = Counted::new(&negotiated.export.connections);
    serve_connection(s, negotiated.export.clone(), opts).await
}

/// One connection counted in its export's `connections` while it lives.
struct Counted(Arc<std::sync::atomic::AtomicU64>);

impl Counted {
    fn new(c: &Arc<std::sync::atomic::AtomicU64>) -> Counted {
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Counted(c.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
