//! Progress of long work (resync, verify): an indicatif bar with bytes, rate
//! and ETA on a terminal; elsewhere a log line every few seconds and at each
//! tenth of the work.
//!
//! Rate, ETA and the pacing of lines live in `lines` as pure functions of
//! the counts and a given clock, so they are tested without one.

mod lines;

pub use lines::{estimate, format_line, Estimate, LogProgress};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Least time between two log lines when stderr is not a terminal.
pub const LOG_INTERVAL_MS: u64 = 5000;

/// A progress reporter for one piece of long work. Shareable between the
/// tasks doing it (`&self` everywhere).
pub struct Progress {
    sink: Sink,
}

enum Sink {
    Bar(ProgressBar),
    Log(Mutex<LogProgress>),
}

impl Progress {
    /// A bar when stderr is a terminal, log lines every [`LOG_INTERVAL_MS`] otherwise.
    pub fn new(total_bytes: u64, what: &str) -> Progress {
        if std::io::stderr().is_terminal() {
            Progress::bar(total_bytes, what)
        } else {
            Progress::log(total_bytes, what, Duration::from_millis(LOG_INTERVAL_MS))
        }
    }

    /// An indicatif bar on stderr: bytes, rate and ETA.
    pub fn bar(total_bytes: u64, what: &str) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
        let template =
            "{msg} [{bar:30}] {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";
        // The template is a constant; should it ever be refused, the default bar still works.
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_owned());
        Progress {
            sink: Sink::Bar(bar),
        }
    }

    /// Log lines (tracing, level info) at most every `interval` or each
    /// tenth, and one at the end.
    pub fn log(total_bytes: u64, what: &str, interval: Duration) -> Progress {
        Progress::log_since(total_bytes, what, Instant::now(), interval)
    }

    fn log_since(total_bytes: u64, what: &str, start: Instant, interval: Duration) -> Progress {
        let log = LogProgress::new(total_bytes, what, start, interval);
        Progress {
            sink: Sink::Log(Mutex::new(log)),
        }
    }

    /// As [`Progress::new`], for work that began at `start`, before its
    /// total was known: the elapsed time, and the mean rate of the log
    /// lines, count from then.
    pub fn started_at(total_bytes: u64, what: &str, start: Instant) -> Progress {
        if std::io::stderr().is_terminal() {
            let p = Progress::bar(total_bytes, what);
            if let Sink::Bar(bar) = &p.sink {
                // The bar's state is shared: this moves its start back.
                let _ = bar.clone().with_elapsed(start.elapsed());
            }
            p
        } else {
            Progress::log_since(
                total_bytes,
                what,
                start,
                Duration::from_millis(LOG_INTERVAL_MS),
            )
        }
    }

    /// `bytes` more are done.
    pub fn inc(&self, bytes: u64) {
        match &self.sink {
            Sink::Bar(bar) => bar.inc(bytes),
            Sink::Log(log) => {
                let line = lock(log).inc_at(bytes, Instant::now());
                if let Some(line) = line {
                    tracing::info!("{line}");
                }
            }
        }
    }

    /// `done_bytes` are done in all (for work that reports where it stands
    /// rather than what it added).
    pub fn set(&self, done_bytes: u64) {
        match &self.sink {
            Sink::Bar(bar) => bar.set_position(done_bytes),
            Sink::Log(log) => {
                let line = lock(log).set_at(done_bytes, Instant::now());
                if let Some(line) = line {
                    tracing::info!("{line}");
                }
            }
        }
    }

    /// The work turned out to be `total_bytes` in all (a resync that
    /// restarted, a total learnt late).
    pub fn set_total(&self, total_bytes: u64) {
        match &self.sink {
            Sink::Bar(bar) => bar.set_length(total_bytes),
            Sink::Log(log) => lock(log).set_total(total_bytes),
        }
    }

    /// Names the work anew.
    pub fn set_what(&self, what: &str) {
        match &self.sink {
            Sink::Bar(bar) => bar.set_message(what.to_owned()),
            Sink::Log(log) => lock(log).set_what(what),
        }
    }

    /// The work is over: the bar stays with its final figures, or a last line is logged.
    pub fn finish(&self) {
        match &self.sink {
            Sink::Bar(bar) => bar.finish(),
            Sink::Log(log) => {
                let line = lock(log).finish_at(Instant::now());
                tracing::info!("{line}");
            }
        }
    }
}

fn lock(log: &Mutex<LogProgress>) -> std::sync::MutexGuard<'_, LogProgress> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// A tracing writer that keeps what it is given.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn off_a_terminal_progress_is_logged_as_info_lines() {
        let buf = Captured::default();
        let w = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .without_time()
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            // A zero interval logs every increment, so the count is exact.
            let p = Progress::log(4 * MIB, "verify payroll-dr", Duration::ZERO);
            for _ in 0..4 {
                p.inc(MIB);
            }
            p.finish();
        });
        let text = String::from_utf8(buf.0.lock().expect("not poisoned").clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines.iter().all(|l| l.contains("INFO")), "{text}");
        assert!(
            lines[0].contains("verify payroll-dr: 25.0% (1.0 MiB of 4.0 MiB) at "),
            "{text}"
        );
        assert!(
            lines[4].contains("100.0%") && lines[4].contains("done in"),
            "{text}"
        );
        assert!(
            !text.contains('\x1b'),
            "no terminal codes off a terminal: {text}"
        );
    }
}
