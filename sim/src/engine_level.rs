//! The engine-level simulator: client engines, server engines and the push hub joined
//! by an in-memory network with manual time. No runtime, no threads, no sockets: a
//! scenario of a few simulated seconds runs in milliseconds, so thousands of seeded
//! scenarios fit in a CI run.
//!
//! The server side is the engine's [`Node`] — the same type the tokio server
//! drives, with every session, resume and slow-consumer decision in it. This module
//! only moves bytes between the node's connections and the simulated network, lets
//! every Hello in, and answers requests (echo at once, sleep later; a sleep stops at
//! once when its cancel is signalled), as the tokio server's connection tasks do: one read at a time, each handed to the node before
//! the next (flow control may stop the reading after any), and the node called again
//! right after a transmit took a congested mailbox's frames.
//!
//! Time moves a millisecond at a time while anything can move (bytes someone will
//! read, frames a transport has room for, commands waiting for the node), and jumps
//! to the next operation or timer otherwise.
//!
//! Cancels: clients cancel their requests (outstanding ones mostly, in an open batch
//! now and then, some already ended); in about half the runs the server runs only one
//! to three calls of a connection at once, so later ones wait and a cancel drops them
//! before they start; a quarter of the clients speak protocol version 2, where a
//! cancel ends the request locally. The harness checks, from the application's
//! side, that the server hands out at most that many calls at once, in arrival
//! order, and signals a cancel only once, for a call it handed out
//! ([`RunRecord::rpc_breaches`]).
//!
//! Flow control: in the runs that have it, the harness records every change it sees
//! in the connections' mailboxes (over the high-water mark, drained, shed, cut) and
//! read states (held back, released) right after each call into the node, for the
//! oracle's flow-control rules ([`FlowRecord`]). Scripted readers
//! ([`Scenario::readers`]) read at a fraction of their publisher's rate, or stop
//! reading for longer than the grace.

use crate::history::{
    Behaviour, CancelRecord, Ended, FlowObservation, FlowRecord, JournalEntry, MessageId, Observed,
    Origin, Outcome, ReaderRecord, Received, RequestRecord, RunRecord, SessionHistory, SessionKey,
    ShedPolicy,
};
use crate::pipe::ChunkedPipe;
use crate::recorder::{Journal, RecordingHooks};
use crate::rng::SimRng;
use bytes::{Buf, Bytes};
use pushwire_engine::client::{
    AbortReason, CancelOutcome, ClientConfig, ClientConnection, ClientEvent, ClientTransport,
    PushCommand,
};
use pushwire_engine::hub::{Actor, ConnectionId, HubConfig, SlowConsumerPolicy};
use pushwire_engine::node::{
    ConnectionEvent, FlowControl, Node, NodeConfig, NodeConnection, NodeEvent, NodeStats,
};
use pushwire_engine::server::{ServerConfig, ServerTransport};
use pushwire_engine::{CloseReason, KeepAlive};
use pushwire_protocol::{
    ClientOptions, CloseCode, ErrorCode, GroupId, GroupSelection, Message, ResumeRequest,
    ResumeToken,
};
use rustls::pki_types::UnixTime;
use std::collections::{BTreeMap, BTreeSet};

use std::time::{Duration, Instant};

/// Method ids of the simulated service.
pub const ECHO: u32 = 1;
/// Answers with an empty result after the number of milliseconds in its payload.
pub const SLEEP: u32 = 2;

/// One scenario step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A client joins groups.
    Subscribe {
        /// The acting client (index).
        client: usize,
        /// Group ids.
        groups: Vec<u32>,
    },
    /// A client leaves groups (`None`: all).
    Unsubscribe {
        /// The acting client (index).
        client: usize,
        /// Group ids.
        groups: Option<Vec<u32>>,
    },
    /// A client publishes.
    Publish {
        /// The acting client (index).
        client: usize,
        /// Group ids.
        groups: Vec<u32>,
        /// Payload bytes.
        size: usize,
    },
    /// The server publishes on its own.
    ServerPublish {
        /// Group ids.
        groups: Vec<u32>,
        /// Payload bytes.
        size: usize,
    },
    /// A client messages another client's current session (user id upper-cased
    /// when `upper`, to exercise case-insensitivity).
    UserMessage {
        /// The acting client (index).
        client: usize,
        /// The receiving client (index).
        to: usize,
        /// Upper-case the receiver id.
        upper: bool,
        /// Payload bytes.
        size: usize,
    },
    /// A client calls echo.
    Echo {
        /// The acting client (index).
        client: usize,
        /// Payload bytes.
        size: usize,
    },
    /// A client calls sleep (a slow request answered later, out of order).
    Sleep {
        /// The acting client (index).
        client: usize,
        /// Milliseconds.
        ms: u32,
    },
    /// A batch of echo requests plus a publication, committed or aborted.
    Batch {
        /// The acting client (index).
        client: usize,
        /// Echo requests in the batch.
        requests: usize,
        /// Groups of a publication in the batch (none when empty).
        publish: Vec<u32>,
        /// Commit with server batching.
        server_batching: bool,
        /// Abort instead of committing.
        abort: bool,
        /// Cancel this request of the batch (by position) while the batch is open.
        cancel: Option<usize>,
    },
    /// A client cancels one of the requests of its current connection: the one
    /// `back` places before the last it issued (the oldest when there are fewer).
    Cancel {
        /// The acting client (index).
        client: usize,
        /// 0 for the last request issued.
        back: usize,
    },
    /// The client's connection is cut (both ends see it end).
    Cut {
        /// The acting client (index).
        client: usize,
    },
    /// The client's link holds all bytes for a while, then delivers them.
    Partition {
        /// The acting client (index).
        client: usize,
        /// Milliseconds.
        ms: u64,
    },
    /// The client process dies without closing and restarts after `down_ms`.
    Crash {
        /// The acting client (index).
        client: usize,
        /// Milliseconds before the restart.
        down_ms: u64,
    },
    /// A client publishes a burst of large messages at once.
    Flood {
        /// The acting client (index).
        client: usize,
        /// Group ids.
        groups: Vec<u32>,
        /// Number of publications.
        count: usize,
        /// Payload bytes.
        size: usize,
    },
    /// The client stops reading for a while (its link delivers nothing to it); the
    /// server's outbound queue for it fills up and its slow-consumer policy acts.
    Stall {
        /// The acting client (index).
        client: usize,
        /// Milliseconds.
        ms: u64,
    },
    /// The server restarts: every connection and all hub state are lost.
    ServerBounce,
}

/// A scenario: operations at simulated milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// Number of clients.
    pub clients: usize,
    /// Groups registered on the server: 1..=groups.
    pub groups: u32,
    /// Operations in time order.
    pub ops: Vec<(u64, Op)>,
    /// Clients that read in a scripted way (the rest read whatever arrives at once).
    pub readers: Vec<Reader>,
}

/// A scripted receiver. The scenario generator gives each one a group of its own and
/// a publisher of its own that nothing else disturbs, so the oracle can make claims
/// about how flow control treats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reader {
    /// The client (index).
    pub client: usize,
    /// How it reads.
    pub kind: ReaderKind,
    /// Its group: it subscribes to it as soon as each of its sessions is ready (a
    /// server restart loses its first session; the next one joins again).
    pub group: u32,
}

/// How a scripted receiver reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderKind {
    /// Reads at most `bytes_per_ms` each simulated millisecond, all its life, never
    /// pausing: a fraction of its publisher's rate, so it falls behind and is
    /// congested now and then, but always makes progress.
    Slow {
        /// Read rate.
        bytes_per_ms: usize,
    },
    /// Reads at once, except during its [`Op::Stall`]s, which last longer than the
    /// flow control's grace: it must be cut or shed, not waited for.
    Stops,
}

