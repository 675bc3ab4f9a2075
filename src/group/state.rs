//! `GroupState`, the replicated recovery domain, and its pure `apply`: every
//! member applies the same ordered commands and computes the same hosts.
//!
//! No I/O and no clock here: the engine feeds committed commands to
//! [`GroupState::apply`], which validates, mutates, then re-runs host
//! election (Fig. 4A block 76) and derives the mirroring pairs (blocks 86–96).

use super::command::{GroupCommand, ResourceConfig, SyncReport};
use super::domain::DomainSpec;
use super::error::StateError;
use super::ids::{MemberId, ResourceId};
use super::takeover::TakeoverRefusal;
use crate::config::RecoveryDomain;
use serde::{Deserialize, Serialize};

/// Where a member stands in the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum MemberStatus {
    /// Never joined.
    #[default]
    Absent,
    /// Joined: may host resources of its subgroups.
    Joined,
    /// Left in an orderly way.
    Left,
    /// Declared failed by the leader's failure detector.
    Failed,
}

/// Runtime state of one member (its static part is in [`DomainSpec`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MemberState {
    /// Joined, left, failed or absent.
    pub status: MemberStatus,
    /// Resources it declared it can access, in domain order (block 76).
    pub subgroups: Vec<ResourceId>,
}

/// A resource's configuration together with who sent it, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedConfig {
    /// The configuration.
    pub config: ResourceConfig,
    /// The host that sent it.
    pub host: MemberId,
    /// The host epoch it was sent under.
    pub epoch: u64,
}

/// A member that refused to host a resource on its disk, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The member.
    pub member: MemberId,
    /// The host epoch it had been elected under.
    pub epoch: u64,
    /// Why it refused.
    pub refusal: TakeoverRefusal,
}

/// Runtime state of one resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ResourceState {
    /// The one member that opens the disk, if any.
    pub host: Option<MemberId>,
    /// Group epoch at which the current host (or absence of one) began.
    pub host_epoch: u64,
    /// Last configuration sent by a host (blocks 82–84). It outlives its
    /// host: the next host's disk is checked against it (`takeover`).
    pub config: Option<ReportedConfig>,
    /// Members that refused to host it on their disk, at most one entry
    /// per member, each kept until that member declares the resource again.
    pub refusals: Vec<Refusal>,
}

/// Production host → copy host, for one copy resource (blocks 86–96).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorPair {
    /// The copy resource.
    pub resource: ResourceId,
    /// The production host.
    pub from: MemberId,
    /// The copy host.
    pub to: MemberId,
    /// Epoch at which this pair began: the later of the two host epochs.
    /// Replication messages carry it; the copy host refuses older ones.
    pub epoch: u64,
    /// Latest report for this pair from the production host.
    pub sync: SyncReport,
}

/// One host change made by a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostChange {
    /// The resource.
    pub resource: ResourceId,
    /// Its host before.
    pub from: Option<MemberId>,
    /// Its host after.
    pub to: Option<MemberId>,
}

/// What an accepted command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ApplyOutcome {
    /// The group epoch after the command.
    pub epoch: u64,
    /// Hosts that changed; empty when the epoch did not move.
    pub host_changes: Vec<HostChange>,
}

/// The recovery domain with its runtime state, replicated on every member.
/// `Default` is the unconfigured state every engine starts from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GroupState {
    /// The replicated part of the recovery-domain file.
    pub domain: DomainSpec,
    /// Per member, indexed by [`MemberId`].
    pub members: Vec<MemberState>,
    /// Per site, in domain order: `resources[0]` is production.
    pub resources: Vec<ResourceState>,
    /// Mirroring pairs, derived after every command.
    pub mirrors: Vec<MirrorPair>,
    /// Grows by one at every command that changes any host.
    pub epoch: u64,
}

impl GroupState {
    /// A state configured with `domain`, as after its `Configure` command.
    pub fn new(domain: &RecoveryDomain) -> GroupState {
        let mut state = GroupState::default();
        state.install(DomainSpec::from(domain));
        state
    }

    fn install(&mut self, domain: DomainSpec) {
        self.members = vec![MemberState::default(); domain.members.len()];
        self.resources = vec![ResourceState::default(); domain.sites.len()];
        self.domain = domain;
    }

