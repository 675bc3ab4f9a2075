//! Every metric the member exports: its name (prefix `geomirror_`, unit last),
//! kind, unit, help text and, for the histogram, its buckets.

use metrics::{KeyName, Recorder, SharedString, Unit};

/// `geomirror_role{resource, role}`: 1 for the role this member holds for
/// the resource, 0 for the other two.
pub const ROLE: &str = "geomirror_role";
/// `geomirror_nbd_connections`: open NBD client connections.
pub const NBD_CONNECTIONS: &str = "geomirror_nbd_connections";
/// `geomirror_writes_total`: write requests completed on the volume.
pub const WRITES_TOTAL: &str = "geomirror_writes_total";
/// `geomirror_write_errors_total`: write requests answered with an error.
pub const WRITE_ERRORS_TOTAL: &str = "geomirror_write_errors_total";
/// `geomirror_write_bytes_total`: bytes written through the volume.
pub const WRITE_BYTES_TOTAL: &str = "geomirror_write_bytes_total";
/// `geomirror_write_latency_seconds`: request to reply, replication included.
pub const WRITE_LATENCY_SECONDS: &str = "geomirror_write_latency_seconds";
/// `geomirror_replication_lag_bytes{copy}`: written and not yet acknowledged.
pub const REPLICATION_LAG_BYTES: &str = "geomirror_replication_lag_bytes";
/// `geomirror_replication_lag_seconds{copy}`: age of the oldest unacknowledged write.
pub const REPLICATION_LAG_SECONDS: &str = "geomirror_replication_lag_seconds";
/// `geomirror_resync_bytes_total{copy}`: bytes copied by resyncs.
pub const RESYNC_BYTES_TOTAL: &str = "geomirror_resync_bytes_total";
/// `geomirror_resync_remaining_bytes{copy}`: bytes the current resync still has to copy.
pub const RESYNC_REMAINING_BYTES: &str = "geomirror_resync_remaining_bytes";
/// `geomirror_resync_rate_bytes_per_second{copy}`: current resync rate.
pub const RESYNC_RATE_BYTES_PER_SECOND: &str = "geomirror_resync_rate_bytes_per_second";
/// `geomirror_copy_state{copy, state}`: 1 for the copy's sync state, 0 for the others.
pub const COPY_STATE: &str = "geomirror_copy_state";
/// `geomirror_epoch`: the group epoch this member has applied.
pub const EPOCH: &str = "geomirror_epoch";
/// `geomirror_quorum`: 1 when a majority of the voters is reachable.
pub const QUORUM: &str = "geomirror_quorum";
/// `geomirror_member_up{member}`: 1 when the member is joined.
pub const MEMBER_UP: &str = "geomirror_member_up";
/// `geomirror_writes_fenced`: 1 while this production host refuses writes
/// because the group has had no quorum for longer than the grace period.
pub const WRITES_FENCED: &str = "geomirror_writes_fenced";

/// Label names.
pub const LABEL_RESOURCE: &str = "resource";
/// Label names.
pub const LABEL_ROLE: &str = "role";
/// The copy resource id: stable across copy-host changes, unlike the host.
pub const LABEL_COPY: &str = "copy";
/// Label names.
pub const LABEL_STATE: &str = "state";
/// Label names.
pub const LABEL_MEMBER: &str = "member";

/// Buckets of the write latency histogram, in seconds: from a fast local
/// write (50 µs) through a synchronous remote round trip to a stalled one (10 s).
pub const WRITE_LATENCY_BUCKETS_SECONDS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// (name, kind, unit, help) of every metric.
const CATALOGUE: [(&str, Kind, Unit, &str); 16] = [
    (
        ROLE,
        Kind::Gauge,
        Unit::Count,
        "Role this member holds for each resource (1 = current).",
    ),
    (
        NBD_CONNECTIONS,
        Kind::Gauge,
        Unit::Count,
        "Open NBD client connections.",
    ),
    (
        WRITES_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Write requests completed on the volume.",
    ),
    (
        WRITE_ERRORS_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Write requests answered with an error.",
    ),
    (
        WRITE_BYTES_TOTAL,
        Kind::Counter,
        Unit::Bytes,
        "Bytes written through the volume.",
    ),
    (
        WRITE_LATENCY_SECONDS,
        Kind::Histogram,
        Unit::Seconds,
        "Time from a write request to its reply, replication included, in seconds.",
    ),
    (
        REPLICATION_LAG_BYTES,
        Kind::Gauge,
        Unit::Bytes,
        "Bytes written on production and not yet acknowledged by the copy.",
    ),
    (
        REPLICATION_LAG_SECONDS,
        Kind::Gauge,
        Unit::Seconds,
        "Age of the oldest write the copy has not acknowledged, in seconds.",
    ),
    (
        RESYNC_BYTES_TOTAL,
        Kind::Counter,
        Unit::Bytes,
        "Bytes copied to the copy by resyncs.",
    ),
    (
        RESYNC_REMAINING_BYTES,
        Kind::Gauge,
        Unit::Bytes,
        "Bytes the current resync of the copy still has to copy.",
    ),
    (
        RESYNC_RATE_BYTES_PER_SECOND,
        Kind::Gauge,
        // `metrics` has no bytes-per-second unit; the name carries it.
        Unit::Bytes,
        "Current resync rate of the copy, in bytes per second.",
    ),
    (
        COPY_STATE,
        Kind::Gauge,
        Unit::Count,
        "Sync state of each copy (1 = current).",
    ),
    (
        EPOCH,
        Kind::Gauge,
        Unit::Count,
        "Group epoch this member has applied.",
    ),
    (
        QUORUM,
        Kind::Gauge,
        Unit::Count,
        "1 when a majority of the group's voters is reachable.",
    ),
    (
        MEMBER_UP,
        Kind::Gauge,
        Unit::Count,
        "1 when the member is joined to the group.",
    ),
    (
        WRITES_FENCED,
        Kind::Gauge,
        Unit::Count,
        "1 while this production host refuses writes (EIO): no quorum for longer than the grace period.",
    ),
];

/// Gives every metric its help text and unit (the `# HELP` lines).
pub fn describe_all(recorder: &dyn Recorder) {
    for (name, kind, unit, help) in CATALOGUE {
        let key = KeyName::from_const_str(name);
        let help = SharedString::const_str(help);
        match kind {
            Kind::Counter => recorder.describe_counter(key, Some(unit), help),
            Kind::Gauge => recorder.describe_gauge(key, Some(unit), help),
            Kind::Histogram => recorder.describe_histogram(key, Some(unit), help),
        }
    }
}

/// Names of every metric, for tests and documentation.
pub fn all() -> impl Iterator<Item = &'static str> {
    CATALOGUE.iter().map(|c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix_counters_end_in_total_and_buckets_ascend() {
        for (name, kind, _, _) in CATALOGUE {
            assert!(name.starts_with("geomirror_"), "{name}");
            assert_eq!(
                matches!(kind, Kind::Counter),
                name.ends_with("_total"),
                "{name}"
            );
        }
        assert!(WRITE_LATENCY_BUCKETS_SECONDS
            .windows(2)
            .all(|w| w[0] < w[1]));
    }
}
