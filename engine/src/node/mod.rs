//! The server node: every decision a pushwire server makes about its connections and
//! sessions, written once, for the tokio server and the simulator alike.
//!
//! # Shared and per connection
//!
//! The split follows quinn-proto's `Endpoint` / `Connection`:
//!
//! - [`Node`] is the shared half, one per server: the push [`Hub`] (groups,
//!   membership, sessions, replay buffers, sequence numbers), which connection holds
//!   which session, and the policies that join them — admission (new session, resume,
//!   a resumed session superseding its old connection, the SessionLost notice,
//!   auto-subscription), push commands and acknowledgements into the hub, each
//!   delivery into its receiver's mailbox under the slow-consumer policy, a goodbye
//!   ending the session and a dropped connection detaching it for a resume, session
//!   expiry. A multi-threaded driver keeps it behind one lock.
//! - [`NodeConnection`] is the per-connection half, owned by that connection's
//!   driver: TLS, framing, the Hello deadline, RPC ordering and keep-alive (its
//!   [`ServerConnection`](crate::server::ServerConnection)), and a mailbox of push frames the node filled. Decrypting,
//!   decoding, answering requests, encrypting and writing all happen there, outside
//!   any lock that all connections share, so a server uses every core it has. The
//!   node's lock is held for hub work and for copying each delivery's frame (encoded
//!   once per publication) into its receiver's mailbox.
//!
//! # How a publication travels
//!
//! socket read → [`NodeConnection::handle_input`] (decrypt, decode: a Publish) →
//! [`Node::handle_connection`] (under the node's lock: hooks, fan-out in the hub,
//! each receiver's frame appended to its mailbox, its driver woken) → the receiver's
//! [`NodeConnection::poll_transmit`] (on its own task: takes the mailbox's frames,
//! coalesces and encrypts them into TLS records) → socket write.
//!
//! # Determinism
//!
//! No clock, no randomness, no I/O: time comes in as `now`, resume tokens as
//! arguments, and the same calls give the same outputs. Wakers are the only way out
//! besides return values and `poll_*`; a synchronous driver passes
//! [`Waker::noop`](std::task::Waker::noop) and looks at every connection each step.

mod admission;
mod connection;
mod mailbox;
mod rate;
mod report;

pub use admission::{Admission, AdmissionLimits, Refusal};
pub use connection::{ConnectionEvent, Member, NodeConnection};
pub use rate::{RateLimit, RateLimitError, TokenBucket};
pub use report::{ConnectionReport, NodeGauges};

use crate::close::CloseReason;
use crate::cluster::{
    BackplaneInput, BackplaneRequest, Cluster, ClusterConfig, ClusterConfigError, ClusterEvent,
    ReadPosition,
};
use crate::hub::{
    Actor, ConnectionId, ConnectionInfo, EventForm, Hub, HubConfig, HubError, PushHooks,
    PushOutcome, Rejection, ResumeError, SlowConsumerPolicy,
};
use crate::server::{AuthRequest, Grant, ServerConfig};
use bytes::Bytes;
use mailbox::{Alert, Mailbox};
use pushwire_protocol::{
    CloseCode, GroupId, Message, MessageKind, PushTaken, RefuseCode, ResumeToken, SessionLost,
    SessionLostReason, Text,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Flow control: a receiver that falls behind slows its publishers down before the
/// slow-consumer policy has to act.
///
/// When a delivery takes a receiver's mailbox over `high_water` bytes, the receiver
/// is *congested*: every connection whose push commands deliver to it while it is
/// congested is held back (its driver stops reading it, so TCP pushes back on the
/// client) until the receiver drains to `low_water`. A receiver still congested
/// `grace` after it became so is handled by the slow-consumer policy (cut with its
/// session kept, or its oldest events dropped down to `low_water` with a Gap), and
/// its publishers go on. The node's `max_outbound_bytes` stays the hard limit. The
/// server's own publications are never held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowControl {
    /// Queued bytes that make a receiver congested.
    pub high_water: usize,
    /// Queued bytes at or under which a congested receiver releases its publishers.
    pub low_water: usize,
    /// Longest a congested receiver holds publishers back.
    pub grace: Duration,
}

impl FlowControl {
    /// Whether the marks fit an outbound limit: low ≤ high < `max_outbound_bytes`
    /// (what [`Node::new`] checks; a configuration front end may check earlier).
    pub fn check_marks(&self, max_outbound_bytes: usize) -> Result<(), NodeConfigError> {
        if self.low_water > self.high_water || self.high_water >= max_outbound_bytes {
            return Err(NodeConfigError::WaterMarks {
                low: self.low_water,
                high: self.high_water,
                outbound: max_outbound_bytes,
            });
        }
        Ok(())
    }

    /// The defaults, scaled down to fit a smaller outbound limit (high water at most
    /// an eighth of it, low water a quarter of the high) and a shorter keep-alive
    /// idle timeout (grace at most half of it): what a server uses when its settings
    /// changed those but not the flow control.
    pub fn fitted(max_outbound_bytes: usize, idle_timeout: Option<Duration>) -> Self {
        let default = Self::default();
        let high_water = default.high_water.min(max_outbound_bytes / 8);
        Self {
            high_water,
            low_water: default.low_water.min(high_water / 4),
            grace: idle_timeout.map_or(default.grace, |idle| default.grace.min(idle / 2)),
        }
    }
}

impl Default for FlowControl {
    /// High water 1 MiB, low water 256 KiB, grace 2 s (the README's "When a
    /// receiver is slow" and `benches/RESULTS.md` section 9 give the measurements
    /// behind them).
    fn default() -> Self {
        Self {
            high_water: 1024 * 1024,
            low_water: 256 * 1024,
            grace: Duration::from_secs(2),
        }
    }
}

