//! The storage cases every engine must pass, run against each engine in
//! turn (one table, all engines), with the plain engine as the oracle.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use geomirror::storage::{
    call, open_engine, BlockDevice, EngineKind, Inline, IoBuf, Reply, Request, StorageError,
    UringEngine, UringOptions,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

const KINDS: [EngineKind; 3] = [
    EngineKind::Plain,
    EngineKind::Uring,
    EngineKind::UringBuffered,
];
const DISK_BYTES: u64 = 8 << 20;

/// A fresh sparse file of `size` bytes in `dir`.
fn disk(dir: &std::path::Path, name: &str, size: u64) -> (std::path::PathBuf, File) {
    let path = dir.join(name);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("create disk file");
    f.set_len(size).expect("size disk file");
    (path, f)
}

fn engine(dir: &std::path::Path, kind: EngineKind) -> (std::path::PathBuf, Arc<dyn BlockDevice>) {
    let (path, f) = disk(dir, &format!("{kind:?}.img"), DISK_BYTES);
    (path, open_engine(f, DISK_BYTES, kind).expect("open engine"))
}

fn pattern(len: usize, seed: u64) -> IoBuf {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut b = IoBuf::zeroed(len);
    rng.fill(&mut b[..]);
    b
}

async fn write(dev: &dyn BlockDevice, offset: u64, data: IoBuf, fua: bool) {
    let r = call(dev, Request::Write { offset, data, fua }).await;
    assert!(matches!(r, Ok(Reply::Done)), "write at {offset}: {r:?}");
}

