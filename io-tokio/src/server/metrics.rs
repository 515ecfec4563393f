//! The server's metrics in the Prometheus (OpenMetrics) text format.
//!
//! Two kinds of numbers, neither costing a lock or a lookup per message:
//! - **the node's**: running totals ([`NodeStats`], plain integers the node adds to
//!   under the lock it holds anyway) and levels ([`NodeGauges`], walked at a scrape).
//!   A scrape copies them under one hold of the node's lock.
//! - **the shell's**: what only the tokio side sees (accepted sockets, TLS handshake
//!   failures, socket bytes, authenticator refusals, request latency). Atomic
//!   counters whose handles are resolved once, at start or once per connection and
//!   method; socket bytes are summed per connection and added every 64 KiB and when
//!   the connection goes quiet.
//!
//! Names follow Prometheus' conventions (`_total` for counters, base units) with the
//! quantities operators know from NATS' `varz` and Centrifugo's metrics.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use pushwire_engine::cluster::ClusterStats;
use pushwire_engine::node::{NodeGauges, NodeStats, Refusal, REJECT_CODE_SLOTS};
use pushwire_protocol::RejectCode;
use std::collections::BTreeMap;
use std::fmt;

/// The labels of a request's latency: the service and the method.
type MethodLabels = [(&'static str, u32); 2];
type ReasonLabels = [(&'static str, &'static str); 1];

fn request_histogram() -> Histogram {
    // 100 µs to about 3.3 s, doubling.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

/// The shell's counters, shared by every connection task.
#[derive(Clone)]
pub(crate) struct ShellMetrics {
    accepted: Counter,
    refused: Family<ReasonLabels, Counter>,
    refused_total: Counter,
    refused_from_address: Counter,
    refused_handshaking: Counter,
    tls_failures: Counter,
    handshake_timeouts: Counter,
    auth_refused: Counter,
    read_bytes: Counter,
    written_bytes: Counter,
    requests: Family<MethodLabels, Histogram, fn() -> Histogram>,
}

impl fmt::Debug for ShellMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShellMetrics")
            .field("accepted", &self.accepted.get())
            .finish_non_exhaustive()
    }
}

impl ShellMetrics {
    pub(crate) fn new() -> Self {
        let refused = Family::<ReasonLabels, Counter>::default();
        Self {
            accepted: Counter::default(),
            refused_total: refused.get_or_create_owned(&[("reason", "max_connections")]),
            refused_from_address: refused.get_or_create_owned(&[("reason", "per_address")]),
            refused_handshaking: refused.get_or_create_owned(&[("reason", "handshaking")]),
            refused,
            tls_failures: Counter::default(),
            handshake_timeouts: Counter::default(),
            auth_refused: Counter::default(),
            read_bytes: Counter::default(),
            written_bytes: Counter::default(),
            requests: Family::new_with_constructor(request_histogram),
        }
    }

    /// A connection was accepted and admitted.
    pub(crate) fn accepted(&self) {
        self.accepted.inc();
    }

    /// A connection was turned away at accept.
    pub(crate) fn refused(&self, refusal: &Refusal) {
        match refusal {
            Refusal::TooManyConnections(_) => &self.refused_total,
            Refusal::TooManyFromAddress(_) => &self.refused_from_address,
            Refusal::TooManyHandshaking(_) => &self.refused_handshaking,
        }
        .inc();
    }

    /// A connection's TLS handshake failed.
    pub(crate) fn tls_failed(&self) {
        self.tls_failures.inc();
    }

    /// A connection did not finish its handshake (TLS and Hello) in time.
    pub(crate) fn handshake_timed_out(&self) {
        self.handshake_timeouts.inc();
    }

    /// The application's authenticator refused a Hello.
    pub(crate) fn auth_refused(&self) {
        self.auth_refused.inc();
    }

    /// The latency histogram of one method, to keep for the connection's calls.
    pub(crate) fn request_histogram(&self, service: u32, method: u32) -> Histogram {
        self.requests
            .get_or_create_owned(&[("service", service), ("method", method)])
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections_accepted",
            "Connections accepted and admitted by the connection limits",
            self.accepted.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at accept by a connection limit",
            self.refused.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Connections whose TLS handshake failed",
            self.tls_failures.clone(),
        );
        registry.register(
            "handshake_timeouts",
            "Connections that did not finish TLS and Hello within the handshake deadline",
            self.handshake_timeouts.clone(),
        );
        registry.register(
            "socket_read_bytes",
            "Bytes read from client sockets (TLS records included)",
            self.read_bytes.clone(),
        );
        registry.register(
            "socket_written_bytes",
            "Bytes written to client sockets (TLS records included)",
            self.written_bytes.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "RPC requests by service and method: time from the request's arrival to its result",
            self.requests.clone(),
        );
    }
}

/// A connection's socket bytes not yet added to the shared counters.
#[derive(Debug, Default)]
pub(crate) struct SocketBytes {
    read: u64,
    written: u64,
}

impl SocketBytes {
    const FLUSH_EVERY: u64 = 64 * 1024;

