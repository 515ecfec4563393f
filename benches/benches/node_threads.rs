//! The server node's shared part from one and from two OS threads: the baseline for
//! taking the node out from under its one lock.
//!
//! A [`Node`] behind a `std::sync::Mutex`, as `io-tokio`'s server holds it, with real
//! [`NodeConnection`]s (plaintext; each let in by a real Hello from a client engine
//! during set-up). Each thread is a *lane* with groups, a publisher and receivers of
//! its own; lanes share nothing but the node. One step of a lane is what the lane's
//! connection tasks would do for one read of its publisher:
//!
//! 1. the publisher's connection takes one read of [`PER_READ`] Publish frames of
//!    [`PAYLOAD`] bytes, round-robin over the lane's [`GROUPS`] groups (decoded on the
//!    thread, outside the lock), and hands them to the node under the lock, as
//!    `ServerHandle::with_node` does (the node's deadline before and after, its
//!    events drained): fan-out in the hub, each delivery copied into its receiver's
//!    mailbox, receivers woken;
//! 2. the publisher's transmit (its PushTaken notice);
//! 3. every woken receiver ([`RECEIVERS`] per group): its mailbox taken and its
//!    transmit produced (`poll_transmit`, as its task does before a socket write; the
//!    bytes are then dropped, not written), and, once 32 events are unacknowledged,
//!    the client's Ack fed back in and handed to the node under the lock — the
//!    client's own acknowledgement rule.
//!
//! Every receiver's transmit is checked against the frames it must carry, so a step
//! that delivered less fails the run instead of counting.
//!
//! Why the node and not the hub: the node is what the server locks (the hub is inside
//! it, and the copy of each delivery into its receiver's mailbox, the wake-ups and the
//! acknowledgements happen under the same lock), and its public API takes real
//! connections, so nothing had to be imitated. What is left out: sockets, tokio and
//! TLS — the connection's own work outside the lock, which a real server also has and
//! which would make any lock look less of a bottleneck. Plaintext keeps that part as
//! small as it gets (`poll_transmit` hands the mailbox's buffer over without a copy),
//! so the bench shows the shared part at its most exposed.
//!
//! Throughput is publications per second over all lanes (×10 for deliveries), as
//! `node_threads/1_thread` and `node_threads/2_threads`. The target for a redesign is
//! 2 threads ≥ 1.7 × 1 thread on this 2-core machine; with one lock around the node it
//! is expected near 1 ×. After the criterion runs, the bench prints the mean rates
//! over every timed call and their ratio.
//!
//! `NODE_THREADS_LOCK_TIMES=1` also times each acquisition of the node's lock (wait
//! and hold, with `Instant::now`, which adds its own cost) and prints the shares of
//! the wall time spent waiting for and holding the lock.
//!
//! ```sh
//! cargo bench -p pushwire-benches --bench node_threads
//! NODE_THREADS_LOCK_TIMES=1 cargo bench -p pushwire-benches --bench node_threads
//! ```

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, Criterion, Throughput};
use pushwire_engine::client::{
    ClientConfig, ClientConnection, ClientState, ClientTransport, PushCommand,
};
use pushwire_engine::hub::AllowAll;
use pushwire_engine::node::{ConnectionEvent, Node, NodeConfig, NodeConnection};
use pushwire_engine::server::{ServerConfig, ServerTransport};
use pushwire_protocol::{Ack, ClientOptions, GroupId, Message, Publish, ResumeToken};
use rustls::pki_types::UnixTime;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

/// Most threads (lanes) measured.
const MAX_THREADS: usize = 2;
/// Groups of each lane.
const GROUPS: u32 = 4;
/// Receivers in each group.
const RECEIVERS: usize = 10;
/// Publish frames in one read of a lane's publisher.
const PER_READ: usize = 16;
/// Payload bytes.
const PAYLOAD: usize = 16;
/// The client engine acknowledges once this many events are unacknowledged
/// (`engine::client`'s `ACK_EVERY`).
const ACK_EVERY: u64 = 32;

/// A waker that raises a flag, so a lane looks only at the connections the node woke
/// (as a connection task runs only when woken).
#[derive(Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

impl Flag {
    fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }
}

type SharedNode = Mutex<Node<AllowAll>>;

/// Lock timing (`NODE_THREADS_LOCK_TIMES`): nanoseconds waited and held, summed.
static TIME_LOCKS: AtomicBool = AtomicBool::new(false);
static LOCK_WAIT_NS: AtomicU64 = AtomicU64::new(0);
static LOCK_HOLD_NS: AtomicU64 = AtomicU64::new(0);
static LOCKS: AtomicU64 = AtomicU64::new(0);

fn lock(node: &SharedNode) -> MutexGuard<'_, Node<AllowAll>> {
    node.lock().unwrap_or_else(|e| e.into_inner())
}

