//! The faulty disk the failure tests stand on: `geomirror format`, `serve`
//! and `up` run on it unchanged, and its faults reach a real NBD client as errors.

mod common;
mod faulty_support;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{bin, run_ok, wait_for_unix, Proc};
use faulty_support::{require_fuse, Fault, Faults, FaultyDisk, Op};
use geomirror::storage::{HostedDisk, Label};

const DISK_BYTES: u64 = 16 << 20;
const BLOCK: u64 = 64 << 10;
/// A write large and aligned enough for the io_uring engine's O_DIRECT path.
const BIG: u64 = 1 << 20;
/// Where the write fault starts: a bitmap chunk of its own, past the first.
const FAULT_AT: u64 = 1 << 20;
const SERVE_WAIT: Duration = Duration::from_secs(30);

/// Formats the disk with the real binary and marks it consistent, as a
/// finished full sync leaves a copy, so `serve` takes writes on it.
fn format(path: &Path) -> Label {
    run_ok(
        Command::new(bin())
            .args(["format", "--group", "vol0", "--resource", "r1"])
            .arg(path),
    );
    let disk = HostedDisk::open(path, None).expect("open the formatted disk");
    disk.update_label(|l| l.flags.consistent = true)
        .expect("mark it consistent")
}

/// `geomirror serve --disk` on the faulty disk, with its NBD URI.
struct Serve {
    proc: Proc,
    uri: String,
}

fn serve(disk: &FaultyDisk, name: &str, engine: &str) -> Serve {
    let sock = disk.dir().join(format!("{name}.sock"));
    let listen = format!("unix:{}", sock.display());
    let path = disk.path().to_str().expect("utf-8 path");
    let proc = Proc::geomirror(
        &[
            "serve", "--disk", path, "--listen", &listen, "--engine", engine,
        ],
        &disk.dir().join(format!("{name}.log")),
    );
    wait_for_unix(&sock, SERVE_WAIT);
    Serve {
        proc,
        uri: format!("nbd+unix:///geomirror?socket={}", sock.display()),
    }
}

/// Runs one qemu-io command against `uri`; Ok(output) when it succeeded,
/// Err(output) when qemu-io reported a failure.
fn qemu_io(uri: &str, command: &str) -> Result<String, String> {
    qemu_io_with(&[], uri, command)
}

fn qemu_io_with(opts: &[&str], uri: &str, command: &str) -> Result<String, String> {
    let out = Command::new("qemu-io")
        .args(["-f", "raw"])
        .args(opts)
        .args(["-c", command, uri])
        .output()
        .expect("run qemu-io");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A failed read or write is reported in the output (with its errno);
    // a failed flush only in the exit status.
    if out.status.success() && !text.contains("failed") {
        Ok(text)
    } else {
        Err(format!("{}: {text}", out.status))
    }
}

fn write(uri: &str, pattern: u8, offset: u64) -> Result<String, String> {
    qemu_io(uri, &format!("write -P 0x{pattern:02x} {offset} {BLOCK}"))
}

/// Asserts that the backing file holds `pattern` over the block at
/// `offset`: the write really reached the disk behind the mount.
fn assert_backing(disk: &FaultyDisk, offset: u64, pattern: u8) {
    let f = std::fs::File::open(disk.backing()).expect("open the backing file");
    let mut buf = vec![0u8; BLOCK as usize];
    f.read_exact_at(&mut buf, offset)
        .expect("read the backing file");
    assert!(
        buf.iter().all(|&b| b == pattern),
        "backing file at {offset}: expected 0x{pattern:02x}, found 0x{:02x}",
        buf.iter()
            .find(|&&b| b != pattern)
            .copied()
            .unwrap_or(pattern)
    );
}

fn is_eio(out: &str) -> bool {
    out.contains("Input/output error")
}

fn ready() -> bool {
    common::require(&["qemu-io", "qemu-img"]) && require_fuse()
}

