//! The recovery-domain file (TOML), identical on every member: group name,
//! replication mode, sites with their resource ids, and members in backup order.
//!
//! The file is the patent's recovery domain as a person writes it (Fig. 5:
//! "a user will typically enter the site and the associated members for
//! that site, the backup order, and which member should be the primary";
//! here the group primary follows from the backup order and who joined).
//! It is parsed into `raw` structs, then `validate`d into a
//! [`RecoveryDomain`] whose every field has been checked; all problems
//! found are reported at once.

mod raw;
mod validate;

use crate::ids::{Fingerprint, MemberId, ResourceId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};

/// Largest recovery-domain file we read: a group of [`MEMBERS_MAX`] members
/// fits in a few kilobytes, so anything bigger is not one.
pub const FILE_BYTES_MAX: u64 = 1 << 20;
/// Most members in one group (Raft voters and witnesses included).
pub const MEMBERS_MAX: usize = 64;
/// Most sites (resources) in one group: one production and the copies.
pub const SITES_MAX: usize = 16;
/// Most disks one member may list.
pub const DISKS_PER_MEMBER_MAX: usize = 16;
/// Longest group, site or member name, and longest resource id, in bytes.
pub const NAME_BYTES_MAX: usize = 64;
/// Default bound on unacknowledged bytes per copy host in async mode.
pub const ASYNC_WINDOW_BYTES_DEFAULT: u64 = 64 << 20;
/// Smallest async window: one 4096-byte page.
pub const ASYNC_WINDOW_BYTES_MIN: u64 = 4096;
/// Largest async window.
pub const ASYNC_WINDOW_BYTES_MAX: u64 = 16 << 30;
/// Default write lease of the production host (see `check_lease_timing`):
/// an ordinary election (a new leader within the 1–2 s election timeout)
/// ends before a lease renewed just ahead of it runs out, so elections
/// alone never stop the production host's writes.
pub const LEASE_MS_DEFAULT: u64 = 3_000;
/// Default time after which the leader declares a silent member failed.
pub const FAIL_TIMEOUT_MS_DEFAULT: u64 = LEASE_MS_DEFAULT + 1_000;
/// Shortest lease: four engine heartbeats (100 ms each), since it is
/// renewed every quarter lease.
pub const LEASE_MS_MIN: u64 = 400;
/// Longest lease: past a minute a production host cut off from the group
/// blocks its volume's failover for that long.
pub const LEASE_MS_MAX: u64 = 60_000;
/// Longest failure timeout.
pub const FAIL_TIMEOUT_MS_MAX: u64 = 3_600_000;
/// What the failure timeout must exceed the lease by. The leader measures
/// the failure timeout on its clock from when a lease request reached it;
/// the production host measures its lease on its own clock from when it
/// sent the request, and answers a write only after checking the lease.
/// The margin covers the rate difference of the two monotonic clocks
/// (NTP slews them by at most 0.05 %: under 2 ms over a minute's lease)
/// and the time from that check to the reply leaving the host (a thread
/// descheduled on a loaded host: tens of ms, rarely hundreds).
pub const LEASE_MARGIN_MS: u64 = 500;

/// Refuses a lease and failure timeout that would let the group move
/// production while the old production host may still acknowledge writes.
pub fn check_lease_timing(lease_ms: u64, fail_timeout_ms: u64) -> Result<(), String> {
    let least_ms = lease_ms.checked_add(LEASE_MARGIN_MS);
    if least_ms.is_none_or(|least| fail_timeout_ms < least) {
        return Err(format!(
            "the failure timeout ({fail_timeout_ms} ms) must be at least the lease \
             ({lease_ms} ms) plus {LEASE_MARGIN_MS} ms: otherwise the group could move \
             production while the old production host still holds its lease and \
             acknowledges writes"
        ));
    }
    Ok(())
}

/// How the production host replicates writes to copy hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A write completes once every joined copy host has it on disk.
    #[default]
    Sync,
    /// A write completes once the production disk has it; copies follow
    /// within `async_window_bytes`.
    Async,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Sync => "sync",
            Mode::Async => "async",
        })
    }
}

/// Where a member serves the volume over NBD while it hosts production.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NbdAddress {
    /// A unix socket (`unix:/run/geomirror/x.sock`).
    Unix(PathBuf),
    /// A TCP `HOST:PORT` (written `HOST:PORT` or `tcp:HOST:PORT`).
    Tcp(String),
}

impl fmt::Display for NbdAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NbdAddress::Unix(p) => write!(f, "unix:{}", p.display()),
            NbdAddress::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// One site: the members that can access one disk, named by its resource id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    /// Site name, e.g. `prod`, `dr`.
    pub name: String,
    /// Resource id written in the label of this site's disk.
    pub resource: ResourceId,
}

/// One member, in backup order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Member name, unique in the group.
    pub name: String,
    /// `HOST:PORT` of the group engine and replication listener.
    pub address: String,
    /// Disks this member may open; their labels say which resource each
    /// carries (Fig. 4A block 74). Empty for a witness.
    pub disks: Vec<PathBuf>,
    /// Where this member serves the volume while it hosts production.
    pub nbd: Option<NbdAddress>,
    /// `HOST:PORT` of the metrics endpoint, if any.
    pub metrics: Option<String>,
    /// Declared site; when absent the site is derived at join time from the
    /// labels of the member's disks. When present, the join checks it.
    pub site: Option<String>,
}

