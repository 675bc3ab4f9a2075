//! The demo's group on this machine: its directory, recovery-domain file,
//! disks, and member processes, all owned by a guard that kills what is left.
//!
//! Members are child processes of the current executable (`geomirror up`),
//! each in its own process group (a terminal's Ctrl-C reaches only the demo,
//! which stops them in order) and with a parent-death signal, so that not
//! even a killed demo leaves a member behind.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::error::DemoError;
use crate::config::RecoveryDomain;

/// Group name and resource ids of the demo volume.
pub const GROUP: &str = "demo";
pub const PROD_RESOURCE: &str = "demo-prod";
pub const COPY_RESOURCE: &str = "demo-dr";
/// The members, in backup order, with the disk file each can open: two at
/// the production site share one disk; one at the copy site. Three voters
/// make a majority without a witness.
pub const MEMBERS: [(&str, &str); 3] = [("a1", "prod.img"), ("a2", "prod.img"), ("b1", "dr.img")];
/// Bytes of each log shown when a step fails.
const LOG_TAIL_BYTES: u64 = 2048;

/// One member process and where its things live.
struct Member {
    state_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// The group: created by [`Cluster::create`], torn down on drop.
pub struct Cluster {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub domain: RecoveryDomain,
    exe: PathBuf,
    keep: bool,
    members: BTreeMap<String, Member>,
}

impl Cluster {
    /// Makes a fresh directory under `parent` and writes the recovery
    /// domain there, with loopback ports free at this moment.
    pub fn create(parent: &Path, keep: bool) -> anyhow::Result<Cluster> {
        let exe = std::env::current_exe().context("find the current executable")?;
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
        let dir = fresh_dir(parent)?;
        let mut text = format!(
            "group = \"{GROUP}\"\nmode = \"sync\"\nsecret = \"{:032x}\"\n\n\
             [[site]]\nname = \"prod\"\nresource = \"{PROD_RESOURCE}\"\n\n\
             [[site]]\nname = \"dr\"\nresource = \"{COPY_RESOURCE}\"\n",
            rand::random::<u128>()
        );
        let mut members = BTreeMap::new();
        for (name, disk) in MEMBERS {
            let port = free_port()?;
            text += &format!(
                "\n[[member]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\n\
                 disks = [{:?}]\nnbd = \"unix:{}\"\n",
                dir.join(disk),
                dir.join(format!("{name}.nbd.sock")).display()
            );
            members.insert(
                name.to_string(),
                Member {
                    state_dir: dir.join(format!("state-{name}")),
                    log: dir.join(format!("{name}.log")),
                    child: None,
                },
            );
        }
        let config = dir.join("group.toml");
        std::fs::write(&config, &text).with_context(|| format!("write {}", config.display()))?;
        let domain = RecoveryDomain::from_toml_str(&text).context("the demo's recovery domain")?;
        Ok(Cluster {
            dir,
            config,
            domain,
            exe,
            keep,
            members,
        })
    }

