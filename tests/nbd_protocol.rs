//! Protocol rules libnbd will not let a client break, checked with a raw socket
//! client whose bytes are written out by hand: option errors, limits, disconnects.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{serve, Served};

const MIB: u64 = 1 << 20;

/// A raw client for what libnbd will not send: the bytes are written out here
/// by hand, independently of the server's codec.
struct Raw(UnixStream);

const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REP_ACK: u32 = 1;
const REP_ERR_UNSUP: u32 = 0x8000_0001;
const REP_ERR_INVALID: u32 = 0x8000_0003;
const REP_ERR_TOO_BIG: u32 = 0x8000_0009;
const OPT_GO: u32 = 7;

impl Raw {
    fn connect(s: &Served) -> Raw {
        let c = UnixStream::connect(&s.sock).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set timeout");
        Raw(c)
    }

    fn read(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.0.read_exact(&mut b).expect("read from server");
        b
    }

    /// Read the greeting and send client flags (fixed newstyle, no zeroes).
    fn start(s: &Served) -> Raw {
        let mut r = Raw::connect(s);
        let g = r.read(18);
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(
            u16::from_be_bytes([g[16], g[17]]) & 3,
            3,
            "fixed newstyle and no zeroes"
        );
        r.send(&3u32.to_be_bytes());
        r
    }

    fn send(&mut self, b: &[u8]) {
        self.0.write_all(b).expect("write to server");
    }

    fn opt(&mut self, opt: u32, data: &[u8]) {
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.send(&b);
    }

    /// One option reply: (option, reply type, payload).
    fn reply(&mut self) -> (u32, u32, Vec<u8>) {
        let h = self.read(20);
        assert_eq!(&h[..8], &0x0003_e889_0455_65a9u64.to_be_bytes());
        let be = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let data = self.read(be(16) as usize);
        (be(8), be(12), data)
    }

    /// GO to the default export with simple replies; returns the export size.
    fn go(&mut self) -> u64 {
        self.opt(OPT_GO, &[0, 0, 0, 0, 0, 0]);
        let mut size = 0;
        loop {
            let (opt, kind, data) = self.reply();
            assert_eq!(opt, OPT_GO);
            match kind {
                REP_ACK => return size,
                3 if data[..2] == [0, 0] => {
                    size = u64::from_be_bytes(data[2..10].try_into().expect("8 bytes"))
                }
                3 => {}
                other => panic!("GO failed with reply {other:#x}"),
            }
        }
    }

    fn request(
        &mut self,
        flags: u16,
        kind: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) {
        let mut b = 0x2560_9513u32.to_be_bytes().to_vec();
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload);
        self.send(&b);
    }

    /// A simple reply: (errno, cookie).
    fn simple(&mut self) -> (u32, u64) {
        let h = self.read(16);
        assert_eq!(&h[..4], &0x6744_6698u32.to_be_bytes());
        (
            u32::from_be_bytes(h[4..8].try_into().expect("4")),
            u64::from_be_bytes(h[8..16].try_into().expect("8")),
        )
    }

    /// True when the server closed the connection (EOF or reset) without
    /// sending anything more.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.0.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

#[test]
fn unknown_options_get_err_unsup_and_negotiation_carries_on() {
    let s = serve("8M", &[]);
    let mut r = Raw::start(&s);
    // EXTENDED_HEADERS, STARTTLS, PEEK_EXPORT, and numbers nobody assigned.
    for opt in [11u32, 5, 4, 42, 0x7fff_ffff] {
        r.opt(opt, b"abc");
        let (o, kind, _) = r.reply();
        assert_eq!((o, kind), (opt, REP_ERR_UNSUP), "option {opt}");
    }
    assert_eq!(r.go(), 8 * MIB);
}

#[test]
fn oversized_options_and_names_are_refused_and_negotiation_carries_on() {
    let s = serve("8M", &[]);
    let mut r = Raw::start(&s);
    r.opt(42, &vec![7u8; 1 << 20]);
    assert_eq!(r.reply().1, REP_ERR_TOO_BIG);
    // INFO naming a 5000-byte export: over the 4096-byte string limit.
    let mut d = 5000u32.to_be_bytes().to_vec();
    d.extend_from_slice(&[b'a'; 5000]);
    d.extend_from_slice(&[0, 0]);
    r.opt(6, &d);
    assert_eq!(r.reply().1, REP_ERR_INVALID);
    // STRUCTURED_REPLY with data, and a truncated GO, are invalid too.
    r.opt(8, b"x");
    assert_eq!(r.reply().1, REP_ERR_INVALID);
    r.opt(OPT_GO, &[0, 0, 0, 9]);
    assert_eq!(r.reply().1, REP_ERR_INVALID);
    assert_eq!(r.go(), 8 * MIB);
}

