//! Long work on a running group and its progress: `verify` streaming its
//! progress, `status --wait-sync` following a join's resync to the end.

mod common;
mod ops_support;

use std::path::Path;
use std::process::Command;

use common::bin;
use geomirror::config::RecoveryDomain;
use geomirror::node::control::{self, Request};
use geomirror::node::verify::{VerifyFrame, VerifyReply};
use ops_support::{Cluster, CHUNK_BYTES, DISK_BYTES, ONE_CLUSTER, WAIT};

/// Overwrites `len` bytes at `offset` of the disk file, bypassing geomirror.
fn corrupt(disk: &Path, offset: u64, len: usize) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .expect("open the copy's disk");
    f.write_all_at(&vec![0xee; len], offset).expect("corrupt");
    f.sync_all().expect("sync");
}

/// Runs `geomirror verify --json` with stdout and stderr into one file, as a
/// terminal-less operator sees it: returns success, the JSON result, and
/// the progress lines logged before it.
fn verify(c: &Cluster) -> (bool, serde_json::Value, Vec<String>) {
    let path = c.path("verify.out");
    let out = std::fs::File::create(&path).expect("create");
    let err = out.try_clone().expect("dup");
    let status = Command::new(bin())
        .args(["verify", "--json", "--config", c.cfg()])
        .stdout(out)
        .stderr(err)
        .status()
        .expect("run verify");
    let text = std::fs::read_to_string(&path).expect("read the output");
    // The pretty JSON result starts with a line holding only `{`.
    let start = text
        .find("\n{\n")
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("verify printed no JSON result:\n{text}"));
    // After it, a failed verify says why on stderr.
    let v = serde_json::Deserializer::from_str(&text[start..])
        .into_iter()
        .next()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("verify's result is not JSON:\n{text}"));
    let progress = text[..start]
        .lines()
        .filter(|l| l.contains("verify a1 -> b1") && l.contains('%'))
        .map(str::to_owned)
        .collect();
    (status.success(), v, progress)
}

/// Progress lines other than the closing one: proof that frames were
/// streamed during the verify, not only summed up at its end.
fn streamed(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| !l.contains("done in")).collect()
}

#[test]
fn verify_streams_progress_then_reports_zero_or_exactly_the_corrupted_chunks() {
    if !common::require(&["qemu-io"]) {
        return;
    }
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let c = Cluster::start_all();
    c.write_blocks(4, 1 << 20);

    let (ok, v, progress) = verify(&c);
    assert!(ok, "{v}");
    let copy = &v["copies"][0];
    assert_eq!(copy["copy"], "b1");
    assert_eq!(copy["chunks_compared"], DISK_BYTES / CHUNK_BYTES);
    assert_eq!(copy["differing_chunks"], 0, "{v}");
    // Off a terminal, progress is logged at each tenth: the 16 MiB disk is
    // compared in 4 MiB batches, so lines come before the result.
    assert!(!streamed(&progress).is_empty(), "{progress:#?}");
    assert!(
        progress.last().is_some_and(|l| l.contains("100.0%")),
        "{progress:#?}"
    );

    // Writes stopped; the copy member runs and reads its disk uncached.
    let chunks = [3u64, 17, 200];
    for i in chunks {
        corrupt(&c.path("dr.img"), i * CHUNK_BYTES + 512, 4096);
    }
    let (ok, v, progress) = verify(&c);
    assert!(!ok, "verify must fail when chunks differ: {v}");
    let copy = &v["copies"][0];
    assert_eq!(copy["differing_chunks"], chunks.len(), "{v}");
    let offsets: Vec<u64> = copy["differing_offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .map(|o| o.as_u64().expect("offset"))
        .collect();
    let want: Vec<u64> = chunks.iter().map(|i| i * CHUNK_BYTES).collect();
    assert_eq!(offsets, want);
    // The differing count shows in the progress as it is found.
    assert!(!streamed(&progress).is_empty(), "{progress:#?}");
    assert!(
        progress.iter().any(|l| l.contains("(3 differing)")),
        "{progress:#?}"
    );

    // A client that predates the streamed verify asks `Verify` and still
    // gets exactly one frame: the same answer, no progress frames before it.
    let (domain, rt) = client(&c);
    let a1 = address(&domain, "a1");
    let old: VerifyReply = rt.block_on(async {
        let mut s = control::connect(&a1, &domain.secret)
            .await
            .expect("connect");
        control::write_frame(&mut s, &Request::Verify)
            .await
            .expect("ask");
        control::read_frame(&mut s).await.expect("one reply frame")
    });
    assert_eq!(old.copies.len(), 1, "{old:?}");
    assert_eq!(old.copies[0].differing_chunks, 3, "{old:?}");
    assert_eq!(
        old.copies[0].differing_offsets, want,
        "the same answer as the streamed verify"
    );
}

/// The recovery domain of `c` and a runtime for raw control clients.
fn client(c: &Cluster) -> (RecoveryDomain, tokio::runtime::Runtime) {
    let domain = RecoveryDomain::load(&c.config).expect("domain");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    (domain, rt)
}

fn address(domain: &RecoveryDomain, member: &str) -> String {
    let m = domain.members.iter().find(|m| m.name == member);
    m.expect("a member of the domain").address.clone()
}

#[test]
fn a_verify_a_member_cannot_serve_gets_one_refusal_frame_and_an_unknown_request_a_close() {
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let c = Cluster::start_all();
    let (domain, rt) = client(&c);
    let a1 = address(&domain, "a1");
    // A member that does not host production refuses in the stream's own
    // terms: one final frame naming why, no progress.
    let b1 = address(&domain, "b1");
    let refused: VerifyFrame = rt.block_on(async {
        let mut s = control::connect(&b1, &domain.secret)
            .await
            .expect("connect");
        control::write_frame(&mut s, &Request::VerifyStreamed)
            .await
            .expect("ask");
        control::read_frame(&mut s).await.expect("one frame")
    });
    assert!(
        matches!(&refused, VerifyFrame::Done(r) if r.error.as_deref() == Some("this member is not the production host")),
        "{refused:?}"
    );

    // A request this member does not know (what a newer client's is to an
    // older member) closes the connection: the client sees the end of the
    // stream at once, it does not wait for an answer. The bound only
    // catches a hang.
    let closed = rt.block_on(async {
        let mut s = control::connect(&a1, &domain.secret)
            .await
            .expect("connect");
        let unknown = serde_json::json!("VerifyInSomeLaterVersion");
        control::write_frame(&mut s, &unknown).await.expect("ask");
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            control::read_frame::<_, serde_json::Value>(&mut s),
        )
        .await
    });
    assert!(
        matches!(
            closed,
            Ok(Err(control::ControlError::Io(ref e))) if e.kind() == std::io::ErrorKind::UnexpectedEof
        ),
        "{closed:?}"
    );
}

