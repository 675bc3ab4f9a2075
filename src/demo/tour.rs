//! The tour from end to end: make the group, run the steps in order until
//! one fails, stop every member, and print the summary of checks.

use std::time::Instant;

use tokio::runtime::Handle;

use super::cluster::{Cluster, MEMBERS};
use super::steps::{Step, Tour};
use super::watch::Watcher;
use super::workload::Model;
use super::{say, DemoOptions};
use crate::units::format_size;

/// One check of the summary.
pub(super) struct Check {
    pub(super) what: String,
    pub(super) ok: bool,
    pub(super) detail: String,
}

/// Runs every step; Ok(true) when every check held.
pub fn tour(opts: &DemoOptions, rt: Handle) -> anyhow::Result<bool> {
    let started = Instant::now();
    let cluster = Cluster::create(&opts.parent_dir, opts.keep)?;
    say(&format!(
        "geomirror demo: a group of {} members on this machine, disks of {}",
        MEMBERS.len(),
        format_size(opts.size_bytes)
    ));
    say(&format!(
        "directory {} ({}), recovery domain {}",
        cluster.dir.display(),
        if opts.keep {
            "kept at the end"
        } else {
            "removed at the end; --keep keeps it"
        },
        cluster.config.display()
    ));
    let watcher = Watcher::new(rt, cluster.domain.clone());
    let mut t = Tour {
        size_bytes: opts.size_bytes,
        cluster,
        watcher,
        checks: Vec::new(),
        model: Model::new(64 << 10),
        data_bytes: 0,
        client: None,
        sampler: None,
        prod_host: String::new(),
    };
    let steps: [(&str, Step); 5] = [
        (
            "1. format the disks, start the members, show the roles",
            Tour::start,
        ),
        ("2. write through NBD", Tour::write),
        ("3. initial full sync of the copy", Tour::full_sync),
        (
            "4. crash the copy host, keep writing, restart it",
            Tour::crash_copy,
        ),
        (
            "5. stop every member, compare the disks",
            Tour::stop_and_compare,
        ),
    ];
    let mut failed = None;
    for (title, step) in steps {
        say(&format!("\n== {title}"));
        if let Err(e) = step(&mut t) {
            say(&format!("   step failed: {e:#}"));
            t.record(title, false, format!("{e:#}"));
            failed = Some(e);
            break;
        }
    }
    t.sampler = None;
    t.client = None;
    if failed.is_some() {
        eprintln!("member logs:\n{}", t.cluster.log_tails());
    }
    t.cluster.kill_all();

    say("\n== 6. summary");
    for c in &t.checks {
        let mark = if c.ok { "✓" } else { "✗" };
        say(&format!("   {mark} {}: {}", c.what, c.detail));
    }
    let held = t.checks.iter().filter(|c| c.ok).count();
    let all = failed.is_none() && held == t.checks.len();
    say(&format!(
        "   {held} of {} checks held in {:.1} s{}",
        t.checks.len(),
        started.elapsed().as_secs_f64(),
        if all { "" } else { ": the demo FAILED" }
    ));
    Ok(all)
}
