//! The tour's steps, in order, each printing a short narrative with its
//! figures and recording the checks that the summary reports.

use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::Signal;

use super::cluster::{describe, Cluster, COPY_RESOURCE, MEMBERS, PROD_RESOURCE};
use super::tour::Check;
use super::watch::{copy, copy_in_sync, joined, print_progress, Sample, Sampler, Watcher};
use super::workload::{self, connect, Model};
use super::{say, verify};
use crate::attach::{NbdAddress, NbdClient};
use crate::node::status::StatusReport;
use crate::storage::Label;
use crate::units::format_size;

/// Time for a member to start and join (an election included).
const JOIN_TIMEOUT_MS: u64 = 60_000;
/// Time for the group to declare a killed member failed.
const FAIL_TIMEOUT_MS: u64 = 30_000;
/// Time for a member to exit after SIGTERM (its leave proposal may wait
/// for the engine's 15 s proposal timeout).
const STOP_TIMEOUT_MS: u64 = 30_000;
/// A stop slower than this gets the member's own explanation printed.
const SLOW_STOP_MS: u64 = 5_000;
/// Most bytes written in step 2 and in step 4.
const BULK_BYTES_MAX: u64 = 64 << 20;
const SCATTERED_BYTES_MAX: u64 = 8 << 20;

/// One step of the tour; an error ends the tour.
pub(super) type Step = fn(&mut Tour) -> anyhow::Result<()>;

/// What the steps share: the running group, the NBD connection, the
/// model of what was written, and the checks recorded so far.
pub(super) struct Tour {
    pub(super) size_bytes: u64,
    pub(super) cluster: Cluster,
    pub(super) watcher: Watcher,
    pub(super) checks: Vec<Check>,
    pub(super) model: Model,
    pub(super) data_bytes: u64,
    pub(super) client: Option<NbdClient>,
    pub(super) sampler: Option<Sampler>,
    /// The production host as status reported it in step 1.
    pub(super) prod_host: String,
}

impl Tour {
    pub(super) fn record(&mut self, what: &str, ok: bool, detail: String) {
        self.checks.push(Check {
            what: what.to_string(),
            ok,
            detail,
        });
    }

    fn wait(
        &mut self,
        what: &str,
        timeout_ms: u64,
        done: impl FnMut(&StatusReport) -> bool,
    ) -> anyhow::Result<StatusReport> {
        self.watcher.wait_for(
            &mut self.cluster,
            what,
            Duration::from_millis(timeout_ms),
            done,
        )
    }

    /// Step 1: format, start the members together, show the status table.
    pub(super) fn start(&mut self) -> anyhow::Result<()> {
        for (file, resource) in [("prod.img", PROD_RESOURCE), ("dr.img", COPY_RESOURCE)] {
            say(&format!(
                "   {}",
                self.cluster.format(file, resource, self.size_bytes)?
            ));
        }
        let label = Label::read_path(&self.cluster.disk("prod.img"))
            .context("read the production label")?;
        self.data_bytes = label.data_size();
        self.model = Model::new(label.layout.bitmap_chunk_bytes);
        // All at once: a member with an empty state directory founds the
        // group only once every member of the domain answers, so none of
        // them joins before the last one is up.
        let t0 = Instant::now();
        // From here on the copy's states are sampled, so the full sync
        // that starts when b1 joins is seen from its start.
        self.sampler = Some(Sampler::start(self.watcher.clone()));
        for (name, _) in MEMBERS {
            let pid = self.cluster.start(name)?;
            say(&format!(
                "   started {name} (pid {pid}), log {}",
                self.cluster.dir.join(format!("{name}.log")).display()
            ));
        }
        for (name, _) in MEMBERS {
            self.wait(&format!("{name} to join"), JOIN_TIMEOUT_MS, |r| {
                joined(r, name)
            })?;
            say(&format!(
                "   {name} joined after {:.1} s",
                t0.elapsed().as_secs_f64()
            ));
        }
        let r = self.wait("a production host and a copy host", JOIN_TIMEOUT_MS, |r| {
            let prod = r.resources.iter().find(|x| x.id == PROD_RESOURCE);
            prod.is_some_and(|p| p.host.is_some()) && copy(r).is_some_and(|c| c.host.is_some())
        })?;
        say("");
        for line in r.to_text().lines() {
            say(&format!("   | {line}"));
        }
        let prod_host = r
            .resources
            .iter()
            .find(|x| x.id == PROD_RESOURCE)
            .and_then(|p| p.host.clone())
            .unwrap_or_default();
        let copy_host = copy(&r).and_then(|c| c.host.clone()).unwrap_or_default();
        let ok = ["a1", "a2"].contains(&prod_host.as_str()) && copy_host == "b1";
        self.record(
            "roles",
            ok,
            format!("production hosted by {prod_host} (site prod), copy hosted by {copy_host} (site dr)"),
        );
        self.prod_host = prod_host;
        Ok(())
    }