/// Settings of a [`Node`].
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Every connection's protocol settings: TLS or plaintext, frame limits, the
    /// Hello deadline, keep-alive.
    pub server: Arc<ServerConfig>,
    /// The hub's limits: payload size, session timeout, replay buffer.
    pub hub: HubConfig,
    /// Unwritten push frame bytes per connection before the slow-consumer policy
    /// acts: a frame that finds this much already waiting triggers it (so a mailbox
    /// holds at most this plus one frame). Default 8 MiB (16 publications of the
    /// default largest payload).
    pub max_outbound_bytes: usize,
    /// What happens to a connection over `max_outbound_bytes`.
    pub slow_consumer_policy: SlowConsumerPolicy,
    /// Groups every new session joins on arrival (the seed's Figure 6).
    pub auto_subscribe: Vec<GroupId>,
    /// The service ids this server hosts: a Hello for another is refused with
    /// `UnknownService`. Empty: every service id is accepted.
    pub services: BTreeSet<u32>,
    /// How long a connection the node closes (slow consumer, superseded) has to take
    /// its Close before its transport is dropped anyway. Default 2 s.
    pub close_grace: Duration,
    /// Backpressure to publishers ([`FlowControl::default`] unless set); `None`
    /// leaves only the slow-consumer policy at the hard limit, so a fast publisher
    /// can push a receiver that reads, but more slowly for a moment, over it.
    pub flow_control: Option<FlowControl>,
    /// The publish rate limit per connection: Publish and SendUserMessage commands
    /// (one token each, whatever the number of groups) over it are refused with
    /// `RejectCode::RateLimited` and not delivered; the connection stays. `None`
    /// (the default, like NATS and Centrifugo): no limit, and no cost.
    pub publish_rate: Option<RateLimit>,
    /// This node's place in a cluster (see [`crate::cluster`]); `None`: a node on
    /// its own, which keeps no journal and pays nothing for clustering.
    pub cluster: Option<ClusterConfig>,
}

impl NodeConfig {
    /// Defaults for everything but the connections' protocol settings.
    pub fn new(server: ServerConfig) -> Self {
        Self {
            server: Arc::new(server),
            hub: HubConfig::default(),
            max_outbound_bytes: 8 * 1024 * 1024,
            slow_consumer_policy: SlowConsumerPolicy::default(),
            auto_subscribe: Vec::new(),
            services: BTreeSet::new(),
            close_grace: Duration::from_secs(2),
            flow_control: Some(FlowControl::default()),
            publish_rate: None,
            cluster: None,
        }
    }
}

/// A [`NodeConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeConfigError {
    /// A resume replays up to the replay buffer through the mailbox at once.
    #[error(
        "the replay buffer ({replay} bytes) must not exceed the outbound queue limit \
         ({outbound} bytes): a resume would be cut off as a slow consumer"
    )]
    ReplayOverOutbound {
        /// Replay bytes configured.
        replay: usize,
        /// Outbound limit configured.
        outbound: usize,
    },
    /// The flow control's marks must satisfy low ≤ high < the outbound limit.
    #[error(
        "flow control needs low water ({low}) ≤ high water ({high}) < the outbound limit \
         ({outbound} bytes)"
    )]
    WaterMarks {
        /// Low-water mark.
        low: usize,
        /// High-water mark.
        high: usize,
        /// Outbound limit.
        outbound: usize,
    },
    /// The cluster settings cannot work.
    #[error(transparent)]
    Cluster(#[from] ClusterConfigError),
    /// A held publisher is not read; it must not be taken for dead meanwhile.
    #[error(
        "the flow control's grace ({grace:?}) must be shorter than the keep-alive idle \
         timeout ({idle:?}): a publisher held back would time out"
    )]
    GraceOverIdleTimeout {
        /// The grace.
        grace: Duration,
        /// The idle timeout.
        idle: Duration,
    },
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The client said goodbye, or the server shut down.
    Goodbye,
    /// Its connection dropped and the session was not resumable (zero session
    /// timeout, resume disabled).
    Dropped,
    /// Detached for longer than the session timeout.
    Expired,
}

/// What the node did, for the application's log and metrics. Drained with
/// [`Node::poll_event`]; the hooks see the same joins and leaves in the hub's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A Hello was let in as a new session.
    SessionStarted {
        /// The session.
        session: ConnectionId,
        /// Its user id.
        user_id: Text,
        /// The client had asked to resume a session the node no longer has (it got a
        /// SessionLost notice first).
        lost: bool,
    },
    /// A session was resumed on a new connection.
    Resumed {
        /// The session.
        session: ConnectionId,
        /// Its user id.
        user_id: Text,
        /// Events re-sent from its replay buffer.
        replayed: usize,
        /// The range announced as lost, when the buffer did not reach back far enough.
        gap: Option<(u64, u64)>,
        /// Its previous connection was still open and is being closed (`Kicked`).
        superseded: bool,
    },
    /// A resume was refused: the token belongs to another user.
    ResumeRefused {
        /// Who asked.
        user_id: Text,
    },
    /// A Hello was refused because its user already had as many connections open as
    /// the authenticator's [`Permit`] allows.
    UserAtLimit {
        /// Who asked.
        user_id: Text,
        /// The user's limit.
        max_connections: u32,
    },
    /// A Hello asked for a service this server does not host.
    UnknownService {
        /// Who asked.
        user_id: Text,
        /// The service asked for.
        service_id: u32,
    },
    /// A session's connection dropped; the session is kept for a resume.
    Detached {
        /// The session.
        session: ConnectionId,
        /// Its user id.
        user_id: Text,
    },
    /// A session ended; the other members of its groups were told.
    Ended {
        /// The session.
        session: ConnectionId,
        /// Its user id.
        user_id: Text,
        /// Why.
        end: SessionEnd,
    },
    /// Something happened in the cluster (a clustered node only).
    Cluster(ClusterEvent),
    /// A connection went over its outbound limit under
    /// [`SlowConsumerPolicy::Disconnect`] and is being closed, its session kept.
    SlowConsumer {
        /// The session.
        session: ConnectionId,
    },
}

/// What the application's authenticator grants with its permit, beyond letting the
/// client in: limits the node checks at the moment the session joins, under the same
/// call that adds it, so two Hellos of one user that arrive together cannot both pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Permit {
    /// Most connections the user (compared by Unicode lowercase) may have open at
    /// once; `None`: no limit. Counted are the user's sessions attached to a
    /// connection: a detached session waiting for its resume holds no connection,
    /// and a resume that supersedes its session's old connection replaces it rather
    /// than adding one. A Hello over the limit is refused with
    /// `RefuseCode::TooManyConnections`; zero refuses every Hello of the user.
    pub max_user_connections: Option<u32>,
}