async fn read(dev: &dyn BlockDevice, offset: u64, len: u32) -> IoBuf {
    match call(dev, Request::Read { offset, len }).await {
        Ok(Reply::Read(b)) => b,
        other => panic!("read {offset}+{len}: {other:?}"),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn reads_return_what_was_written_at_any_offset_and_length() {
    let dir = common::tempdir();
    rt().block_on(async {
        for kind in KINDS {
            let (_, dev) = engine(dir.path(), kind);
            let cases: &[(u64, usize)] = &[
                (0, 4096),
                (4096, 65536),
                (1, 1),
                (511, 513),
                (4095, 4097),
                (12288, 1 << 20),
                (DISK_BYTES - 4096, 4096),
                (DISK_BYTES - 1, 1),
                (3 << 20, 0),
            ];
            for (i, &(offset, len)) in cases.iter().enumerate() {
                let data = pattern(len, i as u64);
                write(&*dev, offset, data.clone(), false).await;
                let got = read(&*dev, offset, len as u32).await;
                assert!(
                    got == data,
                    "{kind:?}: {offset}+{len} read back different bytes"
                );
            }
        }
    });
}

#[test]
fn fua_writes_and_flush_reach_the_file() {
    let dir = common::tempdir();
    rt().block_on(async {
        for kind in KINDS {
            let (path, dev) = engine(dir.path(), kind);
            write(&*dev, 8192, pattern(4096, 7), true).await;
            write(&*dev, 100, pattern(10, 8), true).await;
            assert!(matches!(call(&*dev, Request::Flush).await, Ok(Reply::Done)));
            let f = File::open(&path).expect("reopen");
            let mut got = vec![0u8; 4096];
            f.read_exact_at(&mut got, 8192).expect("read file");
            assert_eq!(
                got,
                &pattern(4096, 7)[..],
                "{kind:?}: FUA data not in the file"
            );
        }
    });
}

/// The result of a request the engine must have run inline.
fn inline_done(dev: &dyn BlockDevice, req: Request) -> Result<Reply, StorageError> {
    match dev.run_inline(req) {
        Inline::Done(r) => r,
        Inline::Declined(r) => panic!("{r:?} was declined by an idle engine"),
    }
}

#[test]
fn an_idle_uring_engine_runs_small_writes_and_flushes_inline() {
    let dir = common::tempdir();
    let (path, f) = disk(dir.path(), "inline.img", DISK_BYTES);
    let eng = UringEngine::new(f, DISK_BYTES, UringOptions::default()).expect("open engine");
    for (i, (offset, len, fua)) in [
        (8192u64, 4096usize, false),
        (100, 10, true),
        (1 << 20, 65536, false),
    ]
    .into_iter()
    .enumerate()
    {
        let data = pattern(len, 20 + i as u64);
        assert!(eng.inline_ready(&Request::Write {
            offset,
            data: data.clone(),
            fua
        }));
        let r = inline_done(&eng, Request::Write { offset, data, fua });
        assert!(
            matches!(r, Ok(Reply::Done)),
            "inline write {offset}+{len}: {r:?}"
        );
    }
    assert!(matches!(inline_done(&eng, Request::Flush), Ok(Reply::Done)));
    assert_eq!(eng.stats().inline, 4, "three writes and a flush ran inline");
    assert_eq!(eng.stats().requests, 0, "nothing went through the ring");
    // What the caller's thread wrote is what the file and the ring read.
    let file = File::open(&path).expect("reopen");
    rt().block_on(async {
        for (i, (offset, len)) in [(8192u64, 4096usize), (100, 10), (1 << 20, 65536)]
            .into_iter()
            .enumerate()
        {
            let want = pattern(len, 20 + i as u64);
            let mut got = vec![0u8; len];
            file.read_exact_at(&mut got, offset).expect("read file");
            assert_eq!(got, &want[..], "file at {offset}+{len}");
            assert!(
                read(&eng, offset, len as u32).await == want,
                "ring read at {offset}+{len}"
            );
        }
    });
}

#[test]
fn inline_runs_refuse_past_the_end_and_decline_what_belongs_on_the_ring() {
    let dir = common::tempdir();
    let (_, f) = disk(dir.path(), "decline.img", DISK_BYTES);
    let eng = UringEngine::new(f, DISK_BYTES, UringOptions::default()).expect("open engine");
    let past = Request::Write {
        offset: DISK_BYTES - 4096,
        data: pattern(8192, 1),
        fua: false,
    };
    match eng.run_inline(past) {
        Inline::Done(Err(e)) => assert_eq!(e.errno(), libc::ENOSPC, "{e}"),
        other => panic!("a write past the end ran or was declined: {other:?}"),
    }
    // Large writes, reads, trims and zeroing go through the ring, and the
    // request comes back whole so the caller can submit it.
    let big = pattern(128 << 10, 2);
    match eng.run_inline(Request::Write {
        offset: 0,
        data: big.clone(),
        fua: false,
    }) {
        Inline::Declined(Request::Write {
            offset: 0,
            data,
            fua: false,
        }) => {
            assert!(data == big, "a declined write came back with other bytes")
        }
        other => panic!("a 128 KiB write was not handed back: {other:?}"),
    }
    for req in [
        Request::Read {
            offset: 0,
            len: 4096,
        },
        Request::Trim {
            offset: 0,
            len: 4096,
        },
        Request::WriteZeroes {
            offset: 0,
            len: 4096,
            punch: false,
        },
    ] {
        assert!(!eng.inline_ready(&req), "{req:?} ready inline");
        assert!(matches!(eng.run_inline(req), Inline::Declined(_)));
    }
    // With the option off, nothing runs inline.
    let (_, f) = disk(dir.path(), "off.img", DISK_BYTES);
    let opts = UringOptions {
        inline: false,
        ..UringOptions::default()
    };
    let off = UringEngine::new(f, DISK_BYTES, opts).expect("open engine");
    assert!(matches!(
        off.run_inline(Request::Flush),
        Inline::Declined(Request::Flush)
    ));
    assert_eq!(
        eng.stats().inline,
        0,
        "no I/O ran inline: the write past the end was refused before"
    );
}

#[test]
fn the_inline_path_reopens_once_every_ring_request_is_answered() {
    let dir = common::tempdir();
    let (_, f) = disk(dir.path(), "busy.img", DISK_BYTES);
    let eng = UringEngine::new(f, DISK_BYTES, UringOptions::default()).expect("open engine");
    rt().block_on(async {
        // Every way a ring request is answered (done, zero length, after a
        // retry or fallback, refused) must end its count as in flight, or
        // the fast path would stay shut for good.
        let reqs = vec![
            Request::Write {
                offset: 0,
                data: pattern(1 << 20, 3),
                fua: true,
            },
            Request::Write {
                offset: 4096,
                data: IoBuf::zeroed(0),
                fua: false,
            },
            Request::Read {
                offset: 0,
                len: 4096,
            },
            Request::Read { offset: 0, len: 0 },
            Request::Flush,
            Request::Trim {
                offset: 0,
                len: 8192,
            },
            Request::WriteZeroes {
                offset: 8192,
                len: 8192,
                punch: false,
            },
            Request::Read {
                offset: DISK_BYTES,
                len: 4096,
            },
        ];
        let mut waits = Vec::new();
        for req in reqs {
            let (tx, rx) = tokio::sync::oneshot::channel();
            eng.submit(req, tx);
            waits.push(rx);
        }
        for w in waits {
            assert!(w.await.is_ok(), "a request went unanswered");
        }
    });
    assert!(eng.inline_ready(&Request::Flush), "still counted in flight");
    assert!(matches!(inline_done(&eng, Request::Flush), Ok(Reply::Done)));
}

#[test]
fn a_small_page_cache_write_runs_inline_while_the_ring_is_busy() {
    let dir = common::tempdir();
    let (path, f) = disk(dir.path(), "busy-inline.img", DISK_BYTES);
    let eng = UringEngine::new(f, DISK_BYTES, UringOptions::default()).expect("open engine");
    rt().block_on(async {
        let mut waits = Vec::new();
        for i in 0..6u64 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            eng.submit(
                Request::Write {
                    offset: (1 << 20) * (i + 1),
                    data: pattern(1 << 20, i),
                    fua: true,
                },
                tx,
            );
            waits.push(rx);
        }
        // Whatever the ring is doing, a small plain write is a page-cache
        // copy and runs here; it lands beside the ring's writes.
        let small = Request::Write {
            offset: 4096,
            data: pattern(8192, 42),
            fua: false,
        };
        assert!(eng.inline_ready(&small));
        assert!(matches!(inline_done(&eng, small), Ok(Reply::Done)));
        for w in waits {
            assert!(matches!(w.await, Ok(Ok(Reply::Done))));
        }
    });
    let disk = std::fs::read(&path).expect("read disk");
    assert!(disk[4096..4096 + 8192] == pattern(8192, 42)[..]);
    for i in 0..6u64 {
        let at = (1usize << 20) * (i as usize + 1);
        assert!(disk[at..at + (1 << 20)] == pattern(1 << 20, i)[..]);
    }
    assert_eq!(eng.stats().inline, 1);
}

#[test]
fn trim_reads_back_zero_and_leaves_a_hole() {
    let dir = common::tempdir();
    rt().block_on(async {
        for kind in KINDS {
            let (_, dev) = engine(dir.path(), kind);
            write(&*dev, 0, pattern(1 << 20, 1), false).await;
            let r = call(
                &*dev,
                Request::Trim {
                    offset: 65536,
                    len: 131072,
                },
            )
            .await;
            assert!(matches!(r, Ok(Reply::Done)), "{kind:?}: trim {r:?}");
            let got = read(&*dev, 65536, 131072).await;
            assert!(
                got.iter().all(|&b| b == 0),
                "{kind:?}: trimmed range not zero"
            );
            let around = read(&*dev, 0, 65536).await;
            assert!(
                around == pattern(65536, 1),
                "{kind:?}: trim touched data before it"
            );
            let ext = dev.extents(65536, 131072).expect("extents");
            assert!(
                ext[0].hole,
                "{kind:?}: trimmed range still allocated: {ext:?}"
            );
        }
    });
}

#[test]
fn write_zeroes_reads_back_zero_with_and_without_punch() {
    let dir = common::tempdir();
    rt().block_on(async {
        for kind in KINDS {
            let (_, dev) = engine(dir.path(), kind);
            write(&*dev, 0, pattern(1 << 20, 2), false).await;
            for (offset, len, punch) in [
                (4096, 8192, true),
                (20000, 3000, false),
                (1 << 19, 1 << 19, false),
                (7, 1, true),
            ] {
                let r = call(&*dev, Request::WriteZeroes { offset, len, punch }).await;
                assert!(matches!(r, Ok(Reply::Done)), "{kind:?}: write_zeroes {r:?}");
                let got = read(&*dev, offset, len as u32).await;
                assert!(
                    got.iter().all(|&b| b == 0),
                    "{kind:?}: {offset}+{len} punch={punch} not zero"
                );
            }
            let before = read(&*dev, 0, 7).await;
            assert!(
                before[..] == pattern(1 << 20, 2)[..7],
                "{kind:?}: bytes before the range changed"
            );
        }
    });
}

#[test]
fn requests_past_the_end_are_refused_with_enospc() {
    let dir = common::tempdir();
    rt().block_on(async {
        for kind in KINDS {
            let (_, dev) = engine(dir.path(), kind);
            let reqs = [
                Request::Read {
                    offset: DISK_BYTES - 4095,
                    len: 4096,
                },
                Request::Read {
                    offset: u64::MAX,
                    len: 1,
                },
                Request::Write {
                    offset: DISK_BYTES,
                    data: IoBuf::zeroed(1),
                    fua: false,
                },
                Request::Trim {
                    offset: 0,
                    len: DISK_BYTES + 1,
                },
                Request::WriteZeroes {
                    offset: u64::MAX - 1,
                    len: 4,
                    punch: true,
                },
            ];
            for req in reqs {
                let what = format!("{req:?}");
                let err = call(&*dev, req).await.expect_err("out of range must fail");
                assert_eq!(err.errno(), libc::ENOSPC, "{kind:?}: {what}: {err}");
            }
            assert!(dev.extents(DISK_BYTES, 1).is_err());
        }
    });
}

/// A disk file shorter than the size it is served with (truncated behind
/// our back): the part that exists is read, the short read is continued,
/// and reaching the missing end is an I/O error, not zeroes or a hang.
#[test]
fn a_read_past_the_end_of_a_truncated_file_is_an_io_error() {
    let dir = common::tempdir();
    rt().block_on(async {
        for kind in KINDS {
            let (path, dev) = engine(dir.path(), kind);
            write(&*dev, 0, pattern(8192, 9), false).await;
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(6000))
                .expect("truncate");
            let got = read(&*dev, 1000, 5000).await;
            assert!(got[..] == pattern(8192, 9)[1000..6000], "{kind:?}");
            let err = call(
                &*dev,
                Request::Read {
                    offset: 4096,
                    len: 4096,
                },
            )
            .await;
            let err = err.expect_err("reading past EOF must fail");
            assert_eq!(err.errno(), libc::EIO, "{kind:?}: {err}");
        }
    });
}

