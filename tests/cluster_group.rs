//! The group with real `geomirror up` processes on loopback: members agree
//! whatever the start order, production fails over on a clean stop, a
//! killed copy host is marked failed and rejoins, bad starts are refused.

mod cluster_support;
mod common;

use std::os::unix::fs::FileExt;
use std::process::Command;

use cluster_support::{host_of, member_state, Cluster, Spec};

/// Waits until every running member reports the same group view; returns it.
/// `nbdinfo --size` of the volume served by `member`.
fn nbd_size(c: &Cluster, member: &str) -> u64 {
    let out = common::run_ok(
        common::debian_cmd("nbdinfo")
            .arg("--size")
            .arg(c.nbd_uri(member)),
    );
    out.trim().parse().expect("nbdinfo prints a size")
}

fn run_start_order(spec: Spec, order: &[&str]) {
    let mut c = Cluster::new(spec);
    c.start_all(order);
    let s = c.wait_synced(order[0]);
    let view = c.wait_all_joined(order);
    for m in order {
        assert!(
            view.contains(&format!("{m} joined")),
            "{m} not joined in:\n{view}"
        );
    }
    let prod = host_of(&s, "payroll-prod")
        .expect("production is hosted")
        .to_string();
    assert_eq!(
        nbd_size(&c, &prod),
        c.data_size(0),
        "served size is the data size"
    );
    c.stop_all();
}

#[test]
fn three_members_agree_whatever_the_start_order() {
    if !common::require(&["nbdinfo"]) {
        return;
    }
    let members = [("a1", Some(0)), ("b1", Some(1)), ("w1", None)];
    for order in [["a1", "b1", "w1"], ["w1", "b1", "a1"]] {
        run_start_order(Spec::new("sync", 2, "32M", &members), &order);
    }
}

#[test]
fn five_members_agree_whatever_the_start_order() {
    if !common::require(&["nbdinfo"]) {
        return;
    }
    let members = [
        ("a1", Some(0)),
        ("a2", Some(0)),
        ("b1", Some(1)),
        ("b2", Some(1)),
        ("w1", None),
    ];
    for order in [
        ["b2", "w1", "a2", "b1", "a1"],
        ["a1", "b1", "w1", "b2", "a2"],
    ] {
        run_start_order(Spec::new("sync", 2, "32M", &members), &order);
    }
}

#[test]
fn clean_stop_of_production_host_hands_the_volume_to_the_next_member() {
    if !common::require(&["nbdinfo", "nbdsh"]) {
        return;
    }
    let mut c = Cluster::new(Spec::payroll("sync", "32M"));
    c.start_all(&["a1", "a2", "b1", "w1"]);
    let s = c.wait_synced("w1");
    assert_eq!(host_of(&s, "payroll-prod"), Some("a1"));
    cluster_support::nbd_write_pattern(&c.nbd_uri("a1"), 1 << 20, 256 << 10, 3);
    c.stop("a1");
    let s = c.wait_status("w1", "a2 hosts production", |s| {
        host_of(s, "payroll-prod") == Some("a2") && member_state(s, "a1") == "left"
    });
    assert_eq!(host_of(&s, "payroll-dr"), Some("b1"));
    common::wait_for_unix(&c.nbd_socket("a2"), cluster_support::SETTLE);
    cluster_support::nbd_check_pattern(&c.nbd_uri("a2"), 1 << 20, 256 << 10, 3);
    // The copy keeps following the new production host.
    cluster_support::nbd_write_pattern(&c.nbd_uri("a2"), 4 << 20, 128 << 10, 9);
    c.wait_synced("w1");
    c.stop_all();
    c.assert_identical(1);
}

