//! The member daemon's observability: its Prometheus endpoint, and the
//! group events it publishes to `events` subscribers on every state change.
//!
//! Gauges are refreshed from the replicated state on each change and from
//! the live status (quorum, copy links) on every 500 ms tick.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use crate::config::Member;
use crate::group::{GroupState, MemberId};
use crate::obs::{diff_events, snapshot_events, EventBus, EventLine, Metrics, MetricsHandle};
use crate::replication::CopyStats;

use super::resync_log::ResyncLog;
use super::status::StatusReport;

/// What this member exposes about itself.
pub struct Observer {
    me: MemberId,
    metrics: Option<MetricsHandle>,
    bus: EventBus,
    last: Arc<GroupState>,
    /// Resynced bytes of each copy link already counted, by copy host name.
    resynced: BTreeMap<String, u64>,
    /// Resync progress lines for the log.
    resync_log: ResyncLog,
}

impl Observer {
    /// Starts the metrics endpoint when the member's entry names one
    /// (`metrics = "HOST:PORT"`); the daemon runs one member per process,
    /// so the recorder is installed process-wide. Inside the runtime.
    pub fn start(me: MemberId, member: &Member, initial: Arc<GroupState>) -> anyhow::Result<Self> {
        let metrics = match &member.metrics {
            Some(addr) => {
                let listen: SocketAddr = addr
                    .parse()
                    .with_context(|| format!("member {} metrics {addr:?}", member.name))?;
                let m = Metrics::install(listen)
                    .with_context(|| format!("metrics endpoint of member {}", member.name))?;
                tracing::info!(%listen, "serving Prometheus metrics");
                Some(m)
            }
            None => None,
        };
        let o = Observer {
            me,
            metrics,
            bus: EventBus::default(),
            last: initial,
            resynced: BTreeMap::new(),
            resync_log: ResyncLog::default(),
        };
        if let Some(m) = &o.metrics {
            m.record_state(&o.last, me);
        }
        Ok(o)
    }

    /// The bus control connections subscribe to.
    pub fn bus(&self) -> EventBus {
        self.bus.clone()
    }

    /// The endpoint's handles, when the member serves metrics.
    pub fn metrics(&self) -> Option<&MetricsHandle> {
        self.metrics.as_ref()
    }

    /// A new group state was applied: publish what changed since the last
    /// one and refresh the gauges it determines.
    pub fn on_state(&mut self, state: &Arc<GroupState>) {
        if Arc::ptr_eq(state, &self.last) {
            return;
        }
        let events = diff_events(&self.last, state);
        for e in &events {
            tracing::debug!(event = ?e, "group event");
        }
        self.bus.publish_all(events);
        if let Some(m) = &self.metrics {
            m.record_state(state, self.me);
        }
        self.last = state.clone();
    }

    /// The tick: quorum, rates and lag as the status report shows them now,
    /// and resync progress in the log.
    /// On the production host `copies` are its links' live figures; the
    /// resync byte counter grows by what each link copied since the last tick.
    /// `writes_fenced`: whether the quorum fence refuses writes now.
    pub fn on_tick(
        &mut self,
        report: &StatusReport,
        copies: &[CopyStats],
        nbd_connections: u64,
        writes_fenced: bool,
    ) {
        for line in self.resync_log.tick(copies, Instant::now()) {
            tracing::info!("{line}");
        }
        let Some(m) = &self.metrics else { return };
        m.record_status(report);
        m.set_nbd_connections(nbd_connections);
        m.set_writes_fenced(writes_fenced);
        for c in copies {
            let Some(pair) = report.mirroring.iter().find(|p| p.to == c.name) else {
                continue;
            };
            let seen = self.resynced.entry(c.name.clone()).or_insert(0);
            // A new resync starts its count again from 0.
            let delta = c
                .resynced_bytes
                .checked_sub(*seen)
                .unwrap_or(c.resynced_bytes);
            if delta > 0 {
                m.copy(&pair.resource).add_resynced(delta);
            }
            *seen = c.resynced_bytes;
        }
        // Bounded by the domain's members: forget links that are gone.
        self.resynced
            .retain(|name, _| copies.iter().any(|c| &c.name == name));
    }
}

/// What a new `events` subscriber gets first: the current state as events
/// (taken after subscribing, so nothing falls between).
pub fn snapshot_lines(state: &GroupState) -> Vec<EventLine> {
    snapshot_events(state)
        .into_iter()
        .map(EventLine::now)
        .collect()
}
