//! A guard for the ext4 test's kernel objects: mounts, loop devices, the
//! FUSE mount and nbdfuse, undone in reverse order even when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::{run_ok, Proc};

/// Undoes mounts, loop devices, the FUSE mount and nbdfuse, even on failure.
#[derive(Default)]
pub struct Mounts {
    pub mounted: Vec<PathBuf>,
    pub loops: Vec<String>,
    pub fuse: Option<PathBuf>,
    pub nbdfuse: Option<Proc>,
}

impl Mounts {
    pub fn umount(&mut self, at: &Path) {
        run_ok(Command::new("umount").arg(at));
        self.mounted.retain(|m| m != at);
    }

    pub fn detach(&mut self, dev: &str) {
        run_ok(Command::new("losetup").args(["-d", dev]));
        self.loops.retain(|l| l != dev);
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for m in self.mounted.drain(..).rev() {
            let _ = Command::new("umount").arg(&m).status();
        }
        for l in self.loops.drain(..) {
            let _ = Command::new("losetup").args(["-d", &l]).status();
        }
        if let Some(d) = self.fuse.take() {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&d)
                .stderr(Stdio::null())
                .status();
        }
        self.nbdfuse.take();
    }
}
