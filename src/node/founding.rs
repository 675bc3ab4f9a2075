//! Entering the group at start-up: join through a running member, or found
//! the group when the whole recovery domain says this member may.
//!
//! Block 72 of the join protocol: "if J is the first member of the group,
//! then J uses its copy of the group state". A member cannot tell a member
//! that is down from one it cannot reach, so "first" is decided only from
//! answers, never from silence:
//!
//! - a member that is already a voter (a restart) has nothing to do;
//! - if some member answers as a voter, join through it;
//! - otherwise a member founds only when every other member of the domain
//!   answered that it has no group and is not founding one, and it is the
//!   first (lowest-numbered) of them all; every other member waits, asks
//!   again, and says whom it has not heard from. A member that reaches
//!   nobody (a partition, a reinstalled host) never founds a second group
//!   beside the real one;
//! - `geomirror up --bootstrap` is the escape hatch for a domain where some
//!   member is gone for good (as etcd's `--initial-cluster-state new` or
//!   DRBD's forced primary): that member founds with whatever answers,
//!   provided no member that answers belongs to a group or is founding one.
//!
//! A founder raises its founding mark, asks every member once more, and
//! only then initializes the engine (see `group::engine::rendezvous`):
//! of two members racing to found, the one that checks last sees the
//! other, so two groups are never founded from one domain.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use tokio::task::JoinSet;

use crate::config::RecoveryDomain;
use crate::group::engine::{Engine, PeerPhase, Probe};
use crate::group::state::GroupState;
use crate::group::MemberId;

/// Time one member has to answer a probe.
const PROBE_TIMEOUT_MS: u64 = 2_000;
/// First pause between two rounds; it doubles up to [`ROUND_PAUSE_MAX_MS`].
const ROUND_PAUSE_MIN_MS: u64 = 200;
/// Longest pause between two rounds (a jitter of up to a quarter is added,
/// so members started together do not keep probing in lockstep).
const ROUND_PAUSE_MAX_MS: u64 = 3_000;
/// A waiting member repeats its reason at most this often.
const LOG_EVERY_MS: u64 = 10_000;

/// How this member may found the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Founding {
    /// Only with every other member's answer, and only as the first of them.
    Unanimous,
    /// `--bootstrap`: with whatever answers, members that do not answer
    /// counted as gone.
    Bootstrap,
}

/// What one round decided.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Join through these voters.
    Join(Vec<SocketAddr>),
    /// Found the group (after the final check); the members not heard
    /// from (only ever non-empty with `--bootstrap`).
    Found { unheard: Vec<String> },
    /// Wait and ask again, for this reason.
    Wait(String),
}

/// The rule, as a pure function of what member `me` saw: `probes` maps
/// each other member to its answer; `me_initialized` says whether this
/// member's engine already belongs to a group (it was removed from it).
fn decide(
    me: MemberId,
    me_initialized: bool,
    founding: Founding,
    probes: &BTreeMap<MemberId, (String, SocketAddr, Probe)>,
) -> Decision {
    let voters: Vec<SocketAddr> = probes
        .values()
        .filter(|(_, _, p)| matches!(p, Probe::Answered(PeerPhase { voter: true, .. })))
        .map(|(_, a, _)| *a)
        .collect();
    if !voters.is_empty() {
        return Decision::Join(voters);
    }
    if me_initialized {
        return Decision::Wait(
            "this member was removed from the group and no voter of it answers: waiting \
             for one (or remove the state directory to found a new group)"
                .into(),
        );
    }
    let mut unheard = Vec::new();
    let mut first = None;
    for (id, (name, _, p)) in probes {
        let why = match p {
            Probe::Down => {
                unheard.push(name.clone());
                continue;
            }
            Probe::Unknown(e) => format!("member {name} does not answer properly ({e})"),
            Probe::Answered(ph) if ph.initialized => {
                format!("member {name} belongs to a group but is not a voter of it")
            }
            Probe::Answered(ph) if ph.founding => format!("member {name} is founding the group"),
            Probe::Answered(_) => {
                if *id < me && first.is_none() {
                    first = Some(name.clone());
                }
                continue;
            }
        };
        return Decision::Wait(why);
    }
    if founding == Founding::Bootstrap {
        return Decision::Found { unheard };
    }
    if !unheard.is_empty() {
        return Decision::Wait(format!(
            "no group found, and no answer yet from {}: the group is founded only once every \
             member of the recovery domain answers (if one is gone for good, start one member \
             with --bootstrap)",
            unheard.join(", ")
        ));
    }
    if let Some(name) = first {
        return Decision::Wait(format!(
            "member {name} comes first in the recovery domain: it founds the group"
        ));
    }
    Decision::Found { unheard }
}

