//! Operating a running group: metrics, events, `status --watch` and the
//! control channel's authentication, against real member processes (one
//! production member, one copy member, one witness on loopback).

mod common;
mod ops_support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{bin, Proc};
use ops_support::{has_family, samples, scrape, value, Cluster, ONE_CLUSTER, WAIT};

#[test]
fn metrics_count_nbd_writes_and_show_the_production_role() {
    if !common::require(&["qemu-io"]) {
        return;
    }
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let c = Cluster::start_all();
    let before = samples(&scrape(&c.metrics["a1"]));
    let writes0 = before.get("geomirror_writes_total").copied().unwrap_or(0.0);
    let bytes0 = before
        .get("geomirror_write_bytes_total")
        .copied()
        .unwrap_or(0.0);

    c.write_blocks(8, 65536);

    let mut after = BTreeMap::new();
    common::wait_until("the write counters to grow", WAIT, || {
        after = samples(&scrape(&c.metrics["a1"]));
        after.get("geomirror_writes_total").copied().unwrap_or(0.0) >= writes0 + 8.0
    });
    assert!(value(&after, "geomirror_write_bytes_total") >= bytes0 + 8.0 * 65536.0);
    assert!(value(&after, "geomirror_write_latency_seconds_count") >= 8.0);
    assert_eq!(
        value(
            &after,
            r#"geomirror_role{resource="payroll-prod",role="production"}"#
        ),
        1.0
    );
    assert_eq!(value(&after, "geomirror_quorum"), 1.0);
    assert_eq!(value(&after, r#"geomirror_member_up{member="b1"}"#), 1.0);
    // The production host follows its copy's lag and resync.
    for family in [
        "geomirror_replication_lag_bytes",
        "geomirror_replication_lag_seconds",
        "geomirror_resync_remaining_bytes",
        "geomirror_resync_rate_bytes_per_second",
    ] {
        assert!(has_family(&after, family), "no {family} on a1");
    }
    assert_eq!(
        value(
            &after,
            r#"geomirror_copy_state{copy="payroll-dr",state="UpToDate"}"#
        ),
        1.0
    );

    // The copy member knows its role and the copy's state from the group.
    let b1 = samples(&scrape(&c.metrics["b1"]));
    assert_eq!(
        value(&b1, r#"geomirror_role{resource="payroll-dr",role="copy"}"#),
        1.0
    );
    assert!(has_family(&b1, "geomirror_replication_lag_bytes"));
    assert!(has_family(&b1, "geomirror_resync_remaining_bytes"));
    assert_eq!(value(&b1, "geomirror_writes_total"), 0.0);
}

/// Reads event lines from a running `events` client into a shared list.
fn collect_lines(child: &mut std::process::Child) -> Arc<Mutex<Vec<serde_json::Value>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = child.stdout.take().expect("piped stdout");
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("event line is not JSON ({e}): {line}"));
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(v);
        }
    });
    lines
}

fn saw(lines: &Mutex<Vec<serde_json::Value>>, pred: impl Fn(&serde_json::Value) -> bool) -> bool {
    lines
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(pred)
}

