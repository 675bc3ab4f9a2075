//! `geomirror serve` against real NBD clients: nbdinfo, qemu-io, nbdcopy, fio,
//! and a SIGTERM while a client has writes in flight.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::serve;
use common::{debian_cmd, run_ok, Proc};

fn random_file(path: &Path, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::fill(&mut data[..]);
    std::fs::write(path, &data).expect("write random file");
    data
}

#[test]
fn nbdinfo_reports_size_flags_and_block_sizes_and_lists_the_export() {
    if !common::require(&["nbdinfo"]) {
        return;
    }
    let port = common::free_port();
    let tcp = format!("127.0.0.1:{port}");
    let s = serve("64M", &["--listen", &tcp]);
    let out = run_ok(debian_cmd("nbdinfo").args(["--json", &s.uri]));
    let v: serde_json::Value = serde_json::from_str(&out).expect("nbdinfo --json output");
    let e = &v["exports"][0];
    assert_eq!(e["export-size"], 64 << 20);
    assert_eq!(e["export-name"], "geomirror");
    for flag in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_fast_zero",
        "can_multi_conn",
        "can_df",
    ] {
        assert_eq!(e[flag], true, "{flag} in {out}");
    }
    assert_eq!(e["is_read_only"], false);
    assert_eq!(e["block_size_minimum"], 1);
    assert_eq!(e["block_size_preferred"], 4096);
    assert_eq!(e["block_size_maximum"], 32 << 20);
    assert_eq!(v["structured"], true);
    assert!(e["contexts"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c == "base:allocation")));

    let list = run_ok(debian_cmd("nbdinfo").args(["--list", "--json", &s.uri]));
    let v: serde_json::Value = serde_json::from_str(&list).expect("nbdinfo --list --json output");
    let names: Vec<&str> = v["exports"]
        .as_array()
        .expect("exports")
        .iter()
        .filter_map(|e| e["export-name"].as_str())
        .collect();
    assert_eq!(names, ["geomirror"]);

    // The same export over TCP, from the second --listen.
    let out = run_ok(debian_cmd("nbdinfo").args(["--size", &format!("nbd://{tcp}/geomirror")]));
    assert_eq!(out.trim(), (64u64 << 20).to_string());
}

#[test]
fn read_only_export_is_flagged_read_only() {
    if !common::require(&["nbdinfo"]) {
        return;
    }
    let s = serve("8M", &["--read-only"]);
    let out = run_ok(debian_cmd("nbdinfo").args(["--json", &s.uri]));
    let v: serde_json::Value = serde_json::from_str(&out).expect("nbdinfo --json output");
    assert_eq!(v["exports"][0]["is_read_only"], true);
    assert_eq!(v["exports"][0]["can_trim"], false);
}

#[test]
fn qemu_io_unaligned_write_leaves_neighbouring_bytes_untouched() {
    if !common::require(&["qemu-io"]) {
        return;
    }
    let s = serve("16M", &[]);
    let io = |cmds: &[&str]| {
        let mut c = Command::new("qemu-io");
        c.args(["-f", "raw"]);
        for cmd in cmds {
            c.args(["-c", cmd]);
        }
        let out = run_ok(c.arg(&s.uri));
        assert!(!out.contains("Pattern verification failed"), "{out}");
        out
    };
    io(&["write -P 0x11 0 8192", "write -P 0x22 16773120 4096"]);
    io(&["write -P 0xab 513 1000"]);
    io(&[
        "read -P 0x11 0 513",
        "read -P 0xab 513 1000",
        "read -P 0x11 1513 6679",
        "read -P 0x22 16773120 4096",
    ]);
    let disk = std::fs::read(&s.disk).expect("read disk");
    assert!(disk[..513].iter().all(|&b| b == 0x11));
    assert!(disk[513..1513].iter().all(|&b| b == 0xab));
    assert!(disk[1513..8192].iter().all(|&b| b == 0x11));
    assert!(disk[8192..16773120].iter().all(|&b| b == 0));
    // qemu-io's zero and discard go through WRITE_ZEROES and TRIM.
    io(&[
        "write -z 600 100",
        "discard 0 4096",
        "read -P 0 0 4096",
        "read -P 0x11 4096 4096",
    ]);
}

#[test]
fn nbdcopy_round_trips_a_random_64mib_image() {
    if !common::require(&["nbdcopy"]) {
        return;
    }
    let s = serve("64M", &[]);
    let src = s.dir.path().join("src.img");
    let back = s.dir.path().join("back.img");
    let data = random_file(&src, 64 << 20);
    run_ok(debian_cmd("nbdcopy").args([src.to_str().expect("utf-8"), &s.uri]));
    run_ok(debian_cmd("nbdcopy").args([&s.uri, back.to_str().expect("utf-8")]));
    assert!(
        std::fs::read(&back).expect("read copy") == data,
        "copied-back image differs"
    );
    assert!(
        std::fs::read(&s.disk).expect("read disk") == data,
        "disk differs from the source"
    );
}

