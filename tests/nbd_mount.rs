//! The kernel path without the nbd module: export → nbdfuse → loop device →
//! ext4 → mount, write files, remount, compare, and a clean e2fsck.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{run_ok, Proc};

/// Undoes, in reverse order and even when the test fails, whatever was set up:
/// mounts, the loop device, the FUSE mount and the nbdfuse process.
#[derive(Default)]
struct Cleanup {
    mounted: Option<PathBuf>,
    loop_dev: Option<String>,
    fuse_dir: Option<PathBuf>,
    nbdfuse: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(m) = self.mounted.take() {
            let _ = Command::new("umount").arg(&m).status();
        }
        if let Some(l) = self.loop_dev.take() {
            let _ = Command::new("losetup").args(["-d", &l]).status();
        }
        if let Some(d) = self.fuse_dir.take() {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&d)
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mut c) = self.nbdfuse.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn mount(dev: &str, at: &Path, c: &mut Cleanup) {
    run_ok(Command::new("mount").args([dev, at.to_str().expect("utf-8")]));
    c.mounted = Some(at.to_owned());
}

fn umount(c: &mut Cleanup) {
    let m = c.mounted.take().expect("mounted");
    run_ok(Command::new("umount").arg(&m));
}

#[test]
fn ext4_over_nbdfuse_and_a_loop_device_survives_a_remount_and_fscks_clean() {
    if !common::require(&["nbdfuse", "losetup", "mkfs.ext4", "e2fsck", "fusermount3"])
        || !common::require_root()
    {
        return;
    }
    let dir = common::tempdir();
    let sock = dir.path().join("nbd.sock");
    let disk = dir.path().join("disk.img");
    let listen = format!("unix:{}", sock.display());
    let _server = Proc::geomirror(
        &[
            "serve",
            "--disk",
            disk.to_str().expect("utf-8"),
            "--create",
            "128M",
            "--listen",
            &listen,
        ],
        &dir.path().join("serve.log"),
    );
    common::wait_for_unix(&sock, Duration::from_secs(10));
    let uri = format!("nbd+unix:///geomirror?socket={}", sock.display());

    let mut c = Cleanup::default();
    let fuse_dir = dir.path().join("fuse");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&fuse_dir).expect("mkdir fuse");
    std::fs::create_dir_all(&mnt).expect("mkdir mnt");
    c.nbdfuse = Some(
        common::debian_cmd("nbdfuse")
            .arg(&fuse_dir)
            .arg(&uri)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn nbdfuse"),
    );
    c.fuse_dir = Some(fuse_dir.clone());
    let image = fuse_dir.join("nbd");
    common::wait_until(
        "nbdfuse to expose its file",
        Duration::from_secs(10),
        || std::fs::metadata(&image).is_ok_and(|m| m.len() == 128 << 20),
    );
    let dev = run_ok(Command::new("losetup").args(["-f", "--show"]).arg(&image))
        .trim()
        .to_owned();
    c.loop_dev = Some(dev.clone());
    run_ok(Command::new("mkfs.ext4").args(["-q", "-F", &dev]));

    mount(&dev, &mnt, &mut c);
    let mut files = Vec::new();
    for (i, len) in [1usize, 4096, 100_000, 3 << 20].into_iter().enumerate() {
        let mut data = vec![0u8; len];
        rand::fill(&mut data[..]);
        let p = mnt.join(format!("f{i}"));
        std::fs::write(&p, &data).expect("write file");
        files.push((format!("f{i}"), data));
    }
    std::fs::create_dir(mnt.join("sub")).expect("mkdir in fs");
    run_ok(&mut Command::new("sync"));
    umount(&mut c);

    mount(&dev, &mnt, &mut c);
    for (name, data) in &files {
        let got = std::fs::read(mnt.join(name)).expect("read back file");
        assert!(&got == data, "{name} differs after remount");
    }
    assert!(mnt.join("sub").is_dir());
    umount(&mut c);

    let out = Command::new("e2fsck")
        .args(["-fn", &dev])
        .output()
        .expect("run e2fsck");
    assert!(
        out.status.success(),
        "e2fsck found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
