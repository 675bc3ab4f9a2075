//! The group engine over real TCP on loopback with real state dirs: ordering,
//! elections, restarts, snapshots, membership changes and quorum.
//! A small journal state machine stands in for the group state.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use geomirror::group::engine::{Engine, EngineConfig, Replicated};
use serde::{Deserialize, Serialize};

const SECRET: &[u8] = b"geomirror-test-secret-0123456789";
/// Liveness bound for waits; never a performance assertion.
const WAIT: Duration = Duration::from_secs(20);

/// Every command appended in commit order; the outcome is its position.
#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize)]
struct Journal {
    entries: Vec<(u64, u32)>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Note {
    from: u64,
    seq: u32,
}

impl Replicated for Journal {
    type Command = Note;
    type Outcome = usize;
    fn apply(&mut self, cmd: &Note) -> usize {
        self.entries.push((cmd.from, cmd.seq));
        self.entries.len() - 1
    }
    /// The writer is whoever appended last, named anew by every entry.
    fn lease_holder(&self) -> Option<(u64, u64)> {
        let (from, _) = self.entries.last()?;
        Some((*from, self.entries.len() as u64))
    }
}

struct Member {
    engine: Engine<Journal>,
    id: u64,
    addr: SocketAddr,
    dir: PathBuf,
}

fn config(id: u64, addr: SocketAddr, dir: &Path) -> EngineConfig {
    let mut c = EngineConfig::new(id, addr, dir.to_path_buf(), SECRET.to_vec());
    c.heartbeat_ms = 50;
    c.election_timeout_ms = 400;
    c.rpc_timeout_ms = 1_000;
    c.membership_timeout_ms = 15_000;
    c.propose_attempts_max = 100;
    c.lease_ms = 600;
    c
}

async fn start_with(cfg: EngineConfig) -> Member {
    let (id, addr, dir) = (cfg.node_id, cfg.listen, cfg.state_dir.clone());
    let engine = Engine::start(cfg).await.expect("engine starts");
    Member {
        engine,
        id,
        addr,
        dir,
    }
}

async fn start(id: u64, root: &Path) -> Member {
    let addr: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .expect("loopback address");
    start_with(config(id, addr, &root.join(format!("m{id}")))).await
}

/// Restarts a member on its own address and state dir. The engine is
/// dropped, not shut down: the abrupt path must release the dir as well.
async fn restart(m: Member) -> Member {
    let (id, addr, dir) = (m.id, m.addr, m.dir.clone());
    drop(m);
    start_with(config(id, addr, &dir)).await
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn state(m: &Member) -> Arc<Journal> {
    m.engine.state().borrow().clone()
}

/// Bootstraps the first member and has the others join through it.
async fn group(n: u64, root: &Path) -> Vec<Member> {
    let mut ms = Vec::new();
    for id in 1..=n {
        ms.push(start(id, root).await);
    }
    ms[0].engine.bootstrap().await.expect("bootstrap");
    eventually("first leader", || ms[0].engine.leader() == Some(1)).await;
    let seed = [ms[0].addr];
    for m in &ms[1..] {
        m.engine.join_via(&seed).await.expect("join");
    }
    let all: Vec<u64> = (1..=n).collect();
    eventually("every member a voter everywhere", || {
        ms.iter().all(|m| {
            m.engine
                .metrics()
                .voters
                .iter()
                .copied()
                .collect::<Vec<_>>()
                == all
        })
    })
    .await;
    ms
}

async fn converged(ms: &[&Member], len: usize) -> Arc<Journal> {
    eventually("members converge", || {
        let s0 = state(ms[0]);
        s0.entries.len() == len && ms.iter().all(|m| *state(m) == *s0)
    })
    .await;
    state(ms[0])
}

fn leader_of(ms: &[&Member]) -> Option<usize> {
    let l = ms[0].engine.leader()?;
    ms.iter().position(|m| m.id == l)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_from_every_member_apply_in_one_order() {
    let root = common::tempdir();
    let ms = group(3, root.path()).await;
    // All three propose at the same time, two of them through the leader.
    let (a, b, c) = tokio::join!(
        propose_five(&ms[0]),
        propose_five(&ms[1]),
        propose_five(&ms[2])
    );
    let outcomes: Vec<_> = a.into_iter().chain(b).chain(c).collect();
    let refs: Vec<&Member> = ms.iter().collect();
    let s = converged(&refs, 15).await;
    // Each proposer got back the position its command holds on every member.
    for (from, seq, pos) in outcomes {
        assert_eq!(s.entries[pos], (from, seq));
    }
    for m in &ms {
        m.engine.shutdown().await.expect("shutdown");
    }
}

async fn propose_five(m: &Member) -> Vec<(u64, u32, usize)> {
    let mut got = Vec::new();
    for seq in 0..5u32 {
        let pos = m
            .engine
            .propose(Note { from: m.id, seq })
            .await
            .expect("propose");
        got.push((m.id, seq, pos));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_elects_a_new_leader_and_proposals_continue() {
    let root = common::tempdir();
    let ms = group(5, root.path()).await;
    ms[2]
        .engine
        .propose(Note { from: 3, seq: 0 })
        .await
        .expect("propose");
    let refs: Vec<&Member> = ms.iter().collect();
    let old = leader_of(&refs).expect("a leader");
    let old_id = ms[old].id;
    ms[old].engine.shutdown().await.expect("shutdown leader");
    let rest: Vec<&Member> = ms.iter().filter(|m| m.id != old_id).collect();
    eventually("a new leader among the survivors", || {
        rest.iter()
            .all(|m| m.engine.leader().is_some_and(|l| l != old_id))
    })
    .await;
    for (i, m) in rest.iter().enumerate() {
        m.engine
            .propose(Note {
                from: m.id,
                seq: 1 + i as u32,
            })
            .await
            .expect("propose after failover");
    }
    converged(&rest, 5).await;
    for m in rest {
        m.engine.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_follower_keeps_its_log_and_catches_up() {
    let root = common::tempdir();
    let mut ms = group(3, root.path()).await;
    for seq in 0..5 {
        ms[0]
            .engine
            .propose(Note { from: 1, seq })
            .await
            .expect("propose");
    }
    let refs: Vec<&Member> = ms.iter().collect();
    converged(&refs, 5).await;
    let leader = leader_of(&refs).expect("a leader");
    let f = (leader + 1) % 3;
    let log_before = ms[f].engine.metrics().last_log_index.expect("a log");
    let follower = ms.remove(f);
    follower.engine.shutdown().await.expect("shutdown follower");
    for seq in 5..10 {
        ms[0]
            .engine
            .propose(Note { from: 1, seq })
            .await
            .expect("propose while down");
    }
    let follower = restart(follower).await;
    // Straight after start, before any leader contact: log and applied state come from disk.
    assert!(follower.engine.metrics().last_log_index >= Some(log_before));
    assert!(
        state(&follower).entries.len() >= 5,
        "applied state restored: {:?} {:?}",
        follower.engine.metrics(),
        state(&follower)
    );
    follower
        .engine
        .join_via(&[ms[0].addr])
        .await
        .expect("rejoin is a no-op");
    let all = [&ms[0], &ms[1], &follower];
    converged(&all, 10).await;
    for m in all {
        m.engine.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_receives_compacted_state_as_a_snapshot() {
    let root = common::tempdir();
    let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().expect("addr") };
    let mut c1 = config(1, addr(common::free_port()), &root.path().join("m1"));
    c1.snapshot_every_entries = 5;
    c1.logs_kept_after_snapshot = 0;
    let m1 = start_with(c1).await;
    m1.engine.bootstrap().await.expect("bootstrap");
    for seq in 0..20 {
        m1.engine
            .propose(Note { from: 1, seq })
            .await
            .expect("propose");
    }
    // Snapshots are built in the background, so how far the log is purged
    // by now varies; the first one (at 5 applied entries) is certain.
    eventually("log compacted on the leader", || {
        m1.engine.metrics().purged_index.is_some_and(|p| p >= 5)
    })
    .await;
    let m2 = start(2, root.path()).await;
    m2.engine.join_via(&[m1.addr]).await.expect("join");
    // Entries up to the purge point exist only in the snapshot now.
    let s = converged(&[&m1, &m2], 20).await;
    assert_eq!(s.entries[0], (1, 0));
    assert!(
        m2.engine.metrics().snapshot_index.is_some(),
        "joiner installed a snapshot"
    );
    // The installed snapshot is durable: a restart brings the state back.
    let m2 = restart(m2).await;
    assert_eq!(state(&m2).entries.len(), 20);
    m1.engine.shutdown().await.expect("shutdown");
    m2.engine.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_member_is_removed_and_the_rest_continue() {
    let root = common::tempdir();
    let ms = group(3, root.path()).await;
    let refs: Vec<&Member> = ms.iter().collect();
    let leader = leader_of(&refs).expect("a leader");
    let leaver = (leader + 1) % 3;
    let gone = ms[leaver].id;
    ms[leaver].engine.leave().await.expect("leave");
    let rest: Vec<&Member> = ms.iter().filter(|m| m.id != gone).collect();
    eventually("leaver out of the membership", || {
        rest.iter().all(|m| {
            let x = m.engine.metrics();
            !x.voters.contains(&gone) && !x.learners.contains(&gone) && x.voters.len() == 2
        })
    })
    .await;
    for m in &rest {
        m.engine
            .propose(Note { from: m.id, seq: 0 })
            .await
            .expect("propose");
    }
    converged(&rest, 2).await;
    for m in rest {
        m.engine.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_member_is_detected_removed_and_re_added() {
    let root = common::tempdir();
    let mut ms = group(3, root.path()).await;
    let refs: Vec<&Member> = ms.iter().collect();
    let leader = leader_of(&refs).expect("a leader");
    let victim = if leader == 2 { 1 } else { 2 };
    let dead = ms.remove(victim);
    let dead_id = dead.id;
    dead.engine.shutdown().await.expect("shutdown");
    let l = ms
        .iter()
        .find(|m| m.engine.leader() == Some(m.id))
        .expect("leader still leads");
    eventually("leader reports the dead member", || {
        l.engine.unreachable_peers(Duration::from_millis(300)) == vec![dead_id]
    })
    .await;
    assert!(l.engine.has_quorum(), "two of three voters still decide");
    l.engine
        .remove_member(dead_id)
        .await
        .expect("remove the failed member");
    assert!(!l.engine.metrics().voters.contains(&dead_id));

    // It comes back with its state dir and is re-added.
    let back = start_with(config(dead_id, dead.addr, &dead.dir)).await;
    drop(dead);
    l.engine
        .add_member(dead_id, back.addr)
        .await
        .expect("re-add");
    let all = [&ms[0], &ms[1], &back];
    eventually("re-added member is a voter everywhere", || {
        all.iter().all(|m| m.engine.metrics().voters.len() == 3)
    })
    .await;
    l.engine
        .propose(Note { from: l.id, seq: 9 })
        .await
        .expect("propose");
    converged(&all, 1).await;
    eventually("nobody unreachable", || {
        l.engine
            .unreachable_peers(Duration::from_millis(300))
            .is_empty()
    })
    .await;
    for m in all {
        m.engine.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_survivor_of_two_voters_has_no_quorum() {
    let root = common::tempdir();
    let mut ms = group(2, root.path()).await;
    eventually("both see a quorum", || {
        ms.iter().all(|m| m.engine.has_quorum())
    })
    .await;
    let refs: Vec<&Member> = ms.iter().collect();
    let leader = leader_of(&refs).expect("a leader");
    let follower = ms.remove(1 - leader);
    let kept = ms.remove(0);

    // The follower dies: the leader can no longer commit anything.
    follower.engine.shutdown().await.expect("shutdown");
    eventually("leader loses its quorum", || !kept.engine.has_quorum()).await;
    assert!(!kept.engine.metrics().has_quorum);

    // It comes back: both decide again.
    let follower = restart(follower).await;
    let pair = [&kept, &follower];
    eventually("quorum is back", || {
        pair.iter().all(|m| m.engine.has_quorum())
    })
    .await;

    // Now whoever leads dies: the other, leader or not, has no quorum.
    let (dead, survivor) = if kept.engine.leader() == Some(kept.id) {
        (&kept, &follower)
    } else {
        (&follower, &kept)
    };
    dead.engine.shutdown().await.expect("shutdown");
    eventually("survivor loses its quorum", || {
        !survivor.engine.has_quorum()
    })
    .await;
    survivor.engine.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_can_leave_and_the_rest_elect_a_new_one() {
    let root = common::tempdir();
    let ms = group(3, root.path()).await;
    let refs: Vec<&Member> = ms.iter().collect();
    let leader = leader_of(&refs).expect("a leader");
    let gone = ms[leader].id;
    ms[leader].engine.leave().await.expect("leader leaves");
    let rest: Vec<&Member> = ms.iter().filter(|m| m.id != gone).collect();
    eventually("a new leader without the leaver", || {
        rest.iter().all(|m| {
            let x = m.engine.metrics();
            x.leader.is_some_and(|l| l != gone) && x.voters.len() == 2 && !x.voters.contains(&gone)
        })
    })
    .await;
    rest[0]
        .engine
        .propose(Note {
            from: rest[0].id,
            seq: 0,
        })
        .await
        .expect("propose after the leader left");
    converged(&rest, 1).await;
    for m in rest {
        m.engine.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_goes_to_the_writer_only_and_a_failure_decision_revokes_it() {
    let root = common::tempdir();
    let ms = group(3, root.path()).await;
    let refs: Vec<&Member> = ms.iter().collect();
    let l = leader_of(&refs).expect("a leader");
    let (w, other) = match l {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    let (leader, writer, other) = (&ms[l], &ms[w], &ms[other]);
    leader
        .engine
        .propose(Note {
            from: writer.id,
            seq: 1,
        })
        .await
        .expect("propose");
    let sent = Instant::now();
    let c = writer.engine.confirm().await.expect("confirmed");
    assert!(c.holder && c.sent_at >= sent, "{c:?}");
    assert!(!other.engine.confirm().await.expect("confirmed").holder);
    assert!(!leader.engine.confirm().await.expect("confirmed").holder);

    // The leader declares the writer failed: from then on, in this term,
    // it grants it nothing, though the writer still asks, and it reports
    // it until the state stops naming it.
    eventually("the writer declared failed", || {
        leader
            .engine
            .unreachable_peers(Duration::ZERO)
            .contains(&writer.id)
    })
    .await;
    assert!(!writer.engine.confirm().await.expect("confirmed").holder);
    let patient = Duration::from_secs(3_600);
    assert_eq!(leader.engine.unreachable_peers(patient), vec![writer.id]);
    leader
        .engine
        .propose(Note {
            from: other.id,
            seq: 2,
        })
        .await
        .expect("propose");
    assert!(leader.engine.unreachable_peers(patient).is_empty());
    assert!(other.engine.confirm().await.expect("confirmed").holder);
    assert!(!writer.engine.confirm().await.expect("confirmed").holder);
    for m in ms {
        m.engine.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_a_leader_without_a_majority_has_no_quorum() {
    let root = common::tempdir();
    let mut ms = group(5, root.path()).await;
    eventually("every member sees a quorum", || {
        ms.iter().all(|m| m.engine.has_quorum())
    })
    .await;
    let refs: Vec<&Member> = ms.iter().collect();
    let l = leader_of(&refs).expect("a leader");
    let leader = ms.remove(l);
    let follower = ms.remove(0);
    // Three of five gone: the leader still leads and still reaches its
    // follower, but nothing can be decided.
    for m in ms {
        m.engine.shutdown().await.expect("shutdown");
    }
    eventually("the follower loses its quorum", || {
        !follower.engine.has_quorum()
    })
    .await;
    eventually("the leader loses its quorum", || {
        !leader.engine.has_quorum()
    })
    .await;
    assert_eq!(follower.engine.leader(), Some(leader.id), "still led");
    assert!(follower.engine.confirm().await.is_err());
    leader.engine.shutdown().await.expect("shutdown");
    follower.engine.shutdown().await.expect("shutdown");
}
