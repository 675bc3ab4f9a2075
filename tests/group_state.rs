//! The group state on its own (refused commands change nothing and say
//! why; configuration, sync reports) and single join-protocol steps on it.

#[path = "group_support/mod.rs"]
mod support;

use geomirror::group::state::{Refusal, ReportedConfig};
use geomirror::group::{
    step, Action, CopyState, Desired, DomainSpec, Event, GroupCommand, GroupState, MemberId,
    ResourceId, StateError, TakeoverRefusal,
};
use support::sim::{Cluster, DISK};
use support::{accessible, domain, id, DEEP_PROD, THREE_SITES, TWO_SITES};

fn res(s: &str) -> ResourceId {
    ResourceId::from(s)
}

#[test]
fn refused_commands_leave_the_state_unchanged_and_say_why() {
    let d = domain(TWO_SITES);
    let (a1, b1) = (id(&d, "a1"), id(&d, "b1"));
    let mut s = GroupState::new(&d);
    let fp = s.domain.fingerprint;
    let join = |member, subgroups: Vec<&str>, fingerprint| GroupCommand::Join {
        member,
        subgroups: subgroups.into_iter().map(res).collect(),
        fingerprint,
    };
    let cases: Vec<(GroupCommand, &str)> = vec![
        (join(MemberId(9), vec![], fp), "not in the recovery domain"),
        (
            join(a1, vec!["payroll-prod"], Default::default()),
            "has recovery domain",
        ),
        (join(a1, vec!["other"], fp), "not in the recovery domain"),
        (join(a1, vec!["payroll-prod", "payroll-prod"], fp), "twice"),
        (join(b1, vec!["payroll-prod"], fp), "declares site \"dr\""),
        (GroupCommand::Leave { member: a1 }, "is not joined"),
        (GroupCommand::Fail { member: a1 }, "is not joined"),
    ];
    for (cmd, words) in cases {
        let before = s.clone();
        let err = s.apply(&cmd).expect_err("refused");
        assert!(err.to_string().contains(words), "{err} lacks {words:?}");
        assert_eq!(s, before, "{cmd:?} changed the state");
    }
    s.apply(&join(a1, vec!["payroll-prod"], fp)).expect("joins");
    let config = |member, epoch, config| GroupCommand::ResourceConfig {
        member,
        resource: res("payroll-prod"),
        epoch,
        config,
    };
    let before = s.clone();
    let not_host = s.apply(&config(b1, 1, DISK)).expect_err("b1 is no host");
    assert!(matches!(not_host, StateError::NotHost { .. }));
    let stale = s.apply(&config(a1, 0, DISK)).expect_err("stale");
    assert!(matches!(stale, StateError::StaleEpoch { .. }));
    let mut bad = DISK;
    bad.block_size_bytes = 3000;
    let bad = s.apply(&config(a1, 1, bad)).expect_err("bad block size");
    assert!(bad.to_string().contains("block size 3000"), "{bad}");
    let report = GroupCommand::SyncProgress {
        member: a1,
        resource: res("payroll-dr"),
        epoch: 1,
        report: Default::default(),
    };
    assert!(matches!(s.apply(&report), Err(StateError::NoMirror { .. })));
    assert_eq!(s, before);
    s.apply(&config(a1, 1, DISK))
        .expect("the host sends its configuration");
}

#[test]
fn witness_and_serverless_members_cannot_declare_resources() {
    let d = domain(THREE_SITES);
    let w1 = id(&d, "w1");
    let mut s = GroupState::new(&d);
    let fp = s.domain.fingerprint;
    let err = s
        .apply(&GroupCommand::Join {
            member: w1,
            subgroups: vec![res("ledger-dr")],
            fingerprint: fp,
        })
        .expect_err("a witness has no disks");
    assert!(matches!(err, StateError::WitnessWithResource { .. }));
    s.apply(&GroupCommand::Join {
        member: w1,
        subgroups: vec![],
        fingerprint: fp,
    })
    .expect("a witness joins to vote");
    assert!(s.hosted_by(w1).is_empty());
    // b1 has no nbd address: it may not become production host.
    let b1 = id(&d, "b1");
    let err = s
        .apply(&GroupCommand::Join {
            member: b1,
            subgroups: vec![res("ledger-prod")],
            fingerprint: fp,
        })
        .expect_err("no nbd address");
    assert!(matches!(err, StateError::CannotServe { .. }));
}

