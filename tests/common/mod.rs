//! Shared helpers for the integration tests: the binary under test, free
//! ports, temp dirs, child processes that die with the test, and checks for
//! the external clients a test needs.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `geomirror` binary built for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_geomirror"))
}

/// True when missing tools must fail the test instead of skipping it: in CI
/// (`CI=true`) or when `GEOMIRROR_REQUIRE_ALL=1`.
pub fn strict() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("GEOMIRROR_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// Whether `cmd` is on PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Returns false (and says so loudly) when a tool the test needs is missing;
/// panics instead under [`strict`], so CI never skips silently.
#[must_use]
pub fn require(cmds: &[&str]) -> bool {
    let missing: Vec<&str> = cmds.iter().copied().filter(|c| !have(c)).collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "SKIPPED: this test needs {missing:?} (install them with scripts/test.sh, \
         which runs apt-get for libnbd-bin, fio, nbdkit, qemu-utils, e2fsprogs)"
    );
    if strict() {
        panic!("{msg}");
    }
    eprintln!("\n*** {msg} ***\n");
    false
}

/// Returns false (loudly) unless running as root; panics under [`strict`].
#[must_use]
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        let msg = "SKIPPED: this test needs root (loop devices, mounts, namespaces)";
        if strict() {
            panic!("{msg}");
        }
        eprintln!("\n*** {msg} ***\n");
    }
    root
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on loopback")
}

/// A fresh temporary directory, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("geomirror-test-")
        .tempdir()
        .expect("create a temp dir")
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing
/// test never leaves servers behind.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    /// Start `geomirror ARGS`, logs to `log` (stderr and stdout both).
    pub fn geomirror(args: &[&str], log: &Path) -> Proc {
        let out = std::fs::File::create(log).expect("create log file");
        let err = out.try_clone().expect("dup log file");
        let child = Command::new(bin())
            .args(args)
            .env("GEOMIRROR_LOG", "geomirror=debug,info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn geomirror");
        Proc {
            child,
            name: format!("geomirror {}", args.join(" ")),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Send a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Wait for exit up to `timeout`; None if still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `f` until it returns true or `timeout` passes; panics with `what`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Wait until a unix socket accepts connections.
pub fn wait_for_unix(path: &Path, timeout: Duration) {
    wait_until(&format!("unix socket {}", path.display()), timeout, || {
        std::os::unix::net::UnixStream::connect(path).is_ok()
    });
}

/// Wait until a TCP address accepts connections.
pub fn wait_for_tcp(addr: &str, timeout: Duration) {
    wait_until(&format!("tcp {addr}"), timeout, || {
        std::net::TcpStream::connect(addr).is_ok()
    });
}

/// Run a command to completion; panics with its output when it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
}

/// A command with Debian's `/usr/bin` first on PATH, so tools such as
/// `nbdsh` (which runs `python3 -m nbd`) find Debian's python3 and its
/// `nbd` module rather than another python3 earlier on PATH.
pub fn debian_cmd(program: &str) -> Command {
    let mut c = Command::new(program);
    let path = std::env::var("PATH").unwrap_or_default();
    c.env("PATH", format!("/usr/bin:/bin:/usr/sbin:/sbin:{path}"));
    c
}

/// A running `geomirror serve` on a fresh disk in its own temp dir.
pub struct Served {
    pub dir: tempfile::TempDir,
    pub proc: Proc,
    pub disk: PathBuf,
    pub sock: PathBuf,
    /// `nbd+unix:///geomirror?socket=...`: the default export name.
    pub uri: String,
}

/// Start `geomirror serve --create SIZE` on a new disk, plus `extra` flags,
/// and wait until its socket accepts connections.
pub fn serve(size: &str, extra: &[&str]) -> Served {
    let dir = tempdir();
    let disk = dir.path().join("disk.img");
    let sock = dir.path().join("nbd.sock");
    let listen = format!("unix:{}", sock.display());
    let mut args = vec![
        "serve",
        "--disk",
        disk.to_str().expect("utf-8 path"),
        "--create",
        size,
        "--listen",
        &listen,
    ];
    args.extend_from_slice(extra);
    let proc = Proc::geomirror(&args, &dir.path().join("serve.log"));
    wait_for_unix(&sock, Duration::from_secs(10));
    let uri = format!("nbd+unix:///geomirror?socket={}", sock.display());
    Served {
        dir,
        proc,
        disk,
        sock,
        uri,
    }
}

/// A disk's label, as `geomirror label --json` prints it.
pub fn label(disk: &Path) -> serde_json::Value {
    let out = run_ok(Command::new(bin()).args(["label", "--json"]).arg(disk));
    serde_json::from_str(&out).expect("label JSON")
}

/// A tmpfs mounted for the test (a small file system to run out of),
/// unmounted when dropped.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mkdir");
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(at),
        );
        Tmpfs(at.to_path_buf())
    }

    /// Gives the file system `size` (growing it frees room at once).
    pub fn resize(&self, size: &str) {
        run_ok(
            Command::new("mount")
                .args(["-o", &format!("remount,size={size}")])
                .arg(&self.0),
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
