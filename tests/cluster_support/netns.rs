//! Members in network namespaces (scripts/netns-cluster.sh): one namespace
//! per member on a bridge, links cut or split into two partitions.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::common;

/// The namespaces and bridges of one test run, removed when dropped.
pub struct Netns {
    script: PathBuf,
    prefix: String,
}

impl Netns {
    /// Namespaces 1..=n, member i at 10.231.0.(10+i).
    pub fn up(n: usize) -> Netns {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/netns-cluster.sh");
        // Unique per test (tests of one binary run in parallel), short
        // enough for interface names (`PREFIXbr0`), ending in a letter so
        // that `PREFIX1` never matches another prefix's namespaces.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let prefix = format!(
            "g{}{}n",
            std::process::id() % 100_000,
            (b'a' + k as u8) as char
        );
        let ns = Netns { script, prefix };
        ns.run(&["down", &ns.prefix]);
        common::run_ok(
            Command::new(&ns.script)
                .args(["up", &n.to_string()])
                .arg(&ns.prefix),
        );
        ns
    }

    /// The engine address of member `i` (1-based) on `port`.
    pub fn address(i: usize, port: u16) -> String {
        format!("10.231.0.{}:{port}", 10 + i)
    }

    fn run(&self, args: &[&str]) {
        let _ = Command::new(&self.script).args(args).status();
    }

    /// Takes member `i`'s link down: it reaches nobody.
    pub fn cut(&self, i: usize) {
        common::run_ok(Command::new(&self.script).args(["cut", &i.to_string(), &self.prefix]));
    }

    /// Brings member `i`'s link back up.
    pub fn restore(&self, i: usize) {
        common::run_ok(Command::new(&self.script).args(["restore", &i.to_string(), &self.prefix]));
    }

    /// Moves members `ids` to a bridge of their own: they reach each other
    /// and nobody else.
    pub fn split(&self, ids: &[usize]) {
        let list: Vec<String> = ids.iter().map(usize::to_string).collect();
        common::run_ok(Command::new(&self.script).args(["split", &list.join(","), &self.prefix]));
    }

    /// The command prefix that runs a program in member `i`'s namespace.
    pub fn exec_prefix(&self, i: usize) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            format!("{}{i}", self.prefix),
        ]
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.run(&["down", &self.prefix]);
    }
}
