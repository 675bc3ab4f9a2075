//! The copy host's refusals, driven by a raw client over loopback TCP:
//! bad handshakes, stale epochs, oversize frames, out-of-range writes.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use geomirror::replication::auth::{self, Role};
use geomirror::replication::wire::{self, Check, Msg, PAYLOAD_BYTES_MAX, PREFIX_BYTES};
use geomirror::replication::{Generations, Receiver, ReceiverConfig};
use geomirror::storage::plain::PlainEngine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::common;

const SECRET: &[u8] = b"recovery-domain-secret";
const SIZE: u64 = 1 << 20;

fn copy_disk(dir: &Path) -> (std::path::PathBuf, Arc<PlainEngine>) {
    let p = dir.join("copy");
    File::create(&p)
        .and_then(|f| f.set_len(SIZE))
        .expect("create disk");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .expect("open");
    (p, Arc::new(PlainEngine::new(f, SIZE)))
}

async fn start(dir: &Path, epoch: u64) -> (std::path::PathBuf, Receiver) {
    let (p, disk) = copy_disk(dir);
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let cfg = ReceiverConfig::new(SECRET, epoch, Generations::default());
    (p, Receiver::start(l, disk, cfg).expect("start"))
}

/// A raw client speaking the wire by hand.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(rx: &Receiver) -> Raw {
        let mut s = TcpStream::connect(rx.local_addr()).await.expect("connect");
        s.write_all(&geomirror::replication::receiver::REPLICATION_MAGIC)
            .await
            .expect("send the protocol magic");
        Raw { s, buf: Vec::new() }
    }

    async fn send(&mut self, msg: &Msg, page: &[u8]) {
        let _ = self.s.write_all(&wire::encode(msg, page)).await;
    }

    /// The next message, or None when the copy host closed the connection.
    async fn next(&mut self) -> Option<Msg> {
        loop {
            if let Ok(Check::Complete(n)) = wire::check(&self.buf) {
                let (m, _) = wire::parse(&self.buf[..n]).expect("copy host sends valid frames");
                self.buf.drain(..n);
                return Some(m);
            }
            let mut b = [0u8; 4096];
            let k = tokio::time::timeout(Duration::from_secs(10), self.s.read(&mut b))
                .await
                .expect("copy host answers or closes")
                .unwrap_or(0);
            if k == 0 {
                return None;
            }
            self.buf.extend_from_slice(&b[..k]);
        }
    }

    async fn challenge(&mut self) -> [u8; 32] {
        match self.next().await {
            Some(Msg::Challenge { nonce }) => nonce,
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    /// Authenticate properly at `epoch`.
    async fn login(rx: &Receiver, epoch: u64) -> Raw {
        let mut r = Raw::connect(rx).await;
        let theirs = r.challenge().await;
        let ours = auth::nonce();
        let mac = auth::mac(SECRET, Role::Production, &theirs, &ours, epoch);
        r.send(
            &Msg::Auth {
                epoch,
                nonce: ours,
                mac,
                generations: Generations::default(),
            },
            &[],
        )
        .await;
        match r.next().await {
            Some(Msg::Welcome { epoch: e, mac, .. }) => {
                auth::verify(SECRET, Role::Copy, &ours, &theirs, e, &mac)
                    .expect("copy proves the secret");
            }
            other => panic!("expected Welcome, got {other:?}"),
        }
        r
    }
}

fn write_msg(epoch: u64, offset: u64, data: &[u8]) -> Msg {
    Msg::Write {
        epoch,
        seq: 1,
        offset,
        len: data.len() as u32,
        crc: crc32fast::hash(data),
        fua: false,
    }
}

async fn refused(rx: &Receiver, r: &mut Raw, why: &str) {
    assert!(
        r.next().await.is_none(),
        "connection not dropped after: {why}"
    );
    for _ in 0..250 {
        if rx.stats().refused.load(Ordering::Relaxed) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = rx.stats().last_error().unwrap_or_default();
    assert!(last.contains(why), "refused for {last:?}, expected {why:?}");
}

fn untouched(p: &Path) -> bool {
    std::fs::read(p).expect("read copy").iter().all(|&b| b == 0)
}

#[tokio::test]
async fn valid_session_writes_and_acks() {
    let dir = common::tempdir();
    let (p, rx) = start(dir.path(), 5).await;
    let mut r = Raw::login(&rx, 5).await;
    r.send(&write_msg(5, 4096, &[7u8; 4096]), &[7u8; 4096])
        .await;
    assert_eq!(r.next().await, Some(Msg::Ack { epoch: 5, seq: 1 }));
    assert_eq!(std::fs::read(&p).expect("read")[4096..8192], [7u8; 4096]);
}

#[tokio::test]
async fn wrong_secret_is_refused() {
    let dir = common::tempdir();
    let (p, rx) = start(dir.path(), 5).await;
    let mut r = Raw::connect(&rx).await;
    let theirs = r.challenge().await;
    let ours = auth::nonce();
    let mac = auth::mac(b"wrong", Role::Production, &theirs, &ours, 5);
    r.send(
        &Msg::Auth {
            epoch: 5,
            nonce: ours,
            mac,
            generations: Generations::default(),
        },
        &[],
    )
    .await;
    r.send(&write_msg(5, 0, &[1u8; 512]), &[1u8; 512]).await;
    refused(&rx, &mut r, "secret").await;
    assert!(untouched(&p));
}

#[tokio::test]
async fn reflected_challenge_is_refused() {
    let dir = common::tempdir();
    let (p, rx) = start(dir.path(), 5).await;
    let mut r = Raw::connect(&rx).await;
    let theirs = r.challenge().await;
    // Answer the copy's challenge with itself; even a correct MAC over it
    // is refused.
    let mac = auth::mac(SECRET, Role::Production, &theirs, &theirs, 5);
    r.send(
        &Msg::Auth {
            epoch: 5,
            nonce: theirs,
            mac,
            generations: Generations::default(),
        },
        &[],
    )
    .await;
    refused(&rx, &mut r, "reflected").await;
    assert!(untouched(&p));
}

#[tokio::test]
async fn stale_epoch_is_refused_at_login_and_on_writes() {
    let dir = common::tempdir();
    let (p, rx) = start(dir.path(), 5).await;
    let mut r = Raw::connect(&rx).await;
    let theirs = r.challenge().await;
    let ours = auth::nonce();
    let mac = auth::mac(SECRET, Role::Production, &theirs, &ours, 4);
    r.send(
        &Msg::Auth {
            epoch: 4,
            nonce: ours,
            mac,
            generations: Generations::default(),
        },
        &[],
    )
    .await;
    refused(&rx, &mut r, "stale epoch").await;

    // Logged in at 5, then the group moves to 6: a write for 5 is fenced.
    let mut r = Raw::login(&rx, 5).await;
    rx.epoch().store(6, Ordering::SeqCst);
    r.send(&write_msg(5, 0, &[1u8; 4096]), &[1u8; 4096]).await;
    refused(&rx, &mut r, "stale epoch 5").await;
    assert_eq!(rx.stats().bytes_written.load(Ordering::Relaxed), 0);
    assert!(untouched(&p));
}

#[tokio::test]
async fn oversize_frame_is_refused_before_allocation() {
    let dir = common::tempdir();
    let (p, rx) = start(dir.path(), 5).await;
    let mut r = Raw::login(&rx, 5).await;
    // A valid prefix announcing a page one byte over the limit.
    let mut f = wire::encode(&write_msg(5, 0, &[]), &[]);
    f[8..12].copy_from_slice(&(PAYLOAD_BYTES_MAX as u32 + 1).to_le_bytes());
    let crc = crc32fast::hash(&f[..16]);
    f[16..PREFIX_BYTES].copy_from_slice(&crc.to_le_bytes());
    r.s.write_all(&f).await.expect("send");
    refused(&rx, &mut r, "too large").await;
    assert!(untouched(&p));
}

#[tokio::test]
async fn out_of_range_offset_is_refused() {
    let dir = common::tempdir();
    let (p, rx) = start(dir.path(), 5).await;
    let mut r = Raw::login(&rx, 5).await;
    r.send(&write_msg(5, SIZE - 512, &[1u8; 4096]), &[1u8; 4096])
        .await;
    refused(&rx, &mut r, "outside the disk").await;
    assert_eq!(rx.stats().bytes_written.load(Ordering::Relaxed), 0);
    assert!(untouched(&p));
}

#[tokio::test]
async fn data_before_authentication_is_refused() {
    let dir = common::tempdir();
    let (p, rx) = start(dir.path(), 5).await;
    let mut r = Raw::connect(&rx).await;
    let _ = r.challenge().await;
    r.send(&write_msg(5, 0, &[1u8; 4096]), &[1u8; 4096]).await;
    refused(&rx, &mut r, "expected Auth").await;
    assert!(untouched(&p));
}

#[tokio::test]
async fn garbage_after_login_is_refused_and_nothing_written() {
    let dir = common::tempdir();
    let (p, rx) = start(dir.path(), 5).await;
    let mut r = Raw::login(&rx, 5).await;
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    r.s.write_all(&junk).await.expect("send");
    refused(&rx, &mut r, "crc32").await;
    assert_eq!(rx.stats().bytes_written.load(Ordering::Relaxed), 0);
    assert!(untouched(&p));
}
