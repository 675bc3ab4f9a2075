//! Builds the status report from the replicated group state, the engine's
//! view and, on the production host, the copy links' live figures.

use crate::config::RecoveryDomain;
use crate::group::state::{GroupState, MemberStatus as GroupMemberStatus};
use crate::group::{CopyState, MemberId};
use crate::replication::CopyStats;

use super::status::{MemberStatus, MirrorStatus, ResourceStatus, StatusReport};

/// What this member knows beyond the replicated state.
#[derive(Debug, Clone, Default)]
pub struct LocalView {
    pub leader: Option<MemberId>,
    pub quorum: bool,
    pub voters: usize,
    /// Live figures of the copy links, when this member is the production host.
    pub copies: Vec<CopyStats>,
}

pub fn build(
    domain: &RecoveryDomain,
    me: MemberId,
    state: &GroupState,
    local: &LocalView,
) -> StatusReport {
    let name = |id: MemberId| {
        domain
            .member(id)
            .map(|m| m.name.clone())
            .unwrap_or_else(|| format!("#{}", id.0))
    };
    let mut warnings = Vec::new();
    if local.voters == 2 {
        warnings.push(
            "only two voting members: if either is lost the group can decide nothing (Raft needs a majority); add a witness member (no disks)".into(),
        );
    }
    if !local.quorum {
        warnings.push("no quorum: group changes (joins, failover) wait until a majority of voters is reachable".into());
    }
    let members = domain
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let id = MemberId(i as u32);
            let st = state.status(id);
            MemberStatus {
                name: m.name.clone(),
                state: match st {
                    GroupMemberStatus::Joined => "joined",
                    GroupMemberStatus::Left => "left",
                    GroupMemberStatus::Failed => "failed",
                    GroupMemberStatus::Absent => "absent",
                }
                .into(),
                subgroups: state
                    .subgroups(id)
                    .iter()
                    .map(|r| r.as_str().to_string())
                    .collect(),
                hosts: state
                    .hosted_by(id)
                    .iter()
                    .map(|r| r.as_str().to_string())
                    .collect(),
            }
        })
        .collect();
    let mut resources = Vec::new();
    let mut mirroring = Vec::new();
    for (i, site) in domain.sites.iter().enumerate() {
        let host = state.host(&site.resource);
        let size = state.current_config(i).map(|c| c.size_bytes);
        let mut r = ResourceStatus {
            id: site.resource.as_str().to_string(),
            site: site.name.clone(),
            role: if i == 0 { "production" } else { "copy" }.into(),
            host: host.map(name),
            state: if host.is_some() {
                "UpToDate"
            } else {
                "Unhosted"
            }
            .into(),
            size_bytes: size,
            resynced_bytes: 0,
            bytes_to_go: 0,
            rate_bytes_per_s: 0.0,
            eta_s: None,
            lag_bytes: 0,
            lag_s: 0.0,
        };
        if let Some(pair) = state.mirrors.iter().find(|p| p.resource == site.resource) {
            let to = name(pair.to);
            let live = local.copies.iter().find(|c| c.name == to);
            let rep = pair.sync;
            r.state = copy_state_name(rep.state).into();
            r.resynced_bytes = rep.resynced_bytes;
            r.bytes_to_go = rep.bytes_to_go;
            r.lag_bytes = rep.lag_bytes;
            if let Some(c) = live {
                r.state = link_state_name(c).into();
                r.resynced_bytes = c.resynced_bytes;
                r.bytes_to_go = c.resync_bytes_to_go;
                r.rate_bytes_per_s = c.resync_rate_bytes_per_s;
                r.eta_s = c.resync_eta_s;
                r.lag_bytes = c.lag_bytes;
                r.lag_s = c.lag_s;
            }
            mirroring.push(MirrorStatus {
                from: name(pair.from),
                to,
                resource: pair.resource.as_str().to_string(),
                state: match state.pair_blocked(pair) {
                    Some(_) => "waiting-for-configuration".into(),
                    None => match r.state.as_str() {
                        "Inconsistent" | "SyncSource" => "syncing".into(),
                        "UpToDate" | "Lagging" => "mirroring".into(),
                        "Unknown" => "starting".into(),
                        other => other.to_ascii_lowercase(),
                    },
                },
            });
        } else if i > 0 && host.is_some() {
            r.state = "Outdated".into();
        }
        resources.push(r);
    }
    StatusReport {
        group: domain.group.clone(),
        member: name(me),
        epoch: state.epoch,
        leader: local.leader.map(name),
        quorum: local.quorum,
        warnings,
        members,
        resources,
        mirroring,
    }
}

/// The name status shows for a copy state reported through the group.
pub fn copy_state_name(s: CopyState) -> &'static str {
    match s {
        CopyState::Unknown => "Unknown",
        CopyState::Inconsistent | CopyState::Resyncing => "Inconsistent",
        CopyState::UpToDate => "UpToDate",
        CopyState::Lagging => "Lagging",
        CopyState::SplitBrain => "SplitBrain",
        CopyState::Failed => "Disconnected",
    }
}

fn link_state_name(c: &CopyStats) -> &'static str {
    use crate::replication::LinkState;
    match c.state {
        LinkState::Disconnected => "Disconnected",
        LinkState::Inconsistent => "Inconsistent",
        LinkState::UpToDate if c.lag_bytes > 0 => "Lagging",
        LinkState::UpToDate => "UpToDate",
        LinkState::SplitBrain => "SplitBrain",
        LinkState::Refused => "Refused",
        LinkState::Stopped => "Stopped",
    }
}

/// The report the production host replicates for a copy link.
pub fn sync_report(c: &CopyStats) -> crate::group::SyncReport {
    use crate::replication::LinkState;
    let state = match c.state {
        LinkState::Disconnected | LinkState::Refused | LinkState::Stopped => CopyState::Failed,
        LinkState::Inconsistent => CopyState::Resyncing,
        LinkState::UpToDate if c.lag_bytes > 0 => CopyState::Lagging,
        LinkState::UpToDate => CopyState::UpToDate,
        LinkState::SplitBrain => CopyState::SplitBrain,
    };
    crate::group::SyncReport {
        state,
        resynced_bytes: c.resynced_bytes,
        bytes_to_go: c.resync_bytes_to_go,
        lag_bytes: c.lag_bytes,
    }
}
