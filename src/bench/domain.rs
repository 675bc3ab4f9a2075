//! Targets from a recovery-domain file: the production site's members that
//! serve NBD, in backup order; the first one that answers is measured.

use super::error::BenchError;
use super::target::Target;
use crate::attach::{Endpoint, NbdAddress};
use crate::config::{self, RecoveryDomain};
use std::path::Path;

/// The production export of the group described by `path`.
///
/// Only the member that hosts production serves the volume, and which one
/// that is depends on who joined; so each production-site member with an
/// `nbd` address is tried in backup order and the first whose export
/// answers (and takes writes) is the target.
pub fn resolve_targets(path: &Path, timeout_ms: u64) -> Result<Vec<Target>, BenchError> {
    let bad = |reason: String| BenchError::Config {
        path: path.display().to_string(),
        reason,
    };
    let domain = RecoveryDomain::load(path).map_err(|e| bad(e.to_string()))?;
    let candidates = production_candidates(&domain);
    if candidates.is_empty() {
        return Err(bad(format!(
            "no member of the production site {:?} has an `nbd` address",
            domain.production().name
        )));
    }
    let mut tried = Vec::new();
    for t in candidates {
        match t.connect(timeout_ms) {
            Ok(_) => return Ok(vec![t]),
            Err(e) => tried.push(e.to_string()),
        }
    }
    Err(bad(format!(
        "no production member answered:\n  {}",
        tried.join("\n  ")
    )))
}

/// Production-site members with an NBD address, in backup order, as
/// targets. A member without a declared site may be at any site (its disks'
/// labels decide at join time), so it is a candidate too.
pub fn production_candidates(domain: &RecoveryDomain) -> Vec<Target> {
    let prod = &domain.production().name;
    domain
        .members
        .iter()
        .filter(|m| m.site.as_ref().is_none_or(|s| s == prod))
        .filter_map(|m| {
            let endpoint = match m.nbd.as_ref()? {
                config::NbdAddress::Unix(p) => Endpoint::Unix(p.clone()),
                config::NbdAddress::Tcp(a) => Endpoint::Tcp(a.clone()),
            };
            Some(Target {
                label: m.name.clone(),
                addr: NbdAddress {
                    endpoint,
                    // The empty name selects the default export
                    // (doc/proto.md § "Option types", NBD_OPT_GO).
                    export: String::new(),
                },
            })
        })
        .collect()
}
