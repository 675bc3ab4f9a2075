//! The embedded group engine: orders commands of a [`Replicated`] state
//! machine on every member with openraft, persisting under a state directory.
//!
//! openraft stays behind this module: callers see [`Engine`],
//! [`EngineConfig`], [`EngineMetrics`], [`EngineError`] and the
//! [`Replicated`] trait their state implements. Layout:
//! `store` (redb log + vote), `state_machine` + `snapshot` (applied state,
//! checksummed snapshot files), `network` + `server` + `wire` + `frame`
//! (authenticated TCP RPCs), `auth` (HMAC handshake, reusable elsewhere),
//! `membership` (leader-side changes), `config`.

pub mod auth;
mod config;
mod error;
pub mod frame;
mod membership;
mod network;
mod server;
mod snapshot;
mod state_machine;
mod store;
mod types;
mod wire;

use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::EngineConfig;
pub use error::EngineError;
pub use membership::COMMAND_BYTES_MAX;
pub use server::CONNECTIONS_MAX;
pub use snapshot::SNAPSHOT_BYTES_MAX;
pub use types::{NodeId, Replicated};
pub use wire::AUTH_CONTEXT;

use auth::Authenticator;
use network::{CallError, Net, NetFactory};
use server::ServerCtx;
use types::Raft;
use wire::{Fault, Request, Response};

/// A summary of this member's view of the group, for status output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineMetrics {
    /// This member.
    pub id: NodeId,
    /// Current Raft term.
    pub term: u64,
    /// The leader this member knows of.
    pub leader: Option<NodeId>,
    /// Voting members.
    pub voters: BTreeSet<NodeId>,
    /// Non-voting members (joining, catching up).
    pub learners: BTreeSet<NodeId>,
    /// Index of the last entry in the local log.
    pub last_log_index: Option<u64>,
    /// Index of the last entry applied to the state.
    pub last_applied_index: Option<u64>,
    /// Index covered by the latest snapshot.
    pub snapshot_index: Option<u64>,
    /// Index up to which the log was purged (compacted into the snapshot).
    pub purged_index: Option<u64>,
    /// Whether this member can currently get anything committed.
    pub has_quorum: bool,
}

enum MemberOp {
    Add { id: NodeId, addr: String },
    Remove { id: NodeId },
}

/// A running member of the group.
pub struct Engine<S: Replicated> {
    cfg: EngineConfig,
    addr: String,
    raft: Raft<S>,
    net: Arc<Net>,
    ctx: Arc<ServerCtx<S>>,
    state: watch::Receiver<Arc<S>>,
    server: JoinHandle<()>,
    leader_watch: JoinHandle<()>,
    /// When this member last became leader (the failure detector's origin).
    leader_since: Arc<Mutex<Option<Instant>>>,
}

impl<S: Replicated> Drop for Engine<S> {
    fn drop(&mut self) {
        self.server.abort();
        self.leader_watch.abort();
    }
}