fn fio(uri: &str, extra: &[&str]) -> String {
    let mut c = Command::new("fio");
    c.args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randwrite",
        "--bs=4k",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--group_reporting",
        // fio saves verify state files in its working directory.
        "--verify_state_save=0",
    ]);
    c.args(extra);
    let out = run_ok(&mut c);
    assert!(out.contains("err= 0"), "{out}");
    out
}

#[test]
fn fio_verifies_crc32c_at_queue_depth_16() {
    if !common::require(&["fio"]) {
        return;
    }
    let s = serve("64M", &[]);
    fio(&s.uri, &["--iodepth=16", "--size=64M"]);
}

#[test]
fn fio_verifies_crc32c_over_four_connections_at_once() {
    if !common::require(&["fio"]) {
        return;
    }
    let s = serve("64M", &[]);
    fio(
        &s.uri,
        &[
            "--iodepth=8",
            "--numjobs=4",
            "--size=16M",
            "--offset_increment=16M",
        ],
    );
}

#[test]
fn fio_verifies_crc32c_at_queue_depth_1_with_a_flush_after_every_write() {
    if !common::require(&["fio"]) {
        return;
    }
    // QD1 with a FLUSH after each write: the requests a lone connection runs
    // on its own thread rather than through the io_uring queue.
    let s = serve("16M", &[]);
    fio(&s.uri, &["--iodepth=1", "--fsync=1", "--size=4M"]);
}

/// Writes on one connection (alone, so run inline), a FUA write, a flush on
/// a second connection, and reads back through that second connection.
const MULTI_CONN: &str = r#"
import sys
uri = sys.argv[1]
a = nbd.NBD(); a.connect_uri(uri)
b = nbd.NBD(); b.connect_uri(uri)
assert a.can_multi_conn() and a.can_flush() and a.can_fua()
a.pwrite(b"\xa5" * 4096, 8192)
a.pwrite(b"\x5a" * 512, 20480 + 100, nbd.CMD_FLAG_FUA)
a.pwrite(b"\x3c" * 65536, 1 << 20)
b.flush()
assert b.pread(4096, 8192) == b"\xa5" * 4096
assert b.pread(512, 20480 + 100) == b"\x5a" * 512
assert b.pread(65536, 1 << 20) == b"\x3c" * 65536
a.flush()
print("ok")
"#;

#[test]
fn a_flush_on_one_connection_covers_writes_completed_on_another() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    let s = serve("16M", &[]);
    let out = run_ok(
        debian_cmd("nbdsh")
            .arg("-c")
            .arg(format!("import sys; sys.argv = ['m', {:?}]", s.uri))
            .arg("-c")
            .arg(MULTI_CONN),
    );
    assert!(out.contains("ok"), "{out}");
    // The bytes are in the disk file, where a flush put them.
    let disk = std::fs::read(&s.disk).expect("read disk");
    assert!(disk[8192..12288].iter().all(|&b| b == 0xa5), "write lost");
    assert!(
        disk[20580..21092].iter().all(|&b| b == 0x5a),
        "FUA write lost"
    );
    assert!(
        disk[1 << 20..(1 << 20) + 65536].iter().all(|&b| b == 0x3c),
        "64 KiB write lost"
    );
    assert!(
        disk[12288..20580].iter().all(|&b| b == 0),
        "bytes around a write changed"
    );
}

/// Keeps 32 distinct 4 KiB writes in flight, wrapping over 16 MiB, until the
/// connection dies; marks READY after 500 acknowledgements and prints the
/// acknowledged write numbers and how many were issued.
const WRITER: &str = r#"
import json, os, sys
uri, ready = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.connect_uri(uri)
slots = 4096
acked, inflight, issued = [], {}, 0
try:
    while issued < 1_000_000:
        while len(inflight) < 32:
            buf = issued.to_bytes(8, "little") * 512
            inflight[h.aio_pwrite(buf, (issued % slots) * 4096)] = issued
            issued += 1
        h.poll(1000)
        for c in list(inflight):
            if h.aio_command_completed(c):
                acked.append(inflight.pop(c))
        if len(acked) >= 500 and not os.path.exists(ready):
            open(ready, "w").close()
except nbd.Error:
    pass
print(json.dumps({"acked": acked, "issued": issued}))
"#;

