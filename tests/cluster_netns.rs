//! Members in separate network namespaces (scripts/netns-cluster.sh): the
//! group agrees over a real bridge, a member cut off the network is marked
//! failed, and it rejoins once its link comes back.

mod cluster_support;
mod common;

use cluster_support::{agreed_view, host_of, member_state, Cluster, Netns, Spec};

#[test]
fn member_cut_off_the_network_is_marked_failed_and_rejoins_when_restored() {
    if !common::require(&["ip", "nbdsh"]) || !common::require_root() {
        return;
    }
    let net = Netns::up(3);
    let mut spec = Spec::new(
        "sync",
        2,
        "32M",
        &[("a1", Some(0)), ("b1", Some(1)), ("w1", None)],
    );
    for (i, m) in spec.members.iter_mut().enumerate() {
        m.address = format!("10.231.0.{}:7401", 11 + i);
    }
    let names = ["a1", "b1", "w1"];
    // Processes must die before the namespaces go: declared after `net`.
    let mut c = Cluster::new(spec);
    for (i, m) in names.iter().enumerate() {
        c.wrap.insert((*m).to_string(), net.exec_prefix(i + 1));
    }
    c.start_all(&names);
    c.wait_synced("a1");
    let mut views = Vec::new();
    common::wait_until("the three members agree", cluster_support::SETTLE, || {
        views = names
            .iter()
            .map(|m| c.status(m).map(|s| agreed_view(&s)).unwrap_or_default())
            .collect();
        !views[0].is_empty() && views.iter().all(|v| v == &views[0])
    });

    // b1 (namespace 2) loses its link: the others declare it failed.
    net.cut(2);
    let s = c.wait_status("a1", "b1 marked failed", |s| {
        member_state(s, "b1") == "failed"
    });
    assert_eq!(host_of(&s, "payroll-prod"), Some("a1"));
    assert_eq!(host_of(&s, "payroll-dr"), None, "{}", s.to_text());
    c.assert_running("b1");
    // Writes while b1 is unreachable are resynced when it returns.
    cluster_support::nbd_write_pattern(&c.nbd_uri("a1"), 3 << 20, 256 << 10, 11);

    net.restore(2);
    c.wait_status("a1", "b1 rejoined and synced", |s| {
        member_state(s, "b1") == "joined"
            && host_of(s, "payroll-dr") == Some("b1")
            && cluster_support::all_synced(s)
    });
    c.stop_all();
    c.assert_identical(1);
}

#[test]
fn production_host_cut_off_rejoins_and_its_copy_ends_identical() {
    if !common::require(&["ip", "nbdsh"]) || !common::require_root() {
        return;
    }
    let net = Netns::up(3);
    let mut spec = Spec::new(
        "sync",
        2,
        "32M",
        &[("a1", Some(0)), ("b1", Some(1)), ("w1", None)],
    );
    for (i, m) in spec.members.iter_mut().enumerate() {
        m.address = format!("10.231.0.{}:7401", 11 + i);
    }
    let names = ["a1", "b1", "w1"];
    let mut c = Cluster::new(spec);
    for (i, m) in names.iter().enumerate() {
        c.wrap.insert((*m).to_string(), net.exec_prefix(i + 1));
    }
    c.start_all(&names);
    c.wait_synced("a1");
    net.cut(1);
    c.wait_status("w1", "a1 marked failed", |s| {
        member_state(s, "a1") == "failed"
    });
    // The isolated host's clients still reach it over its unix socket, but
    // once its lease runs out it refuses their writes.
    common::wait_until("a1 fences writes", cluster_support::SETTLE, || {
        cluster_support::nbd_try_write(&c.nbd_uri("a1")).as_deref() == Some("EIO")
    });
    net.restore(1);
    let s = c.wait_status("w1", "a1 back as production host, copy in sync", |s| {
        member_state(s, "a1") == "joined"
            && host_of(s, "payroll-prod") == Some("a1")
            && cluster_support::all_synced(s)
    });
    assert!(s.quorum, "{}", s.to_text());
    common::wait_for_unix(&c.nbd_socket("a1"), cluster_support::SETTLE);
    cluster_support::nbd_write_pattern(&c.nbd_uri("a1"), 3 << 20, 256 << 10, 12);
    c.wait_synced("w1");
    c.stop_all();
    c.assert_identical(1);
}
