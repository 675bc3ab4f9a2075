//! The throwaway set-up of `bench --local`: servers started as children of
//! this executable on temporary disks, stopped and removed when dropped.

use super::error::BenchError;
use super::target::Target;
use crate::attach::{Endpoint, NbdAddress};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a spawned server may take to listen.
pub const START_TIMEOUT_MS: u64 = 10_000;
/// How long the local group may take to form and fully sync its copy.
pub const SYNC_TIMEOUT_MS: u64 = 180_000;

/// Running local servers and their temporary directory.
pub struct LocalSetup {
    dir: PathBuf,
    children: Vec<Child>,
}

impl LocalSetup {
    /// Starts every local target, in the order they are compared: the
    /// unmirrored baseline (`serve` on a plain file), then the mirrored
    /// group (sync mode, one copy over loopback).
    pub fn start(size_bytes: u64) -> Result<(LocalSetup, Vec<Target>), BenchError> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("geomirror-bench-{}-{stamp}", std::process::id()));
        std::fs::create_dir(&dir)
            .map_err(|e| BenchError::Local(format!("create {}: {e}", dir.display())))?;
        let mut setup = LocalSetup {
            dir,
            children: Vec::new(),
        };
        let baseline = setup.spawn_unmirrored(size_bytes)?;
        let mirrored = setup.spawn_mirrored(size_bytes)?;
        Ok((setup, vec![baseline, mirrored]))
    }

    /// A local group in sync mode: production member `p1`, copy member
    /// `c1` (its disk on this machine, reached over loopback TCP) and a
    /// witness `w1`; returns once the copy's initial full sync is done, so
    /// the measurement sees mirroring, not the sync.
    fn spawn_mirrored(&mut self, size_bytes: u64) -> Result<Target, BenchError> {
        let exe = std::env::current_exe()
            .map_err(|e| BenchError::Local(format!("find this executable: {e}")))?;
        let port = || -> Result<u16, BenchError> {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(|e| BenchError::Local(format!("pick a free port: {e}")))
        };
        let (prod, copy) = (self.dir.join("prod.img"), self.dir.join("copy.img"));
        let sock = self.dir.join("mirrored.sock");
        let cfg = self.dir.join("group.toml");
        let text = format!(
            "group = \"bench\"\nmode = \"sync\"\nsecret = \"bench-local-secret\"\n\
             [[site]]\nname = \"prod\"\nresource = \"bench-prod\"\n\
             [[site]]\nname = \"dr\"\nresource = \"bench-dr\"\n\
             [[member]]\nname = \"p1\"\naddress = \"127.0.0.1:{}\"\ndisks = [{:?}]\nnbd = \"unix:{}\"\n\
             [[member]]\nname = \"c1\"\naddress = \"127.0.0.1:{}\"\ndisks = [{:?}]\n\
             [[member]]\nname = \"w1\"\naddress = \"127.0.0.1:{}\"\n",
            port()?,
            path_str(&prod)?,
            path_str(&sock)?,
            port()?,
            path_str(&copy)?,
            port()?,
        );
        std::fs::write(&cfg, text)
            .map_err(|e| BenchError::Local(format!("write {}: {e}", cfg.display())))?;
        // Room beyond the data area for the label and the dirty bitmap.
        let disk_bytes = (size_bytes + (1 << 20)).to_string();
        for (disk, resource) in [(&prod, "bench-prod"), (&copy, "bench-dr")] {
            let out = Command::new(&exe)
                .args([
                    "format",
                    "--group",
                    "bench",
                    "--resource",
                    resource,
                    "--size",
                ])
                .arg(&disk_bytes)
                .arg(disk)
                .output()
                .map_err(|e| BenchError::Local(format!("run format: {e}")))?;
            if !out.status.success() {
                return Err(BenchError::Local(format!(
                    "format {}: {}",
                    disk.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        let cfg_s = path_str(&cfg)?.to_string();
        for member in ["p1", "c1", "w1"] {
            let state = self.dir.join(format!("state-{member}"));
            let log = self.dir.join(format!("{member}.log"));
            let args = [
                "up",
                "--config",
                &cfg_s,
                "--member",
                member,
                "--state-dir",
                path_str(&state)?,
            ];
            self.spawn_child(&args, &log)?;
            // Started a little apart; the first founds the group once all
            // three answer, and the others join it.
            std::thread::sleep(Duration::from_millis(700));
        }
        self.wait_until_synced(&exe, &cfg_s, &sock)?;
        Ok(Target {
            label: "mirrored-sync".into(),
            addr: NbdAddress {
                endpoint: Endpoint::Unix(sock),
                export: "bench".into(),
            },
        })
    }

    /// Polls `status --json` until the copy is `UpToDate` and the
    /// production socket answers.
    fn wait_until_synced(&self, exe: &Path, cfg: &str, sock: &Path) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_millis(SYNC_TIMEOUT_MS);
        loop {
            let out = Command::new(exe)
                .args(["status", "--json", "--config", cfg])
                .output();
            let synced = out.ok().is_some_and(|o| {
                serde_json::from_slice::<crate::node::status::StatusReport>(&o.stdout).is_ok_and(
                    |r| {
                        r.resources
                            .iter()
                            .filter(|x| x.role == "copy")
                            .all(|x| x.state == "UpToDate" && x.host.is_some())
                    },
                )
            });
            if synced && std::os::unix::net::UnixStream::connect(sock).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::Local(format!(
                    "the local group did not finish its initial sync within {SYNC_TIMEOUT_MS} ms (logs in {})",
                    self.dir.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `geomirror serve` on a fresh temporary disk: the production disk with
    /// no copy site, i.e. what mirroring is compared against.
    fn spawn_unmirrored(&mut self, size_bytes: u64) -> Result<Target, BenchError> {
        let disk = self.dir.join("unmirrored.img");
        let sock = self.dir.join("unmirrored.sock");
        let log = self.dir.join("unmirrored.log");
        let size = size_bytes.to_string();
        let args = [
            "serve",
            "--disk",
            path_str(&disk)?,
            "--create",
            &size,
            "--listen",
            &format!("unix:{}", path_str(&sock)?),
        ];
        self.spawn_server(&args, &log, &sock)?;
        Ok(Target {
            label: "unmirrored".into(),
            addr: NbdAddress {
                endpoint: Endpoint::Unix(sock),
                export: String::new(),
            },
        })
    }

    /// Runs this executable with `args`, output to `log`, and waits until
    /// `sock` accepts connections; a server that exits first is reported
    /// with the end of its log.
    fn spawn_server(&mut self, args: &[&str], log: &Path, sock: &Path) -> Result<(), BenchError> {
        self.spawn_child(args, log)?;
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        loop {
            if std::os::unix::net::UnixStream::connect(sock).is_ok() {
                return Ok(());
            }
            let child = self.children.last_mut().expect("pushed by spawn_child");
            if let Ok(Some(status)) = child.try_wait() {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
                let tail = lines[lines.len().saturating_sub(4)..].join(" | ");
                return Err(BenchError::Local(format!(
                    "`geomirror {}` exited ({status}): {tail}",
                    args.join(" ")
                )));
            }
            if Instant::now() > deadline {
                return Err(BenchError::Local(format!(
                    "`geomirror {}` did not listen on {} within {START_TIMEOUT_MS} ms",
                    args.join(" "),
                    sock.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs this executable with `args`, output to `log`.
    fn spawn_child(&mut self, args: &[&str], log: &Path) -> Result<(), BenchError> {
        let exe = std::env::current_exe()
            .map_err(|e| BenchError::Local(format!("find this executable: {e}")))?;
        let out = std::fs::File::create(log)
            .map_err(|e| BenchError::Local(format!("create {}: {e}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| BenchError::Local(format!("dup log: {e}")))?;
        let child = Command::new(&exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| BenchError::Local(format!("spawn {}: {e}", exe.display())))?;
        self.children.push(child);
        Ok(())
    }
}

fn path_str(p: &Path) -> Result<&str, BenchError> {
    p.to_str()
        .ok_or_else(|| BenchError::Local(format!("{} is not UTF-8", p.display())))
}

impl Drop for LocalSetup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
