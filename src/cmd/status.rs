//! `geomirror status`: ask a running member how the group stands, once,
//! every interval (`--watch`), or until every copy is in sync (`--wait-sync`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};

use crate::config::RecoveryDomain;
use crate::node::control::{self, Request};
use crate::node::status::StatusReport;
use crate::obs::{watch, Progress, WatchOptions};

/// Arguments of `geomirror status`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The recovery-domain file.
    #[arg(long)]
    pub config: PathBuf,
    /// Ask this member (default: the first one that answers, in backup order).
    #[arg(long)]
    pub member: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Ask again every interval: redrawn in place on a terminal, printed
    /// one after another otherwise. Runs until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// Wait until every copy is UpToDate, showing the sync's progress (a bar
    /// on a terminal, log lines otherwise), then print the report and exit
    /// 0. Exits non-zero on split brain, a refused copy, a copy whose disk
    /// fails writes, or after `--timeout-ms`.
    #[arg(long, conflicts_with = "watch")]
    pub wait_sync: bool,
    /// Time between two reports with `--watch` or `--wait-sync` (100 ms to one hour).
    #[arg(long, default_value_t = 2000)]
    pub interval_ms: u64,
    /// Give up `--wait-sync` after this long (the default is one day).
    #[arg(long, default_value_t = 86_400_000)]
    pub timeout_ms: u64,
}

/// Time to wait for one member's answer.
const ASK_TIMEOUT_MS: u64 = 3_000;

