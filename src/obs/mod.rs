//! Observability building blocks for the member daemon and the CLI: Prometheus
//! metrics, a stream of group events, progress reporting and `status --watch`.
//!
//! # Layout
//!
//! - [`names`]: every metric name, its help text, unit and histogram buckets.
//! - [`metrics`]: the Prometheus endpoint and typed, pre-registered handles
//!   cheap enough for the data path.
//! - [`snapshot`]: gauges set from a whole [`GroupState`](crate::group::GroupState)
//!   or [`StatusReport`](crate::node::status::StatusReport).
//! - [`events`]: what happened to the group, derived purely from two
//!   successive states, one JSON line each (in the spirit of `drbdsetup events2`).
//! - [`time`]: RFC 3339 timestamps for event lines, without a date crate.
//! - [`bus`]: the bounded broadcast the daemon publishes events to, the
//!   server side of an `events` subscription and the client loop.
//! - [`progress`]: a bar on a terminal, throttled log lines elsewhere.
//! - [`watch`]: redraw a report in place every interval.
//! - [`error`]: the errors of this layer.
//!
//! # Wiring in the member daemon
//!
//! - At start, with the member's `metrics = "HOST:PORT"`: [`Metrics::install`];
//!   give each NBD connection task [`MetricsHandle::nbd_connection`] and
//!   [`MetricsHandle::writes`], each sender and resync task
//!   [`MetricsHandle::copy`] (labelled by the copy resource id).
//! - After each applied group command: [`MetricsHandle::record_state`], and
//!   [`EventBus::publish_all`] of [`diff_events`] between the state before
//!   and after.
//! - On a control connection carrying `Request::Events`: subscribe, take
//!   [`snapshot_events`] of the current state (after subscribing, so nothing
//!   falls between), then [`serve_events`]. The `events` command runs
//!   [`follow_events`]; `status --watch` runs [`watch`] around its fetch.

pub mod bus;
pub mod error;
pub mod events;
pub mod metrics;
pub mod names;
pub mod progress;
pub mod snapshot;
pub mod time;
pub mod watch;

pub use bus::{follow_events, serve_events, stream_events, EventBus};
pub use error::ObsError;
pub use events::{diff_events, snapshot_events, Event, EventLine};
pub use metrics::{CopyMetrics, Metrics, MetricsHandle, NbdConnection, WriteMetrics};
pub use progress::{estimate, Estimate, Progress};
pub use watch::{watch, WatchOptions};

use serde::{Deserialize, Serialize};

/// What a member does with one resource: the label value of `geomirror_role`
/// and the `role` field of host-change events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// It hosts the production resource: it is the group primary.
    Production,
    /// It hosts a copy resource: it is that site's copy host.
    Copy,
    /// It does not host the resource.
    None,
}

impl Role {
    /// Every role, in the order the metric exports them.
    pub const ALL: [Role; 3] = [Role::Production, Role::Copy, Role::None];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Production => "production",
            Role::Copy => "copy",
            Role::None => "none",
        }
    }

    /// The role the host of resource number `index` holds (0 is production).
    pub fn of_resource_index(index: usize) -> Role {
        if index == 0 {
            Role::Production
        } else {
            Role::Copy
        }
    }
}
