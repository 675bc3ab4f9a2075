//! Identifiers shared by the recovery domain and the group state: members by
//! backup order, resources by the id written in their disk label, fingerprints.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A member, numbered by its place in the backup order (its index in the
/// recovery-domain file). Member 0 is first in the backup order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MemberId(pub u32);

impl MemberId {
    /// The Raft node id of this member: its backup-order index plus one, so
    /// that no member has node id 0.
    pub fn node_id(self) -> u64 {
        u64::from(self.0) + 1
    }

    /// The member whose Raft node id is `node_id`, or `None` for node id 0.
    pub fn from_node_id(node_id: u64) -> Option<MemberId> {
        let index = node_id.checked_sub(1)?;
        u32::try_from(index).ok().map(MemberId)
    }

    /// Index into the member tables of the recovery domain and group state.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "member #{}", self.0)
    }
}

/// The resource id written in a disk's label: the name by which the
/// recovery domain lists a resource (patent, Fig. 4A: "The list is of
/// resource identifiers, one identifier per resource").
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct ResourceId(pub String);

impl ResourceId {
    /// A resource id from its text.
    pub fn new(id: impl Into<String>) -> ResourceId {
        ResourceId(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ResourceId {
    fn from(s: &str) -> ResourceId {
        ResourceId(s.to_owned())
    }
}

/// SHA-256 of the canonical form of a recovery domain (secret excluded).
/// Members compare it so that nobody joins a group under a different file.
/// All zeroes means "no recovery domain yet".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Whether this is the all-zero value of an unconfigured state.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }
}

impl fmt::Display for Fingerprint {
    /// The first 8 bytes in hex: enough to tell two files apart in a message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_backup_index_plus_one() {
        assert_eq!(MemberId(0).node_id(), 1);
        assert_eq!(MemberId::from_node_id(4), Some(MemberId(3)));
        assert_eq!(MemberId::from_node_id(0), None);
    }
}
