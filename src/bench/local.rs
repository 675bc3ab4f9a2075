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

/// Running local servers and their temporary directory.
pub struct LocalSetup {
    dir: PathBuf,
    children: Vec<Child>,
}

impl LocalSetup {
    /// Starts every local target, in the order they are compared: the
    /// unmirrored baseline first. A mirrored local group is one more spawn
    /// function returning a [`Target`], pushed after the baseline.
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
        Ok((setup, vec![baseline]))
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
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        loop {
            if std::os::unix::net::UnixStream::connect(sock).is_ok() {
                return Ok(());
            }
            let child = self.children.last_mut().expect("pushed just above");
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
