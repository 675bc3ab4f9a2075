//! Tests of the handshake against scripted servers: NBD_OPT_GO, refusals,
//! the NBD_OPT_EXPORT_NAME fallback, and bounds on what the server sends.

use super::*;

/// A scripted server: what it sends, and a sink for what we send.
struct Script {
    input: io::Cursor<Vec<u8>>,
    output: Vec<u8>,
}
impl Read for Script {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.input.read(b)
    }
}
impl Write for Script {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn greeting() -> Vec<u8> {
    let mut v = NBD_INIT_MAGIC.to_be_bytes().to_vec();
    v.extend_from_slice(&NBD_OPTS_MAGIC.to_be_bytes());
    v.extend_from_slice(&(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES).to_be_bytes());
    v
}

fn reply(kind: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = NBD_REP_MAGIC.to_be_bytes().to_vec();
    v.extend_from_slice(&NBD_OPT_GO.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn run(server: Vec<u8>) -> (Result<ExportInfo, AttachError>, Vec<u8>) {
    let mut s = Script {
        input: io::Cursor::new(server),
        output: Vec::new(),
    };
    let r = handshake(&mut s, "vol");
    (r, s.output)
}

#[test]
fn opt_go_reads_size_flags_and_block_sizes() {
    let mut srv = greeting();
    let mut info = NBD_INFO_EXPORT.to_be_bytes().to_vec();
    info.extend_from_slice(&(5u64 << 30).to_be_bytes());
    info.extend_from_slice(&(NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH).to_be_bytes());
    srv.extend(reply(NBD_REP_INFO, &info));
    let mut bs = NBD_INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    for v in [512u32, 4096, 1 << 25] {
        bs.extend_from_slice(&v.to_be_bytes());
    }
    srv.extend(reply(NBD_REP_INFO, &bs));
    srv.extend(reply(NBD_REP_ACK, &[]));
    let (r, sent) = run(srv);
    let info = r.expect("handshake succeeds");
    assert_eq!(info.size, 5 << 30);
    assert!(info.can_flush() && !info.read_only());
    assert_eq!(
        (info.block_min, info.block_preferred, info.block_max),
        (512, 4096, 1 << 25)
    );
    // Client flags, then IHAVEOPT GO len=4+3+2+2 name "vol" 1 request: BLOCK_SIZE.
    let mut want = (NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    want.extend_from_slice(&NBD_OPTS_MAGIC.to_be_bytes());
    want.extend_from_slice(&7u32.to_be_bytes());
    want.extend_from_slice(&11u32.to_be_bytes());
    want.extend_from_slice(&3u32.to_be_bytes());
    want.extend_from_slice(b"vol");
    want.extend_from_slice(&[0, 1, 0, 3]);
    assert_eq!(sent, want);
}

#[test]
fn unknown_export_is_refused_with_the_servers_message() {
    let mut srv = greeting();
    srv.extend(reply(NBD_REP_FLAG_ERROR | 6, b"no such export"));
    let err = run(srv).0.expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("unknown export") && msg.contains("no such export"),
        "{msg}"
    );
}

#[test]
fn server_without_opt_go_falls_back_to_export_name() {
    let mut srv = greeting();
    srv.extend(reply(NBD_REP_ERR_UNSUP, &[]));
    srv.extend_from_slice(&(1u64 << 20).to_be_bytes());
    srv.extend_from_slice(&(NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY).to_be_bytes());
    let info = run(srv).0.expect("fallback succeeds");
    assert_eq!(info.size, 1 << 20);
    assert!(info.read_only());
}

#[test]
fn oversized_option_reply_is_refused_before_allocating() {
    let mut srv = greeting();
    let mut r = NBD_REP_MAGIC.to_be_bytes().to_vec();
    r.extend_from_slice(&NBD_OPT_GO.to_be_bytes());
    r.extend_from_slice(&NBD_REP_INFO.to_be_bytes());
    r.extend_from_slice(&u32::MAX.to_be_bytes());
    srv.extend(r);
    let err = run(srv).0.expect_err("refused");
    assert!(matches!(err, AttachError::Protocol(_)), "{err}");
}

#[test]
fn truncated_greeting_is_an_error_not_a_hang() {
    let srv = greeting()[..10].to_vec();
    assert!(matches!(run(srv).0, Err(AttachError::Io(_))));
}
