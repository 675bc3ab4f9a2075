//! `geomirror bench` against real NBD servers (nbdkit, fio, our own `serve`):
//! reports are well-formed, data really lands, several targets are compared,
//! and bad targets fail fast with their name in the message.

mod common;
#[path = "bench_cli/support.rs"]
mod support;

use std::time::Duration;
use support::{assert_rows_sane, bench, nbdkit, ok_json};

#[test]
fn builtin_run_reports_ordered_percentiles_and_written_data_reads_back() {
    if !common::require(&["nbdkit"]) {
        return;
    }
    let dir = common::tempdir();
    let img = dir.path().join("disk.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(32 << 20))
        .expect("create image");
    let (_srv, sock) = nbdkit(dir.path(), "file", &["file", img.to_str().expect("utf-8")]);
    let uri = format!("unix:{}", sock.display());
    let out = bench(&format!(
        "--uri {} --engine builtin --runtime-s 1 --size 16M --json",
        uri
    ));
    let rows = assert_rows_sane(&ok_json(&out), 3);
    for r in &rows {
        assert_eq!(r["engine"], "builtin");
        assert!(
            r["verified_blocks"].as_u64().unwrap_or(0) > 0,
            "no verify: {r}"
        );
    }
    // The writes reached the server's disk, within --size and not past it.
    let data = std::fs::read(&img).expect("read image");
    assert!(data[..16 << 20].iter().any(|&b| b != 0), "image untouched");
    assert!(
        data[16 << 20..].iter().all(|&b| b == 0),
        "wrote past --size"
    );
    // One progress line per run on stderr.
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.lines().filter(|l| l.starts_with("bench: ")).count(),
        3,
        "{err}"
    );
}

#[test]
fn fio_run_reports_ordered_percentiles() {
    if !common::require(&["nbdkit", "fio"]) {
        return;
    }
    let dir = common::tempdir();
    let (_srv, sock) = nbdkit(dir.path(), "mem", &["memory", "64M"]);
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let out = bench(&format!(
        "--uri {uri} --engine fio --runtime-s 1 --size 16M --json \
         --workload randwrite4k --workload randwrite4k-fsync"
    ));
    let rows = assert_rows_sane(&ok_json(&out), 2);
    assert!(rows.iter().all(|r| r["engine"] == "fio"));
    assert_eq!(rows[1]["workload"], "randwrite4k-fsync");
    assert_eq!(rows[1]["iodepth"], 1);
}

#[test]
fn two_targets_get_ratio_columns_and_one_plot_series_each() {
    if !common::require(&["nbdkit"]) {
        return;
    }
    let dir = common::tempdir();
    let (_a, sa) = nbdkit(dir.path(), "a", &["memory", "32M"]);
    let (_b, sb) = nbdkit(dir.path(), "b", &["memory", "32M"]);
    let svg = dir.path().join("lat.svg");
    let out = bench(&format!(
        "--uri unix:{} --label unmirrored --uri unix:{} --label mirrored \
         --engine builtin --runtime-s 1 --size 8M --workload randwrite4k --iodepth 4 --plot {}",
        sa.display(),
        sb.display(),
        svg.display()
    ));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header = table.lines().next().expect("table header");
    assert!(
        header.contains("IOPS ratio") && header.contains("p99 ratio"),
        "{table}"
    );
    let mirrored = table
        .lines()
        .find(|l| l.starts_with("mirrored"))
        .unwrap_or_else(|| panic!("no mirrored row:\n{table}"));
    assert!(mirrored.trim_end().ends_with('x'), "no ratio: {mirrored}");
    assert!(table
        .lines()
        .any(|l| l.starts_with("unmirrored") && l.contains("1.00x")));
    let plot = std::fs::read_to_string(&svg).expect("plot written");
    assert!(plot.starts_with("<svg"), "{plot}");
    assert!(plot.trim_end().ends_with("</svg>"));
    assert_eq!(
        plot.matches("<polyline class=\"series\"").count(),
        2,
        "{plot}"
    );
    assert!(
        plot.contains("data-target=\"unmirrored\"") && plot.contains("data-target=\"mirrored\"")
    );
}

#[test]
fn unreachable_target_fails_naming_it() {
    let dir = common::tempdir();
    let ghost = dir.path().join("nobody-listens.sock");
    let port = common::free_port();
    for (uri, label) in [
        (format!("unix:{}", ghost.display()), "ghost"),
        (format!("127.0.0.1:{port}"), "closed-port"),
    ] {
        let out = bench(&format!(
            "--uri {} --label {} --engine builtin --runtime-s 1",
            uri, label
        ));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "succeeded against {uri}");
        assert!(err.contains(label) && err.contains("cannot reach"), "{err}");
    }
}

#[test]
fn read_only_export_is_refused() {
    if !common::require(&["nbdkit"]) {
        return;
    }
    let dir = common::tempdir();
    let (_srv, sock) = nbdkit(dir.path(), "ro", &["-r", "memory", "16M"]);
    let out = bench(&format!(
        "--uri unix:{} --label ro-export --engine builtin --runtime-s 1",
        sock.display()
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("ro-export") && err.contains("read-only"),
        "{err}"
    );
}

#[test]
fn out_of_bounds_options_are_refused_before_connecting() {
    for (flag, value, words) in [
        ("--iodepth", "0", "--iodepth"),
        ("--iodepth", "100000", "--iodepth"),
        ("--runtime-s", "0", "--runtime-s"),
        ("--io-timeout-ms", "0", "--io-timeout-ms"),
        ("--size", "4K", "--size"),
        ("--size", "lots", "size"),
    ] {
        let out = bench(&format!("--uri unix:/nonexistent.sock {} {}", flag, value));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value} accepted");
        assert!(
            err.contains(words) && !err.contains("cannot reach"),
            "{flag} {value}: {err}"
        );
    }
}

