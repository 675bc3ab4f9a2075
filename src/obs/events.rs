//! What happened to the group, as typed events derived from two successive
//! group states, and their one-JSON-object-per-line form.
//!
//! Like `drbdsetup events2`, a subscriber first gets the current state as
//! events ([`snapshot_events`]: the diff from an empty state) and then each
//! change. Field names are part of the interface: tools parse these lines.

use super::time::now_rfc3339;
use super::Role;
use crate::group::{CopyState, GroupState, MemberId, MemberStatus, MirrorPair};
use serde::{Deserialize, Serialize};

/// One thing that happened. Serialised with its kind in the `kind` field
/// (kebab-case) and its fields beside it; members by name, resources by id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Event {
    /// The recovery domain was installed: the group exists.
    Configure {
        /// Group name.
        group: String,
    },
    /// A member joined with the subgroups it can access (Fig. 4A block 76).
    Join {
        /// The member.
        member: String,
        /// Resource ids it declared.
        subgroups: Vec<String>,
    },
    /// A joined member declared another set of subgroups.
    Subgroups {
        /// The member.
        member: String,
        /// Resource ids it declares now.
        subgroups: Vec<String>,
    },
    /// A member left in an orderly way.
    Leave {
        /// The member.
        member: String,
    },
    /// The failure detector declared a member failed.
    Fail {
        /// The member.
        member: String,
    },
    /// A resource got another host (or lost its host), under a new epoch.
    HostChange {
        /// The resource.
        resource: String,
        /// `production` or `copy`: which kind of host changed.
        role: Role,
        /// The host before, if any.
        from: Option<String>,
        /// The host now, if any.
        to: Option<String>,
        /// The epoch the new host holds the resource under.
        epoch: u64,
    },
    /// The production host starts mirroring to a copy host (blocks 86–96).
    MirroringStart {
        /// The copy resource.
        resource: String,
        /// The production host.
        from: String,
        /// The copy host.
        to: String,
        /// Epoch of the pair: replication messages carry it.
        epoch: u64,
    },
    /// A mirroring pair ended (a host changed, left or failed).
    MirroringStop {
        /// The copy resource.
        resource: String,
        /// The production host.
        from: String,
        /// The copy host.
        to: String,
        /// Epoch of the pair that ended.
        epoch: u64,
    },
    /// A copy's sync state changed, as the production host reported it.
    SyncState {
        /// The copy resource.
        resource: String,
        /// The copy host.
        to: String,
        /// The state before.
        old: CopyState,
        /// The state now.
        state: CopyState,
    },
    /// Both sides of a pair were written independently: an operator must choose.
    SplitBrain {
        /// The copy resource.
        resource: String,
        /// The production host.
        from: String,
        /// The copy host.
        to: String,
    },
    /// A copy's disk fails writes (ENOSPC on a thin or sparse disk, EIO):
    /// the production host retries it with a backoff and keeps marking
    /// every write for it. Sent when this starts and when the errno changes.
    CopyDiskFailed {
        /// The copy resource.
        resource: String,
        /// The copy host.
        member: String,
        /// The errno its disk answered.
        errno: i32,
        /// Its name (`ENOSPC`).
        error: String,
        /// Where on the copy disk the failed request was.
        offset: u64,
    },
    /// Not a group event: this production host refuses writes (EIO) because
    /// the group has had no quorum for longer than the grace period.
    WritesFenced {
        /// The production host.
        member: String,
        /// Why, for people.
        reason: String,
    },
    /// Not a group event: quorum is back and this member still hosts
    /// production, so writes are acknowledged again.
    WritesResumed {
        /// The production host.
        member: String,
    },
    /// Not a group event: this subscriber fell behind and `missed` events
    /// were dropped for it; its picture may be stale until the next snapshot.
    Lagged {
        /// How many events it missed.
        missed: u64,
    },
}

/// An event as sent to subscribers: the time it was published, then the event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLine {
    /// RFC 3339 UTC with milliseconds.
    pub time: String,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

impl EventLine {
    /// `event` stamped with the current time.
    pub fn now(event: Event) -> EventLine {
        EventLine {
            time: now_rfc3339(),
            event,
        }
    }

