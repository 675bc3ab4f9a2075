//! Host election and mirroring pairs: who hosts each resource and who
//! mirrors to whom, recomputed by every member after every command.

use super::command::ResourceConfig;
use super::ids::MemberId;
use super::state::{GroupState, HostChange, MemberStatus, MirrorPair};
use serde::{Deserialize, Serialize};

/// Why a mirroring pair does not carry data yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PairBlocked {
    /// The production host has not sent its configuration (block 84).
    ProductionConfigMissing,
    /// The copy host has not sent its configuration (block 84).
    CopyConfigMissing,
    /// The copy disk cannot hold the production data.
    CopyTooSmall {
        /// Data size of the copy disk.
        copy_bytes: u64,
        /// Data size of the production disk.
        production_bytes: u64,
    },
}

impl GroupState {
    /// Host election, run after every command so that every member computes
    /// it from the same ordered messages (Fig. 4A block 76, Fig. 5 block 104).
    /// A live host keeps its resource; a resource without a live host goes to
    /// the first joined member of its subgroup in backup order. Any change
    /// grows the epoch once.
    pub(super) fn elect(&mut self) -> Vec<HostChange> {
        let mut changes = Vec::new();
        for (i, site) in self.domain.sites.iter().enumerate() {
            let in_subgroup = |m: MemberId| {
                let st = &self.members[m.index()];
                st.status == MemberStatus::Joined && st.subgroups.contains(&site.resource)
            };
            let current = self.resources[i].host;
            let next = current
                .filter(|&h| in_subgroup(h))
                .or_else(|| self.domain.member_ids().find(|&m| in_subgroup(m)));
            if next != current {
                changes.push((i, current, next));
            }
        }
        if changes.is_empty() {
            return Vec::new();
        }
        self.epoch += 1;
        changes
            .into_iter()
            .map(|(i, from, to)| {
                self.resources[i].host = to;
                self.resources[i].host_epoch = self.epoch;
                HostChange {
                    resource: self.domain.sites[i].resource.clone(),
                    from,
                    to,
                }
            })
            .collect()
    }

    /// The mirroring pairs the hosts imply (blocks 86–96, Fig. 5 blocks
    /// 112–120): from the production host to the host of every copy
    /// resource that has one; none without a production host. A pair that
    /// already existed keeps its sync report.
    pub fn derive_mirrors(&self) -> Vec<MirrorPair> {
        let Some(prod) = self.resources.first() else {
            return Vec::new();
        };
        let Some(from) = prod.host else {
            return Vec::new();
        };
        let mut pairs = Vec::new();
        for (site, r) in self.domain.sites.iter().zip(&self.resources).skip(1) {
            let Some(to) = r.host else { continue };
            let epoch = prod.host_epoch.max(r.host_epoch);
            let sync = self
                .mirrors
                .iter()
                .find(|p| p.resource == site.resource && p.from == from && p.to == to)
                .filter(|p| p.epoch == epoch)
                .map(|p| p.sync)
                .unwrap_or_default();
            pairs.push(MirrorPair {
                resource: site.resource.clone(),
                from,
                to,
                epoch,
                sync,
            });
        }
        pairs
    }

    /// The configuration of resource `index` as sent by its current host
    /// under its current host epoch; `None` while that host has not sent it.
    pub fn current_config(&self, index: usize) -> Option<ResourceConfig> {
        let r = self.resources.get(index)?;
        r.config
            .filter(|c| Some(c.host) == r.host && c.epoch == r.host_epoch)
            .map(|c| c.config)
    }

    /// Whether `pair` may carry data: both hosts have sent their
    /// configuration (blocks 82–84 come before 86–96) and the copy disk
    /// is at least as large as the production disk.
    pub fn pair_blocked(&self, pair: &MirrorPair) -> Option<PairBlocked> {
        let Some(production) = self.current_config(0) else {
            return Some(PairBlocked::ProductionConfigMissing);
        };
        let copy = self
            .domain
            .resource_index(&pair.resource)
            .and_then(|i| self.current_config(i));
        let Some(copy) = copy else {
            return Some(PairBlocked::CopyConfigMissing);
        };
        if copy.size_bytes < production.size_bytes {
            return Some(PairBlocked::CopyTooSmall {
                copy_bytes: copy.size_bytes,
                production_bytes: production.size_bytes,
            });
        }
        None
    }
}