#[test]
fn configure_installs_once_and_refuses_another_domain() {
    let d = domain(TWO_SITES);
    let other = domain(THREE_SITES);
    let mut s = GroupState::default();
    let join = GroupCommand::Join {
        member: MemberId(0),
        subgroups: vec![],
        fingerprint: d.fingerprint(),
    };
    assert_eq!(s.apply(&join), Err(StateError::NotConfigured));
    let mine = GroupCommand::Configure {
        domain: DomainSpec::from(&d),
    };
    s.apply(&mine).expect("first configure installs");
    assert_eq!(s, GroupState::new(&d));
    s.apply(&mine).expect("the same domain again is a no-op");
    let theirs = GroupCommand::Configure {
        domain: DomainSpec::from(&other),
    };
    assert!(matches!(
        s.apply(&theirs),
        Err(StateError::DomainMismatch { .. })
    ));
    let mut empty = GroupState::default();
    let bad = GroupCommand::Configure {
        domain: DomainSpec {
            fingerprint: d.fingerprint(),
            ..DomainSpec::default()
        },
    };
    assert!(matches!(empty.apply(&bad), Err(StateError::BadDomain(_))));
}

#[test]
fn sync_reports_come_only_from_the_production_host_for_the_current_pair() {
    let d = domain(TWO_SITES);
    let (a1, b1) = (id(&d, "a1"), id(&d, "b1"));
    let mut c = Cluster::new(d);
    c.start(a1);
    c.start(b1);
    let epoch = c.state().mirrors[0].epoch;
    let mut s = c.state().clone();
    let report = |member, epoch| GroupCommand::SyncProgress {
        member,
        resource: res("payroll-dr"),
        epoch,
        report: geomirror::group::SyncReport {
            state: CopyState::Resyncing,
            resynced_bytes: 4096,
            bytes_to_go: 8192,
            lag_bytes: 0,
            ..Default::default()
        },
    };
    assert!(matches!(
        s.apply(&report(b1, epoch)),
        Err(StateError::NotHost { .. })
    ));
    assert!(matches!(
        s.apply(&report(a1, epoch - 1)),
        Err(StateError::StaleEpoch { .. })
    ));
    s.apply(&report(a1, epoch)).expect("accepted");
    assert_eq!(s.mirrors[0].sync.bytes_to_go, 8192);
    assert_eq!(s.mirrors[0].sync.state, CopyState::Resyncing);
}

#[test]
fn re_evaluating_an_unchanged_state_gives_no_actions() {
    let d = domain(THREE_SITES);
    let mut c = Cluster::new(d.clone());
    for name in ["a1", "b1", "c1", "a2"] {
        c.start(id(&d, name));
    }
    for m in d.members.iter().map(|x| id(&d, &x.name)) {
        let running = Desired::of(c.state(), m);
        let again = step(c.state(), m, Event::Committed { running });
        assert_eq!(again, Vec::new(), "{m} acts twice on the same state");
    }
}

#[test]
fn lost_peer_is_reported_failed_once_and_stopping_proposes_leave() {
    let d = domain(TWO_SITES);
    let (a1, a2, b1) = (id(&d, "a1"), id(&d, "a2"), id(&d, "b1"));
    let mut c = Cluster::new(d);
    c.start(a1);
    c.start(a2);
    let s = c.state();
    assert_eq!(
        step(s, a1, Event::MemberLost { member: a2 }),
        vec![Action::Propose(GroupCommand::Fail { member: a2 })]
    );
    assert_eq!(
        step(s, a1, Event::MemberLost { member: b1 }),
        vec![],
        "b1 never joined"
    );
    assert_eq!(
        step(s, a1, Event::MemberLost { member: a1 }),
        vec![],
        "not myself"
    );
    assert_eq!(
        step(s, a2, Event::Stopping),
        vec![Action::Propose(GroupCommand::Leave { member: a2 })]
    );
    assert_eq!(step(s, b1, Event::Stopping), vec![], "b1 is not joined");
}

#[test]
fn restart_before_failure_detection_ends_the_old_incarnation() {
    let d = domain(TWO_SITES);
    let a1 = id(&d, "a1");
    let mut c = Cluster::new(d.clone());
    c.start(a1);
    let e0 = c.state().epoch;
    // The process restarts before anyone noticed it was gone.
    c.alive[a1.index()] = false;
    c.running[a1.index()] = Default::default();
    let actions = step(
        c.state(),
        a1,
        Event::Started {
            accessible: accessible(&d, a1),
            domain: DomainSpec::from(&d),
        },
    );
    assert!(matches!(actions[0], Action::Propose(GroupCommand::Leave { member }) if member == a1));
    c.start(a1);
    assert_eq!(c.state().production_host(), Some(a1));
    assert_eq!(c.state().epoch, e0 + 2, "leave and join: two host changes");
}

