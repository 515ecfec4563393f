//! `pushwire bench`: a load generator in the manner of `nats bench`.
//!
//! S subscriber connections join G chat groups (subscriber `i` joins group `i % G + 1`),
//! then P publisher connections publish N messages of B bytes between them,
//! round-robin over the groups (message `k` goes to group `k % G + 1` and is sent by
//! publisher `k % P`; when P divides G, publisher `p` thus publishes to the G / P
//! groups `p + 1, p + 1 + P, …` and no other). Every payload starts with its send time
//! (nanoseconds since the run's start, little-endian `u64`), so each delivery yields a
//! publish-to-deliver latency; publishers and subscribers live in this process and
//! share the clock.
//!
//! # A chat room (`--room`)
//!
//! With `--room` there are no separate publishers: each of the S connections is a
//! member that subscribes to its group (member `i` to group `i % G + 1`, as above) and
//! publishes to it, with echo off, so each of its messages reaches the other members
//! of the group. The N messages are shared among the members (message `k` is sent by
//! member `k % S` to that member's group), and a member's lag is counted against what
//! the *other* members published to its group. With G = 1 this is one room of S
//! members in which everyone talks.
//!
//! # What is measured
//!
//! - publish rate: messages published / (last publish handed to the client − start);
//! - delivered rate: deliveries counted at all subscribers / (last delivery − start),
//!   and the same in payload bytes;
//! - latency: a log-linear histogram of every delivery's publish-to-deliver time
//!   (relative error under 1 %), reported as p50, p99, p99.9 and max.
//!
//! # Flow control
//!
//! A publisher that outruns its subscribers only fills queues: the server's outboxes
//! (until the slow-consumer limit closes the subscriber) and the client's command
//! channel. Either would measure queueing, not throughput. So the publishers keep a
//! window: before every 64th message each publisher checks that no subscriber is more
//! than W messages behind what was published to its group, and otherwise waits for
//! the subscribers to catch up. W is `--window-bytes` divided by the size of a
//! delivered frame (payload plus 64 bytes), between 256 and 65,536 messages: large
//! enough that the window never limits throughput on loopback, small enough that a
//! subscriber's backlog stays far below the server's 8 MiB slow-consumer limit. On
//! top of that, the pushwire publisher awaits each `publish()` future 16,384 messages
//! later: a publication resolves when the server has taken it (protocol version 2),
//! and the client's 1 MiB send window, not a round trip per message or per pipeline,
//! bounds what is in flight.
//!
//! With `--batch N` the pushwire publisher wraps every N messages in a client batch
//! (`start_batching` … `commit_batching`), so they leave in one write instead of one
//! write each; an open batch is sent before the publisher waits on the window.
//!
//! The same driver ([`run_workload`]) runs the NATS side of the side-by-side
//! comparison (`benches/src/bin/compare.rs`), so both are measured the same way.

use super::client::ServerAddress;
use super::users::DevelopmentLogin;
use super::{development_file, CliError, Exit, DEVELOPMENT_KEY_PASSWORD, DEVELOPMENT_PASSWORD};
use crate::client::{Client, ClientBuilder, ConnectionContext, Event, PushError, Trust};
use crate::hello::HELLO_WORLD_SERVICE;
use crate::server::{Server, ServerBuilder};
use bytes::{BufMut, Bytes, BytesMut};
use clap::Args;
use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};
use tracing::{debug, warn};
use tracing_subscriber::EnvFilter;

/// Smallest payload: the send timestamp takes the first 8 bytes.
pub const MIN_PAYLOAD: usize = 8;

/// The workload flags, shared by `pushwire bench` and the NATS comparison binary.
#[derive(Debug, Clone, Args)]
pub struct WorkloadArgs {
    /// Publisher connections (message `k` is sent by publisher `k % P` to group
    /// `k % G + 1`: with P dividing G, each publisher has G / P groups of its own).
    #[arg(
        long,
        visible_alias = "publishers",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..=10_000)
    )]
    pub pubs: u32,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub subs: u32,
    /// Messages to publish, in all (shared among the publishers).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub msgs: u64,
    /// Payload size in bytes (at least 8: the send timestamp).
    #[arg(long, default_value_t = 16, value_parser = parse_size)]
    pub size: usize,
    /// Chat groups the subscribers are spread over (and the messages round-robin).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub groups: u32,
    /// A chat room: each of the --subs connections is a member that subscribes to its
    /// group and publishes to it (echo off: its messages reach the other members);
    /// the messages are shared among the members. No separate publishers.
    #[arg(long, conflicts_with = "pubs")]
    pub room: bool,
    /// Publish at this many messages per second in all, instead of as fast as
    /// possible (paced in 1 ms steps).
    #[arg(long, value_name = "MSGS_PER_SEC", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Flow-control window: how far (in delivered frame bytes) the slowest subscriber
    /// may fall behind the publishers.
    #[arg(long, default_value_t = 2 * 1024 * 1024, value_name = "BYTES")]
    pub window_bytes: usize,
    /// Give up (exit code 5) when the run has not finished after this many seconds.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    pub timeout: u64,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let size: usize = s.parse().map_err(|_| format!("{s:?} is not a size"))?;
    if size < MIN_PAYLOAD {
        return Err(format!(
            "the payload must have at least {MIN_PAYLOAD} bytes (the send timestamp)"
        ));
    }
    Ok(size)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("{s:?} is not a positive rate")),
    }
}

