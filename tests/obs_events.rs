//! Group events: derived from successive group states, their JSON line
//! shape, and their delivery to subscribers over real sockets.

mod common;
#[path = "group_support/mod.rs"]
mod support;

use geomirror::config::RecoveryDomain;
use geomirror::group::{CopyState, GroupCommand, GroupState, MemberId, ResourceId, SyncReport};
use geomirror::node::control::{self, Request};
use geomirror::obs::bus::{copy_event_lines, EVENT_LINE_BYTES_MAX, SUBSCRIBERS_MAX};
use geomirror::obs::{
    diff_events, follow_events, serve_events, snapshot_events, stream_events, Event, EventBus,
    EventLine, ObsError, Role,
};
use std::time::Duration;
use support::{domain, id, TWO_SITES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn res(s: &str) -> ResourceId {
    ResourceId::from(s)
}

fn s(x: &str) -> String {
    x.to_owned()
}

/// Applies `cmd` to a copy of `state`, returning the new state.
fn after(state: &GroupState, cmd: GroupCommand) -> GroupState {
    let mut next = state.clone();
    next.apply(&cmd).unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    next
}

fn join(state: &GroupState, member: MemberId, subgroups: &[&str]) -> GroupState {
    after(
        state,
        GroupCommand::Join {
            member,
            subgroups: subgroups.iter().copied().map(res).collect(),
            fingerprint: state.domain.fingerprint,
        },
    )
}

fn progress(state: &GroupState, copy: &str, st: CopyState) -> GroupState {
    let pair = state
        .mirrors
        .iter()
        .find(|p| p.resource.as_str() == copy)
        .expect("pair exists");
    after(
        state,
        GroupCommand::SyncProgress {
            member: pair.from,
            resource: res(copy),
            epoch: pair.epoch,
            report: SyncReport {
                state: st,
                ..SyncReport::default()
            },
        },
    )
}

struct Two {
    d: RecoveryDomain,
    empty: GroupState,
}

impl Two {
    fn new() -> Two {
        let d = domain(TWO_SITES);
        let empty = GroupState::new(&d);
        Two { d, empty }
    }
    fn m(&self, name: &str) -> MemberId {
        id(&self.d, name)
    }
}

#[test]
fn joins_give_hosts_and_start_mirroring() {
    let t = Two::new();
    let s1 = join(&t.empty, t.m("a1"), &["payroll-prod"]);
    assert_eq!(
        diff_events(&t.empty, &s1),
        vec![
            Event::Join {
                member: s("a1"),
                subgroups: vec![s("payroll-prod")]
            },
            Event::HostChange {
                resource: s("payroll-prod"),
                role: Role::Production,
                from: None,
                to: Some(s("a1")),
                epoch: 1
            },
        ]
    );
    let s2 = join(&s1, t.m("b1"), &["payroll-dr"]);
    assert_eq!(
        diff_events(&s1, &s2),
        vec![
            Event::Join {
                member: s("b1"),
                subgroups: vec![s("payroll-dr")]
            },
            Event::HostChange {
                resource: s("payroll-dr"),
                role: Role::Copy,
                from: None,
                to: Some(s("b1")),
                epoch: 2
            },
            Event::MirroringStart {
                resource: s("payroll-dr"),
                from: s("a1"),
                to: s("b1"),
                epoch: 2
            },
        ]
    );
    assert_eq!(diff_events(&s2, &s2), vec![], "no change, no event");
}

#[test]
fn failure_moves_the_production_host_and_restarts_mirroring() {
    let t = Two::new();
    let s = join(&t.empty, t.m("a1"), &["payroll-prod"]);
    let s = join(&s, t.m("a2"), &["payroll-prod"]);
    let s = join(&s, t.m("b1"), &["payroll-dr"]);
    let failed = after(&s, GroupCommand::Fail { member: t.m("a1") });
    let old_epoch = s.mirrors[0].epoch;
    assert_eq!(
        diff_events(&s, &failed),
        vec![
            Event::Fail {
                member: "a1".into()
            },
            Event::MirroringStop {
                resource: "payroll-dr".into(),
                from: "a1".into(),
                to: "b1".into(),
                epoch: old_epoch
            },
            Event::HostChange {
                resource: "payroll-prod".into(),
                role: Role::Production,
                from: Some("a1".into()),
                to: Some("a2".into()),
                epoch: failed.epoch
            },
            Event::MirroringStart {
                resource: "payroll-dr".into(),
                from: "a2".into(),
                to: "b1".into(),
                epoch: failed.epoch
            },
        ]
    );
}

#[test]
fn leaving_copy_host_stops_mirroring_and_leaves_the_copy_unhosted() {
    let t = Two::new();
    let s = join(&t.empty, t.m("a1"), &["payroll-prod"]);
    let s = join(&s, t.m("b1"), &["payroll-dr"]);
    let left = after(&s, GroupCommand::Leave { member: t.m("b1") });
    let events = diff_events(&s, &left);
    assert_eq!(
        events[0],
        Event::Leave {
            member: "b1".into()
        }
    );
    assert!(matches!(&events[1], Event::MirroringStop { to, .. } if to == "b1"));
    assert_eq!(
        events[2],
        Event::HostChange {
            resource: "payroll-dr".into(),
            role: Role::Copy,
            from: Some("b1".into()),
            to: None,
            epoch: left.epoch
        }
    );
    assert_eq!(events.len(), 3, "{events:?}");
}

#[test]
fn redeclared_subgroups_are_reported() {
    let t = Two::new();
    let s = join(&t.empty, t.m("a2"), &[]);
    let s2 = join(&s, t.m("a2"), &["payroll-prod"]);
    let events = diff_events(&s, &s2);
    assert_eq!(
        events[0],
        Event::Subgroups {
            member: "a2".into(),
            subgroups: vec!["payroll-prod".into()]
        }
    );
    assert!(matches!(&events[1], Event::HostChange { to: Some(m), .. } if m == "a2"));
}

#[test]
fn sync_state_changes_and_split_brain_are_reported() {
    let t = Two::new();
    let s = join(&t.empty, t.m("a1"), &["payroll-prod"]);
    let s = join(&s, t.m("b1"), &["payroll-dr"]);
    let syncing = progress(&s, "payroll-dr", CopyState::Resyncing);
    assert_eq!(
        diff_events(&s, &syncing),
        vec![Event::SyncState {
            resource: "payroll-dr".into(),
            to: "b1".into(),
            old: CopyState::Unknown,
            state: CopyState::Resyncing
        }]
    );
    let same = progress(&syncing, "payroll-dr", CopyState::Resyncing);
    assert_eq!(
        diff_events(&syncing, &same),
        vec![],
        "progress alone is no event"
    );
    let split = progress(&syncing, "payroll-dr", CopyState::SplitBrain);
    assert_eq!(
        diff_events(&syncing, &split),
        vec![
            Event::SyncState {
                resource: "payroll-dr".into(),
                to: "b1".into(),
                old: CopyState::Resyncing,
                state: CopyState::SplitBrain
            },
            Event::SplitBrain {
                resource: "payroll-dr".into(),
                from: "a1".into(),
                to: "b1".into()
            },
        ]
    );
}

#[test]
fn a_copy_disk_failure_is_reported_once_per_errno_with_its_offset() {
    let t = Two::new();
    let s = join(&t.empty, t.m("a1"), &["payroll-prod"]);
    let s = join(&s, t.m("b1"), &["payroll-dr"]);
    let syncing = progress(&s, "payroll-dr", CopyState::Resyncing);
    let pair = &syncing.mirrors[0];
    let failed = |state: &GroupState, errno: i32, offset: u64| {
        after(
            state,
            GroupCommand::SyncProgress {
                member: pair.from,
                resource: res("payroll-dr"),
                epoch: pair.epoch,
                report: SyncReport {
                    state: CopyState::DiskFailed,
                    disk_errno: Some(errno),
                    disk_offset: Some(offset),
                    ..SyncReport::default()
                },
            },
        )
    };
    let full = failed(&syncing, libc::ENOSPC, 104_857_600);
    let events = diff_events(&syncing, &full);
    let expected = Event::CopyDiskFailed {
        resource: "payroll-dr".into(),
        member: "b1".into(),
        errno: libc::ENOSPC,
        error: "ENOSPC".into(),
        offset: 104_857_600,
    };
    assert_eq!(events.last(), Some(&expected), "{events:?}");
    let line = serde_json::to_value(&expected).expect("json");
    assert_eq!(line["kind"], "copy-disk-failed");
    assert_eq!(
        (line["errno"].as_i64(), line["offset"].as_u64()),
        (Some(28), Some(104_857_600))
    );
    // A retry failing further on is no news; another errno is.
    let further = failed(&full, libc::ENOSPC, 109_051_904);
    assert_eq!(diff_events(&full, &further), vec![]);
    let eio = failed(&further, libc::EIO, 0);
    assert!(matches!(
        diff_events(&further, &eio).as_slice(),
        [Event::CopyDiskFailed { errno, .. }] if *errno == libc::EIO
    ));
}

#[test]
fn snapshot_replays_the_state_from_nothing() {
    let t = Two::new();
    let s = join(&t.empty, t.m("a1"), &["payroll-prod"]);
    let s = join(&s, t.m("b1"), &["payroll-dr"]);
    let s = progress(&s, "payroll-dr", CopyState::UpToDate);
    let kinds: Vec<String> = snapshot_events(&s)
        .iter()
        .map(|e| {
            serde_json::to_value(e).expect("json")["kind"]
                .as_str()
                .expect("kind")
                .to_owned()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "configure",
            "join",
            "join",
            "host-change",
            "host-change",
            "mirroring-start",
            "sync-state"
        ]
    );
    assert_eq!(snapshot_events(&GroupState::default()), vec![]);
}

#[test]
fn json_lines_have_stable_field_names() {
    let line = EventLine {
        time: "2026-11-24T04:47:00.123Z".into(),
        event: Event::HostChange {
            resource: "payroll-prod".into(),
            role: Role::Production,
            from: None,
            to: Some("a2".into()),
            epoch: 3,
        },
    };
    let json = line.to_json().expect("json");
    assert_eq!(
        json,
        r#"{"time":"2026-11-24T04:47:00.123Z","kind":"host-change","resource":"payroll-prod","role":"production","from":null,"to":"a2","epoch":3}"#
    );
    assert!(!json.contains('\n'));
    let back: EventLine = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, line);

    let every = [
        (Event::Configure { group: s("g") }, "configure"),
        (
            Event::Join {
                member: s("a"),
                subgroups: vec![],
            },
            "join",
        ),
        (
            Event::Subgroups {
                member: s("a"),
                subgroups: vec![],
            },
            "subgroups",
        ),
        (Event::Leave { member: s("a") }, "leave"),
        (Event::Fail { member: s("a") }, "fail"),
        (
            Event::MirroringStart {
                resource: s("r"),
                from: s("a"),
                to: s("b"),
                epoch: 1,
            },
            "mirroring-start",
        ),
        (
            Event::MirroringStop {
                resource: s("r"),
                from: s("a"),
                to: s("b"),
                epoch: 1,
            },
            "mirroring-stop",
        ),
        (
            Event::SyncState {
                resource: s("r"),
                to: s("b"),
                old: CopyState::Unknown,
                state: CopyState::UpToDate,
            },
            "sync-state",
        ),
        (
            Event::SplitBrain {
                resource: s("r"),
                from: s("a"),
                to: s("b"),
            },
            "split-brain",
        ),
        (Event::Lagged { missed: 2 }, "lagged"),
    ];
    for (event, kind) in every {
        let v = serde_json::to_value(EventLine::now(event.clone())).expect("json");
        assert_eq!(v["kind"], kind);
        assert!(
            v["time"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z') && t.len() == 24),
            "{v}"
        );
        let back: EventLine = serde_json::from_value(v).expect("parse");
        assert_eq!(back.event, event);
    }
    let sync = serde_json::to_value(Event::SyncState {
        resource: s("r"),
        to: s("b"),
        old: CopyState::Resyncing,
        state: CopyState::UpToDate,
    })
    .expect("json");
    assert_eq!(
        (sync["old"].as_str(), sync["state"].as_str()),
        (Some("Resyncing"), Some("UpToDate"))
    );
}

/// Waits (bounded) until the bus has `n` subscribers.
async fn subscribers(bus: &EventBus, n: usize) {
    for _ in 0..1000 {
        if bus.subscribers() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("bus has {} subscribers, expected {n}", bus.subscribers());
}

#[tokio::test]
async fn subscriber_over_tcp_gets_the_snapshot_then_each_event_in_order() {
    let bus = EventBus::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server_bus = bus.clone();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut magic = [0u8; 4];
        stream.read_exact(&mut magic).await.expect("magic");
        assert_eq!(magic, control::MAGIC);
        let req: Request = control::read_frame(&mut stream).await.expect("request");
        assert_eq!(req, Request::Events);
        let rx = server_bus.subscribe().expect("subscribe");
        drop(server_bus);
        let initial = [EventLine::now(Event::Configure {
            group: s("payroll"),
        })];
        serve_events(stream, &initial, rx).await
    });
    let client = tokio::spawn(async move {
        let mut out = Vec::new();
        let n = follow_events(&addr, &mut out).await;
        (n, out)
    });
    subscribers(&bus, 1).await;
    bus.publish(Event::Join {
        member: s("a1"),
        subgroups: vec![s("payroll-prod")],
    });
    bus.publish(Event::Fail { member: s("a1") });
    drop(bus);
    let served = server.await.expect("server task").expect("served");
    let (n, out) = client.await.expect("client task");
    assert_eq!((served, n.expect("client")), (3, 3));
    let lines: Vec<EventLine> = String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("an event line"))
        .collect();
    let events: Vec<Event> = lines.into_iter().map(|l| l.event).collect();
    assert_eq!(
        events,
        vec![
            Event::Configure {
                group: s("payroll")
            },
            Event::Join {
                member: s("a1"),
                subgroups: vec![s("payroll-prod")]
            },
            Event::Fail { member: s("a1") },
        ]
    );
}

