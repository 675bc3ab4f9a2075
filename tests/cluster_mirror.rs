//! Mirroring with real `geomirror up` processes: whatever is written through
//! the production host's NBD export ends up byte-identical on every copy
//! disk, in sync and async mode, across copy host crashes and late joins.

mod cluster_support;
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cluster_support::{fio_verified, host_of, member_state, Cluster, Mounts, Spec};
use common::{run_ok, Proc};

/// The copy resource's report in `member`'s status.
fn copy_report(c: &Cluster, member: &str, id: &str) -> geomirror::node::status::ResourceStatus {
    let s = c.status(member).expect("status answers");
    s.resources
        .into_iter()
        .find(|r| r.id == id)
        .expect("the copy resource is listed")
}

/// A background fio writing random 4k blocks over the first `size` bytes
/// for `runtime_s` seconds.
fn fio_load(uri: &str, size: &str, runtime_s: u32, log: &Path) -> Proc {
    let out = std::fs::File::create(log).expect("create fio log");
    let err = out.try_clone().expect("dup fio log");
    let child = common::debian_cmd("fio")
        .args([
            "--name=load",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            &format!("--size={size}"),
            "--iodepth=4",
            "--time_based",
            &format!("--runtime={runtime_s}"),
        ])
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn fio");
    Proc {
        child,
        name: "fio load".into(),
    }
}

fn verified_run_leaves_identical_disks(mode: &str) {
    let mut c = Cluster::new(Spec::new(
        mode,
        2,
        "64M",
        &[("a1", Some(0)), ("b1", Some(1)), ("w1", None)],
    ));
    c.start_all(&["a1", "b1", "w1"]);
    c.wait_synced("a1");
    run_ok(&mut fio_verified(&c.nbd_uri("a1"), "24M", &[]));
    c.wait_synced("a1");
    c.stop_all();
    c.assert_identical(1);
}

#[test]
fn sync_mode_copy_is_identical_after_a_verified_fio_run() {
    if !common::require(&["fio"]) {
        return;
    }
    verified_run_leaves_identical_disks("sync");
}

#[test]
fn async_mode_copy_is_identical_after_a_verified_fio_run() {
    if !common::require(&["fio"]) {
        return;
    }
    verified_run_leaves_identical_disks("async");
}

#[test]
fn copy_killed_under_write_load_resyncs_only_what_it_missed() {
    if !common::require(&["fio"]) {
        return;
    }
    killed_under_load_then_resynced("sync");
}

#[test]
fn async_copy_killed_under_write_load_resyncs_only_what_it_missed() {
    if !common::require(&["fio"]) {
        return;
    }
    killed_under_load_then_resynced("async");
}

fn killed_under_load_then_resynced(mode: &str) {
    let mut c = Cluster::new(Spec::payroll(mode, "128M"));
    c.start_all(&["a1", "b1", "w1"]);
    c.wait_synced("a1");
    let size = c.data_size(0);
    let mut load = fio_load(&c.nbd_uri("a1"), "8M", 8, &c.dir.path().join("fio.log"));
    std::thread::sleep(Duration::from_millis(1500));
    c.kill("b1");
    c.wait_status("a1", "b1 marked failed", |s| {
        member_state(s, "b1") == "failed"
    });
    std::thread::sleep(Duration::from_millis(500));
    c.start("b1");
    let st = load
        .wait_timeout(Duration::from_secs(40))
        .expect("fio ends");
    assert!(
        st.success(),
        "fio failed: {}",
        std::fs::read_to_string(c.dir.path().join("fio.log")).unwrap_or_default()
    );
    let s = c.wait_status("a1", "b1 resynced", |s| {
        host_of(s, "payroll-dr") == Some("b1") && cluster_support::all_synced(s)
    });
    let r = s
        .resources
        .iter()
        .find(|r| r.id == "payroll-dr")
        .expect("copy listed");
    eprintln!(
        "{mode}: resync after the kill moved {} of {size} bytes",
        r.resynced_bytes
    );
    // Only chunks inside the 8 MiB fio touches may move (and some must:
    // fio kept writing while b1 was away), never the whole volume.
    assert!(
        r.resynced_bytes > 0 && r.resynced_bytes <= 8 << 20,
        "resync moved {} of {size} bytes",
        r.resynced_bytes
    );
    c.stop_all();
    c.assert_identical(1);
}

