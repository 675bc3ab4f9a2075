//! Why the group state refused a command. A refused command changes
//! nothing; every member refuses it the same way, with the same reason.

use super::ids::{Fingerprint, MemberId, ResourceId};

/// The reason a [`GroupCommand`](super::command::GroupCommand) was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The state has no recovery domain yet: only `Configure` applies.
    #[error("the group has no recovery domain yet")]
    NotConfigured,
    /// A `Configure` carried a malformed domain.
    #[error("recovery domain refused: {0}")]
    BadDomain(String),
    /// The member number is not in the recovery domain.
    #[error("{0} is not in the recovery domain")]
    UnknownMember(MemberId),
    /// The command's recovery domain differs from the group's.
    #[error("{member} has recovery domain {got}, the group has {expected}")]
    FingerprintMismatch {
        /// The proposer.
        member: MemberId,
        /// The group's fingerprint.
        expected: Fingerprint,
        /// The proposer's fingerprint.
        got: Fingerprint,
    },
    /// A `Configure` carried another domain than the one installed.
    #[error("recovery domain {got} differs from the group's {expected}")]
    DomainMismatch {
        /// The group's fingerprint.
        expected: Fingerprint,
        /// The proposed domain's fingerprint.
        got: Fingerprint,
    },
    /// A member declared a resource the recovery domain does not list.
    #[error("{member} declares resource {resource:?}, which is not in the recovery domain")]
    UnknownResource {
        /// The member.
        member: MemberId,
        /// The resource.
        resource: ResourceId,
    },
    /// A member declared the same resource twice in one join.
    #[error("{member} declares resource {resource:?} twice")]
    DuplicateResource {
        /// The member.
        member: MemberId,
        /// The resource.
        resource: ResourceId,
    },
    /// A witness (no disks) declared a resource.
    #[error("{member} is a witness (no disks) yet declares resource {resource:?}")]
    WitnessWithResource {
        /// The member.
        member: MemberId,
        /// The resource.
        resource: ResourceId,
    },
    /// A member's disks carry a resource of another site than it declares.
    #[error("{member} declares site {site:?} but its disks carry {resource:?} of another site")]
    SiteMismatch {
        /// The member.
        member: MemberId,
        /// Its declared site.
        site: String,
        /// The resource of another site.
        resource: ResourceId,
    },
    /// A member without an `nbd` address declared the production resource:
    /// it could become production host and not serve the volume.
    #[error("{member} can access the production resource but has no nbd address to serve it")]
    CannotServe {
        /// The member.
        member: MemberId,
    },
    /// The member is not joined, so it cannot leave, fail or report.
    #[error("{0} is not joined")]
    NotJoined(MemberId),
    /// Only a resource's host may send its configuration.
    #[error("{member} does not host {resource:?}")]
    NotHost {
        /// The sender.
        member: MemberId,
        /// The resource.
        resource: ResourceId,
    },
    /// The command names an epoch that is no longer current.
    #[error("{resource:?}: epoch {got} is stale (current {current})")]
    StaleEpoch {
        /// The resource.
        resource: ResourceId,
        /// The epoch in the command.
        got: u64,
        /// The current epoch for it.
        current: u64,
    },
    /// A resource configuration with impossible numbers.
    #[error("{resource:?}: bad configuration: {reason}")]
    BadConfig {
        /// The resource.
        resource: ResourceId,
        /// What is wrong.
        reason: String,
    },
    /// A sync report for a resource that has no mirroring pair.
    #[error("{resource:?} is not being mirrored to")]
    NoMirror {
        /// The resource.
        resource: ResourceId,
    },
}