/// What `ServerHandle::with_node` does around every use of the node.
fn with_node(node: &SharedNode, f: impl FnOnce(&mut Node<AllowAll>)) {
    let timed = TIME_LOCKS.load(Ordering::Relaxed);
    let asked = timed.then(Instant::now);
    let mut guard = lock(node);
    let got = timed.then(Instant::now);
    let deadline = guard.poll_timeout();
    f(&mut guard);
    std::hint::black_box(guard.poll_timeout() != deadline);
    while guard.poll_event().is_some() {}
    // Before the unlock: its wake-up of a waiting thread is not the holder's time.
    let released = timed.then(Instant::now);
    drop(guard);
    if let (Some(asked), Some(got), Some(released)) = (asked, got, released) {
        LOCK_WAIT_NS.fetch_add((got - asked).as_nanos() as u64, Ordering::Relaxed);
        LOCK_HOLD_NS.fetch_add((released - got).as_nanos() as u64, Ordering::Relaxed);
        LOCKS.fetch_add(1, Ordering::Relaxed);
    }
}

/// A receiver's server side.
struct Receiver {
    conn: NodeConnection,
    woken: Arc<Flag>,
    /// The sequence number of the last event its transmits carried.
    seq: u64,
    acked: u64,
}

/// One thread's connections.
struct Lane {
    publisher: NodeConnection,
    publisher_woken: Arc<Flag>,
    /// One read of the publisher: `PER_READ` Publish frames.
    input: Vec<u8>,
    receivers: Vec<Receiver>,
    /// Transmit bytes each receiver must produce per step.
    bytes_per_receiver: usize,
    out: Vec<u8>,
    ack: BytesMut,
}

impl Lane {
    /// One read of the publisher and what its receivers' tasks do about it.
    fn step(&mut self, node: &SharedNode) {
        let now = Instant::now();
        self.publisher.handle_input(now, &self.input);
        while self.publisher.poll_event().is_some() {}
        if self.publisher.wants_node() {
            with_node(node, |n| n.handle_connection(now, &mut self.publisher));
        }
        if self.publisher_woken.take() {
            self.out.clear();
            self.publisher.poll_transmit(now, &mut self.out);
            if self.publisher.wants_node() {
                with_node(node, |n| n.handle_connection(now, &mut self.publisher));
            }
        }
        let per_group = (PER_READ / GROUPS as usize) as u64;
        for r in &mut self.receivers {
            if !r.woken.take() {
                continue;
            }
            r.conn.handle_mailbox(now);
            self.out.clear();
            let n = r.conn.poll_transmit(now, &mut self.out);
            r.conn.handle_written(now, n);
            assert_eq!(n, self.bytes_per_receiver, "a receiver's frames");
            r.seq += per_group;
            if r.seq >= r.acked + ACK_EVERY {
                self.ack.clear();
                Message::Ack(Ack { last_seq: r.seq }).encode(&mut self.ack);
                r.conn.handle_input(now, &self.ack);
                while r.conn.poll_event().is_some() {}
                r.acked = r.seq;
            }
            if r.conn.wants_node() {
                with_node(node, |n| n.handle_connection(now, &mut r.conn));
            }
        }
    }
}

// --- Set-up: real Hellos through client engines --------------------------------------

/// A client engine and its server connection, during set-up.
struct Pair {
    client: ClientConnection,
    conn: NodeConnection,
    woken: Arc<Flag>,
}

fn connect(node: &mut Node<AllowAll>, user: &str, port: u16, now: Instant) -> Pair {
    let mut config = ClientConfig::new(ClientTransport::Plaintext, user, b"pw");
    config.options = ClientOptions {
        echo: false,
        ..ClientOptions::default()
    };
    let client = ClientConnection::new(config, now, UnixTime::now()).expect("a plaintext client");
    let peer: SocketAddr = ([127, 0, 0, 1], port).into();
    let woken = Arc::new(Flag::default());
    let conn = node
        .connection(peer, now, Waker::from(woken.clone()))
        .expect("a plaintext connection");
    let mut pair = Pair {
        client,
        conn,
        woken,
    };
    settle(node, std::slice::from_mut(&mut pair), now);
    assert_eq!(pair.client.state(), ClientState::Ready, "{user} let in");
    pair
}