#[test]
fn copy_killed_during_its_initial_full_sync_ends_identical() {
    if !common::require(&["fio"]) {
        return;
    }
    let mut c = Cluster::new(Spec::payroll("sync", "512M"));
    c.start_all(&["a1", "w1"]);
    // Data all over the volume, so the full sync has pages to move.
    run_ok(&mut fio_verified(
        &c.nbd_uri("a1"),
        "512M",
        &["--rw=write", "--bs=1M", "--verify=0", "--do_verify=0"],
    ));
    c.start("b1");
    c.wait_status("a1", "b1's full sync under way", |s| {
        s.resources
            .iter()
            .any(|r| r.id == "payroll-dr" && r.resynced_bytes > 0 && r.bytes_to_go > 0)
    });
    c.kill("b1");
    c.wait_status("a1", "b1 marked failed", |s| {
        member_state(s, "b1") == "failed"
    });
    c.start("b1");
    c.wait_synced("a1");
    let r = copy_report(&c, "a1", "payroll-dr");
    assert_eq!(r.state, "UpToDate");
    c.stop_all();
    c.assert_identical(1);
}

#[test]
fn new_copy_disk_joining_a_volume_with_data_is_fully_synced() {
    if !common::require(&["fio"]) {
        return;
    }
    let mut c = Cluster::new(Spec::payroll("sync", "64M").with_metrics("a1"));
    c.start_all(&["a1", "w1"]);
    run_ok(&mut fio_verified(&c.nbd_uri("a1"), "48M", &[]));
    c.start("b1");
    let s = c.wait_synced("a1");
    assert_eq!(host_of(&s, "payroll-dr"), Some("b1"));
    let r = copy_report(&c, "a1", "payroll-dr");
    assert!(r.resynced_bytes > 0, "nothing was synced: {r:?}");
    // A finished resync has no rate, in status and on the metrics page.
    assert_eq!((r.rate_bytes_per_s, r.eta_s), (0.0, None), "{r:?}");
    common::wait_until(
        "the resync rate gauge at 0",
        cluster_support::SETTLE,
        || {
            let rates = c.series("a1", "geomirror_resync_rate_bytes_per_second");
            !rates.is_empty() && rates.iter().all(|v| *v == 0.0)
        },
    );
    // The production host logged the resync's end (with its start and
    // progress when it lasted longer than one look at the links).
    let log = std::fs::read_to_string(c.dir.path().join("a1.1.log")).expect("a1's log");
    assert!(
        log.lines()
            .any(|l| l.contains("resync to b1: 100.0%") && l.contains("done in"))
            || log.contains("resync to b1: done, "),
        "{log}"
    );
    c.stop_all();
    c.assert_identical(1);
}

#[test]
fn two_copy_sites_are_identical_after_a_verified_fio_run() {
    if !common::require(&["fio"]) {
        return;
    }
    let mut c = Cluster::new(Spec::new(
        "sync",
        3,
        "64M",
        &[
            ("a1", Some(0)),
            ("b1", Some(1)),
            ("c1", Some(2)),
            ("w1", None),
        ],
    ));
    c.start_all(&["a1", "b1", "c1", "w1"]);
    c.wait_synced("a1");
    run_ok(&mut fio_verified(&c.nbd_uri("a1"), "24M", &[]));
    c.wait_synced("a1");
    c.stop_all();
    c.assert_identical(1);
    c.assert_identical(2);
}

#[test]
fn ext4_written_through_production_is_clean_on_the_copy_disk() {
    if !common::require(&["nbdfuse", "losetup", "mkfs.ext4", "e2fsck", "fusermount3"])
        || !common::require_root()
    {
        return;
    }
    let mut c = Cluster::new(Spec::new(
        "sync",
        2,
        "128M",
        &[("a1", Some(0)), ("b1", Some(1)), ("w1", None)],
    ));
    c.start_all(&["a1", "b1", "w1"]);
    c.wait_synced("a1");
    let data_size = c.data_size(0);
    let dir = c.dir.path().to_path_buf();
    let (fuse, mnt) = (dir.join("fuse"), dir.join("mnt"));
    std::fs::create_dir_all(&fuse).expect("mkdir fuse");
    std::fs::create_dir_all(&mnt).expect("mkdir mnt");
    let mut m = Mounts::default();
    let child = common::debian_cmd("nbdfuse")
        .arg(&fuse)
        .arg(c.nbd_uri("a1"))
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn nbdfuse");
    m.nbdfuse = Some(Proc {
        child,
        name: "nbdfuse".into(),
    });
    m.fuse = Some(fuse.clone());
    let image = fuse.join("nbd");
    common::wait_until(
        "nbdfuse exposes the volume",
        Duration::from_secs(10),
        || std::fs::metadata(&image).is_ok_and(|md| md.len() == data_size),
    );
    let dev = run_ok(Command::new("losetup").args(["-f", "--show"]).arg(&image))
        .trim()
        .to_owned();
    m.loops.push(dev.clone());
    run_ok(Command::new("mkfs.ext4").args(["-q", "-F", &dev]));
    run_ok(Command::new("mount").arg(&dev).arg(&mnt));
    m.mounted.push(mnt.clone());
    let mut files = Vec::new();
    for (i, len) in [1usize, 4096, 200_000, 5 << 20].into_iter().enumerate() {
        let mut data = vec![0u8; len];
        rand::fill(&mut data[..]);
        std::fs::write(mnt.join(format!("f{i}")), &data).expect("write file");
        files.push((format!("f{i}"), data));
    }
    std::fs::create_dir(mnt.join("sub")).expect("mkdir in fs");
    run_ok(&mut Command::new("sync"));
    m.umount(&mnt);
    m.detach(&dev);
    drop(m);
    c.stop_all();

    // The copy disk alone, read-only, limited to its data area.
    let mut m = Mounts::default();
    let copy = run_ok(
        Command::new("losetup")
            .args(["-r", "-f", "--show", "--sizelimit", &data_size.to_string()])
            .arg(c.disk(1)),
    )
    .trim()
    .to_owned();
    m.loops.push(copy.clone());
    let out = Command::new("e2fsck")
        .args(["-fn", &copy])
        .output()
        .expect("run e2fsck");
    assert!(
        out.status.success(),
        "e2fsck on the copy found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    run_ok(
        Command::new("mount")
            .args(["-o", "ro,noload"])
            .arg(&copy)
            .arg(&mnt),
    );
    m.mounted.push(mnt.clone());
    for (name, data) in &files {
        let got = std::fs::read(mnt.join(name)).expect("read file on the copy");
        assert!(&got == data, "{name} differs on the copy");
    }
    assert!(mnt.join("sub").is_dir());
}