#[test]
fn state_and_commands_round_trip_through_the_engine_encodings() {
    let d = domain(THREE_SITES);
    let mut c = Cluster::new(d.clone());
    for name in ["a1", "b1", "c1"] {
        c.start(id(&d, name));
    }
    let state = c.state().clone();
    let json = serde_json::to_vec(&state).expect("encode json");
    let back: GroupState = serde_json::from_slice(&json).expect("decode json");
    assert_eq!(back, state);
    let cfg = bincode::config::standard();
    let bin = bincode::serde::encode_to_vec(&state, cfg).expect("encode bincode");
    let (back, _): (GroupState, usize) =
        bincode::serde::decode_from_slice(&bin, cfg).expect("decode bincode");
    assert_eq!(back, state);
    for cmd in &c.log {
        let bin = bincode::serde::encode_to_vec(cmd, cfg).expect("encode command");
        let (back, _): (GroupCommand, usize) =
            bincode::serde::decode_from_slice(&bin, cfg).expect("decode command");
        assert_eq!(&back, cmd);
    }
}

#[test]
fn mirroring_waits_for_both_configurations_and_a_large_enough_copy() {
    use geomirror::group::{PairBlocked, ResourceConfig};
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
        .expect("joins");
    }
    let pair = s.mirrors[0].clone();
    assert_eq!(
        s.pair_blocked(&pair),
        Some(PairBlocked::ProductionConfigMissing)
    );
    assert!(
        Desired::of(&s, a1).mirror_to.is_empty(),
        "block 84 before 96"
    );
    let send = |s: &mut GroupState, member, r: &str, size_bytes| {
        let epoch = s.resource(&res(r)).expect("resource").1.host_epoch;
        s.apply(&GroupCommand::ResourceConfig {
            member,
            resource: res(r),
            epoch,
            config: ResourceConfig {
                size_bytes,
                block_size_bytes: 4096,
                label_generation: 1,
                disk_id: 1,
            },
        })
        .expect("the host sends its configuration");
    };
    send(&mut s, a1, "payroll-prod", 1 << 30);
    assert_eq!(s.pair_blocked(&pair), Some(PairBlocked::CopyConfigMissing));
    send(&mut s, b1, "payroll-dr", 1 << 29);
    assert_eq!(
        s.pair_blocked(&pair),
        Some(PairBlocked::CopyTooSmall {
            copy_bytes: 1 << 29,
            production_bytes: 1 << 30
        })
    );
    assert!(Desired::of(&s, a1).mirror_to.is_empty());
    assert!(Desired::of(&s, b1).mirror_from.is_empty());
    send(&mut s, b1, "payroll-dr", 1 << 30);
    assert_eq!(s.pair_blocked(&pair), None);
    let to = Desired::of(&s, a1).mirror_to;
    assert_eq!(to.get(&res("payroll-dr")).map(|l| l.peer), Some(b1));
    let from = Desired::of(&s, b1).mirror_from;
    assert_eq!(from.get(&res("payroll-dr")).map(|l| l.peer), Some(a1));
}

#[test]
fn member_with_another_recovery_domain_file_is_refused() {
    let d = domain(TWO_SITES);
    let a1 = id(&d, "a1");
    let mut c = Cluster::new(d.clone());
    c.start(a1);

    // is not enough, so change the mode).
    let other = domain(&TWO_SITES.replace("mode = \"sync\"", "mode = \"async\""));
    assert_ne!(other.fingerprint(), d.fingerprint());
    let a2 = id(&other, "a2");
    let actions = step(
        c.state(),
        a2,
        Event::Started {
            accessible: accessible(&other, a2),
            domain: DomainSpec::from(&other),
        },
    );
    let [Action::Propose(join)] = actions.as_slice() else {
        panic!("one join expected: {actions:?}");
    };
    let mut s = c.state().clone();
    let err = s.apply(join).expect_err("another file");
    assert!(
        matches!(err, StateError::FingerprintMismatch { .. }),
        "{err}"
    );
    assert_eq!(&s, c.state());
}

#[test]
fn losing_a_disk_the_member_does_not_use_changes_nothing() {
    let d = domain(TWO_SITES);
    let (a1, b1) = (id(&d, "a1"), id(&d, "b1"));
    let mut c = Cluster::new(d);
    c.start(a1);
    let lost = Event::DiskLost {
        resource: res("payroll-dr"),
    };
    assert_eq!(step(c.state(), a1, lost.clone()), vec![]);
    assert_eq!(step(c.state(), b1, lost), vec![], "b1 is not joined");
}

