//! A simulated cluster: one `GroupState` replica and one running-roles model
//! per member, a single ordered log, and invariant checks after each commit.

use super::accessible;
use super::invariants::{check_actions, check_state};
use geomirror::config::RecoveryDomain;
use geomirror::group::desired::Desired;
use geomirror::group::{
    step, Action, CopyState, DomainSpec, Event, GroupCommand, GroupState, MemberId, ResourceConfig,
    SyncReport,
};
use std::collections::VecDeque;

/// The configuration every simulated host reads from its disk.
pub const DISK: ResourceConfig = ResourceConfig {
    size_bytes: 1 << 30,
    block_size_bytes: 4096,
    label_generation: 7,
    disk_id: 0xd15c,
};

/// Bound on commits per simulated run: a run that needs more is livelocked.
const COMMITS_MAX: usize = 10_000;

/// The simulated cluster.
pub struct Cluster {
    /// The recovery domain every member has.
    pub domain: RecoveryDomain,
    spec: DomainSpec,
    /// One replica of the group state per member.
    pub replicas: Vec<GroupState>,
    /// What each member runs, built only by executing its actions.
    pub running: Vec<Desired>,
    /// Whether each member's process is up.
    pub alive: Vec<bool>,
    /// Every committed command, accepted or refused, in order.
    pub log: Vec<GroupCommand>,
    /// Proposals waiting to be committed, in order.
    queue: VecDeque<GroupCommand>,
    /// Every action a member took after a commit, in order.
    pub history: Vec<(MemberId, Action)>,
}

impl Cluster {
    /// A cluster whose members have not started.
    pub fn new(domain: RecoveryDomain) -> Cluster {
        let n = domain.members.len();
        Cluster {
            spec: DomainSpec::from(&domain),
            domain,
            replicas: vec![GroupState::default(); n],
            running: vec![Desired::default(); n],
            alive: vec![false; n],
            log: Vec::new(),
            queue: VecDeque::new(),
            history: Vec::new(),
        }
    }

    /// The group state (every replica is checked equal to it).
    pub fn state(&self) -> &GroupState {
        &self.replicas[0]
    }

    fn members(&self) -> impl Iterator<Item = MemberId> {
        (0..self.domain.members.len() as u32).map(MemberId)
    }

    /// The actions `m` took after commits, from history entry `since` on.
    pub fn actions_of(&self, m: MemberId, since: usize) -> Vec<Action> {
        self.history[since..]
            .iter()
            .filter(|(who, _)| *who == m)
            .map(|(_, a)| a.clone())
            .collect()
    }

    /// Starts `m`'s process: block 72/74, then commits until quiet.
    pub fn start(&mut self, m: MemberId) {
        assert!(!self.alive[m.index()], "{m} already up");
        self.alive[m.index()] = true;
        self.running[m.index()] = Desired::default();
        let event = Event::Started {
            accessible: accessible(&self.domain, m),
            domain: self.spec.clone(),
        };
        let actions = step(&self.replicas[m.index()], m, event);
        self.execute(m, actions);
        self.settle();
    }

    /// `m` is asked to stop: it proposes its leave, then exits once the
    /// leave is committed.
    pub fn stop(&mut self, m: MemberId) {
        let actions = step(&self.replicas[m.index()], m, Event::Stopping);
        self.execute(m, actions);
        self.settle();
        assert!(
            !self.state().is_joined(m),
            "{m} still joined after its leave"
        );
        assert_eq!(
            self.running[m.index()],
            Desired::default(),
            "{m} stopped all"
        );
        self.alive[m.index()] = false;
    }

    /// `m`'s process dies; the lowest live member's failure detector
    /// reports it (or the log gets the failure directly if none is left).
    pub fn crash(&mut self, m: MemberId) {
        self.alive[m.index()] = false;
        self.running[m.index()] = Desired::default();
        let detector = self.members().find(|&o| self.alive[o.index()]);
        match detector {
            Some(d) => {
                let ev = Event::MemberLost { member: m };
                let actions = step(&self.replicas[d.index()], d, ev);
                self.execute(d, actions);
            }
            None if self.state().is_joined(m) => {
                self.queue.push_back(GroupCommand::Fail { member: m })
            }
            None => {}
        }
        self.settle();
    }

