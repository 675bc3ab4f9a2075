//! The Prometheus endpoint scraped over real HTTP: metric names, labels,
//! values and histogram buckets, and the gauges set from a group state.

mod common;
#[path = "group_support/mod.rs"]
mod support;

use geomirror::group::{CopyState, GroupCommand, GroupState, ResourceId, SyncReport};
use geomirror::node::status::{MemberStatus, ResourceStatus, StatusReport};
use geomirror::obs::{Metrics, MetricsHandle, ObsError, Role};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use support::{domain, id, TWO_SITES};

/// One sample line of the exposition format: `name{k="v",...} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text exposition format (enough of it for our own output).
fn parse(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
    let mut samples = Vec::new();
    let mut help = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').expect("HELP name text");
            help.insert(name.to_owned(), text.to_owned());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|e| panic!("value in {line:?}: {e}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let labels = body
                    .split("\",")
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once("=\"").expect("k=\"v\"");
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name, labels)
            }
        };
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    (samples, help)
}

/// The value of the one sample called `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0].value
}

/// `GET /metrics` over a plain TCP connection; returns the body.
fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let raw = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("headers end");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], common::free_port()))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn scraped_metrics_carry_names_labels_values_and_buckets() {
    let rt = runtime();
    let m = rt
        .block_on(async { Metrics::serve(loopback()) })
        .expect("serve");
    let writes = m.writes();
    for _ in 0..3 {
        writes.record(4096, Duration::from_micros(300));
    }
    writes.record(65536, Duration::from_millis(20));
    writes.record_error();
    let kept = m.nbd_connection();
    drop(m.nbd_connection());
    let _also_kept = m.nbd_connection();
    m.set_role("payroll-prod", Role::Production);
    m.set_role("payroll-dr", Role::None);
    m.set_epoch(7);
    m.set_quorum(true);
    m.set_member_up("a1", true);
    m.set_member_up("b1", false);
    let copy = m.copy("payroll-dr");
    copy.set_lag(8192, Duration::from_millis(1500));
    copy.add_resynced(1 << 20);
    copy.add_resynced(1 << 20);
    copy.set_resync(3 << 20, 50e6);
    copy.set_state(CopyState::Resyncing);

    let body = scrape(m.listen_addr());
    let (s, help) = parse(&body);
    assert_eq!(value(&s, "geomirror_writes_total", &[]), 4.0);
    assert_eq!(value(&s, "geomirror_write_errors_total", &[]), 1.0);
    assert_eq!(
        value(&s, "geomirror_write_bytes_total", &[]),
        (3 * 4096 + 65536) as f64
    );
    assert_eq!(value(&s, "geomirror_nbd_connections", &[]), 2.0);
    assert_eq!(value(&s, "geomirror_epoch", &[]), 7.0);
    assert_eq!(value(&s, "geomirror_quorum", &[]), 1.0);
    let role = |r, role| value(&s, "geomirror_role", &[("resource", r), ("role", role)]);
    assert_eq!(role("payroll-prod", "production"), 1.0);
    assert_eq!(role("payroll-prod", "copy"), 0.0);
    assert_eq!(role("payroll-prod", "none"), 0.0);
    assert_eq!(role("payroll-dr", "none"), 1.0);
    assert_eq!(value(&s, "geomirror_member_up", &[("member", "a1")]), 1.0);
    assert_eq!(value(&s, "geomirror_member_up", &[("member", "b1")]), 0.0);
    let dr = [("copy", "payroll-dr")];
    assert_eq!(value(&s, "geomirror_replication_lag_bytes", &dr), 8192.0);
    assert_eq!(value(&s, "geomirror_replication_lag_seconds", &dr), 1.5);
    assert_eq!(
        value(&s, "geomirror_resync_bytes_total", &dr),
        (2 << 20) as f64
    );
    assert_eq!(
        value(&s, "geomirror_resync_remaining_bytes", &dr),
        (3 << 20) as f64
    );
    assert_eq!(
        value(&s, "geomirror_resync_rate_bytes_per_second", &dr),
        50e6
    );
    let state = |st| {
        value(
            &s,
            "geomirror_copy_state",
            &[("copy", "payroll-dr"), ("state", st)],
        )
    };
    assert_eq!(state("Resyncing"), 1.0);
    assert_eq!(state("UpToDate"), 0.0);

    // Cumulative buckets: three writes of 300 µs, one of 20 ms.
    let bucket = |le| value(&s, "geomirror_write_latency_seconds_bucket", &[("le", le)]);
    assert_eq!(bucket("0.00025"), 0.0);
    assert_eq!(bucket("0.0005"), 3.0);
    assert_eq!(bucket("0.01"), 3.0);
    assert_eq!(bucket("0.025"), 4.0);
    assert_eq!(bucket("+Inf"), 4.0);
    assert_eq!(value(&s, "geomirror_write_latency_seconds_count", &[]), 4.0);
    let sum = value(&s, "geomirror_write_latency_seconds_sum", &[]);
    assert!((sum - 0.0209).abs() < 1e-9, "sum {sum}");
    assert!(
        body.contains("# TYPE geomirror_write_latency_seconds histogram"),
        "{body}"
    );

    for name in geomirror::obs::names::all() {
        assert!(help.contains_key(name), "no HELP for {name}:\n{body}");
    }
    drop(kept);
}

