//! Mutual authentication with the recovery domain's secret: HMAC-SHA256
//! challenge-response in both directions, before any data or bitmap.
//!
//! ```text
//! copy  → prod: Challenge { Nc }                       (fresh random)
//! prod  → copy: Auth { epoch, Np, HMAC(k, "prod" | Nc | Np | epoch) }
//! copy  → prod: Welcome { epoch, HMAC(k, "copy" | Np | Nc | epoch), generations, size }
//! ```
//! Each MAC is tagged with the role of its author, so an answer computed
//! by one side can never be replayed as the other's; a production host
//! that hands the copy's own challenge back (`Np == Nc`) is refused.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::error::ReplicationError;

type HmacSha256 = Hmac<Sha256>;

/// Who computed a MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Production,
    Copy,
}

impl Role {
    fn tag(self) -> &'static [u8] {
        match self {
            Role::Production => b"geomirror-replication-production",
            Role::Copy => b"geomirror-replication-copy",
        }
    }
}

/// A fresh random challenge.
pub fn nonce() -> [u8; 32] {
    rand::random()
}

/// The MAC `role` sends over `theirs` (the challenge it answers), `mine`
/// (its own challenge) and the epoch it speaks for.
pub fn mac(secret: &[u8], role: Role, theirs: &[u8; 32], mine: &[u8; 32], epoch: u64) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    m.update(role.tag());
    m.update(theirs);
    m.update(mine);
    m.update(&epoch.to_le_bytes());
    m.finalize().into_bytes().into()
}

/// Check a MAC received from `role`, in constant time.
pub fn verify(
    secret: &[u8],
    role: Role,
    theirs: &[u8; 32],
    mine: &[u8; 32],
    epoch: u64,
    got: &[u8; 32],
) -> Result<(), ReplicationError> {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    m.update(role.tag());
    m.update(theirs);
    m.update(mine);
    m.update(&epoch.to_le_bytes());
    m.verify_slice(got).map_err(|_| ReplicationError::BadMac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_of_one_role_does_not_verify_as_the_other() {
        let (a, b) = (nonce(), nonce());
        let m = mac(b"s", Role::Copy, &a, &b, 1);
        assert!(verify(b"s", Role::Copy, &a, &b, 1, &m).is_ok());
        assert!(verify(b"s", Role::Production, &a, &b, 1, &m).is_err());
        assert!(verify(b"t", Role::Copy, &a, &b, 1, &m).is_err());
        assert!(verify(b"s", Role::Copy, &a, &b, 2, &m).is_err());
    }
}
