//! Scenario helpers: every join order, random churn between joins, a
//! replay of the log on a fresh replica, arbitrary commands.

use super::invariants::check_state;
use super::sim::{Cluster, DISK};
use geomirror::group::{DomainSpec, GroupCommand, GroupState, MemberId};
use rand::rngs::StdRng;
use rand::Rng;

/// Between two joins: random leaves, crashes, false suspicions, disk
/// losses and restarts.
pub fn churn(c: &mut Cluster, rng: &mut StdRng) {
    for _ in 0..rng.random_range(0..3) {
        let n = c.alive.len();
        let m = MemberId(rng.random_range(0..n as u32));
        let up = c.alive[m.index()];
        match rng.random_range(0..6) {
            0 if up => c.stop(m),
            1 if up => c.crash(m),
            2 if up && c.state().is_joined(m) => c.suspect(m),
            3 if up => c.lose_disk(m, 0),
            4 if !up && c.log.iter().any(|x| joined_by(x, m)) => c.start(m),
            _ => {}
        }
    }
}

fn joined_by(cmd: &GroupCommand, m: MemberId) -> bool {
    matches!(cmd, GroupCommand::Join { member, .. } if *member == m)
}

/// A fresh replica that replays the log ends in the same state.
pub fn replay_matches(c: &Cluster) {
    let mut fresh = GroupState::default();
    for cmd in &c.log {
        let _ = fresh.apply(cmd);
    }
    assert_eq!(&fresh, c.state());
    check_state(&fresh);
}

pub fn permutations(items: &mut Vec<MemberId>, k: usize, out: &mut Vec<Vec<MemberId>>) {
    if k == items.len() {
        out.push(items.clone());
        return;
    }
    for i in k..items.len() {
        items.swap(k, i);
        permutations(items, k + 1, out);
        items.swap(k, i);
    }
}

/// One arbitrary command, valid or not, for the property below.
pub fn arbitrary_command(
    kind: u8,
    member: u32,
    mask: u8,
    epoch: u64,
    spec: &DomainSpec,
) -> GroupCommand {
    let member = MemberId(member);
    let resource = spec.sites[usize::from(mask) % spec.sites.len()]
        .resource
        .clone();
    match kind % 5 {
        0 => GroupCommand::Join {
            member,
            subgroups: spec
                .sites
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, s)| s.resource.clone())
                .collect(),
            fingerprint: spec.fingerprint,
        },
        1 => GroupCommand::Leave { member },
        2 => GroupCommand::Fail { member },
        3 => GroupCommand::ResourceConfig {
            member,
            resource,
            epoch,
            config: DISK,
        },
        _ => GroupCommand::SyncProgress {
            member,
            resource,
            epoch,
            report: Default::default(),
        },
    }
}