#[tokio::test]
async fn slow_subscriber_is_told_how_many_events_it_missed() {
    let bus = EventBus::new(4);
    let rx = bus.subscribe().expect("subscribe");
    for i in 0..10 {
        bus.publish(Event::Leave {
            member: format!("m{i}"),
        });
    }
    drop(bus);
    let mut out = Vec::new();
    assert_eq!(stream_events(&mut out, rx).await.expect("stream"), 5);
    let events: Vec<Event> = String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str::<EventLine>(l).expect("line").event)
        .collect();
    assert_eq!(events[0], Event::Lagged { missed: 6 });
    assert_eq!(events[1], Event::Leave { member: s("m6") });
    assert_eq!(events[4], Event::Leave { member: s("m9") });
}

#[tokio::test]
async fn client_hangup_ends_the_subscription_on_an_idle_bus() {
    let bus = EventBus::default();
    let (server_side, client_side) = tokio::net::UnixStream::pair().expect("socketpair");
    let rx = bus.subscribe().expect("subscribe");
    let serving = tokio::spawn(async move { serve_events(server_side, &[], rx).await });
    drop(client_side);
    let r = tokio::time::timeout(Duration::from_secs(30), serving)
        .await
        .expect("the subscription ends without any event published")
        .expect("task");
    assert_eq!(r.expect("clean end"), 0);
    assert_eq!(bus.subscribers(), 0);
}