    /// Whether a recovery domain has been installed.
    pub fn is_configured(&self) -> bool {
        !self.domain.fingerprint.is_zero()
    }

    /// Status of `member` (`Absent` for an unknown one).
    pub fn status(&self, member: MemberId) -> MemberStatus {
        self.members
            .get(member.index())
            .map_or(MemberStatus::Absent, |m| m.status)
    }

    /// Whether `member` is joined.
    pub fn is_joined(&self, member: MemberId) -> bool {
        self.status(member) == MemberStatus::Joined
    }

    /// The subgroups `member` declared (empty for an unknown one).
    pub fn subgroups(&self, member: MemberId) -> &[ResourceId] {
        self.members
            .get(member.index())
            .map_or(&[], |m| m.subgroups.as_slice())
    }

    /// The state of `resource`, with its index (0 = production).
    pub fn resource(&self, resource: &ResourceId) -> Option<(usize, &ResourceState)> {
        let i = self.domain.resource_index(resource)?;
        self.resources.get(i).map(|r| (i, r))
    }

    /// The host of `resource`.
    pub fn host(&self, resource: &ResourceId) -> Option<MemberId> {
        self.resource(resource).and_then(|(_, r)| r.host)
    }

    /// The group primary: host of the production resource.
    pub fn production_host(&self) -> Option<MemberId> {
        self.resources.first().and_then(|r| r.host)
    }

    /// Resources hosted by `member`, in domain order.
    pub fn hosted_by(&self, member: MemberId) -> Vec<ResourceId> {
        self.domain
            .sites
            .iter()
            .zip(&self.resources)
            .filter(|(_, r)| r.host == Some(member))
            .map(|(s, _)| s.resource.clone())
            .collect()
    }

    /// Applies one committed command. Deterministic; a refused command
    /// leaves the state exactly as it was and says why.
    pub fn apply(&mut self, cmd: &GroupCommand) -> Result<ApplyOutcome, StateError> {
        let configure = matches!(cmd, GroupCommand::Configure { .. });
        if !configure && !self.is_configured() {
            return Err(StateError::NotConfigured);
        }
        match cmd {
            GroupCommand::Configure { domain } => return self.configure(domain),
            GroupCommand::Join {
                member,
                subgroups,
                fingerprint,
            } => {
                self.check_member(*member)?;
                if *fingerprint != self.domain.fingerprint {
                    return Err(StateError::FingerprintMismatch {
                        member: *member,
                        expected: self.domain.fingerprint,
                        got: *fingerprint,
                    });
                }
                let ordered = self.check_subgroups(*member, subgroups)?;
                // A member declaring a resource again (restarted, its disk
                // replaced or refreshed) is a candidate again: its disk is
                // checked anew if it is elected.
                for (site, r) in self.domain.sites.iter().zip(&mut self.resources) {
                    if ordered.contains(&site.resource) {
                        r.refusals.retain(|x| x.member != *member);
                    }
                }
                let m = &mut self.members[member.index()];
                m.status = MemberStatus::Joined;
                m.subgroups = ordered;
            }
            GroupCommand::Leave { member } | GroupCommand::Fail { member } => {
                self.check_member(*member)?;
                if !self.is_joined(*member) {
                    return Err(StateError::NotJoined(*member));
                }
                let m = &mut self.members[member.index()];
                // The subgroups stay as last declared: a member declared
                // failed by mistake joins again with them (see `join::step`).
                m.status = if matches!(cmd, GroupCommand::Leave { .. }) {
                    MemberStatus::Left
                } else {
                    MemberStatus::Failed
                };
            }
            GroupCommand::ResourceConfig {
                member,
                resource,
                epoch,
                config,
            } => {
                let i = self.check_host_epoch(*member, resource, *epoch)?;
                config.check().map_err(|reason| StateError::BadConfig {
                    resource: resource.clone(),
                    reason,
                })?;
                self.resources[i].config = Some(ReportedConfig {
                    config: *config,
                    host: *member,
                    epoch: *epoch,
                });
            }
            GroupCommand::TakeoverRefused {
                member,
                resource,
                epoch,
                refusal,
            } => {
                let i = self.check_host_epoch(*member, resource, *epoch)?;
                let r = &mut self.resources[i];
                r.refusals.retain(|x| x.member != *member);
                r.refusals.push(Refusal {
                    member: *member,
                    epoch: *epoch,
                    refusal: *refusal,
                });
                // As for a lost disk (block 76 again): out of the subgroup,
                // so election hands the resource to the next member.
                self.members[member.index()]
                    .subgroups
                    .retain(|x| x != resource);
            }
            GroupCommand::SyncProgress {
                member,
                resource,
                epoch,
                report,
            } => {
                self.check_member(*member)?;
                if self.production_host() != Some(*member) {
                    let production = self.domain.production().cloned().unwrap_or_default();
                    return Err(StateError::NotHost {
                        member: *member,
                        resource: production,
                    });
                }
                let pair = self
                    .mirrors
                    .iter_mut()
                    .find(|p| &p.resource == resource)
                    .ok_or_else(|| StateError::NoMirror {
                        resource: resource.clone(),
                    })?;
                if pair.epoch != *epoch {
                    return Err(StateError::StaleEpoch {
                        resource: resource.clone(),
                        got: *epoch,
                        current: pair.epoch,
                    });
                }
                pair.sync = *report;
            }
        }
        let host_changes = self.elect();
        self.mirrors = self.derive_mirrors();
        Ok(ApplyOutcome {
            epoch: self.epoch,
            host_changes,
        })
    }

