//! The request reader over a stream of mixed large and small requests: every
//! payload lands where it belongs, whichever way the bytes are split between
//! the reader's buffer and the socket.

use std::sync::Arc;

use super::consts::*;
use super::proto::{ReplyHeader, RequestHeader};
use super::proto_tests::client_go;
use super::replay::replay;
use super::Export;
use crate::storage::plain::PlainEngine;

const DISK_BYTES: u64 = 4 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
        .collect()
}

fn request(b: &mut Vec<u8>, kind: u16, cookie: u64, offset: u64, len: u32) {
    RequestHeader {
        flags: 0,
        kind,
        cookie,
        offset,
        len,
    }
    .encode(b);
}

fn reply(cookie: u64) -> Vec<u8> {
    let mut r = Vec::new();
    ReplyHeader::Simple { errno: 0, cookie }.encode(&mut r);
    r
}

#[test]
fn large_writes_then_small_requests_in_one_stream_land_where_they_belong() {
    let mut b = client_go("e");
    // (offset, payload): a large write, one just above the direct-read
    // threshold, tiny and odd-sized ones right behind them.
    let writes: Vec<(u64, Vec<u8>)> = vec![
        (0, pattern(1 << 20, 1)),
        (1 << 20, pattern(100 * 1024 + 3, 2)),
        (2 << 20, pattern(5, 3)),
        (3 << 20, pattern(64 * 1024, 4)),
        ((3 << 20) + 64 * 1024, pattern(4096, 5)),
    ];
    for (cookie, (offset, data)) in (100..).zip(&writes) {
        request(&mut b, CMD_WRITE, cookie, *offset, data.len() as u32);
        b.extend_from_slice(data);
    }
    // A read and a flush behind them are parsed from the right place (the
    // read may run before or after the write it covers: NBD leaves the order
    // of requests in flight to the server).
    request(&mut b, CMD_READ, 200, 1 << 20, 16);
    request(&mut b, CMD_FLUSH, 201, 0, 0);

    let f = tempfile::NamedTempFile::new().expect("temp file");
    f.as_file().set_len(DISK_BYTES).expect("size temp file");
    let dev = Arc::new(PlainEngine::new(
        f.reopen().expect("reopen temp file"),
        DISK_BYTES,
    ));
    let e = Arc::new(Export::new("e", dev));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (result, out) = rt.block_on(replay(&b, &[e]));
    assert!(result.is_ok(), "{result:?}");

    let disk = std::fs::read(f.path()).expect("read disk");
    for (offset, data) in &writes {
        let at = *offset as usize;
        assert!(
            disk[at..at + data.len()] == data[..],
            "write at {offset} of {} bytes",
            data.len()
        );
    }
    let contains = |needle: &[u8]| out.windows(needle.len()).any(|w| w == needle);
    for c in 100..100 + writes.len() as u64 {
        assert!(contains(&reply(c)), "reply to write {c}");
    }
    let (mut after, mut before) = (reply(200), reply(200));
    after.extend_from_slice(&writes[1].1[..16]);
    before.extend_from_slice(&[0; 16]);
    assert!(
        contains(&after) || contains(&before),
        "read reply with the bytes before or after the write"
    );
    assert!(contains(&reply(201)), "flush reply");
}