#[tokio::test]
async fn subscribers_are_bounded() {
    let bus = EventBus::default();
    let held: Vec<_> = (0..SUBSCRIBERS_MAX)
        .map(|_| bus.subscribe().expect("under the cap"))
        .collect();
    let over = bus.subscribe().expect_err("over the cap");
    assert!(
        matches!(over, ObsError::TooManySubscribers(SUBSCRIBERS_MAX)),
        "{over}"
    );
    drop(held);
    bus.subscribe().expect("room again");
}

#[tokio::test]
async fn corrupt_or_overlong_lines_are_refused() {
    let (mut w, r) = tokio::io::duplex(1 << 20);
    w.write_all(b"{\"time\":\"t\",\"kind\":\"leave\",\"member\":\"a\"}\nnot json\n")
        .await
        .expect("write");
    drop(w);
    let mut out = Vec::new();
    let err = copy_event_lines(r, &mut out).await.expect_err("refused");
    assert!(matches!(err, ObsError::BadEventLine(_)), "{err}");
    assert_eq!(
        out.iter().filter(|&&b| b == b'\n').count(),
        1,
        "the good line got through"
    );

    let (mut w, r) = tokio::io::duplex(1 << 20);
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&vec![b'x'; EVENT_LINE_BYTES_MAX + 10]).await;
    });
    let err = copy_event_lines(r, &mut Vec::new())
        .await
        .expect_err("refused");
    assert!(
        matches!(err, ObsError::EventLineTooLong(EVENT_LINE_BYTES_MAX)),
        "{err}"
    );
    writer.await.expect("writer");
}