#[test]
fn config_targets_the_first_production_member_that_answers() {
    if !common::require(&["nbdkit"]) {
        return;
    }
    let dir = common::tempdir();
    let (_srv, sock) = nbdkit(dir.path(), "a2", &["memory", "16M"]);
    let dead = dir.path().join("a1-is-down.sock");
    let cfg = dir.path().join("domain.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
group = "payroll"
mode = "sync"
secret = "s"
[[site]]
name = "prod"
resource = "payroll-prod"
[[site]]
name = "dr"
resource = "payroll-dr"
[[member]]
name = "a1"
address = "127.0.0.1:7401"
disks = ["/var/lib/geomirror/prod.img"]
nbd = "unix:{}"
[[member]]
name = "a2"
address = "127.0.0.1:7402"
disks = ["/var/lib/geomirror/prod.img"]
nbd = "unix:{}"
[[member]]
name = "b1"
address = "127.0.0.1:7403"
disks = ["/var/lib/geomirror/dr.img"]
"#,
            dead.display(),
            sock.display()
        ),
    )
    .expect("write config");
    let cfg_s = cfg.to_str().expect("utf-8");
    let out = bench(&format!(
        "--config {cfg_s} --engine builtin --runtime-s 1 --size 8M \
         --workload randwrite4k --iodepth 2 --json"
    ));
    let rows = assert_rows_sane(&ok_json(&out), 1);
    assert_eq!(rows[0]["target"], "a2", "{:?}", rows[0]);

    // Given a baseline export too, the group's export comes after it, so
    // its ratios are against the baseline.
    let (_base, base) = nbdkit(dir.path(), "base", &["memory", "16M"]);
    let out = bench(&format!(
        "--uri unix:{} --label base --config {cfg_s} --engine builtin --runtime-s 1 \
         --size 8M --workload randwrite4k --iodepth 2 --json",
        base.display()
    ));
    let rows = assert_rows_sane(&ok_json(&out), 2);
    assert_eq!(
        (&rows[0]["target"], &rows[1]["target"]),
        (&"base".into(), &"a2".into())
    );
    assert_eq!(rows[0]["iops_ratio"], 1.0);

    // With every production member down, the error lists each one tried.
    drop(_srv);
    let out = bench(&format!(
        "--config {} --engine builtin --runtime-s 1",
        cfg_s
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no production member answered"), "{err}");
    assert!(err.contains("a1") && err.contains("a2"), "{err}");
}

#[test]
fn local_run_compares_mirrored_against_unmirrored_writes() {
    // `--local` starts `geomirror serve` on a plain file and a local group
    // (production member, copy member, witness) and measures both.
    let out = bench(
        "--local --engine builtin --runtime-s 1 --size 16M \
         --workload randwrite4k --iodepth 4 --json",
    );
    let rows = assert_rows_sane(&ok_json(&out), 2);
    assert_eq!(rows[0]["target"], "unmirrored");
    assert_eq!(rows[1]["target"], "mirrored-sync");
    for r in &rows {
        assert!(r["verified_blocks"].as_u64().unwrap_or(0) > 0, "{r}");
    }
}

#[test]
fn silent_server_times_out_instead_of_hanging() {
    // A socket that accepts but never sends the NBD greeting.
    let dir = common::tempdir();
    let sock = dir.path().join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let held = std::thread::spawn(move || {
        let conn = listener.accept();
        std::thread::sleep(Duration::from_secs(3));
        drop(conn);
    });
    let out = bench(&format!(
        "--uri unix:{} --label silent --engine builtin --runtime-s 1 --connect-timeout-ms 300",
        sock.display()
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("silent") && err.contains("no NBD handshake within 300 ms"),
        "{err}"
    );
    held.join().expect("listener thread");
}

#[test]
fn verify_pass_catches_an_export_that_drops_writes() {
    if !common::require(&["nbdkit"]) {
        return;
    }
    // nbdkit's null plugin acknowledges writes and reads back zeroes.
    let dir = common::tempdir();
    let (_srv, sock) = nbdkit(dir.path(), "null", &["null", "16M"]);
    let out = bench(&format!(
        "--uri unix:{} --label sink --engine builtin --runtime-s 1 --size 8M \
         --workload randwrite4k --iodepth 2",
        sock.display()
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a sink passed verification");
    assert!(
        err.contains("sink") && err.contains("verify failed"),
        "{err}"
    );
}

#[test]
fn stalled_server_fails_after_the_io_timeout_instead_of_hanging() {
    if !common::require(&["nbdkit"]) {
        return;
    }
    // Every write takes 20 s: far past the run and its I/O timeout.
    let dir = common::tempdir();
    let (_srv, sock) = nbdkit(
        dir.path(),
        "slow",
        &["--filter=delay", "memory", "16M", "wdelay=20"],
    );
    let out = bench(&format!(
        "--uri unix:{} --label slow --engine builtin --runtime-s 1 --size 8M \
         --workload randwrite4k --iodepth 2 --io-timeout-ms 500",
        sock.display()
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("slow") && err.contains("unanswered 500 ms after"),
        "{err}"
    );
}