impl WorkloadArgs {
    /// The workload these flags describe.
    pub fn workload(&self) -> Workload {
        Workload {
            pubs: self.pubs as usize,
            subs: self.subs as usize,
            groups: self.groups,
            room: self.room,
            msgs: self.msgs,
            size: self.size,
            rate: self.rate,
            window_bytes: self.window_bytes,
            timeout: Duration::from_secs(self.timeout),
            progress: !self.quiet,
        }
    }
}

/// Arguments of `pushwire bench`.
#[derive(Debug, Args)]
#[command(
    after_help = "Prints the publish rate, delivered messages and payload bytes per \
second, and publish-to-deliver latency p50/p99/p99.9/max, then one `result key=value …` \
line for scripts. Progress goes to stderr."
)]
pub struct BenchArgs {
    /// The workload.
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Benchmark a running server instead of starting one in this process (its groups
    /// 1..=G must exist: `pushwire serve` has 1 to 3, more with `--group ID=NAME`; for
    /// more than 1,000 connections raise its `--max-connections-per-address`).
    #[arg(long, value_name = "HOST:PORT")]
    pub server: Option<ServerAddress>,
    /// TLS (the default).
    #[arg(long, conflicts_with = "plaintext")]
    pub tls: bool,
    /// No TLS (against `serve --plaintext`, or an in-process plaintext server).
    #[arg(long)]
    pub plaintext: bool,
    /// PEM file of the CA to trust [default: the development CA].
    #[arg(long, value_name = "FILE", conflicts_with = "plaintext")]
    pub ca: Option<PathBuf>,
    /// Password of the benchmark users [default: the development password].
    #[arg(long, default_value = DEVELOPMENT_PASSWORD, hide_default_value = true)]
    pub password: String,
    /// Publish in client batches of this many messages (`start_batching` …
    /// `commit_batching`), so each batch leaves in one write [default: no batches].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: Option<u32>,
    /// Subscribers connect to these servers, round-robin (other nodes of a cluster
    /// with --server, say), while publishers stay on --server [default: --server].
    #[arg(
        long,
        value_name = "HOST:PORT",
        value_delimiter = ',',
        requires = "server"
    )]
    pub sub_servers: Vec<ServerAddress>,
}

/// One benchmark run: who publishes what to whom.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Publisher connections (not used in a room: see [`Workload::publishers`]).
    pub pubs: usize,
    /// Subscriber connections (a room's members).
    pub subs: usize,
    /// Chat groups 1..=groups.
    pub groups: u32,
    /// A chat room: every subscriber also publishes to its own group (see the module
    /// documentation), and there are no separate publishers.
    pub room: bool,
    /// Messages in all.
    pub msgs: u64,
    /// Payload bytes (at least [`MIN_PAYLOAD`]).
    pub size: usize,
    /// Total publish rate, messages per second; `None`: as fast as possible.
    pub rate: Option<f64>,
    /// Flow-control window in delivered frame bytes (see the module documentation).
    pub window_bytes: usize,
    /// Limit on the whole run.
    pub timeout: Duration,
    /// Show a progress line on stderr.
    pub progress: bool,
}

impl Workload {
    /// The group subscriber `index` joins.
    pub fn group_of_subscriber(&self, index: usize) -> u32 {
        (index as u64 % u64::from(self.groups)) as u32 + 1
    }

    /// Connections that publish: the publishers, or in a room every member.
    pub fn publishers(&self) -> usize {
        if self.room {
            self.subs
        } else {
            self.pubs
        }
    }

    /// The group message `k` goes to (in a room, the group of its sender).
    pub fn group_of_message(&self, k: u64) -> u32 {
        if self.room {
            self.group_of_subscriber((k % self.subs as u64) as usize)
        } else {
            (k % u64::from(self.groups)) as u32 + 1
        }
    }

    /// Messages publisher (or room member) `index` sends: `index`, `index + P`, ….
    pub fn messages_of(&self, index: usize) -> u64 {
        let publishers = self.publishers() as u64;
        self.msgs / publishers + u64::from((index as u64) < self.msgs % publishers)
    }

    /// Messages published to `group` in all.
    pub fn messages_to(&self, group: u32) -> u64 {
        if self.room {
            return (0..self.subs)
                .filter(|&i| self.group_of_subscriber(i) == group)
                .map(|i| self.messages_of(i))
                .sum();
        }
        let groups = u64::from(self.groups);
        let index = u64::from(group - 1);
        self.msgs / groups + u64::from(index < self.msgs % groups)
    }

    /// Deliveries the run must count: each message once per member of its group (in
    /// a room, once per member but its sender).
    pub fn expected_deliveries(&self) -> u64 {
        let to_group: Vec<u64> = (1..=self.groups).map(|g| self.messages_to(g)).collect();
        (0..self.subs)
            .map(|i| {
                let all = to_group[self.group_of_subscriber(i) as usize - 1];
                if self.room {
                    all - self.messages_of(i)
                } else {
                    all
                }
            })
            .sum()
    }

    /// The flow-control window in messages.
    pub fn window_messages(&self) -> u64 {
        (self.window_bytes / (self.size + 64)).clamp(256, 65_536) as u64
    }