#[tokio::test]
async fn unreachable_member_is_a_clear_error() {
    let port = common::free_port();
    let err = follow_events(&format!("127.0.0.1:{port}"), &mut Vec::new())
        .await
        .expect_err("nobody listens");
    assert!(matches!(err, ObsError::Io(_)), "{err}");
}

/// What a subscriber knows after folding the events it received.
#[derive(Debug, Default, PartialEq)]
struct Picture {
    joined: std::collections::BTreeSet<String>,
    hosts: std::collections::BTreeMap<String, String>,
    pairs: std::collections::BTreeSet<(String, String, String, u64)>,
    copy_states: std::collections::BTreeMap<String, CopyState>,
}

impl Picture {
    fn fold(&mut self, event: &Event) {
        match event.clone() {
            Event::Join { member, .. } => {
                assert!(self.joined.insert(member), "joined twice: {event:?}");
            }
            Event::Leave { member } | Event::Fail { member } => {
                assert!(self.joined.remove(&member), "not joined: {event:?}");
            }
            Event::HostChange {
                resource, from, to, ..
            } => {
                assert_eq!(self.hosts.get(&resource), from.as_ref(), "{event:?}");
                match to {
                    Some(to) => self.hosts.insert(resource, to),
                    None => self.hosts.remove(&resource),
                };
            }
            Event::MirroringStart {
                resource,
                from,
                to,
                epoch,
            } => {
                self.copy_states
                    .insert(resource.clone(), CopyState::Unknown);
                assert!(self.pairs.insert((resource, from, to, epoch)), "{event:?}");
            }
            Event::MirroringStop {
                resource,
                from,
                to,
                epoch,
            } => {
                self.copy_states.remove(&resource);
                assert!(self.pairs.remove(&(resource, from, to, epoch)), "{event:?}");
            }
            Event::SyncState {
                resource,
                old,
                state,
                ..
            } => {
                assert_eq!(self.copy_states.get(&resource), Some(&old), "{event:?}");
                self.copy_states.insert(resource, state);
            }
            _ => {}
        }
    }

