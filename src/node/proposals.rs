//! Proposals of the member daemon: start-up commands retried until the
//! group decides them, ordinary ones with a timeout, and the sync reports.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

use crate::config::RecoveryDomain;
use crate::group::engine::Engine;
use crate::group::state::GroupState;
use crate::group::{GroupCommand, MemberId};

use super::copy_state;
use super::roles::Roles;

/// Time allowed for a proposal (elections included).
pub const PROPOSE_TIMEOUT_S: u64 = 15;
/// First and longest pause between two attempts of a start-up proposal.
const STARTED_RETRY_MIN_MS: u64 = 500;
const STARTED_RETRY_MAX_MS: u64 = 5_000;

/// The engine's HMAC key, derived from the recovery domain's secret (any
/// length a person chose) so the key itself is always 32 bytes.
pub fn engine_key(secret: &str) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"geomirror group engine key\0");
    h.update(secret.as_bytes());
    h.finalize().to_vec()
}

/// Propose `cmd`; a refusal by the group is an error when `fatal`.
pub async fn propose(
    engine: &Engine<GroupState>,
    cmd: GroupCommand,
    fatal: bool,
) -> anyhow::Result<()> {
    let what = format!("{cmd:?}");
    let out = tokio::time::timeout(Duration::from_secs(PROPOSE_TIMEOUT_S), engine.propose(cmd))
        .await
        .map_err(|_| anyhow!("proposal timed out: {what}"))?
        .with_context(|| format!("propose {what}"))?;
    match out {
        Ok(_) => Ok(()),
        Err(reason) if fatal => Err(anyhow!("the group refused this member: {reason}")),
        Err(reason) => {
            tracing::debug!("refused: {what}: {reason}");
            Ok(())
        }
    }
}

/// Propose one of the start-up commands until the group decides it: a
/// missing leader or a timeout is waited out (the commands are idempotent),
/// so a member started before a majority is up keeps trying instead of
/// exiting. A refusal is an error when `fatal`.
pub async fn propose_until_decided(
    engine: &Engine<GroupState>,
    cmd: GroupCommand,
    fatal: bool,
) -> anyhow::Result<()> {
    let mut pause_ms = STARTED_RETRY_MIN_MS;
    loop {
        let what = format!("{cmd:?}");
        let out = tokio::time::timeout(
            Duration::from_secs(PROPOSE_TIMEOUT_S),
            engine.propose(cmd.clone()),
        )
        .await;
        let why = match out {
            Ok(Ok(Ok(_))) => return Ok(()),
            Ok(Ok(Err(reason))) if fatal => {
                return Err(anyhow!("the group refused this member: {reason}"))
            }
            Ok(Ok(Err(reason))) => {
                tracing::debug!("refused: {what}: {reason}");
                return Ok(());
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no decision within {PROPOSE_TIMEOUT_S} s"),
        };
        tracing::warn!("{what}: {why}; retrying in {pause_ms} ms");
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        pause_ms = (pause_ms * 2).min(STARTED_RETRY_MAX_MS);
    }
}

/// Replicate the copies' sync state when it changed (at most every 2 s for
/// progress counters alone).
pub async fn report_sync(
    engine: &Engine<GroupState>,
    state: &GroupState,
    me: MemberId,
    domain: &RecoveryDomain,
    roles: &Roles,
    reported: &mut BTreeMap<String, crate::group::SyncReport>,
    last: &mut Instant,
) {
    let periodic = last.elapsed() >= Duration::from_secs(2);
    for c in roles.copy_stats() {
        let Some(pair) = state
            .mirrors
            .iter()
            .find(|p| p.from == me && domain.member(p.to).is_some_and(|m| m.name == c.name))
        else {
            continue;
        };
        let rep = copy_state::sync_report(&c, domain.mode);
        let prev = reported.get(&c.name).copied().unwrap_or(pair.sync);
        if rep == prev || (rep.state == prev.state && !periodic) {
            continue;
        }
        let cmd = GroupCommand::SyncProgress {
            member: me,
            resource: pair.resource.clone(),
            epoch: pair.epoch,
            report: rep,
        };
        if propose(engine, cmd, false).await.is_ok() {
            reported.insert(c.name.clone(), rep);
            *last = Instant::now();
        }
    }
}