/// Moves bytes both ways until nothing changes (every Hello permitted).
fn settle(node: &mut Node<AllowAll>, pairs: &mut [Pair], now: Instant) {
    let mut buf = Vec::new();
    let mut token = 0u64;
    for _ in 0..10_000 {
        let mut progress = false;
        for p in pairs.iter_mut() {
            buf.clear();
            p.client.poll_transmit(now, &mut buf);
            if !buf.is_empty() {
                p.conn.handle_input(now, &buf);
                progress = true;
            }
            while let Some(event) = p.conn.poll_event() {
                progress = true;
                if let ConnectionEvent::Authenticate(request) = event {
                    token += 1;
                    let mut bytes = [0u8; 16];
                    bytes[..8].copy_from_slice(&token.to_le_bytes());
                    bytes[8..].copy_from_slice(&u64::from(p.conn.peer().port()).to_le_bytes());
                    node.handle_hello(now, &mut p.conn, request, ResumeToken(bytes));
                }
            }
            if p.conn.wants_node() {
                node.handle_connection(now, &mut p.conn);
                progress = true;
            }
            buf.clear();
            p.conn.poll_transmit(now, &mut buf);
            if !buf.is_empty() {
                p.client.handle_input(now, &buf);
                progress = true;
            }
            while p.client.poll_event().is_some() {
                progress = true;
            }
        }
        if !progress {
            return;
        }
    }
    panic!("set-up did not settle");
}

/// The node and `MAX_THREADS` lanes, each with its groups subscribed, checked by one
/// step whose transmits go through the receivers' client engines.
fn setup() -> (SharedNode, Vec<Lane>) {
    let now = Instant::now();
    let config = NodeConfig::new(ServerConfig::new(ServerTransport::Plaintext));
    let mut node = Node::new(config, AllowAll).expect("a valid node config");
    let mut port = 20_000u16;
    let mut next_port = || {
        port += 1;
        port
    };
    let mut lanes = Vec::new();
    for lane in 0..MAX_THREADS {
        let first = lane as u32 * GROUPS + 1;
        for g in first..first + GROUPS {
            node.add_group(GroupId(g), format!("lane {lane} group {g}"))
                .expect("a new group");
        }
        let publisher = connect(&mut node, &format!("pub-{lane}"), next_port(), now);
        let mut receivers = Vec::new();
        for g in first..first + GROUPS {
            for r in 0..RECEIVERS {
                let mut pair = connect(&mut node, &format!("sub-{lane}-{g}-{r}"), next_port(), now);
                pair.client
                    .push(PushCommand::Subscribe(vec![GroupId(g)]))
                    .expect("subscribe");
                receivers.push(pair);
            }
        }
        settle(&mut node, &mut receivers, now);
        let mut input = BytesMut::new();
        for i in 0..PER_READ {
            Message::Publish(Publish {
                command_id: i as u64 + 1,
                groups: vec![GroupId(first + (i as u32 % GROUPS))],
                payload: Bytes::from(vec![b'x'; PAYLOAD]),
                compression: None,
            })
            .encode(&mut input);
        }
        lanes.push((publisher, receivers, input.to_vec()));
    }
    // Everyone's presence events delivered: each receiver's next event is a
    // publication, numbered after what its client has seen.
    let mut built = Vec::new();
    for (publisher, mut receivers, input) in lanes {
        settle(&mut node, &mut receivers, now);
        for r in &receivers {
            r.woken.take();
        }
        let seqs: Vec<u64> = receivers.iter().map(|r| r.client.last_seq()).collect();
        built.push((publisher, receivers, input, seqs));
    }
    let node = Mutex::new(node);
    let mut lanes = Vec::new();
    for (publisher, mut pairs, input, seqs) in built {
        // The check: one step by hand, every receiver's client decodes its share.
        let mut lane = Lane {
            publisher: publisher.conn,
            publisher_woken: publisher.woken,
            input,
            receivers: Vec::new(),
            bytes_per_receiver: 0,
            out: Vec::new(),
            ack: BytesMut::new(),
        };
        let now = Instant::now();
        lane.publisher.handle_input(now, &lane.input);
        while lane.publisher.poll_event().is_some() {}
        with_node(&node, |n| n.handle_connection(now, &mut lane.publisher));
        let per_group = (PER_READ / GROUPS as usize) as u64;
        let mut out = Vec::new();
        for (pair, seq) in pairs.iter_mut().zip(&seqs) {
            assert!(pair.woken.take(), "every receiver woken");
            out.clear();
            let n = pair.conn.poll_transmit(now, &mut out);
            pair.client.handle_input(now, &out);
            while pair.client.poll_event().is_some() {}
            assert_eq!(
                pair.client.last_seq(),
                seq + per_group,
                "one event per publication"
            );
            if lane.bytes_per_receiver == 0 {
                lane.bytes_per_receiver = n;
            }
            assert_eq!(
                n, lane.bytes_per_receiver,
                "the same frames for every receiver"
            );
        }
        lane.publisher_woken.take();
        lane.out.clear();
        lane.publisher.poll_transmit(now, &mut lane.out);
        lane.receivers = pairs
            .into_iter()
            .zip(seqs)
            .map(|(pair, seq)| Receiver {
                conn: pair.conn,
                woken: pair.woken,
                seq: seq + per_group,
                acked: seq,
            })
            .collect();
        lanes.push(lane);
    }
    (node, lanes)
}

