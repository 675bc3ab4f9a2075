//! Engine connections from the outside: the shared-secret handshake and the
//! frame checks, exercised with raw TCP clients against a live member.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use geomirror::group::engine::auth::Authenticator;
use geomirror::group::engine::frame;
use geomirror::group::engine::{
    Engine, EngineConfig, EngineError, Replicated, AUTH_CONTEXT, CONNECTIONS_MAX,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &[u8] = b"geomirror-test-secret-0123456789";
const WRONG_SECRET: &[u8] = b"not-the-group-secret-at-all-0000";
/// Liveness bound for waits; never a performance assertion.
const WAIT: Duration = Duration::from_secs(20);

/// Bytes appended in order: a state that grows past one snapshot chunk.
#[derive(Clone, Default, Serialize, Deserialize)]
struct Blob(Vec<u8>);

impl Replicated for Blob {
    type Command = Vec<u8>;
    type Outcome = usize;
    fn apply(&mut self, more: &Vec<u8>) -> usize {
        self.0.extend_from_slice(more);
        self.0.len()
    }
}

/// A counter: the smallest state machine that proves a member still works.
#[derive(Clone, Default, Serialize, Deserialize)]
struct Counter(u64);

impl Replicated for Counter {
    type Command = u64;
    type Outcome = u64;
    fn apply(&mut self, add: &u64) -> u64 {
        self.0 += add;
        self.0
    }
}

fn loopback() -> SocketAddr {
    format!("127.0.0.1:{}", common::free_port())
        .parse()
        .expect("loopback address")
}

fn config(id: u64, addr: SocketAddr, dir: &Path, secret: &[u8]) -> EngineConfig {
    let mut c = EngineConfig::new(id, addr, dir.to_path_buf(), secret.to_vec());
    c.heartbeat_ms = 50;
    c.election_timeout_ms = 400;
    c.rpc_timeout_ms = 1_000;
    c.propose_attempts_max = 3;
    c
}

/// A one-member group, bootstrapped and leading.
async fn founder(root: &Path) -> (Engine<Counter>, SocketAddr) {
    founder_with(root, config(1, loopback(), &root.join("m1"), SECRET)).await
}

async fn founder_with<S: Replicated>(root: &Path, cfg: EngineConfig) -> (Engine<S>, SocketAddr) {
    let _ = root;
    let addr = cfg.listen;
    let e = Engine::start(cfg).await.expect("engine starts");
    e.bootstrap().await.expect("bootstrap");
    let t0 = Instant::now();
    while e.leader() != Some(1) {
        assert!(t0.elapsed() < WAIT, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (e, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_with_wrong_secret_cannot_join_or_send_rpcs() {
    let root = common::tempdir();
    let (m1, m1_addr) = founder(root.path()).await;
    let bad = config(2, loopback(), &root.path().join("m2"), WRONG_SECRET);
    let intruder = Engine::<Counter>::start(bad).await.expect("engine starts");
    let err = intruder
        .join_via(&[m1_addr])
        .await
        .expect_err("join refused");
    assert!(matches!(err, EngineError::Auth { .. }), "{err}");

    // A raw handshake with the wrong secret fails too: the member's proof
    // does not verify, so no request is ever sent.
    let wrong = Authenticator::new(WRONG_SECRET, AUTH_CONTEXT, WAIT).expect("authenticator");
    let mut s = connect_engine(m1_addr).await;
    assert!(wrong.client(&mut s).await.is_err());

    assert_eq!(m1.metrics().voters.len(), 1);
    assert!(m1.has_quorum(), "a one-voter group is its own majority");
    assert!(m1.metrics().learners.is_empty());
    intruder.shutdown().await.expect("shutdown");
    m1.shutdown().await.expect("shutdown");
}

/// Opens an authenticated connection, as a member would.
async fn authed(addr: SocketAddr) -> TcpStream {
    let a = Authenticator::new(SECRET, AUTH_CONTEXT, WAIT).expect("authenticator");
    let mut s = connect_engine(addr).await;
    a.client(&mut s).await.expect("handshake");
    s
}

/// True when the server closed the connection (EOF or reset) instead of answering.
async fn dropped(mut s: TcpStream) -> bool {
    let mut b = [0u8; 64];
    match tokio::time::timeout(WAIT, s.read(&mut b)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_oversize_frames_drop_the_connection() {
    let root = common::tempdir();
    let (m1, m1_addr) = founder(root.path()).await;

    // Length far above the 64 MiB bound: refused from the header alone.
    let mut s = authed(m1_addr).await;
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    s.write_all(&h).await.expect("write header");
    assert!(
        dropped(s).await,
        "oversize length must close the connection"
    );

    // Payload that does not match its crc32.
    let mut s = authed(m1_addr).await;
    let mut f = frame::encode(b"0123456789", 1024).expect("encode");
    f[12] ^= 0x40;
    s.write_all(&f).await.expect("write frame");
    assert!(dropped(s).await, "bad checksum must close the connection");

    // A well-framed payload that is not a request.
    let mut s = authed(m1_addr).await;
    let f = frame::encode(&[0xff; 32], 1024).expect("encode");
    s.write_all(&f).await.expect("write frame");
    assert!(
        dropped(s).await,
        "undecodable request must close the connection"
    );

    // The member is unharmed, and usable from a spawned task (its futures are Send).
    let m1 = std::sync::Arc::new(m1);
    let e = m1.clone();
    let added = tokio::spawn(async move { e.propose(5).await })
        .await
        .expect("task");
    assert_eq!(added.expect("propose"), 5);
    m1.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_dropped_after_the_handshake_timeout() {
    let root = common::tempdir();
    let (m1, m1_addr) = founder(root.path()).await;
    // Connects and never says anything: the handshake timeout closes it.
    let s = connect_engine(m1_addr).await;
    assert!(
        dropped(s).await,
        "a silent client must not hold a slot forever"
    );
    m1.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed() {
    let root = common::tempdir();
    let (m1, m1_addr) = founder(root.path()).await;
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS_MAX {
        held.push(connect_engine(m1_addr).await);
    }
    let extra = connect_engine(m1_addr).await;
    assert!(
        dropped(extra).await,
        "connection over the cap must be closed"
    );
    drop(held);
    // Slots come back once the held connections are gone.
    let t0 = Instant::now();
    loop {
        let a = Authenticator::new(SECRET, AUTH_CONTEXT, WAIT).expect("authenticator");
        let mut s = connect_engine(m1_addr).await;
        if a.client(&mut s).await.is_ok() {
            break;
        }
        assert!(t0.elapsed() < WAIT, "slots never released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    m1.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_larger_than_a_chunk_reaches_a_late_joiner() {
    let root = common::tempdir();
    // Megabytes cross here, fsynced on both ends on a shared disk: roomier
    // timing than the other tests, so slow I/O is not mistaken for failure.
    let roomy = |c: &mut EngineConfig| {
        c.heartbeat_ms = 100;
        c.election_timeout_ms = 1_000;
        c.rpc_timeout_ms = 5_000;
        c.membership_timeout_ms = 30_000;
        c.propose_attempts_max = 50;
    };
    let mut cfg = config(1, loopback(), &root.path().join("m1"), SECRET);
    roomy(&mut cfg);
    cfg.snapshot_every_entries = 100;
    cfg.logs_kept_after_snapshot = 0;
    let (m1, m1_addr) = founder_with::<Blob>(root.path(), cfg).await;
    // Commands of 16 KB: the first snapshot holds more than one 1 MiB
    // chunk, so InstallSnapshot runs over several frames.
    let piece = 16_000;
    for i in 0..110u16 {
        m1.propose(vec![i as u8; piece]).await.expect("propose");
    }
    let t0 = Instant::now();
    // The snapshot lands at about 100 applied entries (blank and membership
    // entries included): at least 90 commands, 1.44 MB, in it.
    while m1.metrics().purged_index.is_none_or(|p| p < 90) {
        assert!(
            t0.elapsed() < WAIT,
            "log never compacted: {:?}",
            m1.metrics()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c2 = config(2, loopback(), &root.path().join("m2"), SECRET);
    roomy(&mut c2);
    let m2 = Engine::<Blob>::start(c2).await.expect("engine starts");
    m2.join_via(&[m1_addr]).await.expect("join");
    let want = m1.state().borrow().0.clone();
    let t0 = Instant::now();
    while m2.state().borrow().0 != want {
        assert!(t0.elapsed() < WAIT, "joiner never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(want.len(), 110 * piece);
    assert!(m2.metrics().snapshot_index.is_some_and(|i| i >= 90));
    m2.shutdown().await.expect("shutdown");
    m1.shutdown().await.expect("shutdown");
}

/// Connects to a member's address as the engine protocol does: the magic first.
async fn connect_engine(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut s, &geomirror::group::engine::ENGINE_MAGIC)
        .await
        .expect("send the engine magic");
    s
}