    fn configure(&mut self, domain: &DomainSpec) -> Result<ApplyOutcome, StateError> {
        if self.is_configured() {
            if domain.fingerprint != self.domain.fingerprint {
                return Err(StateError::DomainMismatch {
                    expected: self.domain.fingerprint,
                    got: domain.fingerprint,
                });
            }
            // The same domain proposed by a second member: nothing to do.
            return Ok(ApplyOutcome {
                epoch: self.epoch,
                host_changes: Vec::new(),
            });
        }
        domain.check().map_err(StateError::BadDomain)?;
        self.install(domain.clone());
        Ok(ApplyOutcome {
            epoch: self.epoch,
            host_changes: Vec::new(),
        })
    }

    fn check_member(&self, member: MemberId) -> Result<(), StateError> {
        if member.index() < self.domain.members.len() {
            Ok(())
        } else {
            Err(StateError::UnknownMember(member))
        }
    }

    /// Block 74 as seen by everyone: the declared resources must exist,
    /// appear once, suit the member (witness, declared site, nbd address).
    /// Returns them in domain order so that equal sets compare equal.
    fn check_subgroups(
        &self,
        member: MemberId,
        subgroups: &[ResourceId],
    ) -> Result<Vec<ResourceId>, StateError> {
        let spec = &self.domain.members[member.index()];
        let mut seen = vec![false; self.domain.sites.len()];
        for resource in subgroups {
            let i = self.domain.resource_index(resource).ok_or_else(|| {
                StateError::UnknownResource {
                    member,
                    resource: resource.clone(),
                }
            })?;
            if std::mem::replace(&mut seen[i], true) {
                return Err(StateError::DuplicateResource {
                    member,
                    resource: resource.clone(),
                });
            }
            if spec.witness {
                return Err(StateError::WitnessWithResource {
                    member,
                    resource: resource.clone(),
                });
            }
            if let Some(site) = &spec.site {
                if &self.domain.sites[i].name != site {
                    return Err(StateError::SiteMismatch {
                        member,
                        site: site.clone(),
                        resource: resource.clone(),
                    });
                }
            }
            if i == 0 && spec.nbd.is_none() {
                return Err(StateError::CannotServe { member });
            }
        }
        Ok(self
            .domain
            .sites
            .iter()
            .zip(seen)
            .filter(|(_, s)| *s)
            .map(|(site, _)| site.resource.clone())
            .collect())
    }

    fn check_host_epoch(
        &self,
        member: MemberId,
        resource: &ResourceId,
        epoch: u64,
    ) -> Result<usize, StateError> {
        self.check_member(member)?;
        let (i, r) = self
            .resource(resource)
            .ok_or_else(|| StateError::UnknownResource {
                member,
                resource: resource.clone(),
            })?;
        if r.host != Some(member) {
            return Err(StateError::NotHost {
                member,
                resource: resource.clone(),
            });
        }
        if r.host_epoch != epoch {
            return Err(StateError::StaleEpoch {
                resource: resource.clone(),
                got: epoch,
                current: r.host_epoch,
            });
        }
        Ok(i)
    }
}