#[test]
fn extents_of_a_sparse_file_show_data_and_holes() {
    let dir = common::tempdir();
    rt().block_on(async {
        for kind in KINDS {
            let (_, dev) = engine(dir.path(), kind);
            let all = dev.extents(0, DISK_BYTES).expect("extents");
            assert_eq!(
                all,
                vec![geomirror::storage::Extent {
                    len: DISK_BYTES,
                    hole: true
                }]
            );
            write(&*dev, 1 << 20, pattern(1 << 20, 3), true).await;
            let ext = dev.extents(0, DISK_BYTES).expect("extents");
            assert_eq!(
                ext.iter().map(|e| e.len).sum::<u64>(),
                DISK_BYTES,
                "{kind:?}: {ext:?}"
            );
            assert!(
                ext[0].hole && !ext[1].hole && ext[2].hole,
                "{kind:?}: {ext:?}"
            );
            assert_eq!(ext[0].len, 1 << 20, "{kind:?}: {ext:?}");
            let inside = dev.extents((1 << 20) + 5, 10).expect("extents");
            assert_eq!(
                inside,
                vec![geomirror::storage::Extent {
                    len: 10,
                    hole: false
                }]
            );
        }
    });
}

/// Non-overlapping random writes, all in flight together, then the whole
/// disk compared with the plain engine's twin.
#[test]
fn five_hundred_concurrent_random_writes_match_the_plain_engine() {
    let dir = common::tempdir();
    rt().block_on(async {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let slot_bytes = 16384u64;
        let mut slots: Vec<u64> = (0..DISK_BYTES / slot_bytes).collect();
        for i in (1..slots.len()).rev() {
            slots.swap(i, rng.random_range(0..=i));
        }
        let writes: Vec<(u64, usize)> = slots[..500]
            .iter()
            .map(|s| {
                let start = rng.random_range(0..slot_bytes / 2);
                let len = rng.random_range(1..=(slot_bytes - start) as usize);
                (
                    s * slot_bytes + if rng.random_bool(0.5) { 0 } else { start },
                    len,
                )
            })
            .collect();
        let mut images = Vec::new();
        for kind in KINDS {
            let (path, dev) = engine(dir.path(), kind);
            let mut waits = Vec::new();
            for (i, &(offset, len)) in writes.iter().enumerate() {
                let (tx, rx) = tokio::sync::oneshot::channel();
                dev.submit(
                    Request::Write {
                        offset,
                        data: pattern(len, i as u64),
                        fua: false,
                    },
                    tx,
                );
                waits.push(rx);
            }
            for w in waits {
                assert!(
                    matches!(w.await, Ok(Ok(Reply::Done))),
                    "{kind:?}: a write failed"
                );
            }
            drop(dev);
            images.push((kind, std::fs::read(&path).expect("read image")));
        }
        let (_, oracle) = &images[0];
        for (kind, img) in &images[1..] {
            assert!(img == oracle, "{kind:?} differs from the plain engine");
        }
    });
}

