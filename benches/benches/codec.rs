//! Encode and decode throughput of a publication frame.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pushwire_benches::{sample_published, PAYLOAD_SIZES};
use pushwire_protocol::{FrameDecoder, FrameLimits};
use std::hint::black_box;

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/published");
    for size in PAYLOAD_SIZES {
        let message = sample_published(size);
        let mut wire = BytesMut::new();
        message.encode(&mut wire);
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("encode", size), &message, |b, m| {
            let mut out = BytesMut::with_capacity(4096);
            b.iter(|| {
                out.clear();
                black_box(m).encode(&mut out);
                black_box(out.len())
            })
        });
        group.bench_with_input(BenchmarkId::new("decode", size), &wire, |b, wire| {
            let mut decoder = FrameDecoder::new(FrameLimits::default());
            b.iter(|| {
                let taken = decoder.feed(black_box(wire));
                debug_assert_eq!(taken, wire.len());
                black_box(decoder.next_message().unwrap())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