    /// The workload in words, as the report's first line gives it.
    pub fn describe(&self) -> String {
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        let who = if self.room {
            format!(
                "a chat room of {} (each publishes and subscribes, echo off)",
                plural(self.subs, "member")
            )
        } else {
            format!(
                "{}, {}",
                plural(self.pubs, "publisher"),
                plural(self.subs, "subscriber")
            )
        };
        let mut text = format!(
            "{who}, {}, {} messages of {} B",
            plural(self.groups as usize, "group"),
            self.msgs,
            self.size
        );
        if let Some(rate) = self.rate {
            let _ = write!(text, " at {} msgs/s", thousands(rate));
        }
        text
    }
}

// --- The histogram ------------------------------------------------------------------

/// Sub-buckets per power of two: values are kept with a relative error below 1/128.
const SUB_BITS: u32 = 7;
const SUB_COUNT: usize = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB_COUNT;

/// A log-linear histogram of `u64` values (HdrHistogram's layout with 2 significant
/// digits): values below 128 exactly, larger ones in 128 linear steps per power of two.
/// 58 KiB, no allocation per value, mergeable.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.total)
            .field("p50", &self.quantile(0.5))
            .field("max", &self.max)
            .finish()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max: 0,
        }
    }

    fn index(value: u64) -> usize {
        if value < SUB_COUNT as u64 {
            return value as usize;
        }
        let exponent = 63 - value.leading_zeros(); // >= SUB_BITS
        let shift = exponent - SUB_BITS;
        let mantissa = (value >> shift) as usize & (SUB_COUNT - 1);
        (shift as usize + 1) * SUB_COUNT + mantissa
    }

    /// The largest value that falls in bucket `index`.
    fn bucket_high(index: usize) -> u64 {
        if index < SUB_COUNT {
            return index as u64;
        }
        let shift = (index / SUB_COUNT - 1) as u32;
        let mantissa = (index % SUB_COUNT) as u64;
        let low = (SUB_COUNT as u64 + mantissa) << shift;
        low + ((1u64 << shift) - 1)
    }

    /// Counts one value.
    pub fn record(&mut self, value: u64) {
        self.counts[Self::index(value)] += 1;
        self.total += 1;
        self.max = self.max.max(value);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest value counted (exact).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0.0 to 1.0): the upper edge of the bucket holding
    /// it, never above the maximum. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Self::bucket_high(index).min(self.max);
            }
        }
        self.max
    }
}

// --- Shared run state --------------------------------------------------------------

/// Nanoseconds since the run's start, the clock of the payload timestamps.
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now_ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// What one subscriber has seen.
#[derive(Debug)]
struct SubscriberStats {
    group: u32,
    received: AtomicU64,
    /// In a room: messages this member published to its own group (it does not
    /// receive them).
    own: AtomicU64,
    /// Only this subscriber's connection task locks it (uncontended), and the driver
    /// at the end.
    record: Mutex<SubscriberRecord>,
}

#[derive(Debug, Default)]
struct SubscriberRecord {
    latency: Histogram,
    /// When the last delivery arrived (ns on the run clock).
    last_ns: u64,
    /// Payloads too short to hold a timestamp (none from this tool).
    short: u64,
}

