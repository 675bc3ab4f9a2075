//! The disk label, the exclusive hold on a hosted disk and the dirty bitmap,
//! through the library API, with real child processes for locks and crashes
//! (the commands themselves are tested in storage_cli.rs).

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, run_ok, Proc};
use geomirror::storage::{call, EngineKind, HostedDisk, IoBuf, Label, LabelError, Reply, Request};

const CHILD_ROLE: &str = "GEOMIRROR_TEST_CHILD";
const CHILD_DISK: &str = "GEOMIRROR_TEST_DISK";
const READY: &str = "GEOMIRROR-CHILD-READY";

/// Opens a disk for hosting, waiting a little: a process being spawned by
/// a parallel test holds a copy of our fds (and so of the lock) until it
/// execs.
fn open(disk: &Path) -> HostedDisk {
    HostedDisk::open(disk, Some(Duration::from_secs(10))).expect("open the disk for hosting")
}

fn format(disk: &Path, extra: &[&str]) {
    let mut c = Command::new(bin());
    c.args(["format", "--group", "vol0", "--resource", "r1"])
        .args(extra)
        .arg(disk);
    run_ok(&mut c);
}

fn formatted(dir: &Path) -> PathBuf {
    let disk = dir.join("disk.img");
    format(&disk, &["--size", "64M"]);
    disk
}

/// Runs this same test binary as a child acting out `role` on `disk`
/// (the test named `test` checks the role at its start), and waits until
/// the child prints [`READY`].
fn child(test: &str, role: &str, disk: &Path) -> Proc {
    let exe = std::env::current_exe().expect("test binary path");
    let mut c = Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ROLE, role)
        .env(CHILD_DISK, disk)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let out = c.stdout.take().expect("child stdout");
    let proc = Proc {
        child: c,
        name: format!("{test} as {role}"),
    };
    // The harness may print its own text on the same line first.
    let ready = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.ends_with(READY));
    assert!(ready, "child {role} exited before it was ready");
    proc
}

/// In a child: run `act`, say [`READY`], then wait to be killed.
fn act_as_child(act: impl FnOnce(&Path)) -> bool {
    let Ok(role) = std::env::var(CHILD_ROLE) else {
        return false;
    };
    let disk = PathBuf::from(std::env::var(CHILD_DISK).expect("child disk"));
    eprintln!("child acting as {role}");
    act(&disk);
    println!("\n{READY}");
    std::thread::sleep(Duration::from_secs(60));
    true
}

