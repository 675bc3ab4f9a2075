//! Host election and mirroring pairs: who hosts each resource and who
//! mirrors to whom, recomputed by every member after every command.

use super::ids::MemberId;
use super::state::{GroupState, HostChange, MemberStatus, MirrorPair};

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
}
