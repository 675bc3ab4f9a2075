//! The cluster the ops tests run against: a recovery domain with one
//! production member, one copy member and a witness, and a metrics scraper.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crate::common::{self, bin, Proc};

pub const GROUP: &str = "payroll";
pub const DISK_BYTES: u64 = 16 << 20;
pub const CHUNK_BYTES: u64 = 64 << 10;
pub const WAIT: Duration = Duration::from_secs(60);

/// Cluster tests run one at a time: three daemons each on two shared cores.
pub static ONE_CLUSTER: Mutex<()> = Mutex::new(());

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub sock: PathBuf,
    pub metrics: BTreeMap<&'static str, String>,
    pub procs: BTreeMap<&'static str, Proc>,
}

impl Cluster {
    /// Writes the recovery domain and formats both disks; starts nothing.
    pub fn new() -> Cluster {
        let dir = common::tempdir();
        let d = dir.path();
        let sock = d.join("a1.sock");
        let port = |_: ()| format!("127.0.0.1:{}", common::free_port());
        let metrics: BTreeMap<&str, String> =
            [("a1", port(())), ("b1", port(()))].into_iter().collect();
        for (disk, resource) in [("prod.img", "payroll-prod"), ("dr.img", "payroll-dr")] {
            let size = DISK_BYTES.to_string();
            let chunk = CHUNK_BYTES.to_string();
            let path = d.join(disk);
            common::run_ok(Command::new(bin()).args([
                "format",
                "--group",
                GROUP,
                "--resource",
                resource,
                "--size",
                &size,
                "--bitmap-chunk",
                &chunk,
                path.to_str().expect("utf-8 path"),
            ]));
        }
        let config = d.join("domain.toml");
        let text = format!(
            r#"group = "{GROUP}"
mode = "sync"
secret = "correct horse battery staple"
lease_ms = 1000
fail_timeout_ms = 1500

[[site]]
name = "prod"
resource = "payroll-prod"
[[site]]
name = "dr"
resource = "payroll-dr"

[[member]]
name = "a1"
address = "{}"
disks = ["{}"]
nbd = "unix:{}"
metrics = "{}"
[[member]]
name = "b1"
address = "{}"
disks = ["{}"]
metrics = "{}"
[[member]]
name = "w1"
address = "{}"
"#,
            port(()),
            d.join("prod.img").display(),
            sock.display(),
            metrics["a1"],
            port(()),
            d.join("dr.img").display(),
            metrics["b1"],
            port(()),
        );
        std::fs::write(&config, text).expect("write the domain");
        Cluster {
            dir,
            config,
            sock,
            metrics,
            procs: BTreeMap::new(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn cfg(&self) -> &str {
        self.config.to_str().expect("utf-8 path")
    }

    /// Starts `member`; with the whole domain it founds or joins the group.
    pub fn up(&mut self, member: &'static str) {
        self.up_with(member, &[]);
    }

    /// Starts `member` with `--bootstrap`: it founds the group on its own,
    /// for a test that starts the other members later.
    pub fn up_bootstrap(&mut self, member: &'static str) {
        self.up_with(member, &["--bootstrap"]);
    }

    fn up_with(&mut self, member: &'static str, extra: &[&str]) {
        let state = self.path(&format!("state-{member}"));
        let log = self.path(&format!("{member}.log"));
        let mut args = vec![
            "up",
            "--config",
            self.cfg(),
            "--member",
            member,
            "--state-dir",
            state.to_str().expect("utf-8 path"),
        ];
        args.extend_from_slice(extra);
        let p = Proc::geomirror(&args, &log);
        self.procs.insert(member, p);
    }

    /// All three members up, the copy synced: the steady state.
    pub fn start_all() -> Cluster {
        let mut c = Cluster::new();
        for m in ["a1", "b1", "w1"] {
            c.up(m);
        }
        common::wait_for_unix(&c.sock, WAIT);
        c.wait_mirroring();
        c
    }

    pub fn status_json(&self, member: &str) -> Option<serde_json::Value> {
        let out = Command::new(bin())
            .args([
                "status",
                "--json",
                "--config",
                self.cfg(),
                "--member",
                member,
            ])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits until `member` reports the copy `UpToDate` and mirroring.
    pub fn wait_copy_up_to_date(&self, member: &str) -> serde_json::Value {
        let mut last = None;
        common::wait_until(&format!("{member} to show the copy UpToDate"), WAIT, || {
            last = self.status_json(member);
            last.as_ref().is_some_and(|s| {
                s["resources"][1]["state"] == "UpToDate"
                    && s["mirroring"][0]["state"] == "mirroring"
            })
        });
        last.expect("a report")
    }

    pub fn wait_mirroring(&self) {
        self.wait_copy_up_to_date("a1");
    }

    pub fn nbd_uri(&self) -> String {
        format!("nbd+unix:///{GROUP}?socket={}", self.sock.display())
    }

    /// `qemu-io` writes `count` patterned blocks of `bytes` through the export.
    pub fn write_blocks(&self, count: u64, bytes: u64) {
        let mut cmd = Command::new("qemu-io");
        cmd.args(["-f", "raw"]);
        for i in 0..count {
            cmd.args([
                "-c",
                &format!("write -P 0x{:02x} {} {bytes}", 0x40 + i, i * bytes),
            ]);
        }
        cmd.arg(self.nbd_uri());
        common::run_ok(&mut cmd);
    }
}

/// One scrape of a Prometheus endpoint over plain HTTP/1.0.
pub fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("send the request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the answer");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    assert!(text.starts_with("HTTP/1."), "not HTTP: {text:.200}");
    body.to_owned()
}

/// `name{labels} value` lines as (series, value); comments skipped.
pub fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

pub fn value(s: &BTreeMap<String, f64>, series: &str) -> f64 {
    *s.get(series)
        .unwrap_or_else(|| panic!("no series {series} in {:#?}", s.keys().collect::<Vec<_>>()))
}

pub fn has_family(s: &BTreeMap<String, f64>, name: &str) -> bool {
    s.keys()
        .any(|k| k == name || k.starts_with(&format!("{name}{{")))
}
