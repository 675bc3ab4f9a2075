//! Micro-benchmarks of the NBD codec: the per-request costs on the data path
//! (request header parse, reply header encode, structured read chunk encode).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use geomirror::nbd::consts::{CMD_FLAG_FUA, CMD_WRITE};
use geomirror::nbd::proto::{
    encode_data_chunk, encode_done, validate, Limits, ReplyHeader, RequestHeader,
};

fn codec(c: &mut Criterion) {
    let mut wire = Vec::new();
    RequestHeader {
        flags: CMD_FLAG_FUA,
        kind: CMD_WRITE,
        cookie: 42,
        offset: 1 << 30,
        len: 4096,
    }
    .encode(&mut wire);
    let limits = Limits {
        size: 1 << 40,
        read_only: false,
        structured: true,
        meta_allocation: true,
    };

    let mut g = c.benchmark_group("nbd_codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("request_header_parse_and_validate", |b| {
        b.iter(|| {
            let h = RequestHeader::parse(black_box(&wire))
                .expect("valid")
                .expect("complete");
            black_box(validate(&h, &limits))
        })
    });
    let mut out = Vec::with_capacity(64);
    g.bench_function("simple_reply_encode", |b| {
        b.iter(|| {
            out.clear();
            ReplyHeader::Simple {
                errno: 0,
                cookie: black_box(42),
            }
            .encode(&mut out);
            black_box(out.len())
        })
    });
    g.bench_function("structured_done_encode", |b| {
        b.iter(|| {
            out.clear();
            encode_done(&mut out, black_box(42), true, 0);
            black_box(out.len())
        })
    });
    g.bench_function("structured_read_chunk_encode", |b| {
        b.iter(|| {
            out.clear();
            encode_data_chunk(&mut out, black_box(42), black_box(1 << 30), 4096, true);
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