/// Counts of situations the run went through, to prove the scenarios exercise
/// what they claim to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Connections cut while events were in flight to them.
    pub cut_with_events_in_flight: u64,
    /// Partitions that ended in a keep-alive timeout.
    pub partition_timeouts: u64,
    /// Partitions healed before any timeout.
    pub partitions_healed: u64,
    /// Server restarts with subscribers.
    pub bounces_with_subscribers: u64,
    /// Slow requests answered while pushes reached the same client.
    pub pushes_during_slow_requests: u64,
    /// Batches committed with server batching.
    pub server_batches: u64,
    /// Batches aborted.
    pub aborted_batches: u64,
    /// Reconnections.
    pub reconnects: u64,
    /// Publications fanned out.
    pub publications: u64,
    /// Push events delivered to clients.
    pub deliveries: u64,
    /// Sessions resumed after a drop.
    pub resumes: u64,
    /// Resumes that replayed events.
    pub resumes_with_replay: u64,
    /// Gap notices received (replay buffer overflow or dropped events).
    pub gaps: u64,
    /// Resumes refused because the session was gone.
    pub sessions_lost: u64,
    /// Connections closed as slow consumers.
    pub slow_consumers: u64,
    /// Events dropped by the drop-oldest policy.
    pub dropped_by_policy: u64,
    /// Publishers held back by flow control.
    pub publishers_held: u64,
    /// Congested receivers handled by the slow-consumer policy at the end of their
    /// grace.
    pub congestions_expired: u64,
    /// Times a receiver became congested (flow control).
    pub congestions: u64,
    /// Times a slow reader (one reading at a fraction of its publisher's rate)
    /// became congested.
    pub slow_reader_congestions: u64,
    /// Publishers held back for a slow reader.
    pub held_for_slow_readers: u64,
    /// Stopped readers closed as slow consumers while stopped.
    pub stopped_readers_cut: u64,
    /// Stopped readers whose mailbox the drop-oldest policy shed to the low-water
    /// mark while they were stopped.
    pub stopped_readers_shed: u64,
    /// Push commands that ran while another connection was held back (and did not
    /// hold their own connection back).
    pub read_during_holds: u64,
    /// Cancels the client engine sent to the server (`SentToServer`).
    pub cancels_sent: u64,
    /// Requests the server dropped on a cancel before they started (ServerError
    /// Cancelled for a call never handed to the application).
    pub cancels_dropped_before_start: u64,
    /// Cancels of running calls signalled to the application (`CancelRequested`).
    pub cancels_signalled_running: u64,
    /// Running calls that stopped on their cancel (ServerError Cancelled for a call
    /// handed to the application).
    pub cancels_stopped_running: u64,
    /// Requests cancelled in an open batch (`RemovedFromBatch`).
    pub cancels_removed_from_batch: u64,
    /// Requests cancelled on a version-2 connection (`EndedLocally`).
    pub cancels_ended_locally: u64,
    /// Cancels sent too late: the request ended with its result anyway.
    pub cancels_too_late: u64,
    /// Cancels of requests that had ended or were cancelled before
    /// (`NotOutstanding`, `AlreadySent`).
    pub cancels_not_outstanding: u64,
    /// Compressed payloads forwarded compressed to receivers that accept them.
    pub compressed_deliveries: u64,
    /// Compressed payloads sent plain to receivers that do not accept them.
    pub decompressed_deliveries: u64,
    /// Simulation steps (a cost measure, not a situation).
    pub steps: u64,
}

impl Coverage {
    /// Adds another run's counts.
    pub fn add(&mut self, other: &Coverage) {
        self.cut_with_events_in_flight += other.cut_with_events_in_flight;
        self.partition_timeouts += other.partition_timeouts;
        self.partitions_healed += other.partitions_healed;
        self.bounces_with_subscribers += other.bounces_with_subscribers;
        self.pushes_during_slow_requests += other.pushes_during_slow_requests;
        self.server_batches += other.server_batches;
        self.aborted_batches += other.aborted_batches;
        self.reconnects += other.reconnects;
        self.publications += other.publications;
        self.deliveries += other.deliveries;
        self.resumes += other.resumes;
        self.resumes_with_replay += other.resumes_with_replay;
        self.gaps += other.gaps;
        self.sessions_lost += other.sessions_lost;
        self.slow_consumers += other.slow_consumers;
        self.dropped_by_policy += other.dropped_by_policy;
        self.publishers_held += other.publishers_held;
        self.congestions_expired += other.congestions_expired;
        self.congestions += other.congestions;
        self.slow_reader_congestions += other.slow_reader_congestions;
        self.held_for_slow_readers += other.held_for_slow_readers;
        self.stopped_readers_cut += other.stopped_readers_cut;
        self.stopped_readers_shed += other.stopped_readers_shed;
        self.read_during_holds += other.read_during_holds;
        self.cancels_sent += other.cancels_sent;
        self.cancels_dropped_before_start += other.cancels_dropped_before_start;
        self.cancels_signalled_running += other.cancels_signalled_running;
        self.cancels_stopped_running += other.cancels_stopped_running;
        self.cancels_removed_from_batch += other.cancels_removed_from_batch;
        self.cancels_ended_locally += other.cancels_ended_locally;
        self.cancels_too_late += other.cancels_too_late;
        self.cancels_not_outstanding += other.cancels_not_outstanding;
        self.compressed_deliveries += other.compressed_deliveries;
        self.decompressed_deliveries += other.decompressed_deliveries;
        self.steps += other.steps;
    }
}

/// Faults the engine-level simulator can inject into the engine on purpose (only with
/// the engine's `fault-injection` feature, in debug builds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedFault {
    /// Drop the n-th delivery.
    DropDelivery(u64),
    /// Deliver the n-th delivery twice.
    DuplicateDelivery(u64),
    /// Swap the n-th delivery with the next one to the same connection.
    SwapDeliveries(u64),
    /// Deliver the n-th delivery to a connection that is not a member.
    Misdeliver(u64),
    /// Skip the n-th presence notice to another member.
    SkipPresence(u64),
    /// Answer the n-th request twice.
    AnswerTwice(u64),
    /// Replay one event twice on the n-th resume that replays anything.
    ReplayTwice(u64),
    /// Leave one event out, without a gap, on the n-th resume that replays anything.
    ReplaySkip(u64),
    /// The simulated service (not the engine) answers the n-th sleep call it starts
    /// `Cancelled` at once, though nobody cancelled it.
    CancelledUnasked(u64),
}

/// The outcome of one run.
pub struct RunOutput {
    /// The histories and journal.
    pub record: RunRecord,
    /// What happened.
    pub coverage: Coverage,
    /// A digest of every event in order, to compare two runs of one seed.
    pub digest: u64,
}

const KEEPALIVE: KeepAlive = KeepAlive {
    ping_interval: Some(Duration::from_millis(300)),
    idle_timeout: Some(Duration::from_millis(1000)),
};
const RECONNECT_DELAY_MS: u64 = 50;
/// How long the server keeps a detached session: shorter than the longest faults, so
/// some resumes succeed and some find the session gone.
const SESSION_TIMEOUT: Duration = Duration::from_millis(1500);
/// Unwritten push bytes per connection before the slow-consumer policy acts.
const OUTBOUND_LIMIT: usize = 64 * 1024;
/// Bytes the simulated network holds towards a client before the server stops
/// handing it more (a socket buffer).
const LINK_WINDOW: usize = 32 * 1024;
const SETTLE_MS: u64 = 3000;
/// Flow control, in the runs that have it: congested over an eighth of the outbound
/// limit, drained at a sixteenth, a grace far shorter than the keep-alive timeout.
const FLOW_CONTROL: FlowControl = FlowControl {
    high_water: OUTBOUND_LIMIT / 8,
    low_water: OUTBOUND_LIMIT / 16,
    grace: Duration::from_millis(200),
};
/// The simulator's step while bytes are in flight.
const TICK_MS: u64 = 1;
/// The highest protocol version of the clients that speak an older one: a cancel
/// cannot be sent, the client engine ends the request locally.
const OLD_VERSION: u16 = 2;
/// G8's slack over a queue's bound: one frame (a frame is queued, then the policy
/// acts).
const QUEUE_SLACK: usize = 64 * 1024;

struct ClientConn {
    engine: ClientConnection,
    link: usize,
    history: usize,
    /// This connection asked to resume a session.
    resuming: bool,
    /// The server lost the session this connection tried to resume: its events
    /// belong to no history, and it is closed to start a fresh session.
    discard: bool,
    /// Request id → index in the history's requests.
    requests: BTreeMap<u64, usize>,
    /// Sleep requests that have not ended (ids assigned by the engine).
    slow_pending: BTreeSet<u64>,
}

struct SimClient {
    sessions: u32,
    echo: bool,
    conn: Option<ClientConn>,
    /// The session to resume on the next connection, and its history.
    resume: Option<(ResumeRequest, usize)>,
    reconnect_at: Option<u64>,
    publications: u32,
    messages: u32,
    /// Scripted reading, if any.
    reader: Option<ReaderKind>,
    /// A scripted reader's group, joined by each of its sessions.
    reader_group: Option<u32>,
    /// A slow reader's bytes left to read in this step.
    read_budget: usize,
    /// The highest protocol version it offers.
    max_version: u16,
}

struct Link {
    to_server: ChunkedPipe,
    to_client: ChunkedPipe,
    held_until: Option<u64>,
    /// The client reads nothing until then.
    stalled_until: Option<u64>,
    server: Option<u64>,
}

/// A server-side connection: the node's per-connection half and its link.
struct ServerConn {
    conn: NodeConnection,
    link: usize,
    /// The session it serves, once admitted (parsed once from the user id).
    session: Option<SessionKey>,
    /// Calls handed to the application and not answered yet.
    running: BTreeSet<u64>,
    /// The last call handed out (calls start in arrival order: ids increase).
    last_started: Option<u64>,
    /// Calls whose cancel was signalled.
    signalled: BTreeSet<u64>,
}

impl ServerConn {
    /// Answers a call (the application's side): it no longer runs.
    fn answer(&mut self, request_id: u64, result: pushwire_engine::RequestResult) -> bool {
        let answered = self.conn.respond(request_id, result);
        if answered {
            self.running.remove(&request_id);
        }
        answered
    }

