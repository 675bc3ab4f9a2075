//! Sets the gauges from a whole picture of the group, so the daemon can
//! refresh them after every applied command or status poll.
//!
//! Counters (`*_total`) are not touched here: they count work as it is done.

use super::metrics::{MetricsHandle, COPY_STATES};
use super::Role;
use crate::group::{GroupState, MemberId, MemberStatus};
use crate::node::status::StatusReport;
use std::time::Duration;

impl MetricsHandle {
    /// Epoch, members up, the roles `me` holds and every copy's state,
    /// resync remaining and lag, from the replicated group state. A copy
    /// without a mirroring pair is cleared (see [`super::CopyMetrics::clear`]).
    pub fn record_state(&self, state: &GroupState, me: MemberId) {
        self.set_epoch(state.epoch);
        for (id, spec) in state.domain.member_ids().zip(&state.domain.members) {
            self.set_member_up(&spec.name, state.status(id) == MemberStatus::Joined);
        }
        for (i, (site, r)) in state.domain.sites.iter().zip(&state.resources).enumerate() {
            let role = if r.host == Some(me) {
                Role::of_resource_index(i)
            } else {
                Role::None
            };
            self.set_role(site.resource.as_str(), role);
        }
        for site in state.domain.sites.iter().skip(1) {
            if !state.mirrors.iter().any(|p| p.resource == site.resource) {
                self.copy(site.resource.as_str()).clear();
            }
        }
        for pair in &state.mirrors {
            let copy = self.copy(pair.resource.as_str());
            copy.set_state(pair.sync.state);
            copy.set_resync(pair.sync.bytes_to_go, 0.0);
            // The group state carries no clock: the age is the sender's to set.
            copy.set_lag(pair.sync.lag_bytes, Duration::ZERO);
        }
    }

    /// The same from a status report (which also carries quorum, rates and
    /// lag in seconds), e.g. as `status` fetched it from a member.
    pub fn record_status(&self, report: &StatusReport) {
        self.set_epoch(report.epoch);
        self.set_quorum(report.quorum);
        for m in &report.members {
            self.set_member_up(&m.name, m.state == "joined");
        }
        for r in &report.resources {
            let role = match r.role.as_str() {
                _ if r.host.as_deref() != Some(report.member.as_str()) => Role::None,
                "production" => Role::Production,
                _ => Role::Copy,
            };
            self.set_role(&r.id, role);
            if r.role == "production" {
                continue;
            }
            let copy = self.copy(&r.id);
            if let Some((state, _)) = COPY_STATES.iter().find(|(_, name)| *name == r.state) {
                copy.set_state(*state);
            }
            copy.set_resync(r.bytes_to_go, r.rate_bytes_per_s);
            // A negative, NaN or huge age from a confused peer counts as none.
            let age = Duration::try_from_secs_f64(r.lag_s).unwrap_or_default();
            copy.set_lag(r.lag_bytes, age);
        }
    }
}