    pub(crate) fn read(&mut self, n: usize, metrics: &ShellMetrics) {
        self.read += n as u64;
        if self.read >= Self::FLUSH_EVERY {
            metrics.read_bytes.inc_by(std::mem::take(&mut self.read));
        }
    }

    pub(crate) fn written(&mut self, n: usize, metrics: &ShellMetrics) {
        self.written += n as u64;
        if self.written >= Self::FLUSH_EVERY {
            metrics
                .written_bytes
                .inc_by(std::mem::take(&mut self.written));
        }
    }

    /// Adds everything counted so far (the connection went quiet or ended).
    pub(crate) fn flush(&mut self, metrics: &ShellMetrics) {
        if self.read > 0 {
            metrics.read_bytes.inc_by(std::mem::take(&mut self.read));
        }
        if self.written > 0 {
            metrics
                .written_bytes
                .inc_by(std::mem::take(&mut self.written));
        }
    }
}

/// A connection's latency histograms, one per method it called (resolved at its
/// first call of the method).
#[derive(Default)]
pub(crate) struct MethodHistograms(BTreeMap<(u32, u32), Histogram>);

impl MethodHistograms {
    pub(crate) fn get(&mut self, metrics: &ShellMetrics, service: u32, method: u32) -> Histogram {
        self.0
            .entry((service, method))
            .or_insert_with(|| metrics.request_histogram(service, method))
            .clone()
    }
}

/// A clustered node's cluster numbers at one scrape.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClusterSnapshot {
    pub stats: ClusterStats,
    pub up: bool,
    pub peers: usize,
    pub peers_alive: usize,
    pub backlog: usize,
    pub remote_sessions: usize,
}

impl ClusterSnapshot {
    pub(crate) fn of(cluster: &pushwire_engine::cluster::Cluster) -> Self {
        Self {
            stats: *cluster.stats(),
            up: cluster.is_up(),
            peers: cluster.peers().count(),
            peers_alive: cluster.peers().filter(|(_, _, alive)| *alive).count(),
            backlog: cluster.backlog_len(),
            remote_sessions: cluster.remote_sessions(),
        }
    }

    fn encode(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let s = &self.stats;
        gauge(
            e,
            "cluster_backplane_up",
            "1 while Redis is reachable",
            usize::from(self.up),
        )?;
        gauge(e, "cluster_peers", "Other nodes known", self.peers)?;
        gauge(
            e,
            "cluster_peers_alive",
            "Other nodes heard within the liveness timeout",
            self.peers_alive,
        )?;
        gauge(
            e,
            "cluster_backlog_records",
            "Records not yet confirmed written to Redis",
            self.backlog,
        )?;
        gauge(
            e,
            "cluster_remote_sessions",
            "Sessions of other nodes in this node's view",
            self.remote_sessions,
        )?;
        counter(
            e,
            "cluster_records_out",
            "Records this node made",
            s.records_out,
        )?;
        counter(
            e,
            "cluster_records_in",
            "Records of other nodes applied",
            s.records_in,
        )?;
        counter(
            e,
            "cluster_duplicates",
            "Records of other nodes dropped as already seen",
            s.duplicates,
        )?;
        counter(
            e,
            "cluster_holes",
            "Holes found in other nodes' logs (each a Gap to every local session)",
            s.holes,
        )?;
        counter(
            e,
            "cluster_undecodable_records",
            "Records that did not decode",
            s.undecodable,
        )?;
        counter(
            e,
            "cluster_backlog_dropped",
            "Records dropped from the backlog while Redis was away too long",
            s.backlog_dropped,
        )?;
        counter(
            e,
            "cluster_remote_sessions_refused",
            "Sessions of other nodes left out of the view (over the limit)",
            s.remote_sessions_refused,
        )?;
        counter(
            e,
            "cluster_remote_deliveries",
            "Deliveries of other nodes' publications",
            s.remote_deliveries,
        )
    }
}

/// The node's numbers at one scrape.
#[derive(Debug)]
struct NodeSnapshot {
    stats: NodeStats,
    gauges: NodeGauges,
    cluster: Option<ClusterSnapshot>,
    /// Hellos the application's authenticator refused (counted by the shell).
    auth_refused: u64,
}