    fn session(&mut self) -> Option<SessionKey> {
        if self.session.is_none() {
            self.session = member_session(&self.conn);
        }
        self.session
    }

    /// What flow control did to it (queue, drops, hold), once it serves a session.
    fn state(&mut self, links: &[Link]) -> Option<ConnState> {
        Some(ConnState {
            session: self.session()?,
            queued: self.conn.queued_bytes(),
            dropped: self.conn.dropped_by_policy(),
            held: !self.conn.wants_input(),
            transport_full: links[self.link].to_client.pending() >= LINK_WINDOW,
        })
    }
}

/// One simulation run.
pub struct EngineSim {
    rng: SimRng,
    now_ms: u64,
    origin: Instant,
    clients: Vec<SimClient>,
    links: Vec<Link>,
    node_config: NodeConfig,
    node: Node<RecordingHooks>,
    /// Totals of the nodes that were replaced by a server restart.
    past_stats: Vec<NodeStats>,
    journal: Journal,
    server_conns: BTreeMap<u64, ServerConn>,
    next_server_conn: u64,
    /// (due ms, order) → (server connection, request id).
    responses: BTreeMap<(u64, u64), (u64, u64)>,
    response_order: u64,
    histories: Vec<SessionHistory>,
    coverage: Coverage,
    digest: u64,
    groups: u32,
    server_publications: u32,
    queue_breaches: Vec<String>,
    fault: Option<InjectedFault>,
    /// What the harness sees of flow control (runs with it on).
    flow: Option<FlowState>,
    /// Calls of a connection the server runs at once.
    max_running: usize,
    /// (link, request id) of every call the server handed to the application.
    started: BTreeSet<(usize, u64)>,
    /// Sleep calls started (for [`InjectedFault::CancelledUnasked`]).
    sleeps_started: u64,
    /// Breaches of the server's RPC contract seen from the application's side.
    rpc_breaches: Vec<String>,
}

/// The harness's view of the node's flow control.
struct FlowState {
    record: FlowRecord,
    /// The last observation of each server connection.
    conns: BTreeMap<u64, ConnFlow>,
    /// The node's `congestions` total at the last observation.
    congestions: u64,
}

#[derive(Default)]
struct ConnFlow {
    congested: bool,
    held: bool,
    dropped: u64,
}

/// A server connection's flow-control state, as the harness can see it.
struct ConnState {
    session: SessionKey,
    queued: usize,
    dropped: u64,
    held: bool,
    /// Its link holds a full window: `poll_transmit` is not called.
    transport_full: bool,
}

impl FlowState {
    /// Whether connection `id` went over the high-water mark since its last
    /// observation.
    fn goes_over(&self, id: u64, state: &ConnState) -> bool {
        state.queued > self.record.high_water && !self.conns.get(&id).is_some_and(|c| c.congested)
    }

    /// Records what changed in connection `id`'s mailbox since its last
    /// observation; `counted` whether the node counted the congestions seen in this
    /// call.
    fn record_mailbox(&mut self, ms: u64, id: u64, state: &ConnState, counted: bool) {
        let (high, low) = (self.record.high_water, self.record.low_water);
        let c = self.conns.entry(id).or_default();
        let mut seen = Vec::new();
        if state.dropped > c.dropped {
            c.dropped = state.dropped;
            seen.push(Observed::Shed {
                queued: state.queued,
            });
        }
        if !c.congested && state.queued > high {
            c.congested = true;
            seen.push(Observed::Congested {
                queued: state.queued,
                transport_full: state.transport_full,
                counted,
            });
        } else if c.congested && state.queued <= low {
            c.congested = false;
            seen.push(Observed::Drained);
        }
        self.push(ms, id, state.session, seen);
    }

    /// Records whether connection `id` was held back or released since its last
    /// observation (after every mailbox's changes were recorded, so the receivers a
    /// hold names are seen congested first). `ran` is the range of journal entries
    /// its push commands made, when the call just made ran them; `congested` the
    /// sessions over the high-water mark after the call.
    fn record_hold(
        &mut self,
        ms: u64,
        id: u64,
        state: &ConnState,
        ran: Option<(usize, usize)>,
        congested: &[SessionKey],
    ) {
        let c = self.conns.entry(id).or_default();
        let mut seen = Vec::new();
        let ran_commands = ran.is_some_and(|(start, end)| start < end);
        if state.held && (!c.held || ran_commands) {
            let end = ran.map_or(0, |(_, end)| end);
            seen.push(Observed::Held {
                journal: ran.unwrap_or((end, end)),
                congested: congested.to_vec(),
            });
        } else if !state.held && c.held {
            seen.push(Observed::Released);
        }
        c.held = state.held;
        self.push(ms, id, state.session, seen);
    }

    fn push(&mut self, ms: u64, conn: u64, session: SessionKey, seen: Vec<Observed>) {
        for what in seen {
            self.record.observations.push(FlowObservation {
                ms,
                conn,
                session,
                what,
            });
        }
    }
}

fn mix(digest: &mut u64, value: u64) {
    *digest = (*digest ^ value).wrapping_mul(0x100_0000_01b3);
}

impl EngineSim {
    /// A simulation of `scenario`'s world, seeded.
    pub fn new(seed: u64, clients: usize, groups: u32) -> Self {
        let mut rng = SimRng::new(seed);
        let journal = Journal::default();
        let hub_config = HubConfig {
            session_timeout: SESSION_TIMEOUT,
            // Small buffers now and then, so resumes also end in gaps.
            replay_events: [4, 64, 1024][rng.range_inclusive(0, 2) as usize],
            // A resume's replay must fit the outbound queue, or the slow-consumer
            // policy would cut every resume short.
            replay_bytes: OUTBOUND_LIMIT / 2,
            ..HubConfig::default()
        };
        let policy = if rng.chance(1, 2) {
            SlowConsumerPolicy::Disconnect
        } else {
            SlowConsumerPolicy::DropOldest
        };
        // Cancel settings from a generator of their own, so the rest of the run is
        // drawn as before: in half the runs a connection's calls wait behind one to
        // three running ones; a quarter of the clients speak version 2.
        let mut rpc_rng = SimRng::new(seed ^ 0x0ca9_ce15);
        let mut server_config = ServerConfig::new(ServerTransport::Plaintext);
        if rpc_rng.chance(1, 2) {
            server_config.max_running_requests = rpc_rng.range_inclusive(1, 3) as usize;
        }
        let max_running = server_config.max_running_requests;
        server_config.keepalive = KEEPALIVE;
        server_config.hello_timeout = Duration::from_millis(1000);
        let mut node_config = NodeConfig::new(server_config);
        node_config.hub = hub_config;
        node_config.max_outbound_bytes = OUTBOUND_LIMIT;
        node_config.slow_consumer_policy = policy;
        // Half the runs with backpressure to publishers: the guarantees must hold
        // while the node holds connections back and sheds or cuts receivers at the
        // grace (shorter than the keep-alive idle timeout, as the node requires).
        node_config.flow_control = rng.chance(1, 2).then_some(FLOW_CONTROL);
        let flow = node_config.flow_control.map(|f| FlowState {
            record: FlowRecord {
                high_water: f.high_water,
                low_water: f.low_water,
                grace_ms: f.grace.as_millis() as u64,
                tick_ms: TICK_MS,
                policy: match policy {
                    SlowConsumerPolicy::Disconnect => ShedPolicy::Disconnect,
                    SlowConsumerPolicy::DropOldest => ShedPolicy::DropOldest,
                },
                readers: Vec::new(),
                observations: Vec::new(),
                end_ms: 0,
            },
            conns: BTreeMap::new(),
            congestions: 0,
        });
        let node = new_node(&node_config, &journal, groups);
        let clients = (0..clients)
            .map(|_| SimClient {
                sessions: 0,
                echo: rng.chance(3, 4),
                conn: None,
                resume: None,
                reconnect_at: Some(0),
                publications: 0,
                messages: 0,
                reader: None,
                reader_group: None,
                read_budget: 0,
                max_version: if rpc_rng.chance(1, 4) {
                    OLD_VERSION
                } else {
                    pushwire_protocol::PROTOCOL_VERSION
                },
            })
            .collect();
        Self {
            rng,
            now_ms: 0,
            origin: Instant::now(),
            clients,
            links: Vec::new(),
            node_config,
            node,
            past_stats: Vec::new(),
            journal,
            server_conns: BTreeMap::new(),
            next_server_conn: 0,
            responses: BTreeMap::new(),
            response_order: 0,
            histories: Vec::new(),
            coverage: Coverage::default(),
            digest: 0xcbf2_9ce4_8422_2325,
            groups,
            server_publications: 0,
            queue_breaches: Vec::new(),
            fault: None,
            flow,
            max_running,
            started: BTreeSet::new(),
            sleeps_started: 0,
            rpc_breaches: Vec::new(),
        }
    }