#[test]
fn install_sets_the_process_recorder_once() {
    let rt = runtime();
    let m = rt
        .block_on(async { Metrics::install(loopback()) })
        .expect("install");
    metrics::counter!("geomirror_test_events_total").increment(5);
    let (s, _) = parse(&scrape(m.listen_addr()));
    assert_eq!(value(&s, "geomirror_test_events_total", &[]), 5.0);
    let again = rt.block_on(async { Metrics::install(loopback()) });
    assert!(
        matches!(again, Err(ObsError::AlreadyInstalled)),
        "{:?}",
        again.err()
    );
    // The first endpoint is unaffected.
    assert!(scrape(m.listen_addr()).contains("geomirror_test_events_total 5"));
}

#[test]
fn busy_address_is_a_clear_error_and_no_runtime_is_refused() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let rt = runtime();
    let err = rt
        .block_on(async { Metrics::serve(addr) })
        .err()
        .expect("the address is in use");
    assert!(matches!(err, ObsError::MetricsListen { .. }), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    let outside = Metrics::serve(loopback()).err().expect("no runtime");
    assert!(matches!(outside, ObsError::NoRuntime), "{outside}");
}

#[test]
fn dropping_the_last_handle_closes_the_endpoint() {
    let rt = runtime();
    let m = rt
        .block_on(async { Metrics::serve(loopback()) })
        .expect("serve");
    let addr = m.listen_addr();
    let clone = m.clone();
    drop(m);
    assert!(
        scrape(addr).contains("geomirror_epoch"),
        "a clone keeps it open"
    );
    drop(clone);
    common::wait_until("the endpoint to close", Duration::from_secs(10), || {
        TcpStream::connect(addr).is_err()
    });
}

fn res(s: &str) -> ResourceId {
    ResourceId::from(s)
}

fn with_handle(f: impl FnOnce(&MetricsHandle)) -> Vec<Sample> {
    let rt = runtime();
    let m = rt
        .block_on(async { Metrics::serve(loopback()) })
        .expect("serve");
    f(&m);
    parse(&scrape(m.listen_addr())).0
}