impl Permit {
    /// A permit with no limits.
    pub const UNLIMITED: Permit = Permit {
        max_user_connections: None,
    };
}

/// Running totals of what the node did (for metrics and the simulator's coverage).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Sessions started.
    pub sessions_started: u64,
    /// Sessions resumed.
    pub sessions_resumed: u64,
    /// Resumes that replayed at least one event.
    pub resumes_with_replay: u64,
    /// Resumes that began with a Gap.
    pub resumes_with_gap: u64,
    /// Resumes asked for a session the node no longer has (answered SessionLost).
    pub sessions_lost: u64,
    /// Detached sessions that expired.
    pub sessions_expired: u64,
    /// Connections closed as slow consumers.
    pub slow_consumers: u64,
    /// Connections closed because their session was resumed elsewhere.
    pub superseded: u64,
    /// Times a receiver became congested (flow control).
    pub congestions: u64,
    /// Times a connection was held back for a congested receiver (flow control).
    pub publishers_held: u64,
    /// Congested receivers the slow-consumer policy handled when their grace ran out.
    pub congestions_expired: u64,
    /// Compressed payloads from clients that the server decompressed (protocol
    /// version 3): once each, to check them, for the hooks, and for the receivers
    /// that get them plain. A payload refused for its declared size is not counted.
    pub payloads_decompressed: u64,
    /// Bytes those decompressions produced.
    pub bytes_decompressed: u64,
    /// Deliveries of a compressed payload forwarded in the sender's compressed form,
    /// untouched, to receivers that accept compressed payloads.
    pub deliveries_compressed: u64,
    /// Deliveries of a compressed payload sent plain, because the receiver did not
    /// accept compressed payloads (its Hello did not ask, or it speaks an older
    /// version): the cost of not opting in.
    pub deliveries_decompressed: u64,
    /// Bytes those plain deliveries took on the wire beyond the compressed form's.
    pub bytes_decompressed_for_receivers: u64,
    /// Hellos the node refused after the authenticator permitted them (a service
    /// this server does not host, a resume of another user's session, a user at
    /// their connection limit).
    pub hellos_refused: u64,
    /// Publications received: clients' Publish commands and the server's own,
    /// before the hooks' verdict (refused ones included).
    pub publications_in: u64,
    /// User messages received: clients' SendUserMessage commands and the server's.
    pub user_messages_in: u64,
    /// Payload bytes of those publications and user messages, as they came (a
    /// compressed payload counts its compressed size).
    pub payload_bytes_in: u64,
    /// Publications queued to receivers (the fan-out: one per receiving connection,
    /// echoes included).
    pub deliveries_published: u64,
    /// User messages queued to receivers (one per receiving connection).
    pub deliveries_user_messages: u64,
    /// Other frames the hub queued: presence events, command answers, gaps.
    pub deliveries_other: u64,
    /// Frame bytes of all those deliveries (header included, plain payload size).
    pub bytes_delivered: u64,
    /// Push events dropped from receivers' queues under the drop-oldest policy
    /// (each covered by a Gap notice).
    pub events_dropped: u64,
    /// Gap notices those drops made, one per run of dropped events.
    pub gaps_shed: u64,
    /// Push commands refused (PushRejected answers), by
    /// [`RejectCode`](pushwire_protocol::RejectCode) value: index
    /// `n` counts code `n`; the last slot counts every code from
    /// [`REJECT_CODE_SLOTS`]` - 1` up.
    pub push_rejected: [u64; REJECT_CODE_SLOTS],
    /// Publications and user messages refused by the publish rate limit
    /// ([`NodeConfig::publish_rate`]).
    pub rate_limited: u64,
    /// Frames over their receiver's own frame limit (protocol version 4), sent as
    /// a Gap (push events) or a PushRejected `AnswerTooLarge` (command answers)
    /// instead.
    pub replaced_over_client_limit: u64,
}

/// Slots of [`NodeStats::push_rejected`].
pub const REJECT_CODE_SLOTS: usize = 16;

impl NodeStats {
    /// Counts a push command a connection sent (publications and user messages).
    fn count_command(&mut self, command: &Message) {
        match command {
            Message::Publish(m) => {
                self.publications_in += 1;
                self.payload_bytes_in += m.payload.len() as u64;
            }
            Message::SendUserMessage(m) => {
                self.user_messages_in += 1;
                self.payload_bytes_in += m.payload.len() as u64;
            }
            _ => {}
        }
    }

    /// Counts one frame the hub queued for a receiver.
    fn count_delivery(&mut self, delivery: &crate::hub::Delivery) {
        match delivery.kind() {
            MessageKind::Published => self.deliveries_published += 1,
            MessageKind::UserMessage => self.deliveries_user_messages += 1,
            MessageKind::PushRejected => {
                self.deliveries_other += 1;
                if let Some(code) = delivery.rejection() {
                    let slot = usize::from(code.to_wire()).min(REJECT_CODE_SLOTS - 1);
                    self.push_rejected[slot] += 1;
                }
            }
            _ => self.deliveries_other += 1,
        }
        self.bytes_delivered += delivery.frame_len() as u64;
    }
}

/// A receiver queue's drop counters before an operation, to count what it dropped.
#[derive(Clone, Copy)]
struct DropCounts {
    events: u64,
    gaps: u64,
}

impl DropCounts {
    fn of(queue: &crate::hub::OutboundQueue) -> Self {
        Self {
            events: queue.dropped_total(),
            gaps: queue.gaps_total(),
        }
    }

    fn add_new(self, queue: &crate::hub::OutboundQueue, stats: &mut NodeStats) {
        stats.events_dropped += queue.dropped_total() - self.events;
        stats.gaps_shed += queue.gaps_total() - self.gaps;
    }
}

