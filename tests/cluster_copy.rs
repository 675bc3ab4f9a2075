//! The copy side under real faults, with real `geomirror up` processes: a
//! torn bitmap block on the production disk, a copy host killed in the
//! middle of a resync, a copy disk whose file system runs out of space.

mod cluster_support;
mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster_support::{fio_verified, member_state, Cluster, Spec};
use common::{run_ok, Proc};
use geomirror::node::status::{ResourceStatus, StatusReport};
use geomirror::storage::meta::{BITS_PER_BLOCK, BLOCK_BYTES};
use geomirror::storage::Label;

/// The copy resource of a status report.
fn copy_of(s: &StatusReport) -> &ResourceStatus {
    s.resources
        .iter()
        .find(|r| r.id == "payroll-dr")
        .expect("the copy resource is listed")
}

/// `geomirror label --json` of `disk`: the document and what it printed on stderr.
fn label_json(disk: &Path) -> (serde_json::Value, String) {
    let out = Command::new(common::bin())
        .args(["label", "--json"])
        .arg(disk)
        .output()
        .expect("run label");
    assert!(out.status.success(), "label failed: {out:?}");
    (
        serde_json::from_slice(&out.stdout).expect("label JSON"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Formats site `i`'s disk again with `extra` arguments (same group and resource).
fn reformat(c: &Cluster, site: usize, extra: &[&str]) {
    run_ok(
        Command::new(common::bin())
            .args(["format", "--group", &c.spec.group, "--resource"])
            .arg(&c.spec.sites[site].resource)
            .args(extra)
            .arg(c.disk(site)),
    );
}

/// Sequential 1 MiB writes of fio's (non-zero) data over the first `size`
/// of the volume, nothing verified.
fn fill(uri: &str, size: &str) {
    run_ok(&mut fio_verified(
        uri,
        size,
        &["--rw=write", "--bs=1M", "--verify=0", "--do_verify=0"],
    ));
}

#[test]
fn a_production_disk_with_a_torn_bitmap_block_starts_and_resyncs_that_blocks_range() {
    let mut c = Cluster::new(Spec::new(
        "sync",
        2,
        "300M",
        &[("a1", Some(0)), ("b1", Some(1)), ("w1", None)],
    ));
    // 4 KiB chunks: three bitmap blocks, each covering 128 MiB of data.
    for site in [0, 1] {
        reformat(&c, site, &["--bitmap-chunk", "4K"]);
    }
    c.start_all(&["a1", "b1", "w1"]);
    c.wait_synced("a1");
    c.stop_all();
    let prod = c.disk(0);
    let label = Label::read_path(&prod).expect("production label");
    let (doc, _) = label_json(&prod);
    assert_eq!(doc["dirty_bytes"], 0, "a clean stop leaves nothing dirty");

    // A power cut while block 1 was rewritten in place: its first half new,
    // its second half old, its crc matching neither.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&prod)
        .expect("open the production disk");
    f.write_all_at(&[0xa5; 2048], label.layout.bitmap_offset + BLOCK_BYTES + 8)
        .expect("tear bitmap block 1");
    drop(f);
    let chunk = label.layout.bitmap_chunk_bytes;
    let start = BITS_PER_BLOCK * chunk;
    let range = (2 * BITS_PER_BLOCK * chunk).min(label.data_size()) - start;
    let (doc, warned) = label_json(&prod);
    assert!(
        warned.contains("bitmap block 1") && warned.contains("crc mismatch"),
        "{warned}"
    );
    assert_eq!(doc["dirty_bytes"].as_u64(), Some(range));

    // The member hosts the disk and serves it; the copy gets exactly the
    // torn block's range, as a partial resync.
    c.start_all(&["a1", "b1", "w1"]);
    let s = c.wait_synced("a1");
    assert_eq!(
        copy_of(&s).resynced_bytes,
        range,
        "the resync covers the torn block's range and nothing else"
    );
    let log = std::fs::read_to_string(c.dir.path().join("a1.2.log")).expect("a1's log");
    assert!(
        log.contains("bitmap block 1") && log.contains("resynced"),
        "no warning naming the block in a1's log"
    );
    c.stop_all();
    let (doc, warned) = label_json(&prod);
    assert!(!warned.contains("bitmap block"), "not repaired: {warned}");
    assert_eq!(doc["dirty_bytes"], 0);
    c.assert_identical(1);
}

#[test]
fn a_copy_host_killed_mid_resync_leaves_an_inconsistent_label_and_resumes() {
    if !common::require(&["fio"]) {
        return;
    }
    let mut c = Cluster::new(Spec::payroll("sync", "512M"));
    c.start_all(&["a1", "b1", "w1"]);
    c.wait_synced("a1");
    // 256 MiB written while the copy is away: a partial resync of as much.
    c.stop("b1");
    c.wait_status("a1", "b1 left", |s| member_state(s, "b1") == "left");
    fill(&c.nbd_uri("a1"), "256M");

    let dr = c.disk(1);
    let before = Label::read_path(&dr).expect("copy label");
    assert!(before.flags.consistent);
    c.spawn("b1");
    // Kill it once the resync's first data is on its disk (fio wrote the
    // volume from offset 0 on, and the resync goes in offset order).
    let first = std::fs::File::open(&dr).expect("open the copy disk");
    let landed = || {
        let mut page = [0u8; 4096];
        first.read_exact_at(&mut page, 0).is_ok() && page.iter().any(|&b| b != 0)
    };
    let deadline = Instant::now() + cluster_support::SETTLE;
    let mut during = None;
    loop {
        // A label slot being rewritten reads as the other slot.
        if let Ok(l) = Label::read_path(&dr) {
            if !l.flags.consistent {
                during = Some(l);
            } else {
                assert!(
                    during.is_none(),
                    "the resync ended before the test could kill the copy host"
                );
            }
        }
        if landed() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no resync data on the copy disk:\n{}",
            c.all_logs(30)
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    c.kill("b1");
    // Data from the resync is on the disk: the label must say so.
    let during = Label::read_path(&dr).expect("copy label");
    assert!(
        !during.flags.consistent,
        "resync data reached the copy disk while its label said consistent"
    );
    assert_eq!(
        during.generations, before.generations,
        "a partial resync keeps the copy's generation"
    );

    let (doc, _) = label_json(&dr);
    assert_eq!(doc["flags"]["consistent"], false, "{doc}");
    let text = run_ok(Command::new(common::bin()).arg("label").arg(&dr));
    assert!(
        text.contains("consistent:         no (resync in progress or interrupted"),
        "{text}"
    );
    let refused = Command::new(common::bin())
        .args(["serve", "--disk"])
        .arg(&dr)
        .args(["--listen"])
        .arg(format!("unix:{}", c.dir.path().join("dr.sock").display()))
        .stdin(Stdio::null())
        .output()
        .expect("run serve");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && err.contains("does not hold a complete image")
            && err.contains("--read-only"),
        "serve --disk on an interrupted resync: {refused:?}"
    );

    c.start("b1");
    let s = c.wait_synced("a1");
    let moved = copy_of(&s).resynced_bytes;
    eprintln!("the resumed resync moved {moved} bytes of the 256 MiB written");
    assert!(
        moved > 0 && moved <= 256 << 20,
        "the resync resumed as a partial one, not a full sync: moved {moved} bytes"
    );
    c.stop_all();
    let (doc, _) = label_json(&dr);
    assert_eq!(doc["flags"]["consistent"], true, "{doc}");
    c.assert_identical(1);
}

/// The value of `geomirror_copy_state{copy="payroll-dr",state=STATE}` on `member`.
fn copy_state_gauge(c: &Cluster, member: &str, state: &str) -> Option<f64> {
    let want = format!("state=\"{state}\"");
    c.scrape(member).lines().find_map(|l| {
        (l.starts_with("geomirror_copy_state{") && l.contains(&want) && l.contains("payroll-dr"))
            .then(|| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
            .flatten()
    })
}

#[test]
fn a_copy_disk_out_of_space_is_disk_failed_and_resyncs_once_it_has_room() {
    if !common::require_root() || !common::require(&["fio", "mount", "umount"]) {
        return;
    }
    let mut c = Cluster::new(Spec::payroll("sync", "256M").with_metrics("a1"));
    // The copy disk: a sparse 256 MiB image on a 100 MiB file system.
    let fs = common::Tmpfs::mount(&c.dir.path().join("copyfs"), "100M");
    let image = fs.0.join("payroll-dr.img");
    std::fs::remove_file(c.disk(1)).expect("remove the copy disk");
    run_ok(
        Command::new(common::bin())
            .args(["format", "--group", "payroll", "--resource", "payroll-dr"])
            .args(["--size", "256M"])
            .arg(&image),
    );
    std::os::unix::fs::symlink(&image, c.disk(1)).expect("link the copy disk");
    // Both data areas are all zeroes, so the disks are in sync: say so in
    // the copy's label (tmpfs cannot zero a range without allocating it,
    // so a full sync would fill the file system before the test begins).
    let prod = Label::read_path(&c.disk(0)).expect("production label");
    let copy = geomirror::storage::HostedDisk::open(&image, None).expect("open the copy disk");
    copy.update_label(|l| {
        l.generations = prod.generations;
        l.flags.consistent = true;
    })
    .expect("label the copy in sync");
    drop(copy);

    c.start_all(&["a1", "b1", "w1"]);
    let s = c.wait_synced("a1");
    assert_eq!(copy_of(&s).resynced_bytes, 0);
    let events_log = c.dir.path().join("a1.events");
    let config = c.config.display().to_string();
    let _events = Proc::geomirror(
        &["events", "--config", &config, "--member", "a1"],
        &events_log,
    );

    // 160 MiB through production: the copy's file system takes 100.
    let t0 = Instant::now();
    fill(&c.nbd_uri("a1"), "160M");
    let s = c.wait_status("a1", "the copy shown DiskFailed", |s| {
        copy_of(s).state == "DiskFailed"
    });
    let r = copy_of(&s);
    assert_eq!(r.disk_errno, Some(libc::ENOSPC), "{r:?}");
    assert_eq!(r.disk_error.as_deref(), Some("ENOSPC"));
    let offset = r.disk_offset.expect("the failed offset");
    assert!(
        (64 << 20..160 << 20).contains(&offset),
        "the failed write lies where the file system filled up: {offset}"
    );
    assert_eq!(
        (r.rate_bytes_per_s, r.eta_s),
        (0.0, None),
        "not a sync: {r:?}"
    );
    assert!(
        s.warnings.iter().any(|w| w.contains(&format!(
            "the copy disk of payroll-dr on b1 fails writes with ENOSPC at offset {offset}: \
             free space or replace the disk; the copy resyncs when it accepts writes again"
        ))),
        "{:?}",
        s.warnings
    );
    assert!(
        s.mirroring.iter().any(|m| m.state == "disk-failed"),
        "{s:?}"
    );
    // Every member shows it, through the group's report.
    c.wait_status("w1", "w1 sees the copy DiskFailed", |s| {
        let r = copy_of(s);
        r.state == "DiskFailed" && r.disk_errno == Some(libc::ENOSPC)
    });
    let text =
        run_ok(Command::new(common::bin()).args(["status", "--config", &config, "--member", "a1"]));
    assert!(
        text.contains("warning: the copy disk of payroll-dr on b1 fails writes with ENOSPC")
            && text.contains("disk fails writes: ENOSPC at offset"),
        "{text}"
    );
    common::wait_until(
        "the copy-disk-failed event",
        cluster_support::SETTLE,
        || {
            std::fs::read_to_string(&events_log)
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    l.contains("\"kind\":\"copy-disk-failed\"")
                        && l.contains("\"resource\":\"payroll-dr\"")
                        && l.contains("\"member\":\"b1\"")
                        && l.contains("\"errno\":28")
                        && l.contains("\"offset\":")
                })
        },
    );
    common::wait_until(
        "geomirror_copy_state DiskFailed at 1",
        cluster_support::SETTLE,
        || copy_state_gauge(&c, "a1", "DiskFailed") == Some(1.0),
    );
    // Production keeps marking what the copy lacks.
    let (doc, _) = label_json(&c.disk(0));
    let dirty = doc["dirty_bytes"].as_u64().expect("dirty bytes");
    assert!(
        dirty >= (160 << 20) - offset,
        "dirty {dirty}, failed at {offset}"
    );

    // Said when it started and at each retry, which slow down: not every 2 s.
    let said = || {
        std::fs::read_to_string(c.dir.path().join("a1.1.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("the copy disk") && l.contains("fails writes with ENOSPC"))
            .count()
    };
    let elapsed = t0.elapsed().as_secs_f64();
    let lines = said();
    eprintln!("failed at offset {offset}; {lines} log lines in {elapsed:.1} s");
    // Retries at 1, 2, 4, 8 ... s: about log2 of the time since it started.
    assert!(
        lines >= 1 && (lines as f64) <= elapsed.log2().max(1.0) + 2.0,
        "{lines} log lines in {elapsed:.1} s"
    );

    fs.resize("400M");
    let s = c.wait_synced("a1");
    let r = copy_of(&s);
    assert_eq!((r.disk_errno, r.disk_offset), (None, None), "{r:?}");
    assert!(r.resynced_bytes > 0);
    assert!(
        !s.warnings.iter().any(|w| w.contains("fails writes")),
        "{:?}",
        s.warnings
    );
    c.stop_all();
    c.assert_identical(1);
}
