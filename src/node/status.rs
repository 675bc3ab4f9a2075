//! What `geomirror status` reports: the group as one member sees it, in a
//! stable JSON shape and as a table for people.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

use crate::units::format_size;

/// The whole report, as `status --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub group: String,
    /// The member that answered.
    pub member: String,
    pub epoch: u64,
    /// Name of the current Raft leader, if one is known.
    pub leader: Option<String>,
    /// Whether a majority of the voters is reachable (nothing can be decided otherwise).
    pub quorum: bool,
    /// Things a person should act on (e.g. "two voters: add a witness").
    pub warnings: Vec<String>,
    pub members: Vec<MemberStatus>,
    pub resources: Vec<ResourceStatus>,
    pub mirroring: Vec<MirrorStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub name: String,
    /// `joined`, `left`, `failed` or `absent`.
    pub state: String,
    /// Resource ids whose subgroup this member is in.
    pub subgroups: Vec<String>,
    /// Resource ids this member hosts.
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceStatus {
    pub id: String,
    pub site: String,
    /// `production` or `copy`.
    pub role: String,
    pub host: Option<String>,
    /// For the production disk `UpToDate` when hosted, `Fenced` (on its host)
    /// while the host refuses writes for lack of quorum; for a copy its sync
    /// state: `Inconsistent` while syncing, `UpToDate`, `Outdated`, `SplitBrain`,
    /// `DiskFailed` (its disk fails writes: see `disk_errno`), …
    pub state: String,
    pub size_bytes: Option<u64>,
    /// Bytes moved by the current or last resync.
    pub resynced_bytes: u64,
    /// Bytes the current resync still has to move.
    pub bytes_to_go: u64,
    pub rate_bytes_per_s: f64,
    pub eta_s: Option<f64>,
    /// Async mode: bytes written on production and not yet acknowledged by this copy.
    pub lag_bytes: u64,
    pub lag_s: f64,
    /// `DiskFailed`: the errno the copy's disk answered (28 for ENOSPC) ...
    #[serde(default)]
    pub disk_errno: Option<i32>,
    /// ... its name (`ENOSPC`) ...
    #[serde(default)]
    pub disk_error: Option<String>,
    /// ... and where on the copy disk the failed request was.
    #[serde(default)]
    pub disk_offset: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MirrorStatus {
    pub from: String,
    pub to: String,
    pub resource: String,
    /// `starting`, `syncing`, `mirroring`, `disconnected`, `split-brain`,
    /// `disk-failed`, … (the copy's state in kebab case otherwise).
    pub state: String,
}

impl StatusReport {
    /// The table `geomirror status` prints.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let leader = self.leader.as_deref().unwrap_or("none");
        let _ = writeln!(
            s,
            "group {}  epoch {}  leader {}  quorum {}  (answered by {})",
            self.group,
            self.epoch,
            leader,
            if self.quorum { "yes" } else { "NO" },
            self.member
        );
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        let _ = writeln!(s, "\nMEMBER       STATE    SUBGROUPS                HOSTS");
        for m in &self.members {
            let _ = writeln!(
                s,
                "{:<12} {:<8} {:<24} {}",
                m.name,
                m.state,
                dash_if_empty(&m.subgroups.join(",")),
                dash_if_empty(&m.hosts.join(","))
            );
        }
        let _ = writeln!(
            s,
            "\nRESOURCE         SITE     ROLE        HOST     STATE         SYNC"
        );
        for r in &self.resources {
            let _ = writeln!(
                s,
                "{:<16} {:<8} {:<11} {:<8} {:<13} {}",
                r.id,
                r.site,
                r.role,
                r.host.as_deref().unwrap_or("-"),
                r.state,
                sync_column(r)
            );
        }
        if !self.mirroring.is_empty() {
            let _ = writeln!(s, "\nMIRRORING");
            for m in &self.mirroring {
                let _ = writeln!(s, "{} -> {}  {}  {}", m.from, m.to, m.resource, m.state);
            }
        }
        s
    }
}

fn dash_if_empty(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn sync_column(r: &ResourceStatus) -> String {
    if let (Some(error), Some(offset)) = (&r.disk_error, r.disk_offset) {
        // Not a sync in progress: the copy waits for its disk.
        format!("disk fails writes: {error} at offset {offset}")
    } else if r.bytes_to_go > 0 {
        let total = r.resynced_bytes + r.bytes_to_go;
        let pct = 100.0 * r.resynced_bytes as f64 / total.max(1) as f64;
        let eta = r.eta_s.map(|e| format!(" eta {e:.0}s")).unwrap_or_default();
        format!(
            "{pct:.1}% ({} of {}) at {}/s{eta}",
            format_size(r.resynced_bytes),
            format_size(total),
            format_size(r.rate_bytes_per_s as u64)
        )
    } else if r.lag_bytes > 0 {
        format!("lag {} ({:.1}s)", format_size(r.lag_bytes), r.lag_s)
    } else if r.resynced_bytes > 0 {
        format!("last resync {}", format_size(r.resynced_bytes))
    } else {
        "-".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> StatusReport {
        StatusReport {
            group: "payroll".into(),
            member: "a1".into(),
            epoch: 3,
            leader: Some("a1".into()),
            quorum: true,
            warnings: vec![],
            members: vec![MemberStatus {
                name: "a1".into(),
                state: "joined".into(),
                subgroups: vec!["payroll-prod".into()],
                hosts: vec!["payroll-prod".into()],
            }],
            resources: vec![ResourceStatus {
                id: "payroll-dr".into(),
                site: "dr".into(),
                role: "copy".into(),
                host: Some("b1".into()),
                state: "Inconsistent".into(),
                size_bytes: Some(1 << 30),
                resynced_bytes: 1 << 29,
                bytes_to_go: 1 << 29,
                rate_bytes_per_s: 100e6,
                eta_s: Some(5.0),
                lag_bytes: 0,
                lag_s: 0.0,
                disk_errno: None,
                disk_error: None,
                disk_offset: None,
            }],
            mirroring: vec![MirrorStatus {
                from: "a1".into(),
                to: "b1".into(),
                resource: "payroll-dr".into(),
                state: "syncing".into(),
            }],
        }
    }

    #[test]
    fn json_round_trips_with_the_documented_field_names() {
        let r = report();
        let j = serde_json::to_value(&r).expect("serialise");
        for key in ["epoch", "leader", "members", "resources", "mirroring"] {
            assert!(j.get(key).is_some(), "missing {key}");
        }
        assert_eq!(j["resources"][0]["resynced_bytes"], 1u64 << 29);
        let back: StatusReport = serde_json::from_value(j).expect("parse");
        assert_eq!(back, r);
    }

    #[test]
    fn text_shows_sync_progress_and_a_missing_quorum() {
        let mut r = report();
        assert!(r.to_text().contains("50.0%"));
        r.quorum = false;
        assert!(r.to_text().contains("quorum NO"));
    }
}
