//! The join protocol and the group state, run as a simulated cluster over
//! one ordered log: Fig. 5's roles, host stickiness, failover order, every
//! join order of a three-site group with leaves and failures in between.

#[path = "group_support/mod.rs"]
mod support;

use geomirror::config::NbdAddress;
use geomirror::group::Desired;
use geomirror::group::{
    step, Action, CopyState, DomainSpec, Event, GroupCommand, GroupState, MemberId, MemberStatus,
    ResourceId,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use support::invariants::{check_actions, check_state};
use support::scenario::{arbitrary_command, churn, permutations, replay_matches};
use support::sim::{assert_runs, run_actions, Cluster, DISK};
use support::{accessible, domain, id, DEEP_PROD, THREE_SITES, TWO_SITES};

fn res(s: &str) -> ResourceId {
    ResourceId::from(s)
}

fn unix(path: &str) -> NbdAddress {
    NbdAddress::Unix(path.into())
}

#[test]
fn fig5_backup_order_join_gives_production_and_copy_hosts() {
    let d = domain(TWO_SITES);
    let (a1, a2, b1, b2) = (id(&d, "a1"), id(&d, "a2"), id(&d, "b1"), id(&d, "b2"));
    let (prod, dr) = (res("payroll-prod"), res("payroll-dr"));
    let mut c = Cluster::new(d.clone());

    // Block 102: the first member seeds the group state from its own copy,
    // then (block 104) joins with its site.
    let first = step(
        &GroupState::default(),
        a1,
        Event::Started {
            accessible: accessible(&d, a1),
            domain: DomainSpec::from(&d),
        },
    );
    assert!(matches!(
        first[0],
        Action::Propose(GroupCommand::Configure { .. })
    ));
    assert!(matches!(
        &first[1],
        Action::Propose(GroupCommand::Join { member, subgroups, .. })
            if *member == a1 && subgroups.as_slice() == std::slice::from_ref(&prod)
    ));

    // Blocks 106, 110, 112, 118: a1 hosts the production copy, sends its
    // configuration, has no copy host to mirror to yet, serves the volume.
    c.start(a1);
    assert_eq!(c.state().production_host(), Some(a1));
    assert_eq!(c.state().epoch, 1);
    assert_eq!(
        c.log
            .iter()
            .filter(|x| matches!(x, GroupCommand::ResourceConfig { .. }))
            .count(),
        1
    );
    assert_eq!(c.running[a1.index()].serve, Some((unix("/run/a1.sock"), 1)));
    assert!(c.state().mirrors.is_empty(), "block 118: no copy host yet");

    // Blocks 106–108: a2 only accesses the production copy and receives
    // its configuration from the host.
    let mark = c.history.len();
    c.start(a2);
    assert_eq!(
        c.actions_of(a2, mark),
        vec![Action::ApplyConfig {
            resource: prod.clone(),
            from: a1,
            config: DISK
        }]
    );
    assert_eq!(c.state().production_host(), Some(a1));

    // Blocks 110, 114–116 on b1 and 120–122 on a1: the lowest-numbered
    // backup at the copy site hosts the mirror copy and mirroring starts.
    let mark = c.history.len();
    c.start(b1);
    assert_eq!(c.state().host(&dr), Some(b1));
    assert_eq!(
        c.actions_of(b1, mark),
        vec![
            Action::OpenDisk {
                resource: dr.clone(),
                epoch: 2,
                recorded: None,
            },
            Action::SendConfig {
                resource: dr.clone(),
                epoch: 2
            },
            Action::ExpectMirroring {
                resource: dr.clone(),
                from: a1,
                epoch: 2
            },
        ]
    );
    assert_eq!(
        c.actions_of(a1, mark),
        vec![Action::StartMirroring {
            resource: dr.clone(),
            to: b1,
            epoch: 2
        }]
    );
    assert_eq!(c.state().epoch, 2);
    let b1_joined = c
        .log
        .iter()
        .position(|x| matches!(x, GroupCommand::Join { member, .. } if *member == b1))
        .expect("b1 joined");
    assert_eq!(
        c.log.len() - b1_joined,
        3,
        "join, config, sync report, nothing else"
    );
    let pair = &c.state().mirrors[0];
    assert_eq!((pair.from, pair.to, pair.epoch), (a1, b1, 2));
    assert_eq!(pair.sync.state, CopyState::UpToDate);

    // b2 backs up the copy: configuration from b1, no role.
    let mark = c.history.len();
    c.start(b2);
    assert_eq!(
        c.actions_of(b2, mark),
        vec![Action::ApplyConfig {
            resource: dr.clone(),
            from: b1,
            config: DISK
        }]
    );
    assert_eq!(c.state().epoch, 2, "a backup joining changes no host");
    assert_eq!(c.state().mirrors.len(), 1);
}

#[test]
fn fig5_copy_host_first_waits_for_the_production_host() {
    // "Should the copy site host later join the group, mirroring will be
    // initiated at that later time" — and the same the other way round.
    let d = domain(TWO_SITES);
    let (a1, b1) = (id(&d, "a1"), id(&d, "b1"));
    let mut c = Cluster::new(d);
    c.start(b1);
    assert!(
        c.state().mirrors.is_empty(),
        "block 114: no production host yet"
    );
    assert!(c.running[b1.index()].mirror_from.is_empty());
    let mark = c.history.len();
    c.start(a1);
    let actions = &c.actions_of(b1, mark);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::ExpectMirroring { from, .. } if *from == a1)),
        "{actions:?}"
    );
    assert_eq!(c.state().mirrors.len(), 1);
}

