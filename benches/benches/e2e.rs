//! End to end on loopback through the real server (`pushwire_tokio::server`), in
//! plaintext and over TLS: one publisher and 1 or 10 subscriber connections, 128-byte
//! payloads, driven by the same code as `pushwire bench` (flow control and all; see
//! `pushwire_tokio::cli::bench`).
//!
//! Each criterion iteration is 1,000 publications; throughput is in deliveries. The
//! time measured runs from the first publish to the last delivery: starting the
//! server, connecting and subscribing happen before it, once per sample. Every sample
//! gets a fresh server: a server keeps the sessions of clients that left (for its
//! session timeout), and they would still receive the next sample's publications.
//!
//! Server and clients share one tokio multi-thread runtime with 2 workers (this
//! machine's cores), so the numbers are for the whole system on one box.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pushwire_benches::cert_file;
use pushwire_tokio::cli::bench::{run_workload, start_server, PushwireTarget, Workload};
use pushwire_tokio::client::Trust;
use std::time::Duration;

/// Publications per criterion iteration.
const BATCH: u64 = 1_000;
const PAYLOAD: usize = 128;

fn workload(subs: usize, msgs: u64) -> Workload {
    Workload {
        pubs: 1,
        subs,
        groups: 1,
        room: false,
        msgs,
        size: PAYLOAD,
        rate: None,
        window_bytes: 2 * 1024 * 1024,
        timeout: Duration::from_secs(120),
        progress: false,
    }
}

fn e2e(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("e2e");
    for (name, plaintext) in [("plaintext", true), ("tls", false)] {
        let trust = if plaintext {
            Trust::Plaintext
        } else {
            Trust::CaFiles(vec![cert_file("ca.cert.pem")])
        };
        for subs in [1usize, 10] {
            group.throughput(Throughput::Elements(BATCH * subs as u64));
            group.bench_function(
                BenchmarkId::new(name, format!("{subs}sub/{PAYLOAD}B")),
                |b| {
                    b.iter_custom(|iters| {
                        runtime.block_on(async {
                            let server = start_server(plaintext, 1).await.expect("server");
                            let addr = server.local_addr().expect("bound");
                            let target = PushwireTarget {
                                host: addr.ip().to_string(),
                                port: addr.port(),
                                trust: trust.clone(),
                                password: "MyPassword".to_owned(),
                                batch: None,
                                sub_servers: Vec::new(),
                            };
                            let report = run_workload(&target, &workload(subs, iters * BATCH))
                                .await
                                .expect("benchmark run");
                            assert_eq!(report.delivered, report.expected);
                            server.shutdown().await;
                            report.deliver_time
                        })
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = e2e
}
criterion_main!(benches);