    /// The JSON object, without the newline.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}

/// The current state as events: what a new subscriber needs before changes.
pub fn snapshot_events(state: &GroupState) -> Vec<Event> {
    diff_events(&GroupState::default(), state)
}

/// The events that lead from `old` to `new` (two states applied in order,
/// not necessarily adjacent). Pure: no clock, no I/O. Order: configure,
/// membership, mirroring stops, host changes, mirroring starts, sync states.
pub fn diff_events(old: &GroupState, new: &GroupState) -> Vec<Event> {
    let mut events = Vec::new();
    if !old.is_configured() && new.is_configured() {
        events.push(Event::Configure {
            group: new.domain.group.clone(),
        });
    }
    let name = |id: MemberId| member_name(new, id);
    for id in new.domain.member_ids() {
        let (before, now) = (old.status(id), new.status(id));
        let subgroups = || ids(new.subgroups(id));
        match (before == MemberStatus::Joined, now) {
            (false, MemberStatus::Joined) => events.push(Event::Join {
                member: name(id),
                subgroups: subgroups(),
            }),
            (true, MemberStatus::Joined) if old.subgroups(id) != new.subgroups(id) => {
                events.push(Event::Subgroups {
                    member: name(id),
                    subgroups: subgroups(),
                });
            }
            (true, MemberStatus::Left) => events.push(Event::Leave { member: name(id) }),
            (true, MemberStatus::Failed) => events.push(Event::Fail { member: name(id) }),
            _ => {}
        }
    }
    for pair in old.mirrors.iter().filter(|p| find_pair(new, p).is_none()) {
        events.push(Event::MirroringStop {
            resource: pair.resource.to_string(),
            from: member_name(old, pair.from),
            to: member_name(old, pair.to),
            epoch: pair.epoch,
        });
    }
    for (i, (site, r)) in new.domain.sites.iter().zip(&new.resources).enumerate() {
        let before = old.resource(&site.resource).and_then(|(_, r)| r.host);
        if before != r.host {
            events.push(Event::HostChange {
                resource: site.resource.to_string(),
                role: Role::of_resource_index(i),
                from: before.map(|m| member_name(old, m)),
                to: r.host.map(name),
                epoch: r.host_epoch,
            });
        }
    }
    for pair in &new.mirrors {
        let before = find_pair(old, pair);
        if before.is_none() {
            events.push(Event::MirroringStart {
                resource: pair.resource.to_string(),
                from: name(pair.from),
                to: name(pair.to),
                epoch: pair.epoch,
            });
        }
        let old_state = before.map_or(CopyState::Unknown, |p| p.sync.state);
        if old_state != pair.sync.state {
            events.push(Event::SyncState {
                resource: pair.resource.to_string(),
                to: name(pair.to),
                old: old_state,
                state: pair.sync.state,
            });
            if pair.sync.state == CopyState::SplitBrain {
                events.push(Event::SplitBrain {
                    resource: pair.resource.to_string(),
                    from: name(pair.from),
                    to: name(pair.to),
                });
            }
        }
        let old_errno = before
            .filter(|p| p.sync.state == CopyState::DiskFailed)
            .and_then(|p| p.sync.disk_errno);
        if pair.sync.state == CopyState::DiskFailed && pair.sync.disk_errno != old_errno {
            let errno = pair.sync.disk_errno.unwrap_or(libc::EIO);
            events.push(Event::CopyDiskFailed {
                resource: pair.resource.to_string(),
                member: name(pair.to),
                errno,
                error: crate::replication::errno_name(errno),
                offset: pair.sync.disk_offset.unwrap_or(0),
            });
        }
    }
    events
}

/// The same pair (resource, both hosts, epoch) in `state`.
fn find_pair<'a>(state: &'a GroupState, pair: &MirrorPair) -> Option<&'a MirrorPair> {
    state.mirrors.iter().find(|p| {
        p.resource == pair.resource
            && p.from == pair.from
            && p.to == pair.to
            && p.epoch == pair.epoch
    })
}

fn member_name(state: &GroupState, id: MemberId) -> String {
    state
        .domain
        .member(id)
        .map_or_else(|| id.to_string(), |m| m.name.clone())
}

fn ids(resources: &[crate::group::ResourceId]) -> Vec<String> {
    resources.iter().map(ToString::to_string).collect()
}
