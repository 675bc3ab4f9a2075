//! Outgoing engine RPCs: authenticated TCP connections kept in a small pool
//! per peer, timeouts on every call, and the last successful exchange with
//! each member (the leader's failure detector reads it).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tokio::net::TcpStream;

use super::auth::Authenticator;
use super::error::EngineError;
use super::frame::{self, FRAME_BYTES_MAX};
use super::types::{decode, encode, Node, NodeId, Replicated, Tc};
use super::wire::{Fault, Request, Response};

/// Idle connections kept per peer address.
const POOL_IDLE_MAX: usize = 4;

/// Why a call failed, split by whether the request may have been delivered.
#[derive(Debug)]
pub(crate) enum CallError {
    /// Nothing was sent (connect or handshake failed): safe to retry anywhere.
    NotSent(EngineError),
    /// The request went out but no valid answer came back.
    Sent(EngineError),
}

impl CallError {
    pub(crate) fn into_inner(self) -> EngineError {
        match self {
            CallError::NotSent(e) | CallError::Sent(e) => e,
        }
    }
}

/// A remote member's fault, as an error openraft can carry.
#[derive(Debug, thiserror::Error)]
#[error("remote member failed: {0}")]
struct RemoteFailure(String);

/// Connections, credentials and liveness shared by every outgoing call.
pub(crate) struct Net {
    auth: Authenticator,
    /// Bound on connect + handshake.
    connect_timeout: Duration,
    backoff: Duration,
    pools: Mutex<HashMap<String, Vec<TcpStream>>>,
    last_ok: Mutex<HashMap<NodeId, Instant>>,
}

impl Net {
    pub(crate) fn new(auth: Authenticator, connect_timeout: Duration, backoff: Duration) -> Self {
        Net {
            auth,
            connect_timeout,
            backoff,
            pools: Mutex::new(HashMap::new()),
            last_ok: Mutex::new(HashMap::new()),
        }
    }

    /// When `id` last answered one of our RPCs.
    pub(crate) fn last_ok(&self, id: NodeId) -> Option<Instant> {
        self.last_ok
            .lock()
            .expect("lock not poisoned")
            .get(&id)
            .copied()
    }

    fn mark_ok(&self, id: NodeId) {
        self.last_ok
            .lock()
            .expect("lock not poisoned")
            .insert(id, Instant::now());
    }

    /// Drops every idle connection (on shutdown).
    pub(crate) fn clear(&self) {
        self.pools.lock().expect("lock not poisoned").clear();
    }

    async fn connect(&self, addr: &str) -> Result<TcpStream, EngineError> {
        let unreachable = |source| EngineError::Unreachable {
            addr: addr.to_string(),
            source,
        };
        let mut s = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| unreachable(std::io::ErrorKind::TimedOut.into()))?
            .map_err(unreachable)?;
        s.set_nodelay(true).map_err(unreachable)?;
        tokio::io::AsyncWriteExt::write_all(&mut s, &super::server::ENGINE_MAGIC)
            .await
            .map_err(unreachable)?;
        self.auth
            .client(&mut s)
            .await
            .map_err(|source| EngineError::Auth {
                addr: addr.to_string(),
                source,
            })?;
        Ok(s)
    }

    async fn exchange<S: Replicated>(
        s: &mut TcpStream,
        payload: &[u8],
        addr: &str,
    ) -> Result<Response<S>, EngineError> {
        frame::write(s, payload, FRAME_BYTES_MAX).await?;
        let buf = frame::read(s, FRAME_BYTES_MAX).await?;
        decode(&buf).map_err(|e| EngineError::Codec(format!("answer from {addr}: {e}")))
    }

    /// Sends one request and waits for its answer within `timeout`.
    /// `idempotent` requests may reuse a pooled connection and are retried
    /// once on a fresh one if it turned out stale; others always use a
    /// fresh connection, so a failure after sending is reported as such.
    pub(crate) async fn call<S: Replicated>(
        &self,
        addr: &str,
        req: &Request<S>,
        timeout: Duration,
        idempotent: bool,
    ) -> Result<Response<S>, CallError> {
        let payload =
            encode(req).map_err(|e| CallError::NotSent(EngineError::Codec(e.to_string())))?;
        let work = async {
            if idempotent {
                let pooled = self
                    .pools
                    .lock()
                    .expect("lock not poisoned")
                    .get_mut(addr)
                    .and_then(Vec::pop);
                if let Some(mut s) = pooled {
                    if let Ok(r) = Self::exchange::<S>(&mut s, &payload, addr).await {
                        self.put_back(addr, s);
                        return Ok(r);
                    }
                }
            }
            let mut s = self.connect(addr).await.map_err(CallError::NotSent)?;
            let r = Self::exchange::<S>(&mut s, &payload, addr)
                .await
                .map_err(CallError::Sent)?;
            if idempotent {
                self.put_back(addr, s);
            }
            Ok(r)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Sent(EngineError::Indeterminate {
                addr: addr.to_string(),
                reason: format!("timed out after {} ms", timeout.as_millis()),
            })),
        }
    }

    fn put_back(&self, addr: &str, s: TcpStream) {
        let mut pools = self.pools.lock().expect("lock not poisoned");
        let idle = pools.entry(addr.to_string()).or_default();
        if idle.len() < POOL_IDLE_MAX {
            idle.push(s);
        }
    }
}