pub fn run(args: Args) -> anyhow::Result<()> {
    let domain = RecoveryDomain::load(&args.config)
        .with_context(|| format!("recovery domain {}", args.config.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    let member = args.member.as_deref();
    let json = args.json;
    if args.watch {
        let opts = WatchOptions::for_stdout(Duration::from_millis(args.interval_ms));
        return rt.block_on(async {
            let mut out = tokio::io::stdout();
            let fetch = || async { render(&fetch(&domain, member).await?, json) };
            let shutdown = super::shutdown_signal()?;
            tokio::select! {
                r = watch(opts, &mut out, fetch) => match r {
                    Err(crate::obs::ObsError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                    r => r.map(|_| ()).map_err(anyhow::Error::from),
                },
                () = shutdown => Ok(()),
            }
        });
    }
    if args.wait_sync {
        let interval = Duration::from_millis(args.interval_ms.clamp(
            crate::obs::watch::INTERVAL_MS_MIN,
            crate::obs::watch::INTERVAL_MS_MAX,
        ));
        let timeout = Duration::from_millis(args.timeout_ms);
        let (report, failure) = rt.block_on(wait_sync(&domain, member, interval, timeout))?;
        super::print_stdout(&render(&report, json)?)?;
        return match failure {
            Some(why) => Err(anyhow!(why)),
            None => Ok(()),
        };
    }
    let report = rt.block_on(fetch(&domain, member))?;
    super::print_stdout(&render(&report, json)?)
}

/// How far the group is from having every copy in sync.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncView {
    /// Every copy is UpToDate (or Lagging: async mode, the resync over,
    /// writes still in flight), as a member with quorum reports it.
    Synced,
    /// A copy cannot get in sync without an operator.
    Failed(String),
    /// Not yet: what the running resyncs moved and have in all (0 and 0
    /// when none runs yet), and what each unsynced copy is waiting on.
    Syncing {
        done_bytes: u64,
        total_bytes: u64,
        waiting: Vec<String>,
    },
}

/// Where `report` stands on the way to every copy UpToDate. Pure, so every
/// state a member reports is tested without a cluster.
pub fn sync_view(report: &StatusReport) -> SyncView {
    let copies = report.resources.iter().filter(|r| r.role == "copy");
    let mut waiting = Vec::new();
    let (mut done_bytes, mut total_bytes) = (0u64, 0u64);
    for c in copies {
        match c.state.as_str() {
            "UpToDate" | "Lagging" => continue,
            "SplitBrain" => {
                return SyncView::Failed(format!(
                    "split brain on {}: production and copy were both written; \
                     an operator must choose which to keep",
                    c.id
                ))
            }
            "Refused" => {
                return SyncView::Failed(format!(
                    "{} refused mirroring from the production host (a disk of another \
                     group or resource?)",
                    c.id
                ))
            }
            "DiskFailed" => {
                return SyncView::Failed(format!(
                    "the copy disk of {} on {} fails writes{}: free space or replace the disk",
                    c.id,
                    c.host.as_deref().unwrap_or("its host"),
                    match (&c.disk_error, c.disk_offset) {
                        (Some(e), Some(at)) => format!(" with {e} at offset {at}"),
                        _ => String::new(),
                    }
                ))
            }
            _ => {}
        }
        let host = c.host.as_deref().unwrap_or("no host");
        waiting.push(format!("{} ({host}): {}", c.id, c.state));
        done_bytes = done_bytes.saturating_add(c.resynced_bytes);
        total_bytes = total_bytes.saturating_add(c.resynced_bytes.saturating_add(c.bytes_to_go));
    }
    if let Some(m) = report.mirroring.iter().find(|m| m.state == "split-brain") {
        return SyncView::Failed(format!(
            "split brain between {} and {} on {}",
            m.from, m.to, m.resource
        ));
    }
    if !report.quorum {
        // Without quorum the sync states may be stale: nothing is settled.
        waiting.push(format!("{} has no quorum", report.member));
    }
    if waiting.is_empty() {
        SyncView::Synced
    } else {
        SyncView::Syncing {
            done_bytes,
            total_bytes,
            waiting,
        }
    }
}

/// Asks every `interval` until the group is in sync, showing the resync's
/// progress; returns the last report and, when a copy failed, why. A member
/// that does not answer is waited for (it may be restarting), within `timeout`.
async fn wait_sync(
    domain: &RecoveryDomain,
    member: Option<&str>,
    interval: Duration,
    timeout: Duration,
) -> anyhow::Result<(StatusReport, Option<String>)> {
    let start = std::time::Instant::now();
    let mut progress: Option<Progress> = None;
    let mut note = String::new();
    let mut last_total_bytes = 0u64;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let work = async {
        loop {
            ticks.tick().await;
            let report = match fetch(domain, member).await {
                Ok(r) => r,
                Err(e) => {
                    say(&mut note, format!("{e:#}"));
                    continue;
                }
            };
            match sync_view(&report) {
                SyncView::Synced => {
                    // The last report seen syncing may be short of the end.
                    if let Some(p) = &progress {
                        p.set(last_total_bytes);
                    }
                    return (report, None);
                }
                SyncView::Failed(why) => return (report, Some(why)),
                SyncView::Syncing {
                    done_bytes,
                    total_bytes,
                    waiting,
                } => {
                    say(&mut note, format!("waiting for {}", waiting.join(", ")));
                    if total_bytes > 0 {
                        last_total_bytes = total_bytes;
                        let p = progress.get_or_insert_with(|| {
                            Progress::started_at(
                                total_bytes,
                                &format!("sync {}", domain.group),
                                start,
                            )
                        });
                        p.set_total(total_bytes);
                        p.set(done_bytes);
                    }
                }
            }
        }
    };
    let outcome = tokio::time::timeout(timeout, work).await;
    if let Some(p) = &progress {
        p.finish();
    }
    outcome.map_err(|_| {
        anyhow!(
            "the copies were not in sync after {} ms ({note})",
            timeout.as_millis()
        )
    })
}

/// Logs `line` when it differs from the last one said.
fn say(last: &mut String, line: String) {
    if *last != line {
        tracing::info!("{line}");
        *last = line;
    }
}

fn render(report: &StatusReport, json: bool) -> anyhow::Result<String> {
    Ok(if json {
        serde_json::to_string_pretty(report)? + "\n"
    } else {
        report.to_text()
    })
}

/// The report of `member`, or of the first member that answers.
pub async fn fetch(domain: &RecoveryDomain, member: Option<&str>) -> anyhow::Result<StatusReport> {
    let targets = super::control_targets(domain, member)?;
    let mut errors = Vec::new();
    for (name, addr) in targets {
        match tokio::time::timeout(
            Duration::from_millis(ASK_TIMEOUT_MS),
            ask(addr, &domain.secret),
        )
        .await
        {
            Ok(Ok(r)) => return Ok(r),
            Ok(Err(e)) => errors.push(format!("{name} ({addr}): {e:#}")),
            Err(_) => errors.push(format!("{name} ({addr}): no answer")),
        }
    }
    Err(anyhow!("no member answered:\n  {}", errors.join("\n  ")))
}

async fn ask(addr: &str, secret: &str) -> anyhow::Result<StatusReport> {
    let mut s = control::connect(addr, secret).await?;
    control::write_frame(&mut s, &Request::Status).await?;
    Ok(control::read_frame(&mut s).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::status::{MirrorStatus, ResourceStatus};

    fn resource(id: &str, role: &str, state: &str, done: u64, to_go: u64) -> ResourceStatus {
        ResourceStatus {
            id: id.into(),
            site: "dr".into(),
            role: role.into(),
            host: Some("b1".into()),
            state: state.into(),
            size_bytes: Some(1 << 30),
            resynced_bytes: done,
            bytes_to_go: to_go,
            rate_bytes_per_s: 0.0,
            eta_s: None,
            lag_bytes: 0,
            lag_s: 0.0,
            disk_errno: None,
            disk_error: None,
            disk_offset: None,
        }
    }

    fn report(copies: Vec<ResourceStatus>) -> StatusReport {
        let mut resources = vec![resource("payroll-prod", "production", "UpToDate", 0, 0)];
        resources.extend(copies);
        StatusReport {
            group: "payroll".into(),
            member: "w1".into(),
            epoch: 4,
            leader: Some("a1".into()),
            quorum: true,
            warnings: vec![],
            members: vec![],
            resources,
            mirroring: vec![],
        }
    }

    #[test]
    fn synced_only_when_every_copy_is_up_to_date_under_quorum() {
        let dr = resource("payroll-dr", "copy", "UpToDate", 1 << 20, 0);
        let lagging = resource("payroll-dr2", "copy", "Lagging", 0, 0);
        let mut r = report(vec![dr.clone(), lagging]);
        assert_eq!(sync_view(&r), SyncView::Synced);
        r.quorum = false;
        assert!(
            matches!(&sync_view(&r), SyncView::Syncing { waiting, .. } if waiting[0].contains("no quorum")),
            "{:?}",
            sync_view(&r)
        );
        // A copy site nobody hosts yet is waited for, with no bytes to show.
        let unhosted = ResourceStatus {
            host: None,
            ..resource("payroll-dr2", "copy", "Unhosted", 0, 0)
        };
        let r = report(vec![dr, unhosted]);
        assert_eq!(
            sync_view(&r),
            SyncView::Syncing {
                done_bytes: 0,
                total_bytes: 0,
                waiting: vec!["payroll-dr2 (no host): Unhosted".into()]
            }
        );
    }

    #[test]
    fn a_resync_shows_its_bytes_summed_over_the_copies_in_it() {
        let r = report(vec![
            resource("payroll-dr", "copy", "Inconsistent", 3 << 20, 1 << 20),
            resource("payroll-dr2", "copy", "Inconsistent", 1 << 20, 3 << 20),
            resource("payroll-dr3", "copy", "UpToDate", 9 << 20, 0),
        ]);
        let SyncView::Syncing {
            done_bytes,
            total_bytes,
            waiting,
        } = sync_view(&r)
        else {
            panic!("syncing expected: {:?}", sync_view(&r));
        };
        assert_eq!((done_bytes, total_bytes), (4 << 20, 8 << 20));
        assert_eq!(waiting.len(), 2, "{waiting:?}");
    }

    #[test]
    fn split_brain_or_a_refused_copy_ends_the_wait_with_a_reason() {
        let r = report(vec![resource("payroll-dr", "copy", "SplitBrain", 0, 0)]);
        assert!(
            matches!(&sync_view(&r), SyncView::Failed(why) if why.contains("split brain on payroll-dr")),
            "{:?}",
            sync_view(&r)
        );
        let r = report(vec![resource("payroll-dr", "copy", "Refused", 0, 0)]);
        assert!(matches!(&sync_view(&r), SyncView::Failed(why) if why.contains("refused")));
        let r = report(vec![ResourceStatus {
            disk_errno: Some(libc::ENOSPC),
            disk_error: Some("ENOSPC".into()),
            disk_offset: Some(4096),
            ..resource("payroll-dr", "copy", "DiskFailed", 0, 1 << 20)
        }]);
        assert!(
            matches!(&sync_view(&r), SyncView::Failed(why) if why.contains("payroll-dr on b1 fails writes with ENOSPC at offset 4096")),
            "{:?}",
            sync_view(&r)
        );
        let mut r = report(vec![resource("payroll-dr", "copy", "Disconnected", 0, 0)]);
        r.mirroring.push(MirrorStatus {
            from: "a1".into(),
            to: "b1".into(),
            resource: "payroll-dr".into(),
            state: "split-brain".into(),
        });
        assert!(
            matches!(&sync_view(&r), SyncView::Failed(why) if why.contains("split brain between a1 and b1"))
        );
    }
}