    /// Step 2: the bulk write through the production host's NBD socket.
    pub(super) fn write(&mut self) -> anyhow::Result<()> {
        let member = self
            .cluster
            .domain
            .members
            .iter()
            .find(|m| m.name == self.prod_host)
            .context("production host not in the recovery domain")?;
        let nbd = member
            .nbd
            .as_ref()
            .context("production host has no nbd address")?;
        let addr = NbdAddress::parse(&nbd.to_string(), None)?;
        let client = connect(&addr)?;
        say(&format!(
            "   connected to {addr_s} ({} export)",
            format_size(client.info().size),
            addr_s = nbd
        ));
        let chunk = self.model.chunk_bytes;
        let count = BULK_BYTES_MAX.min(self.data_bytes / 2) / chunk;
        let took = workload::write_range(&client, &mut self.model, 0, count, 1)?;
        let bytes = count * chunk;
        let rate = bytes as f64 / took.as_secs_f64().max(1e-6);
        say(&format!(
            "   wrote {} of random data in {:.2} s: {}/s ({} requests of {} in flight; sync mode: \
             each write is on both disks before it is acknowledged)",
            format_size(bytes),
            took.as_secs_f64(),
            format_size(rate as u64),
            workload::WRITERS,
            format_size(chunk * 4)
        ));
        self.record(
            "NBD writes",
            true,
            format!(
                "{} acknowledged and flushed at {}/s",
                format_size(bytes),
                format_size(rate as u64)
            ),
        );
        self.client = Some(client);
        Ok(())
    }

    /// Step 3: the copy's progress from the moment b1 started until it is in sync.
    pub(super) fn full_sync(&mut self) -> anyhow::Result<()> {
        let r = self.wait(
            "the copy to be in sync",
            sync_timeout_ms(self.data_bytes),
            |r| copy_in_sync(r, "b1"),
        )?;
        let sampler = self.sampler.take().context("no progress sampler")?;
        let end_s = sampler.elapsed_s();
        let mut samples = sampler.finish();
        let c = copy(&r).context("no copy in the status")?;
        samples.push(Sample {
            at_s: end_s,
            copy: c.clone(),
        });
        say("   the copy as status showed it, from the start of b1:");
        print_progress(&samples);
        // Moving the whole volume is what proves a full sync. The
        // Inconsistent state in between is shown when a status poll caught
        // it; a small volume on a fast disk can sync between two polls.
        let saw_inconsistent = samples.iter().any(|s| s.copy.state == "Inconsistent");
        let whole = c.resynced_bytes >= self.data_bytes;
        self.record(
            "initial full sync",
            whole,
            format!(
                "copy went {} → UpToDate, moved {} of a {} volume",
                if saw_inconsistent {
                    "Inconsistent"
                } else {
                    "Inconsistent (between two status polls)"
                },
                format_size(c.resynced_bytes),
                format_size(self.data_bytes)
            ),
        );
        Ok(())
    }

