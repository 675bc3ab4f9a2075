//! The ordered messages of the group (`GroupCommand`) and the data they
//! carry: a resource's configuration and a copy's sync report.

use super::domain::DomainSpec;
use super::ids::{Fingerprint, MemberId, ResourceId};
use super::takeover::TakeoverRefusal;
use serde::{Deserialize, Serialize};

/// Configuration of a resource as its host reads it from the disk and sends
/// it to its subgroup (Fig. 4A blocks 82–84: "the number of disk units, the
/// unit addresses, the types of disk units"; here size, block size, label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ResourceConfig {
    /// Usable data size of the disk, below its label.
    pub size_bytes: u64,
    /// Block size the disk is addressed in.
    pub block_size_bytes: u32,
    /// Current data generation written in the disk's label. A production
    /// host sends it after starting its run's generation and before it
    /// serves, so the group always knows the generation writes land in.
    pub label_generation: u64,
    /// Id the disk's label was given when it was formatted: which disk
    /// this is (a byte copy carries the same id).
    pub disk_id: u64,
}

impl ResourceConfig {
    /// Largest block size we accept.
    pub const BLOCK_SIZE_BYTES_MAX: u32 = 65536;

    /// Checks that the numbers describe a usable disk.
    pub fn check(&self) -> Result<(), String> {
        let bs = self.block_size_bytes;
        if !bs.is_power_of_two() || !(512..=Self::BLOCK_SIZE_BYTES_MAX).contains(&bs) {
            return Err(format!(
                "block size {bs} is not a power of two from 512 to {}",
                Self::BLOCK_SIZE_BYTES_MAX
            ));
        }
        if self.size_bytes == 0 || self.size_bytes % u64::from(bs) != 0 {
            return Err(format!(
                "size {} is not a positive multiple of the block size {bs}",
                self.size_bytes
            ));
        }
        Ok(())
    }
}

/// Where a copy stands relative to production, as the production host sees
/// it. Open for more states as replication grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CopyState {
    /// Nothing reported yet for this mirroring pair.
    #[default]
    Unknown,
    /// The copy's content cannot be trusted; a full resync is needed.
    Inconsistent,
    /// Blocks are being copied from production to bring the copy up to date.
    Resyncing,
    /// Every acknowledged write is on the copy.
    UpToDate,
    /// Async mode: the copy is behind by at most the window.
    Lagging,
    /// Both sides were written independently; an operator must choose.
    SplitBrain,
    /// Mirroring to this copy failed; the production host keeps a bitmap.
    Failed,
    /// The copy's disk fails writes (`disk_errno` at `disk_offset`): it is
    /// retried with a backoff; the production host keeps a bitmap.
    DiskFailed,
}

/// A copy's sync state with its progress counters, filled in by the
/// production host and replicated so every member can display it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SyncReport {
    /// State of the copy.
    pub state: CopyState,
    /// Bytes copied by the current resync.
    pub resynced_bytes: u64,
    /// Bytes the current resync still has to copy.
    pub bytes_to_go: u64,
    /// Async mode: bytes written on production and not yet acknowledged.
    pub lag_bytes: u64,
    /// Rate of the current resync, so members other than the production
    /// host can show it.
    #[serde(default)]
    pub rate_bytes_per_s: u64,
    /// Expected seconds until the current resync ends, when it moves.
    #[serde(default)]
    pub eta_s: Option<u64>,
    /// Async mode: age of the oldest unacknowledged write, in milliseconds.
    #[serde(default)]
    pub lag_ms: u64,
    /// `DiskFailed`: the errno the copy's disk answered.
    #[serde(default)]
    pub disk_errno: Option<i32>,
    /// `DiskFailed`: where on the copy disk the failed request was.
    #[serde(default)]
    pub disk_offset: Option<u64>,
}

/// One ordered message of the group. Every member applies the same
/// commands in the same order (the engine's log), so every member computes
/// the same hosts and mirroring pairs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupCommand {
    /// Install the recovery domain into a fresh state. The first one
    /// committed wins; a later one must carry the same fingerprint.
    Configure {
        /// The domain, from the proposer's file.
        domain: DomainSpec,
    },
    /// Fig. 4A blocks 72/76: `member` joins and declares, in one ordered
    /// message, the subgroups (resources) it can access. From a member
    /// already joined, it re-declares its subgroups.
    Join {
        /// The joining member.
        member: MemberId,
        /// Resources whose disks it found by their labels (block 74).
        subgroups: Vec<ResourceId>,
        /// Fingerprint of the joiner's recovery-domain file.
        fingerprint: Fingerprint,
    },
    /// `member` leaves the group in an orderly way; its resources pass on.
    Leave {
        /// The leaving member.
        member: MemberId,
    },
    /// The leader's failure detector declares `member` failed.
    Fail {
        /// The failed member.
        member: MemberId,
    },
    /// Fig. 4A blocks 82–84: the host sends its resource's configuration to
    /// the subgroup.
    ResourceConfig {
        /// The host sending it.
        member: MemberId,
        /// The resource it hosts.
        resource: ResourceId,
        /// The host epoch it believes it holds the resource under.
        epoch: u64,
        /// The configuration read from the disk.
        config: ResourceConfig,
    },
    /// Progress of a copy, reported by the production host.
    SyncProgress {
        /// The production host.
        member: MemberId,
        /// The copy resource.
        resource: ResourceId,
        /// Epoch of the mirroring pair reported on.
        epoch: u64,
        /// The report.
        report: SyncReport,
    },
    /// The host of `resource` under `epoch` refuses its disk: it is not
    /// the disk the group last recorded for the resource, or it is older
    /// (see [`super::takeover`]). Like a lost disk, the member leaves the
    /// resource's subgroup and the next member of the site is elected; the
    /// state keeps why, for status, until the member declares the resource
    /// again.
    TakeoverRefused {
        /// The refusing host.
        member: MemberId,
        /// The resource it would have hosted.
        resource: ResourceId,
        /// The host epoch it was elected under.
        epoch: u64,
        /// Why.
        refusal: TakeoverRefusal,
    },
}