/// What one [`Node::deliver`] found, for a server publication's outcome.
#[derive(Debug, Default, Clone, Copy)]
struct DeliveryCounts {
    congested: u32,
    cut: u32,
}

/// The id a push command carries.
fn command_id(command: &Message) -> Option<u64> {
    match command {
        Message::Subscribe(m) => Some(m.command_id),
        Message::Unsubscribe(m) => Some(m.command_id),
        Message::Publish(m) => Some(m.command_id),
        Message::SendUserMessage(m) => Some(m.command_id),
        Message::ListGroups(m) => Some(m.command_id),
        _ => None,
    }
}

/// The id of a command the publish rate limit counts: Publish and SendUserMessage.
fn rate_counted(command: &Message) -> Option<u64> {
    match command {
        Message::Publish(m) => Some(m.command_id),
        Message::SendUserMessage(m) => Some(m.command_id),
        _ => None,
    }
}

/// A congested receiver (flow control).
struct Congestion {
    since: Instant,
    mailbox: Arc<Mailbox>,
    /// Connections held back for it.
    publishers: Vec<Arc<Mailbox>>,
}

impl Congestion {
    /// When the grace ends: `grace` after it became congested or, later, after its
    /// transport last took bytes. `None` once it drained: its connection reported
    /// that and the node releases it at the connection's next call.
    fn deadline(&self, grace: Duration) -> Option<Instant> {
        let state = self.mailbox.lock();
        if !state.is_congested() {
            return None;
        }
        let progress = state.last_progress();
        Some(progress.map_or(self.since, |p| p.max(self.since)) + grace)
    }
}

/// The server node: the push hub and the policy that joins it to connections.
///
/// # Calling contract
///
/// Create one per server. For every accepted transport make a [`NodeConnection`]
/// ([`Node::connection`]) and follow its contract; lend it to the node:
///
/// - with [`handle_hello`](Self::handle_hello) once the application's authenticator
///   permitted its Hello, with a fresh resume token from a CSPRNG;
/// - with [`handle_connection`](Self::handle_connection) whenever it
///   [wants the node](NodeConnection::wants_node);
/// - with [`handle_connection_closed`](Self::handle_connection_closed) once, when it
///   is finished.
///
/// Call [`handle_timeout`](Self::handle_timeout) when
/// [`poll_timeout`](Self::poll_timeout) is due (it changes after every call), and use
/// the server API ([`publish`](Self::publish) and the rest) for the server's own push
/// operations. After any call, drain [`poll_event`](Self::poll_event) if you log or
/// count. Connections whose mailbox got frames or an alert are woken through their
/// wakers during the call.
pub struct Node<H = crate::hub::AllowAll> {
    config: Arc<NodeConfig>,
    hub: Hub<H>,
    /// Each attached session's current connection.
    mailboxes: BTreeMap<ConnectionId, Arc<Mailbox>>,
    /// When and from where each attached session's current connection joined, for
    /// the operator's listing.
    attachments: BTreeMap<ConnectionId, report::Attachment>,
    /// Sessions whose mailbox got frames in this call.
    to_wake: Vec<ConnectionId>,
    events: VecDeque<NodeEvent>,
    stats: NodeStats,
    /// Congested receivers by session (flow control).
    congestion: BTreeMap<ConnectionId, Congestion>,
    /// The connection whose push commands are running (flow control holds it).
    actor: Option<Arc<Mailbox>>,
    /// The latest `now` the node was given.
    clock: Option<Instant>,
    /// The cluster half of a clustered node.
    cluster: Option<Cluster>,
}

impl<H: PushHooks> Node<H> {
    /// A node with no connections and no groups.
    pub fn new(config: NodeConfig, hooks: H) -> Result<Self, NodeConfigError> {
        if config.hub.replay_bytes > config.max_outbound_bytes {
            return Err(NodeConfigError::ReplayOverOutbound {
                replay: config.hub.replay_bytes,
                outbound: config.max_outbound_bytes,
            });
        }
        if let Some(flow) = config.flow_control {
            flow.check_marks(config.max_outbound_bytes)?;
            if let Some(idle) = config.server.keepalive.idle_timeout {
                if flow.grace >= idle {
                    return Err(NodeConfigError::GraceOverIdleTimeout {
                        grace: flow.grace,
                        idle,
                    });
                }
            }
        }
        let cluster = match &config.cluster {
            Some(c) => Some(Cluster::new(c.clone(), config.hub.max_payload_bytes)?),
            None => None,
        };
        let mut hub = Hub::new(config.hub.clone(), hooks);
        if let Some(c) = &config.cluster {
            hub.enable_journal(c.node.clone());
        }
        Ok(Self {
            cluster,
            congestion: BTreeMap::new(),
            actor: None,
            clock: None,
            hub,
            config: Arc::new(config),
            mailboxes: BTreeMap::new(),
            attachments: BTreeMap::new(),
            to_wake: Vec::new(),
            events: VecDeque::new(),
            stats: NodeStats::default(),
        })
    }

    /// The settings in force (shared with every connection).
    pub fn config(&self) -> &Arc<NodeConfig> {
        &self.config
    }

    /// The hub, to read (groups, members, sessions).
    pub fn hub(&self) -> &Hub<H> {
        &self.hub
    }

    /// The application's hooks.
    pub fn hooks_mut(&mut self) -> &mut H {
        self.hub.hooks_mut()
    }

    /// Running totals.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// The per-connection half for a transport accepted at `now` from `peer`; see
    /// [`NodeConnection::new`]. Needs only the settings, so a driver may as well call
    /// `NodeConnection::new(node.config().clone(), …)` without the node's lock.
    pub fn connection(
        &self,
        peer: std::net::SocketAddr,
        now: Instant,
        waker: std::task::Waker,
    ) -> Result<NodeConnection, crate::tls::TlsError> {
        NodeConnection::new(self.config.clone(), peer, now, waker)
    }