    /// Path of a disk file in the demo directory.
    pub fn disk(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// `geomirror format` on one disk, as a person would run it; returns its output.
    pub fn format(&self, file: &str, resource: &str, size_bytes: u64) -> anyhow::Result<String> {
        let out = Command::new(&self.exe)
            .args(["format", "--group", GROUP, "--resource", resource, "--size"])
            .arg(size_bytes.to_string())
            .arg(self.disk(file))
            .stdin(Stdio::null())
            .output()
            .context("run geomirror format")?;
        if !out.status.success() {
            bail!(
                "geomirror format {file} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Starts (or restarts, with the same state directory) member `name`; returns its pid.
    pub fn start(&mut self, name: &str) -> anyhow::Result<u32> {
        let m = member(&mut self.members, name)?;
        if m.child.is_some() {
            bail!("member {name} is already running");
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .with_context(|| format!("open {}", m.log.display()))?;
        let err = log.try_clone().context("duplicate the log file")?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("up")
            .arg("--config")
            .arg(&self.config)
            .args(["--member", name, "--state-dir"])
            .arg(&m.state_dir)
            // Plain logs: they are read by people in files, not on a terminal.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl(2), which is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("spawn geomirror up")?;
        let pid = child.id();
        m.child = Some(child);
        Ok(pid)
    }

    /// Sends `sig` to member `name` (it must be running).
    pub fn signal(&mut self, name: &str, sig: Signal) -> anyhow::Result<()> {
        let m = member(&mut self.members, name)?;
        let child = m
            .child
            .as_ref()
            .with_context(|| format!("{name} is not running"))?;
        kill(Pid::from_raw(child.id() as i32), sig).with_context(|| format!("{sig} to {name}"))
    }

    /// Sends SIGKILL to `name` and reaps it.
    pub fn crash(&mut self, name: &str) -> anyhow::Result<ExitStatus> {
        self.signal(name, Signal::SIGKILL)?;
        self.wait_exit(name, Duration::from_secs(10))
    }

    /// Waits up to `timeout` for `name` to exit, and reaps it.
    pub fn wait_exit(&mut self, name: &str, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let m = member(&mut self.members, name)?;
        let child = m
            .child
            .as_mut()
            .with_context(|| format!("{name} is not running"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child
                .try_wait()
                .with_context(|| format!("wait for {name}"))?
            {
                m.child = None;
                return Ok(st);
            }
            if Instant::now() > deadline {
                return Err(DemoError::StopTimeout {
                    member: name.to_string(),
                    waited_ms: timeout.as_millis() as u64,
                }
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// An error if a member that should be running has ended.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for (name, m) in self.members.iter_mut() {
            let Some(child) = m.child.as_mut() else {
                continue;
            };
            if let Some(status) = child.try_wait()? {
                m.child = None;
                return Err(DemoError::MemberExited {
                    member: name.clone(),
                    status,
                    log: m.log.display().to_string(),
                }
                .into());
            }
        }
        Ok(())
    }

    /// The last line of `name`'s log tail containing `needle`.
    pub fn last_log_line(&self, name: &str, needle: &str) -> Option<String> {
        let text = tail(&self.members.get(name)?.log).ok()?;
        let line = text.lines().rev().find(|l| l.contains(needle))?;
        Some(strip_colours(line.trim()))
    }

    /// Each member's log path and its last lines, for a failure report.
    pub fn log_tails(&self) -> String {
        let mut s = String::new();
        for (name, m) in &self.members {
            s += &format!("--- {name}: {} (last lines)\n", m.log.display());
            s += &tail(&m.log).unwrap_or_else(|e| format!("(cannot read: {e})\n"));
        }
        s
    }

    /// Kills and reaps every member still running.
    pub fn kill_all(&mut self) {
        for m in self.members.values_mut() {
            if let Some(mut child) = m.child.take() {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Short description of how a process ended.
pub fn describe(st: &ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => st.to_string(),
    }
}

fn member<'a>(
    members: &'a mut BTreeMap<String, Member>,
    name: &str,
) -> anyhow::Result<&'a mut Member> {
    members
        .get_mut(name)
        .with_context(|| format!("no member {name} in the demo"))
}

/// A new directory `geomirror-demo-XXXXXXXX` under `parent`.
fn fresh_dir(parent: &Path) -> anyhow::Result<PathBuf> {
    // Bounded: a clash of 32 random bits is rare, eight in a row means
    // something else is wrong.
    for _ in 0..8 {
        let dir = parent.join(format!("geomirror-demo-{:08x}", rand::random::<u32>()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir.canonicalize()?),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("create {}", dir.display())),
        }
    }
    bail!(
        "could not make a fresh directory under {}",
        parent.display()
    )
}

/// A loopback port free now (the kernel picks it; a race with another
/// program taking it before the member binds is possible but unlikely).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(l.local_addr()?.port())
}

fn tail(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
    let mut buf = Vec::new();
    f.take(LOG_TAIL_BYTES).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    Ok(text.lines().map(|l| format!("  {l}\n")).collect())
}

/// `text` without ANSI colour sequences (`ESC [ … m`).
fn strip_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // Skip to the end of the sequence (a letter), or to the end.
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn colour_sequences_are_stripped_from_log_lines() {
        let line = "\x1b[2m2026\x1b[0m \x1b[33m WARN\x1b[0m leave: timed out";
        assert_eq!(super::strip_colours(line), "2026  WARN leave: timed out");
    }
}