#[test]
fn dropping_the_engine_completes_requests_in_flight() {
    let dir = common::tempdir();
    rt().block_on(async {
        for kind in &KINDS[1..] {
            let kind = *kind;
            let (path, dev) = engine(dir.path(), kind);
            let mut waits = Vec::new();
            for i in 0..200u64 {
                let (tx, rx) = tokio::sync::oneshot::channel();
                dev.submit(
                    Request::Write {
                        offset: i * 4096,
                        data: pattern(4096, i),
                        fua: false,
                    },
                    tx,
                );
                waits.push(rx);
            }
            drop(dev);
            for w in waits {
                assert!(
                    matches!(w.await, Ok(Ok(Reply::Done))),
                    "{kind:?}: lost a write at shutdown"
                );
            }
            let img = std::fs::read(&path).expect("read image");
            assert_eq!(&img[199 * 4096..200 * 4096], &pattern(4096, 199)[..]);
        }
    });
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        offset: u64,
        len: usize,
        seed: u64,
        fua: bool,
    },
    Read {
        offset: u64,
        len: u32,
    },
    Trim {
        offset: u64,
        len: u64,
    },
    Zero {
        offset: u64,
        len: u64,
        punch: bool,
    },
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    let small = DISK_BYTES / 16; // keep ranges overlapping often
    prop_oneof![
        4 => (0..small, 0usize..70000, any::<u64>(), any::<bool>())
            .prop_map(|(offset, len, seed, fua)| Op::Write { offset, len, seed, fua }),
        // Large and aligned: the default engine sends these with O_DIRECT,
        // mixed with page-cache writes over the same ranges.
        1 => (0..small / 4096, 64u64..=80, any::<u64>())
            .prop_map(|(block, pages, seed)| Op::Write { offset: block * 4096, len: (pages * 4096) as usize, seed, fua: false }),
        2 => (0..small, 0u32..70000).prop_map(|(offset, len)| Op::Read { offset, len }),
        1 => (0..small / 4096, 64u32..=80).prop_map(|(block, pages)| Op::Read { offset: block * 4096, len: pages * 4096 }),
        1 => (0..small, 0u64..70000).prop_map(|(offset, len)| Op::Trim { offset, len }),
        1 => (0..small, 0u64..70000, any::<bool>())
            .prop_map(|(offset, len, punch)| Op::Zero { offset, len, punch }),
        1 => Just(Op::Flush),
    ]
}