#[test]
fn a_write_from_the_fault_offset_on_fails_with_eio_and_one_below_it_succeeds() {
    if !ready() {
        return;
    }
    let disk = FaultyDisk::new(DISK_BYTES);
    let label = format(disk.path());
    let s = serve(&disk, "serve", "uring");

    write(&s.uri, 0x11, 0).expect("a write before any fault");
    assert_backing(&disk, 0, 0x11);

    // The data area from FAULT_AT on; the label and bitmap after it stay
    // writable, so a write below the fault can still mark its chunk.
    disk.fail(Op::Write, Fault::eio().range(FAULT_AT..label.data_size()));
    let before = disk.counters().writes;
    let err = write(&s.uri, 0x22, FAULT_AT).expect_err("a write at the fault offset fails");
    assert!(is_eio(&err), "the client sees EIO: {err}");
    assert!(
        disk.counters().writes.failed > before.failed,
        "the fault was hit: {:?}",
        disk.counters()
    );
    assert_backing(&disk, FAULT_AT, 0);
    write(&s.uri, 0x33, FAULT_AT - BLOCK).expect("a write below the fault succeeds");
    assert_backing(&disk, FAULT_AT - BLOCK, 0x33);

    disk.heal();
    write(&s.uri, 0x44, FAULT_AT).expect("after heal the write succeeds");
    qemu_io(&s.uri, &format!("read -P 0x44 {FAULT_AT} {BLOCK}")).expect("and reads back");
    qemu_io(&s.uri, &format!("read -P 0x11 0 {BLOCK}")).expect("the first write reads back");
    assert_backing(&disk, FAULT_AT, 0x44);
}

#[test]
fn a_sync_fault_fails_a_flush_until_healed() {
    if !ready() {
        return;
    }
    let disk = FaultyDisk::new(DISK_BYTES);
    format(disk.path());
    let s = serve(&disk, "serve", "uring");

    write(&s.uri, 0x11, 0).expect("a write");
    qemu_io(&s.uri, "flush").expect("a flush before the fault");

    disk.fail(Op::Sync, Fault::eio());
    let before = disk.counters().syncs;
    qemu_io(&s.uri, "flush").expect_err("a flush fails");
    assert!(
        disk.counters().syncs.failed > before.failed,
        "the fault was hit"
    );
    // qemu-io names no errno for a flush; a FUA write needs the same sync.
    let err =
        qemu_io(&s.uri, &format!("write -f -P 0x22 0 {BLOCK}")).expect_err("a FUA write fails");
    assert!(is_eio(&err), "the client sees EIO: {err}");
    // A write without FUA to a chunk already marked dirty needs no sync (a
    // write to a clean chunk does: its mark is made durable first), as long
    // as the client does not flush after it: qemu-io does by default.
    qemu_io_with(
        &["-t", "writeback"],
        &s.uri,
        &format!("write -P 0x33 0 {BLOCK}"),
    )
    .expect("a write without FUA still succeeds");

    disk.heal();
    qemu_io(&s.uri, "flush").expect("after heal a flush succeeds");
    qemu_io(&s.uri, &format!("write -f -P 0x44 {BLOCK} {BLOCK}")).expect("and a FUA write");
    qemu_io(&s.uri, &format!("read -P 0x33 0 {BLOCK}")).expect("the plain write reads back");
    qemu_io(&s.uri, &format!("read -P 0x44 {BLOCK} {BLOCK}")).expect("as does the FUA one");
}

#[test]
fn a_read_fault_fails_a_read_of_its_range_only() {
    if !ready() {
        return;
    }
    let disk = FaultyDisk::new(DISK_BYTES);
    format(disk.path());
    let s = serve(&disk, "serve", "uring");
    write(&s.uri, 0x11, 0).expect("a write");
    write(&s.uri, 0x22, FAULT_AT).expect("a write");

    disk.fail(Op::Read, Fault::eio().range(FAULT_AT..FAULT_AT + BLOCK));
    let err = qemu_io(&s.uri, &format!("read -P 0x22 {FAULT_AT} {BLOCK}"))
        .expect_err("a read of the range fails");
    assert!(is_eio(&err), "the client sees EIO: {err}");
    qemu_io(&s.uri, &format!("read -P 0x11 0 {BLOCK}")).expect("a read elsewhere succeeds");
    assert!(disk.counters().reads.failed >= 1);

    disk.heal();
    qemu_io(&s.uri, &format!("read -P 0x22 {FAULT_AT} {BLOCK}")).expect("after heal it reads");
}

