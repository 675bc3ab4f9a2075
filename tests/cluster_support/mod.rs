//! A whole group on one machine for the cluster tests: formatted disk files,
//! the recovery-domain file, `geomirror up` processes and their status.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use geomirror::node::status::StatusReport;

use crate::common::{self, Proc};

mod checks;
mod metrics;
mod mounts;
mod netns;
mod spec;

pub use checks::*;
// Each test binary uses its own part of these.
#[allow(unused_imports)]
pub use mounts::Mounts;
#[allow(unused_imports)]
pub use netns::Netns;
#[allow(unused_imports)]
pub use spec::{MemberSpec, SiteSpec, Spec};

/// The production host's lease in the test groups: shorter than the
/// default so that failovers fit a test's patience.
pub const LEASE_MS: u64 = 1_000;
/// Failure timeout of the test groups: a dead member is declared failed
/// this long after its last contact (the lease plus the least margin).
pub const FAIL_TIMEOUT_MS: u64 = LEASE_MS + 500;
/// Patience for one group transition (election, join, failover).
pub const SETTLE: Duration = Duration::from_secs(30);

/// A group under test: its files in a temp dir and its running members.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub spec: Spec,
    pub config: PathBuf,
    pub procs: BTreeMap<String, Proc>,
    /// Number of times each member was started (log files are per start).
    starts: BTreeMap<String, usize>,
    /// Command prefix for `up` (e.g. `ip netns exec gm1`), per member.
    pub wrap: BTreeMap<String, Vec<String>>,
    /// Extra `up` arguments for every member (e.g. `--engine plain`).
    pub up_extra: Vec<String>,
    /// Members started with `--bootstrap` (they found the group without
    /// waiting for the members that are not started).
    pub bootstrap: BTreeSet<String>,
}

impl Cluster {
    /// Formats every site's disk and writes the recovery-domain file.
    pub fn new(spec: Spec) -> Cluster {
        let dir = common::tempdir();
        let config = dir.path().join("group.toml");
        let c = Cluster {
            dir,
            spec,
            config,
            procs: BTreeMap::new(),
            starts: BTreeMap::new(),
            wrap: BTreeMap::new(),
            up_extra: Vec::new(),
            bootstrap: BTreeSet::new(),
        };
        for i in 0..c.spec.sites.len() {
            c.format_site(i);
        }
        std::fs::write(&c.config, c.domain_text()).expect("write the recovery domain");
        c
    }

    /// The disk file of site `i`.
    pub fn disk(&self, site: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.img", self.spec.sites[site].resource))
    }

    /// The disk file `member` opens: its own if it has one, else its site's.
    pub fn member_disk(&self, member: &str) -> PathBuf {
        let m = self
            .spec
            .members
            .iter()
            .find(|m| m.name == member)
            .unwrap_or_else(|| panic!("no member {member}"));
        match (&m.disk_file, m.site) {
            (Some(file), _) => self.dir.path().join(file),
            (None, Some(site)) => self.disk(site),
            (None, None) => panic!("{member} is a witness: no disk"),
        }
    }

    /// Formats site `i`'s disk (a fresh file).
    pub fn format_site(&self, site: usize) {
        let s = &self.spec.sites[site];
        let disk = self.disk(site);
        let _ = std::fs::remove_file(&disk);
        common::run_ok(
            Command::new(common::bin())
                .args(["format", "--group", &self.spec.group, "--resource"])
                .arg(&s.resource)
                .args(["--size", &s.size])
                .arg(&disk),
        );
    }

    /// The unix socket where `member` serves the volume while it hosts production.
    pub fn nbd_socket(&self, member: &str) -> PathBuf {
        self.dir.path().join(format!("{member}.nbd.sock"))
    }

    /// The NBD URI of the volume as served by `member`.
    pub fn nbd_uri(&self, member: &str) -> String {
        format!(
            "nbd+unix:///{}?socket={}",
            self.spec.group,
            self.nbd_socket(member).display()
        )
    }

    /// The recovery-domain file's text.
    pub fn domain_text(&self) -> String {
        let s = &self.spec;
        let mut t = format!(
            "group = \"{}\"\nmode = \"{}\"\nsecret = \"cluster-test\"\n",
            s.group, s.mode
        );
        if let Some((lease, fail)) = s.timing {
            let _ = write!(t, "lease_ms = {lease}\nfail_timeout_ms = {fail}\n");
        }
        for site in &s.sites {
            let _ = write!(
                t,
                "\n[[site]]\nname = \"{}\"\nresource = \"{}\"\n",
                site.name, site.resource
            );
        }
        for m in &s.members {
            let _ = write!(
                t,
                "\n[[member]]\nname = \"{}\"\naddress = \"{}\"\n",
                m.name, m.address
            );
            if let Some(metrics) = &m.metrics {
                let _ = writeln!(t, "metrics = \"{metrics}\"");
            }
            if let Some(site) = m.site {
                let _ = writeln!(t, "disks = [\"{}\"]", self.member_disk(&m.name).display());
                if site == 0 {
                    let _ = writeln!(t, "nbd = \"unix:{}\"", self.nbd_socket(&m.name).display());
                }
            }
        }
        t
    }