#[test]
fn host_keeps_its_resource_when_a_lower_numbered_member_joins() {
    let d = domain(TWO_SITES);
    let (a1, a2) = (id(&d, "a1"), id(&d, "a2"));
    let mut c = Cluster::new(d);
    c.start(a2);
    assert_eq!(c.state().production_host(), Some(a2));
    let epoch = c.state().epoch;
    c.start(a1);
    assert_eq!(
        c.state().production_host(),
        Some(a2),
        "a1 does not pre-empt a2"
    );
    assert_eq!(c.state().epoch, epoch, "no host change, no new epoch");
    assert!(c.running[a1.index()].hosted.is_empty());
    assert!(c.running[a1.index()].serve.is_none());
}

#[test]
fn failover_goes_to_the_first_joined_member_in_backup_order() {
    let d = domain(DEEP_PROD);
    let (a1, a2, a3, b1) = (id(&d, "a1"), id(&d, "a2"), id(&d, "a3"), id(&d, "b1"));
    let mut c = Cluster::new(d);
    for m in [a3, a2, a1, b1] {
        c.start(m);
    }
    assert_eq!(c.state().production_host(), Some(a3), "first to join hosts");
    let e0 = c.state().epoch;
    c.crash(a3);
    assert_eq!(c.state().status(a3), MemberStatus::Failed);
    assert_eq!(
        c.state().production_host(),
        Some(a1),
        "a1 is first in backup order"
    );
    assert_eq!(c.state().epoch, e0 + 1);
    assert_eq!(
        c.state().mirrors[0].from,
        a1,
        "mirroring follows the new host"
    );
    c.start(a3);
    assert_eq!(
        c.state().production_host(),
        Some(a1),
        "a3 returns as a backup"
    );
    c.stop(a1);
    assert_eq!(c.state().production_host(), Some(a2));
    c.crash(a2);
    assert_eq!(c.state().production_host(), Some(a3));
    c.crash(a3);
    assert_eq!(c.state().production_host(), None);
    assert!(
        c.state().mirrors.is_empty(),
        "no production host, no mirroring"
    );
    assert_eq!(c.state().epoch, e0 + 4);
}

#[test]
fn copy_host_failover_restarts_mirroring_under_a_new_epoch() {
    let d = domain(THREE_SITES);
    let (a1, b1, b2) = (id(&d, "a1"), id(&d, "b1"), id(&d, "b2"));
    let dr = res("ledger-dr");
    let mut c = Cluster::new(d);
    for m in [a1, b1, b2] {
        c.start(m);
    }
    let old = c.state().mirrors[0].clone();
    let mark = c.history.len();
    c.crash(b1);
    let new = c.state().mirrors[0].clone();
    assert_eq!((new.from, new.to), (a1, b2));
    assert!(new.epoch > old.epoch);
    let actions = c.actions_of(a1, mark);
    assert!(actions.contains(&Action::StopMirroring {
        resource: dr.clone(),
        to: b1
    }));
    assert!(actions.contains(&Action::StartMirroring {
        resource: dr,
        to: b2,
        epoch: new.epoch
    }));
}

#[test]
fn falsely_failed_member_stops_everything_and_rejoins_as_backup() {
    let d = domain(TWO_SITES);
    let (a1, a2) = (id(&d, "a1"), id(&d, "a2"));
    let mut c = Cluster::new(d);
    c.start(a1);
    c.start(a2);
    c.suspect(a1);
    assert_eq!(c.state().production_host(), Some(a2));
    assert!(c.running[a1.index()].serve.is_none(), "a1 stopped serving");
    assert!(
        c.running[a1.index()].hosted.is_empty(),
        "a1 closed its disk"
    );
}