    /// Injects a fault into the engine (debug builds only: the engine compiles no fault
    /// code into release builds and panics here).
    pub fn inject(&mut self, fault: InjectedFault) {
        self.fault = Some(fault);
        self.apply_fault();
    }

    /// Arms the fault in the node (the engine panics here in release builds, where it
    /// compiles no fault code).
    fn apply_fault(&mut self) {
        use pushwire_engine::hub::HubFault;
        let hub_fault = match self.fault {
            Some(InjectedFault::DropDelivery(n)) => Some(HubFault::DropDelivery(n)),
            Some(InjectedFault::DuplicateDelivery(n)) => Some(HubFault::DuplicateDelivery(n)),
            Some(InjectedFault::SwapDeliveries(n)) => Some(HubFault::SwapDeliveries(n)),
            Some(InjectedFault::Misdeliver(n)) => Some(HubFault::Misdeliver(n)),
            Some(InjectedFault::SkipPresence(n)) => Some(HubFault::SkipPresence(n)),
            Some(InjectedFault::ReplayTwice(n)) => Some(HubFault::ReplayTwice(n)),
            Some(InjectedFault::ReplaySkip(n)) => Some(HubFault::ReplaySkip(n)),
            _ => None,
        };
        if let Some(f) = hub_fault {
            self.node.inject_fault(f);
        }
    }

    fn now(&self) -> Instant {
        self.origin + Duration::from_millis(self.now_ms)
    }

    /// Runs `scenario` and returns its record.
    pub fn run(mut self, seed: u64, scenario: &Scenario) -> RunOutput {
        for reader in &scenario.readers {
            if let Some(c) = self.clients.get_mut(reader.client) {
                c.reader = Some(reader.kind);
                c.reader_group = Some(reader.group);
            }
        }
        let end = scenario.ops.last().map_or(0, |(t, _)| *t);
        let mut ops = scenario.ops.iter().peekable();
        loop {
            while let Some((_, op)) = ops.next_if(|(t, _)| *t <= self.now_ms) {
                self.apply(op);
            }
            self.step();
            if self.now_ms >= end + SETTLE_MS && ops.peek().is_none() {
                break;
            }
            // Jump over idle stretches: to the next op, timer or response, at most
            // one millisecond when bytes are in flight.
            let next = self.next_instant(ops.peek().map(|(t, _)| *t), end + SETTLE_MS);
            self.now_ms = next.max(self.now_ms + 1);
        }
        self.finish(seed)
    }

    /// Whether anything can move in the next millisecond: bytes towards a client
    /// that is there and reads, or towards a server connection that is there and
    /// read; frames in a mailbox whose transport has room; push commands waiting
    /// for the node. What nobody will take (a stalled or partitioned link, a held
    /// publisher, the leftovers of a connection that is gone) waits for an op or a
    /// timer, which the run jumps to anyway: stepping through such stretches a
    /// millisecond at a time changed nothing and was most of a run's time.
    fn bytes_in_flight(&self) -> bool {
        let to_clients = self
            .clients
            .iter()
            .filter_map(|c| c.conn.as_ref())
            .any(|c| {
                let l = &self.links[c.link];
                l.to_client.pending() > 0 && l.held_until.is_none() && l.stalled_until.is_none()
            });
        to_clients
            || self.server_conns.iter().any(|(id, s)| {
                let l = &self.links[s.link];
                let reads = l.held_until.is_none() && l.server == Some(*id);
                (reads && l.to_server.pending() > 0 && s.conn.wants_input())
                    || s.conn.wants_node()
                    || (l.to_client.pending() < LINK_WINDOW && s.conn.queued_bytes() > 0)
            })
    }

    fn next_instant(&self, next_op: Option<u64>, end: u64) -> u64 {
        if self.bytes_in_flight() {
            return self.now_ms + 1;
        }
        let mut next = next_op.unwrap_or(end).min(end);
        let to_ms = |i: Instant| i.saturating_duration_since(self.origin).as_millis() as u64;
        for c in self.clients.iter() {
            if let Some(conn) = &c.conn {
                if let Some(t) = conn.engine.poll_timeout() {
                    next = next.min(to_ms(t));
                }
            }
            if let Some(t) = c.reconnect_at {
                next = next.min(t);
            }
        }
        for s in self.server_conns.values() {
            if let Some(t) = s.conn.poll_timeout() {
                next = next.min(to_ms(t));
            }
        }
        for l in &self.links {
            for t in [l.held_until, l.stalled_until].into_iter().flatten() {
                next = next.min(t);
            }
        }
        if let Some(t) = self.node.poll_timeout() {
            next = next.min(to_ms(t) + 1);
        }
        if let Some(((t, _), _)) = self.responses.first_key_value() {
            next = next.min(*t);
        }
        next
    }

    fn apply(&mut self, op: &Op) {
        mix(&mut self.digest, self.now_ms);
        match op {
            Op::Subscribe { client, groups } => {
                self.push(
                    *client,
                    PushCommand::Subscribe(groups.iter().copied().map(GroupId).collect()),
                );
            }
            Op::Unsubscribe { client, groups } => {
                let selection = match groups {
                    Some(g) => GroupSelection::Groups(g.iter().copied().map(GroupId).collect()),
                    None => GroupSelection::All,
                };
                self.push(*client, PushCommand::Unsubscribe(selection));
            }
            Op::Publish {
                client,
                groups,
                size,
            } => {
                let Some(payload) = self.next_message(*client, true, *size) else {
                    return;
                };
                self.push(
                    *client,
                    PushCommand::Publish {
                        groups: groups.iter().copied().map(GroupId).collect(),
                        payload,
                    },
                );
            }
            Op::ServerPublish { groups, size } => {
                self.server_publications += 1;
                let payload = MessageId {
                    origin: Origin::Server,
                    publication: true,
                    n: self.server_publications,
                }
                .payload(*size);
                let groups: Vec<GroupId> = groups.iter().copied().map(GroupId).collect();
                let _ = self.node.publish(Actor::Server, &groups, payload);
                self.observe(None);
                self.coverage.publications += 1;
            }
            Op::UserMessage {
                client,
                to,
                upper,
                size,
            } => {
                let Some(target) = self.clients.get(*to) else {
                    return;
                };
                let session = target.sessions.saturating_sub(1);
                let receiver = SessionKey {
                    client: *to as u32,
                    session,
                }
                .user_id();
                let receiver = if *upper {
                    receiver.to_uppercase()
                } else {
                    receiver
                };
                let Some(payload) = self.next_message(*client, false, *size) else {
                    return;
                };
                self.push(
                    *client,
                    PushCommand::SendUserMessage {
                        receiver: receiver.into(),
                        payload,
                    },
                );
            }
            Op::Echo { client, size } => {
                let payload = Bytes::from(vec![self.rng.next_u64() as u8; *size]);
                self.request(*client, ECHO, payload.clone(), payload);
            }
            Op::Sleep { client, ms } => {
                self.request(
                    *client,
                    SLEEP,
                    Bytes::copy_from_slice(&ms.to_be_bytes()),
                    Bytes::new(),
                );
            }
            Op::Batch {
                client,
                requests,
                publish,
                server_batching,
                abort,
                cancel,
            } => {
                let Some(conn) = self.ready_conn(*client) else {
                    return;
                };
                if conn.engine.start_batch().is_err() {
                    return;
                }
                let mut batched = Vec::new();
                for _ in 0..*requests {
                    let payload = Bytes::from(vec![self.rng.next_u64() as u8; 8]);
                    batched.extend(self.request(*client, ECHO, payload.clone(), payload));
                }
                if let Some(&id) = cancel.and_then(|k| batched.get(k)) {
                    self.cancel_request(*client, id);
                }
                if !publish.is_empty() {
                    if let Some(payload) = self.next_message(*client, true, 16) {
                        self.push(
                            *client,
                            PushCommand::Publish {
                                groups: publish.iter().copied().map(GroupId).collect(),
                                payload,
                            },
                        );
                    }
                }
                let Some(conn) = self.ready_conn(*client) else {
                    return;
                };
                if *abort {
                    let _ = conn.engine.abort_batch();
                    self.coverage.aborted_batches += 1;
                } else {
                    let _ = conn.engine.commit_batch(*server_batching);
                    if *server_batching {
                        self.coverage.server_batches += 1;
                    }
                }
            }
            Op::Cancel { client, back } => self.cancel(*client, *back),
            Op::Cut { client } => {
                if let Some(conn) = self.clients.get(*client).and_then(|c| c.conn.as_ref()) {
                    let link = conn.link;
                    if self.links[link].to_client.pending() > 0 {
                        self.coverage.cut_with_events_in_flight += 1;
                    }
                    self.cut_link(link);
                }
            }
            Op::Partition { client, ms } => {
                if let Some(conn) = self.clients.get(*client).and_then(|c| c.conn.as_ref()) {
                    let link = conn.link;
                    self.links[link].held_until = Some(self.now_ms + ms);
                }
            }
            Op::Flood {
                client,
                groups,
                count,
                size,
            } => {
                for _ in 0..*count {
                    let Some(payload) = self.next_message(*client, true, *size) else {
                        return;
                    };
                    self.push(
                        *client,
                        PushCommand::Publish {
                            groups: groups.iter().copied().map(GroupId).collect(),
                            payload,
                        },
                    );
                }
            }
            Op::Stall { client, ms } => {
                if let Some(conn) = self.clients.get(*client).and_then(|c| c.conn.as_ref()) {
                    let link = conn.link;
                    let session = self.histories[conn.history].key;
                    self.links[link].stalled_until = Some(self.now_ms + ms);
                    if self.clients[*client].reader == Some(ReaderKind::Stops) {
                        let fair = self.fault.is_none();
                        let (from_ms, until_ms) = (self.now_ms, self.now_ms + ms);
                        if let Some(flow) = &mut self.flow {
                            flow.record.readers.push(ReaderRecord {
                                session,
                                behaviour: Behaviour::Stopped { from_ms, until_ms },
                                fair,
                            });
                        }
                    }
                }
            }
            Op::Crash { client, down_ms } => {
                let now = self.now_ms;
                if let Some(c) = self.clients.get_mut(*client) {
                    if let Some(conn) = c.conn.take() {
                        let link = conn.link;
                        self.histories[conn.history].intact = false;
                        self.histories[conn.history].crashed = true;
                        // A restarted process remembers no session.
                        c.resume = None;
                        // The process is gone: the server sees the transport end.
                        if let Some(server) = self.links[link].server.take() {
                            if let Some(s) = self.server_conns.get_mut(&server) {
                                s.conn.handle_transport_closed();
                            }
                        }
                    }
                    c.reconnect_at = Some(now + down_ms);
                }
            }
            Op::ServerBounce => {
                if self
                    .server_conns
                    .values()
                    .any(|s| s.conn.member().is_some())
                {
                    self.coverage.bounces_with_subscribers += 1;
                }
                self.bounce_server();
            }
        }
    }