    /// Step 4: SIGKILL b1, write scattered chunks, restart b1, partial resync.
    pub(super) fn crash_copy(&mut self) -> anyhow::Result<()> {
        let st = self.cluster.crash("b1")?;
        say(&format!("   SIGKILL b1: {}", describe(&st)));
        let chunk = self.model.chunk_bytes;
        let count = SCATTERED_BYTES_MAX.min(self.data_bytes / 8) / chunk;
        let client = self.client.as_ref().context("no NBD connection")?;
        let took =
            workload::write_scattered(client, &mut self.model, self.data_bytes / chunk, count, 2)?;
        let bytes = count * chunk;
        say(&format!(
            "   wrote {} as {count} writes of {} at random offsets in {:.2} s, copy host down",
            format_size(bytes),
            format_size(chunk),
            took.as_secs_f64()
        ));
        let t0 = Instant::now();
        self.wait("the group to declare b1 failed", FAIL_TIMEOUT_MS, |r| {
            !joined(r, "b1")
        })?;
        say(&format!(
            "   the group declared b1 failed after {:.1} s more",
            t0.elapsed().as_secs_f64()
        ));
        let t0 = Instant::now();
        let pid = self.cluster.start("b1")?;
        say(&format!(
            "   restarted b1 (pid {pid}) with its state directory"
        ));
        let r = self.wait(
            "b1 to rejoin and resync",
            sync_timeout_ms(self.data_bytes),
            |r| joined(r, "b1") && copy_in_sync(r, "b1"),
        )?;
        let c = copy(&r).context("no copy in the status")?;
        let pct = 100.0 * c.resynced_bytes as f64 / self.data_bytes as f64;
        say(&format!(
            "   b1 back in sync after {:.1} s: resync moved {} of the {} volume ({pct:.1}%)",
            t0.elapsed().as_secs_f64(),
            format_size(c.resynced_bytes),
            format_size(self.data_bytes)
        ));
        let ok = c.resynced_bytes >= bytes && c.resynced_bytes < self.data_bytes;
        self.record(
            "partial resync",
            ok,
            format!(
                "moved {} ({pct:.1}% of the volume) for {} written while the copy was down",
                format_size(c.resynced_bytes),
                format_size(bytes)
            ),
        );
        Ok(())
    }

    /// Step 5: SIGTERM (copy first, then the production site together, so
    /// each leave is decided while a majority still runs), then compare.
    pub(super) fn stop_and_compare(&mut self) -> anyhow::Result<()> {
        self.client = None;
        let mut exits = Vec::new();
        for batch in [&["b1"][..], &["a2", "a1"][..]] {
            for name in batch {
                self.cluster.signal(name, Signal::SIGTERM)?;
            }
            let t0 = Instant::now();
            for name in batch {
                let st = self
                    .cluster
                    .wait_exit(name, Duration::from_millis(STOP_TIMEOUT_MS))?;
                say(&format!(
                    "   SIGTERM {name}: {} after {:.1} s",
                    describe(&st),
                    t0.elapsed().as_secs_f64()
                ));
                if t0.elapsed() > Duration::from_millis(SLOW_STOP_MS) {
                    // The last member running cannot get its Leave decided
                    // (no majority left) and waits out the proposal timeout.
                    if let Some(line) = self.cluster.last_log_line(name, "leave") {
                        say(&format!(
                            "   note: {name} was slow to stop; its log says: {line}"
                        ));
                    }
                }
                exits.push((name.to_string(), st));
            }
        }
        let clean = exits.iter().all(|(_, st)| st.success());
        let detail = exits
            .iter()
            .map(|(n, st)| format!("{n} {}", describe(st)))
            .collect::<Vec<_>>()
            .join(", ");
        self.record("clean stop", clean, detail);

        let (prod, dr) = (self.cluster.disk("prod.img"), self.cluster.disk("dr.img"));
        let diff = verify::first_difference(&prod, &dr, self.data_bytes)?;
        say(&format!(
            "   compared the data areas ({}): {}",
            format_size(self.data_bytes),
            match diff {
                None => "identical".to_string(),
                Some(off) => format!("first difference at byte {off}"),
            }
        ));
        self.record(
            "disks identical",
            diff.is_none(),
            match diff {
                None => format!("prod.img and dr.img equal over {} bytes", self.data_bytes),
                Some(off) => format!("first difference at byte {off}"),
            },
        );
        let chunks = self.data_bytes / self.model.chunk_bytes;
        let diff = verify::first_model_difference(&dr, &self.model, chunks)?;
        self.record(
            "copy holds what was written",
            diff.is_none(),
            match diff {
                None => format!(
                    "{} chunks written, every chunk of dr.img as expected",
                    self.model.chunks_written()
                ),
                Some(off) => format!("dr.img differs from the written data at byte {off}"),
            },
        );
        Ok(())
    }
}

/// A generous bound for a sync of `bytes`: a minute plus 1 MiB/s.
fn sync_timeout_ms(bytes: u64) -> u64 {
    60_000 + bytes / (1 << 20) * 1000
}
