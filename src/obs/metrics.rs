//! The Prometheus endpoint of a member and typed, pre-registered metric
//! handles: recording on the data path is an atomic add, never a lookup.
//!
//! Labelled series (per resource, copy, member) are registered once, on
//! first use, and cached; their number is bounded by [`LABELLED_SERIES_MAX`].

use super::names;
use super::{ObsError, Role};
use crate::group::CopyState;
use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Most cached series per labelled family: well above the domain's bounds
/// (16 sites, 64 members); past it a handle records nothing, so a bug that
/// invents labels cannot grow memory without bound.
pub const LABELLED_SERIES_MAX: usize = 256;

static METADATA: Metadata<'static> = Metadata::new("geomirror", Level::INFO, None);

/// Starts the Prometheus endpoint.
pub struct Metrics;

impl Metrics {
    /// Serves `/metrics` on `listen` (the member's `metrics = "HOST:PORT"`)
    /// and installs the recorder process-wide, so `metrics::counter!` from
    /// any module lands on the same endpoint. Must run inside a tokio runtime.
    pub fn install(listen: SocketAddr) -> Result<MetricsHandle, ObsError> {
        let handle = Metrics::serve(listen)?;
        metrics::set_global_recorder(handle.inner.recorder.clone())
            .map_err(|_| ObsError::AlreadyInstalled)?;
        Ok(handle)
    }

    /// Serves `/metrics` on `listen` without touching the process-wide
    /// recorder: for several members in one process (tests, simulations).
    pub fn serve(listen: SocketAddr) -> Result<MetricsHandle, ObsError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ObsError::NoRuntime)?;
        let listen_err = |e: metrics_exporter_prometheus::BuildError| ObsError::MetricsListen {
            addr: listen,
            reason: e.to_string(),
        };
        let builder = PrometheusBuilder::new()
            .with_http_listener(listen)
            .set_buckets_for_metric(
                Matcher::Full(names::WRITE_LATENCY_SECONDS.to_owned()),
                &names::WRITE_LATENCY_BUCKETS_SECONDS,
            )
            .map_err(listen_err)?;
        let (recorder, exporter) = {
            let _guard = runtime.enter();
            builder.build().map_err(listen_err)?
        };
        let exporter = runtime.spawn(async move {
            if let Err(e) = exporter.await {
                tracing::warn!("metrics endpoint stopped: {e:?}");
            }
        });
        let recorder = Arc::new(recorder);
        names::describe_all(&*recorder);
        Ok(MetricsHandle::new(recorder, listen, exporter))
    }
}

/// A running endpoint and its handles. Cheap to clone; the endpoint stops
/// when the last clone is dropped.
#[derive(Clone)]
pub struct MetricsHandle {
    inner: Arc<Inner>,
}

struct Inner {
    recorder: Arc<PrometheusRecorder>,
    prometheus: PrometheusHandle,
    listen: SocketAddr,
    exporter: tokio::task::JoinHandle<()>,
    writes: WriteMetrics,
    nbd_connections: Gauge,
    epoch: Gauge,
    quorum: Gauge,
    writes_fenced: Gauge,
    roles: Mutex<BTreeMap<String, [Gauge; 3]>>,
    copies: Mutex<BTreeMap<String, CopyMetrics>>,
    members: Mutex<BTreeMap<String, Gauge>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closes the listening socket. (The exporter's upkeep task keeps a
        // reference to the registry until the runtime ends; it holds no socket.)
        self.exporter.abort();
    }
}

impl MetricsHandle {
    fn new(
        recorder: Arc<PrometheusRecorder>,
        listen: SocketAddr,
        exporter: tokio::task::JoinHandle<()>,
    ) -> MetricsHandle {
        let r = &*recorder;
        let counter =
            |name: &'static str| r.register_counter(&Key::from_static_name(name), &METADATA);
        let gauge = |name: &'static str| r.register_gauge(&Key::from_static_name(name), &METADATA);
        let writes = WriteMetrics {
            writes: counter(names::WRITES_TOTAL),
            errors: counter(names::WRITE_ERRORS_TOTAL),
            bytes: counter(names::WRITE_BYTES_TOTAL),
            latency: r.register_histogram(
                &Key::from_static_name(names::WRITE_LATENCY_SECONDS),
                &METADATA,
            ),
        };
        let inner = Inner {
            prometheus: recorder.handle(),
            writes,
            nbd_connections: gauge(names::NBD_CONNECTIONS),
            epoch: gauge(names::EPOCH),
            quorum: gauge(names::QUORUM),
            writes_fenced: gauge(names::WRITES_FENCED),
            recorder,
            listen,
            exporter,
            roles: Mutex::default(),
            copies: Mutex::default(),
            members: Mutex::default(),
        };
        MetricsHandle {
            inner: Arc::new(inner),
        }
    }