    fn ready_conn(&mut self, client: usize) -> Option<&mut ClientConn> {
        self.clients.get_mut(client)?.conn.as_mut().filter(|c| {
            !c.discard && c.engine.state() == pushwire_engine::client::ClientState::Ready
        })
    }

    fn next_message(&mut self, client: usize, publication: bool, size: usize) -> Option<Bytes> {
        let c = self.clients.get_mut(client)?;
        c.conn.as_ref()?;
        let session = c.sessions.checked_sub(1)?;
        let n = if publication {
            c.publications += 1;
            c.publications
        } else {
            c.messages += 1;
            c.messages
        };
        Some(
            MessageId {
                origin: Origin::Session(SessionKey {
                    client: client as u32,
                    session,
                }),
                publication,
                n,
            }
            .payload(size),
        )
    }

    fn push(&mut self, client: usize, command: PushCommand) {
        let publication = matches!(command, PushCommand::Publish { .. });
        if let Some(conn) = self.ready_conn(client) {
            if conn.engine.push(command).is_ok() && publication {
                self.coverage.publications += 1;
            }
        }
    }

    /// Issues a request; returns the engine's id for it.
    fn request(
        &mut self,
        client: usize,
        method: u32,
        payload: Bytes,
        expected_result: Bytes,
    ) -> Option<u64> {
        let history = self.ready_conn(client)?.history;
        let position = self.histories[history].requests.len();
        let conn = self.ready_conn(client).expect("checked above");
        let id = conn.engine.request(method, payload).ok()?;
        conn.requests.insert(id, position);
        if method == SLEEP {
            conn.slow_pending.insert(id);
        }
        // Ids unique within the history, which spans resumed connections.
        self.histories[history]
            .requests
            .push(RequestRecord::new(position as u64 + 1, expected_result));
        Some(id)
    }

    /// [`Op::Cancel`]: cancels the request `back` places before the last one the
    /// client's current connection issued (the oldest when there are fewer), after
    /// the application has taken every event the engine has for it (so the history
    /// knows what ended before the cancel).
    fn cancel(&mut self, client: usize, back: usize) {
        if self
            .clients
            .get(client)
            .and_then(|c| c.conn.as_ref())
            .is_none_or(|c| c.discard)
        {
            return;
        }
        self.client_events(client);
        let Some(conn) = self.clients[client].conn.as_ref().filter(|c| !c.discard) else {
            return;
        };
        let target = conn
            .requests
            .keys()
            .rev()
            .nth(back)
            .or_else(|| conn.requests.keys().next());
        if let Some(&id) = target {
            self.cancel_request(client, id);
        }
    }

    /// Cancels request `id` of the client's current connection and records what the
    /// engine answered.
    fn cancel_request(&mut self, client: usize, id: u64) {
        let Some(conn) = self.clients.get_mut(client).and_then(|c| c.conn.as_mut()) else {
            return;
        };
        let Some(&position) = conn.requests.get(&id) else {
            return;
        };
        let outcome = conn.engine.cancel(id);
        let record = &mut self.histories[conn.history].requests[position];
        record.cancels.push(CancelRecord {
            ms: self.now_ms,
            outcome,
            ended_before: record.outcomes.len(),
        });
        mix(&mut self.digest, id ^ 0xca9c);
        let counter = match outcome {
            CancelOutcome::RemovedFromBatch => &mut self.coverage.cancels_removed_from_batch,
            CancelOutcome::SentToServer => &mut self.coverage.cancels_sent,
            CancelOutcome::EndedLocally => &mut self.coverage.cancels_ended_locally,
            CancelOutcome::NotOutstanding | CancelOutcome::AlreadySent => {
                &mut self.coverage.cancels_not_outstanding
            }
        };
        *counter += 1;
    }

    fn cut_link(&mut self, link: usize) {
        let l = &mut self.links[link];
        l.to_client = ChunkedPipe::new(self.rng.next_u64(), 1);
        l.to_server = ChunkedPipe::new(self.rng.next_u64(), 1);
        l.held_until = None;
        if let Some(server) = l.server.take() {
            if let Some(s) = self.server_conns.get_mut(&server) {
                s.conn.handle_transport_closed();
            }
        }
        for c in &mut self.clients {
            if let Some(conn) = &mut c.conn {
                if conn.link == link {
                    conn.engine.handle_transport_closed();
                }
            }
        }
    }

    fn bounce_server(&mut self) {
        // Everything the server held is gone, detached sessions included; its journal
        // ends those sessions without any notification (nobody is left to notify).
        let members: Vec<ConnectionId> = self.node.hub().connections().collect();
        for member in members {
            if let Some(session) = self
                .node
                .hub()
                .connection_info(member)
                .and_then(|info| SessionKey::parse(info.user_id.as_str()))
            {
                self.journal.push(JournalEntry::Disconnected { session });
            }
        }
        // The restart ends every connection: a slow reader's session, cut off, can no
        // longer be claimed to keep up.
        let ids: Vec<u64> = self.server_conns.keys().copied().collect();
        for id in ids {
            self.observe_gone(id);
        }
        if let Some(flow) = &mut self.flow {
            for reader in &mut flow.record.readers {
                if matches!(reader.behaviour, Behaviour::Slow { .. }) {
                    reader.fair = false;
                }
            }
        }
        for s in std::mem::take(&mut self.server_conns).into_values() {
            self.coverage.dropped_by_policy += s.conn.dropped_by_policy();
            let l = &mut self.links[s.link];
            l.server = None;
            l.to_client = ChunkedPipe::new(self.rng.next_u64(), 1);
            l.to_server = ChunkedPipe::new(self.rng.next_u64(), 1);
            l.held_until = None;
            l.stalled_until = None;
            for c in &mut self.clients {
                if let Some(conn) = &mut c.conn {
                    if conn.link == s.link {
                        conn.engine.handle_transport_closed();
                    }
                }
            }
        }
        self.responses.clear();
        let old = std::mem::replace(
            &mut self.node,
            new_node(&self.node_config, &self.journal, self.groups),
        );
        self.past_stats.push(*old.stats());
        if let Some(flow) = &mut self.flow {
            // A fresh node counts from zero.
            flow.congestions = 0;
            flow.conns.clear();
        }
        if self.fault.is_some() {
            self.apply_fault();
        }
    }