    /// The failure detector wrongly declares live `m` failed: it must stop
    /// every role, then join again.
    pub fn suspect(&mut self, m: MemberId) {
        self.queue.push_back(GroupCommand::Fail { member: m });
        self.settle();
        assert!(
            self.state().is_joined(m),
            "{m} joined again after a false failure"
        );
    }

    /// `m` loses one of its disks.
    pub fn lose_disk(&mut self, m: MemberId, index: usize) {
        let Some(resource) = self.state().subgroups(m).get(index).cloned() else {
            return;
        };
        let actions = step(&self.replicas[m.index()], m, Event::DiskLost { resource });
        self.execute(m, actions);
        self.settle();
    }

    /// Commits queued proposals until none is left.
    pub fn settle(&mut self) {
        while let Some(cmd) = self.queue.pop_front() {
            assert!(self.log.len() < COMMITS_MAX, "no quiescence: livelock");
            self.commit(cmd);
        }
    }

    /// Applies `cmd` on every replica, checks the invariants, and lets
    /// every live member step.
    pub fn commit(&mut self, cmd: GroupCommand) {
        let before = self.state().clone();
        let mut results = Vec::new();
        for r in &mut self.replicas {
            results.push(r.apply(&cmd));
        }
        self.log.push(cmd.clone());
        for (i, r) in self.replicas.iter().enumerate() {
            assert_eq!(r, &self.replicas[0], "replica {i} diverged after {cmd:?}");
            assert_eq!(results[i], results[0], "replica {i} decided otherwise");
        }
        match &results[0] {
            Err(_) => assert_eq!(self.state(), &before, "refused {cmd:?} changed the state"),
            Ok(outcome) => {
                let hosts = |s: &GroupState| s.resources.iter().map(|r| r.host).collect::<Vec<_>>();
                // Configure creates the host table: no host changes then.
                let moved = before.is_configured() && hosts(&before) != hosts(self.state());
                assert_eq!(outcome.epoch, self.state().epoch);
                assert_eq!(moved, !outcome.host_changes.is_empty());
                assert!(self.state().epoch >= before.epoch, "epoch went back");
                let grown = self.state().epoch - before.epoch;
                assert_eq!(
                    grown,
                    u64::from(moved),
                    "epoch grows by one at a host change"
                );
            }
        }
        check_state(self.state());
        for m in self.members().collect::<Vec<_>>() {
            if !self.alive[m.index()] {
                continue;
            }
            let running = self.running[m.index()].clone();
            let actions = step(&self.replicas[m.index()], m, Event::Committed { running });
            check_actions(self.state(), m, &actions);
            self.history.extend(actions.iter().map(|a| (m, a.clone())));
            self.execute(m, actions);
            let want = Desired::of(self.state(), m);
            assert_runs(&mut self.running[m.index()], &want, m);
        }
        check_exclusive(self);
    }

    /// Executes `actions` on `m`'s running model; proposals are queued.
    fn execute(&mut self, m: MemberId, actions: Vec<Action>) {
        let proposals = run_actions(&mut self.running[m.index()], m, actions);
        self.queue.extend(proposals);
    }
}

