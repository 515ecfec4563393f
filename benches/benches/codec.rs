//! Encode and decode throughput of a publication frame at each payload size, and of
//! every push event type (a 16-byte payload where the type has one).

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pushwire_benches::{sample_published, sample_push_events, PAYLOAD_SIZES};
use pushwire_protocol::{FrameDecoder, FrameLimits, Message};
use std::hint::black_box;
use std::time::Duration;

fn bench_encode(b: &mut criterion::Bencher<'_>, message: &Message) {
    let mut out = BytesMut::with_capacity(4096);
    b.iter(|| {
        out.clear();
        black_box(message).encode(&mut out);
        black_box(out.len())
    })
}

fn bench_decode(b: &mut criterion::Bencher<'_>, wire: &BytesMut) {
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    b.iter(|| {
        let taken = decoder.feed(black_box(wire));
        debug_assert_eq!(taken, wire.len());
        black_box(decoder.next_message().unwrap())
    })
}

fn encoded(message: &Message) -> BytesMut {
    let mut wire = BytesMut::new();
    message.encode(&mut wire);
    wire
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/published");
    for size in PAYLOAD_SIZES {
        let message = sample_published(size);
        let wire = encoded(&message);
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("encode", size), &message, bench_encode);
        group.bench_with_input(BenchmarkId::new("decode", size), &wire, bench_decode);
    }
    group.finish();

    let mut group = c.benchmark_group("codec/push_events");
    group.throughput(Throughput::Elements(1));
    for (name, message) in sample_push_events(16) {
        let wire = encoded(&message);
        group.bench_with_input(BenchmarkId::new("encode", name), &message, bench_encode);
        group.bench_with_input(BenchmarkId::new("decode", name), &wire, bench_decode);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Nanosecond operations: a short measurement is stable.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = codec
}
criterion_main!(benches);
