//! The embedded group engine: orders commands of a [`Replicated`] state
//! machine on every member with openraft, persisting under a state directory.
//!
//! openraft stays behind this module: callers see [`Engine`],
//! [`EngineConfig`], [`EngineMetrics`], [`EngineError`] and the
//! [`Replicated`] trait their state implements. Layout:
//! `store` (redb log + vote), `state_machine` + `snapshot` (applied state,
//! checksummed snapshot files), `network` + `server` + `wire` + `frame`
//! (authenticated TCP RPCs), `auth` (HMAC handshake, reusable elsewhere),
//! `membership` (leader-side changes), `routing` (forwarding to the leader
//! with bounded retries), `lease` (majority confirmations and the write
//! lease), `status` (metrics, quorum, failure detector), `config`.

pub mod auth;
mod config;
#[cfg(test)]
mod conformance;
mod error;
pub mod frame;
mod lease;
mod membership;
mod network;
mod rendezvous;
mod routing;
mod server;
mod snapshot;
mod state_machine;
mod status;
mod store;
mod types;
mod wire;

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{EngineConfig, LEASE_MS_DEFAULT};
pub use error::EngineError;
pub use lease::Confirmation;
pub use membership::COMMAND_BYTES_MAX;
pub use rendezvous::{PeerPhase, Probe};
pub use server::{CONNECTIONS_MAX, ENGINE_MAGIC};
pub use snapshot::SNAPSHOT_BYTES_MAX;
pub use status::EngineMetrics;
pub use types::{NodeId, Replicated};
pub use wire::AUTH_CONTEXT;

use auth::Authenticator;
use lease::Confirmer;
use network::{Net, NetFactory};
use routing::MemberOp;
use server::ServerCtx;
use types::Raft;

/// A running member of the group.
pub struct Engine<S: Replicated> {
    cfg: EngineConfig,
    /// The address recorded for this member in the group membership.
    addr: SocketAddr,
    raft: Raft<S>,
    net: Arc<Net>,
    ctx: Arc<ServerCtx<S>>,
    state: watch::Receiver<Arc<S>>,
    server: JoinHandle<()>,
    leader_watch: JoinHandle<()>,
    /// The term this member leads and when it saw itself elected (the
    /// failure detector's origin).
    leader_since: Arc<Mutex<Option<(u64, Instant)>>>,
    /// Majority confirmations: the quorum and the write lease.
    confirmer: Arc<Confirmer<S>>,
    renewals: JoinHandle<()>,
}

impl<S: Replicated> Drop for Engine<S> {
    fn drop(&mut self) {
        self.server.abort();
        self.leader_watch.abort();
        self.renewals.abort();
    }
}

impl<S: Replicated> Engine<S> {
    /// Opens the state directory (log, vote, snapshot), binds the listener
    /// and starts Raft. A member restarted on its state dir resumes its role.
    pub async fn start(cfg: EngineConfig) -> Result<Self, EngineError> {
        let listener = bind(cfg.listen).await?;
        let advertised = advertised_addr(&cfg, &listener)?;
        Self::start_inner(cfg, advertised, server::Incoming::Listener(listener)).await
    }

    /// As [`Engine::start`], for a member whose one listener is shared with
    /// other protocols: engine connections arrive on `incoming`, their
    /// [`ENGINE_MAGIC`] already read. `cfg.listen` (or `cfg.advertise`) is
    /// the address other members dial.
    pub async fn start_with_incoming(
        cfg: EngineConfig,
        incoming: tokio::sync::mpsc::Receiver<tokio::net::TcpStream>,
    ) -> Result<Self, EngineError> {
        let advertised = cfg.advertise.unwrap_or(cfg.listen);
        Self::start_inner(cfg, advertised, server::Incoming::Streams(incoming)).await
    }

