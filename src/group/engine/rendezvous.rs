//! Founding rendezvous: one RPC asking a member whether it belongs to a
//! group, and whether it is about to found one, so that members started
//! together agree on a single founder.
//!
//! The rule the node builds on it (`crate::node::founding`) needs one
//! property from here: a member raises its `founding` mark *before* it
//! checks the others for the last time, and the mark is visible to every
//! probe that arrives after that. Two members can then never both found:
//! whichever checks second sees the other (bound, or marked).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::network::CallError;
use super::server::ServerCtx;
use super::types::Replicated;
use super::wire::{Request, Response};
use super::{Engine, EngineError};

/// Where a member stands, as it answers [`Request::Phase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPhase {
    /// Its engine holds a log or a vote: it belongs (or belonged) to a group.
    pub initialized: bool,
    /// It is a voter of its group now (a member others can join through).
    pub voter: bool,
    /// It has decided to found the group and is checking the others once more.
    pub founding: bool,
}

/// The outcome of asking one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Nothing listens there: the member is not running (or unreachable).
    Down,
    /// Something accepted the connection but gave no valid answer (still
    /// starting, another secret, an older version): it may be a member.
    Unknown(String),
    /// The member answered.
    Answered(PeerPhase),
}

pub(crate) async fn own_phase<S: Replicated>(ctx: &ServerCtx<S>) -> PeerPhase {
    let initialized = ctx.raft.is_initialized().await.unwrap_or(false);
    let me = ctx.raft.metrics().borrow().id;
    let voter = ctx
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .any(|v| v == me);
    PeerPhase {
        initialized,
        voter,
        founding: ctx.founding.load(Ordering::SeqCst),
    }
}

impl<S: Replicated> Engine<S> {
    /// Raise or lower this member's founding mark (see the module doc).
    pub fn set_founding(&self, on: bool) {
        self.ctx.founding.store(on, Ordering::SeqCst);
    }

    /// Ask the member at `addr` where it stands, within `timeout`.
    pub async fn probe(&self, addr: SocketAddr, timeout: Duration) -> Probe {
        let req = Request::<S>::Phase;
        match self.net.call(&addr.to_string(), &req, timeout, false).await {
            Ok(Response::Phase(p)) => Probe::Answered(p),
            Ok(_) => Probe::Unknown("answer of the wrong kind".into()),
            // Only a failed TCP connect proves nothing listens there.
            Err(CallError::NotSent(EngineError::Unreachable { .. })) => Probe::Down,
            Err(e) => Probe::Unknown(e.into_inner().to_string()),
        }
    }
}
