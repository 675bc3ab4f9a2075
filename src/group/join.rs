//! The join protocol as a pure function: `step(state, me, event)` returns
//! the actions member `me` takes; each step cites its block of the patent.
//!
//! The node feeds it events (start, every committed command, a lost disk,
//! a lost peer, shutdown) and executes the actions. Ordering is the
//! engine's job: proposals come back as committed commands, applied by
//! every member in the same order, and only then turn into roles.

use super::command::{GroupCommand, ResourceConfig};
use super::desired::Desired;
use super::domain::DomainSpec;
use super::ids::{MemberId, ResourceId};
use super::state::{GroupState, MemberStatus, ReportedConfig};
use super::takeover::TakeoverRefusal;
use crate::config::NbdAddress;
use serde::{Deserialize, Serialize};

/// Something that happened to member `me`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The member process started (once per process, after its replica
    /// has applied the committed log, so that it sees its earlier
    /// incarnation if the group still lists one). Block 74: it has read
    /// the labels of its disks; `accessible` lists the resource ids found.
    /// `domain` is its own recovery-domain file.
    Started {
        /// Resource ids read from the labels of this member's disks.
        accessible: Vec<ResourceId>,
        /// This member's recovery domain.
        domain: DomainSpec,
    },
    /// A command was applied to the state; `running` is what this member
    /// runs now (the `Desired` it last acted on).
    Committed {
        /// What the member is running.
        running: Desired,
    },
    /// A disk this member could access failed or lost its label.
    DiskLost {
        /// Its resource.
        resource: ResourceId,
    },
    /// Elected host of `resource` under `epoch`, this member found its disk
    /// is not the one the group recorded, or older ([`super::takeover`]):
    /// lost for this resource, with the reason kept in the state.
    TakeoverRefused {
        /// The resource.
        resource: ResourceId,
        /// The host epoch it was elected under.
        epoch: u64,
        /// Why the disk was refused.
        refusal: TakeoverRefusal,
    },
    /// This member (the engine leader) lost contact with `member`.
    MemberLost {
        /// The silent member.
        member: MemberId,
    },
    /// The operator asked this member to leave the group.
    Stopping,
}

/// Something member `me` must do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Propose a command to the group engine.
    Propose(GroupCommand),
    /// Open the disk of `resource` for I/O, under exclusive lock: this
    /// member hosts it from host epoch `epoch` (block 76). For the
    /// production resource, `recorded` is the configuration the group last
    /// recorded: a disk that does not match it is refused, not written.
    OpenDisk {
        /// The resource.
        resource: ResourceId,
        /// Host epoch.
        epoch: u64,
        /// What the disk must match ([`super::takeover::check`]).
        recorded: Option<ReportedConfig>,
    },
    /// Close the disk of `resource`: this member no longer hosts it.
    CloseDisk {
        /// The resource.
        resource: ResourceId,
    },
    /// Read the configuration of hosted `resource` from its disk and
    /// propose `GroupCommand::ResourceConfig` with `epoch` (blocks 82–84).
    SendConfig {
        /// The resource.
        resource: ResourceId,
        /// Host epoch to propose it under.
        epoch: u64,
    },
    /// This member backs up `resource`; its host `from` has not sent the
    /// configuration yet (blocks 78–80).
    AwaitConfig {
        /// The resource.
        resource: ResourceId,
        /// Its host.
        from: MemberId,
    },
    /// The configuration of backed-up `resource`, as its host sent it
    /// (block 80: "J receives resource configuration data").
    ApplyConfig {
        /// The resource.
        resource: ResourceId,
        /// Its host.
        from: MemberId,
        /// The configuration.
        config: ResourceConfig,
    },
    /// As copy host of `resource`, accept mirrored writes from production
    /// host `from` carrying `epoch`, and refuse older epochs (blocks 88, 114).
    ExpectMirroring {
        /// The copy resource.
        resource: ResourceId,
        /// The production host.
        from: MemberId,
        /// Epoch of the pair.
        epoch: u64,
    },
    /// Stop accepting mirrored writes for `resource` from `from`.
    StopExpecting {
        /// The copy resource.
        resource: ResourceId,
        /// The former production host.
        from: MemberId,
    },
    /// As production host, mirror every write to the copy host `to` of
    /// `resource`, stamped with `epoch` (blocks 92–96, 118–120).
    StartMirroring {
        /// The copy resource.
        resource: ResourceId,
        /// Its host.
        to: MemberId,
        /// Epoch of the pair.
        epoch: u64,
    },
    /// Stop mirroring to `to` for `resource`.
    StopMirroring {
        /// The copy resource.
        resource: ResourceId,
        /// The former copy host.
        to: MemberId,
    },
    /// As production host, serve the volume over NBD at `address`.
    ServeVolume {
        /// Where to listen.
        address: NbdAddress,
        /// Production host epoch.
        epoch: u64,
    },
    /// Stop serving the volume.
    StopServing,
}

