//! Getting work done by the leader from any member: proposals forwarded
//! to it, membership changes following "not leader" hints, bounded retries.

use std::time::Duration;

use super::error::EngineError;
use super::membership;
use super::network::CallError;
use super::types::{NodeId, Replicated};
use super::wire::{Fault, Request, Response};
use super::Engine;

/// A membership change to run on the leader.
pub(crate) enum MemberOp {
    Add { id: NodeId, addr: String },
    Remove { id: NodeId },
}

impl<S: Replicated> Engine<S> {
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
                    Err(CallError::Sent(e @ EngineError::Indeterminate { .. })) => return Err(e),
                    Err(CallError::Sent(e)) => {
                        return Err(EngineError::Indeterminate {
                            addr,
                            reason: e.to_string(),
                        })
                    }
                }
            }
            self.pause().await;
        }
        Err(EngineError::NoLeader {
            attempts: self.cfg.propose_attempts_max,
        })
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
    pub(crate) async fn change_members(
        &self,
        op: MemberOp,
        seeds: &[String],
    ) -> Result<(), EngineError> {
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
            Some(Fault::NotLeader { .. }) | None => EngineError::NoLeader {
                attempts: self.cfg.propose_attempts_max,
            },
            Some(f) => fault_err(f),
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
