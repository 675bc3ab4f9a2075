//! Block 74 (Fig. 5 block 104): a member finds its subgroups by reading
//! the labels of its disks and matching them to the domain's resource ids.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::config::RecoveryDomain;
use crate::group::{MemberId, ResourceId};
use crate::storage::label::{Label, LabelError};

/// Why a member's disks keep it from joining: it is refused, nothing written.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The disk has no geomirror label.
    #[error("disk {path} has no geomirror label: format it with `geomirror format --group {group} --resource RESOURCE {path}`")]
    NotFormatted { path: String, group: String },
    /// The label belongs to another group.
    #[error("disk {path} is labelled for group {found:?}, not {group:?}: refusing to use it")]
    ForeignGroup {
        path: String,
        found: String,
        group: String,
    },
    /// The label names a resource this recovery domain does not list.
    #[error("disk {path} carries resource {resource:?}, which no site of group {group:?} lists (sites' resources: {known})")]
    UnknownResource {
        path: String,
        resource: String,
        group: String,
        known: String,
    },
    /// Two disks of this member carry the same resource.
    #[error("disks {first} and {second} both carry resource {resource:?}")]
    Duplicate {
        first: String,
        second: String,
        resource: String,
    },
    /// The label could not be read or is corrupt: never trusted.
    #[error("disk {path}")]
    Label {
        path: String,
        #[source]
        source: LabelError,
    },
}

/// The resources `me` can access, with the disk carrying each.
pub fn accessible(
    domain: &RecoveryDomain,
    me: MemberId,
) -> Result<BTreeMap<ResourceId, PathBuf>, ProbeError> {
    let mut found: BTreeMap<ResourceId, PathBuf> = BTreeMap::new();
    let Some(member) = domain.member(me) else {
        return Ok(found);
    };
    for disk in &member.disks {
        let path = disk.display().to_string();
        let label = match Label::read_path(disk) {
            Ok(l) => l,
            Err(LabelError::NotFormatted) => {
                return Err(ProbeError::NotFormatted {
                    path,
                    group: domain.group.clone(),
                })
            }
            Err(source) => return Err(ProbeError::Label { path, source }),
        };
        if label.group != domain.group {
            return Err(ProbeError::ForeignGroup {
                path,
                found: label.group,
                group: domain.group.clone(),
            });
        }
        let resource = ResourceId::new(label.resource.clone());
        if domain.site_of(&resource).is_none() {
            let known: Vec<&str> = domain.sites.iter().map(|s| s.resource.as_str()).collect();
            return Err(ProbeError::UnknownResource {
                path,
                resource: label.resource,
                group: domain.group.clone(),
                known: known.join(", "),
            });
        }
        if let Some(first) = found.get(&resource) {
            return Err(ProbeError::Duplicate {
                first: first.display().to_string(),
                second: path,
                resource: label.resource,
            });
        }
        found.insert(resource, disk.clone());
    }
    Ok(found)
}