    async fn start_inner(
        cfg: EngineConfig,
        advertised: SocketAddr,
        incoming: server::Incoming,
    ) -> Result<Self, EngineError> {
        let raft_cfg = cfg.raft_config()?;
        std::fs::create_dir_all(&cfg.state_dir).map_err(|source| EngineError::StateDir {
            path: cfg.state_dir.clone(),
            source,
        })?;
        let auth = Authenticator::new(&cfg.secret, AUTH_CONTEXT, cfg.rpc_timeout())
            .map_err(|e| EngineError::Config(e.to_string()))?;
        let mut log = store::LogStore::<S>::open(&cfg.state_dir).await?;
        let last_log = log
            .last_log_index()
            .await
            .map_err(|e| EngineError::Store(e.to_string()))?;
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
        // openraft publishes its metrics from the core task, after `new`
        // returns: wait for them so callers see the restored log at once.
        let mut m = raft.metrics();
        let restored = tokio::time::timeout(
            cfg.rpc_timeout(),
            // map() drops the watch guard at once: holding it would block the core.
            async {
                m.wait_for(|m| m.last_log_index >= last_log)
                    .await
                    .map(|_| ())
            },
        )
        .await;
        if !matches!(restored, Ok(Ok(()))) {
            tracing::warn!("engine metrics did not report the restored log in time");
        }
        let ctx = Arc::new(ServerCtx {
            raft: raft.clone(),
            auth,
            membership_timeout: cfg.membership_timeout(),
            founding: AtomicBool::new(false),
            state: state.clone(),
            lease: lease::LeaseBook::default(),
            confirm_timeout: cfg.confirm_timeout(),
        });
        let server = tokio::spawn(server::serve(incoming, ctx.clone()));
        let leader_since = Arc::new(Mutex::new(None));
        let leader_watch = tokio::spawn(status::watch_leadership(
            cfg.node_id,
            raft.metrics(),
            leader_since.clone(),
        ));
        let confirmer = Arc::new(Confirmer {
            me: cfg.node_id,
            raft: raft.clone(),
            net: net.clone(),
            ctx: ctx.clone(),
            lease: Duration::from_millis(cfg.lease_ms),
            timeout: cfg.confirm_timeout(),
            retry: cfg.confirm_retry(),
            wanted: AtomicBool::new(false),
            kick: tokio::sync::Notify::new(),
            confirmed: watch::channel(None).0,
        });
        let renewals = tokio::spawn(confirmer.clone().run());
        Ok(Engine {
            addr: advertised,
            cfg,
            raft,
            net,
            ctx,
            state,
            server,
            leader_watch,
            leader_since,
            confirmer,
            renewals,
        })
    }

    /// This member's id.
    pub fn id(&self) -> NodeId {
        self.cfg.node_id
    }

    /// The address the other members use to reach this one.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Founds the group with this member as its only voter (patent block 72:
    /// the first member uses its own copy of the group state). Does nothing
    /// on a member whose state dir already holds a group.
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
            .initialize(membership::founding(
                self.cfg.node_id,
                self.addr.to_string(),
            ))
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
            addr: self.addr.to_string(),
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

    /// The applied state, updated after every applied batch of entries.
    pub fn state(&self) -> watch::Receiver<Arc<S>> {
        self.state.clone()
    }

    /// The leader this member currently knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
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
        self.renewals.abort();
        let res = self.raft.shutdown().await;
        self.net.clear();
        res.map_err(|e| EngineError::Raft(e.to_string()))
    }

    /// Asks the leader (this member itself when it leads) to confirm with
    /// a majority that it still leads, and whether this member holds the
    /// write lease: on a grant it does until `sent_at` plus
    /// [`Engine::lease`]. The engine also does this on its own, every half
    /// lease, or every quarter while [`Engine::set_lease_wanted`].
    pub async fn confirm(&self) -> Result<Confirmation, EngineError> {
        self.confirmer.confirm().await
    }

    /// The latest successful confirmation, updated as they arrive.
    pub fn confirmations(&self) -> watch::Receiver<Option<Confirmation>> {
        self.confirmer.confirmed.subscribe()
    }

    /// How long a confirmation counts (the lease).
    pub fn lease(&self) -> Duration {
        self.confirmer.lease
    }

    /// This member wants the write lease (it serves production): renew it
    /// every quarter lease from now on, the first time at once.
    pub fn set_lease_wanted(&self, wanted: bool) {
        let was = self.confirmer.wanted.swap(wanted, Ordering::AcqRel);
        if wanted && !was {
            self.confirmer.kick.notify_one();
        }
    }

    /// Whether this member's state dir holds a group (founded or joined,
    /// even if it has left since).
    pub async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    /// Whether this member is a voter of the group (it founded or joined it).
    pub fn is_member(&self) -> bool {
        self.is_voter(self.cfg.node_id)
    }

    fn is_voter(&self, id: NodeId) -> bool {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let found = m.membership().voter_ids().any(|v| v == id);
        found
    }
}

/// The address other members record for this one: `advertise`, else the
/// bound listen address (so port 0 works); it must be dialable.
fn advertised_addr(cfg: &EngineConfig, listener: &TcpListener) -> Result<SocketAddr, EngineError> {
    let local = listener
        .local_addr()
        .map_err(|source| EngineError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let a = cfg.advertise.unwrap_or(local);
    if a.ip().is_unspecified() || a.port() == 0 {
        return Err(EngineError::Config(format!(
            "{a} cannot be dialled by other members: set an advertise address"
        )));
    }
    Ok(a)
}

/// How long `start` waits for the address to be released by a previous
/// instance of this member in the same process (dropped, still closing).
const BIND_WAIT_MS: u64 = 5_000;

async fn bind(addr: SocketAddr) -> Result<TcpListener, EngineError> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(BIND_WAIT_MS);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(source) => return Err(EngineError::Listen { addr, source }),
        }
    }
}
