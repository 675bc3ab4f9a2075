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
        .filter(|m| !m.is_witness() && m.site.as_ref().is_none_or(|s| s == prod))
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

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = r#"
group = "g"
mode = "sync"
secret = "s"
[[site]]
name = "prod"
resource = "g-prod"
[[site]]
name = "dr"
resource = "g-dr"
[[member]]
name = "a1"
address = "127.0.0.1:7401"
disks = ["/d/prod.img"]
nbd = "unix:/run/a1.sock"
[[member]]
name = "b1"
address = "127.0.0.1:7402"
disks = ["/d/dr.img"]
site = "dr"
nbd = "tcp:127.0.0.1:10810"
[[member]]
name = "a2"
address = "127.0.0.1:7403"
disks = ["/d/prod.img"]
site = "prod"
nbd = "127.0.0.1:10811"
[[member]]
name = "w1"
address = "127.0.0.1:7404"
"#;

    #[test]
    fn candidates_are_production_members_with_nbd_in_backup_order() {
        let d = RecoveryDomain::from_toml_str(DOMAIN).expect("valid domain");
        let c = production_candidates(&d);
        let names: Vec<&str> = c.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(names, ["a1", "a2"]);
        assert_eq!(c[0].uri(), "nbd+unix:///?socket=/run/a1.sock");
        assert_eq!(c[1].uri(), "nbd://127.0.0.1:10811/");
    }
}
