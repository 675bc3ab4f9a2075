//! Start-up and shutdown of real `geomirror up` processes: members started
//! at the same moment (or in any order, with delays) form one group, and a
//! member stops cleanly on SIGTERM in every phase, joining included.

mod cluster_support;
mod common;

use std::time::Duration;

use cluster_support::{agreed_view, host_of, Cluster, Spec};

const TRIO: [(&str, Option<usize>); 3] = [("a1", Some(0)), ("b1", Some(1)), ("w1", None)];

/// Every member of `c` reports the same group with every member joined,
/// production hosted and the copy in sync; data written through the
/// volume reaches the copy.
fn assert_one_group_mirroring(c: &mut Cluster, members: &[&str]) {
    let s = c.wait_synced(members[0]);
    let view = c.wait_all_joined(members);
    for m in members {
        assert!(
            view.contains(&format!("{m} joined")),
            "{m} not joined in:\n{view}"
        );
        c.assert_running(m);
    }
    // One group has one leader: every member names the same one.
    let leaders: Vec<Option<String>> = members
        .iter()
        .map(|m| c.status(m).and_then(|s| s.leader))
        .collect();
    assert!(
        leaders[0].is_some() && leaders.iter().all(|l| l == &leaders[0]),
        "members disagree on the leader: {leaders:?}"
    );
    let prod = host_of(&s, "payroll-prod")
        .expect("production is hosted")
        .to_string();
    common::wait_for_unix(&c.nbd_socket(&prod), cluster_support::SETTLE);
    cluster_support::nbd_write_pattern(&c.nbd_uri(&prod), 1 << 20, 256 << 10, 7);
    c.wait_synced(members[0]);
    c.stop_all();
    c.assert_identical(1);
}

#[test]
fn members_started_at_the_same_moment_form_one_group() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    for order in [["a1", "b1", "w1"], ["w1", "b1", "a1"]] {
        let mut c = Cluster::new(Spec::new("sync", 2, "32M", &TRIO));
        for m in order {
            c.spawn(m);
        }
        assert_one_group_mirroring(&mut c, &order);
    }
}

#[test]
fn five_members_started_at_the_same_moment_form_one_group() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    let members = [
        ("a1", Some(0)),
        ("a2", Some(0)),
        ("b1", Some(1)),
        ("b2", Some(1)),
        ("w1", None),
    ];
    let order = ["b2", "w1", "a2", "b1", "a1"];
    let mut c = Cluster::new(Spec::new("sync", 2, "32M", &members));
    for m in order {
        c.spawn(m);
    }
    assert_one_group_mirroring(&mut c, &order);
}

#[test]
fn members_started_in_reverse_order_with_delays_form_one_group() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    let order = ["w1", "b1", "a1"];
    for delay_ms in [300, 1_500] {
        let mut c = Cluster::new(Spec::new("sync", 2, "32M", &TRIO));
        for m in order {
            c.spawn(m);
            std::thread::sleep(Duration::from_millis(delay_ms));
        }
        assert_one_group_mirroring(&mut c, &order);
    }
}

#[test]
fn member_still_joining_stops_cleanly_on_sigterm() {
    // a1 comes first in the domain; something listens at its address but
    // never answers, so b1 can neither join nor found: it keeps asking.
    let c0 = Cluster::new(Spec::new("sync", 2, "32M", &TRIO));
    let mute = std::net::TcpListener::bind(&c0.spec.members[0].address).expect("hold a1's port");
    let mut c = c0;
    c.spawn("b1");
    let log = c.dir.path().join("b1.1.log");
    common::wait_until("b1 reports that it waits", cluster_support::SETTLE, || {
        c.assert_running("b1");
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("not in the group yet"))
    });
    // Status answers meanwhile, and says what b1 waits for.
    let s = c.status("b1").expect("a joining member answers status");
    assert!(
        s.warnings
            .iter()
            .any(|w| w.starts_with("not in the group yet") && w.contains("a1")),
        "{:?}",
        s.warnings
    );
    c.stop("b1");
    drop(mute);
}

#[test]
fn member_waiting_for_a_majority_stops_cleanly_on_sigterm() {
    let mut c = Cluster::new(Spec::new("sync", 2, "32M", &TRIO));
    c.start_all(&["a1", "b1", "w1"]);
    c.wait_status("w1", "three members joined", |s| {
        agreed_view(s).matches(" joined").count() == 3
    });
    c.stop_all();
    // Restarted alone, b1 is a voter of a group whose majority is down: it
    // waits for a leader that cannot be elected, until it is told to stop.
    c.spawn("b1");
    let log = c.dir.path().join("b1.2.log");
    common::wait_until("b1 waits for a leader", cluster_support::SETTLE, || {
        c.assert_running("b1");
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("waiting for a majority"))
    });
    c.stop("b1");
}
