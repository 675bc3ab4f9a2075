//! Shared by the group tests: recovery domains to test with, and a
//! simulated cluster that runs every member's join protocol over one
//! ordered log and checks the group's invariants after every command.
#![allow(dead_code)]

pub mod invariants;
pub mod scenario;
pub mod sim;

use geomirror::config::RecoveryDomain;
use geomirror::group::{MemberId, ResourceId};

/// Three sites and a witness: prod {a1, a2}, dr {b1, b2}, dr2 {c1}, w1.
pub const THREE_SITES: &str = r#"
group = "ledger"
mode = "sync"
secret = "s"
[[site]]
name = "prod"
resource = "ledger-prod"
[[site]]
name = "dr"
resource = "ledger-dr"
[[site]]
name = "dr2"
resource = "ledger-dr2"
[[member]]
name = "a1"
address = "10.0.0.1:7400"
disks = ["/d/prod.img"]
nbd = "unix:/run/a1.sock"
[[member]]
name = "a2"
address = "10.0.0.2:7400"
disks = ["/d/prod.img"]
nbd = "unix:/run/a2.sock"
[[member]]
name = "b1"
address = "10.0.1.1:7400"
disks = ["/d/dr.img"]
[[member]]
name = "b2"
address = "10.0.1.2:7400"
disks = ["/d/dr.img"]
[[member]]
name = "c1"
address = "10.0.2.1:7400"
disks = ["/d/dr2.img"]
[[member]]
name = "w1"
address = "10.0.9.1:7400"
"#;

/// Fig. 5's two sites: prod {a1, a2}, dr {b1, b2}.
pub const TWO_SITES: &str = r#"
group = "payroll"
mode = "sync"
secret = "s"
[[site]]
name = "prod"
resource = "payroll-prod"
[[site]]
name = "dr"
resource = "payroll-dr"
[[member]]
name = "a1"
address = "10.0.0.1:7400"
disks = ["/d/prod.img"]
nbd = "unix:/run/a1.sock"
[[member]]
name = "a2"
address = "10.0.0.2:7400"
disks = ["/d/prod.img"]
nbd = "unix:/run/a2.sock"
[[member]]
name = "b1"
address = "10.0.1.1:7400"
disks = ["/d/dr.img"]
site = "dr"
[[member]]
name = "b2"
address = "10.0.1.2:7400"
disks = ["/d/dr.img"]
site = "dr"
"#;

/// One production site of three members and one copy site of one.
pub const DEEP_PROD: &str = r#"
group = "orders"
mode = "async"
secret = "s"
[[site]]
name = "prod"
resource = "orders-prod"
[[site]]
name = "dr"
resource = "orders-dr"
[[member]]
name = "a1"
address = "10.0.0.1:7400"
disks = ["/d/prod.img"]
nbd = "unix:/run/a1.sock"
[[member]]
name = "a2"
address = "10.0.0.2:7400"
disks = ["/d/prod.img"]
nbd = "unix:/run/a2.sock"
[[member]]
name = "a3"
address = "10.0.0.3:7400"
disks = ["/d/prod.img"]
nbd = "unix:/run/a3.sock"
[[member]]
name = "b1"
address = "10.0.1.1:7400"
disks = ["/d/dr.img"]
"#;

/// Parses one of the domains above.
pub fn domain(text: &str) -> RecoveryDomain {
    RecoveryDomain::from_toml_str(text).expect("test domain is valid")
}

/// The member named `name`.
pub fn id(d: &RecoveryDomain, name: &str) -> MemberId {
    d.member_id(name).expect("member exists")
}

/// The resource each member finds on its disks: that of the site whose
/// name matches the disk file (prod.img → site prod). Witnesses find none.
pub fn accessible(d: &RecoveryDomain, member: MemberId) -> Vec<ResourceId> {
    let m = d.member(member).expect("member exists");
    d.sites
        .iter()
        .filter(|s| {
            m.disks
                .iter()
                .any(|p| p.file_stem().is_some_and(|f| f == s.name.as_str()))
        })
        .map(|s| s.resource.clone())
        .collect()
}
