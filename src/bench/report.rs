//! The comparison: one row per (target, workload), ratios against the first
//! target, printed as a table for people or as JSON for machines.

use super::workload::{Measurement, Workload};
use std::fmt::Write;

/// One measured run in the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub target: String,
    pub uri: String,
    pub workload: String,
    #[serde(flatten)]
    pub m: Measurement,
    /// IOPS of this target over IOPS of the first target, same workload.
    pub iops_ratio: Option<f64>,
    /// p99 latency of this target over the first target's, same workload.
    pub p99_ratio: Option<f64>,
}

/// The whole benchmark's result.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    pub runtime_s: u64,
    pub size_bytes: u64,
    pub rows: Vec<Row>,
}

impl Report {
    /// Adds a run; ratios are against the first target's run of the same
    /// workload, when there is one.
    pub fn push(&mut self, target: &str, uri: &str, workload: Workload, m: Measurement) {
        let base = self
            .rows
            .iter()
            .find(|r| r.workload == workload.name())
            .map(|r| (r.m.iops, r.m.p99_us));
        let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
        let (iops_ratio, p99_ratio) = match base {
            Some((iops, p99)) => (ratio(m.iops, iops), ratio(m.p99_us, p99)),
            None => (Some(1.0), Some(1.0)),
        };
        self.rows.push(Row {
            target: target.to_string(),
            uri: uri.to_string(),
            workload: workload.name().to_string(),
            m,
            iops_ratio,
            p99_ratio,
        });
    }

    /// Target labels in first-seen order.
    pub fn targets(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !out.contains(&r.target.as_str()) {
                out.push(&r.target);
            }
        }
        out
    }

    /// Workload names in first-seen order.
    pub fn workloads(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !out.contains(&r.workload.as_str()) {
                out.push(&r.workload);
            }
        }
        out
    }

    /// A fixed-width table, rows grouped by workload so ratios sit together.
    pub fn table(&self) -> String {
        let header = [
            "target",
            "workload",
            "engine",
            "QD",
            "MB/s",
            "IOPS",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "IOPS ratio",
            "p99 ratio",
        ];
        let mut lines: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
        let ratio = |r: Option<f64>| r.map_or("-".to_string(), |v| format!("{v:.2}x"));
        for w in self.workloads() {
            for r in self.rows.iter().filter(|r| r.workload == w) {
                lines.push(vec![
                    r.target.clone(),
                    r.workload.clone(),
                    r.m.engine.to_string(),
                    r.m.iodepth.to_string(),
                    format!("{:.1}", r.m.mb_per_s),
                    format!("{:.0}", r.m.iops),
                    format!("{:.1}", r.m.p50_us),
                    format!("{:.1}", r.m.p99_us),
                    format!("{:.1}", r.m.p99_9_us),
                    ratio(r.iops_ratio),
                    ratio(r.p99_ratio),
                ]);
            }
        }
        let cols = header.len();
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                lines
                    .iter()
                    .map(|l| l[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for l in &lines {
            for (c, cell) in l.iter().enumerate() {
                let pad = widths[c] - cell.chars().count();
                // Text columns left-aligned, numbers right-aligned.
                if c < 3 {
                    let _ = write!(out, "{cell}{}", " ".repeat(pad));
                } else {
                    let _ = write!(out, "{}{cell}", " ".repeat(pad));
                }
                out.push_str(if c + 1 == cols { "\n" } else { "  " });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(iops: f64, p99: f64) -> Measurement {
        Measurement {
            engine: "builtin",
            iodepth: 1,
            bytes: 0,
            ios: 0,
            elapsed_s: 1.0,
            mb_per_s: 0.0,
            iops,
            p50_us: 1.0,
            p99_us: p99,
            p99_9_us: p99,
            mean_us: 1.0,
            cdf_us: vec![],
            verified_blocks: 0,
            flush_us: None,
        }
    }

    #[test]
    fn ratios_are_against_the_first_target_of_the_same_workload() {
        let mut r = Report::default();
        r.push("a", "u", Workload::RandWrite4k, m(1000.0, 100.0));
        r.push("a", "u", Workload::SeqWrite1m, m(50.0, 10.0));
        r.push("b", "v", Workload::RandWrite4k, m(500.0, 300.0));
        r.push("b", "v", Workload::SeqWrite1m, m(25.0, 40.0));
        assert_eq!(r.rows[2].iops_ratio, Some(0.5));
        assert_eq!(r.rows[2].p99_ratio, Some(3.0));
        assert_eq!(r.rows[3].p99_ratio, Some(4.0));
        assert_eq!(r.targets(), vec!["a", "b"]);
        let t = r.table();
        assert!(t.contains("IOPS ratio") && t.contains("0.50x"), "{t}");
    }
}