impl<S: Replicated> Engine<S> {
    /// Opens the state directory (log, vote, snapshot), binds the listener
    /// and starts Raft. A member restarted on its state dir resumes its role.
    pub async fn start(cfg: EngineConfig) -> Result<Self, EngineError> {
        let raft_cfg = cfg.raft_config()?;
        std::fs::create_dir_all(&cfg.state_dir).map_err(|source| EngineError::StateDir {
            path: cfg.state_dir.clone(),
            source,
        })?;
        let auth = Authenticator::new(&cfg.secret, AUTH_CONTEXT, cfg.rpc_timeout())
            .map_err(|e| EngineError::Config(e.to_string()))?;
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| EngineError::Listen {
                    addr: cfg.listen,
                    source,
                })?;
        let log = store::LogStore::<S>::open(&cfg.state_dir).await?;
        let (sm, state) = state_machine::StateMachine::<S>::open(cfg.state_dir.clone()).await?;
        let net = Arc::new(Net::new(
            auth.clone(),
            cfg.rpc_timeout(),
            Duration::from_millis(cfg.heartbeat_ms.saturating_mul(2)),
        ));
        let factory = NetFactory {
            net: net.clone(),
            _s: PhantomData,
        };
        let raft = Raft::<S>::new(cfg.node_id, Arc::new(raft_cfg), factory, log, sm)
            .await
            .map_err(|e| EngineError::Raft(e.to_string()))?;
        let ctx = Arc::new(ServerCtx {
            raft: raft.clone(),
            auth,
            membership_timeout: cfg.membership_timeout(),
            last_leader_contact: Mutex::new(None),
        });
        let server = tokio::spawn(server::serve(listener, ctx.clone()));
        let leader_since = Arc::new(Mutex::new(None));
        let leader_watch = tokio::spawn(watch_leadership(
            cfg.node_id,
            raft.metrics(),
            leader_since.clone(),
        ));
        Ok(Engine {
            addr: cfg.listen.to_string(),
            cfg,
            raft,
            net,
            ctx,
            state,
            server,
            leader_watch,
            leader_since,
        })
    }

    /// This member's id.
    pub fn id(&self) -> NodeId {
        self.cfg.node_id
    }

    /// Founds the group with this member as its only voter. Does nothing on
    /// a member whose state dir already holds a group.
    pub async fn bootstrap(&self) -> Result<(), EngineError> {
        let done = self
            .raft
            .is_initialized()
            .await
            .map_err(|_| EngineError::Stopped)?;
        if done {
            return Ok(());
        }
        self.raft
            .initialize(membership::founding(self.cfg.node_id, self.addr.clone()))
            .await
            .map_err(|e| EngineError::Raft(e.to_string()))
    }

    /// Joins the group through any reachable member in `seeds` (redirected to
    /// the leader): added as learner, fed the state, promoted to voter. Returns
    /// once this member sees itself a voter. Idempotent for a member already in.
    pub async fn join_via(&self, seeds: &[SocketAddr]) -> Result<(), EngineError> {
        if self.is_voter(self.cfg.node_id) {
            return Ok(());
        }
        let seeds: Vec<String> = seeds.iter().map(|a| a.to_string()).collect();
        let op = MemberOp::Add {
            id: self.cfg.node_id,
            addr: self.addr.clone(),
        };
        self.change_members(op, &seeds).await?;
        let mut m = self.raft.metrics();
        let me = self.cfg.node_id;
        tokio::time::timeout(
            self.cfg.membership_timeout(),
            m.wait_for(|m| {
                m.membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == me)
            }),
        )
        .await
        .map_err(|_| EngineError::Raft("joined, but the membership did not arrive in time".into()))?
        .map_err(|_| EngineError::Stopped)?;
        Ok(())
    }

    /// Joins through the peers given in the configuration.
    pub async fn join(&self) -> Result<(), EngineError> {
        let seeds: Vec<SocketAddr> = self.cfg.peers.values().copied().collect();
        self.join_via(&seeds).await
    }

    /// Adds (or re-adds, after a failure) member `id` reachable at `addr`.
    pub async fn add_member(&self, id: NodeId, addr: SocketAddr) -> Result<(), EngineError> {
        let op = MemberOp::Add {
            id,
            addr: addr.to_string(),
        };
        self.change_members(op, &[]).await
    }

    /// Removes member `id` from the group (e.g. after proposing its failure).
    pub async fn remove_member(&self, id: NodeId) -> Result<(), EngineError> {
        self.change_members(MemberOp::Remove { id }, &[]).await
    }

    /// Commits `cmd` through the leader, from any member, and returns the
    /// outcome of applying it. Retries (bounded) while no leader is known;
    /// fails with [`EngineError::Indeterminate`] if the leader was sent the
    /// command but did not answer, since it may have been applied.
    pub async fn propose(&self, cmd: S::Command) -> Result<S::Outcome, EngineError> {
        membership::check_command_size::<S>(&cmd).map_err(fault_err)?;
        let req = Request::<S>::Propose(cmd.clone());
        for _ in 0..self.cfg.propose_attempts_max {
            let Some((leader, addr)) = self.leader_addr() else {
                self.pause().await;
                continue;
            };
            if leader == self.cfg.node_id {
                match membership::propose(&self.raft, cmd.clone()).await {
                    Ok(o) => return Ok(o),
                    Err(Fault::NotLeader { .. }) => {}
                    Err(f) => return Err(fault_err(f)),
                }
            } else {
                match self
                    .net
                    .call(&addr, &req, self.cfg.rpc_timeout(), false)
                    .await
                {
                    Ok(Response::Proposed(Ok(o))) => return Ok(o),
                    Ok(Response::Proposed(Err(Fault::NotLeader { .. }))) => {}
                    Ok(Response::Proposed(Err(f))) => return Err(fault_err(f)),
                    Ok(_) => return Err(EngineError::Codec("answer of the wrong kind".into())),
                    Err(CallError::NotSent(_)) => {}
                    Err(CallError::Sent(e)) => return Err(e),
                }
            }
            self.pause().await;
        }
        Err(EngineError::NoLeader {
            attempts: self.cfg.propose_attempts_max,
        })
    }

    /// The applied state, updated after every applied batch of entries.
    pub fn state(&self) -> watch::Receiver<Arc<S>> {
        self.state.clone()
    }

    /// The leader this member currently knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Whether this member can currently get a command committed: as leader,
    /// a majority acknowledged it within the election timeout; as follower,
    /// the leader reached it within that time. False for a lone survivor of
    /// a two-voter group.
    pub fn has_quorum(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        let window_ms = self.cfg.election_timeout_ms.saturating_mul(2);
        match m.current_leader {
            Some(l) if l == self.cfg.node_id => {
                m.millis_since_quorum_ack.is_some_and(|ms| ms <= window_ms)
            }
            Some(_) => self
                .ctx
                .last_leader_contact
                .lock()
                .expect("lock not poisoned")
                .is_some_and(|t| t.elapsed() <= Duration::from_millis(window_ms)),
            None => false,
        }
    }

    /// A summary of this member's view.
    pub fn metrics(&self) -> EngineMetrics {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        EngineMetrics {
            id: self.cfg.node_id,
            term: m.current_term,
            leader: m.current_leader,
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            has_quorum: self.has_quorum(),
        }
    }

    /// On the leader: members that have not answered any RPC for longer
    /// than `timeout` (counted from when this member became leader at the
    /// earliest). Empty on other members, which do not send heartbeats.
    pub fn unreachable_peers(&self, timeout: Duration) -> Vec<NodeId> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader != Some(self.cfg.node_id) {
            return Vec::new();
        }
        let Some(since) = *self.leader_since.lock().expect("lock not poisoned") else {
            return Vec::new();
        };
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| *id != self.cfg.node_id)
            .filter(|id| {
                let last = self.net.last_ok(*id).map_or(since, |t| t.max(since));
                last.elapsed() > timeout
            })
            .collect()
    }

    /// Leaves the group cleanly: removes itself from the voters through the
    /// leader, then shuts down.
    pub async fn leave(&self) -> Result<(), EngineError> {
        self.remove_member(self.cfg.node_id).await?;
        self.shutdown().await
    }

    /// Stops Raft, the listener and every connection. The state dir may then
    /// be reopened by a new [`Engine::start`].
    pub async fn shutdown(&self) -> Result<(), EngineError> {
        self.server.abort();
        self.leader_watch.abort();
        let res = self.raft.shutdown().await;
        self.net.clear();
        res.map_err(|e| EngineError::Raft(e.to_string()))
    }

    fn is_voter(&self, id: NodeId) -> bool {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let found = m.membership().voter_ids().any(|v| v == id);
        found
    }

    fn leader_addr(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics().borrow().clone();
        let l = m.current_leader?;
        let node = m.membership_config.membership().get_node(&l)?;
        Some((l, node.addr.clone()))
    }

    async fn pause(&self) {
        tokio::time::sleep(Duration::from_millis(self.cfg.retry_delay_ms())).await;
    }

    /// Runs a membership change on the leader: locally if this member leads,
    /// else over the network, following "not leader" hints; `seeds` are
    /// tried when this member knows no leader (a joiner).
    async fn change_members(&self, op: MemberOp, seeds: &[String]) -> Result<(), EngineError> {
        let req = match &op {
            MemberOp::Add { id, addr } => Request::<S>::AddMember {
                id: *id,
                addr: addr.clone(),
            },
            MemberOp::Remove { id } => Request::RemoveMember { id: *id },
        };
        let mut hint: Option<String> = None;
        let mut last_err = None;
        for attempt in 0..self.cfg.propose_attempts_max {
            let target = match (hint.take(), self.leader_addr()) {
                (Some(h), _) => Some(h),
                (None, Some((l, _))) if l == self.cfg.node_id => None,
                (None, Some((_, a))) => Some(a),
                (None, None) if !seeds.is_empty() => {
                    Some(seeds[attempt as usize % seeds.len()].clone())
                }
                (None, None) => {
                    self.pause().await;
                    continue;
                }
            };
            let res = match target {
                None => {
                    let t = self.cfg.membership_timeout();
                    match &op {
                        MemberOp::Add { id, addr } => {
                            membership::add_member(&self.raft, *id, addr.clone(), t).await
                        }
                        MemberOp::Remove { id } => {
                            membership::remove_member(&self.raft, *id, t).await
                        }
                    }
                }
                Some(addr) => {
                    // Membership changes are idempotent, so a lost answer is retried.
                    let timeout = self.cfg.membership_timeout() + self.cfg.rpc_timeout();
                    match self.net.call(&addr, &req, timeout, true).await {
                        Ok(Response::Membership(r)) => r,
                        Ok(_) => Err(Fault::Failed("answer of the wrong kind".into())),
                        Err(e) => {
                            let e = e.into_inner();
                            // A wrong secret will not get better by retrying.
                            if matches!(e, EngineError::Auth { .. }) {
                                return Err(e);
                            }
                            Err(Fault::Failed(e.to_string()))
                        }
                    }
                }
            };
            match res {
                Ok(()) => return Ok(()),
                Err(Fault::NotLeader {
                    leader: Some((_, a)),
                }) => {
                    hint = Some(a);
                    continue;
                }
                Err(f) => last_err = Some(f),
            }
            self.pause().await;
        }
        Err(match last_err {
            Some(f) => fault_err(f),
            None => EngineError::NoLeader {
                attempts: self.cfg.propose_attempts_max,
            },
        })
    }
}

fn fault_err(f: Fault) -> EngineError {
    match f {
        Fault::NotLeader { .. } => EngineError::NoLeader { attempts: 1 },
        Fault::SnapshotMismatch(m) => EngineError::Raft(m.to_string()),
        Fault::Failed(s) => EngineError::Raft(s),
    }
}

/// Records when this member becomes leader, for [`Engine::unreachable_peers`].
async fn watch_leadership(
    me: NodeId,
    mut m: watch::Receiver<openraft::RaftMetrics<NodeId, types::Node>>,
    since: Arc<Mutex<Option<Instant>>>,
) {
    let mut term_led = None;
    loop {
        {
            let cur = m.borrow_and_update();
            let leads = cur.current_leader == Some(me);
            let mut s = since.lock().expect("lock not poisoned");
            if !leads {
                *s = None;
                term_led = None;
            } else if term_led != Some(cur.current_term) {
                *s = Some(Instant::now());
                term_led = Some(cur.current_term);
            }
        }
        if m.changed().await.is_err() {
            return;
        }
    }
}
