//! Fencing and split brain with real `geomirror up` processes: a production
//! host cut off from the majority refuses writes once its lease runs out,
//! until a majority confirms it again; a copy
//! disk written on its own while apart is detected as split brain and never
//! merged, until an operator discards one side.

mod cluster_support;
mod common;

use std::path::Path;
use std::process::Command;

use cluster_support::{nbd_check_pattern, nbd_try_write, nbd_write_pattern, Cluster, Spec};
use common::Proc;

/// Starts `geomirror events` following `member`, its lines going to `log`.
fn follow_events(c: &Cluster, member: &str, log: &Path) -> Proc {
    let config = c.config.display().to_string();
    Proc::geomirror(&["events", "--config", &config, "--member", member], log)
}

/// Waits until the events written to `log` contain `needle`.
fn wait_event(log: &Path, needle: &str) -> String {
    let mut text = String::new();
    common::wait_until(
        &format!("an event containing {needle:?}"),
        cluster_support::SETTLE,
        || {
            text = std::fs::read_to_string(log).unwrap_or_default();
            text.contains(needle)
        },
    );
    text
}

/// The group every test here runs: production member a1, copy member b1
/// and a witness, 16 MiB of data.
fn production_copy_witness(mode: &str) -> Spec {
    Spec::new(
        mode,
        2,
        "16M",
        &[("a1", Some(0)), ("b1", Some(1)), ("w1", None)],
    )
}

#[test]
fn production_without_quorum_refuses_writes_until_the_majority_returns() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    let spec = production_copy_witness("sync");
    let mut c = Cluster::new(spec.with_metrics("a1"));
    c.start_all(&["a1", "b1", "w1"]);
    c.wait_synced("a1");
    assert_eq!(c.gauge("a1", "geomirror_writes_fenced"), Some(0.0));
    let uri = c.nbd_uri("a1");
    nbd_write_pattern(&uri, 0, 65536, 1);
    let events_log = c.dir.path().join("a1.events");
    let _events = follow_events(&c, "a1", &events_log);
    wait_event(&events_log, "\"kind\":\"configure\"");

    // The majority (b1 and the witness) is gone: a1 is on its own.
    c.kill("b1");
    c.kill("w1");
    let s = c.wait_status("a1", "production fenced", |s| {
        s.resources[0].state == "Fenced"
    });
    assert!(!s.quorum, "{}", s.to_text());
    assert!(
        s.warnings.iter().any(|w| w.contains("writes fenced on a1")),
        "status says why: {:?}",
        s.warnings
    );
    assert_eq!(nbd_try_write(&uri).as_deref(), Some("EIO"), "fenced write");
    // Reads change nothing and are still answered.
    nbd_check_pattern(&uri, 0, 65536, 1);
    wait_event(&events_log, "\"kind\":\"writes-fenced\"");
    // The lease of the recovery domain, quoted in the reason.
    let lease = format!("within the last {} ms", cluster_support::LEASE_MS);
    assert!(
        s.warnings.iter().any(|w| w.contains(&lease)),
        "the lease: {:?}",
        s.warnings
    );
    common::wait_until("the fenced gauge", cluster_support::SETTLE, || {
        c.gauge("a1", "geomirror_writes_fenced") == Some(1.0)
    });
    // A subscriber arriving after the fence learns of it from its snapshot.
    let late_log = c.dir.path().join("a1.late.events");
    let late = follow_events(&c, "a1", &late_log);
    wait_event(&late_log, "\"kind\":\"writes-fenced\"");
    drop(late);

    // The majority returns and a1 still hosts production: writes resume.
    c.start("w1");
    c.start("b1");
    let s = c.wait_status("a1", "writes resumed", |s| {
        s.quorum && s.resources[0].state != "Fenced"
    });
    assert_eq!(s.resources[0].host.as_deref(), Some("a1"));
    assert_eq!(nbd_try_write(&uri), None, "write after quorum returned");
    nbd_write_pattern(&uri, 0, 65536, 2);
    nbd_check_pattern(&uri, 0, 65536, 2);
    wait_event(&events_log, "\"kind\":\"writes-resumed\"");
    common::wait_until(
        "the fenced gauge back to 0",
        cluster_support::SETTLE,
        || c.gauge("a1", "geomirror_writes_fenced") == Some(0.0),
    );
    c.wait_synced("a1");
    c.stop_all();
    c.assert_identical(1);
}

/// crc32 of the first `len` bytes of `path` (a disk's data area).
fn data_sum(path: &Path, len: u64) -> u32 {
    use std::io::Read;
    let mut f = std::fs::File::open(path).expect("open disk");
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = (left as usize).min(buf.len());
        f.read_exact(&mut buf[..n]).expect("read disk");
        h.update(&buf[..n]);
        left -= n as u64;
    }
    h.finalize()
}

/// The `generations` object of a disk's label.
fn generations(disk: &Path) -> serde_json::Value {
    common::label(disk)["generations"].clone()
}

/// `geomirror serve --disk DISK` on a unix socket in `dir`; returns the
/// process and the export's URI once it listens.
fn serve_standalone(dir: &Path, disk: &Path) -> (Proc, String) {
    let sock = dir.join("standalone.sock");
    let _ = std::fs::remove_file(&sock);
    let listen = format!("unix:{}", sock.display());
    let disk_arg = disk.display().to_string();
    let p = Proc::geomirror(
        &["serve", "--disk", &disk_arg, "--listen", &listen],
        &dir.join("standalone.log"),
    );
    common::wait_for_unix(&sock, cluster_support::SETTLE);
    (
        p,
        format!("nbd+unix:///geomirror?socket={}", sock.display()),
    )
}