#[test]
fn on_a_terminal_verify_draws_a_bar_to_the_end() {
    // `script` gives the command a pseudo-terminal, as a person's shell would.
    if !common::require(&["qemu-io", "script"]) {
        return;
    }
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let c = Cluster::start_all();
    c.write_blocks(2, 1 << 20);
    let cmd = format!("{} verify --config {}", bin().display(), c.cfg());
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .expect("run script");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("verify a1 -> b1 ["), "no bar drawn: {text}");
    assert!(
        text.contains("] 100%"),
        "the bar did not reach the end: {text}"
    );
    assert!(text.contains('\x1b'), "a bar redraws in place: {text}");
    assert!(text.contains("compared, 0 differing"), "{text}");
    // No log lines: on a terminal the bar replaces them.
    assert!(!text.contains("INFO"), "{text}");
}

#[test]
fn wait_sync_waits_for_a_joining_copy_and_exits_zero_once_it_is_up_to_date() {
    if !common::require(&["qemu-io"]) {
        return;
    }
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new();
    // a1 alone serves before the others start: it founds with --bootstrap.
    c.up_bootstrap("a1");
    common::wait_for_unix(&c.sock, WAIT);
    c.write_blocks(8, 1 << 20);

    // No copy host yet: the wait ends at its timeout, non-zero, saying why.
    let out = Command::new(bin())
        .args(["status", "--wait-sync", "--interval-ms", "200"])
        .args(["--timeout-ms", "1500", "--config", c.cfg()])
        .output()
        .expect("run status --wait-sync");
    assert!(!out.status.success(), "in sync with no copy host?");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not in sync after 1500 ms"), "{err}");
    assert!(
        err.contains("payroll-dr"),
        "names the copy waited for: {err}"
    );

    // Started before the copy member joins, it follows the join's resync.
    let log = c.path("wait-sync.out");
    let mut wait = common::Proc::geomirror(
        &[
            "status",
            "--wait-sync",
            "--interval-ms",
            "200",
            "--config",
            c.cfg(),
        ],
        &log,
    );
    c.up("b1");
    c.up("w1");
    let exit = wait.wait_timeout(WAIT);
    let printed = std::fs::read_to_string(&log).expect("read the output");
    assert!(
        exit.is_some_and(|s| s.success()),
        "status --wait-sync did not exit 0 ({exit:?}):\n{printed}"
    );
    assert!(printed.contains("waiting for payroll-dr"), "{printed}");
    // It ends with the report, which shows the copy in sync.
    let report = &printed[printed.find("group payroll").expect("a report")..];
    assert!(report.contains("UpToDate"), "{printed}");
    assert!(!report.contains("Inconsistent"), "{printed}");
    let s = c.status_json("w1").expect("w1 answers");
    assert_eq!(s["resources"][1]["state"], "UpToDate", "{s}");
    assert_eq!(s["resources"][1]["bytes_to_go"], 0, "{s}");
}
