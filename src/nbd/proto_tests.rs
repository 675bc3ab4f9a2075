//! Property tests of the codec (every message round-trips) and of a whole
//! session fed arbitrary bytes (it ends with an error, never a panic or a hang).

use std::sync::Arc;

use proptest::prelude::*;

use super::consts::*;
use super::option::*;
use super::proto::*;
use super::replay::replay;
use super::Export;
use crate::storage::plain::PlainEngine;

const DISK_BYTES: u64 = 1 << 20;

/// The export name the fuzz target serves, which its seeds ask for.
const FUZZ_EXPORT: &str = "fuzz";

fn export() -> (tempfile::NamedTempFile, Arc<Export>) {
    export_named("e")
}

fn export_named(name: &str) -> (tempfile::NamedTempFile, Arc<Export>) {
    let f = tempfile::NamedTempFile::new().expect("temp file");
    f.as_file().set_len(DISK_BYTES).expect("size temp file");
    let file = f.reopen().expect("reopen temp file");
    let dev = Arc::new(PlainEngine::new(file, DISK_BYTES));
    (f, Arc::new(Export::new(name, dev)))
}

fn run(input: &[u8]) -> Vec<u8> {
    run_on("e", input)
}

fn run_on(name: &str, input: &[u8]) -> Vec<u8> {
    let (_f, e) = export_named(name);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(replay(input, &[e])).1
}

fn name() -> impl Strategy<Value = String> {
    "[a-z:/]{0,40}"
}

proptest! {
    #[test]
    fn request_headers_round_trip(flags: u16, kind: u16, cookie: u64, offset: u64, len: u32) {
        let h = RequestHeader { flags, kind, cookie, offset, len };
        let mut b = Vec::new();
        h.encode(&mut b);
        prop_assert_eq!(b.len(), REQUEST_LEN);
        prop_assert_eq!(RequestHeader::parse(&b[..REQUEST_LEN - 1]).expect("short is not an error"), None);
        prop_assert_eq!(RequestHeader::parse(&b).expect("valid"), Some(h));
    }

    #[test]
    fn reply_headers_round_trip(errno: u32, cookie: u64, flags: u16, kind: u16, len: u32, simple: bool) {
        let h = if simple {
            ReplyHeader::Simple { errno, cookie }
        } else {
            ReplyHeader::Chunk { flags, kind, cookie, len }
        };
        let mut b = Vec::new();
        h.encode(&mut b);
        prop_assert_eq!(ReplyHeader::parse(&b[..b.len() - 1]).expect("short is not an error"), None);
        prop_assert_eq!(ReplyHeader::parse(&b).expect("valid"), Some(h));
    }

    #[test]
    fn structured_chunks_carry_their_fields(cookie: u64, offset: u64, n: u32, errno: u32, msg in "[ -~]{0,50}",
                                            ext in proptest::collection::vec((any::<u32>(), 0u32..4), 0..20)) {
        let mut b = Vec::new();
        encode_data_chunk(&mut b, cookie, offset, n % PAYLOAD_LEN_MAX, true);
        prop_assert_eq!(ReplyHeader::parse(&b).expect("valid"), Some(ReplyHeader::Chunk {
            flags: REPLY_FLAG_DONE, kind: REPLY_TYPE_OFFSET_DATA, cookie, len: n % PAYLOAD_LEN_MAX + 8 }));
        prop_assert_eq!(&b[20..28], &offset.to_be_bytes());

        let mut b = Vec::new();
        encode_hole_chunk(&mut b, cookie, offset, n, false);
        prop_assert_eq!(b.len(), 32);
        prop_assert_eq!(&b[28..32], &n.to_be_bytes());

        let mut b = Vec::new();
        encode_error_chunk(&mut b, cookie, errno, &msg);
        let Some(ReplyHeader::Chunk { kind, len, .. }) = ReplyHeader::parse(&b).expect("valid") else {
            return Err(TestCaseError::fail("not a chunk"));
        };
        prop_assert_eq!(kind, REPLY_TYPE_ERROR);
        prop_assert_eq!(len as usize, b.len() - CHUNK_HEADER_LEN);
        prop_assert_eq!(&b[20..24], &errno.to_be_bytes());
        prop_assert_eq!(&b[26..], msg.as_bytes());

        let mut b = Vec::new();
        encode_block_status(&mut b, cookie, 7, &ext);
        prop_assert_eq!(b.len(), CHUNK_HEADER_LEN + 4 + 8 * ext.len());
        for (i, (l, s)) in ext.iter().enumerate() {
            let at = CHUNK_HEADER_LEN + 4 + 8 * i;
            prop_assert_eq!(&b[at..at + 4], &l.to_be_bytes());
            prop_assert_eq!(&b[at + 4..at + 8], &s.to_be_bytes());
        }
    }

    #[test]
    fn options_and_option_replies_round_trip(option: u32, reply: u32, data in proptest::collection::vec(any::<u8>(), 0..64)) {
        let h = OptionHeader { option, len: data.len() as u32 };
        let mut b = Vec::new();
        h.encode(&mut b);
        prop_assert_eq!(OptionHeader::parse(&b[..15]).expect("short is not an error"), None);
        prop_assert_eq!(OptionHeader::parse(&b).expect("valid"), Some(h));
        let mut b = Vec::new();
        encode_option_reply(&mut b, option, reply, &data);
        prop_assert_eq!(parse_option_reply(&b).expect("valid"), Some((option, reply, data.len() as u32)));
        prop_assert_eq!(&b[OPTION_REPLY_HEADER_LEN..], &data[..]);
    }

    #[test]
    fn info_and_meta_requests_round_trip(n in name(), infos in proptest::collection::vec(any::<u16>(), 0..8),
                                         queries in proptest::collection::vec(name(), 0..8)) {
        let i = InfoRequest { name: n.clone(), infos };
        let mut b = Vec::new();
        i.encode(&mut b);
        prop_assert_eq!(InfoRequest::parse(&b), Ok(i));
        prop_assert!(InfoRequest::parse(&b[..b.len() - 1]).is_err());
        let m = MetaRequest { name: n, queries };
        let mut b = Vec::new();
        m.encode(&mut b);
        prop_assert_eq!(MetaRequest::parse(&b), Ok(m));
        b.push(0);
        prop_assert!(MetaRequest::parse(&b).is_err());
    }

    #[test]
    fn validation_keeps_every_accepted_request_inside_the_disk(flags: u16, kind in 0u16..10, offset: u64, len: u32,
                                                              read_only: bool, structured: bool, meta: bool) {
        let l = Limits { size: DISK_BYTES, read_only, structured, meta_allocation: meta };
        let h = RequestHeader { flags, kind, cookie: 1, offset, len };
        match validate(&h, &l) {
            Ok(Command::Read { offset, len, .. } | Command::Write { offset, len, .. }
               | Command::Trim { offset, len, .. } | Command::WriteZeroes { offset, len, .. }
               | Command::BlockStatus { offset, len, .. }) => {
                prop_assert!(offset + u64::from(len) <= DISK_BYTES);
            }
            Ok(_) => {}
            Err(e) => prop_assert!([EINVAL, ENOSPC, EPERM].contains(&e)),
        }
    }
}

