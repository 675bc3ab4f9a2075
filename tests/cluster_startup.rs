//! Start-up and shutdown of real `geomirror up` processes: members started
//! at the same moment (or in any order, with delays) form one group, a
//! member that hears from only part of the domain founds none (unless
//! started with `--bootstrap`), and a member stops cleanly on SIGTERM in
//! every phase, joining included.

mod cluster_support;
mod common;

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cluster_support::{agreed_view, host_of, member_state, Cluster, Spec};
use geomirror::node::report::JOINING_WARNING;
use geomirror::node::status::StatusReport;

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

/// How long a member that must not found is watched: several of its probe
/// rounds (their pause grows from 0.2 s to 3 s).
const NOT_FOUNDING_WATCH: Duration = Duration::from_secs(5);

/// Whether `s` is the report of a member still outside any group, waiting
/// to hear from every one of `unheard`.
fn waits_for(s: &StatusReport, unheard: &[&str]) -> bool {
    s.warnings.iter().any(|w| {
        w.starts_with(JOINING_WARNING)
            && w.contains("no answer yet from")
            && unheard.iter().all(|m| w.contains(m))
    })
}

/// Watches `member` for [`NOT_FOUNDING_WATCH`]: at every look it still
/// waits for `unheard`, knows no leader and sees nobody joined.
fn assert_keeps_waiting(c: &mut Cluster, member: &str, unheard: &[&str]) {
    let until = Instant::now() + NOT_FOUNDING_WATCH;
    let mut looks = 0;
    while Instant::now() < until {
        c.assert_running(member);
        let s = c.status(member).expect("a waiting member answers status");
        assert!(
            waits_for(&s, unheard)
                && s.leader.is_none()
                && s.members.iter().all(|m| m.state == "absent"),
            "{member} founded a group of its own:\n{}",
            s.to_text()
        );
        looks += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(looks >= 5, "{member} looked at only {looks} times");
}

#[test]
fn lone_member_with_an_empty_state_dir_does_not_found_a_group() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    let mut c = Cluster::new(Spec::new("sync", 2, "32M", &TRIO));
    c.spawn("a1");
    // a1 comes first in the domain, yet with b1 and w1 silent it cannot
    // tell them down from cut off: it waits, and says for whom.
    c.wait_status("a1", "a1 waiting for b1 and w1", |s| {
        waits_for(s, &["b1", "w1"])
    });
    assert_keeps_waiting(&mut c, "a1", &["b1", "w1"]);
    let log = std::fs::read_to_string(c.dir.path().join("a1.1.log")).expect("a1's log");
    assert!(
        log.contains("not in the group yet") && log.contains("no answer yet from b1, w1"),
        "{log}"
    );
    assert!(!log.contains("founding the group"), "{log}");
    // The rest of the domain comes: one group forms, with every member.
    c.spawn("b1");
    c.spawn("w1");
    assert_one_group_mirroring(&mut c, &["a1", "b1", "w1"]);
}

/// A network namespace with only its loopback up: a member started there
/// reaches none of the others' addresses. Removed when dropped.
struct Isolated(String);

impl Isolated {
    fn new() -> Isolated {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "gmcut{}{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // A namespace left by an earlier run of this process id.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        common::run_ok(Command::new("ip").args(["netns", "add", &name]));
        common::run_ok(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        Isolated(name)
    }

    fn exec_prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.0]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn member_cut_off_from_the_running_group_does_not_found_a_second_one() {
    if !common::require(&["ip"]) || !common::require_root() {
        return;
    }
    let cut = Isolated::new();
    // Processes must die before the namespace goes: declared after `cut`.
    let mut c = Cluster::new(Spec::payroll("sync", "32M"));
    // The group runs without a2 (a1 founds it with --bootstrap).
    c.start_all(&["a1", "b1", "w1"]);
    let before = agreed_view(&c.wait_synced("a1"));
    // a2, empty state dir, starts where none of the others can be reached.
    c.wrap.insert("a2".into(), cut.exec_prefix());
    c.spawn("a2");
    c.wait_status("a2", "a2 waiting for the others", |s| {
        waits_for(s, &["a1", "b1", "w1"])
    });
    assert_keeps_waiting(&mut c, "a2", &["a1", "b1", "w1"]);
    assert!(
        !c.nbd_socket("a2").exists(),
        "a2 serves the volume from a group of its own"
    );
    // The real group did not change meanwhile.
    let s = c.status("a1").expect("a1 answers");
    assert_eq!(agreed_view(&s), before, "{}", s.to_text());
    assert_eq!(member_state(&s, "a2"), "absent");
    // Reconnected (started where it reaches the others), a2 joins the one group.
    c.stop("a2");
    c.wrap.remove("a2");
    c.start("a2");
    c.wait_all_joined(&["a1", "a2", "b1", "w1"]);
    c.stop_all();
}

#[test]
fn bootstrap_founds_a_group_whose_other_member_never_starts() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    let mut c = Cluster::new(Spec::new("sync", 2, "32M", &TRIO));
    // b1's site is gone for good: a1 is told to found without it.
    c.bootstrap.insert("a1".into());
    c.spawn("a1");
    c.spawn("w1");
    let view = c.wait_all_joined(&["a1", "w1"]);
    assert!(view.contains("b1 absent"), "{view}");
    let log = std::fs::read_to_string(c.dir.path().join("a1.1.log")).expect("a1's log");
    assert!(
        log.contains("--bootstrap: founding the group without b1"),
        "{log}"
    );
    // The volume is served, and what is written reads back.
    let s = c.wait_status("w1", "a1 hosts production", |s| {
        host_of(s, "payroll-prod") == Some("a1")
    });
    assert_eq!(host_of(&s, "payroll-dr"), None);
    common::wait_for_unix(&c.nbd_socket("a1"), cluster_support::SETTLE);
    let uri = c.nbd_uri("a1");
    cluster_support::nbd_write_pattern(&uri, 1 << 20, 256 << 10, 5);
    cluster_support::nbd_check_pattern(&uri, 1 << 20, 256 << 10, 5);
    // w1 was started without the flag: it joined the group a1 founded.
    let w1 = std::fs::read_to_string(c.dir.path().join("w1.1.log")).expect("w1's log");
    assert!(w1.contains("joined the group through"), "{w1}");
    c.stop_all();
}
