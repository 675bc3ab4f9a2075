//! The attach client against real NBD servers (qemu-nbd, nbdkit): handshake,
//! data round trips, refusals; and `geomirror attach` where the kernel has no
//! nbd module.

mod common;

use common::Proc;
use geomirror::attach::{AttachError, Endpoint, NbdAddress, NbdClient};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn spawn(program: &str, args: &[&str], log: &Path) -> Proc {
    let out = std::fs::File::create(log).expect("create log");
    let err = out.try_clone().expect("dup log");
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    Proc {
        child,
        name: format!("{program} {}", args.join(" ")),
    }
}

/// qemu-nbd serving a fresh sparse file of `size` bytes as export `vol`.
fn qemu_nbd(dir: &Path, size: u64, extra: &[&str]) -> (Proc, PathBuf, PathBuf) {
    let img = dir.join("disk.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(size))
        .expect("create image");
    let sock = dir.join("qemu.sock");
    let mut args = vec![
        "-k",
        sock.to_str().expect("utf-8 path"),
        "-f",
        "raw",
        "-x",
        "vol",
        "-t",
    ];
    args.extend_from_slice(extra);
    args.push(img.to_str().expect("utf-8 path"));
    let p = spawn("qemu-nbd", &args, &dir.join("qemu-nbd.log"));
    common::wait_for_unix(&sock, Duration::from_secs(10));
    (p, sock, img)
}

fn unix(sock: &Path, export: &str) -> NbdAddress {
    NbdAddress {
        endpoint: Endpoint::Unix(sock.to_path_buf()),
        export: export.to_string(),
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn qemu_nbd_handshake_reports_size_and_flags() {
    if !common::require(&["qemu-nbd"]) {
        return;
    }
    let dir = common::tempdir();
    let (_srv, sock, _img) = qemu_nbd(dir.path(), 64 * MIB + 4096, &[]);
    let c = NbdClient::connect(&unix(&sock, "vol")).expect("handshake");
    let info = c.info();
    assert_eq!(info.size, 64 * MIB + 4096);
    assert!(!info.read_only());
    assert!(
        info.can_flush(),
        "qemu-nbd advertises flush: {:#x}",
        info.flags
    );
    assert!(info.can_write_zeroes());
}

#[test]
fn qemu_nbd_data_round_trips_through_write_flush_read() {
    if !common::require(&["qemu-nbd"]) {
        return;
    }
    let dir = common::tempdir();
    let (srv, sock, img) = qemu_nbd(dir.path(), 16 * MIB, &[]);
    let c = NbdClient::connect(&unix(&sock, "vol")).expect("handshake");
    let a = pattern(1, 1 << 20);
    let b = pattern(7, 4096);
    c.write(0, &a, false).expect("write 1 MiB");
    c.write(16 * MIB - 4096, &b, true)
        .expect("write last block with FUA");
    c.flush().expect("flush");
    assert_eq!(c.read(0, a.len() as u32).expect("read"), a);
    assert_eq!(c.read(16 * MIB - 4096, 4096).expect("read"), b);
    c.write_zeroes(4096, 8192).expect("write zeroes");
    assert_eq!(c.read(4096, 8192).expect("read"), vec![0u8; 8192]);
    drop(c);
    drop(srv);
    // What the server wrote to its file is what we sent.
    let disk = std::fs::read(&img).expect("read image");
    assert_eq!(&disk[..4096], &a[..4096]);
    assert_eq!(&disk[4096..12288], &[0u8; 8192][..]);
    assert_eq!(&disk[12288..a.len()], &a[12288..]);
    assert_eq!(&disk[(16 * MIB - 4096) as usize..], &b[..]);
}

#[test]
fn nbdkit_handshake_and_concurrent_requests_on_one_connection() {
    if !common::require(&["nbdkit"]) {
        return;
    }
    let dir = common::tempdir();
    let sock = dir.path().join("kit.sock");
    let _srv = spawn(
        "nbdkit",
        &["-f", "-U", sock.to_str().expect("utf-8"), "memory", "32M"],
        &dir.path().join("nbdkit.log"),
    );
    common::wait_for_unix(&sock, Duration::from_secs(10));
    let c = Arc::new(NbdClient::connect(&unix(&sock, "")).expect("handshake"));
    assert_eq!(c.info().size, 32 * MIB);
    assert!(c.info().can_flush());
    // 8 threads × 32 blocks each, interleaved on one socket.
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let c = Arc::clone(&c);
            std::thread::spawn(move || {
                for i in 0..32u64 {
                    let off = (u64::from(t) * 32 + i) * 65536;
                    c.write(off, &pattern(t ^ i as u8, 65536), false)
                        .expect("write");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer thread");
    }
    c.flush().expect("flush");
    for t in 0..8u8 {
        for i in 0..32u64 {
            let off = (u64::from(t) * 32 + i) * 65536;
            assert_eq!(
                c.read(off, 65536).expect("read"),
                pattern(t ^ i as u8, 65536),
                "block {t}/{i}"
            );
        }
    }
}

#[test]
fn requests_past_the_end_are_refused_before_the_wire() {
    if !common::require(&["qemu-nbd"]) {
        return;
    }
    let dir = common::tempdir();
    let (_srv, sock, _img) = qemu_nbd(dir.path(), MIB, &[]);
    let c = NbdClient::connect(&unix(&sock, "vol")).expect("handshake");
    assert!(matches!(
        c.read(MIB - 512, 1024),
        Err(AttachError::InvalidRequest(_))
    ));
    assert!(matches!(
        c.write(u64::MAX - 1, &[0; 512], false),
        Err(AttachError::InvalidRequest(_))
    ));
    // The connection is still good afterwards.
    assert_eq!(c.read(0, 512).expect("read").len(), 512);
}

#[test]
fn read_only_export_refuses_writes() {
    if !common::require(&["qemu-nbd"]) {
        return;
    }
    let dir = common::tempdir();
    let (_srv, sock, _img) = qemu_nbd(dir.path(), MIB, &["-r"]);
    let c = NbdClient::connect(&unix(&sock, "vol")).expect("handshake");
    assert!(c.info().read_only());
    let e = c.write(0, &[1; 512], false).expect_err("read-only");
    assert_eq!(e.errno(), libc::EPERM);
}

#[test]
fn unknown_export_is_refused_with_a_clear_error() {
    if !common::require(&["qemu-nbd"]) {
        return;
    }
    let dir = common::tempdir();
    let (_srv, sock, _img) = qemu_nbd(dir.path(), MIB, &[]);
    let e = NbdClient::connect(&unix(&sock, "nope"))
        .err()
        .expect("refused");
    assert!(matches!(e, AttachError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("nope"), "{e}");
}

#[test]
fn attach_without_nbd_module_says_modprobe_and_fuse() {
    let has_nbd = Path::new("/sys/module/nbd").exists() || Path::new("/dev/nbd0").exists();
    let dir = common::tempdir();
    let out = Command::new(common::bin())
        .args(["attach", "--nbd"])
        .arg(format!("unix:{}", dir.path().join("absent.sock").display()))
        .output()
        .expect("run geomirror attach");
    assert!(
        !out.status.success(),
        "attach must fail: no server, and here no driver"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    if has_nbd {
        // With the driver present, the failure is the missing server.
        assert!(stderr.contains("cannot connect"), "{stderr}");
    } else {
        assert!(stderr.contains("modprobe nbd"), "{stderr}");
        assert!(stderr.contains("--fuse"), "{stderr}");
        let out = Command::new(common::bin())
            .args(["detach", "--device", "/dev/nbd0"])
            .output()
            .expect("run geomirror detach");
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("modprobe nbd"));
    }
}

#[test]
fn attach_with_malformed_address_fails_with_the_reason() {
    let out = Command::new(common::bin())
        .args(["attach", "--nbd", "http://x/y", "--fuse", "/nonexistent"])
        .output()
        .expect("run geomirror attach");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad NBD address") && stderr.contains("unknown scheme"),
        "{stderr}"
    );
}

#[test]
fn attach_refuses_a_device_that_is_not_a_block_device() {
    if Path::new("/sys/module/nbd").exists() {
        // With the driver loaded, --device would go to the kernel: not here.
        return;
    }
    let dir = common::tempdir();
    let fake = dir.path().join("nbd7");
    std::fs::write(&fake, b"").expect("create file");
    let out = Command::new(common::bin())
        .args(["attach", "--nbd", "unix:/nonexistent", "--device"])
        .arg(&fake)
        .output()
        .expect("run geomirror attach");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a block device"), "{stderr}");
}

#[test]
fn tcp_address_and_nbd_uri_reach_the_same_export() {
    if !common::require(&["nbdkit"]) {
        return;
    }
    let dir = common::tempdir();
    let port = common::free_port().to_string();
    let _srv = spawn(
        "nbdkit",
        &["-f", "-i", "127.0.0.1", "-p", &port, "memory", "4M"],
        &dir.path().join("nbdkit.log"),
    );
    let hostport = format!("127.0.0.1:{port}");
    common::wait_for_tcp(&hostport, Duration::from_secs(10));
    let a = NbdClient::connect(&NbdAddress::parse(&hostport, None).expect("address")).expect("tcp");
    a.write(8192, &pattern(3, 4096), true)
        .expect("write with FUA");
    drop(a);
    // nbdkit's memory plugin keeps data across connections.
    let uri = format!("nbd://127.0.0.1:{port}/");
    let b = NbdClient::connect(&NbdAddress::parse(&uri, None).expect("uri")).expect("tcp");
    assert_eq!(b.info().size, 4 * MIB);
    assert_eq!(b.read(8192, 4096).expect("read"), pattern(3, 4096));
}