#[test]
fn export_name_too_long_or_unknown_closes_the_connection() {
    let s = serve("8M", &[]);
    let mut r = Raw::start(&s);
    r.opt(1, &[b'a'; 5000]);
    assert!(r.closed());
    let mut r = Raw::start(&s);
    r.opt(1, b"nope");
    assert!(r.closed());
    // The export by name works, with the short (NO_ZEROES) reply.
    let mut r = Raw::start(&s);
    r.opt(1, b"geomirror");
    let rep = r.read(10);
    assert_eq!(u64::from_be_bytes(rep[..8].try_into().expect("8")), 8 * MIB);
    r.request(0, 0, 5, 0, 4, &[]);
    assert_eq!(r.simple(), (0, 5));
}

#[test]
fn transmission_requests_before_negotiation_are_refused() {
    let s = serve("8M", &[]);
    let mut r = Raw::start(&s);
    r.request(0, 0, 1, 0, 4096, &[]);
    assert!(r.closed());
    // Unknown client flags end the session too (doc/proto.md "Client flags").
    let mut r = Raw::connect(&s);
    r.read(18);
    r.send(&0x80u32.to_be_bytes());
    assert!(r.closed());
}

#[test]
fn silent_clients_are_dropped_after_the_handshake_timeout() {
    let s = serve("8M", &["--handshake-timeout-ms", "300"]);
    let mut r = Raw::connect(&s);
    r.read(18);
    assert!(r.closed());
}

#[test]
fn connections_over_the_cap_are_closed() {
    let s = serve("8M", &["--connections-max", "2"]);
    let mut a = Raw::start(&s);
    let _b = Raw::start(&s);
    let mut c = Raw::connect(&s);
    assert!(c.closed(), "third connection must be refused");
    a.go();
    drop(a);
    common::wait_until("a slot to free up", Duration::from_secs(10), || {
        let mut d = Raw::connect(&s);
        let mut g = [0u8; 8];
        d.0.read_exact(&mut g).is_ok()
    });
}

#[test]
fn refused_writes_skip_their_payload_and_every_cookie_is_answered_once() {
    let s = serve("8M", &[]);
    let mut r = Raw::start(&s);
    r.go();
    // Unknown command, bad flag on WRITE (payload must be skipped), READ with
    // FUA, BLOCK_STATUS without a negotiated context, write past the end.
    r.request(0, 99, 1, 0, 0, &[]);
    r.request(1 << 3, 1, 2, 0, 512, &[0xee; 512]);
    r.request(1, 0, 3, 0, 512, &[]);
    r.request(0, 7, 4, 0, 4096, &[]);
    r.request(0, 1, 5, 8 * MIB - 100, 512, &[0xee; 512]);
    r.request(0, 1, 6, 1000, 3, b"abc");
    let mut got: Vec<(u32, u64)> = (0..6).map(|_| r.simple()).collect();
    got.sort_by_key(|g| g.1);
    assert_eq!(got, [(22, 1), (22, 2), (22, 3), (22, 4), (28, 5), (0, 6)]);
    r.request(0, 0, 7, 999, 5, &[]);
    assert_eq!(r.simple(), (0, 7));
    assert_eq!(r.read(5), b"\0abc\0");
    // A write over 32 MiB cannot be skipped: the server hangs up.
    r.request(0, 1, 8, 0, (32 << 20) + 1, &[]);
    assert!(r.closed());
}

#[test]
fn a_client_vanishing_mid_write_loses_no_acknowledged_write() {
    let s = serve("8M", &[]);
    let mut r = Raw::start(&s);
    r.go();
    r.request(0, 1, 1, 0, 4096, &[0x5a; 4096]);
    assert_eq!(r.simple(), (0, 1));
    // Half a request, then gone.
    r.request(0, 1, 2, 8192, 65536, &[0x77; 1000]);
    drop(r);
    let mut r = Raw::start(&s);
    r.go();
    r.request(0, 0, 3, 0, 12288, &[]);
    assert_eq!(r.simple(), (0, 3));
    let data = r.read(12288);
    assert!(data[..4096].iter().all(|&b| b == 0x5a));
    assert!(
        data[8192..].iter().all(|&b| b == 0),
        "a half-received write was applied"
    );
    let disk = std::fs::read(&s.disk).expect("read disk");
    assert!(disk[..4096].iter().all(|&b| b == 0x5a));
}