/// One step of the join protocol for member `me`.
pub fn step(state: &GroupState, me: MemberId, event: Event) -> Vec<Action> {
    match event {
        Event::Started { accessible, domain } => started(state, me, &accessible, domain),
        Event::Committed { running } => {
            let mut out = Desired::of(state, me).actions_from(&running);
            // Declared failed while alive (a partition that healed): join
            // again with the same subgroups, as a backup (block 72).
            if state.status(me) == MemberStatus::Failed {
                out.push(Action::Propose(GroupCommand::Join {
                    member: me,
                    subgroups: state.subgroups(me).to_vec(),
                    fingerprint: state.domain.fingerprint,
                }));
            }
            out
        }
        Event::DiskLost { resource } => {
            if !state.is_joined(me) || !state.subgroups(me).contains(&resource) {
                return Vec::new();
            }
            // Re-declare the subgroups without the lost resource (block 76);
            // election hands the resource to the next member in backup order.
            let subgroups = state
                .subgroups(me)
                .iter()
                .filter(|r| **r != resource)
                .cloned()
                .collect();
            vec![Action::Propose(GroupCommand::Join {
                member: me,
                subgroups,
                fingerprint: state.domain.fingerprint,
            })]
        }
        Event::TakeoverRefused {
            resource,
            epoch,
            refusal,
        } => {
            if !state.is_joined(me) || state.host(&resource) != Some(me) {
                return Vec::new();
            }
            vec![Action::Propose(GroupCommand::TakeoverRefused {
                member: me,
                resource,
                epoch,
                refusal,
            })]
        }
        Event::MemberLost { member } if member != me && state.is_joined(member) => {
            vec![Action::Propose(GroupCommand::Fail { member })]
        }
        Event::MemberLost { .. } => Vec::new(),
        Event::Stopping if state.is_joined(me) => {
            vec![Action::Propose(GroupCommand::Leave { member: me })]
        }
        Event::Stopping => Vec::new(),
    }
}

/// Blocks 72–76 (Fig. 5 blocks 102–104).
fn started(
    state: &GroupState,
    me: MemberId,
    accessible: &[ResourceId],
    domain: DomainSpec,
) -> Vec<Action> {
    let mut out = Vec::new();
    let fingerprint = domain.fingerprint;
    // Block 74: iterate through the domain's resource ids and keep those
    // whose disk this member found, in domain order.
    let subgroups: Vec<ResourceId> = domain
        .sites
        .iter()
        .map(|s| &s.resource)
        .filter(|r| accessible.contains(r))
        .cloned()
        .collect();
    // Block 72: "if J is the first member of the group, then J uses its copy
    // of the group state": an empty state is seeded from our own file.
    if !state.is_configured() {
        out.push(Action::Propose(GroupCommand::Configure { domain }));
    } else if state.is_joined(me) {
        // The state still holds our previous incarnation: leave first so
        // its roles (and their epochs) end before we hold any again.
        out.push(Action::Propose(GroupCommand::Leave { member: me }));
    }
    // Block 76: one ordered message declaring every subgroup.
    out.push(Action::Propose(GroupCommand::Join {
        member: me,
        subgroups,
        fingerprint,
    }));
    out
}