/// openraft's factory of per-peer clients.
pub(crate) struct NetFactory<S> {
    pub(crate) net: Arc<Net>,
    pub(crate) _s: PhantomData<fn() -> S>,
}

/// openraft's client for one peer.
pub(crate) struct PeerClient<S> {
    target: NodeId,
    addr: String,
    net: Arc<Net>,
    _s: PhantomData<fn() -> S>,
}

impl<S: Replicated> RaftNetworkFactory<Tc<S>> for NetFactory<S> {
    type Network = PeerClient<S>;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Self::Network {
        PeerClient {
            target,
            addr: node.addr.clone(),
            net: self.net.clone(),
            _s: PhantomData,
        }
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, Node, RaftError<NodeId, E>>;

impl<S: Replicated> PeerClient<S> {
    async fn send<E: std::error::Error>(
        &self,
        req: Request<S>,
        timeout: Duration,
    ) -> Result<Response<S>, RpcErr<E>> {
        match self.net.call(&self.addr, &req, timeout, true).await {
            Ok(r) => {
                self.net.mark_ok(self.target);
                Ok(r)
            }
            Err(CallError::NotSent(e)) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(CallError::Sent(e)) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

fn fault<E: std::error::Error>(f: Fault) -> RpcErr<E> {
    RPCError::Network(NetworkError::new(&RemoteFailure(format!("{f:?}"))))
}

fn unexpected<E: std::error::Error>() -> RpcErr<E> {
    RPCError::Network(NetworkError::new(&RemoteFailure(
        "answer of the wrong kind".into(),
    )))
}

impl<S: Replicated> RaftNetwork<Tc<S>> for PeerClient<S> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Tc<S>>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        // openraft 0.9 bounds each AppendEntries by the heartbeat period
        // (its own timer around this call), which is why commands and
        // entries per append are kept small (see COMMAND_BYTES_MAX).
        match self.send(Request::Append(rpc), option.hard_ttl()).await? {
            Response::Append(Ok(r)) => Ok(r),
            Response::Append(Err(f)) => Err(fault(f)),
            _ => Err(unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Tc<S>>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        match self.send(Request::Snapshot(rpc), option.hard_ttl()).await? {
            Response::Snapshot(Ok(r)) => Ok(r),
            // openraft restarts the transfer from offset 0 on a mismatch.
            Response::Snapshot(Err(Fault::SnapshotMismatch(m))) => {
                Err(RPCError::RemoteError(RemoteError::new(
                    self.target,
                    RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m)),
                )))
            }
            Response::Snapshot(Err(f)) => Err(fault(f)),
            _ => Err(unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        match self.send(Request::Vote(rpc), option.hard_ttl()).await? {
            Response::Vote(Ok(r)) => Ok(r),
            Response::Vote(Err(f)) => Err(fault(f)),
            _ => Err(unexpected()),
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.net.backoff))
    }
}