    /// The address the endpoint listens on.
    pub fn listen_addr(&self) -> SocketAddr {
        self.inner.listen
    }

    /// The exposition text a scrape would return now.
    pub fn render(&self) -> String {
        self.inner.prometheus.render()
    }

    /// Handles for the write path; clone them into each connection task.
    pub fn writes(&self) -> WriteMetrics {
        self.inner.writes.clone()
    }

    /// Counts one NBD connection until the returned guard is dropped.
    pub fn nbd_connection(&self) -> NbdConnection {
        self.inner.nbd_connections.increment(1.0);
        NbdConnection {
            gauge: self.inner.nbd_connections.clone(),
        }
    }

    /// Sets `geomirror_nbd_connections` from a count kept elsewhere (the
    /// export's own counter), instead of per-connection guards.
    pub fn set_nbd_connections(&self, n: u64) {
        self.inner.nbd_connections.set(n as f64);
    }

    /// Sets `geomirror_epoch`.
    pub fn set_epoch(&self, epoch: u64) {
        self.inner.epoch.set(epoch as f64);
    }

    /// Sets `geomirror_writes_fenced`.
    pub fn set_writes_fenced(&self, fenced: bool) {
        self.inner.writes_fenced.set(f64::from(u8::from(fenced)));
    }

    /// Sets `geomirror_quorum`.
    pub fn set_quorum(&self, quorum: bool) {
        self.inner.quorum.set(f64::from(u8::from(quorum)));
    }

    /// Sets `geomirror_role{resource, role}`: 1 for `role`, 0 for the others.
    pub fn set_role(&self, resource: &str, role: Role) {
        let gauges = cached(&self.inner.roles, resource, || {
            Role::ALL.map(|role| {
                self.gauge(
                    names::ROLE,
                    vec![
                        Label::new(names::LABEL_RESOURCE, resource.to_owned()),
                        Label::new(names::LABEL_ROLE, role.as_str()),
                    ],
                )
            })
        });
        for (g, r) in gauges.iter().zip(Role::ALL) {
            g.set(f64::from(u8::from(r == role)));
        }
    }

    /// Sets `geomirror_member_up{member}`.
    pub fn set_member_up(&self, member: &str, up: bool) {
        let gauge = cached(&self.inner.members, member, || {
            self.gauge(
                names::MEMBER_UP,
                vec![Label::new(names::LABEL_MEMBER, member.to_owned())],
            )
        });
        gauge.set(f64::from(u8::from(up)));
    }

    /// The handles of one copy (labelled by the copy's resource id), for its
    /// sender and resync task to keep.
    pub fn copy(&self, copy: &str) -> CopyMetrics {
        cached(&self.inner.copies, copy, || {
            let label = || vec![Label::new(names::LABEL_COPY, copy.to_owned())];
            let state = COPY_STATES.map(|(_, name)| {
                self.gauge(
                    names::COPY_STATE,
                    vec![
                        Label::new(names::LABEL_COPY, copy.to_owned()),
                        Label::new(names::LABEL_STATE, name),
                    ],
                )
            });
            CopyMetrics {
                lag_bytes: self.gauge(names::REPLICATION_LAG_BYTES, label()),
                lag_seconds: self.gauge(names::REPLICATION_LAG_SECONDS, label()),
                resync_bytes: self.inner.recorder.register_counter(
                    &Key::from_parts(names::RESYNC_BYTES_TOTAL, label()),
                    &METADATA,
                ),
                resync_remaining: self.gauge(names::RESYNC_REMAINING_BYTES, label()),
                resync_rate: self.gauge(names::RESYNC_RATE_BYTES_PER_SECOND, label()),
                state: Arc::new(state),
            }
        })
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.inner
            .recorder
            .register_gauge(&Key::from_parts(name, labels), &METADATA)
    }
}

/// Returns the cached value for `key`, making it with `make` the first
/// time; past [`LABELLED_SERIES_MAX`] entries, a fresh unregistered value.
fn cached<T: Clone + NoopDefault>(
    map: &Mutex<BTreeMap<String, T>>,
    key: &str,
    make: impl FnOnce() -> T,
) -> T {
    let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(v) = map.get(key) {
        return v.clone();
    }
    if map.len() >= LABELLED_SERIES_MAX {
        tracing::warn!("metric label {key:?} not recorded: {LABELLED_SERIES_MAX} series already");
        return T::noop();
    }
    let v = make();
    map.insert(key.to_owned(), v.clone());
    v
}