    fn state_dir(&self, member: &str) -> PathBuf {
        self.dir.path().join("state").join(member)
    }

    /// The `up` command line of `member` with `config`.
    fn up_args(&self, member: &str, config: &Path) -> Vec<String> {
        vec![
            "up".into(),
            "--config".into(),
            config.display().to_string(),
            "--member".into(),
            member.into(),
            "--state-dir".into(),
            self.state_dir(member).display().to_string(),
        ]
        .into_iter()
        .chain(self.up_extra.iter().cloned())
        .chain(
            self.bootstrap
                .contains(member)
                .then(|| "--bootstrap".to_string()),
        )
        .collect()
    }

    /// Starts `member` (not waiting for anything).
    pub fn spawn(&mut self, member: &str) {
        let n = self.starts.entry(member.into()).or_default();
        *n += 1;
        let log = self.dir.path().join(format!("{member}.{n}.log"));
        let args = self.up_args(member, &self.config.clone());
        let proc = match self.wrap.get(member) {
            None => {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                Proc::geomirror(&a, &log)
            }
            Some(prefix) => {
                let out = std::fs::File::create(&log).expect("create log file");
                let err = out.try_clone().expect("dup log file");
                let child = Command::new(&prefix[0])
                    .args(&prefix[1..])
                    .arg(common::bin())
                    .args(&args)
                    .env("GEOMIRROR_LOG", "geomirror=debug,info")
                    .stdin(std::process::Stdio::null())
                    .stdout(out)
                    .stderr(err)
                    .spawn()
                    .expect("spawn geomirror in a namespace");
                Proc {
                    child,
                    name: format!("{member} in {prefix:?}"),
                }
            }
        };
        self.procs.insert(member.into(), proc);
    }

    /// Starts `member` and waits until it answers `status` as a voter of
    /// the group (no longer joining it; a restarted voter may still wait
    /// for a majority). A member with an empty state directory gets there
    /// only by joining a running group, or by founding one once every
    /// member of the domain runs (or with `--bootstrap`).
    pub fn start(&mut self, member: &str) {
        self.spawn(member);
        let who = member.to_string();
        common::wait_until(&format!("{member} answers status"), SETTLE, || {
            self.assert_running(&who);
            self.status(&who).is_some_and(|s| {
                !s.warnings
                    .iter()
                    .any(|w| w.starts_with(geomirror::node::report::JOINING_WARNING))
            })
        });
    }

    /// Starts the members in `order` one by one, each once the previous
    /// one is in, so that `order` is the join order (the first joined
    /// member of a site hosts its disk). The first is started with
    /// `--bootstrap`: it founds the group before the others run. Tests of
    /// how members started together found the group spawn them instead.
    pub fn start_all(&mut self, order: &[&str]) {
        if let Some(first) = order.first() {
            self.bootstrap.insert((*first).to_string());
        }
        for m in order {
            self.start(m);
        }
    }

    /// Runs `up` for `member` with another recovery-domain file and returns
    /// its output once it exits (it is expected to refuse to start).
    pub fn run_refused(&self, member: &str, config: &Path) -> Output {
        let mut child = Command::new(common::bin())
            .args(self.up_args(member, config))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn geomirror up");
        let deadline = std::time::Instant::now() + SETTLE;
        while child.try_wait().expect("poll child").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{member} with {} kept running", config.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().expect("collect output")
    }

    /// Panics (with its log) when `member`'s process has exited.
    pub fn assert_running(&mut self, member: &str) {
        let exited = self
            .procs
            .get_mut(member)
            .and_then(|p| p.child.try_wait().ok().flatten());
        if let Some(st) = exited {
            panic!("{member} exited ({st}):\n{}", self.log_tail(member, 60));
        }
    }

