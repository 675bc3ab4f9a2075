//! Watching the group through `status`: waiting for a condition with a
//! bound, and sampling the copy's sync progress in the background.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use super::cluster::{Cluster, COPY_RESOURCE};
use super::error::DemoError;
use super::{interrupted, say};
use crate::config::RecoveryDomain;
use crate::node::status::{ResourceStatus, StatusReport};

/// Time between two status polls.
pub const POLL_MS: u64 = 200;
/// Most progress samples kept; later ones replace the newest, so memory
/// stays bounded however long a sync takes.
const SAMPLES_MAX: usize = 4096;

/// Asks the members for the group status.
#[derive(Clone)]
pub struct Watcher {
    rt: Handle,
    domain: Arc<RecoveryDomain>,
}

impl Watcher {
    pub fn new(rt: Handle, domain: RecoveryDomain) -> Watcher {
        Watcher {
            rt,
            domain: Arc::new(domain),
        }
    }

    /// The report of the first member that answers.
    pub fn status(&self) -> anyhow::Result<StatusReport> {
        self.rt
            .block_on(crate::cmd::status::fetch(&self.domain, None))
    }

    /// Polls until `done` holds for a report, at most `timeout`; fails early
    /// when a member exits or on Ctrl-C.
    pub fn wait_for(
        &self,
        cluster: &mut Cluster,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&StatusReport) -> bool,
    ) -> anyhow::Result<StatusReport> {
        let start = Instant::now();
        loop {
            if interrupted() {
                return Err(DemoError::Interrupted.into());
            }
            cluster.check_running()?;
            let last = match self.status() {
                Ok(r) if done(&r) => return Ok(r),
                Ok(r) => copy(&r).map(describe_copy).unwrap_or_default(),
                Err(e) => format!("{e:#}"),
            };
            if start.elapsed() > timeout {
                return Err(DemoError::Timeout {
                    what: what.to_string(),
                    waited_ms: timeout.as_millis() as u64,
                    last: if last.is_empty() {
                        last
                    } else {
                        format!(": {last}")
                    },
                }
                .into());
            }
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
    }
}

/// The copy resource's line of a report.
pub fn copy(r: &StatusReport) -> Option<&ResourceStatus> {
    r.resources.iter().find(|x| x.id == COPY_RESOURCE)
}

/// Whether member `name` is joined in the report.
pub fn joined(r: &StatusReport, name: &str) -> bool {
    r.members
        .iter()
        .any(|m| m.name == name && m.state == "joined")
}

/// Whether the copy is hosted by `host`, up to date, with nothing left to
/// move, and the production host mirroring to it.
pub fn copy_in_sync(r: &StatusReport, host: &str) -> bool {
    let Some(c) = copy(r) else { return false };
    c.host.as_deref() == Some(host)
        && c.state == "UpToDate"
        && c.bytes_to_go == 0
        && r.mirroring
            .iter()
            .any(|m| m.to == host && m.resource == COPY_RESOURCE && m.state == "mirroring")
}

/// One line on the copy's sync state, e.g. `Inconsistent 42.0% (…) at …/s eta 3s`.
pub fn describe_copy(c: &ResourceStatus) -> String {
    use crate::units::format_size;
    let total = c.resynced_bytes + c.bytes_to_go;
    let mut s = c.state.clone();
    if c.bytes_to_go > 0 {
        s += &format!(
            " {:5.1}%  {} of {}  at {}/s",
            100.0 * c.resynced_bytes as f64 / total.max(1) as f64,
            format_size(c.resynced_bytes),
            format_size(total),
            format_size(c.rate_bytes_per_s as u64)
        );
        if let Some(eta) = c.eta_s {
            s += &format!("  eta {eta:.1}s");
        }
    } else if c.resynced_bytes > 0 {
        s += &format!(" moved {}", format_size(c.resynced_bytes));
    }
    s
}

/// One observation of the copy.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Seconds since sampling started.
    pub at_s: f64,
    pub copy: ResourceStatus,
}

/// Polls status on its own thread until stopped, keeping the copy's states.
pub struct Sampler {
    started: Instant,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    pub fn start(watcher: Watcher) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (stop2, samples2) = (stop.clone(), samples.clone());
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            let start = started;
            while !stop2.load(Ordering::Relaxed) && !interrupted() {
                if let Ok(r) = watcher.status() {
                    if let Some(c) = copy(&r) {
                        let s = Sample {
                            at_s: start.elapsed().as_secs_f64(),
                            copy: c.clone(),
                        };
                        let mut v = samples2.lock().unwrap_or_else(|p| p.into_inner());
                        if v.len() < SAMPLES_MAX {
                            v.push(s);
                        } else if let Some(newest) = v.last_mut() {
                            *newest = s;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(POLL_MS));
            }
        });
        Sampler {
            started,
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// Seconds since sampling started.
    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The samples so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the thread and returns every sample.
    pub fn finish(mut self) -> Vec<Sample> {
        self.halt();
        self.samples()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The sampled progress: one line per change of state or per 10 points
/// of progress, and the last one.
pub fn print_progress(samples: &[Sample]) {
    let mut last: Option<(String, f64)> = None;
    let mut printed = String::new();
    for (i, s) in samples.iter().enumerate() {
        let c = &s.copy;
        let total = (c.resynced_bytes + c.bytes_to_go).max(1);
        let pct = 100.0 * c.resynced_bytes as f64 / total as f64;
        let show = match &last {
            None => true,
            Some((state, p)) => {
                *state != c.state
                    || (c.bytes_to_go > 0 && pct - p >= 10.0)
                    || i + 1 == samples.len()
            }
        };
        let text = describe_copy(c);
        if show && text != printed {
            say(&format!("   +{:5.1} s  {text}", s.at_s));
            printed = text;
            last = Some((c.state.clone(), pct));
        }
    }
}