/// A path failure on one host: the disk fails for the process that serves
/// it, and the next process to host it (a second member of the site, on the
/// same disk) reads and writes it with the fault still on.
#[test]
fn a_pid_fault_fails_one_process_and_not_the_next_host() {
    if !ready() {
        return;
    }
    let disk = FaultyDisk::new(DISK_BYTES);
    let label = format(disk.path());
    let mut first = serve(&disk, "first", "uring");
    write(&first.uri, 0x11, 0).expect("a write through the first host");
    // A large aligned write goes through io_uring with O_DIRECT, so it
    // reaches the disk from the engine's ring thread (or an io_uring worker),
    // not the main thread: the fault must know them as the same process.
    // Written once before the fault, its chunks are marked already, and the
    // write that fails is the data write itself.
    let big = format!("write -P 0x22 {FAULT_AT} {BIG}");
    qemu_io(&first.uri, &big).expect("a large write before the fault");

    let pid = u32::try_from(first.proc.pid()).expect("a pid is positive");
    disk.fail(
        Op::Write,
        Fault::eio()
            .only_pid(pid)
            .range(FAULT_AT..label.data_size()),
    );
    let err = qemu_io(&first.uri, &big).expect_err("the first host's write fails");
    assert!(is_eio(&err), "the client sees EIO: {err}");
    let failed = disk.counters().writes.failed;
    assert!(failed >= 1, "the fault was hit");

    first.proc.signal(libc::SIGTERM);
    first
        .proc
        .wait_timeout(SERVE_WAIT)
        .expect("the first host stops");
    let second = serve(&disk, "second", "uring");
    qemu_io(&second.uri, &format!("write -P 0x33 {FAULT_AT} {BIG}")).expect("the next host writes");
    qemu_io(&second.uri, &format!("read -P 0x11 0 {BLOCK}"))
        .expect("the first host's acknowledged write reads back");
    qemu_io(&second.uri, &format!("read -P 0x33 {FAULT_AT} {BIG}"))
        .expect("the next host's write reads back");
    assert_eq!(
        disk.counters().writes.failed,
        failed,
        "no request of the next host failed"
    );
}

/// Every engine `serve` and `up` can run opens, locks and serves the file:
/// page-cache writes, O_DIRECT through io_uring, pread/pwrite, extents.
#[test]
fn every_engine_serves_the_faulty_disk() {
    if !ready() {
        return;
    }
    let disk = FaultyDisk::new(DISK_BYTES);
    format(disk.path());
    for (i, engine) in ["uring", "uring-buffered", "uring-direct", "plain"]
        .into_iter()
        .enumerate()
    {
        let direct_before = disk.counters().direct_opens;
        let s = serve(&disk, engine, engine);
        let offset = i as u64 * BIG;
        let pattern = 0x50 + i as u8;
        qemu_io(&s.uri, &format!("write -P 0x{pattern:02x} {offset} {BIG}"))
            .unwrap_or_else(|e| panic!("{engine}: write: {e}"));
        qemu_io(&s.uri, &format!("read -P 0x{pattern:02x} {offset} {BIG}"))
            .unwrap_or_else(|e| panic!("{engine}: read back: {e}"));
        // A second open of the file by another process is refused while
        // this one holds it: the OFD lock works across the mount.
        let held = Command::new(bin())
            .args(["serve", "--disk"])
            .arg(disk.path())
            .args(["--listen", "unix:/nonexistent/sock"])
            .output()
            .expect("run a second serve");
        assert!(
            !held.status.success()
                && String::from_utf8_lossy(&held.stderr).contains("held by another process"),
            "{engine}: a second serve is refused: {}",
            String::from_utf8_lossy(&held.stderr)
        );
        if engine == "uring-direct" {
            assert!(
                disk.counters().direct_opens > direct_before,
                "the direct engine opened the file with O_DIRECT"
            );
        }
        drop(s);
    }
    // A discard punches a hole (fallocate) and block status sees it
    // (SEEK_DATA/SEEK_HOLE): both pass through to the backing file.
    let s = serve(&disk, "extents", "uring");
    qemu_io(&s.uri, &format!("discard 0 {BIG}")).expect("discard");
    qemu_io(&s.uri, &format!("read -P 0 0 {BIG}")).expect("a discarded range reads as zeroes");
    let map = run_ok(Command::new("qemu-img").args(["map", "--output=json", "-f", "raw", &s.uri]));
    let map: serde_json::Value = serde_json::from_str(&map).expect("qemu-img map JSON");
    let data_at = |offset: u64| {
        map.as_array()
            .expect("a list of extents")
            .iter()
            .find(|e| {
                let (start, len) = (e["start"].as_u64(), e["length"].as_u64());
                start
                    .zip(len)
                    .is_some_and(|(s, l)| s <= offset && offset < s + l)
            })
            .and_then(|e| e["data"].as_bool())
            .unwrap_or_else(|| panic!("no extent at {offset}: {map}"))
    };
    assert!(!data_at(0), "the discarded range is a hole: {map}");
    assert!(data_at(BIG), "the next engine's write is data: {map}");
    let c = disk.counters();
    assert_eq!((c.writes.failed, c.reads.failed, c.syncs.failed), (0, 0, 0));
}