    fn connect(&mut self, index: usize) {
        let now = self.now();
        let client = &mut self.clients[index];
        let resume = client.resume.take();
        let (key, history) = match resume {
            // Resume: the same session, its history continues.
            Some((_, history)) => (self.histories[history].key, Some(history)),
            None => {
                let key = SessionKey {
                    client: index as u32,
                    session: client.sessions,
                };
                client.sessions += 1;
                (key, None)
            }
        };
        if client.sessions > 1 || history.is_some() {
            self.coverage.reconnects += 1;
        }
        let mut config = ClientConfig::new(ClientTransport::Plaintext, key.user_id(), b"pw");
        // Compressed payloads on some clients, so the oracle checks them too: the
        // sim's payloads (a cyclic filler) compress well. Whether a client accepts
        // them changes from one connection to the next, so a resume may meet the
        // other setting (its replay must come in the new form).
        config.options = ClientOptions {
            echo: client.echo,
            compression: (index + client.sessions as usize) % 3 != 0,
        };
        config.compression = pushwire_engine::client::CompressionConfig {
            enabled: index % 2 == 0,
            threshold: 64,
        };
        config.keepalive = KEEPALIVE;
        config.handshake_timeout = Duration::from_millis(1000);
        config.resume = resume.map(|(r, _)| r);
        config.max_version = client.max_version;
        let engine = ClientConnection::new(
            config,
            now,
            UnixTime::since_unix_epoch(Duration::from_secs(1_900_000_000)),
        )
        .expect("plaintext client");
        let link = self.links.len();
        let server_id = self.next_server_conn;
        self.next_server_conn += 1;
        let peer = format!("10.0.0.{}:{}", index + 1, 40_000 + (server_id % 20_000))
            .parse()
            .expect("address");
        // A synchronous driver: every connection is looked at every step.
        let mut server = self
            .node
            .connection(peer, now, std::task::Waker::noop().clone())
            .expect("plaintext server");
        if let Some(InjectedFault::AnswerTwice(n)) = self.fault {
            server.inject_answer_twice(n);
        }
        let max_chunk = 1 + (self.rng.next_u64() % 700) as usize;
        self.links.push(Link {
            to_server: ChunkedPipe::new(self.rng.next_u64(), max_chunk),
            to_client: ChunkedPipe::new(self.rng.next_u64(), max_chunk),
            held_until: None,
            stalled_until: None,
            server: Some(server_id),
        });
        self.server_conns.insert(
            server_id,
            ServerConn {
                conn: server,
                link,
                session: None,
                running: BTreeSet::new(),
                last_started: None,
                signalled: BTreeSet::new(),
            },
        );
        let history = history.unwrap_or_else(|| {
            self.histories.push(SessionHistory::new(key, client.echo));
            if let (Some(ReaderKind::Slow { bytes_per_ms }), Some(flow)) =
                (client.reader, &mut self.flow)
            {
                flow.record.readers.push(ReaderRecord {
                    session: key,
                    behaviour: Behaviour::Slow { bytes_per_ms },
                    fair: self.fault.is_none(),
                });
            }
            self.histories.len() - 1
        });
        client.conn = Some(ClientConn {
            engine,
            link,
            history,
            resuming: resume.is_some(),
            discard: false,
            requests: BTreeMap::new(),
            slow_pending: BTreeSet::new(),
        });
        client.reconnect_at = None;
    }

    /// One millisecond of the world: bytes move, events are handled, timers fire.
    fn step(&mut self) {
        let now = self.now();
        for i in 0..self.clients.len() {
            if self.clients[i].conn.is_none()
                && self.clients[i]
                    .reconnect_at
                    .is_some_and(|t| t <= self.now_ms)
            {
                self.connect(i);
            }
        }
        // Heal partitions and stalls whose time is up.
        for link in &mut self.links {
            if link.held_until.is_some_and(|t| t <= self.now_ms) {
                link.held_until = None;
                self.coverage.partitions_healed += 1;
            }
            if link.stalled_until.is_some_and(|t| t <= self.now_ms) {
                link.stalled_until = None;
            }
        }
        // A slow reader reads at most its rate in each step (steps are a millisecond
        // apart whenever bytes are in flight).
        for c in &mut self.clients {
            if let Some(ReaderKind::Slow { bytes_per_ms }) = c.reader {
                c.read_budget = bytes_per_ms;
            }
        }
        self.coverage.steps += 1;
        // Detached sessions whose time is up end now; their groups are told.
        // Receivers congested past the grace get the slow-consumer policy.
        self.node.handle_timeout(now);
        self.observe(None);
        // Responses that are due.
        while let Some((&(due, order), &(conn, request))) = self.responses.first_key_value() {
            if due > self.now_ms {
                break;
            }
            self.responses.remove(&(due, order));
            if let Some(s) = self.server_conns.get_mut(&conn) {
                s.answer(request, Ok(Bytes::new()));
            }
        }
        for _round in 0..4 {
            // Client → network.
            for c in &mut self.clients {
                if let Some(conn) = &mut c.conn {
                    conn.engine.handle_timeout(now);
                    let mut out = Vec::new();
                    conn.engine.poll_transmit(now, &mut out);
                    self.links[conn.link].to_server.write(&out);
                }
            }
            // Network → server, server → network.
            let ids: Vec<u64> = self.server_conns.keys().copied().collect();
            for id in ids {
                let link = self.server_conns[&id].link;
                // One read at a time, each handed to the node before the next, as
                // the tokio driver does: flow control may hold the connection back
                // after any of them, and then it is not read on.
                if self.links[link].held_until.is_none() && self.links[link].server == Some(id) {
                    while self.server_conns[&id].conn.wants_input() {
                        let Some(chunk) = self.links[link].to_server.read_chunk() else {
                            break;
                        };
                        self.server_conns
                            .get_mut(&id)
                            .expect("listed")
                            .conn
                            .handle_input(now, &chunk);
                        self.server_events(id);
                    }
                }
                let s = self.server_conns.get_mut(&id).expect("listed");
                s.conn.handle_timeout(now);
                self.server_events(id);
                // The transport takes more only while its window has room (a socket
                // buffer): a client that does not read leaves its backlog in the
                // node's bounded mailbox.
                if self.links[link].to_client.pending() < LINK_WINDOW {
                    let s = self.server_conns.get_mut(&id).expect("listed");
                    let mut out = Vec::new();
                    s.conn.poll_transmit(now, &mut out);
                    // The window takes all of it: the receiver's progress.
                    s.conn.handle_written(now, out.len());
                    if self.links[link].server == Some(id) {
                        self.links[link].to_client.write(&out);
                    }
                    // Taking the mailbox may have drained a congested receiver: the
                    // node releases its publishers now, not at the next wake (as the
                    // tokio driver does).
                    self.observe_one(id);
                    self.server_events(id);
                }
                if self.server_conns[&id].conn.is_finished() {
                    self.server_finished(id);
                }
            }
            // Network → clients.
            for i in 0..self.clients.len() {
                let SimClient {
                    conn,
                    reader,
                    read_budget,
                    ..
                } = &mut self.clients[i];
                let Some(conn) = conn else {
                    continue;
                };
                let link = &mut self.links[conn.link];
                if link.held_until.is_none() && link.stalled_until.is_none() {
                    let slow = matches!(reader, Some(ReaderKind::Slow { .. }));
                    let mut budget = if slow { *read_budget } else { usize::MAX };
                    while let Some(chunk) = link.to_client.read_chunk_at_most(budget) {
                        if slow {
                            budget -= chunk.len();
                        }
                        conn.engine.handle_input(now, &chunk);
                    }
                    if slow {
                        *read_budget = budget;
                    }
                }
                self.client_events(i);
            }
        }
        self.check_queues();
    }

    /// G8: every queue within its bound (one frame of slack: a frame is queued,
    /// then the policy acts).
    fn check_queues(&mut self) {
        for s in self.server_conns.values() {
            if s.conn.queued_bytes() > OUTBOUND_LIMIT + QUEUE_SLACK {
                self.queue_breaches.push(format!(
                    "an outbound queue held {} bytes, over the limit of {OUTBOUND_LIMIT}",
                    s.conn.queued_bytes()
                ));
            }
        }
        let limits = &self.node_config.hub;
        for member in self.node.hub().connections() {
            if let Some((events, bytes)) = self.node.hub().replay_held(member) {
                if events > limits.replay_events || bytes > limits.replay_bytes + QUEUE_SLACK {
                    self.queue_breaches.push(format!(
                        "{member} held {events} events ({bytes} bytes) for replay, over its bounds"
                    ));
                }
            }
        }
    }

    fn server_finished(&mut self, id: u64) {
        let Some(mut s) = self.server_conns.remove(&id) else {
            return;
        };
        self.coverage.dropped_by_policy += s.conn.dropped_by_policy();
        // A goodbye ends the session; anything else leaves it for a resume.
        self.node.handle_connection_closed(self.now(), &mut s.conn);
        if let Some(session) = s.session() {
            self.flow_push(id, session, Observed::Gone);
        }
        if let Some(flow) = &mut self.flow {
            flow.conns.remove(&id);
        }
        self.observe(None);
        let link = &mut self.links[s.link];
        if link.server == Some(id) {
            link.server = None;
            // The transport closes: the client sees EOF after what was in flight.
        }
    }