#[derive(Debug)]
struct RunState {
    clock: Clock,
    subscribers: Vec<SubscriberStats>,
    /// Messages handed to the clients so far, per group (index group − 1).
    published: Vec<AtomicU64>,
    /// Publishers waiting for the window to open.
    waiting: AtomicUsize,
    caught_up: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RunState {
    /// How far the slowest subscriber is behind what was published to its group.
    fn max_lag(&self) -> u64 {
        self.subscribers
            .iter()
            .map(|s| {
                let published = self.published[s.group as usize - 1].load(Ordering::Acquire);
                let own = s.own.load(Ordering::Acquire);
                published.saturating_sub(own + s.received.load(Ordering::Acquire))
            })
            .max()
            .unwrap_or(0)
    }

    fn delivered(&self) -> u64 {
        self.subscribers
            .iter()
            .map(|s| s.received.load(Ordering::Relaxed))
            .sum()
    }

    /// Waits until no subscriber is more than `window` messages behind, or until
    /// `deadline` (the caller then notices the timeout).
    async fn wait_for_window(&self, window: u64, deadline: Instant) {
        loop {
            let mut caught_up = pin!(self.caught_up.notified());
            caught_up.as_mut().enable();
            if self.max_lag() <= window || Instant::now() >= deadline {
                return;
            }
            self.waiting.fetch_add(1, Ordering::AcqRel);
            // The subscribers wake us every 128 deliveries while we wait; the timer
            // only guards against a wake-up lost in a race.
            let _ = tokio::time::timeout(Duration::from_millis(5), caught_up).await;
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Counts the deliveries of one subscriber: hand it every payload received.
#[derive(Debug, Clone)]
pub struct Recorder {
    run: Arc<RunState>,
    index: usize,
}

impl Recorder {
    /// Records one delivered payload (as published by this tool: the send timestamp in
    /// its first 8 bytes).
    pub fn record(&self, payload: &[u8]) {
        let now = self.run.clock.now_ns();
        let stats = &self.run.subscribers[self.index];
        {
            let mut record = lock(&stats.record);
            match payload.get(..8) {
                Some(stamp) => {
                    let sent = u64::from_le_bytes(stamp.try_into().expect("8 bytes"));
                    record.latency.record(now.saturating_sub(sent));
                }
                None => record.short += 1,
            }
            record.last_ns = now;
        }
        let received = stats.received.fetch_add(1, Ordering::AcqRel) + 1;
        if received % 128 == 0 && self.run.waiting.load(Ordering::Acquire) > 0 {
            self.run.caught_up.notify_waiters();
        }
    }
}

// --- What a benchmarked system provides ----------------------------------------------

/// A system under test: makes subscriber and publisher connections.
pub trait BenchTarget: Sync {
    /// Keeps a subscriber connected until dropped.
    type Subscriber: Send + 'static;
    /// A publisher connection.
    type Publisher: BenchPublisher;

    /// Connects subscriber `index`, joins `group`, and resolves once the subscription
    /// is in force on the server; every delivery must go to `recorder`.
    fn subscriber(
        &self,
        index: usize,
        group: u32,
        recorder: Recorder,
    ) -> impl Future<Output = Result<Self::Subscriber, CliError>> + Send;

    /// Connects publisher `index`.
    fn publisher(
        &self,
        index: usize,
    ) -> impl Future<Output = Result<Self::Publisher, CliError>> + Send;

    /// Room mode: connects member `index` as one connection that both receives (as
    /// [`subscriber`](Self::subscriber), with `recorder`, in force on return) and
    /// publishes, with echo off (it must not receive its own messages). Targets
    /// without it fail the run with a usage error.
    fn member(
        &self,
        index: usize,
        group: u32,
        recorder: Recorder,
    ) -> impl Future<Output = Result<(Self::Subscriber, Self::Publisher), CliError>> + Send {
        let _ = (index, group, recorder);
        async {
            Err(CliError::new(
                Exit::Usage,
                "this target has no room mode (a connection that publishes and subscribes)",
            ))
        }
    }

    /// Whether `subscriber` is still connected; a run fails as soon as one is not,
    /// since what it misses meanwhile may never be counted.
    fn is_connected(&self, subscriber: &Self::Subscriber) -> bool {
        let _ = subscriber;
        true
    }
}

/// A publisher connection.
pub trait BenchPublisher: Send + 'static {
    /// Publishes `payload` to `group`; resolves when the message is queued (it may
    /// apply the client's own backpressure).
    fn publish(
        &mut self,
        group: u32,
        payload: Bytes,
    ) -> impl Future<Output = Result<(), CliError>> + Send;

    /// Resolves when everything published has been handed to the network.
    fn flush(&mut self) -> impl Future<Output = Result<(), CliError>> + Send;

    /// Called before the publisher waits for the subscribers to catch up: anything
    /// held back (an open batch) must leave now.
    fn before_wait(&mut self) {}
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The workload.
    pub workload: Workload,
    /// Messages published.
    pub published: u64,
    /// From the start until the last message was handed to its client.
    pub publish_time: Duration,
    /// Deliveries counted at all subscribers.
    pub delivered: u64,
    /// Deliveries the workload implies.
    pub expected: u64,
    /// From the start until the last delivery.
    pub deliver_time: Duration,
    /// Publish-to-deliver latency of every delivery, in nanoseconds.
    pub latency: Histogram,
}

impl Report {
    /// Messages published per second.
    pub fn publish_rate(&self) -> f64 {
        per_second(self.published as f64, self.publish_time)
    }

    /// Deliveries per second.
    pub fn delivered_rate(&self) -> f64 {
        per_second(self.delivered as f64, self.deliver_time)
    }

    /// Delivered payload bytes per second.
    pub fn bytes_rate(&self) -> f64 {
        self.delivered_rate() * self.workload.size as f64
    }

    /// The human-readable lines and the `result` line.
    pub fn render(&self) -> String {
        let us = |ns: u64| ns as f64 / 1_000.0;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "publish rate:  {:>12} msgs/s  ({} msgs in {:.3} s)",
            thousands(self.publish_rate()),
            self.published,
            self.publish_time.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "delivered:     {:>12} msgs/s  ({} of {} in {:.3} s)",
            thousands(self.delivered_rate()),
            self.delivered,
            self.expected,
            self.deliver_time.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "bytes:         {:>12} B/s     ({:.1} MiB/s of payload)",
            thousands(self.bytes_rate()),
            self.bytes_rate() / (1024.0 * 1024.0)
        );
        let _ = writeln!(
            out,
            "latency:       p50 {}  p99 {}  p99.9 {}  max {}  (publish to deliver, {} samples)",
            duration_text(self.latency.quantile(0.50)),
            duration_text(self.latency.quantile(0.99)),
            duration_text(self.latency.quantile(0.999)),
            duration_text(self.latency.max()),
            self.latency.count()
        );
        let _ = writeln!(
            out,
            "result publish_rate={:.0} delivered_rate={:.0} bytes_per_sec={:.0} p50_us={:.1} \
             p99_us={:.1} p999_us={:.1} max_us={:.1} delivered={} expected={}",
            self.publish_rate(),
            self.delivered_rate(),
            self.bytes_rate(),
            us(self.latency.quantile(0.50)),
            us(self.latency.quantile(0.99)),
            us(self.latency.quantile(0.999)),
            us(self.latency.max()),
            self.delivered,
            self.expected
        );
        out
    }
}

fn per_second(count: f64, time: Duration) -> f64 {
    let secs = time.as_secs_f64();
    if secs > 0.0 {
        count / secs
    } else {
        0.0
    }
}

/// `1234567.8` as `1,234,568`.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn duration_text(ns: u64) -> String {
    match ns {
        0..=9_999 => format!("{:.2} us", ns as f64 / 1e3),
        10_000..=999_999 => format!("{:.1} us", ns as f64 / 1e3),
        _ => format!("{:.2} ms", ns as f64 / 1e6),
    }
}

/// Runs `workload` against `target`: connects the subscribers, then the publishers,
/// publishes, waits for every delivery, and reports. Fails with [`Exit::TimedOut`]
/// when the workload's timeout passes first.
pub async fn run_workload<T: BenchTarget>(
    target: &T,
    workload: &Workload,
) -> Result<Report, CliError> {
    let groups = workload.groups as usize;
    let mut run = RunState {
        clock: Clock(Instant::now()),
        subscribers: Vec::with_capacity(workload.subs),
        published: (0..groups).map(|_| AtomicU64::new(0)).collect(),
        waiting: AtomicUsize::new(0),
        caught_up: Notify::new(),
    };
    for i in 0..workload.subs {
        run.subscribers.push(SubscriberStats {
            group: workload.group_of_subscriber(i),
            received: AtomicU64::new(0),
            own: AtomicU64::new(0),
            record: Mutex::new(SubscriberRecord::default()),
        });
    }
    let run = Arc::new(run);
    let progress = Progress::new(workload.progress);

    let mut subscribers = Vec::with_capacity(workload.subs);
    let mut publishers = Vec::with_capacity(workload.publishers());
    for i in 0..workload.subs {
        progress.show(format_args!(
            "connecting {} {}/{}",
            if workload.room {
                "member"
            } else {
                "subscriber"
            },
            i + 1,
            workload.subs
        ));
        let recorder = Recorder {
            run: run.clone(),
            index: i,
        };
        let group = workload.group_of_subscriber(i);
        if workload.room {
            let (subscriber, publisher) = target.member(i, group, recorder).await?;
            subscribers.push(subscriber);
            publishers.push(publisher);
        } else {
            subscribers.push(target.subscriber(i, group, recorder).await?);
        }
    }
    if !workload.room {
        for p in 0..workload.pubs {
            progress.show(format_args!(
                "connecting publisher {}/{}",
                p + 1,
                workload.pubs
            ));
            publishers.push(target.publisher(p).await?);
        }
    }
    debug!(
        subs = workload.subs,
        publishers = publishers.len(),
        "connected"
    );

    // The run's clock starts now: timestamps, rates and the deadline count from here.
    let start = Instant::now();
    let deadline = start + workload.timeout;
    let start_ns = run.clock.now_ns();
    let mut tasks = Vec::with_capacity(publishers.len());
    for (p, publisher) in publishers.into_iter().enumerate() {
        let run = run.clone();
        let workload = workload.clone();
        tasks.push(tokio::spawn(publish_loop(
            publisher, p, workload, run, deadline,
        )));
    }

    let expected = workload.expected_deliveries();
    let mut finished = vec![None; tasks.len()];
    let mut failure = None;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut shown = Instant::now();
    loop {
        tick.tick().await;
        for (task, done) in tasks.iter_mut().zip(finished.iter_mut()) {
            if done.is_none() && task.is_finished() {
                match task.await {
                    Ok(Ok(outcome)) => *done = Some(outcome),
                    Ok(Err(e)) => failure = Some(e),
                    Err(e) => {
                        failure = Some(CliError::new(
                            Exit::Failure,
                            format!("publisher failed: {e}"),
                        ))
                    }
                }
            }
        }
        if let Some(e) = failure.take() {
            progress.clear();
            tasks.iter().for_each(|t| t.abort());
            return Err(e);
        }
        let delivered = run.delivered();
        let published: u64 = run
            .published
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .sum();
        if shown.elapsed() >= Duration::from_millis(250) {
            shown = Instant::now();
            progress.show(format_args!(
                "published {published}/{}  delivered {delivered}/{expected}  ({:.1} s)",
                workload.msgs,
                start.elapsed().as_secs_f64()
            ));
        }
        if delivered >= expected && finished.iter().all(Option::is_some) {
            break;
        }
        if let Some(lost) = subscribers.iter().position(|s| !target.is_connected(s)) {
            progress.clear();
            tasks.iter().for_each(|t| t.abort());
            return Err(CliError::new(
                Exit::Connection,
                format!(
                    "subscriber {lost} lost its connection during the run (published \
                     {published} of {}, delivered {delivered} of {expected})",
                    workload.msgs
                ),
            ));
        }
        if Instant::now() >= deadline {
            progress.clear();
            tasks.iter().for_each(|t| t.abort());
            return Err(CliError::new(
                Exit::TimedOut,
                format!(
                    "timed out after {} s: published {published} of {}, delivered {delivered} \
                     of {expected}",
                    workload.timeout.as_secs(),
                    workload.msgs
                ),
            ));
        }
    }
    progress.clear();

    let mut latency = Histogram::new();
    let mut last_ns = start_ns;
    let mut short = 0;
    for stats in &run.subscribers {
        let record = lock(&stats.record);
        latency.merge(&record.latency);
        last_ns = last_ns.max(record.last_ns);
        short += record.short;
    }
    if short > 0 {
        debug!("{short} deliveries had no timestamp");
    }
    let (published, publish_end_ns) = finished
        .into_iter()
        .flatten()
        .fold((0, start_ns), |(n, end), (count, at)| {
            (n + count, end.max(at))
        });
    drop(subscribers);
    Ok(Report {
        workload: workload.clone(),
        published,
        publish_time: Duration::from_nanos(publish_end_ns - start_ns),
        delivered: run.delivered(),
        expected,
        deliver_time: Duration::from_nanos(last_ns - start_ns),
        latency,
    })
}

/// One publisher's (or room member's) share: messages `index`, `index + P`, …;
/// returns how many it published and when it finished (ns on the run clock).
async fn publish_loop<P: BenchPublisher>(
    mut publisher: P,
    index: usize,
    workload: Workload,
    run: Arc<RunState>,
    deadline: Instant,
) -> Result<(u64, u64), CliError> {
    let window = workload.window_messages();
    let pubs = workload.publishers() as u64;
    // Pacing: message n of this publisher is due n / (rate / P) seconds after start.
    let interval = workload
        .rate
        .map(|rate| Duration::from_secs_f64(pubs as f64 / rate));
    let start = Instant::now();
    let mut sent = 0u64;
    let mut k = index as u64;
    while k < workload.msgs {
        if let Some(interval) = interval {
            let due = start + interval.mul_f64(sent as f64);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        if sent % 64 == 0 && run.max_lag() > window {
            publisher.before_wait();
            run.wait_for_window(window, deadline).await;
            if Instant::now() >= deadline {
                return Err(CliError::new(Exit::TimedOut, "timed out publishing"));
            }
        }
        let group = workload.group_of_message(k);
        let mut payload = BytesMut::with_capacity(workload.size);
        payload.put_u64_le(run.clock.now_ns());
        payload.resize(workload.size, b'x');
        publisher.publish(group, payload.freeze()).await?;
        run.published[group as usize - 1].fetch_add(1, Ordering::AcqRel);
        if workload.room {
            // After the group's count: a lag read in between errs on the high side.
            run.subscribers[index].own.fetch_add(1, Ordering::AcqRel);
        }
        sent += 1;
        k += pubs;
    }
    publisher.flush().await?;
    Ok((sent, run.clock.now_ns()))
}

/// The progress line on stderr: rewritten in place on a terminal, a line a second
/// otherwise (so logs of scripted runs stay short).
struct Progress {
    enabled: bool,
    terminal: bool,
    last_line: Mutex<Option<Instant>>,
}

impl Progress {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            terminal: std::io::stderr().is_terminal(),
            last_line: Mutex::new(None),
        }
    }