/// A well-formed prefix (client flags), then options, then requests, all
/// drawn at random: reaches deep into both phases. Also returns, per request,
/// whether it must be answered (false after a DISC or a write whose payload
/// is missing, which swallows the rest of the stream).
fn session_bytes() -> impl Strategy<Value = (Vec<u8>, Vec<bool>)> {
    // Anything but EXPORT_NAME, ABORT and GO, which would end negotiation early.
    let option = (
        prop_oneof![
            Just(OPT_INFO),
            Just(OPT_STRUCTURED_REPLY),
            Just(OPT_SET_META_CONTEXT),
            Just(OPT_LIST_META_CONTEXT),
            Just(OPT_LIST),
            3u32..7,
            8u32..20
        ],
        proptest::collection::vec(any::<u8>(), 0..40),
    );
    let request = (
        0u16..10,
        0u16..64,
        0u64..(DISK_BYTES + 8192),
        0u32..70_000,
        any::<bool>(),
    );
    (
        0u32..4,
        proptest::collection::vec(option, 0..6),
        any::<bool>(),
        proptest::collection::vec(request, 0..12),
    )
        .prop_map(|(flags, options, meta, requests)| {
            let mut b = flags.to_be_bytes().to_vec();
            let opt = |b: &mut Vec<u8>, option: u32, data: &[u8]| {
                OptionHeader {
                    option,
                    len: data.len() as u32,
                }
                .encode(b);
                b.extend_from_slice(data);
            };
            for (o, data) in options {
                opt(&mut b, o, &data);
            }
            opt(&mut b, OPT_STRUCTURED_REPLY, &[]);
            if meta {
                let mut d = Vec::new();
                MetaRequest {
                    name: String::new(),
                    queries: vec![META_BASE_ALLOCATION.into()],
                }
                .encode(&mut d);
                opt(&mut b, OPT_SET_META_CONTEXT, &d);
            }
            let mut d = Vec::new();
            InfoRequest {
                name: String::new(),
                infos: vec![],
            }
            .encode(&mut d);
            opt(&mut b, OPT_GO, &d);
            let mut answered = Vec::new();
            let mut stream_ok = true;
            for (i, (kind, flags, offset, len, with_payload)) in requests.into_iter().enumerate() {
                RequestHeader {
                    flags,
                    kind,
                    cookie: i as u64,
                    offset,
                    len,
                }
                .encode(&mut b);
                if kind == CMD_WRITE && with_payload {
                    b.extend(std::iter::repeat_n(0xa5, len as usize));
                }
                stream_ok &= kind != CMD_DISC && !(kind == CMD_WRITE && !with_payload && len > 0);
                answered.push(stream_ok);
            }
            (b, answered)
        })
}

