//! Incoming engine RPCs: an accept loop with a connection cap, the auth
//! handshake, then one request → one response per frame until the peer hangs up.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RaftError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::auth::Authenticator;
use super::frame::{self, FRAME_BYTES_MAX};
use super::membership;
use super::snapshot::SNAPSHOT_BYTES_MAX;
use super::types::{decode, encode, Raft, Replicated};
use super::wire::{Fault, Request, Response};

/// Concurrent incoming connections; more are closed at once.
pub const CONNECTIONS_MAX: usize = 64;
/// A connection with no request for this long is closed (the peer's pool reconnects).
const IDLE_TIMEOUT_MS: u64 = 60_000;

/// What every connection handler shares.
pub(crate) struct ServerCtx<S: Replicated> {
    pub(crate) raft: Raft<S>,
    pub(crate) auth: Authenticator,
    pub(crate) membership_timeout: Duration,
    /// Set while this member is about to found the group (`rendezvous`).
    pub(crate) founding: std::sync::atomic::AtomicBool,
    /// The applied state, for the lease check.
    pub(crate) state: tokio::sync::watch::Receiver<Arc<S>>,
    /// Lease requests received and lease revocations, while leading.
    pub(crate) lease: super::lease::LeaseBook,
    /// Bound on confirming the leadership for one lease request.
    pub(crate) confirm_timeout: Duration,
}

/// First bytes of an engine connection: a member's one address also
/// carries replication and control, told apart by their magic.
pub const ENGINE_MAGIC: [u8; 4] = *b"GMRA";

/// Time a new connection has to send its magic.
const MAGIC_TIMEOUT_MS: u64 = 5_000;

/// Where the engine's connections come from.
pub(crate) enum Incoming {
    /// Its own listener: each connection must open with [`ENGINE_MAGIC`].
    Listener(TcpListener),
    /// Connections accepted by the member's listener, magic already read.
    Streams(mpsc::Receiver<TcpStream>),
}

/// Runs the accept loop until the task is aborted; aborting it also drops
/// (and so aborts) every connection task it owns.
pub(crate) async fn serve<S: Replicated>(mut incoming: Incoming, ctx: Arc<ServerCtx<S>>) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let mut conns = JoinSet::new();
    let check_magic = matches!(incoming, Incoming::Listener(_));
    loop {
        // Reap finished handlers so the set stays bounded by CONNECTIONS_MAX.
        while conns.try_join_next().is_some() {}
        let next = match &mut incoming {
            Incoming::Listener(l) => l.accept().await.map(|(s, _)| Some(s)),
            Incoming::Streams(rx) => Ok(rx.recv().await),
        };
        let stream = match next {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("engine accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "engine connection refused: {CONNECTIONS_MAX} already open");
            continue;
        };
        let ctx = ctx.clone();
        conns.spawn(async move {
            let mut stream = stream;
            if check_magic {
                let mut magic = [0u8; 4];
                let read = tokio::time::timeout(
                    Duration::from_millis(MAGIC_TIMEOUT_MS),
                    tokio::io::AsyncReadExt::read_exact(&mut stream, &mut magic),
                )
                .await;
                if !matches!(read, Ok(Ok(_))) || magic != ENGINE_MAGIC {
                    tracing::debug!(%peer, "engine connection without the engine's magic: closed");
                    return;
                }
            }
            if let Err(e) = handle_conn(stream, &ctx).await {
                tracing::debug!(%peer, "engine connection closed: {e}");
            }
            drop(permit);
        });
    }
}

async fn handle_conn<S: Replicated>(mut s: TcpStream, ctx: &ServerCtx<S>) -> Result<(), String> {
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    ctx.auth
        .server(&mut s)
        .await
        .map_err(|e| format!("auth: {e}"))?;
    loop {
        let idle = Duration::from_millis(IDLE_TIMEOUT_MS);
        let buf = match tokio::time::timeout(idle, frame::read(&mut s, FRAME_BYTES_MAX)).await {
            Err(_) => return Err("idle".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(b)) => b,
        };
        // A frame that passed its crc but does not decode is a peer bug or
        // a different version: drop the connection rather than guess.
        let req: Request<S> = decode(&buf).map_err(|e| format!("bad request: {e}"))?;
        drop(buf);
        let resp = dispatch(ctx, req).await;
        let out = encode(&resp).map_err(|e| e.to_string())?;
        frame::write(&mut s, &out, FRAME_BYTES_MAX)
            .await
            .map_err(|e| e.to_string())?;
    }
}

fn failed(e: impl std::fmt::Display) -> Fault {
    Fault::Failed(e.to_string())
}

async fn dispatch<S: Replicated>(ctx: &ServerCtx<S>, req: Request<S>) -> Response<S> {
    match req {
        Request::Append(rpc) => {
            Response::Append(ctx.raft.append_entries(rpc).await.map_err(failed))
        }
        Request::Vote(rpc) => Response::Vote(ctx.raft.vote(rpc).await.map_err(failed)),
        Request::Snapshot(rpc) => {
            // openraft assembles chunks in memory: bound the total here.
            let end = rpc.offset.saturating_add(rpc.data.len() as u64);
            if end > SNAPSHOT_BYTES_MAX {
                return Response::Snapshot(Err(Fault::Failed(format!(
                    "snapshot exceeds {SNAPSHOT_BYTES_MAX} bytes"
                ))));
            }
            let r = match ctx.raft.install_snapshot(rpc).await {
                Ok(r) => Ok(r),
                Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m))) => {
                    Err(Fault::SnapshotMismatch(m))
                }
                Err(e) => Err(failed(e)),
            };
            Response::Snapshot(r)
        }
        Request::Propose(cmd) => Response::Proposed(membership::propose(&ctx.raft, cmd).await),
        Request::AddMember { id, addr } => Response::Membership(
            membership::add_member(&ctx.raft, id, addr, ctx.membership_timeout).await,
        ),
        Request::RemoveMember { id } => Response::Membership(
            membership::remove_member(&ctx.raft, id, ctx.membership_timeout).await,
        ),
        Request::Phase => Response::Phase(super::rendezvous::own_phase(ctx).await),
        Request::Confirm { from } => Response::Confirmed(
            super::lease::confirm_as_leader(ctx, from, ctx.confirm_timeout).await,
        ),
    }
}
