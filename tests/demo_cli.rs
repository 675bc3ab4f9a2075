//! `geomirror demo` run as a person would: the whole tour on a small volume,
//! an interrupted tour, and a refused size; no member process may outlive it.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{bin, tempdir};

/// Pids of the members the demo says it started (`started a1 (pid 123)`).
fn member_pids(out: &str) -> Vec<i32> {
    out.lines()
        .filter_map(|l| l.split("(pid ").nth(1))
        .filter_map(|rest| rest.split(')').next())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Whether `pid` is a running `geomirror up` (a reused pid of another
/// program does not count).
fn member_alive(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
            args.iter().any(|a| *a == b"up") && args.iter().any(|a| *a == b"--state-dir")
        })
        .unwrap_or(false)
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read the parent dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

#[test]
fn demo_runs_every_step_checks_hold_and_no_member_is_left() {
    let parent = tempdir();
    let out = Command::new(bin())
        .args(["demo", "--size", "64M", "--dir"])
        .arg(parent.path())
        .stdin(Stdio::null())
        .output()
        .expect("run geomirror demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for step in [
        "== 1. format the disks, start the members, show the roles",
        "== 2. write through NBD",
        "== 3. initial full sync of the copy",
        "== 4. crash the copy host, keep writing, restart it",
        "== 5. stop every member, compare the disks",
        "== 6. summary",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
    for check in [
        "✓ roles",
        "✓ NBD writes",
        "✓ initial full sync",
        "✓ partial resync",
        "✓ clean stop",
        "✓ disks identical",
        "✓ copy holds what was written",
    ] {
        assert!(stdout.contains(check), "missing {check:?} in:\n{stdout}");
    }
    assert!(!stdout.contains('✗'), "a check failed:\n{stdout}");
    assert!(stdout.contains("7 of 7 checks held"), "{stdout}");
    // a1, a2, b1, and b1 again after its crash.
    let pids = member_pids(&stdout);
    assert_eq!(pids.len(), 4, "member pids in:\n{stdout}");
    for pid in pids {
        assert!(!member_alive(pid), "member pid {pid} outlived the demo");
    }
    assert!(
        entries(parent.path()).is_empty(),
        "the demo directory was not removed: {:?}",
        entries(parent.path())
    );
}

#[test]
fn demo_interrupted_stops_its_members_and_keep_keeps_the_logs() {
    let parent = tempdir();
    let mut child = Command::new(bin())
        .args(["demo", "--size", "16M", "--keep", "--dir"])
        .arg(parent.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn geomirror demo");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !seen.contains("started b1") {
        assert!(Instant::now() < deadline, "b1 never started:\n{seen}");
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => seen += &(line + "\n"),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("demo ended early:\n{seen}"),
        }
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for the demo") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("demo did not end after SIGINT:\n{seen}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    reader.join().expect("reader thread");
    seen.extend(rx.try_iter().map(|l| l + "\n"));
    assert!(!status.success(), "an interrupted demo must fail:\n{seen}");
    assert!(seen.contains("interrupted"), "{seen}");
    assert!(seen.contains("the demo FAILED"), "{seen}");
    let pids = member_pids(&seen);
    assert_eq!(pids.len(), 3, "member pids in:\n{seen}");
    for pid in pids {
        assert!(!member_alive(pid), "member pid {pid} outlived the demo");
    }
    let kept = entries(parent.path());
    assert_eq!(kept.len(), 1, "one demo directory kept: {kept:?}");
    let dir = parent.path().join(&kept[0]);
    for f in ["group.toml", "a1.log", "b1.log", "prod.img", "dr.img"] {
        assert!(dir.join(f).exists(), "--keep lost {f}");
    }
}

#[test]
fn demo_refuses_a_size_too_small_and_starts_nothing() {
    let parent = tempdir();
    let out = Command::new(bin())
        .args(["demo", "--size", "1M", "--dir"])
        .arg(parent.path())
        .output()
        .expect("run geomirror demo");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--size must be between"), "{stderr}");
    assert!(entries(parent.path()).is_empty());
}
