//! `geomirror attach --fuse` against an export served by qemu-nbd: the file
//! reads and writes the export, and with `--loop` carries an ext4 filesystem
//! that survives mkfs, mount, writes, umount and a clean `e2fsck -fn`.

mod common;

use common::Proc;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// Undo actions run in reverse order when the test ends, even by panic, so
/// a failure leaves no mount or loop device behind.
#[derive(Default)]
struct Cleanup(Vec<(String, Vec<String>)>);

impl Cleanup {
    fn push(&mut self, program: &str, args: &[&str]) {
        self.0
            .push((program.into(), args.iter().map(|s| s.to_string()).collect()));
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (program, args) in self.0.drain(..).rev() {
            let _ = Command::new(program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn qemu_nbd(dir: &Path, size: u64) -> (Proc, PathBuf, PathBuf) {
    qemu_nbd_with(dir, size, &[])
}

fn qemu_nbd_with(dir: &Path, size: u64, extra: &[&str]) -> (Proc, PathBuf, PathBuf) {
    let img = dir.join("disk.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(size))
        .expect("create image");
    let sock = dir.join("qemu.sock");
    let log = std::fs::File::create(dir.join("qemu-nbd.log")).expect("log");
    let child = Command::new("qemu-nbd")
        .args([
            "-k",
            sock.to_str().expect("utf-8"),
            "-f",
            "raw",
            "-x",
            "vol",
            "-t",
        ])
        .args(extra)
        .arg(&img)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log)
        .spawn()
        .expect("spawn qemu-nbd");
    common::wait_for_unix(&sock, Duration::from_secs(10));
    (
        Proc {
            child,
            name: "qemu-nbd".into(),
        },
        sock,
        img,
    )
}

fn mounted(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let d = dir.to_str().expect("utf-8");
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(d))
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Stops `attach` with `sig` and checks it exits 0 having unmounted `dir`.
fn stop_cleanly(mut p: Proc, sig: i32, dir: &Path, log: &Path) {
    p.signal(sig);
    let st = p
        .wait_timeout(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("attach did not stop:\n{}", log_of(log)));
    assert!(st.success(), "attach exited {st}:\n{}", log_of(log));
    assert!(!mounted(dir), "{} still mounted after exit", dir.display());
}

#[test]
fn fuse_file_reads_and_writes_the_export_and_stops_cleanly_on_sigint() {
    if !common::require(&["qemu-nbd", "fusermount3"]) || !Path::new("/dev/fuse").exists() {
        assert!(!common::strict(), "/dev/fuse is missing");
        return;
    }
    let dir = common::tempdir();
    let (_srv, sock, img) = qemu_nbd(dir.path(), 8 * MIB);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mut cleanup = Cleanup::default();
    cleanup.push("fusermount3", &["-u", "-z", mnt.to_str().expect("utf-8")]);
    let log = dir.path().join("attach.log");
    let nbd = format!("unix:{}", sock.display());
    let p = Proc::geomirror(
        &[
            "attach",
            "--nbd",
            &nbd,
            "--name",
            "vol",
            "--fuse",
            mnt.to_str().expect("utf-8"),
        ],
        &log,
    );
    let file = mnt.join("vol");
    common::wait_until("the FUSE file", Duration::from_secs(20), || {
        std::fs::metadata(&file).is_ok_and(|m| m.len() == 8 * MIB)
    });

    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file)
        .expect("open volume file");
    let data: Vec<u8> = (0..3 * 4096u32).map(|i| (i % 251) as u8).collect();
    f.write_all_at(&data, 4096).expect("write");
    // Misaligned and odd-sized I/O goes through too.
    f.write_all_at(b"hello", 100_001).expect("small write");
    f.sync_all().expect("fsync becomes NBD flush");
    let mut back = vec![0u8; data.len()];
    f.read_exact_at(&mut back, 4096).expect("read back");
    assert_eq!(back, data);
    // The server's file has the bytes, without going through FUSE.
    let disk = std::fs::read(&img).expect("read image");
    assert_eq!(&disk[4096..4096 + data.len()], &data[..]);
    assert_eq!(&disk[100_001..100_006], b"hello");
    // A write starting at the end of the volume has no room.
    let e = f.write_at(b"x", 8 * MIB).expect_err("past the end");
    assert!(
        matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EFBIG)),
        "{e}"
    );
    drop(f);

    stop_cleanly(p, libc::SIGINT, &mnt, &log);
}

#[test]
fn fuse_loop_device_carries_ext4_through_mkfs_mount_umount_and_fsck() {
    if !common::require(&[
        "qemu-nbd",
        "fusermount3",
        "mkfs.ext4",
        "e2fsck",
        "losetup",
        "mount",
        "umount",
    ]) || !common::require_root()
    {
        return;
    }
    let dir = common::tempdir();
    let (srv, sock, img) = qemu_nbd(dir.path(), 256 * MIB);
    let mnt = dir.path().join("fuse");
    let fs = dir.path().join("ext4");
    let check = dir.path().join("check");
    for d in [&mnt, &fs, &check] {
        std::fs::create_dir(d).expect("mkdir");
    }
    let mut cleanup = Cleanup::default();
    cleanup.push("fusermount3", &["-u", "-z", mnt.to_str().expect("utf-8")]);
    let log = dir.path().join("attach.log");
    let nbd = format!("nbd+unix:///vol?socket={}", sock.display());
    let p = Proc::geomirror(
        &[
            "attach",
            "--nbd",
            &nbd,
            "--fuse",
            mnt.to_str().expect("utf-8"),
            "--loop",
        ],
        &log,
    );
    let mut loop_dev = String::new();
    common::wait_until(
        "the loop device to be printed",
        Duration::from_secs(20),
        || {
            loop_dev = log_of(&log)
                .lines()
                .find(|l| l.starts_with("/dev/loop"))
                .unwrap_or_default()
                .to_string();
            !loop_dev.is_empty()
        },
    );
    cleanup.push("losetup", &["-d", &loop_dev]);
    let back = common::run_ok(Command::new("losetup").args(["-n", "-O", "BACK-FILE", &loop_dev]));
    assert_eq!(
        back.trim(),
        mnt.join("vol").to_str().expect("utf-8"),
        "loop device is on the FUSE file"
    );

    common::run_ok(Command::new("mkfs.ext4").args(["-q", "-F", &loop_dev]));
    common::run_ok(Command::new("mount").args([&loop_dev, fs.to_str().expect("utf-8")]));
    cleanup.push("umount", &["-l", fs.to_str().expect("utf-8")]);
    let files: Vec<(String, Vec<u8>)> = (0..16u32)
        .map(|i| {
            (
                format!("f{i}"),
                (0..(i + 1) * 70_001).map(|j| (j * 7 + i) as u8).collect(),
            )
        })
        .collect();
    for (name, content) in &files {
        std::fs::write(fs.join(name), content).expect("write file");
    }
    common::run_ok(Command::new("umount").arg(&fs));
    stop_cleanly(p, libc::SIGTERM, &mnt, &log);
    let still = common::run_ok(
        Command::new("losetup")
            .args(["-n", "-O", "NAME", "-j"])
            .arg(mnt.join("vol")),
    );
    assert!(
        still.trim().is_empty(),
        "loop device left attached: {still}"
    );
    drop(srv);

    // The image as the server wrote it: a clean filesystem with our files.
    common::run_ok(Command::new("e2fsck").arg("-fn").arg(&img));
    common::run_ok(
        Command::new("mount")
            .args(["-o", "ro,loop"])
            .arg(&img)
            .arg(&check),
    );
    cleanup.push("umount", &["-l", check.to_str().expect("utf-8")]);
    for (name, content) in &files {
        assert_eq!(
            &std::fs::read(check.join(name)).expect("read back"),
            content,
            "{name}"
        );
    }
    common::run_ok(Command::new("umount").arg(&check));
}

#[test]
fn read_only_export_gives_a_read_only_file() {
    if !common::require(&["qemu-nbd", "fusermount3"]) || !Path::new("/dev/fuse").exists() {
        assert!(!common::strict(), "/dev/fuse is missing");
        return;
    }
    let dir = common::tempdir();
    let (_srv, sock, img) = qemu_nbd_with(dir.path(), MIB, &["-r"]);
    std::fs::write(&img, vec![0x5a; MIB as usize]).expect("fill image");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mut cleanup = Cleanup::default();
    cleanup.push("fusermount3", &["-u", "-z", mnt.to_str().expect("utf-8")]);
    let log = dir.path().join("attach.log");
    let nbd = format!("unix:{}", sock.display());
    let p = Proc::geomirror(
        &[
            "attach",
            "--nbd",
            &nbd,
            "--name",
            "vol",
            "--fuse",
            mnt.to_str().expect("utf-8"),
        ],
        &log,
    );
    let file = mnt.join("vol");
    common::wait_until("the FUSE file", Duration::from_secs(20), || {
        std::fs::metadata(&file).is_ok()
    });
    assert_eq!(
        std::fs::read(&file).expect("read"),
        vec![0x5a; MIB as usize]
    );
    let e = std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .expect_err("read-only");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    stop_cleanly(p, libc::SIGTERM, &mnt, &log);
}