#[test]
fn sigterm_with_writes_in_flight_exits_zero_and_keeps_acknowledged_writes() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    let mut s = serve("16M", &[]);
    let ready = s.dir.path().join("ready");
    let script = s.dir.path().join("writer.py");
    std::fs::write(&script, WRITER).expect("write script");
    let client = debian_cmd("nbdsh")
        .arg("-c")
        .arg(format!(
            "import sys; sys.argv = ['w', {:?}, {:?}]; exec(open({:?}).read())",
            s.uri,
            ready.display().to_string(),
            script.display().to_string()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn nbdsh");
    common::wait_until("500 acknowledged writes", Duration::from_secs(60), || {
        ready.exists()
    });
    s.proc.signal(libc::SIGTERM);
    let status = s
        .proc
        .wait_timeout(Duration::from_secs(30))
        .expect("server exits after SIGTERM");
    assert!(status.success(), "server exit status {status}");
    let out = client.wait_with_output().expect("nbdsh output");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("writer output");
    let issued = v["issued"].as_u64().expect("issued");
    let acked: Vec<u64> = v["acked"]
        .as_array()
        .expect("acked")
        .iter()
        .filter_map(|a| a.as_u64())
        .collect();
    assert!(acked.len() >= 500);
    let disk = std::fs::read(&s.disk).expect("read disk");
    let slots = 4096u64;
    let mut newest = vec![None::<u64>; slots as usize];
    for &a in &acked {
        let n = &mut newest[(a % slots) as usize];
        *n = Some(n.map_or(a, |m| m.max(a)));
    }
    for (slot, n) in newest.iter().enumerate() {
        let Some(n) = *n else { continue };
        let block = &disk[slot * 4096..(slot + 1) * 4096];
        let on_disk = u64::from_le_bytes(block[..8].try_into().expect("8 bytes"));
        assert!(
            block.chunks(8).all(|c| c == &block[..8]),
            "slot {slot} holds a torn write"
        );
        // The newest acknowledged write, or one issued after it to the same slot.
        assert!(
            on_disk % slots == slot as u64 && on_disk >= n && on_disk < issued,
            "slot {slot}: acknowledged write {n} lost (disk holds write {on_disk})"
        );
    }
}

#[test]
fn serve_without_arguments_creates_a_demo_disk_and_prints_how_to_use_it() {
    if !common::require(&["nbdinfo"]) {
        return;
    }
    let dir = common::tempdir();
    let log = dir.path().join("serve.log");
    let out = std::fs::File::create(&log).expect("create log");
    let child = Command::new(common::bin())
        .arg("serve")
        .env("XDG_STATE_HOME", dir.path())
        .stdout(out.try_clone().expect("dup log"))
        .stderr(out)
        .spawn()
        .expect("spawn geomirror serve");
    let _proc = Proc {
        child,
        name: "geomirror serve".into(),
    };
    let state = dir.path().join("geomirror");
    let uri = format!(
        "nbd+unix:///geomirror?socket={}",
        state.join("nbd.sock").display()
    );
    common::wait_until("the URI on stdout", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains(&uri) && l.contains("losetup"))
    });
    let printed = std::fs::read_to_string(&log).expect("read log");
    for hint in ["nbdinfo", "nbdfuse", "mkfs.ext4", "mount"] {
        assert!(printed.contains(hint), "usage lacks {hint}:\n{printed}");
    }
    let size = run_ok(debian_cmd("nbdinfo").args(["--size", &uri]));
    assert_eq!(size.trim(), (1u64 << 30).to_string());
    assert_eq!(
        std::fs::metadata(state.join("demo.img"))
            .expect("demo disk")
            .len(),
        1 << 30
    );
}

/// Through libnbd: structured reads of a device that reports holes come back
/// as OFFSET_HOLE chunks (no data on the wire), and block status says hole+zero.
#[test]
fn holes_are_sent_as_hole_chunks_and_reported_by_block_status() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    let dir = common::tempdir();
    let sock = dir.path().join("nbd.sock");
    let listen = format!("unix:{}", sock.display());
    let _p = Proc::geomirror(
        &["serve", "--null", "16M", "--listen", &listen],
        &dir.path().join("serve.log"),
    );
    common::wait_for_unix(&sock, Duration::from_secs(10));
    let uri = format!("nbd+unix:///geomirror?socket={}", sock.display());
    let script = r#"
kinds = []
def chunk(buf, off, status, err):
    kinds.append((status, off, len(buf)))
    return 0
buf = h.pread_structured(1 << 20, 4096, chunk)
assert buf == bytes(1 << 20)
assert kinds == [(nbd.READ_HOLE, 4096, 1 << 20)], kinds
kinds.clear()
h.pread_structured(4096, 0, chunk)
assert kinds == [(nbd.READ_DATA, 0, 4096)], kinds
seen = []
h.block_status(65536, 0, lambda meta, off, e, err: seen.append(e) or 0)
assert seen[0][:2] == [65536, nbd.STATE_HOLE | nbd.STATE_ZERO], seen
"#;
    run_ok(debian_cmd("nbdsh").args(["--base-allocation", "-u", &uri, "-c", script]));
}
