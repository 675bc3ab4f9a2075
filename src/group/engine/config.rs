//! Engine settings: identity, addresses, state dir, secret and timing, with
//! their defaults and the translation into openraft's `Config`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use openraft::SnapshotPolicy;

use super::error::EngineError;
use super::frame::SNAPSHOT_CHUNK_BYTES_MAX;
use super::membership::ENTRIES_PER_APPEND_MAX;
use super::types::NodeId;

/// The recovery domain's default lease, for an engine built without one.
pub use crate::config::LEASE_MS_DEFAULT;

/// How a member runs its engine.
#[derive(Clone)]
pub struct EngineConfig {
    /// This member's id (unique in the group).
    pub node_id: NodeId,
    /// Where this member listens for engine RPCs (port 0 picks a free one).
    pub listen: SocketAddr,
    /// The address the other members record and dial for this member;
    /// defaults to the bound listen address, which must then be specific.
    pub advertise: Option<SocketAddr>,
    /// Known members to contact when joining ([`super::Engine::join`]).
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Where the log, vote and snapshots persist.
    pub state_dir: PathBuf,
    /// The group's shared secret (at least 16 bytes).
    pub secret: Vec<u8>,
    /// Leader heartbeat period.
    pub heartbeat_ms: u64,
    /// Minimum election timeout (the maximum is twice this).
    pub election_timeout_ms: u64,
    /// Bound on one RPC (connect + handshake + answer).
    pub rpc_timeout_ms: u64,
    /// Bound on sending one snapshot chunk, the last one including its
    /// installation (decode, write, fsync) on the receiver.
    pub snapshot_chunk_timeout_ms: u64,
    /// Bound on one membership change, including a joiner's catch-up.
    pub membership_timeout_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every_entries: u64,
    /// Log entries kept behind a snapshot (so slightly late followers
    /// catch up by log instead of snapshot).
    pub logs_kept_after_snapshot: u64,
    /// Attempts of a proposal or membership change while the leader is
    /// unknown or changing.
    pub propose_attempts_max: u32,
    /// How long a confirmation by a majority counts (`lease.rs`): the write
    /// lease a granted member holds from the moment it asked, and the
    /// window in which a member has a quorum.
    pub lease_ms: u64,
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret is deliberately left out.
        f.debug_struct("EngineConfig")
            .field("node_id", &self.node_id)
            .field("listen", &self.listen)
            .field("peers", &self.peers)
            .field("state_dir", &self.state_dir)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("election_timeout_ms", &self.election_timeout_ms)
            .field("lease_ms", &self.lease_ms)
            .finish_non_exhaustive()
    }
}

impl EngineConfig {
    /// A configuration with production defaults (heartbeat 100 ms, election
    /// 1–2 s, lease 3 s, snapshot every 1000 entries).
    pub fn new(node_id: NodeId, listen: SocketAddr, state_dir: PathBuf, secret: Vec<u8>) -> Self {
        EngineConfig {
            node_id,
            listen,
            advertise: None,
            peers: BTreeMap::new(),
            state_dir,
            secret,
            heartbeat_ms: 100,
            election_timeout_ms: 1_000,
            rpc_timeout_ms: 2_000,
            snapshot_chunk_timeout_ms: 10_000,
            membership_timeout_ms: 30_000,
            snapshot_every_entries: 1_000,
            logs_kept_after_snapshot: 100,
            propose_attempts_max: 50,
            lease_ms: LEASE_MS_DEFAULT,
        }
    }

    /// Bound on one lease confirmation: half a lease, since an answer
    /// later than that grants less than half of it; an RPC timeout at most.
    pub(crate) fn confirm_timeout(&self) -> Duration {
        Duration::from_millis((self.lease_ms / 2).min(self.rpc_timeout_ms))
    }

    /// Pause after a failed confirmation: two heartbeats, so that a member
    /// without a leader does not spin while an election runs.
    pub(crate) fn confirm_retry(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.saturating_mul(2))
    }

    pub(crate) fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.rpc_timeout_ms)
    }

    pub(crate) fn membership_timeout(&self) -> Duration {
        Duration::from_millis(self.membership_timeout_ms)
    }

    /// Pause between attempts: a fraction of an election, so a retry loop of
    /// `propose_attempts_max` spans several elections.
    pub(crate) fn retry_delay_ms(&self) -> u64 {
        (self.election_timeout_ms / 4).max(10)
    }

    /// Validates and translates into openraft's configuration.
    pub(crate) fn raft_config(&self) -> Result<openraft::Config, EngineError> {
        if self.heartbeat_ms == 0 || self.election_timeout_ms <= self.heartbeat_ms * 2 {
            return Err(EngineError::Config(format!(
                "election timeout ({} ms) must exceed twice the heartbeat ({} ms)",
                self.election_timeout_ms, self.heartbeat_ms
            )));
        }
        if self.rpc_timeout_ms == 0
            || self.membership_timeout_ms == 0
            || self.propose_attempts_max == 0
        {
            return Err(EngineError::Config(
                "timeouts and attempts must be non-zero".into(),
            ));
        }
        if self.lease_ms < self.heartbeat_ms.saturating_mul(4) {
            return Err(EngineError::Config(format!(
                "lease ({} ms) must be at least four heartbeats ({} ms): it is renewed \
                 every quarter lease, and each renewal takes a heartbeat round",
                self.lease_ms, self.heartbeat_ms
            )));
        }
        if self.snapshot_every_entries == 0 {
            return Err(EngineError::Config(
                "snapshot_every_entries must be non-zero".into(),
            ));
        }
        let c = openraft::Config {
            cluster_name: "geomirror".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_ms,
            election_timeout_max: self.election_timeout_ms * 2,
            install_snapshot_timeout: self.snapshot_chunk_timeout_ms,
            max_payload_entries: ENTRIES_PER_APPEND_MAX,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries),
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES_MAX,
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            ..Default::default()
        };
        c.validate().map_err(|e| EngineError::Config(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> EngineConfig {
        EngineConfig::new(
            1,
            "127.0.0.1:1".parse().expect("addr"),
            "/nonexistent".into(),
            vec![0; 32],
        )
    }

    #[test]
    fn defaults_are_valid() {
        assert!(cfg().raft_config().is_ok());
    }

    #[test]
    fn election_timeout_must_exceed_two_heartbeats() {
        let mut c = cfg();
        c.heartbeat_ms = 500;
        c.election_timeout_ms = 1_000;
        assert!(matches!(c.raft_config(), Err(EngineError::Config(_))));
    }

    #[test]
    fn a_lease_shorter_than_four_heartbeats_is_refused() {
        let mut c = cfg();
        c.lease_ms = 399;
        assert!(matches!(c.raft_config(), Err(EngineError::Config(_))));
        c.lease_ms = 400;
        assert!(c.raft_config().is_ok());
        assert_eq!(c.confirm_timeout(), Duration::from_millis(200));
    }

    #[test]
    fn zero_bounds_are_refused() {
        let mut c = cfg();
        c.propose_attempts_max = 0;
        assert!(c.raft_config().is_err());
        let mut c = cfg();
        c.snapshot_every_entries = 0;
        assert!(c.raft_config().is_err());
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let mut c = cfg();
        c.secret = b"very-secret-value-123".to_vec();
        assert!(!format!("{c:?}").contains("very-secret"));
    }
}