#[test]
fn killed_copy_host_is_marked_failed_and_rejoins_on_restart() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    let mut c = Cluster::new(Spec::payroll("sync", "32M"));
    c.start_all(&["a1", "a2", "b1", "w1"]);
    c.wait_synced("w1");
    c.kill("b1");
    let s = c.wait_status("a1", "b1 marked failed", |s| {
        member_state(s, "b1") == "failed" && host_of(s, "payroll-dr").is_none()
    });
    assert_eq!(host_of(&s, "payroll-prod"), Some("a1"));
    // Production keeps serving while the copy is gone.
    cluster_support::nbd_write_pattern(&c.nbd_uri("a1"), 2 << 20, 512 << 10, 5);
    c.start("b1");
    let s = c.wait_status("a1", "b1 rejoined and synced", |s| {
        member_state(s, "b1") == "joined"
            && host_of(s, "payroll-dr") == Some("b1")
            && cluster_support::all_synced(s)
    });
    assert!(s.mirroring.iter().any(|m| m.to == "b1"), "{}", s.to_text());
    // Once the deferred clear pass has run, nothing stays dirty.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    c.stop_all();
    c.assert_identical(1);
    assert_eq!(
        dirty_bytes(&c.disk(0)),
        0,
        "chunks left dirty on production"
    );
}

/// Runs a2 with `config` against a running {a1, b1, w1}; asserts it exits
/// non-zero with a message containing `cause`, and that a2 never joined.
fn assert_refused(c: &Cluster, config: &std::path::Path, cause: &str) {
    let out = c.run_refused("a2", config);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "a2 started:\n{text}");
    assert!(
        text.contains(cause),
        "message does not name {cause:?}:\n{text}"
    );
    let s = c.status("a1").expect("a1 answers");
    assert_ne!(member_state(&s, "a2"), "joined", "{}", s.to_text());
    assert!(s
        .members
        .iter()
        .all(|m| m.hosts.is_empty() || m.name != "a2"));
}

fn running_trio() -> Cluster {
    let mut c = Cluster::new(Spec::payroll("sync", "16M"));
    c.start_all(&["a1", "b1", "w1"]);
    c.wait_synced("a1");
    c
}

#[test]
fn member_not_in_the_recovery_domain_is_refused() {
    let c = running_trio();
    let out = c.run_refused("zz9", &c.config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("\"zz9\" is not in the recovery domain"),
        "{err}"
    );
    let s = c.status("a1").expect("a1 answers");
    assert!(s.members.iter().all(|m| m.name != "zz9"));
}

#[test]
fn member_with_a_different_recovery_domain_is_refused() {
    let c = running_trio();
    // Same members, b1 and w1 listed in the other order.
    let text = c.domain_text();
    let b1 = text.find("[[member]]\nname = \"b1\"").expect("b1 entry");
    let w1 = text.find("[[member]]\nname = \"w1\"").expect("w1 entry");
    let swapped = format!(
        "{}{}\n{}",
        &text[..b1],
        text[w1..].trim_end(),
        &text[b1..w1]
    );
    let other = c.dir.path().join("other.toml");
    std::fs::write(&other, swapped).expect("write the modified domain");
    assert_refused(&c, &other, "has recovery domain");
    // The refused member left no vote behind: the group still survives the
    // loss of one of its three members (b1 is declared failed).
    let mut c = c;
    c.kill("b1");
    c.wait_status("a1", "b1 marked failed after a2's refusal", |s| {
        member_state(s, "b1") == "failed"
    });
}

#[test]
fn disk_labelled_for_another_group_is_refused() {
    let c = running_trio();
    let foreign = c.dir.path().join("foreign.img");
    common::run_ok(
        Command::new(common::bin())
            .args([
                "format",
                "--group",
                "hr",
                "--resource",
                "payroll-prod",
                "--size",
                "8M",
            ])
            .arg(&foreign),
    );
    let text = c.domain_text().replace(
        &format!(
            "disks = [\"{}\"]\nnbd = \"unix:{}\"",
            c.disk(0).display(),
            c.nbd_socket("a2").display()
        ),
        &format!(
            "disks = [\"{}\"]\nnbd = \"unix:{}\"",
            foreign.display(),
            c.nbd_socket("a2").display()
        ),
    );
    assert!(text.contains("foreign.img"));
    let other = c.dir.path().join("foreign.toml");
    std::fs::write(&other, text).expect("write the domain");
    assert_refused(&c, &other, "labelled for group \"hr\"");
}