    fn show(&self, text: fmt::Arguments<'_>) {
        if !self.enabled {
            return;
        }
        let mut stderr = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(stderr, "\r\x1b[2K[bench] {text}");
            let _ = stderr.flush();
        } else {
            let mut last = lock(&self.last_line);
            if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                *last = Some(Instant::now());
                let _ = writeln!(stderr, "[bench] {text}");
            }
        }
    }

    fn clear(&self) {
        if self.enabled && self.terminal {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

// --- pushwire as a target ------------------------------------------------------------

/// pushwire as a [`BenchTarget`]: one client connection per subscriber and publisher,
/// echo off, events taken by callbacks on the connection's own task (no event stream).
#[derive(Debug, Clone)]
pub struct PushwireTarget {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// TLS trust, or plaintext.
    pub trust: Trust,
    /// Password of every benchmark user.
    pub password: String,
    /// Publishers wrap every this many messages in a client batch; `None`: no batches.
    pub batch: Option<u32>,
    /// Where subscribers connect, round-robin; empty: `host` and `port`.
    pub sub_servers: Vec<(String, u16)>,
}

impl PushwireTarget {
    fn context(&self, user: String) -> ConnectionContext {
        self.context_at(&self.host, self.port, user)
    }

    /// The context of subscriber `index`.
    fn subscriber_context(&self, index: usize) -> ConnectionContext {
        let user = format!("bench-sub-{index}");
        match self.sub_servers.len() {
            0 => self.context(user),
            n => {
                let (host, port) = &self.sub_servers[index % n];
                self.context_at(host, *port, user)
            }
        }
    }

    fn context_at(&self, host: &str, port: u16, user: String) -> ConnectionContext {
        let mut context =
            ConnectionContext::new(host.to_owned(), port, user, self.password.clone());
        context.trust = self.trust.clone();
        context.service_id = HELLO_WORLD_SERVICE;
        context.echo = false;
        context
    }
}

fn push_failure(e: PushError) -> CliError {
    CliError::new(Exit::Failure, format!("push command failed: {e}"))
}

/// How many `publish()` futures a publisher keeps before awaiting the oldest: more
/// than the send window holds of the smallest messages, so the window is the bound
/// and the server always has the next read waiting.
const PUBLISH_PIPELINE: usize = 16 * 1024;

type Queued = Pin<Box<dyn Future<Output = Result<u64, PushError>> + Send>>;

/// A pushwire publisher connection.
pub struct PushwirePublisher {
    client: Client,
    /// Why the connection dropped, once it has (set by a task watching its events);
    /// `None` for a room member, whose events go to its callbacks only: its
    /// connection state is asked instead.
    dropped: Option<Arc<Mutex<Option<String>>>>,
    queued: VecDeque<Queued>,
    batch: Option<u32>,
    /// Messages in the open batch.
    batched: u32,
}

impl PushwirePublisher {
    /// Fails once the connection has dropped: the client reconnects and queues
    /// publications meanwhile, but what was in flight may be gone, and the run would
    /// only time out waiting for it.
    fn check_connected(&self) -> Result<(), CliError> {
        let reason = match &self.dropped {
            Some(dropped) => lock(dropped).clone(),
            None => (!self.client.is_connected()).then(|| "disconnected".to_owned()),
        };
        match reason {
            None => Ok(()),
            Some(reason) => Err(CliError::new(
                Exit::Connection,
                format!("the publisher lost its connection during the run: {reason}"),
            )),
        }
    }

    /// Sends the open batch, if any. The replies of the batch commands are not
    /// awaited: the commands are queued when issued, and a failure also fails the
    /// publications inside, whose futures are awaited.
    fn commit(&mut self) {
        if self.batched > 0 {
            drop(self.client.commit_batching(false));
            self.batched = 0;
        }
    }
}

impl BenchPublisher for PushwirePublisher {
    async fn publish(&mut self, group: u32, payload: Bytes) -> Result<(), CliError> {
        self.check_connected()?;
        if self.batch.is_some() && self.batched == 0 {
            drop(self.client.start_batching());
        }
        // The command is queued when `publish` is called; awaiting the future 1,024
        // messages later bounds the client's command queue without a wait per message.
        self.queued
            .push_back(Box::pin(self.client.publish(&[group], payload)));
        if let Some(batch) = self.batch {
            self.batched += 1;
            if self.batched >= batch {
                self.commit();
            }
        }
        if self.queued.len() > PUBLISH_PIPELINE {
            if let Some(oldest) = self.queued.pop_front() {
                oldest.await.map_err(push_failure)?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), CliError> {
        self.commit();
        while let Some(queued) = self.queued.pop_front() {
            queued.await.map_err(push_failure)?;
        }
        // A publish future resolves once the command is queued in the client. The
        // answer to a later command proves the server has read every publication.
        self.client.list_groups().await.map_err(push_failure)?;
        self.check_connected()
    }

    fn before_wait(&mut self) {
        self.commit();
    }
}

impl PushwireTarget {
    /// Connects subscriber (or room member) `index` and joins `group`; resolves once
    /// the server confirmed the subscription.
    async fn join(&self, index: usize, group: u32, recorder: Recorder) -> Result<Client, CliError> {
        let (joined_tx, joined) = oneshot::channel();
        let mut joined_tx = Some(joined_tx);
        let (client, events) = ClientBuilder::new(self.subscriber_context(index))
            .on_publish(move |_, _, payload| recorder.record(payload))
            .on_subscribe(move |sender, _| {
                if sender.is_self() {
                    if let Some(tx) = joined_tx.take() {
                        let _ = tx.send(());
                    }
                }
            })
            .connect()
            .await?;
        // The callbacks see every event; a dropped stream makes the connection discard
        // them instead of queueing them for nobody.
        drop(events);
        client.subscribe(&[group]).await.map_err(push_failure)?;
        match tokio::time::timeout(Duration::from_secs(30), joined).await {
            Ok(Ok(())) => Ok(client),
            Ok(Err(_)) => Err(CliError::new(
                Exit::Connection,
                format!("subscriber {index} lost its connection while joining group {group}"),
            )),
            Err(_) => Err(CliError::new(
                Exit::TimedOut,
                format!("subscriber {index} was not confirmed in group {group} within 30 s"),
            )),
        }
    }
}

impl BenchTarget for PushwireTarget {
    type Subscriber = Client;
    type Publisher = PushwirePublisher;

    async fn subscriber(
        &self,
        index: usize,
        group: u32,
        recorder: Recorder,
    ) -> Result<Client, CliError> {
        self.join(index, group, recorder).await
    }

    async fn member(
        &self,
        index: usize,
        group: u32,
        recorder: Recorder,
    ) -> Result<(Client, PushwirePublisher), CliError> {
        // Echo is off in every benchmark connection's context: a member does not
        // receive its own publications.
        let client = self.join(index, group, recorder).await?;
        let publisher = PushwirePublisher {
            client: client.clone(),
            dropped: None,
            queued: VecDeque::new(),
            batch: self.batch,
            batched: 0,
        };
        Ok((client, publisher))
    }

    fn is_connected(&self, subscriber: &Client) -> bool {
        subscriber.is_connected()
    }

    async fn publisher(&self, index: usize) -> Result<PushwirePublisher, CliError> {
        let (client, mut events) = ClientBuilder::new(self.context(format!("bench-pub-{index}")))
            .connect()
            .await?;
        // With echo off a publisher receives only notices: watch them for a drop.
        let dropped = Arc::new(Mutex::new(None));
        let watch = dropped.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match event {
                    Event::Disconnected(reason) => {
                        warn!(publisher = index, "connection dropped: {reason}");
                        lock(&watch).get_or_insert_with(|| reason.to_string());
                    }
                    // The end of the connection: after the run, or a final failure.
                    Event::Closed(reason) => {
                        lock(&watch).get_or_insert_with(|| reason.to_string());
                    }
                    _ => {}
                }
            }
        });
        Ok(PushwirePublisher {
            client,
            dropped: Some(dropped),
            queued: VecDeque::new(),
            batch: self.batch,
            batched: 0,
        })
    }
}

/// Starts a pushwire server on a free loopback port with groups 1..=`groups`, TLS
/// with the development certificate unless `plaintext`, and the development login.
pub async fn start_server(plaintext: bool, groups: u32) -> Result<Server, CliError> {
    let mut builder = ServerBuilder::new()
        .authenticator(DevelopmentLogin)
        // Every benchmark connection comes from one loopback address, many at once.
        .max_connections(1_000_000)
        .max_connections_per_address(usize::MAX)
        .max_handshaking(usize::MAX);
    builder = if plaintext {
        builder.plaintext()
    } else {
        builder
            .tls_from_pem(
                &development_file("server.cert.pem"),
                &development_file("server.key.pem"),
                Some(DEVELOPMENT_KEY_PASSWORD),
            )
            .map_err(|e| CliError::new(Exit::Usage, e.to_string()))?
    };
    for id in 1..=groups {
        builder = builder.group(id, format!("bench group {id}"));
    }
    builder
        .bind(([127, 0, 0, 1], 0).into())
        .await
        .map_err(|e| CliError::new(Exit::Failure, e.to_string()))
}

fn init_logging() {
    // Quiet by default: per-connection info lines would drown the report.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Runs `pushwire bench`.
pub(super) async fn run(args: BenchArgs) -> Result<(), CliError> {
    init_logging();
    let workload = args.workload.workload();
    let plaintext = args.plaintext;
    let (server, host, port, where_) = match &args.server {
        Some(address) => (
            None,
            address.host.clone(),
            address.port,
            address.to_string(),
        ),
        None => {
            let server = start_server(plaintext, workload.groups).await?;
            let addr = server
                .local_addr()
                .ok_or_else(|| CliError::new(Exit::Failure, "the server has no address"))?;
            let where_ = format!("in-process server {addr}");
            (Some(server), addr.ip().to_string(), addr.port(), where_)
        }
    };
    let trust = if plaintext {
        Trust::Plaintext
    } else {
        Trust::CaFiles(vec![args
            .ca
            .clone()
            .unwrap_or_else(|| development_file("ca.cert.pem"))])
    };
    let target = PushwireTarget {
        host,
        port,
        trust,
        password: args.password.clone(),
        batch: args.batch,
        sub_servers: args
            .sub_servers
            .iter()
            .map(|a| (a.host.clone(), a.port))
            .collect(),
    };
    let batches = args
        .batch
        .map(|n| format!(", client batches of {n}"))
        .unwrap_or_default();
    println!(
        "pushwire bench: {}, {}{batches}, {where_}",
        workload.describe(),
        if plaintext { "plaintext" } else { "TLS" }
    );
    let _ = std::io::stdout().flush();
    let result = run_workload(&target, &workload).await;
    if let Some(server) = server {
        server.shutdown().await;
    }
    print!("{}", result?.render());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_one_percent() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v * 1_000);
        }
        for (q, exact) in [
            (0.5, 50_000_000u64),
            (0.99, 99_000_000),
            (0.999, 99_900_000),
        ] {
            let got = h.quantile(q);
            let error = (got as f64 - exact as f64).abs() / exact as f64;
            assert!(error < 0.01, "q{q}: {got} vs {exact}");
        }
        assert_eq!(h.max(), 100_000_000);
        assert_eq!(h.quantile(1.0), 100_000_000);
        assert_eq!(h.count(), 100_000);
    }

    #[test]
    fn histogram_buckets_cover_every_value() {
        for v in [0u64, 1, 127, 128, 129, 255, 256, 1 << 40, u64::MAX] {
            let index = Histogram::index(v);
            assert!(index < BUCKETS, "{v}");
            assert!(Histogram::bucket_high(index) >= v, "{v}");
        }
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        a.record(5);
        b.record(u64::MAX);
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert_eq!(a.quantile(0.5), 5);
        assert_eq!(a.max(), u64::MAX);
    }

    #[test]
    fn workload_arithmetic() {
        let w = Workload {
            pubs: 2,
            subs: 5,
            groups: 2,
            room: false,
            msgs: 7,
            size: 16,
            rate: None,
            window_bytes: 2 << 20,
            timeout: Duration::from_secs(1),
            progress: false,
        };
        // Messages 0, 2, 4, 6 go to group 1; 1, 3, 5 to group 2.
        assert_eq!(w.messages_to(1), 4);
        assert_eq!(w.messages_to(2), 3);
        // Subscribers 0, 2, 4 are in group 1, 1 and 3 in group 2.
        assert_eq!(w.expected_deliveries(), 3 * 4 + 2 * 3);
        assert_eq!(w.window_messages(), 26_214);
        assert_eq!(w.publishers(), 2);
        assert_eq!(w.messages_of(0) + w.messages_of(1), 7);
    }

    #[test]
    fn room_arithmetic() {
        let w = Workload {
            pubs: 1,
            subs: 5,
            groups: 2,
            room: true,
            msgs: 12,
            size: 16,
            rate: None,
            window_bytes: 2 << 20,
            timeout: Duration::from_secs(1),
            progress: false,
        };
        // Members 0, 2, 4 in group 1, 1 and 3 in group 2; message k is sent by member
        // k % 5: members 0 and 1 send 3 each, the others 2.
        assert_eq!(w.publishers(), 5);
        assert_eq!(
            (0..5).map(|m| w.messages_of(m)).collect::<Vec<_>>(),
            [3, 3, 2, 2, 2]
        );
        assert_eq!(w.group_of_message(0), 1);
        assert_eq!(w.group_of_message(3), 2);
        assert_eq!(w.group_of_message(7), 1); // member 2
        assert_eq!(w.messages_to(1), 3 + 2 + 2);
        assert_eq!(w.messages_to(2), 3 + 2);
        // Each member gets its group's messages but its own.
        assert_eq!(
            w.expected_deliveries(),
            (7 - 3) + (5 - 3) + (7 - 2) + (5 - 2) + (7 - 2)
        );
    }

    #[test]
    fn numbers_print_readably() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(duration_text(1_500), "1.50 us");
        assert_eq!(duration_text(250_000), "250.0 us");
        assert_eq!(duration_text(2_500_000), "2.50 ms");
        assert_eq!(duration_text(25_000_000), "25.00 ms");
    }
}
