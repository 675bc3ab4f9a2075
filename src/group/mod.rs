//! The primary-backup group: replicated state, the join protocol as pure
//! code, and the openraft engine that orders state changes on every member.
//!
//! # Vocabulary
//!
//! A *group* is one mirrored volume. Its *recovery domain* ([`GroupState`],
//! seeded from [`crate::config::RecoveryDomain`]) is replicated on every
//! member. A *resource* is a disk carrying a label with its [`ResourceId`];
//! a *subgroup* (a *site*) is the set of members that can access one disk;
//! the *host* is the one member that opens it for I/O. The *group primary*
//! is the host of the production resource (the *production host*); the
//! host of a copy resource is its *copy host*.
//!
//! # Where each block of the patent lives
//!
//! The patent's join routine (Figs. 4A/4B, N resources; Fig. 5, the
//! two-site case) runs on the joining member. Here every decision it makes
//! is a function of the ordered messages, so it is split in two:
//! [`state::GroupState::apply`] (what every member computes identically from
//! the committed commands) and [`join::step`] (what one member does about it).
//!
//! | block | what | here |
//! | --- | --- | --- |
//! | 72 / 102 | join; the first member uses its own copy of the group state | [`join::step`] on `Started`: proposes `Configure` into an empty state, then `Join` |
//! | 74 / 104 | find the subgroups: iterate the domain's resource ids, keep those the member can access | `Started { accessible }` filtered in domain order; checked by `apply` (unknown, twice, witness, declared site) |
//! | 76 | add J to its subgroups, one message; a member that owns a resource hosts it | `GroupCommand::Join`; host election in `GroupState::apply` (first joined member of the subgroup in backup order; a live host keeps its resource) |
//! | 78–80 / 106–108 | for each accessible resource J does not host: receive its configuration from its host | [`desired::Desired::backing`] → `Action::AwaitConfig` / `Action::ApplyConfig` |
//! | 82–84 / 110 | for each resource J hosts: send its configuration to the subgroup | `Action::SendConfig` → `GroupCommand::ResourceConfig`, accepted only from the host under its current epoch; a production host's disk is first checked against the last one recorded ([`takeover`]), and it serves only once its own is committed |
//! | 86–88 / 112–116 | J hosts a copy: the group primary, if hosting, starts mirroring to J | `GroupState::derive_mirrors`; once both configurations are in (`GroupState::pair_blocked`), `Action::ExpectMirroring` on the copy host |
//! | 92–96 / 118–122 | J is the group primary: for each copy subgroup with a host, start mirroring to it | `Action::StartMirroring` on the production host, `Action::ServeVolume` |
//!
//! Fig. 5 is the two-site case of the same code: one site per member, the
//! group primary hosts the production copy and the lowest-numbered joined
//! backup at the copy site hosts the mirror copy. "Should the copy site host
//! later join the group, mirroring will be initiated at that later time"
//! follows from deriving the pairs after every command.
//!
//! Failover, which the patent leaves to a companion application, is the
//! same election run after `Leave` or `Fail`: the next joined member of the
//! subgroup in backup order takes the resource, and the group `epoch`
//! grows, so replication refuses writes from a host that lost its role.
//!
//! # Layout
//!
//! - [`ids`]: member, resource and fingerprint identifiers.
//! - [`domain`]: the replicated part of the recovery-domain file.
//! - [`command`]: the ordered messages and what they carry.
//! - [`state`]: `GroupState` and its pure, deterministic `apply`.
//! - [`election`]: host election and mirroring pairs, run inside `apply`,
//!   and whether a pair may carry data yet.
//! - [`error`]: why a command was refused.
//! - [`takeover`]: whether a disk may become the production disk, from the
//!   configuration the group recorded for it.
//! - [`desired`]: one member's roles read off the state, and the diff to
//!   the actions that reach them.
//! - [`join`]: events in, actions out.
//! - [`engine`]: the openraft glue that orders the commands.

pub mod command;
pub mod desired;
pub mod domain;
pub mod election;
pub mod engine;
pub mod error;
pub use crate::ids;
pub mod join;
mod replicated;
pub mod state;
pub mod takeover;

pub use command::{CopyState, GroupCommand, ResourceConfig, SyncReport};
pub use desired::Desired;
pub use domain::DomainSpec;
pub use election::PairBlocked;
pub use error::StateError;
pub use ids::{Fingerprint, MemberId, ResourceId};
pub use join::{step, Action, Event};
pub use state::{ApplyOutcome, GroupState, MemberStatus, MirrorPair};
pub use takeover::TakeoverRefusal;
