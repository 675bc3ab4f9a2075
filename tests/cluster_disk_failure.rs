//! A production disk that starts failing under a running member (a FUSE
//! file failing that member's requests, the shared disk itself still fine
//! for the next host): the member stops serving and gives the disk up, the
//! next member of the site takes over, every acknowledged write reads back
//! and the copy ends identical.

mod cluster_support;
mod common;
mod faulty_support;

use std::process::Command;

use cluster_support::{host_of, nbd_check_pattern, nbd_write_pattern, Cluster, Spec, SETTLE};
use faulty_support::{require_fuse, Fault, FaultyDisk, Op};

const DISK: &str = "32M";
/// Where the fault starts: well inside the data area, past the pattern.
const FAULT_AT: u64 = 8 << 20;

/// A write of 64 KiB at `offset` through NBD: None when it succeeded, else
/// the error libnbd reported.
fn try_write(uri: &str, offset: u64, flush: bool) -> Option<String> {
    let code = format!(
        "try:\n    h.pwrite(b'z' * 65536, {offset})\n    {}\n    print('ok')\n\
         except nbd.Error as e:\n    print('failed', e.errno)\n",
        if flush { "h.flush()" } else { "pass" }
    );
    let out = common::run_ok(common::debian_cmd("nbdsh").args(["-u", uri, "-c", &code]));
    (out.trim() != "ok").then(|| out.trim().to_string())
}

/// The group payroll with the production site's disk on `fuse`, reached by
/// both a1 and a2 (one disk, two hosts), copy b1 and witness w1.
fn cluster_on(fuse: &FaultyDisk) -> Cluster {
    let c = Cluster::new(Spec::payroll("sync", DISK));
    let spec = &c.spec;
    common::run_ok(
        Command::new(common::bin())
            .args(["format", "--group", &spec.group, "--resource"])
            .arg(&spec.sites[0].resource)
            .args(["--size", DISK])
            .arg(fuse.path()),
    );
    std::fs::remove_file(c.disk(0)).expect("remove the plain production disk");
    std::os::unix::fs::symlink(fuse.path(), c.disk(0)).expect("link the production disk");
    c
}

fn fails_over_when_the_disk_fails(op: Op, flush: bool) {
    if !common::require(&["nbdsh"]) || !require_fuse() {
        return;
    }
    let fuse = FaultyDisk::new(32 << 20);
    let mut c = cluster_on(&fuse);
    c.start_all(&["a1", "a2", "b1", "w1"]);
    c.wait_synced("a1");
    let a1 = c.nbd_uri("a1");
    nbd_write_pattern(&a1, 0, 1 << 20, 11);

    let data = c.data_size(1);
    let pid = c.procs["a1"].child.id();
    fuse.fail(op, Fault::eio().only_pid(pid).range(FAULT_AT..data));
    let failed = try_write(&a1, FAULT_AT, flush);
    assert!(
        failed.is_some(),
        "a write a1's disk failed was acknowledged"
    );
    assert!(
        fuse.faults().counters().of(op).failed > 0,
        "the fault was never hit"
    );

    // a1 gives the disk up; a2 reaches the same disk and serves it.
    let s = c.wait_status("w1", "a2 hosting production", |s| {
        host_of(s, "payroll-prod") == Some("a2")
    });
    assert_ne!(host_of(&s, "payroll-prod"), Some("a1"));
    let a2 = c.nbd_uri("a2");
    common::wait_until("a2 serves the volume", SETTLE, || {
        c.nbd_socket("a2").exists()
    });
    nbd_check_pattern(&a2, 0, 1 << 20, 11);
    assert_eq!(try_write(&a2, FAULT_AT, true), None, "a2 cannot write");
    nbd_write_pattern(&a2, FAULT_AT + (1 << 20), 1 << 20, 12);
    c.wait_synced("w1");
    nbd_check_pattern(&a2, FAULT_AT + (1 << 20), 1 << 20, 12);

    // The write a1 sent to the copy before its own disk failed is not left
    // behind on the copy: the disks end identical.
    c.stop_all();
    fuse.heal();
    c.assert_identical(1);
}

#[test]
fn a_production_disk_that_fails_writes_is_given_up_to_the_next_member() {
    fails_over_when_the_disk_fails(Op::Write, false);
}

#[test]
fn a_production_disk_that_fails_flushes_is_given_up_to_the_next_member() {
    fails_over_when_the_disk_fails(Op::Sync, true);
}
