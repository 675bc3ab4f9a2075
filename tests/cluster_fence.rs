//! Fencing and split brain with real `geomirror up` processes: a production
//! host cut off from the majority refuses writes until quorum is back; a copy
//! disk written on its own while apart is detected as split brain and never
//! merged, until an operator discards one side.

mod cluster_support;
mod common;

use std::path::Path;

use cluster_support::{nbd_check_pattern, nbd_write_pattern, Cluster, Spec};
use common::Proc;

/// Starts `geomirror events` following `member`, its lines going to `log`.
fn follow_events(c: &Cluster, member: &str, log: &Path) -> Proc {
    let config = c.config.display().to_string();
    Proc::geomirror(&["events", "--config", &config, "--member", member], log)
}

/// Waits until the events written to `log` contain `needle`.
fn wait_event(log: &Path, needle: &str) -> String {
    let mut text = String::new();
    common::wait_until(
        &format!("an event containing {needle:?}"),
        cluster_support::SETTLE,
        || {
            text = std::fs::read_to_string(log).unwrap_or_default();
            text.contains(needle)
        },
    );
    text
}

/// Tries one 64 KiB write through NBD: None when it succeeded, else the
/// name of the errno it failed with (libnbd's `nbd.Error.errno`).
fn nbd_try_write(uri: &str) -> Option<String> {
    let code = "try:\n    h.pwrite(b'x' * 65536, 1 << 20)\n    print('ok')\n\
                except nbd.Error as e:\n    print('failed', e.errno)\n";
    let out = common::run_ok(common::debian_cmd("nbdsh").args(["-u", uri, "-c", code]));
    match out.trim() {
        "ok" => None,
        o => Some(
            o.strip_prefix("failed ")
                .unwrap_or_else(|| panic!("unexpected nbdsh output: {out:?}"))
                .to_string(),
        ),
    }
}

#[test]
fn production_without_quorum_refuses_writes_until_the_majority_returns() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    let spec = Spec::new(
        "sync",
        2,
        "16M",
        &[("a1", Some(0)), ("b1", Some(1)), ("w1", None)],
    );
    let mut c = Cluster::new(spec);
    c.start_all(&["a1", "b1", "w1"]);
    c.wait_synced("a1");
    let uri = c.nbd_uri("a1");
    nbd_write_pattern(&uri, 0, 65536, 1);
    let events_log = c.dir.path().join("a1.events");
    let _events = follow_events(&c, "a1", &events_log);
    wait_event(&events_log, "\"kind\":\"configure\"");

    // The majority (b1 and the witness) is gone: a1 is on its own.
    c.kill("b1");
    c.kill("w1");
    let s = c.wait_status("a1", "production fenced", |s| {
        s.resources[0].state == "Fenced"
    });
    assert!(!s.quorum, "{}", s.to_text());
    assert!(
        s.warnings.iter().any(|w| w.contains("writes fenced on a1")),
        "status says why: {:?}",
        s.warnings
    );
    assert_eq!(nbd_try_write(&uri).as_deref(), Some("EIO"), "fenced write");
    // Reads change nothing and are still answered.
    nbd_check_pattern(&uri, 0, 65536, 1);
    wait_event(&events_log, "\"kind\":\"writes-fenced\"");

    // The majority returns and a1 still hosts production: writes resume.
    c.start("w1");
    c.start("b1");
    let s = c.wait_status("a1", "writes resumed", |s| {
        s.quorum && s.resources[0].state != "Fenced"
    });
    assert_eq!(s.resources[0].host.as_deref(), Some("a1"));
    assert_eq!(nbd_try_write(&uri), None, "write after quorum returned");
    nbd_write_pattern(&uri, 0, 65536, 2);
    nbd_check_pattern(&uri, 0, 65536, 2);
    wait_event(&events_log, "\"kind\":\"writes-resumed\"");
    c.wait_synced("a1");
    c.stop_all();
    c.assert_identical(1);
}