#[test]
fn disk_with_a_corrupt_label_is_refused() {
    let c = running_trio();
    let bad = c.dir.path().join("corrupt.img");
    common::run_ok(
        Command::new(common::bin())
            .args([
                "format",
                "--group",
                "payroll",
                "--resource",
                "payroll-prod",
                "--size",
                "8M",
            ])
            .arg(&bad),
    );
    // Damage the body of both label slots (the last two 4 KiB blocks).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&bad)
        .expect("open");
    let len = f.metadata().expect("stat").len();
    for slot_end in [len - 4096, len] {
        f.write_all_at(&[0xa5; 16], slot_end - 4096 + 64)
            .expect("damage");
    }
    drop(f);
    let text = c.domain_text().replace(
        &format!(
            "disks = [\"{}\"]\nnbd = \"unix:{}\"",
            c.disk(0).display(),
            c.nbd_socket("a2").display()
        ),
        &format!(
            "disks = [\"{}\"]\nnbd = \"unix:{}\"",
            bad.display(),
            c.nbd_socket("a2").display()
        ),
    );
    let other = c.dir.path().join("corrupt.toml");
    std::fs::write(&other, text).expect("write the domain");
    assert_refused(&c, &other, "crc mismatch");
}

#[test]
fn killed_production_host_fails_over_and_the_copy_follows_the_new_host() {
    if !common::require(&["nbdsh", "fio"]) {
        return;
    }
    let mut c = Cluster::new(Spec::payroll("sync", "32M"));
    c.start_all(&["a1", "a2", "b1", "w1"]);
    c.wait_synced("w1");
    cluster_support::nbd_write_pattern(&c.nbd_uri("a1"), 1 << 20, 256 << 10, 21);
    c.kill("a1");
    let s = c.wait_status("w1", "a2 hosts production after a1's crash", |s| {
        member_state(s, "a1") == "failed" && host_of(s, "payroll-prod") == Some("a2")
    });
    assert_eq!(host_of(&s, "payroll-dr"), Some("b1"));
    common::wait_for_unix(&c.nbd_socket("a2"), cluster_support::SETTLE);
    // Acknowledged writes survive the crash of the host that took them.
    cluster_support::nbd_check_pattern(&c.nbd_uri("a2"), 1 << 20, 256 << 10, 21);
    common::run_ok(&mut cluster_support::fio_verified(
        &c.nbd_uri("a2"),
        "8M",
        &[],
    ));
    c.wait_synced("w1");
    c.stop_all();
    c.assert_identical(1);
}

/// Dirty bytes recorded in the label area of `disk`.
fn dirty_bytes(disk: &std::path::Path) -> u64 {
    let out = common::run_ok(
        Command::new(common::bin())
            .args(["label", "--json"])
            .arg(disk),
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("label JSON");
    v["dirty_bytes"].as_u64().expect("dirty_bytes")
}

#[test]
fn killed_copy_host_hands_its_disk_to_the_next_member_of_its_site() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    let mut c = Cluster::new(Spec::new(
        "sync",
        2,
        "32M",
        &[
            ("a1", Some(0)),
            ("b1", Some(1)),
            ("b2", Some(1)),
            ("w1", None),
        ],
    ));
    c.start_all(&["a1", "b1", "b2", "w1"]);
    let s = c.wait_synced("w1");
    assert_eq!(host_of(&s, "payroll-dr"), Some("b1"));
    c.kill("b1");
    cluster_support::nbd_write_pattern(&c.nbd_uri("a1"), 5 << 20, 256 << 10, 31);
    c.wait_status("w1", "b2 hosts the copy, in sync", |s| {
        member_state(s, "b1") == "failed"
            && host_of(s, "payroll-dr") == Some("b2")
            && cluster_support::all_synced(s)
    });
    cluster_support::nbd_write_pattern(&c.nbd_uri("a1"), 9 << 20, 256 << 10, 32);
    c.wait_synced("w1");
    // Give the deferred clear pass its period, then stop: a copy in sync
    // leaves no chunk dirty on the production disk.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    c.stop_all();
    c.assert_identical(1);
    assert_eq!(
        dirty_bytes(&c.disk(0)),
        0,
        "chunks left dirty on production"
    );
}
