//! The fio path: one `fio --ioengine=nbd` job per run, its JSON report read
//! back into a [`Measurement`] (write bandwidth, IOPS, clat percentiles).

use super::error::BenchError;
use super::target::Target;
use super::workload::{Measurement, RunSpec, CDF_PERCENTILES};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long fio may take to start and connect, on top of its runtime and
/// the I/O timeout.
pub const FIO_STARTUP_MS: u64 = 10_000;
/// Largest fio report we read.
pub const REPORT_BYTES_MAX: u64 = 16 << 20;

/// Whether `fio` is on PATH and runs.
pub fn installed() -> bool {
    Command::new("fio")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The fio command line for `spec` against `target`, writing its JSON
/// report to `out`.
pub fn args(target: &Target, spec: &RunSpec, out: &std::path::Path) -> Vec<String> {
    let w = spec.workload;
    let percentiles: Vec<String> = CDF_PERCENTILES.iter().map(|p| p.to_string()).collect();
    let mut a = vec![
        format!("--name={}", w.name()),
        "--ioengine=nbd".into(),
        format!("--uri={}", target.uri()),
        format!("--rw={}", if w.random() { "randwrite" } else { "write" }),
        format!("--bs={}", w.block_bytes()),
        format!("--iodepth={}", spec.iodepth),
        format!("--size={}", spec.size_bytes),
        "--time_based".into(),
        format!("--runtime={}", spec.runtime_s),
        "--randrepeat=0".into(),
        "--norandommap".into(),
        format!("--percentile_list={}", percentiles.join(":")),
        "--output-format=json".into(),
        format!("--output={}", out.display()),
    ];
    if w.fsync() {
        a.push("--fsync=1".into());
    }
    a
}

/// Runs fio for `spec`, killing it if it overstays its runtime.
pub fn run(target: &Target, spec: &RunSpec) -> Result<Measurement, BenchError> {
    let label = target.describe();
    let fail = |reason: String| BenchError::Fio {
        target: label.clone(),
        reason,
    };
    let out = report_path();
    let log = out.with_extension("log");
    let log_file =
        std::fs::File::create(&log).map_err(|e| fail(format!("create {}: {e}", log.display())))?;
    let log_err = log_file
        .try_clone()
        .map_err(|e| fail(format!("dup log: {e}")))?;
    let mut child = Command::new("fio")
        .args(args(target, spec, &out))
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .spawn()
        .map_err(|e| fail(format!("spawn: {e}")))?;
    let deadline = Instant::now()
        + Duration::from_secs(spec.runtime_s)
        + Duration::from_millis(FIO_STARTUP_MS + spec.io_timeout_ms);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                cleanup(&out, &log);
                return Err(BenchError::Stalled {
                    target: label.clone(),
                    timeout_ms: spec.io_timeout_ms,
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(fail(format!("wait: {e}"))),
        }
    };
    let text = read_bounded(&out);
    let log_text = read_bounded(&log);
    cleanup(&out, &log);
    if !status.success() {
        let tail: Vec<&str> = log_text.lines().rev().take(4).collect();
        return Err(fail(format!("exited {status}: {}", tail.join(" | "))));
    }
    parse_report(&text, spec.iodepth).map_err(fail)
}

fn report_path() -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "geomirror-bench-fio-{}-{}.json",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fn read_bounded(p: &std::path::Path) -> String {
    use std::io::Read;
    let mut s = String::new();
    if let Ok(f) = std::fs::File::open(p) {
        let _ = f.take(REPORT_BYTES_MAX).read_to_string(&mut s);
    }
    s
}

fn cleanup(out: &std::path::Path, log: &std::path::Path) {
    let _ = std::fs::remove_file(out);
    let _ = std::fs::remove_file(log);
}

/// Reads fio's JSON report (fio may print notes before the JSON object).
pub fn parse_report(text: &str, iodepth: u32) -> Result<Measurement, String> {
    let start = text
        .find('{')
        .ok_or_else(|| "no JSON report in fio's output".to_string())?;
    let v: Value =
        serde_json::from_str(&text[start..]).map_err(|e| format!("unreadable JSON report: {e}"))?;
    let job = v
        .get("jobs")
        .and_then(|j| j.get(0))
        .ok_or("report has no job")?;
    if let Some(err) = job.get("error").and_then(Value::as_i64).filter(|&e| e != 0) {
        return Err(format!("job failed with error {err}"));
    }
    let write = job.get("write").ok_or("report has no write section")?;
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
    let bytes = num(write, "io_bytes").ok_or("write.io_bytes missing")?;
    let ios = num(write, "total_ios").ok_or("write.total_ios missing")?;
    let iops = num(write, "iops").ok_or("write.iops missing")?;
    let bw = num(write, "bw_bytes").ok_or("write.bw_bytes missing")?;
    let runtime_ms = num(write, "runtime").unwrap_or(0.0);
    let clat = write.get("clat_ns").ok_or("write.clat_ns missing")?;
    let pcts = clat
        .get("percentile")
        .ok_or("write.clat_ns.percentile missing (did the job write anything?)")?;
    // fio keys percentiles as "%f"-formatted strings: "99.900000".
    let pct = |p: f64| {
        pcts.get(format!("{p:.6}"))
            .and_then(Value::as_f64)
            .map(|ns| ns / 1000.0)
            .ok_or_else(|| format!("clat percentile {p} missing"))
    };
    Ok(Measurement {
        engine: "fio",
        iodepth,
        bytes: bytes as u64,
        ios: ios as u64,
        elapsed_s: runtime_ms / 1000.0,
        mb_per_s: bw / 1e6,
        iops,
        p50_us: pct(50.0)?,
        p99_us: pct(99.0)?,
        p99_9_us: pct(99.9)?,
        mean_us: num(clat, "mean").unwrap_or(0.0) / 1000.0,
        cdf_us: CDF_PERCENTILES
            .iter()
            .map(|&p| pct(p).map(|us| (p, us)))
            .collect::<Result<_, _>>()?,
        verified_blocks: 0,
        flush_us: flush_percentiles(job),
    })
}

/// Percentiles of fio's `sync` section (present with `--fsync`), in µs.
fn flush_percentiles(job: &Value) -> Option<[f64; 3]> {
    let pcts = job.get("sync")?.get("lat_ns")?.get("percentile")?;
    let at = |p: f64| pcts.get(format!("{p:.6}")).and_then(Value::as_f64);
    Some([at(50.0)? / 1000.0, at(99.0)? / 1000.0, at(99.9)? / 1000.0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(percentiles: &str) -> String {
        format!(
            r#"note: both iodepth >= 1 and synchronous I/O engine are selected
{{"jobs":[{{"error":0,"write":{{"io_bytes":4096000,"total_ios":1000,"iops":1000.5,
"bw_bytes":4098048,"runtime":1000,"clat_ns":{{"mean":5000.0,"percentile":{{{percentiles}}}}}}}}}]}}"#
        )
    }

    fn all_percentiles() -> String {
        CDF_PERCENTILES
            .iter()
            .map(|p| format!("\"{p:.6}\":{}", (p * 100.0) as u64))
            .collect::<Vec<_>>()
            .join(",")
    }

    #[test]
    fn report_after_notes_is_parsed() {
        let m = parse_report(&report(&all_percentiles()), 4).expect("valid report");
        assert_eq!(m.ios, 1000);
        assert_eq!(m.iodepth, 4);
        assert!((m.p99_9_us - 9.99).abs() < 1e-9);
        assert!(m.p50_us <= m.p99_us && m.p99_us <= m.p99_9_us);
        assert_eq!(m.cdf_us.len(), CDF_PERCENTILES.len());
        assert_eq!(m.flush_us, None);
    }

    #[test]
    fn fsync_report_gives_flush_percentiles() {
        let text = report(&all_percentiles()).replace(
            "\"error\":0,",
            r#""error":0,"sync":{"lat_ns":{"percentile":{"50.000000":2000,"99.000000":9000,"99.900000":12000}}},"#,
        );
        let m = parse_report(&text, 1).expect("valid report");
        assert_eq!(m.flush_us, Some([2.0, 9.0, 12.0]));
    }

    #[test]
    fn missing_percentile_is_an_error_not_a_zero() {
        let e = parse_report(&report("\"50.000000\":1"), 1).expect_err("incomplete report");
        assert!(e.contains("percentile"), "{e}");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_report("fio: engine nbd not loadable", 1).is_err());
        assert!(parse_report("{\"jobs\":[]}", 1).is_err());
    }
}
