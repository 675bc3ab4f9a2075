//! Builds the status report from the replicated group state, the engine's
//! view and, on the production host, the copy links' live figures.

use crate::config::RecoveryDomain;
use crate::group::state::{GroupState, MemberStatus as GroupMemberStatus};
use crate::group::MemberId;
use crate::replication::CopyStats;

use super::copy_state::{copy_state_name, live_figures, reported_disk_failure};
use super::status::{MemberStatus, MirrorStatus, ResourceStatus, StatusReport};

/// What this member knows beyond the replicated state.
#[derive(Debug, Clone, Default)]
pub struct LocalView {
    pub leader: Option<MemberId>,
    pub quorum: bool,
    pub voters: usize,
    /// Live figures of the copy links, when this member is the production host.
    pub copies: Vec<CopyStats>,
    /// Why this production host refuses writes, while it does (quorum fence).
    pub writes_fenced: Option<String>,
    /// What this member waits for, while it starts without being a voter
    /// of the group yet (joining, founding, its first leader).
    pub joining: Option<String>,
}

/// How a member that is still entering the group starts its status warning.
pub const JOINING_WARNING: &str = "not in the group yet";

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
    if let Some(why) = &local.joining {
        warnings.push(format!("{JOINING_WARNING}: {why}"));
    }
    if local.voters == 2 {
        warnings.push(
            "only two voting members: if either is lost the group can decide nothing (Raft needs a majority); add a witness member (no disks)".into(),
        );
    }
    if !local.quorum {
        warnings.push("no quorum: group changes (joins, failover) wait until a majority of voters is reachable".into());
    }
    if let Some(why) = &local.writes_fenced {
        warnings.push(format!("writes fenced on {}: {why}", name(me)));
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
            disk_errno: None,
            disk_error: None,
            disk_offset: None,
        };
        if let Some(pair) = state.mirrors.iter().find(|p| p.resource == site.resource) {
            let to = name(pair.to);
            let live = local.copies.iter().find(|c| c.name == to);
            let rep = pair.sync;
            r.state = copy_state_name(rep.state).into();
            r.resynced_bytes = rep.resynced_bytes;
            r.bytes_to_go = rep.bytes_to_go;
            r.lag_bytes = rep.lag_bytes;
            r.rate_bytes_per_s = rep.rate_bytes_per_s as f64;
            r.eta_s = rep.eta_s.map(|s| s as f64);
            r.lag_s = rep.lag_ms as f64 / 1000.0;
            reported_disk_failure(&mut r, &rep);
            if let Some(c) = live {
                live_figures(&mut r, c, domain.mode);
            }
            if r.state == "DiskFailed" {
                let what = match (&r.disk_error, r.disk_offset) {
                    (Some(e), Some(at)) => format!("{e} at offset {at}"),
                    _ => "an error".into(),
                };
                warnings.push(format!(
                    "the copy disk of {} on {to} fails writes with {what}: free space or \
                     replace the disk; the copy resyncs when it accepts writes again \
                     (production keeps every write marked for it meanwhile)",
                    r.id
                ));
            }
            if r.state == "SplitBrain" {
                warnings.push(format!(
                    "split brain on {}: {} and {to} both wrote while apart; nothing is synced \
                     until one side's writes are given up (stop {to}, run `geomirror label \
                     --discard-data` on its disk, start it: a full sync follows)",
                    r.id,
                    name(pair.from),
                ));
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
                        other => kebab_case(other),
                    },
                },
            });
        } else if i > 0 && host.is_some() {
            r.state = "Outdated".into();
        }
        if i == 0 && local.writes_fenced.is_some() {
            // Only the fenced host itself knows: the others show the
            // replicated view (it may even have been replaced by now).
            r.state = "Fenced".into();
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

/// A state name as the mirroring list spells it: `SplitBrain` becomes
/// `split-brain`, the one spelling `status --wait-sync` looks for.
fn kebab_case(state: &str) -> String {
    let mut out = String::with_capacity(state.len() + 4);
    for (i, ch) in state.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::{CopyState, GroupCommand, ResourceId, SyncReport};

    const DOMAIN: &str = r#"
group = "payroll"
mode = "async"
secret = "s"
[[site]]
name = "prod"
resource = "payroll-prod"
[[site]]
name = "dr"
resource = "payroll-dr"
[[member]]
name = "a1"
address = "127.0.0.1:1"
disks = ["/p"]
nbd = "unix:/run/p.sock"
[[member]]
name = "b1"
address = "127.0.0.1:2"
disks = ["/d"]
[[member]]
name = "w1"
address = "127.0.0.1:3"
"#;

    /// a1 hosts production and mirrors to b1; a1 then reports `report`.
    fn mirrored(report: SyncReport) -> (RecoveryDomain, GroupState) {
        let d = RecoveryDomain::from_toml_str(DOMAIN).expect("domain");
        let mut s = GroupState::new(&d);
        let fp = s.domain.fingerprint;
        for (m, r) in [(0, "payroll-prod"), (1, "payroll-dr")] {
            s.apply(&GroupCommand::Join {
                member: MemberId(m),
                subgroups: vec![ResourceId::from(r)],
                fingerprint: fp,
            })
            .expect("join");
        }
        // Both hosts sent their configuration (blocks 80-84): the pair
        // is no longer waiting for it.
        for (m, r) in [(0, "payroll-prod"), (1, "payroll-dr")] {
            let epoch = s
                .resource(&ResourceId::from(r))
                .expect("resource")
                .1
                .host_epoch;
            s.apply(&GroupCommand::ResourceConfig {
                member: MemberId(m),
                resource: ResourceId::from(r),
                epoch,
                config: crate::group::ResourceConfig {
                    size_bytes: 1 << 30,
                    block_size_bytes: 4096,
                    label_generation: 1,
                    disk_id: 1,
                },
            })
            .expect("configuration");
        }
        let epoch = s.mirrors.first().expect("a mirroring pair").epoch;
        s.apply(&GroupCommand::SyncProgress {
            member: MemberId(0),
            resource: ResourceId::from("payroll-dr"),
            epoch,
            report,
        })
        .expect("progress");
        (d, s)
    }

    #[test]
    fn a_member_without_the_links_shows_resync_progress_rate_and_eta_from_the_group() {
        let (d, s) = mirrored(SyncReport {
            state: CopyState::Resyncing,
            resynced_bytes: 1 << 20,
            bytes_to_go: 3 << 20,
            rate_bytes_per_s: 1 << 20,
            eta_s: Some(3),
            ..SyncReport::default()
        });
        let r = build(&d, MemberId(2), &s, &LocalView::default());
        let copy = &r.resources[1];
        assert_eq!(copy.state, "Inconsistent");
        assert_eq!((copy.resynced_bytes, copy.bytes_to_go), (1 << 20, 3 << 20));
        assert_eq!(copy.rate_bytes_per_s, (1 << 20) as f64);
        assert_eq!(copy.eta_s, Some(3.0));
        let text = r.to_text();
        assert!(
            text.contains("25.0%") && text.contains("1.0 MiB/s") && text.contains("eta 3s"),
            "{text}"
        );
    }

    #[test]
    fn a_member_without_the_links_shows_up_to_date_and_async_lag_from_the_group() {
        let (d, s) = mirrored(SyncReport {
            state: CopyState::UpToDate,
            ..SyncReport::default()
        });
        let r = build(&d, MemberId(1), &s, &LocalView::default());
        assert_eq!(r.resources[1].state, "UpToDate");

        let (d, s) = mirrored(SyncReport {
            state: CopyState::Lagging,
            lag_bytes: 64 << 10,
            lag_ms: 1500,
            ..SyncReport::default()
        });
        let r = build(&d, MemberId(2), &s, &LocalView::default());
        assert_eq!(
            (r.resources[1].lag_bytes, r.resources[1].lag_s),
            (64 << 10, 1.5)
        );
        assert!(
            r.to_text().contains("lag 64.0 KiB (1.5s)"),
            "{}",
            r.to_text()
        );
    }

    #[test]
    fn a_split_brain_is_shown_on_every_member_with_how_to_resolve_it() {
        let (d, s) = mirrored(SyncReport {
            state: CopyState::SplitBrain,
            ..SyncReport::default()
        });
        let r = build(&d, MemberId(2), &s, &LocalView::default());
        assert_eq!(r.resources[1].state, "SplitBrain");
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("split brain on payroll-dr") && w.contains("--discard-data")),
            "{:?}",
            r.warnings
        );
        // The spelling `status --wait-sync` stops waiting on (cmd/status.rs).
        assert_eq!(r.mirroring[0].state, "split-brain");
        assert!(
            r.to_text().contains("a1 -> b1  payroll-dr  split-brain"),
            "{}",
            r.to_text()
        );
    }

    #[test]
    fn a_copy_disk_that_fails_writes_is_shown_with_its_errno_offset_and_what_to_do() {
        let (d, s) = mirrored(SyncReport {
            state: CopyState::DiskFailed,
            resynced_bytes: 64 << 20,
            bytes_to_go: 192 << 20,
            disk_errno: Some(libc::ENOSPC),
            disk_offset: Some(104_857_600),
            ..SyncReport::default()
        });
        let r = build(&d, MemberId(2), &s, &LocalView::default());
        let copy = &r.resources[1];
        assert_eq!(copy.state, "DiskFailed");
        assert_eq!(
            (
                copy.disk_errno,
                copy.disk_error.as_deref(),
                copy.disk_offset
            ),
            (Some(libc::ENOSPC), Some("ENOSPC"), Some(104_857_600))
        );
        assert_eq!(r.mirroring[0].state, "disk-failed");
        assert!(
            r.warnings.iter().any(|w| w.contains(
                "the copy disk of payroll-dr on b1 fails writes with ENOSPC at offset 104857600: \
                 free space or replace the disk; the copy resyncs when it accepts writes again"
            )),
            "{:?}",
            r.warnings
        );
        let text = r.to_text();
        assert!(
            text.contains("DiskFailed")
                && text.contains("disk fails writes: ENOSPC at offset 104857600"),
            "{text}"
        );
        assert!(!text.contains("eta"), "not a sync in progress: {text}");
    }

    #[test]
    fn a_fenced_production_host_shows_fenced_and_why() {
        let (d, s) = mirrored(SyncReport::default());
        let local = LocalView {
            writes_fenced: Some("no quorum".into()),
            ..LocalView::default()
        };
        let r = build(&d, MemberId(0), &s, &local);
        assert_eq!(r.resources[0].state, "Fenced");
        assert!(r
            .warnings
            .iter()
            .any(|w| w.contains("writes fenced on a1: no quorum")));
        assert!(r.to_text().contains("Fenced"), "{}", r.to_text());
    }
}