#[test]
fn events_stream_joins_host_changes_mirroring_and_a_killed_copy_failing() {
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new();
    // a1 alone serves before the others start: it founds with --bootstrap.
    c.up_bootstrap("a1");
    common::wait_for_unix(&c.sock, WAIT);
    let child = Command::new(bin())
        .args(["events", "--config", c.cfg(), "--member", "a1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn events");
    let mut events = Proc {
        child,
        name: "geomirror events".into(),
    };
    let lines = collect_lines(&mut events.child);
    // The snapshot: a1 joined and hosts production.
    common::wait_until("the snapshot of a1's state", WAIT, || {
        saw(&lines, |v| v["kind"] == "join" && v["member"] == "a1")
            && saw(&lines, |v| {
                v["kind"] == "host-change" && v["role"] == "production" && v["to"] == "a1"
            })
    });

    c.up("b1");
    c.up("w1");
    common::wait_until(
        "b1 joining, hosting the copy, mirroring starting",
        WAIT,
        || {
            saw(&lines, |v| v["kind"] == "join" && v["member"] == "b1")
                && saw(&lines, |v| v["kind"] == "join" && v["member"] == "w1")
                && saw(&lines, |v| {
                    v["kind"] == "host-change"
                        && v["resource"] == "payroll-dr"
                        && v["role"] == "copy"
                        && v["to"] == "b1"
                })
                && saw(&lines, |v| {
                    v["kind"] == "mirroring-start" && v["from"] == "a1" && v["to"] == "b1"
                })
                && saw(&lines, |v| {
                    v["kind"] == "sync-state" && v["resource"] == "payroll-dr" && v["to"] == "b1"
                })
        },
    );
    for v in lines.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        assert!(v["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{v}");
    }
    assert!(!saw(&lines, |v| v["kind"] == "fail"));

    c.procs.get("b1").expect("b1 runs").signal(libc::SIGKILL);
    common::wait_until("a fail line for the killed copy host", WAIT, || {
        saw(&lines, |v| v["kind"] == "fail" && v["member"] == "b1")
    });
    common::wait_until("mirroring to b1 to stop", WAIT, || {
        saw(&lines, |v| v["kind"] == "mirroring-stop" && v["to"] == "b1")
    });
}

#[test]
fn status_on_every_member_and_watch_off_a_terminal_and_a_wrong_secret() {
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let c = Cluster::start_all();

    // The sync columns come through the group: every member shows them.
    for m in ["b1", "w1"] {
        let s = c.wait_copy_up_to_date(m);
        assert_eq!(s["member"], m);
        assert_eq!(s["resources"][1]["host"], "b1");
        assert_eq!(s["resources"][1]["bytes_to_go"], 0);
    }
    let text =
        common::run_ok(Command::new(bin()).args(["status", "--config", c.cfg(), "--member", "w1"]));
    assert!(text.contains("UpToDate"), "{text}");

    // --watch with stdout a pipe: plain reports one after another.
    let log = c.path("watch.out");
    let out = std::fs::File::create(&log).expect("create");
    let mut watch = Proc {
        child: Command::new(bin())
            .args([
                "status",
                "--watch",
                "--interval-ms",
                "200",
                "--config",
                c.cfg(),
            ])
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn status --watch"),
        name: "status --watch".into(),
    };
    std::thread::sleep(Duration::from_millis(1500));
    watch.signal(libc::SIGKILL);
    let _ = watch.wait_timeout(Duration::from_secs(5));
    let printed = std::fs::read_to_string(&log).expect("read the output");
    let reports = printed.matches("(answered by ").count();
    assert!(reports >= 2, "expected repeated reports:\n{printed}");
    assert!(
        !printed.contains('\x1b'),
        "escape codes off a terminal:\n{printed}"
    );

    // Same members, another secret: the member refuses the client.
    let wrong = c.path("wrong.toml");
    let text = std::fs::read_to_string(&c.config)
        .expect("read the domain")
        .replace("correct horse battery staple", "not the secret at all");
    std::fs::write(&wrong, text).expect("write");
    for cmd in [vec!["status", "--member", "a1"], vec!["verify"]] {
        let out = Command::new(bin())
            .args(&cmd)
            .args(["--config", wrong.to_str().expect("utf-8")])
            .output()
            .expect("run");
        assert!(
            !out.status.success(),
            "{cmd:?} with a wrong secret succeeded"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("authentication"), "{cmd:?}: {err}");
        assert!(
            out.stdout.is_empty(),
            "{cmd:?} printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let log = std::fs::read_to_string(c.path("a1.log")).expect("a1 log");
    assert!(
        log.contains("control connection refused"),
        "a1 did not log the refusal"
    );
}

#[test]
fn clients_fail_with_a_clear_message_when_no_member_answers_or_the_member_is_unknown() {
    let c = Cluster::new();
    for (args, words) in [
        (vec!["status"], "no member answered"),
        (vec!["verify"], "no member answered"),
        (vec!["events"], "no member answered"),
        (
            vec!["events", "--member", "nobody"],
            "not in the recovery domain",
        ),
    ] {
        let out = Command::new(bin())
            .args(&args)
            .args(["--config", c.cfg()])
            .output()
            .expect("run");
        assert!(
            !out.status.success(),
            "{args:?} succeeded with no member up"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(words), "{args:?}: {err}");
    }
}

#[test]
fn attach_by_config_finds_the_production_host_and_exposes_the_volume() {
    if !common::require(&["fusermount3", "qemu-io"]) || !common::require_root() {
        return;
    }
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let c = Cluster::start_all();
    c.write_blocks(2, 65536);
    let mnt = c.path("fuse");
    std::fs::create_dir_all(&mnt).expect("mount point");
    let log = c.path("attach.log");
    let mut attach = Proc::geomirror(
        &[
            "attach",
            "--config",
            c.cfg(),
            "--fuse",
            mnt.to_str().expect("utf-8"),
        ],
        &log,
    );
    // The group names a1 as production host; the file is named after the group.
    let file = mnt.join(ops_support::GROUP);
    common::wait_until("the FUSE file of the volume", WAIT, || file.exists());
    let data = std::fs::read(&file).expect("read the volume through FUSE");
    assert!(
        data[..65536].iter().all(|&b| b == 0x40),
        "first block as written"
    );
    assert!(
        data[65536..131072].iter().all(|&b| b == 0x41),
        "second block as written"
    );
    attach.signal(libc::SIGTERM);
    assert!(
        attach
            .wait_timeout(Duration::from_secs(20))
            .is_some_and(|s| s.success()),
        "attach exits 0 on SIGTERM: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

#[test]
fn metrics_count_open_nbd_connections() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let c = Cluster::start_all();
    let conns = || {
        value(
            &samples(&scrape(&c.metrics["a1"])),
            "geomirror_nbd_connections",
        )
    };
    assert_eq!(conns(), 0.0, "no client yet");
    // A client that holds its connection open for a while.
    let mut client = common::debian_cmd("nbdsh")
        .args(["-u", &c.nbd_uri(), "-c", "import time\ntime.sleep(30)"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nbdsh");
    common::wait_until("one NBD connection counted", WAIT, || conns() == 1.0);
    let _ = client.kill();
    let _ = client.wait();
    common::wait_until("the connection uncounted", WAIT, || conns() == 0.0);
}
