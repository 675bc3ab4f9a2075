//! Helpers of the `geomirror bench` tests: an nbdkit export, the command
//! itself, and the checks every JSON report must pass.

use super::common::{self, Proc};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// `nbdkit` in the foreground on a fresh unix socket in `dir`.
pub fn nbdkit(dir: &Path, name: &str, plugin_args: &[&str]) -> (Proc, PathBuf) {
    let sock = dir.join(format!("{name}.sock"));
    let mut args = vec!["-f", "-U", sock.to_str().expect("utf-8 path")];
    args.extend_from_slice(plugin_args);
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("create log");
    let child = Command::new("nbdkit")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .expect("spawn nbdkit");
    let p = Proc {
        child,
        name: format!("nbdkit {}", args.join(" ")),
    };
    common::wait_for_unix(&sock, Duration::from_secs(10));
    (p, sock)
}

/// Runs `geomirror bench` with `args` (split at spaces: test paths have none).
pub fn bench(args: &str) -> Output {
    Command::new(common::bin())
        .arg("bench")
        .args(args.split_whitespace())
        .env(
            "PATH",
            format!(
                "/usr/bin:/bin:{}",
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .stdin(Stdio::null())
        .output()
        .expect("run geomirror bench")
}

pub fn ok_json(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

/// The fsync workload reports its flush latency too, ordered; others none.
pub fn assert_flush_latency(r: &Value) {
    let f = &r["flush_us"];
    if r["workload"] == "randwrite4k-fsync" {
        let v: Vec<f64> = f
            .as_array()
            .unwrap_or_else(|| panic!("no flush latency: {r}"))
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        assert!(
            v.len() == 3 && v[0] > 0.0 && v[0] <= v[1] && v[1] <= v[2],
            "{r}"
        );
    } else {
        assert!(f.is_null(), "{r}");
    }
}

/// Every row has positive IOPS and bytes, and p50 ≤ p99 ≤ p99.9.
pub fn assert_rows_sane(report: &Value, rows_expected: usize) -> Vec<Value> {
    let rows = report["rows"].as_array().expect("rows array").clone();
    assert_eq!(rows.len(), rows_expected, "{report:#}");
    for r in &rows {
        let f = |k: &str| {
            r[k].as_f64()
                .unwrap_or_else(|| panic!("{k} missing in {r}"))
        };
        assert!(f("iops") > 0.0, "{r}");
        assert!(f("bytes") > 0.0, "{r}");
        assert!(f("mb_per_s") > 0.0, "{r}");
        assert!(f("p50_us") > 0.0, "{r}");
        assert!(f("p50_us") <= f("p99_us"), "{r}");
        assert!(f("p99_us") <= f("p99_9_us"), "{r}");
        assert_flush_latency(r);
    }
    rows
}
