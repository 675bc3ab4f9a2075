//! Tests of the pipelined NBD client against a scripted server on a socket
//! pair: reply routing, server errors, corrupt streams, shutdown.

use super::*;
use std::os::unix::net::UnixStream;

fn info(size: u64) -> ExportInfo {
    ExportInfo {
        size,
        flags: NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH,
        block_min: 1,
        block_preferred: 4096,
        block_max: 1 << 25,
    }
}

/// Reads one request from the client side: (type, cookie, offset, len).
fn read_request(s: &mut UnixStream) -> (u16, u64, u64, u32) {
    let mut h = [0u8; 28];
    s.read_exact(&mut h).expect("request header");
    assert_eq!(
        u32::from_be_bytes(h[0..4].try_into().expect("4")),
        NBD_REQUEST_MAGIC
    );
    let kind = u16::from_be_bytes(h[6..8].try_into().expect("2"));
    let cookie = u64::from_be_bytes(h[8..16].try_into().expect("8"));
    let offset = u64::from_be_bytes(h[16..24].try_into().expect("8"));
    let len = u32::from_be_bytes(h[24..28].try_into().expect("4"));
    (kind, cookie, offset, len)
}

fn reply(s: &mut UnixStream, errno: u32, cookie: u64, data: &[u8]) {
    let mut r = NBD_SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
    r.extend_from_slice(&errno.to_be_bytes());
    r.extend_from_slice(&cookie.to_be_bytes());
    r.extend_from_slice(data);
    s.write_all(&r).expect("reply");
}

#[test]
fn replies_out_of_order_reach_the_right_callers() {
    let (ours, mut srv) = UnixStream::pair().expect("socketpair");
    let c = Arc::new(NbdClient::start(Stream::Unix(ours), info(1 << 20)).expect("start"));
    let c1 = Arc::clone(&c);
    let a = std::thread::spawn(move || c1.read(0, 4).expect("read a"));
    let first = read_request(&mut srv);
    let c2 = Arc::clone(&c);
    let b = std::thread::spawn(move || c2.read(4096, 4).expect("read b"));
    let second = read_request(&mut srv);
    assert_ne!(first.1, second.1, "cookies are unique");
    // Answer the second request first.
    reply(&mut srv, 0, second.1, b"BBBB");
    reply(&mut srv, 0, first.1, b"AAAA");
    assert_eq!(a.join().expect("thread a"), b"AAAA");
    assert_eq!(b.join().expect("thread b"), b"BBBB");
}

#[test]
fn server_errno_is_returned_and_the_connection_goes_on() {
    let (ours, mut srv) = UnixStream::pair().expect("socketpair");
    let c = Arc::new(NbdClient::start(Stream::Unix(ours), info(1 << 20)).expect("start"));
    let c1 = Arc::clone(&c);
    let t = std::thread::spawn(move || c1.write(0, b"xy", false));
    let (kind, cookie, _, len) = read_request(&mut srv);
    assert_eq!((kind, len), (NBD_CMD_WRITE, 2));
    let mut payload = [0u8; 2];
    srv.read_exact(&mut payload).expect("payload");
    reply(&mut srv, libc::ENOSPC as u32, cookie, &[]);
    let e = t.join().expect("thread").expect_err("ENOSPC");
    assert_eq!(e.errno(), libc::ENOSPC);
    let c2 = Arc::clone(&c);
    let t = std::thread::spawn(move || c2.flush());
    let (kind, cookie, _, _) = read_request(&mut srv);
    assert_eq!(kind, NBD_CMD_FLUSH);
    reply(&mut srv, 0, cookie, &[]);
    t.join().expect("thread").expect("flush");
}

#[test]
fn corrupt_reply_fails_waiters_instead_of_hanging() {
    let (ours, mut srv) = UnixStream::pair().expect("socketpair");
    let c = Arc::new(NbdClient::start(Stream::Unix(ours), info(1 << 20)).expect("start"));
    let c1 = Arc::clone(&c);
    let t = std::thread::spawn(move || c1.read(0, 512));
    let _ = read_request(&mut srv);
    srv.write_all(&[0xde; 16]).expect("garbage");
    assert!(matches!(
        t.join().expect("thread"),
        Err(AttachError::Closed)
    ));
    assert!(
        matches!(c.flush(), Err(AttachError::Closed)),
        "dead connection refuses new requests"
    );
}

#[test]
fn reply_to_unknown_cookie_closes_the_connection() {
    let (ours, mut srv) = UnixStream::pair().expect("socketpair");
    let c = NbdClient::start(Stream::Unix(ours), info(1 << 20)).expect("start");
    reply(&mut srv, 0, 999, &[]);
    // The reader notices, then every request fails.
    let mut closed = false;
    for _ in 0..200 {
        if matches!(c.flush(), Err(AttachError::Closed)) {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(closed);
}

#[test]
fn eshutdown_refuses_new_requests_and_sends_disc() {
    let (ours, mut srv) = UnixStream::pair().expect("socketpair");
    let c = Arc::new(NbdClient::start(Stream::Unix(ours), info(1 << 20)).expect("start"));
    let c1 = Arc::clone(&c);
    let t = std::thread::spawn(move || c1.flush());
    let (_, cookie, _, _) = read_request(&mut srv);
    reply(&mut srv, libc::ESHUTDOWN as u32, cookie, &[]);
    assert_eq!(
        t.join().expect("thread").expect_err("shutdown").errno(),
        libc::ESHUTDOWN
    );
    assert!(matches!(c.flush(), Err(AttachError::Closed)));
    let (kind, ..) = read_request(&mut srv);
    assert_eq!(kind, NBD_CMD_DISC, "soft disconnect follows ESHUTDOWN");
}

#[test]
fn misaligned_request_is_refused_when_the_server_needs_blocks() {
    let (ours, _srv) = UnixStream::pair().expect("socketpair");
    let mut i = info(1 << 20);
    i.block_min = 512;
    let c = NbdClient::start(Stream::Unix(ours), i).expect("start");
    assert!(matches!(
        c.read(100, 512),
        Err(AttachError::InvalidRequest(_))
    ));
    assert!(matches!(
        c.write(0, &[0; 100], false),
        Err(AttachError::InvalidRequest(_))
    ));
}