/// Walk the server's output: greeting, option replies up to GO's ACK, then
/// structured chunks. Returns the cookies that got their final (DONE) chunk.
fn final_replies(out: &[u8]) -> Result<Vec<u64>, TestCaseError> {
    let mut at = 18;
    loop {
        let Some((option, reply, len)) =
            parse_option_reply(&out[at..]).expect("option reply magic")
        else {
            return Ok(Vec::new());
        };
        at += OPTION_REPLY_HEADER_LEN + len as usize;
        if option == OPT_GO && reply == REP_ACK {
            break;
        }
    }
    let mut done = Vec::new();
    while at < out.len() {
        let Some(ReplyHeader::Chunk {
            flags, cookie, len, ..
        }) = ReplyHeader::parse(&out[at..]).expect("reply magic")
        else {
            return Err(TestCaseError::fail(
                "truncated or simple reply after structured negotiation",
            ));
        };
        at += CHUNK_HEADER_LEN + len as usize;
        prop_assert!(at <= out.len(), "chunk payload truncated");
        if flags & REPLY_FLAG_DONE != 0 {
            prop_assert!(!done.contains(&cookie), "cookie {} answered twice", cookie);
            done.push(cookie);
        }
    }
    Ok(done)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_session(input in proptest::collection::vec(any::<u8>(), 0..512)) {
        let out = run(&input);
        // The greeting always goes out first.
        prop_assert_eq!(&out[..8], &NBDMAGIC.to_be_bytes());
    }

    #[test]
    fn every_request_gets_exactly_one_reply((input, answered) in session_bytes()) {
        let out = run(&input);
        let done = final_replies(&out)?;
        for (cookie, must) in answered.iter().enumerate() {
            if *must {
                prop_assert!(done.contains(&(cookie as u64)), "request {} got no reply", cookie);
            }
        }
        prop_assert!(done.iter().all(|&c| (c as usize) < answered.len()));
    }
}

/// A client's opening bytes up to its GO for export `name` (fixed newstyle,
/// no zeroes); requests follow.
pub(super) fn client_go(name: &str) -> Vec<u8> {
    let mut b = (CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    let mut d = Vec::new();
    InfoRequest {
        name: name.into(),
        infos: vec![],
    }
    .encode(&mut d);
    OptionHeader {
        option: OPT_GO,
        len: d.len() as u32,
    }
    .encode(&mut b);
    b.extend_from_slice(&d);
    b
}

#[test]
fn a_scripted_session_writes_through_to_the_disk() {
    let mut b = client_go("e");
    RequestHeader {
        flags: CMD_FLAG_FUA,
        kind: CMD_WRITE,
        cookie: 7,
        offset: 4096,
        len: 5,
    }
    .encode(&mut b);
    b.extend_from_slice(b"hello");
    RequestHeader {
        flags: 0,
        kind: CMD_READ,
        cookie: 8,
        offset: 0,
        len: 3,
    }
    .encode(&mut b);
    let (f, e) = export();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (result, out) = rt.block_on(replay(&b, &[e]));
    assert!(result.is_ok(), "{result:?}");
    let mut want_write = Vec::new();
    ReplyHeader::Simple {
        errno: 0,
        cookie: 7,
    }
    .encode(&mut want_write);
    let mut want_read = Vec::new();
    ReplyHeader::Simple {
        errno: 0,
        cookie: 8,
    }
    .encode(&mut want_read);
    want_read.extend_from_slice(&[0, 0, 0]);
    // Replies may come in either order (doc/proto.md allows it).
    let tail = &out[out.len() - want_write.len() - want_read.len()..];
    assert!(
        tail == [&want_write[..], &want_read[..]].concat()
            || tail == [&want_read[..], &want_write[..]].concat()
    );
    let disk = std::fs::read(f.path()).expect("read disk");
    assert_eq!(&disk[4096..4101], b"hello");
}

/// Whether the server's output holds the ACK that ends a GO, i.e. the
/// session went on to the transmission phase.
fn go_acked(out: &[u8]) -> bool {
    let mut at = 18;
    while let Ok(Some((option, reply, len))) = parse_option_reply(out.get(at..).unwrap_or(&[])) {
        if option == OPT_GO && reply == REP_ACK {
            return true;
        }
        at += OPTION_REPLY_HEADER_LEN + len as usize;
    }
    false
}

#[test]
fn fuzz_seeds_replay_without_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/nbd_session");
    let (mut n, mut reached) = (0, 0);
    for entry in std::fs::read_dir(&dir).expect("seed corpus directory") {
        let input = std::fs::read(entry.expect("dir entry").path()).expect("read seed");
        // Served as the fuzz target serves it, so seeds that name the export
        // reach the transmission phase here too.
        let out = run_on(FUZZ_EXPORT, &input);
        assert!(out.len() > 18, "the server answered more than its greeting");
        reached += usize::from(go_acked(&out));
        n += 1;
    }
    assert!(n >= 4, "seed corpus has {n} files");
    assert!(
        reached * 2 > n,
        "only {reached} of {n} seeds reach the transmission phase"
    );
}
