//! The recovery-domain file exactly as written (TOML, serde), before any
//! check: unknown fields are refused here so that a typo never goes unnoticed.

use serde::Deserialize;

/// Top level of the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDomain {
    pub group: String,
    pub mode: String,
    pub secret: String,
    pub async_window: Option<String>,
    pub lease_ms: Option<u64>,
    pub fail_timeout_ms: Option<u64>,
    #[serde(default)]
    pub site: Vec<RawSite>,
    #[serde(default)]
    pub member: Vec<RawMember>,
}

/// One `[[site]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSite {
    pub name: String,
    pub resource: String,
}

/// One `[[member]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMember {
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub disks: Vec<String>,
    pub nbd: Option<String>,
    pub metrics: Option<String>,
    pub site: Option<String>,
}