fn to_request(op: &Op) -> Request {
    match *op {
        Op::Write {
            offset,
            len,
            seed,
            fua,
        } => Request::Write {
            offset,
            data: pattern(len, seed),
            fua,
        },
        Op::Read { offset, len } => Request::Read { offset, len },
        Op::Trim { offset, len } => Request::Trim { offset, len },
        Op::Zero { offset, len, punch } => Request::WriteZeroes { offset, len, punch },
        Op::Flush => Request::Flush,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any sequence of operations gives the same replies and the same disk
    /// on every engine.
    #[test]
    fn engines_agree_on_any_operation_sequence(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = common::tempdir();
        rt().block_on(async {
            let devs: Vec<_> = KINDS.iter().map(|&k| (k, engine(dir.path(), k))).collect();
            for op in &ops {
                let mut replies = Vec::new();
                for (_, (_, dev)) in &devs {
                    replies.push(match call(&**dev, to_request(op)).await {
                        Ok(Reply::Read(b)) => Ok(Some(b.to_vec())),
                        Ok(Reply::Done) => Ok(None),
                        Err(e) => Err(e.errno()),
                    });
                }
                for (i, r) in replies.iter().enumerate().skip(1) {
                    assert_eq!(r, &replies[0], "{:?} differs on {op:?}", devs[i].0);
                }
            }
            let oracle = std::fs::read(&devs[0].1 .0).expect("read image");
            for (kind, (path, _)) in &devs[1..] {
                assert!(std::fs::read(path).expect("read image") == oracle, "{kind:?} image differs");
            }
        });
    }
}