#[test]
fn group_state_sets_epoch_members_roles_and_copies() {
    let d = domain(TWO_SITES);
    let (a1, b1) = (id(&d, "a1"), id(&d, "b1"));
    let mut s = GroupState::new(&d);
    let fp = s.domain.fingerprint;
    for (m, r) in [(a1, "payroll-prod"), (b1, "payroll-dr")] {
        s.apply(&GroupCommand::Join {
            member: m,
            subgroups: vec![res(r)],
            fingerprint: fp,
        })
        .expect("join");
    }
    let report = SyncReport {
        state: CopyState::Resyncing,
        resynced_bytes: 1 << 20,
        bytes_to_go: 7 << 20,
        lag_bytes: 0,
        ..Default::default()
    };
    s.apply(&GroupCommand::SyncProgress {
        member: a1,
        resource: res("payroll-dr"),
        epoch: s.mirrors[0].epoch,
        report,
    })
    .expect("progress");
    let samples = with_handle(|m| m.record_state(&s, a1));
    let v = |name, labels: &[(&str, &str)]| value(&samples, name, labels);
    assert_eq!(v("geomirror_epoch", &[]), s.epoch as f64);
    assert_eq!(v("geomirror_member_up", &[("member", "a1")]), 1.0);
    assert_eq!(v("geomirror_member_up", &[("member", "a2")]), 0.0);
    assert_eq!(v("geomirror_member_up", &[("member", "b1")]), 1.0);
    let role = |r, role| v("geomirror_role", &[("resource", r), ("role", role)]);
    assert_eq!(role("payroll-prod", "production"), 1.0);
    assert_eq!(role("payroll-dr", "none"), 1.0);
    let copy = [("copy", "payroll-dr"), ("state", "Resyncing")];
    assert_eq!(v("geomirror_copy_state", &copy), 1.0);
    let dr = [("copy", "payroll-dr")];
    assert_eq!(v("geomirror_resync_remaining_bytes", &dr), (7 << 20) as f64);

    // When the copy host fails, the pair is gone and so is its resync figure.
    let mut failed = s.clone();
    failed
        .apply(&GroupCommand::Fail { member: b1 })
        .expect("fail");
    let samples = with_handle(|m| {
        m.record_state(&s, a1);
        m.record_state(&failed, a1);
    });
    let v = |name, labels: &[(&str, &str)]| value(&samples, name, labels);
    assert_eq!(v("geomirror_member_up", &[("member", "b1")]), 0.0);
    assert_eq!(v("geomirror_resync_remaining_bytes", &dr), 0.0);
    assert_eq!(v("geomirror_copy_state", &copy), 0.0);

    // Seen from the copy host, the same state gives it the copy role.
    let samples = with_handle(|m| m.record_state(&s, b1));
    let role = |r, role| {
        value(
            &samples,
            "geomirror_role",
            &[("resource", r), ("role", role)],
        )
    };
    assert_eq!(role("payroll-dr", "copy"), 1.0);
    assert_eq!(role("payroll-prod", "none"), 1.0);
}

#[test]
fn status_report_sets_quorum_rates_and_lag() {
    let report = StatusReport {
        group: "payroll".into(),
        member: "b1".into(),
        epoch: 4,
        leader: Some("a1".into()),
        quorum: false,
        warnings: vec![],
        members: vec![MemberStatus {
            name: "b1".into(),
            state: "joined".into(),
            subgroups: vec!["payroll-dr".into()],
            hosts: vec!["payroll-dr".into()],
        }],
        resources: vec![ResourceStatus {
            id: "payroll-dr".into(),
            site: "dr".into(),
            role: "copy".into(),
            host: Some("b1".into()),
            state: "Lagging".into(),
            size_bytes: Some(1 << 30),
            resynced_bytes: 0,
            bytes_to_go: 0,
            rate_bytes_per_s: 0.0,
            eta_s: None,
            lag_bytes: 12288,
            lag_s: f64::NAN,
            disk_errno: None,
            disk_error: None,
            disk_offset: None,
        }],
        mirroring: vec![],
    };
    let samples = with_handle(|m| m.record_status(&report));
    let v = |name, labels: &[(&str, &str)]| value(&samples, name, labels);
    assert_eq!(v("geomirror_epoch", &[]), 4.0);
    assert_eq!(v("geomirror_quorum", &[]), 0.0);
    assert_eq!(v("geomirror_member_up", &[("member", "b1")]), 1.0);
    assert_eq!(
        v(
            "geomirror_role",
            &[("resource", "payroll-dr"), ("role", "copy")]
        ),
        1.0
    );
    let dr = [("copy", "payroll-dr")];
    assert_eq!(v("geomirror_replication_lag_bytes", &dr), 12288.0);
    assert_eq!(
        v("geomirror_replication_lag_seconds", &dr),
        0.0,
        "NaN age counts as none"
    );
    assert_eq!(
        v(
            "geomirror_copy_state",
            &[("copy", "payroll-dr"), ("state", "Lagging")]
        ),
        1.0
    );
}
