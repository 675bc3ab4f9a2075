//! The shape of a test group: sites with their disk sizes, members in
//! backup order on free loopback ports.

use crate::common;

/// One site: a name, the resource id of its disk and the disk's file size.
#[derive(Clone, Debug)]
pub struct SiteSpec {
    pub name: String,
    pub resource: String,
    pub size: String,
}

/// One member: its name and the site whose disk it can access (None: witness).
#[derive(Clone, Debug)]
pub struct MemberSpec {
    pub name: String,
    pub site: Option<usize>,
    /// Engine and replication address, `HOST:PORT`.
    pub address: String,
    /// Prometheus endpoint, `HOST:PORT` (none unless a test asks for one).
    pub metrics: Option<String>,
    /// A disk file of its own in place of its site's shared one: a name
    /// in the test dir (standing for another host's view of a LUN, or
    /// another disk; the test makes it), or an absolute path.
    pub disk_file: Option<String>,
}

/// The shape of a group to build.
#[derive(Clone, Debug)]
pub struct Spec {
    pub group: String,
    /// `sync` or `async`.
    pub mode: String,
    pub sites: Vec<SiteSpec>,
    pub members: Vec<MemberSpec>,
    /// `lease_ms` and `fail_timeout_ms` of the recovery domain; None
    /// leaves them out (the defaults).
    pub timing: Option<(u64, u64)>,
}

impl Spec {
    /// Sites named `prod`, `dr`, `dr2`, … with disks of `size`; members
    /// given as `(name, site index or None for a witness)` in backup order,
    /// each on a free loopback port.
    pub fn new(mode: &str, sites: usize, size: &str, members: &[(&str, Option<usize>)]) -> Spec {
        let names = ["prod", "dr", "dr2", "dr3"];
        Spec {
            group: "payroll".into(),
            mode: mode.into(),
            sites: (0..sites)
                .map(|i| SiteSpec {
                    name: names[i].into(),
                    resource: format!("payroll-{}", names[i]),
                    size: size.into(),
                })
                .collect(),
            members: members
                .iter()
                .map(|(n, s)| MemberSpec {
                    name: (*n).into(),
                    site: *s,
                    address: format!("127.0.0.1:{}", common::free_port()),
                    metrics: None,
                    disk_file: None,
                })
                .collect(),
            timing: Some((super::LEASE_MS, super::FAIL_TIMEOUT_MS)),
        }
    }

    /// Gives `member` a metrics endpoint on a free loopback port.
    pub fn with_metrics(mut self, member: &str) -> Spec {
        for m in &mut self.members {
            if m.name == member {
                m.metrics = Some(format!("127.0.0.1:{}", common::free_port()));
            }
        }
        self
    }

    /// Gives `member` a disk file of its own, `file` in the test dir.
    pub fn with_own_disk(mut self, member: &str, file: &str) -> Spec {
        for m in &mut self.members {
            if m.name == member {
                m.disk_file = Some(file.into());
            }
        }
        self
    }

    /// The usual group: prod {a1, a2}, dr {b1}, witness w1.
    pub fn payroll(mode: &str, size: &str) -> Spec {
        Spec::new(
            mode,
            2,
            size,
            &[
                ("a1", Some(0)),
                ("a2", Some(0)),
                ("b1", Some(1)),
                ("w1", None),
            ],
        )
    }
}
