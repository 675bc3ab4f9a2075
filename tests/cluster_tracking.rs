//! What the production host tracks for each copy site, across the events
//! that used to lose it: a failover soon after a full sync, a takeover while
//! the copy host is away, and a production restart while one of two copy
//! sites is away. Each ends with the disks byte-identical and the resync no
//! larger than what was written.

mod cluster_support;
mod common;

use std::time::Duration;

use cluster_support::{
    all_synced, host_of, nbd_check_pattern, nbd_write_pattern, Cluster, Spec, SETTLE,
};
use geomirror::node::status::{ResourceStatus, StatusReport};

/// The production host's clear period of the dirty bitmap, plus margin:
/// a test that must outlive one clear pass waits this long.
const PAST_A_CLEAR_PASS: Duration = Duration::from_secs(12);

fn resource<'a>(s: &'a StatusReport, id: &str) -> &'a ResourceStatus {
    s.resources
        .iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("{id} not listed"))
}

fn serving(c: &Cluster, member: &str) {
    common::wait_until(&format!("{member} serves the volume"), SETTLE, || {
        c.nbd_socket(member).exists()
    });
}

#[test]
fn a_failover_soon_after_a_full_sync_resyncs_only_the_extents_written() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    let mut c = Cluster::new(Spec::payroll("sync", "256M"));
    c.start_all(&["a1", "a2", "b1", "w1"]);
    c.wait_synced("a1");
    let size = c.data_size(0);
    // 8 MiB: two 4 MiB extents of the activity log.
    nbd_write_pattern(&c.nbd_uri("a1"), 0, 8 << 20, 3);
    // The crash comes a second after the write, well inside the bitmap's
    // clear period (the scenario that resynced the whole volume).
    std::thread::sleep(Duration::from_secs(1));
    c.kill("a1");
    let s = c.wait_status(
        "w1",
        "a2 hosting production with the copy up to date",
        |s| host_of(s, "payroll-prod") == Some("a2") && all_synced(s),
    );
    let moved = resource(&s, "payroll-dr").resynced_bytes;
    eprintln!("failover resync moved {moved} of {size} bytes");
    assert!(
        moved <= 16 << 20,
        "the failover resync moved {moved} bytes of a {size}-byte volume for 8 MiB written"
    );
    nbd_check_pattern(&c.nbd_uri("a2"), 0, 8 << 20, 3);
    c.stop_all();
    c.assert_identical(1);
}

#[test]
fn writes_served_while_the_copy_host_is_away_reach_it_after_a_takeover() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    let spec = Spec::new(
        "sync",
        2,
        "64M",
        &[
            ("a1", Some(0)),
            ("a2", Some(0)),
            ("b1", Some(1)),
            ("w1", None),
            ("w2", None),
        ],
    );
    let mut c = Cluster::new(spec);
    c.start_all(&["a1", "a2", "b1", "w1", "w2"]);
    c.wait_synced("a1");
    c.stop("b1");
    c.stop("a1");
    c.wait_status("w1", "a2 hosting production", |s| {
        host_of(s, "payroll-prod") == Some("a2")
    });
    serving(&c, "a2");
    // Served before any copy link exists on a2, and flushed.
    nbd_write_pattern(&c.nbd_uri("a2"), 4 << 20, 16 << 20, 5);
    std::thread::sleep(PAST_A_CLEAR_PASS);
    c.start("b1");
    let s = c.wait_status("w1", "b1 back up to date", |s| {
        host_of(s, "payroll-dr") == Some("b1") && all_synced(s)
    });
    let moved = resource(&s, "payroll-dr").resynced_bytes;
    eprintln!("resync after the takeover moved {moved} bytes");
    assert!(
        moved >= 16 << 20,
        "the copy came back without the {} bytes written while it was away (resync moved {moved})",
        16 << 20
    );
    nbd_check_pattern(&c.nbd_uri("a2"), 4 << 20, 16 << 20, 5);
    c.stop_all();
    c.assert_identical(1);
}

#[test]
fn a_copy_site_away_across_a_production_restart_gets_what_it_missed() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    let spec = Spec::new(
        "sync",
        3,
        "64M",
        &[
            ("a1", Some(0)),
            ("b1", Some(1)),
            ("c1", Some(2)),
            ("w1", None),
            ("w2", None),
        ],
    );
    let mut c = Cluster::new(spec);
    c.start_all(&["a1", "b1", "c1", "w1", "w2"]);
    c.wait_synced("a1");
    c.stop("c1");
    nbd_write_pattern(&c.nbd_uri("a1"), 0, 8 << 20, 7);
    c.stop("a1");
    c.start("a1");
    c.wait_status("w1", "a1 back as production with dr up to date", |s| {
        host_of(s, "payroll-prod") == Some("a1")
            && s.resources
                .iter()
                .any(|r| r.id == "payroll-dr" && r.state == "UpToDate")
    });
    // dr has everything, dr2 is away: a clear pass must keep dr2's chunks.
    std::thread::sleep(PAST_A_CLEAR_PASS);
    c.start("c1");
    let s = c.wait_status("w1", "c1 back up to date", |s| {
        host_of(s, "payroll-dr2") == Some("c1") && all_synced(s)
    });
    let moved = resource(&s, "payroll-dr2").resynced_bytes;
    let size = c.data_size(0);
    eprintln!("dr2's resync moved {moved} of {size} bytes");
    assert!(
        moved >= 8 << 20 && moved < size,
        "dr2 was resynced with {moved} bytes: not the partial resync of the 8 MiB it missed"
    );
    nbd_check_pattern(&c.nbd_uri("a1"), 0, 8 << 20, 7);
    c.stop_all();
    c.assert_identical(1);
    c.assert_identical(2);
}