#[test]
fn copy_stopped_cleanly_under_write_load_catches_up_on_restart() {
    if !common::require(&["fio"]) {
        return;
    }
    let mut c = Cluster::new(Spec::payroll("sync", "64M"));
    c.start_all(&["a1", "b1", "w1"]);
    c.wait_synced("a1");
    let mut load = fio_load(&c.nbd_uri("a1"), "4M", 6, &c.dir.path().join("fio.log"));
    std::thread::sleep(Duration::from_millis(1000));
    c.stop("b1");
    c.wait_status("a1", "b1 left", |s| member_state(s, "b1") == "left");
    std::thread::sleep(Duration::from_millis(1000));
    c.start("b1");
    let st = load
        .wait_timeout(Duration::from_secs(40))
        .expect("fio ends");
    assert!(st.success(), "fio failed");
    let s = c.wait_status("a1", "b1 back in sync", |s| {
        host_of(s, "payroll-dr") == Some("b1") && cluster_support::all_synced(s)
    });
    let r = s
        .resources
        .iter()
        .find(|r| r.id == "payroll-dr")
        .expect("copy listed");
    assert!(
        r.resynced_bytes <= 4 << 20,
        "resync moved {} bytes",
        r.resynced_bytes
    );
    c.stop_all();
    c.assert_identical(1);
}

#[test]
fn group_restarted_after_a_clean_stop_needs_no_full_resync() {
    if !common::require(&["fio"]) {
        return;
    }
    let mut c = Cluster::new(Spec::payroll("sync", "64M"));
    c.start_all(&["a1", "b1", "w1"]);
    c.wait_synced("a1");
    run_ok(&mut fio_verified(&c.nbd_uri("a1"), "8M", &[]));
    c.wait_synced("a1");
    c.stop_all();
    c.assert_identical(1);
    c.start_all(&["a1", "b1", "w1"]);
    let s = c.wait_synced("a1");
    let size = c.data_size(0);
    let r = s
        .resources
        .iter()
        .find(|r| r.id == "payroll-dr")
        .expect("copy listed");
    assert!(
        r.resynced_bytes < size / 2,
        "restart moved {} of {size} bytes",
        r.resynced_bytes
    );
    eprintln!("restart resync moved {} bytes", r.resynced_bytes);
    run_ok(&mut fio_verified(&c.nbd_uri("a1"), "4M", &["--offset=16M"]));
    c.wait_synced("a1");
    c.stop_all();
    c.assert_identical(1);
}

#[test]
fn production_host_killed_under_write_load_leaves_the_copy_identical_to_its_successor() {
    if !common::require(&["fio"]) {
        return;
    }
    let mut c = Cluster::new(Spec::payroll("sync", "64M"));
    c.start_all(&["a1", "a2", "b1", "w1"]);
    c.wait_synced("w1");
    let mut load = fio_load(&c.nbd_uri("a1"), "8M", 20, &c.dir.path().join("fio.log"));
    std::thread::sleep(Duration::from_millis(1500));
    c.kill("a1");
    // fio loses its server: its exit status says nothing here.
    let _ = load.wait_timeout(Duration::from_secs(30));
    c.wait_status("w1", "a2 hosts production, b1 in sync", |s| {
        host_of(s, "payroll-prod") == Some("a2") && cluster_support::all_synced(s)
    });
    run_ok(&mut fio_verified(&c.nbd_uri("a2"), "4M", &["--offset=32M"]));
    c.wait_synced("w1");
    c.stop_all();
    c.assert_identical(1);
}