    /// The next event for the application's log.
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called: the
    /// earliest expiry of a detached session or end of a congested receiver's grace.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let congestion = self.config.flow_control.and_then(|flow| {
            self.congestion
                .values()
                .filter_map(|c| c.deadline(flow.grace))
                .min()
        });
        let cluster = self.cluster.as_ref().and_then(Cluster::poll_timeout);
        [self.hub.poll_timeout(), congestion, cluster]
            .into_iter()
            .flatten()
            .min()
    }

    /// Ends every detached session whose timeout has passed (the other members of
    /// its groups are told now), and hands receivers congested past the flow
    /// control's grace to the slow-consumer policy.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock = Some(now);
        self.expire_congestion(now);
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.handle_timeout(now, &mut self.hub);
        }
        for (session, info) in self.hub.handle_timeout(now) {
            self.mailboxes.remove(&session);
            self.attachments.remove(&session);
            self.stats.sessions_expired += 1;
            self.events.push_back(NodeEvent::Ended {
                session,
                user_id: info.user_id,
                end: SessionEnd::Expired,
            });
        }
        self.dispatch();
    }

    /// The application's authenticator permitted `request` (which `conn` reported):
    /// the connection resumes the session it names, or starts a new one identified by
    /// `token`. A Hello for a service this server does not host, or a resume of
    /// another user's session, is refused. A resume of a session the node no longer
    /// has starts a new session whose first message is a SessionLost notice, so the
    /// client restores its subscriptions.
    pub fn handle_hello(
        &mut self,
        now: Instant,
        conn: &mut NodeConnection,
        request: Box<AuthRequest>,
        token: ResumeToken,
    ) {
        self.handle_permitted_hello(now, conn, request, token, Permit::UNLIMITED);
    }

    /// [`handle_hello`](Self::handle_hello) for a Hello permitted with limits: the
    /// user's connection limit is checked here, before the session joins or
    /// resumes, and a Hello over it is refused with `TooManyConnections`.
    pub fn handle_permitted_hello(
        &mut self,
        now: Instant,
        conn: &mut NodeConnection,
        request: Box<AuthRequest>,
        token: ResumeToken,
        permit: Permit,
    ) {
        self.clock = Some(now);
        let request = *request;
        if !self.config.services.is_empty() && !self.config.services.contains(&request.service_id) {
            self.stats.hellos_refused += 1;
            conn.refuse(
                RefuseCode::UnknownService,
                format!("no service {} on this server", request.service_id),
            );
            self.events.push_back(NodeEvent::UnknownService {
                user_id: request.user_id,
                service_id: request.service_id,
            });
            return;
        }
        if let Some(max) = permit.max_user_connections {
            // The session a resume names replaces its own connection, if it has one.
            let resuming = request
                .resume
                .as_ref()
                .and_then(|resume| self.hub.session_of_token(&resume.token));
            let open = self
                .hub
                .user_connections(request.user_id.as_str())
                .filter(|&session| {
                    Some(session) != resuming && self.mailboxes.contains_key(&session)
                })
                .count();
            if open >= max as usize {
                self.stats.hellos_refused += 1;
                conn.refuse(
                    RefuseCode::TooManyConnections,
                    format!(
                        "user {} already has {open} connections open, the most allowed",
                        request.user_id
                    ),
                );
                self.events.push_back(NodeEvent::UserAtLimit {
                    user_id: request.user_id,
                    max_connections: max,
                });
                return;
            }
        }
        let mut lost = false;
        if let Some(resume) = request.resume {
            match self
                .hub
                .resume(&resume.token, request.user_id.as_str(), resume.last_seq)
            {
                Ok(resumed) => {
                    let session = resumed.session;
                    self.attachments
                        .insert(session, report::Attachment::new(now, request.peer));
                    let superseded = match self.mailboxes.insert(session, conn.mailbox.clone()) {
                        Some(old) => {
                            self.release(session, &old);
                            old.close(Alert::Superseded)
                        }
                        None => false,
                    };
                    if superseded {
                        self.stats.superseded += 1;
                    }
                    self.stats.sessions_resumed += 1;
                    if resumed.replayed > 0 {
                        self.stats.resumes_with_replay += 1;
                    }
                    if resumed.gap.is_some() {
                        self.stats.resumes_with_gap += 1;
                    }
                    self.admit(conn, session, resume.token, true, &request);
                    self.events.push_back(NodeEvent::Resumed {
                        session,
                        user_id: request.user_id,
                        replayed: resumed.replayed,
                        gap: resumed.gap,
                        superseded,
                    });
                    self.dispatch();
                    return;
                }
                Err(ResumeError::NotYours) => {
                    self.stats.hellos_refused += 1;
                    conn.refuse(
                        RefuseCode::ResumeNotPermitted,
                        "the resume token belongs to another user",
                    );
                    self.events.push_back(NodeEvent::ResumeRefused {
                        user_id: request.user_id,
                    });
                    return;
                }
                Err(ResumeError::Unknown) => {
                    lost = true;
                    self.stats.sessions_lost += 1;
                }
            }
        }
        let info = ConnectionInfo::new(
            request.user_id.clone(),
            request.peer.ip(),
            request.peer.port(),
            request.service_id,
        )
        .with_echo(request.options.echo);
        let session = self.hub.connect_session(info, token);
        self.mailboxes.insert(session, conn.mailbox.clone());
        self.attachments
            .insert(session, report::Attachment::new(now, request.peer));
        self.stats.sessions_started += 1;
        self.admit(conn, session, token, false, &request);
        if lost {
            // Before any event of the new session.
            conn.engine.send(&Message::SessionLost(SessionLost {
                reason: SessionLostReason::Unknown,
                text: Text::from_static(
                    "the session expired or the server restarted; this is a new session",
                ),
            }));
        }
        self.events.push_back(NodeEvent::SessionStarted {
            session,
            user_id: request.user_id,
            lost,
        });
        if !self.config.auto_subscribe.is_empty() {
            // The seed's Figure 6: the server subscribes the newcomer on arrival.
            let groups = self.config.auto_subscribe.clone();
            let _ = self.hub.subscribe(session, &groups);
        }
        self.dispatch();
    }

    /// Runs the push commands and acknowledgements `conn` received since the last
    /// call. A connection whose session was resumed elsewhere is being closed; what
    /// it still sends is ignored.
    ///
    /// Under flow control the commands run one at a time, and stop as soon as one
    /// reached a congested receiver: the rest wait in `conn` until the receiver
    /// drains (or its grace ends), so a held publisher overshoots by one command.
    /// A client of protocol version 2 or later is then told, with PushTaken, the
    /// last command that ran.
    ///
    /// With a [publish rate limit](NodeConfig::publish_rate), each Publish and
    /// SendUserMessage first takes a token from the connection's bucket at `now`;
    /// one that finds none is answered with a PushRejected `RateLimited` and not
    /// run (it still counts as taken for PushTaken).
    pub fn handle_connection(&mut self, now: Instant, conn: &mut NodeConnection) {
        self.run_connection(now, conn, false);
    }

    fn run_connection(&mut self, now: Instant, conn: &mut NodeConnection, closing: bool) {
        self.clock = Some(now);
        let (payloads, bytes) = std::mem::take(&mut conn.decompressed);
        self.stats.payloads_decompressed += payloads;
        self.stats.bytes_decompressed += bytes;
        let session = match &conn.member {
            Some(member) if self.holds(member.session, conn) => member.session,
            _ => {
                conn.to_node.clear();
                conn.acked = None;
                conn.drained = false;
                return;
            }
        };
        if let Some(seq) = conn.acked.take() {
            self.hub.acknowledge(session, seq);
        }
        // Drained, unless a delivery from another connection congested it again
        // since (then its publishers stay held for the new congestion).
        if std::mem::take(&mut conn.drained) && !conn.mailbox.lock().is_congested() {
            self.release(session, &conn.mailbox);
        }
        let flow = self.config.flow_control.is_some();
        if flow {
            self.actor = Some(conn.mailbox.clone());
        }
        let mut taken = None;
        // A connection that is closing sends nothing more: what it sent runs, held
        // or not (a held connection is not read, so that is one read's worth).
        while closing || !conn.mailbox.is_held() {
            let Some(command) = conn.to_node.pop_front() else {
                break;
            };
            taken = command_id(&command.message).or(taken);
            self.stats.count_command(&command.message);
            if let Some(bucket) = conn.publish_bucket.as_mut() {
                if let Some(command_id) = rate_counted(&command.message) {
                    if !bucket.try_take(now) {
                        self.stats.rate_limited += 1;
                        let limit = bucket.limit();
                        // The session is attached (checked above): this cannot fail.
                        let _ = self.hub.reject_command(
                            session,
                            command_id,
                            Rejection::rate_limited(limit.rate(), limit.burst()),
                        );
                        if flow {
                            self.deliver();
                        }
                        continue;
                    }
                }
            }
            // Refusals are answered to the client inside the hub; an error here
            // means a message that is not a push command, which the engine does
            // not pass on (a corrupt compressed payload closed the connection before
            // it got here).
            let _ = self
                .hub
                .handle_opened_command(session, command.message, command.opened);
            if flow {
                // Delivered now, so a receiver this command congested holds the
                // connection before its next command runs.
                self.deliver();
            }
        }
        if let Some(command_id) = taken.filter(|_| conn.engine.version() >= 2) {
            // Through the mailbox, after the command's own answers (a PushRejected
            // comes before the PushTaken that covers its command).
            self.deliver();
            let notice = Message::PushTaken(PushTaken { command_id });
            if conn.mailbox.lock().push_notice(&notice) {
                self.cut_off(session);
            }
            self.to_wake.push(session);
        }
        self.dispatch();
        self.actor = None;
    }

    /// `conn` is finished and its transport closed: its session ends when the client
    /// said goodbye (or the server is shutting down), and is detached for a resume
    /// otherwise. Push commands it received before the end still run first. Calling
    /// it again does nothing.
    pub fn handle_connection_closed(&mut self, now: Instant, conn: &mut NodeConnection) {
        if conn.left {
            return;
        }
        conn.drain_for_close();
        self.run_connection(now, conn, true);
        conn.left = true;
        let Some(member) = conn.member.clone() else {
            return;
        };
        if !self.holds(member.session, conn) {
            // Resumed on another connection, which owns the session now.
            return;
        }
        self.release(member.session, &conn.mailbox);
        self.mailboxes.remove(&member.session);
        self.attachments.remove(&member.session);
        let goodbye = matches!(
            conn.close_reason,
            Some(CloseReason::Remote {
                code: CloseCode::Normal,
                ..
            }) | Some(CloseReason::Local {
                code: CloseCode::GoingAway,
                ..
            })
        );
        let end = if goodbye {
            self.hub
                .disconnect(member.session)
                .ok()
                .map(|_| SessionEnd::Goodbye)
        } else {
            match self.hub.detach(member.session, now) {
                Ok(Some(_)) => Some(SessionEnd::Dropped),
                Ok(None) => {
                    self.events.push_back(NodeEvent::Detached {
                        session: member.session,
                        user_id: member.user_id.clone(),
                    });
                    None
                }
                Err(_) => None,
            }
        };
        if let Some(end) = end {
            self.events.push_back(NodeEvent::Ended {
                session: member.session,
                user_id: member.user_id,
                end,
            });
        }
        self.dispatch();
    }

    // --- The backplane port (a clustered node) -------------------------------------

    /// What the backplane tells a clustered node ([`crate::cluster`]); ignored by a
    /// node on its own.
    pub fn handle_backplane(&mut self, now: Instant, input: BackplaneInput) {
        self.clock = Some(now);
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.handle_input(now, input, &mut self.hub);
            self.dispatch();
        }
    }

    /// The next piece of work for the backplane, in order; `None` when there is
    /// none (or the backplane is down). Changes after every call of the node.
    pub fn poll_backplane(&mut self) -> Option<BackplaneRequest> {
        self.cluster.as_mut()?.poll_request()
    }

    /// Which peers' logs to read, from where (empty for a node on its own, or while
    /// the backplane is down). Changes after every call of the node.
    pub fn backplane_reads(&self) -> Vec<ReadPosition> {
        self.cluster
            .as_ref()
            .map(Cluster::reads)
            .unwrap_or_default()
    }

    /// The waker woken whenever work for the backplane appears (a record to
    /// append, a directory or snapshot to read), whichever call made it.
    pub fn set_backplane_waker(&mut self, waker: std::task::Waker) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.set_waker(waker);
        }
    }

    /// The cluster half, to read (peers, stats); `None` for a node on its own.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    // --- The server API ------------------------------------------------------------

    /// Publishes `payload` to `groups`, as the server ([`Actor::Server`]) or on
    /// behalf of a connection; see [`Hub::publish`].
    pub fn publish(
        &mut self,
        actor: Actor,
        groups: &[GroupId],
        payload: Bytes,
    ) -> Result<PushOutcome, HubError> {
        self.stats.publications_in += 1;
        self.stats.payload_bytes_in += payload.len() as u64;
        self.with_hub_counted(|hub| hub.publish(actor, groups, payload))
    }

    /// Sends `payload` to every connection of `receiver`; see
    /// [`Hub::send_user_message`].
    pub fn send_user_message(
        &mut self,
        actor: Actor,
        receiver: &str,
        payload: Bytes,
    ) -> Result<PushOutcome, HubError> {
        self.stats.user_messages_in += 1;
        self.stats.payload_bytes_in += payload.len() as u64;
        self.with_hub_counted(|hub| hub.send_user_message(actor, receiver, payload))
    }

    /// Subscribes a session to groups; see [`Hub::subscribe`].
    pub fn subscribe(
        &mut self,
        session: ConnectionId,
        groups: &[GroupId],
    ) -> Result<PushOutcome, HubError> {
        self.with_hub(|hub| hub.subscribe(session, groups))
    }

    /// Unsubscribes a session from groups; see [`Hub::unsubscribe`].
    pub fn unsubscribe(
        &mut self,
        session: ConnectionId,
        groups: &[GroupId],
    ) -> Result<PushOutcome, HubError> {
        self.with_hub(|hub| hub.unsubscribe(session, groups))
    }

    /// Registers a chat group, at start or at run time.
    pub fn add_group(
        &mut self,
        group: GroupId,
        description: impl Into<Text>,
    ) -> Result<(), HubError> {
        // Through the dispatch: a clustered node tells the others.
        self.with_hub(|hub| hub.add_group(group, description))
    }

    /// Removes a chat group; its members are unsubscribed, with notifications.
    pub fn remove_group(&mut self, group: GroupId) -> Result<Vec<ConnectionId>, HubError> {
        self.with_hub(|hub| hub.remove_group(group))
    }

    /// Injects a fault into the cluster half (the simulator's cluster oracle tests);
    /// a node on its own ignores it.
    #[cfg(feature = "fault-injection")]
    pub fn inject_cluster_fault(&mut self, fault: crate::cluster::ClusterFault) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.inject_fault(fault);
        }
    }

    /// Injects a fault into the hub (the simulator's oracle tests).
    #[cfg(feature = "fault-injection")]
    pub fn inject_fault(&mut self, fault: crate::hub::HubFault) {
        self.hub.inject_fault(fault);
    }

    // --- Internals -----------------------------------------------------------------

    /// Runs a server-API call on the hub and dispatches what it delivered.
    fn with_hub<R>(&mut self, call: impl FnOnce(&mut Hub<H>) -> R) -> R {
        let result = call(&mut self.hub);
        self.dispatch();
        result
    }

    /// Runs a server-API push operation and dispatches it, telling in its outcome
    /// which receivers it found congested or cut off.
    fn with_hub_counted(
        &mut self,
        call: impl FnOnce(&mut Hub<H>) -> Result<PushOutcome, HubError>,
    ) -> Result<PushOutcome, HubError> {
        let mut result = call(&mut self.hub);
        let counts = self.deliver();
        self.wake();
        if let Ok(outcome) = result.as_mut() {
            outcome.congested = counts.congested;
            outcome.cut = counts.cut;
        }
        result
    }

    /// Whether `conn` is the connection that holds `session` now.
    fn holds(&self, session: ConnectionId, conn: &NodeConnection) -> bool {
        self.mailboxes
            .get(&session)
            .is_some_and(|mailbox| Arc::ptr_eq(mailbox, &conn.mailbox))
    }

    /// Lets `conn` in as `session`: the Welcome, and what it is in the node.
    fn admit(
        &self,
        conn: &mut NodeConnection,
        session: ConnectionId,
        token: ResumeToken,
        resumed: bool,
        request: &AuthRequest,
    ) {
        let hub = &self.config.hub;
        conn.engine.permit(Grant {
            session_id: session.0,
            resume_token: token,
            resumed,
            session_timeout_ms: hub.session_timeout.as_millis().min(u128::from(u32::MAX)) as u32,
            replay_capacity: hub.replay_events.min(u32::MAX as usize) as u32,
        });
        conn.mark_idle();
        // The form this connection's deliveries take (replays of a resumed
        // session included): chosen as each frame is queued, from this Hello.
        conn.mailbox
            .lock()
            .queue_mut()
            .set_event_form(EventForm::for_connection(
                request.version,
                request.options.compression,
            ));
        conn.mailbox
            .lock()
            .queue_mut()
            .set_max_frame_size(conn.engine.client_max_frame_size());
        conn.member = Some(Member {
            session,
            user_id: request.user_id.clone(),
            service_id: request.service_id,
        });
    }

    /// Delivers what the hub produced and wakes the receivers.
    fn dispatch(&mut self) {
        self.deliver();
        self.wake();
    }

    /// Appends every delivery the hub produced to its receiver's mailbox (one lock of
    /// each mailbox per run of deliveries to it), closes mailboxes that went over
    /// their limit, and notes receivers over the flow control's high-water mark,
    /// holding the acting connection back for them. Receivers are woken later, by
    /// [`wake`](Self::wake), once per call of the node.
    fn deliver(&mut self) -> DeliveryCounts {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.collect(self.clock, &mut self.hub);
            while let Some(event) = cluster.poll_event() {
                self.events.push_back(NodeEvent::Cluster(event));
            }
        }
        let high_water = self.config.flow_control.map(|f| f.high_water);
        let drop_oldest = self.config.slow_consumer_policy == SlowConsumerPolicy::DropOldest;
        let Self {
            hub,
            mailboxes,
            to_wake,
            events,
            stats,
            congestion,
            actor,
            clock,
            ..
        } = self;
        let mut counts = DeliveryCounts::default();
        let mut cut = Vec::new();
        let mut congested = Vec::new();
        // Receivers that became congested in this call (rather than were already).
        let mut fresh = Vec::new();
        let mut held: Option<(ConnectionId, &Arc<Mailbox>, mailbox::MailboxGuard<'_>)> = None;
        while let Some(delivery) = hub.poll_delivery() {
            let connection = delivery.connection();
            if held.as_ref().map(|(id, _, _)| *id) != Some(connection) {
                held = None;
                let Some(mailbox) = mailboxes.get(&connection) else {
                    continue;
                };
                held = Some((connection, mailbox, mailbox.lock()));
                to_wake.push(connection);
            }
            let (_, mailbox, state) = held.as_mut().expect("set above");
            if state.alert().is_none() {
                stats.count_delivery(&delivery);
            }
            if let Some((compressed, plain_len)) = delivery.compressed() {
                if state.alert().is_none() {
                    if state.queue().event_form().compressed {
                        stats.deliveries_compressed += 1;
                    } else {
                        stats.deliveries_decompressed += 1;
                        stats.bytes_decompressed_for_receivers +=
                            plain_len.saturating_sub(compressed.wire_len()) as u64;
                    }
                }
            }
            let drops = drop_oldest.then(|| DropCounts::of(state.queue()));
            let replaced = state.queue().replaced_total();
            let over_limit = state.push_delivery(&delivery);
            stats.replaced_over_client_limit += state.queue().replaced_total() - replaced;
            if let Some(before) = drops {
                before.add_new(state.queue(), stats);
            }
            if over_limit {
                stats.slow_consumers += 1;
                events.push_back(NodeEvent::SlowConsumer {
                    session: connection,
                });
                cut.push(connection);
            } else if let Some(high_water) = high_water {
                if state.alert().is_none() && state.queue().bytes() > high_water {
                    if !state.is_congested() {
                        mailbox.set_congested(state, true);
                        stats.congestions += 1;
                        fresh.push(connection);
                    }
                    if congested.last() != Some(&connection) {
                        congested.push(connection);
                    }
                }
            }
        }
        drop(held);
        congested.sort_unstable();
        congested.dedup();
        counts.congested = congested.len() as u32;
        counts.cut = cut.len() as u32;
        for session in congested {
            let Some(mailbox) = mailboxes.get(&session) else {
                continue;
            };
            // Receivers exist only after a `handle_hello`, which gave the time.
            let Some(since) = *clock else { continue };
            let entry = congestion.entry(session).or_insert_with(|| Congestion {
                since,
                mailbox: mailbox.clone(),
                publishers: Vec::new(),
            });
            if fresh.contains(&session) {
                // Congested again after it drained and before the node heard so (a
                // delivery from another connection in between): a new grace, not
                // the old one's remainder.
                entry.since = since;
            }
            // The server's own publications (no actor) are never held; nor is a
            // connection held for its own echo.
            if let Some(actor) = actor.as_ref() {
                if !Arc::ptr_eq(actor, mailbox)
                    && !entry.publishers.iter().any(|p| Arc::ptr_eq(p, actor))
                {
                    actor.hold();
                    entry.publishers.push(actor.clone());
                    stats.publishers_held += 1;
                }
            }
        }
        for session in cut {
            self.cut_off(session);
        }
        counts
    }

    /// Wakes each receiver that got frames since the last call, once.
    fn wake(&mut self) {
        self.to_wake.sort_unstable();
        self.to_wake.dedup();
        for connection in self.to_wake.drain(..) {
            if let Some(mailbox) = self.mailboxes.get(&connection) {
                mailbox.wake();
            }
        }
    }

    /// `session`'s mailbox went over its limit and was closed: the connections held
    /// back for it go on.
    fn cut_off(&mut self, session: ConnectionId) {
        if let Some(mailbox) = self.mailboxes.get(&session).cloned() {
            self.release(session, &mailbox);
        }
    }

    /// Flow control: `session`'s mailbox is no longer congested (drained, cut,
    /// closed or superseded): the connections held back for it go on.
    fn release(&mut self, session: ConnectionId, mailbox: &Arc<Mailbox>) {
        let ours = self
            .congestion
            .get(&session)
            .is_some_and(|c| Arc::ptr_eq(&c.mailbox, mailbox));
        if !ours {
            return;
        }
        let congestion = self.congestion.remove(&session).expect("looked up");
        {
            let mut state = congestion.mailbox.lock();
            congestion.mailbox.set_congested(&mut state, false);
        }
        for publisher in congestion.publishers {
            publisher.release();
        }
    }

    /// Flow control: receivers congested for longer than the grace get the
    /// slow-consumer policy, and release their publishers.
    fn expire_congestion(&mut self, now: Instant) {
        let Some(flow) = self.config.flow_control else {
            return;
        };
        let expired: Vec<ConnectionId> = self
            .congestion
            .iter()
            .filter(|(_, c)| c.deadline(flow.grace).is_some_and(|d| d <= now))
            .map(|(session, _)| *session)
            .collect();
        for session in expired {
            let mailbox = self.congestion[&session].mailbox.clone();
            self.stats.congestions_expired += 1;
            match self.config.slow_consumer_policy {
                SlowConsumerPolicy::Disconnect => {
                    if mailbox.close(Alert::Stalled) {
                        self.stats.slow_consumers += 1;
                        self.events.push_back(NodeEvent::SlowConsumer { session });
                    }
                }
                SlowConsumerPolicy::DropOldest => {
                    let mut state = mailbox.lock();
                    let before = DropCounts::of(state.queue());
                    state.queue_mut().shed_to(flow.low_water);
                    before.add_new(state.queue(), &mut self.stats);
                    drop(state);
                    mailbox.wake();
                }
            }
            self.release(session, &mailbox);
        }
    }
}