/// The size the NBD server announces at `uri`.
fn nbd_size(uri: &str) -> u64 {
    let out =
        common::run_ok(common::debian_cmd("nbdsh").args(["-u", uri, "-c", "print(h.get_size())"]));
    out.trim().parse().expect("size")
}

#[test]
fn a_copy_written_standalone_while_production_wrote_is_split_brain_and_never_merged() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    let spec = production_copy_witness("sync");
    let mut c = Cluster::new(spec);
    c.start_all(&["a1", "b1", "w1"]);
    c.wait_synced("a1");
    let uri = c.nbd_uri("a1");
    nbd_write_pattern(&uri, 0, 65536, 1);
    c.wait_synced("a1");
    let (prod_disk, copy_disk) = (c.disk(0), c.disk(1));

    // A disk its member hosts is not served on the side.
    let out = Command::new(common::bin())
        .args(["serve", "--disk"])
        .arg(&copy_disk)
        .args([
            "--listen",
            &format!("unix:{}", c.dir.path().join("x.sock").display()),
        ])
        .output()
        .expect("run serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("held by another process"),
        "serve of a hosted disk: {err}"
    );

    // Apart: production writes while the copy member is down...
    c.stop("b1");
    nbd_write_pattern(&uri, 1 << 20, 65536, 2);
    c.stop_all();
    // ...and the copy disk is used on its own.
    let before = generations(&copy_disk);
    let (mut served, copy_uri) = serve_standalone(c.dir.path(), &copy_disk);
    let data_bytes = c.data_size(1);
    assert_eq!(
        nbd_size(&copy_uri),
        data_bytes,
        "only the data area is exposed"
    );
    nbd_write_pattern(&copy_uri, 2 << 20, 65536, 3);
    served.signal(libc::SIGTERM);
    assert!(served
        .wait_timeout(cluster_support::SETTLE)
        .is_some_and(|s| s.success()));
    let after = generations(&copy_disk);
    assert_ne!(after["current"], before["current"], "a new generation");
    assert_eq!(
        after["bitmap"], before["current"],
        "tracked from the shared one"
    );
    assert!(
        common::label(&copy_disk)["dirty_bytes"].as_u64() >= Some(65536),
        "the standalone write is marked in the copy's bitmap"
    );
    let sums = (
        data_sum(&prod_disk, data_bytes),
        data_sum(&copy_disk, data_bytes),
    );

    // Together again: detected, reported, nothing moved either way.
    c.start_all(&["a1", "b1", "w1"]);
    let s = c.wait_status("a1", "split brain on a1", |s| {
        s.resources[1].state == "SplitBrain"
    });
    assert!(
        s.mirroring
            .iter()
            .any(|m| m.to == "b1" && m.state == "split-brain"),
        "{}",
        s.to_text()
    );
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("split brain on payroll-dr") && w.contains("--discard-data")),
        "status says what to do: {:?}",
        s.warnings
    );
    c.wait_status("b1", "split brain seen from b1", |s| {
        s.resources[1].state == "SplitBrain"
    });
    let events_log = c.dir.path().join("split.events");
    let _events = follow_events(&c, "b1", &events_log);
    wait_event(&events_log, "\"kind\":\"split-brain\"");
    c.stop_all();
    assert_eq!(
        sums,
        (
            data_sum(&prod_disk, data_bytes),
            data_sum(&copy_disk, data_bytes)
        ),
        "split brain: neither data area changed"
    );

    // The production disk's data is the volume: it cannot be discarded.
    let out = Command::new(common::bin())
        .args(["label", "--discard-data"])
        .arg(&prod_disk)
        .output()
        .expect("run label");
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("has been the production disk"),
        "{out:?}"
    );

    // The operator gives up the copy's writes: a full sync makes it production's image.
    common::run_ok(
        Command::new(common::bin())
            .args(["label", "--discard-data"])
            .arg(&copy_disk),
    );
    let out = Command::new(common::bin())
        .args(["serve", "--disk"])
        .arg(&copy_disk)
        .args([
            "--listen",
            &format!("unix:{}", c.dir.path().join("y.sock").display()),
        ])
        .output()
        .expect("run serve");
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("does not hold a complete image"),
        "a discarded disk is not served for writing: {out:?}"
    );
    c.start_all(&["a1", "b1", "w1"]);
    c.wait_synced("a1");
    nbd_check_pattern(&uri, 1 << 20, 65536, 2);
    c.stop_all();
    c.assert_identical(1);
}

#[test]
fn a_copy_written_standalone_while_the_running_production_wrote_is_split_brain() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    let spec = production_copy_witness("async");
    let mut c = Cluster::new(spec);
    c.start_all(&["a1", "b1", "w1"]);
    c.wait_synced("a1");
    let uri = c.nbd_uri("a1");
    c.stop("b1");
    // Production keeps running and writing; the copy disk is used on its own.
    nbd_write_pattern(&uri, 4 << 20, 65536, 5);
    let copy_disk = c.disk(1);
    let data_bytes = c.data_size(1);
    let (mut served, copy_uri) = serve_standalone(c.dir.path(), &copy_disk);
    nbd_write_pattern(&copy_uri, 5 << 20, 65536, 6);
    served.signal(libc::SIGTERM);
    assert!(served
        .wait_timeout(cluster_support::SETTLE)
        .is_some_and(|s| s.success()));
    let copy_sum = data_sum(&copy_disk, data_bytes);

    c.start("b1");
    c.wait_status("a1", "split brain on a1", |s| {
        s.resources[1].state == "SplitBrain"
    });
    // Production goes on serving its own data.
    nbd_check_pattern(&uri, 4 << 20, 65536, 5);
    c.stop_all();
    assert_eq!(
        copy_sum,
        data_sum(&copy_disk, data_bytes),
        "nothing was synced onto the copy"
    );
}