#[test]
fn the_disk_unmounts_when_a_test_panics_while_a_member_uses_it() {
    if !ready() {
        return;
    }
    let mountpoint = std::sync::Mutex::new(None);
    let unwound = std::panic::catch_unwind(|| {
        let disk = FaultyDisk::new(DISK_BYTES);
        format(disk.path());
        let s = serve(&disk, "serve", "uring");
        write(&s.uri, 0x11, 0).expect("a write");
        assert!(faulty_support::is_mounted(disk.mountpoint()));
        *mountpoint.lock().expect("lock") = Some(disk.mountpoint().to_path_buf());
        panic!("a failing test");
    });
    assert!(unwound.is_err(), "the closure panicked");
    let at = mountpoint.lock().expect("lock").take().expect("mounted");
    assert!(
        !faulty_support::is_mounted(&at),
        "{} is still mounted",
        at.display()
    );
}

#[test]
fn a_range_fault_fails_only_requests_that_touch_it() {
    let f = Faults::default();
    f.fail(Op::Write, Fault::eio().range(4096..8192));
    assert_eq!(f.check(Op::Write, 0..4096, 1), None);
    assert_eq!(f.check(Op::Write, 4095..4097, 1), Some(libc::EIO));
    assert_eq!(f.check(Op::Write, 8192..9000, 1), None);
    assert_eq!(f.check(Op::Read, 4096..8192, 1), None);
    let c = f.counters();
    assert_eq!((c.writes.seen, c.writes.failed, c.reads.seen), (3, 1, 1));
}

#[test]
fn after_lets_the_first_requests_through_and_heal_ends_the_fault() {
    let f = Faults::default();
    f.fail(Op::Sync, Fault::eio().errno(libc::ENOSPC).after(2));
    assert_eq!(f.check(Op::Sync, 0..0, 1), None);
    assert_eq!(f.check(Op::Sync, 0..0, 1), None);
    assert_eq!(f.check(Op::Sync, 0..0, 1), Some(libc::ENOSPC));
    f.heal();
    assert_eq!(f.check(Op::Sync, 0..0, 1), None);
}

#[test]
fn a_pid_fault_matches_every_thread_of_that_process() {
    let f = Faults::default();
    f.fail(Op::Read, Fault::eio().only_pid(std::process::id()));
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        let _ = tid_tx.send(unsafe { libc::gettid() } as u32);
        let _ = done_rx.recv();
    });
    let tid = tid_rx.recv().expect("the thread's id");
    assert_ne!(tid, std::process::id(), "another thread than the main one");
    assert_eq!(f.check(Op::Read, 0..1, tid), Some(libc::EIO));
    drop(done_tx);
    thread.join().expect("thread");
    // Pid 1 (init) is another process.
    assert_eq!(f.check(Op::Read, 0..1, 1), None);
}

