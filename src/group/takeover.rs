//! Whether a disk may become the production disk: it must be the disk the
//! group last recorded for the production resource, at that generation or later.
//!
//! Every production host sends its disk's id and current data generation
//! (blocks 82–84) before it serves a write in that generation. A member
//! elected host of the production resource afterwards (a takeover, or a
//! restart) compares its own disk with that record before it writes to it:
//! a byte copy taken before the last generation began, or another disk
//! labelled with the same resource id, would otherwise be served as the
//! volume without the writes the group acknowledged since. DRBD refuses to
//! promote an Outdated disk for the same reason.

use serde::{Deserialize, Serialize};

use super::ids::MemberId;
use super::state::ReportedConfig;

/// A disk as its label describes it, as far as the rule needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskGenerations {
    /// The label's disk id (kept by a byte copy).
    pub disk_id: u64,
    /// The data generation the disk holds now.
    pub current: u64,
    /// Generations the disk moved on from: its bitmap generation and its
    /// history (0 = none).
    pub earlier: Vec<u64>,
}

/// Why a member refuses to become the production host on its disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TakeoverRefusal {
    /// The disk is not the one the group recorded: another disk id.
    OtherDisk {
        /// The host that sent the record.
        recorded_by: MemberId,
        /// The disk id recorded.
        recorded_disk_id: u64,
        /// This disk's id.
        disk_id: u64,
    },
    /// The disk is the recorded one (or a byte copy of it) but holds
    /// neither the recorded generation nor a later one: it is older, or was
    /// written on its own from an older one.
    Stale {
        /// The host that sent the record.
        recorded_by: MemberId,
        /// The generation recorded.
        recorded_generation: u64,
        /// The generation this disk holds.
        disk_generation: u64,
    },
}

/// The rule: accept when `disk` is the recorded disk and holds the recorded
/// generation or one after it (the recorded generation is its current one,
/// its bitmap generation, or in its history). A record of generation 0
/// (a disk that never held data) accepts any generation of the same disk.
pub fn check(recorded: &ReportedConfig, disk: &DiskGenerations) -> Result<(), TakeoverRefusal> {
    let want = recorded.config;
    if disk.disk_id != want.disk_id {
        return Err(TakeoverRefusal::OtherDisk {
            recorded_by: recorded.host,
            recorded_disk_id: want.disk_id,
            disk_id: disk.disk_id,
        });
    }
    let generation = want.label_generation;
    if generation == 0 || disk.current == generation || disk.earlier.contains(&generation) {
        return Ok(());
    }
    Err(TakeoverRefusal::Stale {
        recorded_by: recorded.host,
        recorded_generation: generation,
        disk_generation: disk.current,
    })
}

impl TakeoverRefusal {
    /// The host whose record the disk failed.
    pub fn recorded_by(&self) -> MemberId {
        match self {
            TakeoverRefusal::OtherDisk { recorded_by, .. }
            | TakeoverRefusal::Stale { recorded_by, .. } => *recorded_by,
        }
    }

    /// What is wrong with `member`'s disk for `resource`, and what to do,
    /// with members named by `name`.
    pub fn describe(
        &self,
        member: &str,
        resource: &str,
        name: impl Fn(MemberId) -> String,
    ) -> String {
        let by = name(self.recorded_by());
        let (what, wanted) = match *self {
            TakeoverRefusal::OtherDisk {
                recorded_disk_id,
                disk_id,
                ..
            } => (
                format!(
                    "{member}'s disk for {resource} is disk {disk_id:016x}, not disk \
                     {recorded_disk_id:016x} that {by} last served the volume from (another \
                     disk labelled with the same resource)"
                ),
                format!("disk {recorded_disk_id:016x}"),
            ),
            TakeoverRefusal::Stale {
                recorded_generation,
                disk_generation,
                ..
            } => (
                format!(
                    "{member}'s disk for {resource} holds data generation \
                     {disk_generation:016x}, neither generation {recorded_generation:016x} that \
                     {by} last served the volume in nor a later one (a stale copy, or one \
                     written on its own)"
                ),
                format!("generation {recorded_generation:016x}"),
            ),
        };
        format!(
            "{what}: it lacks writes the group acknowledged, so {member} will not serve it. \
             Bring back {by} or another member whose disk holds {wanted}, or make {member}'s \
             disk a byte copy of that disk and restart {member}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::ResourceConfig;

    const DISK_ID: u64 = 0xd15c;

    fn record(generation: u64) -> ReportedConfig {
        ReportedConfig {
            config: ResourceConfig {
                size_bytes: 1 << 30,
                block_size_bytes: 4096,
                label_generation: generation,
                disk_id: DISK_ID,
            },
            host: MemberId(0),
            epoch: 3,
        }
    }

    fn disk(disk_id: u64, current: u64, earlier: &[u64]) -> DiskGenerations {
        DiskGenerations {
            disk_id,
            current,
            earlier: earlier.to_vec(),
        }
    }

    #[test]
    fn the_recorded_disk_at_the_recorded_generation_takes_over() {
        assert_eq!(check(&record(7), &disk(DISK_ID, 7, &[0, 5, 0])), Ok(()));
    }

    #[test]
    fn the_recorded_disk_moved_past_the_recorded_generation_takes_over() {
        // Its host crashed after drawing a new generation, before sending
        // it: the recorded one is now its bitmap generation or in history.
        assert_eq!(check(&record(7), &disk(DISK_ID, 9, &[7, 0, 0])), Ok(()));
        assert_eq!(check(&record(7), &disk(DISK_ID, 11, &[9, 7, 5])), Ok(()));
    }

    #[test]
    fn a_copy_older_than_the_record_is_refused_naming_both_generations() {
        let r = check(&record(9), &disk(DISK_ID, 7, &[0, 5, 0]));
        assert_eq!(
            r,
            Err(TakeoverRefusal::Stale {
                recorded_by: MemberId(0),
                recorded_generation: 9,
                disk_generation: 7,
            })
        );
        let text = r
            .expect_err("refused")
            .describe("a2", "payroll-prod", |m| format!("a{}", m.0 + 1));
        assert!(text.contains("0000000000000009") && text.contains("0000000000000007"));
        assert!(text.contains("a1") && text.contains("a2") && text.contains("payroll-prod"));
    }

    #[test]
    fn a_copy_written_on_its_own_from_an_older_generation_is_refused() {
        // It moved on from 5, not from the recorded 9.
        let r = check(&record(9), &disk(DISK_ID, 12, &[5, 0, 0]));
        assert!(matches!(r, Err(TakeoverRefusal::Stale { .. })), "{r:?}");
    }

    #[test]
    fn another_disk_of_the_same_resource_is_refused_naming_both_ids() {
        // Even one whose generation happens to match.
        let r = check(&record(7), &disk(0xbeef, 7, &[]));
        assert_eq!(
            r,
            Err(TakeoverRefusal::OtherDisk {
                recorded_by: MemberId(0),
                recorded_disk_id: DISK_ID,
                disk_id: 0xbeef,
            })
        );
        let text = r
            .expect_err("refused")
            .describe("a2", "payroll-prod", |m| format!("a{}", m.0 + 1));
        assert!(text.contains(&format!("{DISK_ID:016x}")) && text.contains("000000000000beef"));
    }

    #[test]
    fn a_record_of_no_generation_accepts_the_same_disk_only() {
        assert_eq!(check(&record(0), &disk(DISK_ID, 3, &[])), Ok(()));
        assert!(check(&record(0), &disk(1, 3, &[])).is_err());
    }
}