/// Ask every other member where it stands, all at once.
async fn probe_all(
    engine: &Arc<Engine<GroupState>>,
    peers: &BTreeMap<MemberId, (String, SocketAddr)>,
) -> BTreeMap<MemberId, (String, SocketAddr, Probe)> {
    let mut set = JoinSet::new();
    for (id, (name, addr)) in peers {
        let (engine, id, name, addr) = (engine.clone(), *id, name.clone(), *addr);
        set.spawn(async move {
            let p = engine
                .probe(addr, Duration::from_millis(PROBE_TIMEOUT_MS))
                .await;
            (id, (name, addr, p))
        });
    }
    let mut out = BTreeMap::new();
    while let Some(r) = set.join_next().await {
        if let Ok((id, v)) = r {
            out.insert(id, v);
        }
    }
    // A probe task that panicked counts as an unknown member: never as absent.
    for (id, (name, addr)) in peers {
        out.entry(*id)
            .or_insert_with(|| (name.clone(), *addr, Probe::Unknown("probe failed".into())));
    }
    out
}

/// Join the engine's membership or found the group as `founding` allows;
/// returns whether this member founded it. Retries until it is in, telling
/// `waiting` why after each round; the caller bounds it with its shutdown
/// signal.
pub async fn enter_group(
    engine: &Arc<Engine<GroupState>>,
    domain: &RecoveryDomain,
    me: MemberId,
    founding: Founding,
    waiting: impl Fn(&str),
) -> anyhow::Result<bool> {
    let mut peers = BTreeMap::new();
    for (i, m) in domain.members.iter().enumerate() {
        if i as u32 != me.0 {
            let a: SocketAddr = m
                .address
                .parse()
                .with_context(|| format!("member {} address {:?}", m.name, m.address))?;
            peers.insert(MemberId(i as u32), (m.name.clone(), a));
        }
    }
    let mut pause_ms = ROUND_PAUSE_MIN_MS;
    let mut said = (String::new(), Instant::now());
    loop {
        if engine.is_member() {
            return Ok(false);
        }
        let probes = probe_all(engine, &peers).await;
        let decision = decide(me, engine.is_initialized().await, founding, &probes);
        let reason = match decision {
            Decision::Join(via) => match engine.join_via(&via).await {
                Ok(()) => {
                    tracing::info!("joined the group through {via:?}");
                    return Ok(false);
                }
                Err(e) => format!("join through {via:?} failed: {e}"),
            },
            Decision::Found { .. } => {
                engine.set_founding(true);
                let again = probe_all(engine, &peers).await;
                match decide(me, engine.is_initialized().await, founding, &again) {
                    Decision::Found { unheard } => {
                        if unheard.is_empty() {
                            tracing::info!(
                                "every member answered, none belongs to a group and this one comes first: founding the group"
                            );
                        } else {
                            tracing::warn!(
                                "--bootstrap: founding the group without {}, which did not answer; no member that answered belongs to a group",
                                unheard.join(", ")
                            );
                        }
                        let r = engine.bootstrap().await.context("found the group");
                        engine.set_founding(false);
                        r?;
                        return Ok(true);
                    }
                    Decision::Join(_) => {
                        engine.set_founding(false);
                        "a group appeared while about to found one".into()
                    }
                    Decision::Wait(why) => {
                        engine.set_founding(false);
                        format!("not founding after all: {why}")
                    }
                }
            }
            Decision::Wait(why) => why,
        };
        waiting(&reason);
        if reason != said.0 {
            // Something changed (a member came up, a group appeared): the
            // next round may decide, so ask again soon.
            pause_ms = ROUND_PAUSE_MIN_MS;
        }
        if reason != said.0 || said.1.elapsed() >= Duration::from_millis(LOG_EVERY_MS) {
            tracing::info!("not in the group yet: {reason}; asking again");
            said = (reason, Instant::now());
        }
        let jitter = rand::rng().random_range(0..=pause_ms / 4);
        tokio::time::sleep(Duration::from_millis(pause_ms + jitter)).await;
        pause_ms = (pause_ms * 2).min(ROUND_PAUSE_MAX_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use Founding::{Bootstrap, Unanimous};

    fn seen(list: &[(u32, Probe)]) -> BTreeMap<MemberId, (String, SocketAddr, Probe)> {
        list.iter()
            .map(|(i, p)| {
                let a: SocketAddr = format!("127.0.0.1:{}", 4000 + i).parse().expect("addr");
                (MemberId(*i), (format!("m{i}"), a, p.clone()))
            })
            .collect()
    }

    fn answered(initialized: bool, voter: bool, founding: bool) -> Probe {
        Probe::Answered(PeerPhase {
            initialized,
            voter,
            founding,
        })
    }

    fn empty() -> Probe {
        answered(false, false, false)
    }

    fn found() -> Decision {
        Decision::Found {
            unheard: Vec::new(),
        }
    }

    #[test]
    fn a_voter_in_sight_is_joined_never_founded_beside() {
        let p = seen(&[(0, Probe::Down), (2, answered(true, true, false))]);
        for f in [Unanimous, Bootstrap] {
            assert!(matches!(decide(MemberId(1), false, f, &p), Decision::Join(v) if v.len() == 1));
        }
    }

    #[test]
    fn the_first_member_founds_once_every_member_answered() {
        let p = seen(&[(1, empty()), (2, empty())]);
        assert_eq!(decide(MemberId(0), false, Unanimous, &p), found());
    }

    #[test]
    fn a_lone_member_never_founds_and_names_whom_it_has_not_heard_from() {
        let p = seen(&[(1, Probe::Down), (2, Probe::Down)]);
        match decide(MemberId(0), false, Unanimous, &p) {
            Decision::Wait(why) => assert!(why.contains("m1, m2"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Some heard, one not: still waiting, for that one.
        let p = seen(&[(1, empty()), (2, Probe::Down)]);
        match decide(MemberId(0), false, Unanimous, &p) {
            Decision::Wait(why) => assert!(why.contains("m2") && !why.contains("m1"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A later member whose earlier ones are down does not step in.
        let p = seen(&[(0, Probe::Down), (2, empty())]);
        assert!(matches!(
            decide(MemberId(1), false, Unanimous, &p),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn a_later_member_waits_for_the_first_one() {
        let p = seen(&[(0, empty()), (2, empty())]);
        match decide(MemberId(1), false, Unanimous, &p) {
            Decision::Wait(why) => assert!(why.contains("m0 comes first"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bootstrap_founds_with_whatever_answers() {
        let p = seen(&[(0, empty()), (2, Probe::Down)]);
        assert_eq!(
            decide(MemberId(1), false, Bootstrap, &p),
            Decision::Found {
                unheard: vec!["m2".into()]
            }
        );
        let p = seen(&[(1, Probe::Down), (2, Probe::Down)]);
        assert!(matches!(
            decide(MemberId(0), false, Bootstrap, &p),
            Decision::Found { .. }
        ));
    }

    #[test]
    fn bootstrap_never_founds_beside_a_group_or_a_founder() {
        for other in [
            answered(true, false, false),
            answered(false, false, true),
            Probe::Unknown("handshake".into()),
        ] {
            let p = seen(&[(1, other.clone()), (2, Probe::Down)]);
            assert!(
                matches!(decide(MemberId(0), false, Bootstrap, &p), Decision::Wait(_)),
                "{other:?}"
            );
        }
        let p = seen(&[(1, Probe::Down)]);
        assert!(matches!(
            decide(MemberId(0), true, Bootstrap, &p),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn a_founding_mark_or_a_mute_member_holds_everyone_back() {
        // Even the first member waits: the mark may belong to a member that
        // checked before this one was listening, and is founding now.
        let p = seen(&[(1, answered(false, false, true))]);
        assert!(matches!(
            decide(MemberId(0), false, Unanimous, &p),
            Decision::Wait(_)
        ));
        let p = seen(&[(1, Probe::Unknown("handshake".into()))]);
        assert!(matches!(
            decide(MemberId(0), false, Unanimous, &p),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn a_removed_member_never_founds_a_second_group() {
        let p = seen(&[(1, empty()), (2, empty())]);
        assert!(matches!(
            decide(MemberId(0), true, Unanimous, &p),
            Decision::Wait(_)
        ));
        let p = seen(&[(1, answered(true, false, false)), (2, empty())]);
        assert!(matches!(
            decide(MemberId(0), false, Unanimous, &p),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn two_racing_members_cannot_both_pass_the_final_check() {
        // Each raised its mark, then checks the other: whatever the order
        // and whichever of them was started with --bootstrap, at most one
        // sees a clear field.
        for (f0, f1) in [
            (Unanimous, Unanimous),
            (Unanimous, Bootstrap),
            (Bootstrap, Unanimous),
            (Bootstrap, Bootstrap),
        ] {
            let lo = decide(
                MemberId(0),
                false,
                f0,
                &seen(&[(1, answered(false, false, true))]),
            );
            let hi = decide(
                MemberId(1),
                false,
                f1,
                &seen(&[(0, answered(false, false, true))]),
            );
            assert!(
                !(matches!(lo, Decision::Found { .. }) && matches!(hi, Decision::Found { .. })),
                "{f0:?} {f1:?}"
            );
        }
    }
}
