//! Hub fan-out: one publication from a client connection to a group of N subscribers
//! (1 to 10,000), payloads of 16 B, 128 B and 1 KiB. Throughput is in deliveries (one
//! per subscriber), so criterion's elements/s is deliveries per second on one core.
//!
//! Four depths:
//! - `hub_only`: the hub's work — `publish`, then drain every delivery and drop it;
//! - `hub_encode`: plus the generic encoding — each delivery turned into a `Message`
//!   (`Delivery::into_message`, which allocates the group list) and encoded into the
//!   receiver's outbox, copying the payload;
//! - `hub_prefix`: the fan-out fast path instead — `encode_published_prefix` for the
//!   per-receiver part, borrowing the shared group list, then the payload copied;
//! - `hub_queue`: what the server's dispatch does under its lock — each delivery
//!   encoded into the receiver's `OutboundQueue` (`push_delivery`: the publication's
//!   shared frame copied into the queue's buffer, the receiver's sequence number
//!   patched in).
//!
//! The outboxes are cleared (the queues taken) once past 8 KiB, as the connection tasks
//! would take them.
//! The queues have no limit: nothing writes, so any limit would be reached.
//!
//! In criterion's test mode (`cargo test --bench fanout`) the 10,000-subscriber case is
//! skipped: building it sends 50 million presence events. To profile one case without
//! the setup of the others, name the counts to build in `PUSHWIRE_FANOUT_COUNTS`:
//!
//! ```sh
//! PUSHWIRE_FANOUT_COUNTS=1000 perf record -- target/release/deps/fanout-… --bench \
//!     --profile-time 5 'fanout/hub_only/1000/16B$'
//! ```

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pushwire_benches::{full_run, PAYLOAD_SIZES};
use pushwire_engine::hub::{
    Actor, AllowAll, ConnectionId, ConnectionInfo, Hub, HubConfig, OutboundQueue, PushEvent,
    SlowConsumerPolicy,
};
use pushwire_protocol::{encode_published_prefix, GroupId};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

const GROUP: GroupId = GroupId(1);
const OUTBOX_FLUSH: usize = 8 * 1024;

struct Fanout {
    hub: Hub<AllowAll>,
    publisher: ConnectionId,
    /// Indexed by connection id (ids are assigned from 1, ascending).
    outboxes: Vec<BytesMut>,
    /// The server's per-connection queues, indexed the same way.
    queues: Vec<OutboundQueue>,
}

fn info(user: String, port: u16) -> ConnectionInfo {
    ConnectionInfo::new(user, IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), port, 1)
}

impl Fanout {
    fn new(subscribers: usize) -> Self {
        let config = HubConfig::default();
        let mut hub = Hub::new(config, AllowAll);
        hub.add_group(GROUP, "fan-out").unwrap();
        let publisher = hub.connect(info("publisher@example.com".into(), 40_000).with_echo(false));
        let mut max_id = publisher.0;
        for i in 0..subscribers {
            let id = hub.connect(info(format!("subscriber{i}@example.com"), i as u16));
            hub.subscribe(id, &[GROUP]).unwrap();
            // Presence events to the members already in: drained as we go.
            while hub.poll_delivery().is_some() {}
            max_id = max_id.max(id.0);
        }
        let outboxes = (0..=max_id)
            .map(|_| BytesMut::with_capacity(16 * 1024))
            .collect();
        // No limit: nothing writes, so any limit would be reached.
        let queues = (0..=max_id)
            .map(|_| OutboundQueue::new(usize::MAX, SlowConsumerPolicy::Disconnect))
            .collect();
        Self {
            hub,
            publisher,
            outboxes,
            queues,
        }
    }

    fn publish(&mut self, payload: &Bytes) {
        self.hub
            .publish(Actor::Connection(self.publisher), &[GROUP], payload.clone())
            .unwrap();
    }

    fn hub_only(&mut self, payload: &Bytes) {
        self.publish(payload);
        while let Some(delivery) = self.hub.poll_delivery() {
            black_box(delivery);
        }
    }

    fn hub_encode(&mut self, payload: &Bytes) {
        self.publish(payload);
        while let Some(delivery) = self.hub.poll_delivery() {
            let (ConnectionId(id), message) = delivery.into_message();
            let outbox = &mut self.outboxes[id as usize];
            message.encode(outbox);
            if outbox.len() > OUTBOX_FLUSH {
                outbox.clear();
            }
        }
    }

    fn hub_queue(&mut self, payload: &Bytes) {
        self.publish(payload);
        while let Some(delivery) = self.hub.poll_delivery() {
            let queue = &mut self.queues[delivery.connection().0 as usize];
            black_box(queue.push_delivery(&delivery));
            if queue.bytes() > OUTBOX_FLUSH {
                black_box(queue.take_frames());
            }
        }
    }

    fn hub_prefix(&mut self, payload: &Bytes) {
        self.publish(payload);
        while let Some(delivery) = self.hub.poll_delivery() {
            let (ConnectionId(id), event) = delivery.into_parts();
            let outbox = &mut self.outboxes[id as usize];
            if let PushEvent::Published {
                seq,
                sender,
                groups,
                payload,
                compressed: None,
            } = event
            {
                groups.with_slice(|groups| {
                    encode_published_prefix(outbox, seq, &sender, groups, None, payload.len())
                });
                outbox.extend_from_slice(&payload);
            }
            if outbox.len() > OUTBOX_FLUSH {
                outbox.clear();
            }
        }
    }
}

/// The subscriber counts to measure.
fn counts() -> Vec<usize> {
    if let Ok(list) = std::env::var("PUSHWIRE_FANOUT_COUNTS") {
        return list
            .split(',')
            .map(|n| n.trim().parse().expect("PUSHWIRE_FANOUT_COUNTS: numbers"))
            .collect();
    }
    if full_run() {
        vec![1, 10, 100, 1_000, 10_000]
    } else {
        vec![1, 10, 100, 1_000]
    }
}

fn fanout(c: &mut Criterion) {
    let counts = counts();
    let mut group = c.benchmark_group("fanout");
    for &subscribers in &counts {
        let mut fanout = Fanout::new(subscribers);
        // Check the setup once: every subscriber gets exactly one delivery.
        fanout.publish(&Bytes::from_static(b"check"));
        let mut deliveries = 0;
        while fanout.hub.poll_delivery().is_some() {
            deliveries += 1;
        }
        assert_eq!(deliveries, subscribers);

        group.throughput(Throughput::Elements(subscribers as u64));
        for size in PAYLOAD_SIZES {
            let payload = Bytes::from(vec![b'x'; size]);
            let id = format!("{subscribers}/{size}B");
            group.bench_with_input(BenchmarkId::new("hub_only", &id), &payload, |b, p| {
                b.iter(|| fanout.hub_only(p))
            });
            group.bench_with_input(BenchmarkId::new("hub_encode", &id), &payload, |b, p| {
                b.iter(|| fanout.hub_encode(p))
            });
            group.bench_with_input(BenchmarkId::new("hub_prefix", &id), &payload, |b, p| {
                b.iter(|| fanout.hub_prefix(p))
            });
            group.bench_with_input(BenchmarkId::new("hub_queue", &id), &payload, |b, p| {
                b.iter(|| fanout.hub_queue(p))
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = fanout
}
criterion_main!(benches);
