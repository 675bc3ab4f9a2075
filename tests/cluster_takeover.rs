//! Taking over the production disk with real processes: a member whose disk
//! is a stale byte copy, or another disk labelled with the same resource,
//! refuses to become the production host and says why; a current copy
//! takes over and serves everything that was acknowledged.

mod cluster_support;
mod common;

use std::path::Path;
use std::process::Command;

use cluster_support::{host_of, member_state, Cluster, Spec};
use geomirror::node::status::StatusReport;

/// The current data generation in a disk's label, as status prints it.
fn generation(disk: &Path) -> String {
    let g = common::label(disk)["generations"]["current"]
        .as_u64()
        .expect("current generation");
    format!("{g:016x}")
}

/// The refusal warning `status` gives about `member`, if any.
fn refusal<'a>(s: &'a StatusReport, member: &str) -> Option<&'a str> {
    s.warnings
        .iter()
        .find(|w| w.contains("takeover refused") && w.contains(&format!("{member}'s disk")))
        .map(String::as_str)
}

/// `member`, elected production host, refuses its disk: production stays
/// unhosted, `member` leaves the production subgroup, its export never
/// listens, and status (asked at w1) says why, in words that contain
/// `why`. Returns the warning.
fn assert_refused(c: &Cluster, member: &str, why: &str) -> String {
    let s = c.wait_status("w1", &format!("{member} refusing its disk"), |s| {
        refusal(s, member).is_some_and(|w| w.contains(why))
    });
    let warning = refusal(&s, member).expect("warning").to_string();
    assert!(
        warning.starts_with("payroll-prod is not served"),
        "{warning}"
    );
    assert_eq!(host_of(&s, "payroll-prod"), None, "{}", s.to_text());
    let m = s.members.iter().find(|m| m.name == member).expect("member");
    assert_eq!(m.state, "joined");
    assert!(m.subgroups.is_empty(), "{}", s.to_text());
    assert!(
        !c.nbd_socket(member).exists(),
        "{member} serves the volume from the refused disk"
    );
    warning
}

#[test]
fn a_stale_or_foreign_disk_never_takes_over_and_a_current_copy_does() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    // a2 reaches the production site's disk as a file of its own, standing
    // for a second host's path to a shared LUN: a byte copy of a1's disk,
    // taken now, before anything was written.
    let spec = Spec::payroll("sync", "32M").with_own_disk("a2", "a2-prod.img");
    let mut c = Cluster::new(spec);
    let a2_disk = c.member_disk("a2");
    std::fs::copy(c.disk(0), &a2_disk).expect("copy a1's disk for a2");
    let stale = generation(&a2_disk);

    // The group runs without a2 (a1 founds it with --bootstrap).
    c.start_all(&["a1", "b1", "w1"]);
    c.wait_synced("a1");
    let uri = c.nbd_uri("a1");
    cluster_support::nbd_write_pattern(&uri, 1 << 20, 256 << 10, 1);
    // With the copy host away, a1 tracks what b1 misses; killed and
    // restarted with those chunks dirty, it serves a new data generation.
    c.stop("b1");
    cluster_support::nbd_write_pattern(&uri, 3 << 20, 256 << 10, 2);
    c.kill("a1");
    c.start("a1");
    c.wait_status("w1", "a1 serving again", |s| {
        host_of(s, "payroll-prod") == Some("a1")
    });
    common::wait_for_unix(&c.nbd_socket("a1"), cluster_support::SETTLE);
    let current = generation(&c.disk(0));
    assert_ne!(current, stale, "a1 restarted dirty in the same generation");
    c.start("b1");
    c.wait_synced("w1");
    cluster_support::nbd_write_pattern(&uri, 5 << 20, 256 << 10, 3);

    // a2 joins with its stale copy; when a1 stops, a2 is elected and refuses.
    c.start("a2");
    c.wait_status("w1", "a2 joined as a backup", |s| {
        member_state(s, "a2") == "joined"
    });
    c.stop("a1");
    let warning = assert_refused(&c, "a2", &format!("holds data generation {stale}"));
    assert!(
        warning.contains(&format!("generation {current} that a1 last served")),
        "{warning}"
    );
    assert!(warning.contains("Bring back a1"), "{warning}");
    assert_eq!(generation(&a2_disk), stale, "the refused disk was written");
    let log = c.log_tail("a2", 400);
    assert!(
        log.contains("refusing to become the production host"),
        "{log}"
    );

    // Another disk labelled with the same resource: refused too.
    c.stop("a2");
    let other = Command::new(common::bin())
        .args(["format", "--force", "--group", "payroll", "--resource"])
        .args(["payroll-prod", "--size", "32M"])
        .arg(&a2_disk)
        .output()
        .expect("run format");
    assert!(other.status.success(), "{other:?}");
    let a1_id = common::label(&c.disk(0))["disk_id"]
        .as_u64()
        .expect("disk id");
    let a2_id = common::label(&a2_disk)["disk_id"]
        .as_u64()
        .expect("disk id");
    assert_ne!(a1_id, a2_id);
    c.start("a2");
    assert_refused(
        &c,
        "a2",
        &format!("is disk {a2_id:016x}, not disk {a1_id:016x}"),
    );

    // A byte copy of a1's disk as a1 left it: current, so a2 takes over and
    // serves everything a1 acknowledged.
    c.stop("a2");
    std::fs::copy(c.disk(0), &a2_disk).expect("copy a1's current disk");
    c.start("a2");
    let s = c.wait_status("w1", "a2 serving production", |s| {
        host_of(s, "payroll-prod") == Some("a2")
    });
    assert!(refusal(&s, "a2").is_none(), "{:?}", s.warnings);
    common::wait_for_unix(&c.nbd_socket("a2"), cluster_support::SETTLE);
    let uri = c.nbd_uri("a2");
    for (at, seed) in [(1 << 20, 1), (3 << 20, 2), (5 << 20, 3)] {
        cluster_support::nbd_check_pattern(&uri, at, 256 << 10, seed);
    }
    c.stop_all();
}