// --- The measurement ------------------------------------------------------------------

/// Runs `iters` steps on each of the first `threads` lanes at once; the wall time
/// from the first thread's start to the last one's end.
fn run(node: &SharedNode, lanes: &mut [Lane], threads: usize, iters: u64) -> Duration {
    let barrier = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = lanes[..threads]
            .iter_mut()
            .map(|lane| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        lane.step(node);
                    }
                    (start, Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a lane panicked"))
            .collect()
    });
    let start = spans.iter().map(|s| s.0).min().expect("a lane");
    let end = spans.iter().map(|s| s.1).max().expect("a lane");
    end - start
}

/// Steps and wall time of every timed call, per thread count (index threads − 1).
struct Totals {
    steps: [AtomicU64; MAX_THREADS],
    nanos: [AtomicU64; MAX_THREADS],
}

static TOTALS: Totals = Totals {
    steps: [const { AtomicU64::new(0) }; MAX_THREADS],
    nanos: [const { AtomicU64::new(0) }; MAX_THREADS],
};

fn node_threads(c: &mut Criterion) {
    let (node, mut lanes) = setup();
    let mut group = c.benchmark_group("node_threads");
    for threads in 1..=MAX_THREADS {
        group.throughput(Throughput::Elements((threads * PER_READ) as u64));
        let name = format!("{threads}_thread{}", if threads == 1 { "" } else { "s" });
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let elapsed = run(&node, &mut lanes, threads, iters);
                TOTALS.steps[threads - 1].fetch_add(iters * threads as u64, Ordering::Relaxed);
                TOTALS.nanos[threads - 1].fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
                elapsed
            })
        });
    }
    group.finish();
}

/// The mean rates over every timed call (warm-up included), and their ratio; nothing
/// after a test run (`cargo test --bench`: one step each, not a measurement).
fn summary() {
    let rate = |i: usize| {
        let steps = TOTALS.steps[i].load(Ordering::Relaxed);
        let nanos = TOTALS.nanos[i].load(Ordering::Relaxed);
        (steps >= 1_000).then(|| (steps * PER_READ as u64) as f64 / (nanos as f64 / 1e9))
    };
    let (Some(one), Some(two)) = (rate(0), rate(1)) else {
        return;
    };
    let deliveries = RECEIVERS as f64;
    println!(
        "node_threads summary (mean of all timed calls): 1 thread {:.0} publications/s \
         ({:.0} deliveries/s), 2 threads {:.0} publications/s ({:.0} deliveries/s), \
         2 / 1 = {:.2}",
        one,
        one * deliveries,
        two,
        two * deliveries,
        two / one
    );
}

/// With `NODE_THREADS_LOCK_TIMES`: a timed run of each thread count outside criterion,
/// with the lock's wait and hold times.
fn lock_times() {
    if std::env::var_os("NODE_THREADS_LOCK_TIMES").is_none() {
        return;
    }
    let (node, mut lanes) = setup();
    TIME_LOCKS.store(true, Ordering::Relaxed);
    for threads in 1..=MAX_THREADS {
        run(&node, &mut lanes, threads, 20_000);
        LOCK_WAIT_NS.store(0, Ordering::Relaxed);
        LOCK_HOLD_NS.store(0, Ordering::Relaxed);
        LOCKS.store(0, Ordering::Relaxed);
        let steps = 100_000;
        let wall = run(&node, &mut lanes, threads, steps);
        let wait = LOCK_WAIT_NS.load(Ordering::Relaxed) as f64;
        let hold = LOCK_HOLD_NS.load(Ordering::Relaxed) as f64;
        let locks = LOCKS.load(Ordering::Relaxed) as f64;
        let wall_ns = wall.as_nanos() as f64;
        let thread_ns = wall_ns * threads as f64;
        println!(
            "lock times, {threads} thread(s): {:.0} publications/s; {:.2} locks per step, \
             mean hold {:.0} ns, mean wait {:.0} ns; the lock was held {:.1} % of the wall \
             time; of the threads' time, {:.1} % holding and {:.1} % waiting",
            (steps * threads as u64 * PER_READ as u64) as f64 / (wall_ns / 1e9),
            locks / (steps * threads as u64) as f64,
            hold / locks,
            wait / locks,
            100.0 * hold / wall_ns,
            100.0 * hold / thread_ns,
            100.0 * wait / thread_ns
        );
    }
    TIME_LOCKS.store(false, Ordering::Relaxed);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = node_threads
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
    lock_times();
}