    fn server_events(&mut self, id: u64) {
        let now = self.now();
        let s = self.server_conns.get_mut(&id).expect("listed");
        let mut admitted = false;
        while let Some(event) = s.conn.poll_event() {
            match event {
                // Every Hello is let in; the node decides between a new session and
                // a resume.
                ConnectionEvent::Authenticate(request) => {
                    let mut token = [0u8; 16];
                    token[..8].copy_from_slice(&self.rng.next_u64().to_le_bytes());
                    token[8..].copy_from_slice(&self.rng.next_u64().to_le_bytes());
                    self.node
                        .handle_hello(now, &mut s.conn, request, ResumeToken(token));
                    admitted = true;
                }
                ConnectionEvent::Request {
                    request_id,
                    method_id,
                    payload,
                } => {
                    // At most max_running calls at once, handed out in arrival order.
                    let session = s.session.map_or("?".to_owned(), |k| k.to_string());
                    if s.running.len() >= self.max_running {
                        self.rpc_breaches.push(format!(
                            "{session}: request {request_id} was handed to the application \
                             while {} calls ran ({:?}), over max_running_requests = {}",
                            s.running.len(),
                            s.running,
                            self.max_running
                        ));
                    }
                    if s.last_started.is_some_and(|last| request_id <= last) {
                        self.rpc_breaches.push(format!(
                            "{session}: request {request_id} was handed out after request {}, \
                             out of arrival order",
                            s.last_started.unwrap_or(0)
                        ));
                    }
                    s.last_started = Some(request_id);
                    s.running.insert(request_id);
                    self.started.insert((s.link, request_id));
                    match method_id {
                        ECHO => {
                            s.answer(request_id, Ok(payload));
                        }
                        SLEEP => {
                            self.sleeps_started += 1;
                            if self.fault
                                == Some(InjectedFault::CancelledUnasked(self.sleeps_started))
                            {
                                s.answer(
                                    request_id,
                                    Err((ErrorCode::Cancelled, "cancelled by mistake".into())),
                                );
                                continue;
                            }
                            let mut p = payload.clone();
                            let ms = if p.remaining() == 4 { p.get_u32() } else { 0 };
                            self.response_order += 1;
                            self.responses.insert(
                                (self.now_ms + u64::from(ms), self.response_order),
                                (id, request_id),
                            );
                        }
                        _ => {
                            s.answer(
                                request_id,
                                Err((ErrorCode::UnknownMethod, "no such method".into())),
                            );
                        }
                    }
                }
                // The sleeping service stops at once on a cancel.
                ConnectionEvent::CancelRequested { request_id } => {
                    self.coverage.cancels_signalled_running += 1;
                    // Only for a call handed out (answered since, perhaps: the
                    // cancel may cross the answer), and once.
                    let session = s.session.map_or("?".to_owned(), |k| k.to_string());
                    if !self.started.contains(&(s.link, request_id)) {
                        self.rpc_breaches.push(format!(
                            "{session}: the cancel of request {request_id} was signalled, \
                             but the call was never handed to the application"
                        ));
                    }
                    if !s.signalled.insert(request_id) {
                        self.rpc_breaches.push(format!(
                            "{session}: the cancel of request {request_id} was signalled twice"
                        ));
                    }
                    let due = self
                        .responses
                        .iter()
                        .find(|(_, &call)| call == (id, request_id))
                        .map(|(&due, _)| due);
                    if let Some(due) = due {
                        self.responses.remove(&due);
                        s.answer(
                            request_id,
                            Err((ErrorCode::Cancelled, "cancelled while it slept".into())),
                        );
                    }
                }
                ConnectionEvent::Closed(_) => {}
            }
        }
        if admitted {
            // A resume's replay fills the mailbox.
            self.observe(None);
        }
        let s = self.server_conns.get_mut(&id).expect("listed");
        if s.conn.wants_node() {
            let start = self.journal.len();
            self.node.handle_connection(now, &mut s.conn);
            self.observe(Some((id, start)));
        }
    }

    /// Records `what` of server connection `conn` (flow-control runs).
    fn flow_push(&mut self, conn: u64, session: SessionKey, what: Observed) {
        if let Some(flow) = &mut self.flow {
            flow.record.observations.push(FlowObservation {
                ms: self.now_ms,
                conn,
                session,
                what,
            });
        }
    }

    /// Server connection `id` is over: its observations end.
    fn observe_gone(&mut self, id: u64) {
        let Some(flow) = &mut self.flow else {
            return;
        };
        if flow.conns.remove(&id).is_none() {
            return;
        }
        if let Some(session) = self.server_conns.get_mut(&id).and_then(|s| s.session()) {
            self.flow_push(id, session, Observed::Gone);
        }
    }

    /// Flow-control runs: records what changed in every connection's mailbox and read
    /// state since the last look. Called after every call into the node; `actor` is
    /// the connection the node just ran push commands of, with the journal's length
    /// before the call.
    fn observe(&mut self, actor: Option<(u64, usize)>) {
        let Some(flow) = &mut self.flow else {
            return;
        };
        // The node closes a slow consumer's mailbox in the call (the connection
        // closes at its next look, but its Close may wait long behind a full
        // transport): its event tells when.
        while let Some(event) = self.node.poll_event() {
            let NodeEvent::SlowConsumer { session: cut } = event else {
                continue;
            };
            let conn = self
                .server_conns
                .iter_mut()
                .rfind(|(_, s)| s.conn.member().is_some_and(|m| m.session == cut));
            if let Some((&id, s)) = conn {
                if let Some(session) = s.session() {
                    flow.record.observations.push(FlowObservation {
                        ms: self.now_ms,
                        conn: id,
                        session,
                        what: Observed::CutSlowConsumer,
                    });
                }
            }
        }
        let journal_len = self.journal.len();
        let states: Vec<(u64, ConnState)> = self
            .server_conns
            .iter_mut()
            .filter_map(|(&id, s)| Some((id, s.state(&self.links)?)))
            .collect();
        // G8 right after each call, before anything is taken: the high point.
        for (_, state) in &states {
            if state.queued > OUTBOUND_LIMIT + QUEUE_SLACK {
                self.queue_breaches.push(format!(
                    "{}'s outbound queue held {} bytes, over the limit of {OUTBOUND_LIMIT}",
                    state.session, state.queued
                ));
            }
        }
        let high = flow.record.high_water;
        let congested: Vec<SessionKey> = states
            .iter()
            .filter(|(_, state)| state.queued > high)
            .map(|(_, state)| state.session)
            .collect();
        // Whether the node agrees: its count of congestions rose by as many.
        let total = self.node.stats().congestions;
        let new = states
            .iter()
            .filter(|(id, s)| flow.goes_over(*id, s))
            .count();
        let counted = total.saturating_sub(flow.congestions) >= new as u64;
        flow.congestions = total;
        for (id, state) in &states {
            flow.record_mailbox(self.now_ms, *id, state, counted);
        }
        let mut others_held = false;
        let mut actor_held = false;
        for (id, state) in states {
            let ran = actor
                .filter(|(a, _)| *a == id)
                .map(|(_, start)| (start, journal_len));
            flow.record_hold(self.now_ms, id, &state, ran, &congested);
            if ran.is_some() {
                actor_held = state.held;
            } else {
                others_held |= state.held;
            }
        }
        if actor.is_some_and(|(_, start)| start < journal_len) && others_held && !actor_held {
            self.coverage.read_during_holds += 1;
        }
    }

    /// After a `poll_transmit` of a connection seen congested: whether it drained.
    fn observe_one(&mut self, id: u64) {
        let (Some(flow), Some(s)) = (&mut self.flow, self.server_conns.get_mut(&id)) else {
            return;
        };
        if !flow.conns.get(&id).is_some_and(|c| c.congested) {
            return;
        }
        if let Some(state) = s.state(&self.links) {
            // Taking frames holds and releases no one.
            flow.record_mailbox(self.now_ms, id, &state, true);
        }
    }

