//! What the cluster tests check: status predicates, byte comparison of
//! disks, and the NBD clients (fio, nbdsh) that write and verify data.

use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use geomirror::node::status::StatusReport;

use crate::common;

/// True when the production disk is hosted and every copy is hosted,
/// `UpToDate` and has nothing left to move.
pub fn all_synced(s: &StatusReport) -> bool {
    !s.resources.is_empty()
        && s.resources.iter().all(|r| {
            r.host.is_some()
                && r.state == "UpToDate"
                && r.bytes_to_go == 0
                && (r.role == "production" || r.lag_bytes == 0)
        })
}

/// The group as every member must see it: epoch, each member's state,
/// subgroups and hosted disks, and each resource's host.
pub fn agreed_view(s: &StatusReport) -> String {
    let mut v = format!("epoch {}\n", s.epoch);
    for m in &s.members {
        let _ = writeln!(
            v,
            "{} {} sub={:?} hosts={:?}",
            m.name, m.state, m.subgroups, m.hosts
        );
    }
    for r in &s.resources {
        let _ = writeln!(v, "{} host={:?}", r.id, r.host);
    }
    v
}

/// The state of `member` in a status report.
pub fn member_state<'a>(s: &'a StatusReport, member: &str) -> &'a str {
    s.members
        .iter()
        .find(|m| m.name == member)
        .map(|m| m.state.as_str())
        .unwrap_or("missing")
}

/// The host of resource `id`.
pub fn host_of<'a>(s: &'a StatusReport, id: &str) -> Option<&'a str> {
    s.resources
        .iter()
        .find(|r| r.id == id)
        .and_then(|r| r.host.as_deref())
}

/// The first byte offset below `len` where files `a` and `b` differ.
pub fn first_difference(a: &Path, b: &Path, len: u64) -> Option<u64> {
    let mut fa = std::fs::File::open(a).expect("open disk a");
    let mut fb = std::fs::File::open(b).expect("open disk b");
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < len {
        let n = ((len - off) as usize).min(ba.len());
        fa.read_exact(&mut ba[..n]).expect("read disk a");
        fb.read_exact(&mut bb[..n]).expect("read disk b");
        if ba[..n] != bb[..n] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .expect("slices differ");
            return Some(off + i as u64);
        }
        off += n as u64;
    }
    None
}

/// Runs fio's nbd engine against `uri`: random 4k writes over `size`
/// bytes, each block verified with crc32c after the write phase.
pub fn fio_verified(uri: &str, size: &str, extra: &[&str]) -> Command {
    let mut c = common::debian_cmd("fio");
    c.args([
        "--name=mirror",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randwrite",
        "--bs=4k",
        &format!("--size={size}"),
        "--iodepth=8",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--randrepeat=0",
        // No state file in the working directory.
        "--verify_state_save=0",
    ]);
    c.args(extra);
    c
}

/// Writes a recognisable pattern (seeded) of `len` bytes at `offset` through NBD.
pub fn nbd_write_pattern(uri: &str, offset: u64, len: usize, seed: u8) {
    let code = format!(
        "data = bytes(((i * 7 + {seed}) % 251) for i in range({len}))\nh.pwrite(data, {offset})\nh.flush()\n"
    );
    common::run_ok(common::debian_cmd("nbdsh").args(["-u", uri, "-c", &code]));
}

/// Reads `len` bytes at `offset` through NBD and asserts they hold the pattern.
pub fn nbd_check_pattern(uri: &str, offset: u64, len: usize, seed: u8) {
    let code = format!(
        "data = bytes(((i * 7 + {seed}) % 251) for i in range({len}))\nassert h.pread({len}, {offset}) == data, 'pattern differs'\n"
    );
    common::run_ok(common::debian_cmd("nbdsh").args(["-u", uri, "-c", &code]));
}

/// Tries one 64 KiB write through NBD: None when it succeeded, else the
/// name of the errno it failed with (libnbd's `nbd.Error.errno`).
pub fn nbd_try_write(uri: &str) -> Option<String> {
    let code = "try:\n    h.pwrite(b'x' * 65536, 1 << 20)\n    print('ok')\n\
                except nbd.Error as e:\n    print('failed', e.errno)\n";
    let out = common::run_ok(common::debian_cmd("nbdsh").args(["-u", uri, "-c", code]));
    match out.trim() {
        "ok" => None,
        o => Some(
            o.strip_prefix("failed ")
                .unwrap_or_else(|| panic!("unexpected nbdsh output: {out:?}"))
                .to_string(),
        ),
    }
}
