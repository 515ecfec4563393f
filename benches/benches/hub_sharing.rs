//! How the server's connections should share the hub: one lock around it, or an
//! actor task that owns it. Measures a publication to 100 subscribers, from the
//! publish call until every delivery is encoded into its receiver's outbox, both
//! ways, on tokio's multi-thread runtime with 2 workers (this machine's cores).
//!
//! The io-tokio server uses the lock; this benchmark is the measurement its comment
//! cites.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pushwire_engine::hub::{Actor, AllowAll, ConnectionId, ConnectionInfo, Hub, HubConfig};
use pushwire_protocol::GroupId;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

const SUBSCRIBERS: usize = 100;

struct Core {
    hub: Hub<AllowAll>,
    outboxes: Vec<BytesMut>,
}

impl Core {
    fn new() -> Self {
        let mut hub = Hub::new(HubConfig::default(), AllowAll);
        hub.add_group(GroupId(1), "bench").unwrap();
        let mut outboxes = Vec::new();
        for i in 0..SUBSCRIBERS {
            let id = hub.connect(ConnectionInfo::new(
                format!("user{i}"),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                10_000 + i as u16,
                1,
            ));
            hub.subscribe(id, &[GroupId(1)]).unwrap();
            outboxes.push(BytesMut::new());
        }
        let mut core = Core { hub, outboxes };
        core.dispatch();
        core
    }

    fn publish(&mut self, payload: Bytes) {
        self.hub
            .publish(Actor::Server, &[GroupId(1)], payload)
            .unwrap();
        self.dispatch();
    }

    /// What the server does under its lock: encode each delivery into its outbox.
    fn dispatch(&mut self) {
        while let Some(d) = self.hub.poll_delivery() {
            let (ConnectionId(id), message) = d.into_message();
            let outbox = &mut self.outboxes[id as usize - 1];
            message.encode(outbox);
            // The connection task would take the bytes; keep memory flat here.
            if outbox.len() > 1 << 20 {
                outbox.clear();
            }
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn hub_sharing(c: &mut Criterion) {
    let payload = Bytes::from(vec![b'x'; 128]);
    let mut group = c.benchmark_group("hub_sharing/publish_to_100");
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));

    let rt = runtime();
    let locked = Arc::new(Mutex::new(Core::new()));
    group.bench_function("mutex", |b| {
        b.iter_custom(|iters| {
            let locked = locked.clone();
            let payload = payload.clone();
            rt.block_on(async move {
                tokio::spawn(async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        locked.lock().unwrap().publish(payload.clone());
                    }
                    start.elapsed()
                })
                .await
                .unwrap()
            })
        })
    });

    let (tx, mut rx) = mpsc::unbounded_channel::<(Bytes, oneshot::Sender<()>)>();
    rt.spawn(async move {
        let mut core = Core::new();
        while let Some((payload, done)) = rx.recv().await {
            core.publish(payload);
            let _ = done.send(());
        }
    });
    group.bench_function("actor", |b| {
        b.iter_custom(|iters| {
            let tx = tx.clone();
            let payload = payload.clone();
            rt.block_on(async move {
                tokio::spawn(async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let (done, wait) = oneshot::channel();
                        tx.send((payload.clone(), done)).unwrap();
                        wait.await.unwrap();
                    }
                    start.elapsed()
                })
                .await
                .unwrap()
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = hub_sharing
}
criterion_main!(benches);