    fn client_events(&mut self, index: usize) {
        let reader_group = self.clients[index].reader_group;
        loop {
            let Some(conn) = &mut self.clients[index].conn else {
                return;
            };
            let Some(event) = conn.engine.poll_event() else {
                break;
            };
            let history = conn.history;
            let discard = conn.discard;
            mix(&mut self.digest, self.now_ms);
            match event {
                ClientEvent::ServerAuthenticated(_) => {}
                // The simulated clients do not wait for their commands.
                ClientEvent::Taken { command_id } => mix(&mut self.digest, command_id),
                ClientEvent::Ready(welcome) => {
                    mix(&mut self.digest, 1 + u64::from(welcome.resumed));
                    self.histories[history].version = Some(welcome.version);
                    if conn.resuming && !welcome.resumed {
                        // The session is gone: its history ends here. This connection
                        // belongs to a session the client did not ask for; close it
                        // and start afresh under a new user id.
                        conn.discard = true;
                        conn.engine.close(CloseCode::Normal, "session lost");
                        self.histories[history].intact = false;
                    } else if let (false, Some(group)) = (welcome.resumed, reader_group) {
                        // A scripted reader's new session joins its group.
                        let _ = conn
                            .engine
                            .push(PushCommand::Subscribe(vec![GroupId(group)]));
                    }
                }
                ClientEvent::Response {
                    request_id,
                    payload,
                } => {
                    mix(&mut self.digest, request_id);
                    self.record_outcome(index, request_id, Outcome::Result(payload), true);
                }
                ClientEvent::ServerError {
                    request_id, code, ..
                } => {
                    self.record_outcome(index, request_id, Outcome::ServerError(code), true);
                }
                ClientEvent::RequestAborted { request_id, reason } => {
                    mix(&mut self.digest, request_id ^ 0xabcd);
                    let outcome = match reason {
                        AbortReason::Cancelled => Outcome::Cancelled,
                        AbortReason::BatchAborted | AbortReason::ConnectionLost(_) => {
                            Outcome::Aborted
                        }
                    };
                    self.record_outcome(index, request_id, outcome, false);
                }
                ClientEvent::Push(message) => {
                    if discard {
                        continue;
                    }
                    if let Some(received) = to_received(message) {
                        mix(&mut self.digest, received.seq().unwrap_or(0));
                        self.coverage.deliveries += 1;
                        if matches!(received, Received::Gap { .. }) {
                            self.coverage.gaps += 1;
                        }
                        if self.clients[index]
                            .conn
                            .as_ref()
                            .is_some_and(|c| !c.slow_pending.is_empty())
                        {
                            self.coverage.pushes_during_slow_requests += 1;
                        }
                        self.histories[history].received.push(received);
                    }
                }
                ClientEvent::Closed(reason) => {
                    mix(&mut self.digest, 0xdead);
                    if matches!(reason, CloseReason::Timeout(_)) {
                        self.coverage.partition_timeouts += 1;
                    }
                    if let CloseReason::Protocol(e) = &reason {
                        self.histories[history].protocol_error = Some(e.to_string());
                    }
                }
            }
        }
        let Some(conn) = &self.clients[index].conn else {
            return;
        };
        if conn.engine.is_finished() {
            let conn = self.clients[index].conn.take().expect("checked");
            self.histories[conn.history].intact = false;
            // Remember how to resume this session, unless it is already gone.
            if !conn.discard && self.histories[conn.history].protocol_error.is_none() {
                if let Some(welcome) = conn.engine.welcome() {
                    self.clients[index].resume = Some((
                        ResumeRequest {
                            token: welcome.resume_token,
                            last_seq: conn.engine.last_seq(),
                        },
                        conn.history,
                    ));
                }
            }
            // The transport closes: the server sees EOF.
            if let Some(server) = self.links[conn.link].server {
                if let Some(s) = self.server_conns.get_mut(&server) {
                    s.conn.handle_transport_closed();
                }
            }
            self.clients[index].reconnect_at = Some(self.now_ms + RECONNECT_DELAY_MS);
        }
    }

    fn record_outcome(&mut self, index: usize, request_id: u64, outcome: Outcome, result: bool) {
        let Some(conn) = &mut self.clients[index].conn else {
            return;
        };
        let history = conn.history;
        if let Some(&i) = conn.requests.get(&request_id) {
            conn.slow_pending.remove(&request_id);
            let record = &mut self.histories[history].requests[i];
            let sent = record
                .cancels
                .iter()
                .any(|c| c.outcome == CancelOutcome::SentToServer);
            match &outcome {
                Outcome::ServerError(ErrorCode::Cancelled) => {
                    if self.started.contains(&(conn.link, request_id)) {
                        self.coverage.cancels_stopped_running += 1;
                    } else {
                        self.coverage.cancels_dropped_before_start += 1;
                    }
                }
                Outcome::Result(_) if sent => self.coverage.cancels_too_late += 1,
                _ => {}
            }
            record.outcomes.push(Ended {
                ms: self.now_ms,
                outcome,
            });
            if result {
                let id = record.id;
                self.histories[history].result_order.push(id);
            }
        }
    }

    fn finish(mut self, seed: u64) -> RunOutput {
        for s in self.server_conns.values() {
            self.coverage.dropped_by_policy += s.conn.dropped_by_policy();
        }
        for stats in self.past_stats.iter().chain([self.node.stats()]) {
            self.coverage.resumes += stats.sessions_resumed;
            self.coverage.resumes_with_replay += stats.resumes_with_replay;
            self.coverage.sessions_lost += stats.sessions_lost;
            self.coverage.slow_consumers += stats.slow_consumers;
            self.coverage.publishers_held += stats.publishers_held;
            self.coverage.congestions_expired += stats.congestions_expired;
            self.coverage.congestions += stats.congestions;
            self.coverage.compressed_deliveries += stats.deliveries_compressed;
            self.coverage.decompressed_deliveries += stats.deliveries_decompressed;
        }
        let end_ms = self.now_ms;
        let flow = self.flow.take().map(|f| FlowRecord { end_ms, ..f.record });
        if let Some(flow) = &flow {
            self.coverage.add(&reader_coverage(flow));
        }
        // Sessions still connected at the end were never cut off: intact.
        for c in &self.clients {
            if let Some(conn) = &c.conn {
                if conn.engine.state() == pushwire_engine::client::ClientState::Ready {
                    self.histories[conn.history].intact = true;
                }
            }
        }
        RunOutput {
            record: RunRecord {
                seed,
                sessions: self.histories,
                journal: self.journal.snapshot(),
                queue_breaches: self.queue_breaches,
                flow,
                rpc_breaches: self.rpc_breaches,
            },
            coverage: self.coverage,
            digest: self.digest,
        }
    }
}

/// A client's push event as the oracle's [`Received`].
pub fn to_received(message: Message) -> Option<Received> {
    let ids = |g: Vec<GroupId>| g.into_iter().map(|g| g.0).collect();
    Some(match message {
        Message::Subscribed(m) => Received::Subscribed {
            seq: m.seq,
            from: Origin::of(&m.sender),
            is_self: m.sender.is_self(),
            groups: ids(m.groups),
        },
        Message::Unsubscribed(m) => Received::Unsubscribed {
            seq: m.seq,
            from: Origin::of(&m.sender),
            is_self: m.sender.is_self(),
            groups: ids(m.groups),
        },
        Message::Published(m) => Received::Published {
            seq: m.seq,
            from: Origin::of(&m.sender),
            is_self: m.sender.is_self(),
            groups: ids(m.groups),
            payload: m.payload,
        },
        Message::UserMessage(m) => Received::UserMessage {
            seq: m.seq,
            from: Origin::of(&m.sender),
            is_self: m.sender.is_self(),
            payload: m.payload,
        },
        Message::Gap(g) => Received::Gap {
            first: g.first,
            last: g.last,
        },
        Message::SessionLost(_) => Received::SessionLost,
        _ => return None,
    })
}

/// Runs the scenario of `seed` at the engine level.
pub fn run_seed(seed: u64, shape: crate::scenario::Shape) -> RunOutput {
    let scenario = crate::scenario::generate(seed, shape);
    EngineSim::new(seed, scenario.clients, scenario.groups).run(seed, &scenario)
}

/// What the scripted readers of a flow-control run went through (fair ones only: those
/// the oracle makes claims about).
fn reader_coverage(flow: &FlowRecord) -> Coverage {
    let mut coverage = Coverage::default();
    let fair = |session: SessionKey| {
        flow.readers
            .iter()
            .filter(move |r| r.fair && r.session == session)
    };
    let slow = |session| fair(session).any(|r| matches!(r.behaviour, Behaviour::Slow { .. }));
    let stopped_at = |session, ms| {
        fair(session).any(|r| {
            matches!(r.behaviour, Behaviour::Stopped { from_ms, until_ms }
                if (from_ms..=until_ms).contains(&ms))
        })
    };
    for o in &flow.observations {
        match &o.what {
            Observed::Congested { .. } if slow(o.session) => {
                coverage.slow_reader_congestions += 1;
            }
            Observed::Held { journal, congested }
                if journal.0 < journal.1 && congested.iter().any(|s| slow(*s)) =>
            {
                coverage.held_for_slow_readers += 1;
            }
            Observed::CutSlowConsumer if stopped_at(o.session, o.ms) => {
                coverage.stopped_readers_cut += 1;
            }
            Observed::Shed { queued }
                if *queued <= flow.low_water && stopped_at(o.session, o.ms) =>
            {
                coverage.stopped_readers_shed += 1;
            }
            _ => {}
        }
    }
    coverage
}

/// The session a server connection serves, once admitted.
fn member_session(conn: &NodeConnection) -> Option<SessionKey> {
    conn.member()
        .and_then(|m| SessionKey::parse(m.user_id.as_str()))
}

/// A fresh server node with groups 1..=groups, recording into `journal`.
fn new_node(config: &NodeConfig, journal: &Journal, groups: u32) -> Node<RecordingHooks> {
    let mut node = Node::new(config.clone(), RecordingHooks::new(journal.clone()))
        .expect("the replay buffer fits the outbound limit");
    for g in 1..=groups {
        node.add_group(GroupId(g), format!("group {g}"))
            .expect("fresh node");
    }
    node
}