#[test]
fn disk_loss_hands_the_resource_to_the_next_member() {
    let d = domain(THREE_SITES);
    let (a1, a2) = (id(&d, "a1"), id(&d, "a2"));
    let mut c = Cluster::new(d);
    c.start(a1);
    c.start(a2);
    c.lose_disk(a1, 0);
    assert!(c.state().is_joined(a1), "a1 stays a voting member");
    assert!(c.state().subgroups(a1).is_empty());
    assert_eq!(c.state().production_host(), Some(a2));
}

#[test]
fn every_join_order_with_leaves_and_failures_keeps_the_invariants() {
    let d = domain(THREE_SITES);
    let n = d.members.len();
    let mut orders = Vec::new();
    permutations(&mut (0..n as u32).map(MemberId).collect(), 0, &mut orders);
    assert_eq!(orders.len(), 720);
    let mut roles_seen = std::collections::BTreeSet::new();
    for (k, order) in orders.iter().enumerate() {
        for seed in 0..3u64 {
            let mut rng = StdRng::seed_from_u64(k as u64 * 1000 + seed);
            let mut c = Cluster::new(d.clone());
            for &m in order {
                c.start(m);
                churn(&mut c, &mut rng);
            }
            // Bring everyone back with all disks: the group must end
            // fully mirrored.
            for &m in order {
                if c.alive[m.index()] && c.state().subgroups(m) != accessible(&d, m) {
                    c.stop(m);
                }
                if !c.alive[m.index()] {
                    c.start(m);
                }
            }
            let s = c.state();
            assert_eq!(s.mirrors.len(), 2, "order {order:?} seed {seed}");
            roles_seen.insert((s.production_host(), s.mirrors[0].to, s.mirrors[1].to));
            replay_matches(&c);
        }
    }
    assert!(roles_seen.len() > 1, "churn moved hosts around");
}

#[test]
fn joining_in_any_order_without_churn_gives_first_joiners_the_roles() {
    let d = domain(THREE_SITES);
    let mut orders = Vec::new();
    permutations(&mut (0..6).map(MemberId).collect(), 0, &mut orders);
    for order in orders {
        let mut c = Cluster::new(d.clone());
        for &m in &order {
            c.start(m);
        }
        let first_of = |names: &[&str]| {
            let ids: Vec<MemberId> = names.iter().map(|n| id(&d, n)).collect();
            order.iter().copied().find(|m| ids.contains(m))
        };
        let s = c.state();
        assert_eq!(s.production_host(), first_of(&["a1", "a2"]));
        assert_eq!(s.host(&res("ledger-dr")), first_of(&["b1", "b2"]));
        assert_eq!(s.host(&res("ledger-dr2")), first_of(&["c1"]));
        assert_eq!(s.epoch, 3, "one epoch per host assignment");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Whatever commands arrive, in whatever order, every action `step`
    /// gives any member is backed by the state: disks opened only by their
    /// host, mirroring only from the production host to a hosted copy,
    /// serving only by the production host; and acting on a step's actions
    /// always lands a member exactly on its desired roles.
    #[test]
    fn step_actions_are_consistent_with_the_state(
        cmds in proptest::collection::vec((0u8..5, 0u32..7, 0u8..8, 0u64..6), 1..40)
    ) {
        let d = domain(THREE_SITES);
        let spec = DomainSpec::from(&d);
        let mut s = GroupState::new(&d);
        let members: Vec<MemberId> = spec.member_ids().collect();
        let mut running: Vec<Desired> = vec![Desired::default(); members.len()];
        for (kind, member, mask, epoch) in cmds {
            let before = s.clone();
            let cmd = arbitrary_command(kind, member, mask, epoch, &spec);
            if s.apply(&cmd).is_err() {
                proptest::prop_assert_eq!(&s, &before);
            }
            check_state(&s);
            for &m in &members {
                // From what it ran before, and from nothing (a restart).
                let want = Desired::of(&s, m);
                for from in [running[m.index()].clone(), Desired::default()] {
                    let mut run = from.clone();
                    let actions = step(&s, m, Event::Committed { running: from });
                    check_actions(&s, m, &actions);
                    run_actions(&mut run, m, actions);
                    assert_runs(&mut run, &want, m);
                }
                running[m.index()] = want;
            }
        }
    }
}
