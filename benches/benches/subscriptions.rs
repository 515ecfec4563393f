//! The subscription table against its size: a hub with T groups and T connections,
//! connection i a member of group i (so T subscriptions), plus one probe connection.
//!
//! - `subscribe_unsubscribe`: the probe joins group k and leaves it again (k walks
//!   over all groups), with the presence events to the one other member drained;
//!   2 operations per iteration.
//! - `publish_lookup`: the probe publishes to group k (one receiver); the cost of
//!   finding the group and its member as the table grows.
//!
//! In criterion's test mode the 100,000-entry table is skipped.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pushwire_benches::full_run;
use pushwire_engine::hub::{Actor, AllowAll, ConnectionId, ConnectionInfo, Hub, HubConfig};
use pushwire_protocol::GroupId;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

struct Table {
    hub: Hub<AllowAll>,
    probe: ConnectionId,
    size: u32,
    next: u32,
}

impl Table {
    fn new(size: u32) -> Self {
        let config = HubConfig::default();
        let mut hub = Hub::new(config, AllowAll);
        let addr = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
        for g in 1..=size {
            hub.add_group(GroupId(g), format!("group {g}")).unwrap();
            let id = hub.connect(ConnectionInfo::new(format!("member{g}"), addr, 1, 1));
            hub.subscribe(id, &[GroupId(g)]).unwrap();
        }
        while hub.poll_delivery().is_some() {}
        let probe = hub.connect(ConnectionInfo::new("probe", addr, 2, 1).with_echo(false));
        Self {
            hub,
            probe,
            size,
            next: 0,
        }
    }

    fn next_group(&mut self) -> GroupId {
        // A stride that is coprime with any table size used here walks the whole table
        // in a scattered order, so lookups do not stay in one cache line.
        self.next = (self.next + 7_919) % self.size;
        GroupId(self.next + 1)
    }

    fn drain(&mut self) {
        while let Some(delivery) = self.hub.poll_delivery() {
            black_box(delivery);
        }
    }

    fn subscribe_unsubscribe(&mut self) {
        let group = [self.next_group()];
        self.hub.subscribe(self.probe, &group).unwrap();
        self.drain();
        self.hub.unsubscribe(self.probe, &group).unwrap();
        self.drain();
    }

    fn publish(&mut self, payload: &Bytes) {
        let group = [self.next_group()];
        self.hub
            .publish(Actor::Connection(self.probe), &group, payload.clone())
            .unwrap();
        self.drain();
    }
}

fn subscriptions(c: &mut Criterion) {
    let sizes: &[u32] = if full_run() {
        &[100, 1_000, 10_000, 100_000]
    } else {
        &[100, 1_000, 10_000]
    };
    let payload = Bytes::from(vec![b'x'; 128]);
    let mut group = c.benchmark_group("subscriptions");
    for &size in sizes {
        let mut table = Table::new(size);
        group.throughput(Throughput::Elements(2));
        group.bench_function(BenchmarkId::new("subscribe_unsubscribe", size), |b| {
            b.iter(|| table.subscribe_unsubscribe())
        });
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("publish_lookup", size), |b| {
            b.iter(|| table.publish(&payload))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = subscriptions
}
criterion_main!(benches);