#[test]
fn a_torn_label_write_leaves_the_previous_label_readable() {
    let dir = common::tempdir();
    let disk = formatted(dir.path());
    {
        let h = open(&disk);
        let l = h
            .update_label(|l| l.flags.consistent = true)
            .expect("update");
        assert_eq!(l.seq, 3);
    }
    let l = Label::read_path(&disk).expect("label");
    assert!(l.flags.consistent && l.seq == 3);
    // seq 3 lives in slot B (the last block): tear it.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .expect("open");
    let slot_b = l.layout.slot_offset(1);
    f.write_all_at(&[0xAB; 600], slot_b + 1000)
        .expect("tear slot B");
    let l = Label::read_path(&disk).expect("slot A still valid");
    assert_eq!(l.seq, 2);
    assert!(!l.flags.consistent, "the older label comes back");
    // Tear slot A too: nothing trustworthy is left.
    f.write_all_at(&[0xCD; 8], l.layout.slot_offset(0) + 200)
        .expect("tear slot A");
    match Label::read_path(&disk) {
        Err(LabelError::Corrupt(what)) => {
            assert!(
                what.contains("slot A") && what.contains("slot B") && what.contains("crc"),
                "{what}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let out = Command::new(bin())
        .arg("label")
        .arg(&disk)
        .output()
        .expect("run label");
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt metadata"));
}

#[test]
fn label_updates_alternate_slots_and_persist() {
    let dir = common::tempdir();
    let disk = formatted(dir.path());
    let h = open(&disk);
    for i in 0..5u64 {
        let l = h
            .update_label(|l| {
                l.generations.start_tracking();
                l.flags.primary_seen = i % 2 == 0;
            })
            .expect("update");
        assert_eq!(l.seq, 3 + i);
    }
    let want = h.label();
    drop(h);
    assert_eq!(Label::read_path(&disk).expect("label"), want);
}

#[test]
fn the_device_of_a_hosted_disk_stops_at_the_data_area() {
    let dir = common::tempdir();
    let disk = formatted(dir.path());
    let h = open(&disk);
    let size = h.data_size();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for kind in [EngineKind::Plain, EngineKind::Uring] {
        let dev = h.device(kind).expect("device");
        assert_eq!(dev.size(), size);
        rt.block_on(async {
            let data = IoBuf::from_slice(&[0xFF; 4096]);
            let r = call(
                &*dev,
                Request::Write {
                    offset: size - 4096,
                    data: data.clone(),
                    fua: true,
                },
            )
            .await;
            assert!(matches!(r, Ok(Reply::Done)));
            let r = call(
                &*dev,
                Request::Write {
                    offset: size,
                    data,
                    fua: false,
                },
            )
            .await;
            assert_eq!(
                r.expect_err("metadata is out of range").errno(),
                libc::ENOSPC
            );
            let r = call(
                &*dev,
                Request::WriteZeroes {
                    offset: 0,
                    len: size + 1,
                    punch: true,
                },
            )
            .await;
            assert!(r.is_err());
        });
    }
    drop(h);
    Label::read_path(&disk).expect("label intact after writing the last data block");
}

#[test]
fn a_disk_hosted_by_another_process_is_locked() {
    let test = "a_disk_hosted_by_another_process_is_locked";
    if act_as_child(|disk| {
        let h = HostedDisk::open(disk, None).expect("child opens the disk");
        std::mem::forget(h); // keep the lock until killed
    }) {
        return;
    }
    let dir = common::tempdir();
    let disk = formatted(dir.path());
    let mut holder = child(test, "holder", &disk);
    match HostedDisk::open(&disk, None) {
        Err(LabelError::Locked { path }) => assert!(path.contains("disk.img")),
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("a second host opened a held disk"),
    }
    let out = Command::new(bin())
        .args(["format", "--group", "vol0", "--resource", "r1"])
        .arg(&disk)
        .output()
        .expect("run format");
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another process"));
    // A waiting open gets the disk once the holder dies.
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        holder.signal(libc::SIGKILL);
        holder.wait_timeout(Duration::from_secs(10))
    });
    let h =
        HostedDisk::open(&disk, Some(Duration::from_secs(20))).expect("open after the holder died");
    assert!(killer.join().expect("killer thread").is_some());
    // And this process now holds it against a second open of its own.
    assert!(matches!(
        HostedDisk::open(&disk, None),
        Err(LabelError::Locked { .. })
    ));
    drop(h);
    open(&disk);
}

#[test]
fn dirty_marks_survive_reopening_and_clears_persist_on_flush() {
    let dir = common::tempdir();
    let disk = formatted(dir.path());
    let chunk = 65536;
    {
        let h = open(&disk);
        let bm = h.bitmap();
        assert!(bm.mark(0, 1).expect("mark"));
        assert!(
            !bm.mark(100, 4096).expect("mark"),
            "already dirty: no new mark"
        );
        assert!(
            bm.mark(10 * chunk - 1, 2).expect("mark"),
            "spans chunks 9 and 10"
        );
        assert!(bm.mark(h.data_size() - 1, 1).expect("mark"));
        assert!(!bm
            .mark(h.data_size(), 100)
            .expect("past the end marks nothing"));
        assert_eq!(bm.dirty_chunks(), 4);
    }
    let h = open(&disk);
    let bm = h.bitmap();
    let size = h.data_size();
    let last = (size - 1) / chunk * chunk;
    let ranges: Vec<_> = bm.dirty_ranges().collect();
    assert_eq!(
        ranges,
        vec![(0, chunk), (9 * chunk, 2 * chunk), (last, size - last)]
    );
    assert_eq!(bm.dirty_bytes(), 3 * chunk + size - last);

    bm.clear(9 * chunk + 1, 2 * chunk); // covers chunk 10 wholly, 9 only partly
    assert!(bm.is_dirty(9 * chunk) && !bm.is_dirty(10 * chunk));
    bm.clear(0, chunk);
    drop(h); // a clean close flushes the lazy clears
    let h = open(&disk);
    let ranges: Vec<_> = h.bitmap().dirty_ranges().collect();
    assert_eq!(ranges, vec![(9 * chunk, chunk), (last, size - last)]);

    h.bitmap().set_all().expect("set all");
    assert_eq!(h.bitmap().dirty_bytes(), size);
    assert_eq!(
        h.bitmap().dirty_ranges().collect::<Vec<_>>(),
        vec![(0, size)]
    );
    h.bitmap().clear_all().expect("clear all");
    drop(h);
    assert_eq!(open(&disk).bitmap().dirty_bytes(), 0);
}

#[test]
fn dirty_marks_survive_a_kill_9_of_the_marking_process() {
    let test = "dirty_marks_survive_a_kill_9_of_the_marking_process";
    if act_as_child(|disk| {
        let h = HostedDisk::open(disk, None).expect("child opens the disk");
        for i in 0..50u64 {
            assert!(h.bitmap().mark(i * 3 * 65536, 10).expect("mark"));
        }
        h.bitmap().clear(0, 65536); // lazy, never flushed: must not matter
        std::mem::forget(h);
    }) {
        return;
    }
    let dir = common::tempdir();
    let disk = formatted(dir.path());
    let mut marker = child(test, "marker", &disk);
    marker.signal(libc::SIGKILL);
    assert!(marker.wait_timeout(Duration::from_secs(10)).is_some());
    let h = open(&disk);
    for i in 1..50u64 {
        assert!(
            h.bitmap().is_dirty(i * 3 * 65536),
            "mark {i} lost in the crash"
        );
        assert!(!h.bitmap().is_dirty(i * 3 * 65536 + 65536));
    }
    assert_eq!(
        h.bitmap().dirty_chunks(),
        50,
        "the lazy clear was never written, so all 50 marks remain"
    );
}

#[test]
fn a_bitmap_block_with_a_bad_crc_is_read_as_dirty_and_rewritten() {
    let dir = common::tempdir();
    let disk = formatted(dir.path());
    let l = Label::read_path(&disk).expect("label");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .expect("open");
    f.write_all_at(&[1], l.layout.bitmap_offset + 100)
        .expect("flip a bitmap byte");
    drop(f);
    let label = |disk: &Path| {
        Command::new(bin())
            .args(["label", "--json"])
            .arg(disk)
            .output()
            .expect("run label")
    };
    // `label` only looks: it reports the damage and leaves the block as is.
    for _ in 0..2 {
        let out = label(&disk);
        assert!(out.status.success(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("bitmap block 0") && err.contains("crc mismatch"),
            "{err}"
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("label JSON");
        assert_eq!(v["dirty_bytes"].as_u64(), Some(l.data_size()));
    }
    // Hosting it takes the block's chunks (here all of them) as dirty and
    // writes the block back whole.
    let h = open(&disk);
    assert_eq!(h.bitmap().damaged().len(), 1);
    assert_eq!(h.bitmap().dirty_bytes(), l.data_size());
    drop(h);
    let h = open(&disk);
    assert!(h.bitmap().damaged().is_empty());
    assert_eq!(h.bitmap().dirty_bytes(), l.data_size());
    drop(h);
    let out = label(&disk);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("bitmap block"),
        "{out:?}"
    );
}

/// A loop device over a file, detached when dropped.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn a_block_device_is_formatted_held_exclusively_and_served() {
    if !common::require_root() || !common::require(&["losetup"]) {
        return;
    }
    let dir = common::tempdir();
    let backing = dir.path().join("backing.img");
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(32 << 20))
        .expect("backing file");
    let dev = run_ok(
        Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&backing),
    );
    let lo = Loop(dev.trim().to_string());
    let path = Path::new(&lo.0);

    format(path, &[]);
    let l = Label::read_path(path).expect("label on the block device");
    assert_eq!(l.layout.disk_bytes, 32 << 20, "size from BLKGETSIZE64");
    let h = open(path);
    assert!(
        matches!(HostedDisk::open(path, None), Err(LabelError::Locked { .. })),
        "O_EXCL holds the device"
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dev = h.device(EngineKind::Uring).expect("engine on the device");
    rt.block_on(async {
        let data = IoBuf::from_slice(&[0x3C; 8192]);
        let r = call(
            &*dev,
            Request::Write {
                offset: 4096,
                data: data.clone(),
                fua: true,
            },
        )
        .await;
        assert!(matches!(r, Ok(Reply::Done)), "{r:?}");
        match call(
            &*dev,
            Request::Read {
                offset: 4096,
                len: 8192,
            },
        )
        .await
        {
            Ok(Reply::Read(b)) => assert!(b == data),
            other => panic!("read: {other:?}"),
        }
        for req in [
            Request::WriteZeroes {
                offset: 4096,
                len: 4096,
                punch: false,
            },
            Request::WriteZeroes {
                offset: 8192,
                len: 100,
                punch: true,
            },
        ] {
            assert!(matches!(call(&*dev, req).await, Ok(Reply::Done)));
        }
        match call(
            &*dev,
            Request::Read {
                offset: 4096,
                len: 8192,
            },
        )
        .await
        {
            Ok(Reply::Read(b)) => {
                assert!(b[..4196].iter().all(|&x| x == 0), "zeroed part");
                assert!(
                    b[4196..].iter().all(|&x| x == 0x3C),
                    "the rest is untouched"
                );
            }
            other => panic!("read: {other:?}"),
        }
        let r = call(
            &*dev,
            Request::Trim {
                offset: 1 << 20,
                len: 1 << 20,
            },
        )
        .await;
        assert!(matches!(r, Ok(Reply::Done)), "trim: {r:?}");
        let r = call(
            &*dev,
            Request::Write {
                offset: h.data_size(),
                data,
                fua: false,
            },
        )
        .await;
        assert!(r.is_err(), "the label area is out of range");
    });
    drop(dev);
    drop(h);
    assert_eq!(Label::read_path(path).expect("label intact").seq, l.seq);
}