    fn of(state: &GroupState) -> Picture {
        let name = |m: MemberId| state.domain.members[m.index()].name.clone();
        Picture {
            joined: state
                .domain
                .member_ids()
                .filter(|&m| state.is_joined(m))
                .map(name)
                .collect(),
            hosts: state
                .domain
                .sites
                .iter()
                .zip(&state.resources)
                .filter_map(|(s, r)| r.host.map(|h| (s.resource.to_string(), name(h))))
                .collect(),
            pairs: state
                .mirrors
                .iter()
                .map(|p| (p.resource.to_string(), name(p.from), name(p.to), p.epoch))
                .collect(),
            copy_states: state
                .mirrors
                .iter()
                .map(|p| (p.resource.to_string(), p.sync.state))
                .collect(),
        }
    }
}

proptest::proptest! {
    /// Folding the events of every step rebuilds the state's members, hosts,
    /// pairs and copy states: no change goes unreported, none is invented.
    #[test]
    fn events_of_every_step_rebuild_the_state(ops in proptest::collection::vec((0u8..4, 0u32..4, 0usize..4), 1..40)) {
        let t = Two::new();
        let states = [CopyState::Resyncing, CopyState::UpToDate, CopyState::SplitBrain, CopyState::Failed];
        let mut state = t.empty.clone();
        let mut picture = Picture::default();
        for (op, member, k) in ops {
            let m = MemberId(member);
            let cmd = match op {
                0 => GroupCommand::Join {
                    member: m,
                    subgroups: vec![res(if member < 2 { "payroll-prod" } else { "payroll-dr" })],
                    fingerprint: state.domain.fingerprint,
                },
                1 => GroupCommand::Leave { member: m },
                2 => GroupCommand::Fail { member: m },
                _ => match state.mirrors.first() {
                    Some(p) => GroupCommand::SyncProgress {
                        member: p.from,
                        resource: p.resource.clone(),
                        epoch: p.epoch,
                        report: SyncReport { state: states[k], ..SyncReport::default() },
                    },
                    None => continue,
                },
            };
            let mut next = state.clone();
            if next.apply(&cmd).is_err() {
                continue;
            }
            for e in diff_events(&state, &next) {
                picture.fold(&e);
            }
            proptest::prop_assert_eq!(&picture, &Picture::of(&next));
            state = next;
        }
    }
}
