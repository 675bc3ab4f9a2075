//! `status --watch`: fetch a report every interval and redraw it in place on
//! a terminal (cursor home, clear), or print it again and again otherwise.

use super::time::now_rfc3339;
use super::ObsError;
use std::fmt::Display;
use std::future::Future;
use std::io::IsTerminal;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Shortest interval accepted: a member answers status in well under that.
pub const INTERVAL_MS_MIN: u64 = 100;
/// Longest interval accepted (one hour).
pub const INTERVAL_MS_MAX: u64 = 3_600_000;

/// Cursor to the top-left corner.
const HOME: &str = "\x1b[H";
/// Clear from the cursor to the end of the line.
const CLEAR_LINE: &str = "\x1b[K";
/// Clear from the cursor to the end of the screen.
const CLEAR_BELOW: &str = "\x1b[J";

/// How to watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchOptions {
    /// Time between two fetches, clamped to [`INTERVAL_MS_MIN`]..=[`INTERVAL_MS_MAX`].
    pub interval: Duration,
    /// Redraw in place (a terminal) or append (a pipe, a file).
    pub terminal: bool,
    /// Stop after this many reports; `None` runs until the future is dropped.
    pub rounds_max: Option<u64>,
}

impl WatchOptions {
    /// For printing to stdout: redraws in place when stdout is a terminal.
    pub fn for_stdout(interval: Duration) -> WatchOptions {
        WatchOptions {
            interval,
            terminal: std::io::stdout().is_terminal(),
            rounds_max: None,
        }
    }
}

/// One screen: a header naming the interval and time, then the report. On a
/// terminal it overwrites the previous screen line by line (clearing each
/// line's tail and whatever is below), which does not flicker as a full clear
/// would; otherwise it ends with a blank line to separate reports.
pub fn render_frame(text: &str, header: &str, terminal: bool) -> String {
    let mut out = String::with_capacity(text.len() + header.len() + 64);
    if terminal {
        out.push_str(HOME);
    }
    for line in std::iter::once(header)
        .chain(std::iter::once(""))
        .chain(text.lines())
    {
        out.push_str(line);
        if terminal {
            out.push_str(CLEAR_LINE);
        }
        out.push('\n');
    }
    if terminal {
        out.push_str(CLEAR_BELOW);
    } else {
        out.push('\n');
    }
    out
}

/// Calls `fetch` every interval and writes its report to `out`. A failed
/// fetch shows its error in place of the report and watching goes on (a
/// member restarting should not end the watch). Returns the number of
/// reports written when `rounds_max` is reached.
pub async fn watch<W, F, Fut, E>(
    opts: WatchOptions,
    out: &mut W,
    mut fetch: F,
) -> Result<u64, ObsError>
where
    W: AsyncWrite + Unpin,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<String, E>>,
    E: Display,
{
    let ms = u64::try_from(opts.interval.as_millis()).unwrap_or(u64::MAX);
    let interval = Duration::from_millis(ms.clamp(INTERVAL_MS_MIN, INTERVAL_MS_MAX));
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds = 0u64;
    while opts.rounds_max.is_none_or(|max| rounds < max) {
        ticks.tick().await;
        let text = match fetch().await {
            Ok(text) => text,
            Err(e) => format!("error: {e}\n"),
        };
        let header = format!("every {:.1}s  {}", interval.as_secs_f64(), now_rfc3339());
        out.write_all(render_frame(&text, &header, opts.terminal).as_bytes())
            .await?;
        out.flush().await?;
        rounds += 1;
    }
    Ok(rounds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_frames_redraw_in_place_and_plain_ones_append() {
        let t = render_frame("a\nb\n", "hdr", true);
        assert_eq!(t, "\x1b[Hhdr\x1b[K\n\x1b[K\na\x1b[K\nb\x1b[K\n\x1b[J");
        let p = render_frame("a\nb\n", "hdr", false);
        assert_eq!(p, "hdr\n\na\nb\n\n");
        assert!(!p.contains('\x1b'));
    }

    #[tokio::test]
    async fn each_round_fetches_once_and_errors_are_shown_not_fatal() {
        let mut calls = 0u32;
        let mut out = Vec::new();
        let opts = WatchOptions {
            interval: Duration::from_millis(1),
            terminal: false,
            rounds_max: Some(3),
        };
        let rounds = watch(opts, &mut out, || {
            calls += 1;
            let n = calls;
            async move {
                if n == 2 {
                    Err("member unreachable")
                } else {
                    Ok(format!("report {n}\n"))
                }
            }
        })
        .await
        .expect("watch");
        assert_eq!((rounds, calls), (3, 3));
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("report 1\n"), "{text}");
        assert!(text.contains("error: member unreachable\n"), "{text}");
        assert!(text.contains("report 3\n"), "{text}");
        assert_eq!(
            text.matches("every 0.1s").count(),
            3,
            "interval clamped: {text}"
        );
    }
}
