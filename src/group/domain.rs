//! The part of the recovery domain that the group state replicates: names,
//! sites, backup order and NBD addresses (no secret, no local disk paths).

use super::ids::{Fingerprint, MemberId, ResourceId};
use crate::config::{Mode, NbdAddress, RecoveryDomain, Site, MEMBERS_MAX, SITES_MAX};
use serde::{Deserialize, Serialize};

/// A member as the group state knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSpec {
    /// Member name.
    pub name: String,
    /// `HOST:PORT` of its group engine and replication listener.
    pub address: String,
    /// Where it serves the volume while it hosts production.
    pub nbd: Option<NbdAddress>,
    /// Declared site, checked against the subgroups it joins with.
    pub site: Option<String>,
    /// True when it has no disks: it votes and never hosts.
    pub witness: bool,
}

/// The replicated recovery domain (patent, Fig. 5: "a recovery domain, which
/// is the group state information ... has a list of all the members of the
/// CRG, along with the backup order").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DomainSpec {
    /// Group name.
    pub group: String,
    /// Replication mode.
    pub mode: Mode,
    /// Async window per copy host.
    pub async_window_bytes: u64,
    /// Fingerprint of the whole file this was taken from.
    pub fingerprint: Fingerprint,
    /// Sites; `sites[0]` holds the production resource.
    pub sites: Vec<Site>,
    /// Members in backup order.
    pub members: Vec<MemberSpec>,
}

impl From<&RecoveryDomain> for DomainSpec {
    fn from(d: &RecoveryDomain) -> DomainSpec {
        DomainSpec {
            group: d.group.clone(),
            mode: d.mode,
            async_window_bytes: d.async_window_bytes,
            fingerprint: d.fingerprint(),
            sites: d.sites.clone(),
            members: d
                .members
                .iter()
                .map(|m| MemberSpec {
                    name: m.name.clone(),
                    address: m.address.clone(),
                    nbd: m.nbd.clone(),
                    site: m.site.clone(),
                    witness: m.is_witness(),
                })
                .collect(),
        }
    }
}

impl DomainSpec {
    /// Structural checks for a spec that arrived in a command rather than
    /// from a validated file: bounds, at least one site, unique resources,
    /// declared sites that exist.
    pub fn check(&self) -> Result<(), String> {
        if self.fingerprint.is_zero() {
            return Err("fingerprint is zero".into());
        }
        if self.sites.is_empty() || self.sites.len() > SITES_MAX {
            return Err(format!(
                "{} sites (1 to {SITES_MAX} allowed)",
                self.sites.len()
            ));
        }
        if self.members.is_empty() || self.members.len() > MEMBERS_MAX {
            return Err(format!(
                "{} members (1 to {MEMBERS_MAX} allowed)",
                self.members.len()
            ));
        }
        for (i, s) in self.sites.iter().enumerate() {
            if self.sites[..i].iter().any(|t| t.resource == s.resource) {
                return Err(format!("resource {} listed twice", s.resource));
            }
        }
        for m in &self.members {
            if let Some(site) = &m.site {
                if !self.sites.iter().any(|s| &s.name == site) {
                    return Err(format!("member {} declares unknown site {site}", m.name));
                }
            }
        }
        Ok(())
    }

    /// Index of `resource` among the sites (0 = production).
    pub fn resource_index(&self, resource: &ResourceId) -> Option<usize> {
        self.sites.iter().position(|s| &s.resource == resource)
    }

    /// The production resource id, if configured.
    pub fn production(&self) -> Option<&ResourceId> {
        self.sites.first().map(|s| &s.resource)
    }

    /// The spec of member `id`.
    pub fn member(&self, id: MemberId) -> Option<&MemberSpec> {
        self.members.get(id.index())
    }

    /// All member ids in backup order.
    pub fn member_ids(&self) -> impl Iterator<Item = MemberId> + '_ {
        (0..self.members.len()).map(|i| MemberId(i as u32))
    }
}