/// Executes `actions` on member `m`'s running model `run`, asserting each
/// one makes sense where it lands (no double open, no stop of what is not
/// running). Returns the commands the member proposes.
pub fn run_actions(run: &mut Desired, m: MemberId, actions: Vec<Action>) -> Vec<GroupCommand> {
    let mut queue = Vec::new();
    for a in actions {
        match a {
            Action::Propose(cmd) => queue.push(cmd),
            Action::OpenDisk {
                resource,
                epoch,
                recorded,
            } => {
                let h = geomirror::group::desired::Hosting {
                    epoch,
                    config_pending: false,
                    recorded,
                };
                assert!(run.hosted.insert(resource, h).is_none(), "double open");
            }
            Action::CloseDisk { resource } => {
                assert!(
                    run.hosted.remove(&resource).is_some(),
                    "close of a closed disk"
                );
            }
            Action::SendConfig { resource, epoch } => {
                let h = run
                    .hosted
                    .get_mut(&resource)
                    .expect("config of an open disk");
                assert_eq!(h.epoch, epoch);
                h.config_pending = true;
                queue.push(GroupCommand::ResourceConfig {
                    member: m,
                    resource,
                    epoch,
                    config: DISK,
                });
            }
            Action::AwaitConfig { resource, from } => {
                let b = geomirror::group::desired::Backing {
                    host: from,
                    config: None,
                };
                run.backing.insert(resource, b);
            }
            Action::ApplyConfig {
                resource,
                from,
                config,
            } => {
                assert_eq!(config, DISK);
                let b = geomirror::group::desired::Backing {
                    host: from,
                    config: Some(config),
                };
                run.backing.insert(resource, b);
            }
            Action::ExpectMirroring {
                resource,
                from,
                epoch,
            } => {
                let l = geomirror::group::desired::Link { peer: from, epoch };
                assert!(
                    run.mirror_from.insert(resource, l).is_none(),
                    "double expect"
                );
            }
            Action::StopExpecting { resource, from } => {
                let l = run.mirror_from.remove(&resource).expect("was expecting");
                assert_eq!(l.peer, from);
            }
            Action::StartMirroring {
                resource,
                to,
                epoch,
            } => {
                let l = geomirror::group::desired::Link { peer: to, epoch };
                assert!(
                    run.mirror_to.insert(resource.clone(), l).is_none(),
                    "double start"
                );
                // The production host reports the copy once in sync.
                let report = SyncReport {
                    state: CopyState::UpToDate,
                    ..SyncReport::default()
                };
                queue.push(GroupCommand::SyncProgress {
                    member: m,
                    resource,
                    epoch,
                    report,
                });
            }
            Action::StopMirroring { resource, to } => {
                let l = run.mirror_to.remove(&resource).expect("was mirroring");
                assert_eq!(l.peer, to);
            }
            Action::ServeVolume { address, epoch } => {
                assert!(
                    run.serve.replace((address, epoch)).is_none(),
                    "double serve"
                );
            }
            Action::StopServing => {
                assert!(run.serve.take().is_some(), "stop of a stopped export");
            }
        }
    }
    queue
}

/// Asserts that a member running `have` (after executing its actions) runs
/// exactly the roles `want`, then records `want` as what it runs.
pub fn assert_runs(have: &mut Desired, want: &Desired, m: MemberId) {
    // Pending and recorded configurations are facts about the state, not
    // something the member runs; a forgotten backup needs no action.
    for (r, h) in have.hosted.iter_mut() {
        if let Some(w) = want.hosted.get(r) {
            h.config_pending = w.config_pending;
            h.recorded = w.recorded;
        }
    }
    have.backing.retain(|r, _| want.backing.contains_key(r));
    assert_eq!(have, want, "{m} runs other roles than the state gives it");
}

/// Across running members: each disk open on at most one, the volume
/// served by at most one, and only by the production host.
fn check_exclusive(c: &Cluster) {
    for site in &c.domain.sites {
        let open = c
            .running
            .iter()
            .filter(|r| r.hosted.contains_key(&site.resource));
        assert!(open.count() <= 1, "{} open on two members", site.resource);
    }
    let serving: Vec<usize> = (0..c.running.len())
        .filter(|&i| c.running[i].serve.is_some())
        .collect();
    assert!(serving.len() <= 1, "two members serve the volume");
    if let Some(&i) = serving.first() {
        assert_eq!(c.state().production_host(), Some(MemberId(i as u32)));
    }
}
