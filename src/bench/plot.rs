//! The latency plot: an SVG with one panel per workload and, in each, one
//! CDF line per target on a logarithmic latency axis, with a legend.

use super::report::Report;
use std::fmt::Write;

const PANEL_W: f64 = 640.0;
const PANEL_H: f64 = 260.0;
const MARGIN_L: f64 = 60.0;
const MARGIN_R: f64 = 40.0;
const MARGIN_T: f64 = 40.0;
const MARGIN_B: f64 = 50.0;
/// Line colours, cycled per target.
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// Escapes text for an XML text node or attribute.
fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders `report` as an SVG document.
pub fn svg(report: &Report) -> String {
    let targets = report.targets();
    let workloads = report.workloads();
    let panel_full_h = PANEL_H + MARGIN_T + MARGIN_B;
    let legend_h = 24.0 + 18.0 * targets.len() as f64;
    let width = PANEL_W + MARGIN_L + MARGIN_R;
    let height = legend_h + panel_full_h * workloads.len() as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<g class="legend">"#);
    for (i, t) in targets.iter().enumerate() {
        let y = 16.0 + 18.0 * i as f64;
        let c = COLOURS[i % COLOURS.len()];
        let _ = writeln!(
            s,
            r#"<line x1="{MARGIN_L}" y1="{y}" x2="{}" y2="{y}" stroke="{c}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            MARGIN_L + 24.0,
            MARGIN_L + 30.0,
            y + 4.0,
            xml(t)
        );
    }
    let _ = writeln!(s, "</g>");
    for (wi, w) in workloads.iter().enumerate() {
        let top = legend_h + panel_full_h * wi as f64 + MARGIN_T;
        let rows: Vec<_> = report.rows.iter().filter(|r| r.workload == *w).collect();
        // Log axis over the decades the data spans.
        let lat = rows.iter().flat_map(|r| r.m.cdf_us.iter().map(|p| p.1));
        let lo = lat.clone().fold(f64::MAX, f64::min).max(0.1);
        let hi = lat.fold(0.0, f64::max).max(lo * 10.0);
        let (d0, d1) = (lo.log10().floor(), hi.log10().ceil());
        let x = |us: f64| MARGIN_L + (us.max(0.1).log10() - d0) / (d1 - d0) * PANEL_W;
        let y = |pct: f64| top + PANEL_H - pct / 100.0 * PANEL_H;
        let _ = writeln!(s, r#"<g class="panel" data-workload="{}">"#, xml(w));
        let _ = writeln!(
            s,
            r#"<text x="{MARGIN_L}" y="{}" font-weight="bold">{} — write latency CDF</text>"#,
            top - 12.0,
            xml(w)
        );
        // Axes, with a tick per decade and per 25 %.
        let _ = writeln!(
            s,
            r#"<path d="M{MARGIN_L},{top} V{} H{}" fill="none" stroke="black"/>"#,
            top + PANEL_H,
            MARGIN_L + PANEL_W
        );
        let mut d = d0;
        while d <= d1 {
            let px = x(10f64.powf(d));
            let _ = writeln!(
                s,
                r##"<line x1="{px}" y1="{top}" x2="{px}" y2="{}" stroke="#ddd"/><text x="{px}" y="{}" text-anchor="middle">{}</text>"##,
                top + PANEL_H,
                top + PANEL_H + 16.0,
                fmt_us(10f64.powf(d))
            );
            d += 1.0;
        }
        for pct in [0.0, 25.0, 50.0, 75.0, 100.0] {
            let py = y(pct);
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{pct}%</text>"#,
                MARGIN_L - 6.0,
                py + 4.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">latency (log scale)</text>"#,
            MARGIN_L + PANEL_W / 2.0,
            top + PANEL_H + 36.0
        );
        for r in rows {
            let ti = targets.iter().position(|t| *t == r.target).unwrap_or(0);
            let pts: Vec<String> =
                r.m.cdf_us
                    .iter()
                    .map(|&(p, us)| format!("{:.1},{:.1}", x(us), y(p)))
                    .collect();
            let _ = writeln!(
                s,
                r#"<polyline class="series" data-target="{}" points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
                xml(&r.target),
                pts.join(" "),
                COLOURS[ti % COLOURS.len()]
            );
        }
        let _ = writeln!(s, "</g>");
    }
    s.push_str("</svg>\n");
    s
}

/// `1 µs`, `10 µs`, `1 ms`, `1 s`.
fn fmt_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{} ms", us / 1e3)
    } else {
        format!("{us} µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::workload::{Measurement, Workload};

    #[test]
    fn one_series_per_target_and_escaped_labels() {
        let m = Measurement {
            engine: "builtin",
            iodepth: 1,
            bytes: 0,
            ios: 1,
            elapsed_s: 1.0,
            mb_per_s: 1.0,
            iops: 1.0,
            p50_us: 10.0,
            p99_us: 100.0,
            p99_9_us: 200.0,
            mean_us: 20.0,
            cdf_us: vec![(50.0, 10.0), (99.0, 100.0)],
            verified_blocks: 0,
            flush_us: None,
        };
        let mut r = Report::default();
        r.push("a<b", "u", Workload::RandWrite4k, m.clone());
        r.push("c", "u", Workload::RandWrite4k, m);
        let s = svg(&r);
        assert!(s.starts_with("<svg"));
        assert_eq!(s.matches("class=\"series\"").count(), 2);
        assert!(s.contains("a&lt;b") && !s.contains("a<b"));
        assert!(s.trim_end().ends_with("</svg>"));
    }
}