/// Patience for a group to form and sync its copy on two shared cores.
const GROUP_WAIT: Duration = Duration::from_secs(60);

/// `geomirror up` hosts production on the faulty disk unchanged: it locks
/// it, fully syncs the copy from it and mirrors writes, through the mount.
#[test]
fn a_member_hosts_production_on_the_faulty_disk() {
    if !ready() {
        return;
    }
    let disk = FaultyDisk::new(DISK_BYTES);
    let d = disk.dir();
    let dr = d.join("dr.img");
    let size = DISK_BYTES.to_string();
    for (path, resource) in [(disk.path(), "vol0-prod"), (dr.as_path(), "vol0-dr")] {
        run_ok(
            Command::new(bin())
                .args(["format", "--group", "vol0", "--resource", resource])
                .args(["--size", &size])
                .arg(path),
        );
    }
    let sock = d.join("a1.sock");
    let config = d.join("domain.toml");
    let addr = || format!("127.0.0.1:{}", common::free_port());
    let text = format!(
        r#"group = "vol0"
mode = "sync"
secret = "faulty disk"
lease_ms = 1000
fail_timeout_ms = 1500

[[site]]
name = "prod"
resource = "vol0-prod"
[[site]]
name = "dr"
resource = "vol0-dr"

[[member]]
name = "a1"
address = "{}"
disks = ["{}"]
nbd = "unix:{}"
[[member]]
name = "b1"
address = "{}"
disks = ["{}"]
[[member]]
name = "w1"
address = "{}"
"#,
        addr(),
        disk.path().display(),
        sock.display(),
        addr(),
        dr.display(),
        addr(),
    );
    std::fs::write(&config, text).expect("write the recovery domain");
    let cfg = config.to_str().expect("utf-8 path");
    // Declared after the disk: the members are killed before it unmounts.
    let _members: Vec<Proc> = ["a1", "b1", "w1"]
        .into_iter()
        .map(|m| {
            let state = d.join(format!("state-{m}"));
            Proc::geomirror(
                &[
                    "up",
                    "--config",
                    cfg,
                    "--member",
                    m,
                    "--state-dir",
                    state.to_str().expect("utf-8 path"),
                ],
                &d.join(format!("{m}.log")),
            )
        })
        .collect();
    common::wait_until("a1 to mirror to an UpToDate copy", GROUP_WAIT, || {
        let out = Command::new(bin())
            .args(["status", "--json", "--config", cfg, "--member", "a1"])
            .output();
        out.ok()
            .filter(|o| o.status.success())
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .is_some_and(|s| {
                s["resources"][1]["state"] == "UpToDate"
                    && s["mirroring"][0]["state"] == "mirroring"
            })
    });
    let data_bytes = Label::read_path(disk.backing())
        .expect("the label")
        .data_size();
    let reads_before = disk.counters().reads;
    assert!(
        reads_before.bytes >= data_bytes,
        "the full sync read the whole data area through the mount: {reads_before:?}"
    );

    let uri = format!("nbd+unix:///vol0?socket={}", sock.display());
    qemu_io(&uri, &format!("write -P 0x5a 0 {BIG}")).expect("a write through the member");
    qemu_io(&uri, &format!("read -P 0x5a 0 {BIG}")).expect("reads back");
    assert_backing(&disk, 0, 0x5a);
    let copy = std::fs::File::open(&dr).expect("open the copy disk");
    let mut buf = vec![0u8; BIG as usize];
    copy.read_exact_at(&mut buf, 0).expect("read the copy disk");
    assert!(buf.iter().all(|&b| b == 0x5a), "the copy has the write");
    let c = disk.counters();
    assert!(
        c.reads.bytes > reads_before.bytes,
        "reads reach the mount: {c:?}"
    );
    assert_eq!((c.writes.failed, c.reads.failed, c.syncs.failed), (0, 0, 0));
}