trait NoopDefault {
    fn noop() -> Self;
}

impl NoopDefault for Gauge {
    fn noop() -> Gauge {
        Gauge::noop()
    }
}

impl NoopDefault for [Gauge; 3] {
    fn noop() -> [Gauge; 3] {
        [Gauge::noop(), Gauge::noop(), Gauge::noop()]
    }
}

impl NoopDefault for CopyMetrics {
    fn noop() -> CopyMetrics {
        CopyMetrics {
            lag_bytes: Gauge::noop(),
            lag_seconds: Gauge::noop(),
            resync_bytes: Counter::noop(),
            resync_remaining: Gauge::noop(),
            resync_rate: Gauge::noop(),
            state: Arc::new(COPY_STATES.map(|_| Gauge::noop())),
        }
    }
}

/// Counters of the write path. Recording is two atomic adds and a
/// histogram sample; nothing is looked up per write. Samples wait in
/// lock-free blocks of 64 (one allocation per block) until the exporter's
/// upkeep, every 5 s, folds them into the fixed buckets, so memory stays
/// bounded by five seconds of writes even if nobody scrapes.
#[derive(Clone)]
pub struct WriteMetrics {
    writes: Counter,
    errors: Counter,
    bytes: Counter,
    latency: Histogram,
}

impl WriteMetrics {
    /// One write of `bytes` answered successfully after `latency`.
    pub fn record(&self, bytes: u64, latency: Duration) {
        self.writes.increment(1);
        self.bytes.increment(bytes);
        self.latency.record(latency.as_secs_f64());
    }

    /// One write answered with an error.
    pub fn record_error(&self) {
        self.errors.increment(1);
    }
}

/// One open NBD connection; dropping it takes it off `geomirror_nbd_connections`.
pub struct NbdConnection {
    gauge: Gauge,
}

impl Drop for NbdConnection {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

/// Every copy state, with the label value `geomirror_copy_state` gives it
/// (the same spelling as `status`).
pub const COPY_STATES: [(CopyState, &str); 8] = [
    (CopyState::Unknown, "Unknown"),
    (CopyState::Inconsistent, "Inconsistent"),
    (CopyState::Resyncing, "Resyncing"),
    (CopyState::UpToDate, "UpToDate"),
    (CopyState::Lagging, "Lagging"),
    (CopyState::SplitBrain, "SplitBrain"),
    (CopyState::Failed, "Failed"),
    (CopyState::DiskFailed, "DiskFailed"),
];

/// The handles of one copy: replication lag, resync progress, sync state.
#[derive(Clone)]
pub struct CopyMetrics {
    lag_bytes: Gauge,
    lag_seconds: Gauge,
    resync_bytes: Counter,
    resync_remaining: Gauge,
    resync_rate: Gauge,
    state: Arc<[Gauge; COPY_STATES.len()]>,
}

impl CopyMetrics {
    /// Async mode: bytes not yet acknowledged and the age of the oldest.
    pub fn set_lag(&self, bytes: u64, age: Duration) {
        self.lag_bytes.set(bytes as f64);
        self.lag_seconds.set(age.as_secs_f64());
    }

    /// A resync copied `bytes` more.
    pub fn add_resynced(&self, bytes: u64) {
        self.resync_bytes.increment(bytes);
    }

    /// What the current resync still has to copy, and its rate.
    pub fn set_resync(&self, remaining_bytes: u64, rate_bytes_per_s: f64) {
        self.resync_remaining.set(remaining_bytes as f64);
        self.resync_rate.set(rate_bytes_per_s);
    }

    /// No mirroring pair serves this copy: lag, remaining and rate go to 0
    /// and no state is current, so a dashboard does not show a stale resync.
    pub fn clear(&self) {
        self.set_lag(0, Duration::ZERO);
        self.set_resync(0, 0.0);
        for g in self.state.iter() {
            g.set(0.0);
        }
    }

    /// Sets `geomirror_copy_state{copy, state}`: 1 for `state`, 0 for the others.
    pub fn set_state(&self, state: CopyState) {
        for (g, (s, _)) in self.state.iter().zip(COPY_STATES) {
            g.set(f64::from(u8::from(s == state)));
        }
    }
}