#[test]
fn refused_takeover_passes_production_to_the_next_member_and_keeps_why() {
    let d = domain(DEEP_PROD);
    let (a1, a2, a3) = (id(&d, "a1"), id(&d, "a2"), id(&d, "a3"));
    let prod = res("orders-prod");
    let mut s = GroupState::new(&d);
    let fp = s.domain.fingerprint;
    let join = |member| GroupCommand::Join {
        member,
        subgroups: vec![prod.clone()],
        fingerprint: fp,
    };
    for m in [a1, a2, a3] {
        s.apply(&join(m)).expect("joins");
    }
    let a1_epoch = s.resources[0].host_epoch;
    s.apply(&GroupCommand::ResourceConfig {
        member: a1,
        resource: prod.clone(),
        epoch: a1_epoch,
        config: DISK,
    })
    .expect("a1's configuration");
    s.apply(&GroupCommand::Leave { member: a1 })
        .expect("a1 leaves");
    let epoch = s.resources[0].host_epoch;
    assert_eq!(s.production_host(), Some(a2));

    // The new host opens its disk against a1's record, and does not serve
    // before its own configuration is in.
    let recorded = ReportedConfig {
        config: DISK,
        host: a1,
        epoch: a1_epoch,
    };
    let actions = step(
        &s,
        a2,
        Event::Committed {
            running: Desired::default(),
        },
    );
    assert_eq!(
        actions.first(),
        Some(&Action::OpenDisk {
            resource: prod.clone(),
            epoch,
            recorded: Some(recorded),
        })
    );
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::ServeVolume { .. })),
        "{actions:?}"
    );

    // Its disk is stale: it says so to the group, which elects a3.
    let refusal = TakeoverRefusal::Stale {
        recorded_by: a1,
        recorded_generation: DISK.label_generation,
        disk_generation: 3,
    };
    let refused = Event::TakeoverRefused {
        resource: prod.clone(),
        epoch,
        refusal,
    };
    let cmd = GroupCommand::TakeoverRefused {
        member: a2,
        resource: prod.clone(),
        epoch,
        refusal,
    };
    assert_eq!(
        step(&s, a2, refused.clone()),
        vec![Action::Propose(cmd.clone())]
    );
    assert_eq!(step(&s, a3, refused), vec![], "a3 hosts nothing");
    s.apply(&cmd).expect("refusal recorded");
    assert_eq!(s.production_host(), Some(a3));
    assert!(s.is_joined(a2) && s.subgroups(a2).is_empty());
    assert_eq!(
        s.resources[0].refusals,
        vec![Refusal {
            member: a2,
            epoch,
            refusal,
        }]
    );
    assert_eq!(
        s.resources[0].config,
        Some(recorded),
        "a1's record stays the one to match"
    );
    let a3_actions = step(
        &s,
        a3,
        Event::Committed {
            running: Desired::default(),
        },
    );
    assert!(
        a3_actions.contains(&Action::OpenDisk {
            resource: prod.clone(),
            epoch: s.resources[0].host_epoch,
            recorded: Some(recorded),
        }),
        "{a3_actions:?}"
    );

    // Once more from a2 (a late duplicate): refused, nothing changes.
    let before = s.clone();
    assert!(s.apply(&cmd).is_err());
    assert_eq!(s, before);

    // Restarted (its disk fixed), a2 declares the resource again: the
    // refusal is forgotten, and its disk will be checked anew if elected.
    s.apply(&join(a2)).expect("a2 declares prod again");
    assert!(s.resources[0].refusals.is_empty());
    assert_eq!(s.production_host(), Some(a3), "a live host keeps its disk");
}

#[test]
fn a_copy_disk_is_opened_against_no_record() {
    let d = domain(TWO_SITES);
    let mut c = Cluster::new(d.clone());
    for m in ["a1", "b1", "b2"] {
        c.start(id(&d, m));
    }
    let b1 = id(&d, "b1");
    let mark = c.history.len();
    c.crash(b1);
    let opened: Vec<Action> = c
        .actions_of(id(&d, "b2"), mark)
        .into_iter()
        .filter(|a| matches!(a, Action::OpenDisk { .. }))
        .collect();
    assert_eq!(
        opened,
        vec![Action::OpenDisk {
            resource: res("payroll-dr"),
            epoch: c.state().resources[1].host_epoch,
            recorded: None,
        }]
    );
}