    /// `status --json --member member`, None when it does not answer.
    pub fn status(&self, member: &str) -> Option<StatusReport> {
        let mut cmd = match self.wrap.get(member) {
            Some(prefix) => {
                let mut c = Command::new(&prefix[0]);
                c.args(&prefix[1..]).arg(common::bin());
                c
            }
            None => Command::new(common::bin()),
        };
        let out = cmd
            .args(["status", "--json", "--config"])
            .arg(&self.config)
            .args(["--member", member])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits until `member`'s status satisfies `pred`; returns that status.
    pub fn wait_status(
        &self,
        member: &str,
        what: &str,
        mut pred: impl FnMut(&StatusReport) -> bool,
    ) -> StatusReport {
        let mut last = None;
        let deadline = std::time::Instant::now() + SETTLE;
        loop {
            if let Some(s) = self.status(member) {
                if pred(&s) {
                    return s;
                }
                last = Some(s);
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what} (asking {member}); last status:\n{}\nlogs:\n{}",
                    last.map(|s| s.to_text()).unwrap_or_else(|| "none".into()),
                    self.all_logs(40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the production disk is served and every copy is
    /// `UpToDate` with no resync left, asking `member`.
    pub fn wait_synced(&self, member: &str) -> StatusReport {
        self.wait_status(member, "every copy in sync", all_synced)
    }

    /// Waits until every one of `members` reports the same group, with
    /// every one of them joined, and returns that view. Agreement alone is
    /// not enough: the members may agree on a group whose last joins are
    /// still being committed.
    pub fn wait_all_joined(&self, members: &[&str]) -> String {
        let mut views = Vec::new();
        common::wait_until(
            "every member reports the same group, with every member joined",
            SETTLE,
            || {
                views = members
                    .iter()
                    .map(|m| self.status(m).map(|s| agreed_view(&s)).unwrap_or_default())
                    .collect();
                !views[0].is_empty()
                    && views.iter().all(|v| v == &views[0])
                    && members
                        .iter()
                        .all(|m| views[0].contains(&format!("{m} joined")))
            },
        );
        views.swap_remove(0)
    }

    /// Sends SIGTERM to `member` and asserts a clean exit.
    pub fn stop(&mut self, member: &str) {
        if let Some(p) = self.procs.get(member) {
            p.signal(libc::SIGTERM);
        }
        self.reap(member);
    }

    /// Waits for `member` (already signalled) and asserts it exited 0.
    fn reap(&mut self, member: &str) {
        let mut p = self
            .procs
            .remove(member)
            .unwrap_or_else(|| panic!("{member} is not running"));
        match p.wait_timeout(SETTLE) {
            Some(st) if st.success() => {}
            other => panic!(
                "{member} did not exit cleanly on SIGTERM: {other:?}\n{}",
                self.log_tail(member, 60)
            ),
        }
    }

    /// Stops every member: SIGTERM to all at once (so each one's leave is
    /// decided while a majority still runs), then a clean exit from each.
    pub fn stop_all(&mut self) {
        for p in self.procs.values() {
            p.signal(libc::SIGTERM);
        }
        let names: Vec<String> = self.procs.keys().cloned().collect();
        for n in names {
            self.reap(&n);
        }
    }

    /// SIGKILLs `member`.
    pub fn kill(&mut self, member: &str) {
        if let Some(mut p) = self.procs.remove(member) {
            p.signal(libc::SIGKILL);
            let _ = p.wait_timeout(SETTLE);
        }
    }

    /// The last `lines` lines of `member`'s latest log.
    pub fn log_tail(&self, member: &str, lines: usize) -> String {
        let n = self.starts.get(member).copied().unwrap_or(1);
        let log = self.dir.path().join(format!("{member}.{n}.log"));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Every member's log tail, for a failure message.
    pub fn all_logs(&self, lines: usize) -> String {
        let mut s = String::new();
        for m in &self.spec.members {
            let _ = writeln!(s, "--- {} ---\n{}", m.name, self.log_tail(&m.name, lines));
        }
        s
    }

    /// The data size (`data_bytes` of the label) of site `i`'s disk.
    pub fn data_size(&self, site: usize) -> u64 {
        let out = common::run_ok(
            Command::new(common::bin())
                .args(["label", "--json"])
                .arg(self.disk(site)),
        );
        let v: serde_json::Value = serde_json::from_str(&out).expect("label JSON");
        v["layout"]["data_bytes"].as_u64().expect("data_bytes")
    }

    /// Asserts the data areas of site 0's disk and site `copy`'s disk are
    /// byte-identical (the label and bitmap differ by design).
    pub fn assert_identical(&self, copy: usize) {
        let size = self.data_size(0);
        assert_eq!(size, self.data_size(copy), "data sizes differ");
        if let Some(at) = first_difference(&self.disk(0), &self.disk(copy), size) {
            panic!(
                "production and {} differ at byte {at} (data size {size})\n{}",
                self.spec.sites[copy].name,
                self.all_logs(30)
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("member logs:\n{}", self.all_logs(40));
        }
        self.procs.clear();
    }
}