impl Member {
    /// A member with no disks: it votes in the group engine and never hosts.
    pub fn is_witness(&self) -> bool {
        self.disks.is_empty()
    }
}

/// A validated recovery domain. Build it with [`RecoveryDomain::load`] or
/// [`RecoveryDomain::from_toml_str`]; every field has passed its checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryDomain {
    /// Group (volume) name, fit for a file name.
    pub group: String,
    /// Replication mode.
    pub mode: Mode,
    /// Shared secret authenticating members to each other.
    pub secret: String,
    /// Async mode: most unacknowledged bytes per copy host.
    pub async_window_bytes: u64,
    /// How long a majority's confirmation lets the production host
    /// acknowledge writes. Left out of the serialized form (and so of the
    /// fingerprint) at its default, so that files without it keep theirs.
    #[serde(
        default = "lease_ms_default",
        skip_serializing_if = "is_lease_ms_default"
    )]
    pub lease_ms: u64,
    /// A member silent for longer is declared failed by the leader; at
    /// least `lease_ms` + [`LEASE_MARGIN_MS`]. Left out at its default too.
    #[serde(
        default = "fail_timeout_ms_default",
        skip_serializing_if = "is_fail_timeout_ms_default"
    )]
    pub fail_timeout_ms: u64,
    /// Sites; the first holds the production copy.
    pub sites: Vec<Site>,
    /// Members in backup order: `MemberId(i)` is `members[i]`.
    pub members: Vec<Member>,
}

fn lease_ms_default() -> u64 {
    LEASE_MS_DEFAULT
}

fn is_lease_ms_default(ms: &u64) -> bool {
    *ms == LEASE_MS_DEFAULT
}

fn fail_timeout_ms_default() -> u64 {
    FAIL_TIMEOUT_MS_DEFAULT
}

fn is_fail_timeout_ms_default(ms: &u64) -> bool {
    *ms == FAIL_TIMEOUT_MS_DEFAULT
}

/// One thing wrong with one field of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The field, as a path into the file: `member[2].address`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Why a recovery domain could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read recovery domain {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// The file is larger than [`FILE_BYTES_MAX`].
    #[error(
        "recovery domain {path} is {size_bytes} bytes, more than the {FILE_BYTES_MAX} allowed"
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size_bytes: u64,
    },
    /// The text is not TOML of the expected shape (this includes unknown
    /// fields and missing required fields; the message names them).
    #[error("recovery domain is not valid TOML: {0}")]
    Syntax(String),
    /// The file parsed but some fields are wrong; every problem is listed.
    #[error("invalid recovery domain: {}", list(.0))]
    Invalid(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    let texts: Vec<String> = problems.iter().map(Problem::to_string).collect();
    texts.join("; ")
}

impl RecoveryDomain {
    /// Reads, parses and validates the recovery domain at `path`.
    pub fn load(path: &Path) -> Result<RecoveryDomain, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let size_bytes = std::fs::metadata(path).map_err(read_err)?.len();
        if size_bytes > FILE_BYTES_MAX {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
                size_bytes,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        RecoveryDomain::from_toml_str(&text)
    }

    /// Parses and validates a recovery domain from TOML text.
    pub fn from_toml_str(text: &str) -> Result<RecoveryDomain, ConfigError> {
        if text.len() as u64 > FILE_BYTES_MAX {
            return Err(ConfigError::Syntax(format!(
                "text is {} bytes, more than the {FILE_BYTES_MAX} allowed",
                text.len()
            )));
        }
        let raw: raw::RawDomain =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        validate::validate(raw).map_err(ConfigError::Invalid)
    }

    /// A stable digest of everything in the file except the secret: two
    /// members whose files differ in any field that matters (names, order,
    /// addresses, disks, mode) get different fingerprints. The secret is left
    /// out so that the fingerprint, which travels in join messages, says
    /// nothing about it.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut canonical = self.clone();
        canonical.secret.clear();
        // serde_json writes struct fields in declaration order and vectors in
        // order, so the same domain always gives the same bytes.
        let bytes = serde_json::to_vec(&canonical)
            .expect("a recovery domain holds only strings, numbers and lists");
        Fingerprint(Sha256::digest(&bytes).into())
    }

    /// The member named `name`.
    pub fn member_id(&self, name: &str) -> Option<MemberId> {
        let index = self.members.iter().position(|m| m.name == name)?;
        u32::try_from(index).ok().map(MemberId)
    }

    /// The member `id`, if it exists.
    pub fn member(&self, id: MemberId) -> Option<&Member> {
        self.members.get(id.index())
    }

    /// The production site (the first one).
    pub fn production(&self) -> &Site {
        self.sites
            .first()
            .expect("validation refuses a domain without sites")
    }

    /// The site whose disk carries `resource`.
    pub fn site_of(&self, resource: &ResourceId) -> Option<&Site> {
        self.sites.iter().find(|s| &s.resource == resource)
    }
}