fn counter(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn counters(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[(&'static str, u64)],
) -> fmt::Result {
    let mut family =
        encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for &(value_label, value) in values {
        let labels = [(label, value_label)];
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// `push_rejected_total{code}`: every code this version knows, and `Other` for the
/// counts of codes it does not.
fn push_rejections(
    encoder: &mut DescriptorEncoder<'_>,
    counts: &[u64; REJECT_CODE_SLOTS],
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(
        "push_rejected",
        "Push commands refused with PushRejected, by code",
        None,
        ConstCounter::new(0u64).metric_type(),
    )?;
    let mut other = 0;
    for (slot, &count) in counts.iter().enumerate().skip(1) {
        let code = RejectCode::from_wire(slot as u16);
        if matches!(code, RejectCode::Other(_)) {
            other += count;
            continue;
        }
        let name = format!("{code:?}");
        ConstCounter::new(count).encode(family.encode_family(&[("code", name.as_str())])?)?;
    }
    other += counts[0];
    ConstCounter::new(other).encode(family.encode_family(&[("code", "Other")])?)
}

fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: usize) -> fmt::Result {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for NodeSnapshot {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> fmt::Result {
        let s = &self.stats;
        let g = &self.gauges;
        let e = &mut e;
        gauge(
            e,
            "connections",
            "Sessions with a connection up",
            g.connections,
        )?;
        gauge(
            e,
            "sessions_detached",
            "Sessions kept for a resume, without a connection",
            g.detached_sessions,
        )?;
        gauge(e, "groups", "Registered chat groups", g.groups)?;
        gauge(
            e,
            "subscriptions",
            "Group memberships of all sessions",
            g.subscriptions,
        )?;
        gauge(
            e,
            "replay_buffer_events",
            "Push events held in the sessions' replay buffers",
            g.replay_events,
        )?;
        gauge(
            e,
            "replay_buffer_bytes",
            "Bytes of the events held in the sessions' replay buffers",
            g.replay_bytes,
        )?;
        gauge(
            e,
            "outbound_queue_bytes",
            "Frame bytes queued for connections and not yet taken by their writers",
            g.outbound_bytes,
        )?;
        gauge(
            e,
            "congested_receivers",
            "Receivers over the flow control's high-water mark",
            g.congested,
        )?;
        counter(
            e,
            "auth_permitted",
            "Hellos permitted: sessions started and resumed",
            s.sessions_started + s.sessions_resumed,
        )?;
        counter(
            e,
            "auth_refused",
            "Hellos refused, by the authenticator or by the node (unknown service, another user's resume token, a user at their connection limit)",
            self.auth_refused + s.hellos_refused,
        )?;
        counter(e, "sessions_started", "New sessions", s.sessions_started)?;
        counter(
            e,
            "sessions_resumed",
            "Sessions resumed",
            s.sessions_resumed,
        )?;
        counter(
            e,
            "sessions_lost",
            "Resumes of sessions the server no longer had (answered SessionLost)",
            s.sessions_lost,
        )?;
        counter(
            e,
            "sessions_expired",
            "Detached sessions that expired",
            s.sessions_expired,
        )?;
        counter(
            e,
            "sessions_superseded",
            "Connections closed because their session was resumed on another",
            s.superseded,
        )?;
        counters(
            e,
            "in_msgs",
            "Messages received, from clients and the server's API",
            "kind",
            &[
                ("publication", s.publications_in),
                ("user_message", s.user_messages_in),
            ],
        )?;
        counter(
            e,
            "in_payload_bytes",
            "Payload bytes of the messages received (compressed size if sent compressed)",
            s.payload_bytes_in,
        )?;
        counters(
            e,
            "out_msgs",
            "Frames queued to receiving connections: the fan-out of publications, user messages, and other push frames",
            "kind",
            &[
                ("publication", s.deliveries_published),
                ("user_message", s.deliveries_user_messages),
                ("other", s.deliveries_other),
            ],
        )?;
        counter(
            e,
            "out_bytes",
            "Frame bytes of those deliveries",
            s.bytes_delivered,
        )?;
        counter(
            e,
            "slow_consumers",
            "Connections closed as slow consumers (session kept)",
            s.slow_consumers,
        )?;
        counters(
            e,
            "gaps",
            "Gap notices issued: on a resume past the replay buffer, and when the drop-oldest policy shed events",
            "cause",
            &[("resume", s.resumes_with_gap), ("shed", s.gaps_shed)],
        )?;
        counter(
            e,
            "events_dropped",
            "Push events dropped from receivers' queues under the drop-oldest policy",
            s.events_dropped,
        )?;
        counter(
            e,
            "congestions",
            "Times a receiver went over the flow control's high-water mark",
            s.congestions,
        )?;
        counter(
            e,
            "publishers_held",
            "Times a publisher was held back for a congested receiver",
            s.publishers_held,
        )?;
        push_rejections(e, &s.push_rejected)?;
        counter(
            e,
            "replaced_over_client_limit",
            "Frames over their receiver's own frame limit (protocol version 4), sent as a Gap or a refusal instead",
            s.replaced_over_client_limit,
        )?;
        counter(
            e,
            "payloads_decompressed",
            "Compressed payloads the server decompressed",
            s.payloads_decompressed,
        )?;
        if let Some(cluster) = &self.cluster {
            cluster.encode(e)?;
        }
        Ok(())
    }
}

/// The whole exposition: the shell's counters and the node's `stats` and `gauges`,
/// with the `pushwire_` prefix, ending with `# EOF`.
pub(crate) fn render(
    shell: &ShellMetrics,
    stats: NodeStats,
    gauges: NodeGauges,
    cluster: Option<ClusterSnapshot>,
) -> String {
    let mut registry = Registry::with_prefix("pushwire");
    shell.register(&mut registry);
    registry.register_collector(Box::new(NodeSnapshot {
        stats,
        gauges,
        cluster,
        auth_refused: shell.auth_refused.get(),
    }));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String does not fail");
    out
}
