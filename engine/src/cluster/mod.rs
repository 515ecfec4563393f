//! A cluster: several pushwire nodes that behave as one server, sharing groups,
//! presence and users through a backplane (Redis in `pushwire-tokio`, a model of it
//! in the simulator).
//!
//! # The backplane port
//!
//! The node stays sans-I/O. It asks for backplane work with
//! [`Node::poll_backplane`](crate::node::Node::poll_backplane) ([`BackplaneRequest`])
//! and hears back through [`Node::handle_backplane`](crate::node::Node::handle_backplane)
//! ([`BackplaneInput`]); [`Node::backplane_reads`](crate::node::Node::backplane_reads)
//! says which logs to read from where. What the port needs from a store:
//!
//! - per node incarnation (node id + epoch), an append-only **log** of records with
//!   ids the writer chooses (its `seq`: 1, 2, 3…), and a keyed **state** (one entry
//!   per session and per run-time group) with the seq it is current at; an append
//!   changes both at once, and a state change older than the state's seq is ignored;
//! - a **directory**: node id → its current epoch;
//! - blocking reads of several logs after given ids, and an atomic read of a node's
//!   state with its seq (a snapshot).
//!
//! In Redis (see `pushwire-tokio`'s `cluster` module): the log is a stream
//! `{pw:<node>}:log:<epoch>` written with `XADD key <seq>-0` (explicit ids make a
//! repeated append fail harmlessly: appends are idempotent), trimmed with
//! `MAXLEN ~`; the state is a hash `{pw:<node>}:state:<epoch>`; one Lua script
//! appends and updates the state together; the directory is the hash `pw:nodes`.
//! Every key but the directory carries its node's hash tag, so a node's keys share a
//! slot on Redis Cluster.
//!
//! # What makes the guarantees hold
//!
//! - **One record per publication** (its sender, its target groups after the hooks,
//!   its payload): a receiving node delivers it once to each local member of any
//!   target, listing the targets it is in (G3, G4). A node's log is in the order its
//!   hub did things, and each reader applies it in seq order, so one publisher's
//!   messages reach every receiver in order (G2).
//! - **Holes are noticed, never skipped silently** (G5). A reader expects seq
//!   `next`; a record with a higher seq (the writer's backlog overflowed while the
//!   backplane was away, the stream was trimmed past the reader, Redis restarted
//!   without its data) is a hole: every local session gets a Gap (one sequence
//!   number standing for whatever the hole held) and the peer's state is read again.
//!   A lower seq is a duplicate, dropped. A record that does not decode counts as a
//!   hole too.
//! - **Presence is state, not a stream of changes** (G6). A member record carries
//!   the session's whole group set; the reader diffs it against what it knew and
//!   tells local members the difference. A snapshot at seq `S` gives the whole view;
//!   member records up to `S` are then already in it, later ones apply on top. After a
//!   snapshot, members whose groups did not change are announced again (Subscribed
//!   with all their groups): the hole may have held a leave and a join that a local
//!   member should have seen, and a view built from presence must come out whole.
//! - **Liveness**: a node writes a heartbeat when it has said nothing for
//!   [`ClusterConfig::heartbeat`]; a peer unheard for [`ClusterConfig::liveness`] is
//!   taken for gone and its members leave every local view (Unsubscribed). A node
//!   whose own backplane has been away that long drops every peer the same way.
//!   Either way every local session gets a Gap: a peer that went quiet may have
//!   accepted events it never wrote (it was cut off, then died), and nobody can tell.
//!   When a peer is heard again, its state is read again and its members come back,
//!   and its log is read on from where it was (what it held back arrives late).
//! - **Incarnations**: a restarted node has a new epoch and a new log from seq 1;
//!   readers drop the old incarnation's members and read the new one from its
//!   start. A peer seen for the first time is read from its start too, except those
//!   found at this node's own start, which are read from their current state on.
//!
//! Sessions stay on their node: a resume works on the node that holds the session;
//! a client that fails over to another node gets SessionLost and restores its groups.

mod peers;
pub mod record;

use std::collections::{BTreeMap, VecDeque};
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pushwire_protocol::{Sender, Text};

use crate::hub::{Hub, JournalEntry, PushHooks};
use peers::Peer;
pub use record::{Record, RecordBody, RecordError};

/// Settings of a node's place in a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node's id, unique in the cluster: 1 to 64 characters of `A-Z a-z 0-9 - _ .`.
    pub node: Text,
    /// This incarnation: a random number the shell draws at start.
    pub epoch: u64,
    /// Longest silence before the node writes a heartbeat. Default 1 s.
    pub heartbeat: Duration,
    /// Silence after which a peer is taken for gone. Default 5 s.
    pub liveness: Duration,
    /// How often the directory is read for new and restarted peers. Default 1 s.
    pub discovery: Duration,
    /// Most records waiting for the backplane (while it is away); beyond, the
    /// oldest are dropped and the readers see a hole. Default 100,000.
    pub max_backlog_records: usize,
    /// Most record bytes waiting for the backplane. Default 64 MiB.
    pub max_backlog_bytes: usize,
    /// Most records held for one peer while its state is being read. Default 10,000.
    pub max_held_records: usize,
    /// Most sessions of other nodes this node keeps in its view (all peers
    /// together): the backplane is input like any other, and a writer that floods
    /// it with member records must not grow this node without bound. Members
    /// beyond are not seen (counted in [`ClusterStats::remote_sessions_refused`]).
    /// Default 1,000,000.
    pub max_remote_sessions: usize,
}

/// A [`ClusterConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterConfigError {
    /// The node id is empty, too long or has other characters.
    #[error("a node id is 1 to 64 characters of A-Z a-z 0-9 - _ . (got {0:?})")]
    NodeId(String),
    /// Heartbeats must come well within the liveness timeout.
    #[error("the heartbeat ({heartbeat:?}) must be at most a third of the liveness timeout ({liveness:?})")]
    Heartbeat {
        /// The heartbeat interval.
        heartbeat: Duration,
        /// The liveness timeout.
        liveness: Duration,
    },
}

impl ClusterConfig {
    /// Defaults for node `node`, incarnation `epoch`.
    pub fn new(node: impl Into<Text>, epoch: u64) -> Self {
        Self {
            node: node.into(),
            epoch,
            heartbeat: Duration::from_secs(1),
            liveness: Duration::from_secs(5),
            discovery: Duration::from_secs(1),
            max_backlog_records: 100_000,
            max_backlog_bytes: 64 * 1024 * 1024,
            max_held_records: 10_000,
            max_remote_sessions: 1_000_000,
        }
    }

    /// Checks the node id and the timers.
    pub fn check(&self) -> Result<(), ClusterConfigError> {
        let id = self.node.as_str();
        if id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(ClusterConfigError::NodeId(id.to_owned()));
        }
        if self.heartbeat.is_zero() || self.heartbeat * 3 > self.liveness {
            return Err(ClusterConfigError::Heartbeat {
                heartbeat: self.heartbeat,
                liveness: self.liveness,
            });
        }
        Ok(())
    }
}

/// One entry of a node's state: a session (`m:<id>`) or a run-time group
/// (`g:<id>`), its value a record; `None` removes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEntry {
    /// The entry's key.
    pub key: String,
    /// Its new value, a [`Record`]; `None`: deleted.
    pub value: Option<Bytes>,
}

/// Work for the backplane, in the order the node asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackplaneRequest {
    /// Make this incarnation known: replace its whole state by `state`, current at
    /// `seq`, and set its directory entry to `epoch`. Asked after every
    /// [`BackplaneInput::Up`], before the appends it re-sends.
    Register {
        /// This node.
        node: Text,
        /// This incarnation.
        epoch: u64,
        /// The seq the state is current at (the last record made so far).
        seq: u64,
        /// Every entry of the state.
        state: Vec<StateEntry>,
    },
    /// Append `record` to this incarnation's log under id `seq`, and apply `state`
    /// unless the state is already current at `seq` or later. An id already in the
    /// log means it was written before: not an error. Answer with
    /// [`BackplaneInput::Appended`] once written.
    Append {
        /// The record's id.
        seq: u64,
        /// The encoded [`Record`].
        record: Bytes,
        /// The state entry the record changes, if any.
        state: Option<StateEntry>,
    },
    /// Read the directory; answer with [`BackplaneInput::Directory`].
    Discover,
    /// Read a peer's state with its seq; answer with [`BackplaneInput::Snapshot`].
    /// Until then, deliver no more of that peer's records (they are not in
    /// [`Node::backplane_reads`](crate::node::Node::backplane_reads) meanwhile).
    Snapshot {
        /// The peer.
        node: Text,
        /// Its incarnation.
        epoch: u64,
    },
    /// A peer gone for good: remove its directory entry if it still names `epoch`.
    Forget {
        /// The peer.
        node: Text,
        /// Its incarnation.
        epoch: u64,
    },
}

/// A peer's state as read from the backplane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The seq the state is current at.
    pub seq: u64,
    /// Its entries' values, in any order.
    pub entries: Vec<Bytes>,
}

/// What the backplane tells the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackplaneInput {
    /// The backplane is reachable (first time, or again).
    Up,
    /// It is not reachable any more; requests not yet answered are lost.
    Down,
    /// Appends up to and including `seq` are written.
    Appended {
        /// The last written id.
        seq: u64,
    },
    /// The directory: every node id with its current epoch.
    Directory(Vec<(Text, u64)>),
    /// A peer's state; `None` when it has none (gone, or not registered yet).
    Snapshot {
        /// The peer.
        node: Text,
        /// The incarnation asked for.
        epoch: u64,
        /// Its state.
        snapshot: Option<Snapshot>,
    },
    /// Records read from a peer's log, in id order.
    Records {
        /// The peer.
        node: Text,
        /// Its incarnation.
        epoch: u64,
        /// `(id, record)` pairs.
        records: Vec<(u64, Bytes)>,
    },
}

/// Where to read a peer's log from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPosition {
    /// The peer.
    pub node: Text,
    /// Its incarnation (the log to read).
    pub epoch: u64,
    /// Read records with ids after this one.
    pub after: u64,
}

/// What the cluster did, for the application's log and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// The backplane is reachable.
    BackplaneUp,
    /// The backplane is not reachable.
    BackplaneDown,
    /// A peer (incarnation) was found.
    PeerFound {
        /// The peer.
        node: Text,
        /// Its incarnation.
        epoch: u64,
    },
    /// A peer was taken for gone (unheard for the liveness timeout, replaced by a
    /// new incarnation, or this node's backplane away that long); its members left.
    PeerLost {
        /// The peer.
        node: Text,
        /// Its incarnation.
        epoch: u64,
    },
    /// A hole in a peer's log: every local session got a Gap.
    Hole {
        /// The peer.
        node: Text,
        /// The seq expected.
        expected: u64,
        /// The seq found (`expected` for a record that did not decode).
        found: u64,
        /// Sessions told.
        sessions: u32,
    },
    /// Records dropped from this node's backlog (the backplane away too long).
    BacklogDropped {
        /// How many.
        records: u64,
    },
}

impl std::fmt::Display for ClusterEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterEvent::BackplaneUp => write!(f, "the backplane is reachable"),
            ClusterEvent::BackplaneDown => write!(f, "the backplane is not reachable"),
            ClusterEvent::PeerFound { node, epoch } => {
                write!(f, "node {node} (incarnation {epoch:x}) found")
            }
            ClusterEvent::PeerLost { node, epoch } => {
                write!(
                    f,
                    "node {node} (incarnation {epoch:x}) taken for gone; its members left"
                )
            }
            ClusterEvent::Hole {
                node,
                expected,
                found,
                sessions,
            } => write!(
                f,
                "records of node {node} lost (expected {expected}, found {found}): a gap \
                 to each of {sessions} sessions"
            ),
            ClusterEvent::BacklogDropped { records } => write!(
                f,
                "{records} records dropped from the backlog: the backplane was away too long"
            ),
        }
    }
}

/// Deliberate misbehaviour of the cluster, for the simulator's proof that its
/// cluster oracle catches each kind of bug. Arming one works only in debug builds
/// with the `fault-injection` feature (it panics in others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterFault {
    /// A hole in a peer's log is stepped over without a Gap.
    IgnoreHoles,
    /// A record seen before is applied again.
    AcceptDuplicates,
    /// A publication to several groups is delivered once per target group.
    CopyPerGroup,
}

/// Running totals of the cluster's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Records this node made.
    pub records_out: u64,
    /// Peers' records applied.
    pub records_in: u64,
    /// Peers' records dropped as duplicates.
    pub duplicates: u64,
    /// Holes found in peers' logs.
    pub holes: u64,
    /// Records that did not decode.
    pub undecodable: u64,
    /// Records dropped from this node's backlog.
    pub backlog_dropped: u64,
    /// Peers' sessions left out of the view: over
    /// [`ClusterConfig::max_remote_sessions`].
    pub remote_sessions_refused: u64,
    /// Publications from peers delivered here (records, not deliveries).
    pub remote_publications: u64,
    /// Deliveries those made.
    pub remote_deliveries: u64,
}

/// A record this node made, until the backplane has it.
#[derive(Debug)]
struct Outgoing {
    seq: u64,
    record: Bytes,
    state: Option<StateEntry>,
    /// Handed to the shell since the last `Up`.
    sent: bool,
}

/// The cluster half of a [`Node`](crate::node::Node). See the module documentation.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    max_payload: usize,
    /// Seq of the last record made.
    seq: u64,
    backlog: VecDeque<Outgoing>,
    backlog_bytes: usize,
    /// Requests other than appends, in order.
    requests: VecDeque<BackplaneRequest>,
    /// The whole state, by key (re-sent with every Register).
    state: BTreeMap<String, Bytes>,
    up: bool,
    /// Since when the backplane is away (or since start, before the first `Up`).
    down_since: Option<Instant>,
    /// Every peer has been dropped for this node's own absence.
    isolated: bool,
    /// A directory has been read since start: peers found later are new.
    discovered: bool,
    last_append: Option<Instant>,
    next_discovery: Option<Instant>,
    peers: BTreeMap<Text, Peer>,
    events: VecDeque<ClusterEvent>,
    stats: ClusterStats,
    /// Woken when work for the backplane appears.
    waker: Option<Waker>,
    /// An armed fault (the simulator's oracle tests).
    fault: Option<ClusterFault>,
}

impl Cluster {
    /// A node's cluster half, before its backplane is up. `max_payload` bounds the
    /// payloads of peers' records (the hub's limit).
    pub fn new(config: ClusterConfig, max_payload: usize) -> Result<Self, ClusterConfigError> {
        config.check()?;
        Ok(Self {
            config,
            max_payload,
            seq: 0,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            requests: VecDeque::new(),
            state: BTreeMap::new(),
            up: false,
            down_since: None,
            isolated: false,
            discovered: false,
            last_append: None,
            next_discovery: None,
            peers: BTreeMap::new(),
            events: VecDeque::new(),
            stats: ClusterStats::default(),
            waker: None,
            fault: None,
        })
    }

    /// Arms a deliberate misbehaviour (see [`ClusterFault`]).
    #[cfg(feature = "fault-injection")]
    pub(crate) fn inject_fault(&mut self, fault: ClusterFault) {
        #[cfg(debug_assertions)]
        {
            self.fault = Some(fault);
        }
        #[cfg(not(debug_assertions))]
        panic!("fault injection ({fault:?}) works only in debug builds");
    }

    /// Sets the waker woken whenever a request for the backplane appears.
    pub(crate) fn set_waker(&mut self, waker: Waker) {
        self.waker = Some(waker);
    }

    fn wake(&self) {
        if self.up {
            if let Some(waker) = &self.waker {
                waker.wake_by_ref();
            }
        }
    }

    /// Queues a request other than an append.
    fn request(&mut self, request: BackplaneRequest) {
        self.requests.push_back(request);
        self.wake();
    }

    /// The settings.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Running totals.
    pub fn stats(&self) -> &ClusterStats {
        &self.stats
    }

    /// Whether the backplane is reachable.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// The peers known, with their epochs and whether they are alive.
    pub fn peers(&self) -> impl Iterator<Item = (&Text, u64, bool)> + '_ {
        self.peers.iter().map(|(n, p)| (n, p.epoch, p.alive))
    }

    /// Records made and not yet confirmed written by the backplane.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// Sessions of other nodes this node knows of (for the operator).
    pub fn remote_sessions(&self) -> usize {
        self.peers.values().map(|p| p.members.len()).sum()
    }

    pub(crate) fn poll_event(&mut self) -> Option<ClusterEvent> {
        self.events.pop_front()
    }

    /// The next request for the backplane.
    pub(crate) fn poll_request(&mut self) -> Option<BackplaneRequest> {
        if !self.up {
            return None;
        }
        if let Some(request) = self.requests.pop_front() {
            return Some(request);
        }
        let next = self.backlog.iter_mut().find(|o| !o.sent)?;
        next.sent = true;
        Some(BackplaneRequest::Append {
            seq: next.seq,
            record: next.record.clone(),
            state: next.state.clone(),
        })
    }

    /// The peers' logs to read, and from where.
    pub(crate) fn reads(&self) -> Vec<ReadPosition> {
        if !self.up {
            return Vec::new();
        }
        self.peers
            .iter()
            .filter_map(|(node, peer)| {
                peer.read_after().map(|after| ReadPosition {
                    node: node.clone(),
                    epoch: peer.epoch,
                    after,
                })
            })
            .collect()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let mut due: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                due = Some(due.map_or(t, |d| d.min(t)));
            }
        };
        if self.up {
            consider(self.last_append.map(|t| t + self.config.heartbeat));
            consider(self.next_discovery);
            for peer in self.peers.values().filter(|p| p.alive) {
                consider(Some(peer.last_heard + self.config.liveness));
            }
        } else if !self.isolated {
            consider(self.down_since.map(|t| t + self.config.liveness));
        }
        due
    }

    /// Turns what the hub journaled into records for the backplane.
    pub(crate) fn collect<H: PushHooks>(&mut self, now: Option<Instant>, hub: &mut Hub<H>) {
        let mut journal = hub.take_journal();
        // A member's record carries its state at this call, so the same session's
        // consecutive entries (a join and its auto-subscription, say) make one.
        journal.dedup_by(
            |b, a| matches!((a, b), (JournalEntry::Member(x), JournalEntry::Member(y)) if x == y),
        );
        for entry in journal {
            let (body, state) = match entry {
                JournalEntry::Member(session) => {
                    let key = format!("m:{}", session.0);
                    match hub.member_state(session) {
                        Some((sender, groups)) => (
                            RecordBody::Member {
                                session: session.0,
                                sender,
                                groups,
                            },
                            Some(key),
                        ),
                        // Gone again in the same call: its MemberGone follows.
                        None => continue,
                    }
                }
                JournalEntry::MemberGone(session) => (
                    RecordBody::MemberGone { session: session.0 },
                    Some(format!("m:{}", session.0)),
                ),
                JournalEntry::Publication {
                    sender,
                    groups,
                    payload,
                } => (
                    RecordBody::Publication {
                        sender,
                        groups: groups.to_vec(),
                        payload,
                    },
                    None,
                ),
                JournalEntry::UserMessage {
                    sender,
                    receiver,
                    payload,
                } => (
                    RecordBody::UserMessage {
                        sender,
                        receiver,
                        payload,
                    },
                    None,
                ),
                JournalEntry::GroupAdded(group, description) => (
                    RecordBody::GroupAdded { group, description },
                    Some(format!("g:{}", group.0)),
                ),
                JournalEntry::GroupRemoved(group) => (
                    RecordBody::GroupRemoved { group },
                    Some(format!("g:{}", group.0)),
                ),
            };
            self.make(now, body, state);
        }
    }

    /// Makes the next record and queues it for the backplane.
    fn make(&mut self, now: Option<Instant>, body: RecordBody, state_key: Option<String>) {
        // A removal deletes its state entry; every other state record is the value.
        let removal = matches!(
            body,
            RecordBody::MemberGone { .. } | RecordBody::GroupRemoved { .. }
        );
        self.seq += 1;
        let record = Record {
            epoch: self.config.epoch,
            seq: self.seq,
            body,
        }
        .encode();
        let state = state_key.map(|key| {
            let value = (!removal).then(|| record.clone());
            match &value {
                Some(v) => self.state.insert(key.clone(), v.clone()),
                None => self.state.remove(&key),
            };
            StateEntry { key, value }
        });
        self.stats.records_out += 1;
        self.backlog_bytes += record.len();
        self.backlog.push_back(Outgoing {
            seq: self.seq,
            record,
            state,
            sent: false,
        });
        self.wake();
        if now.is_some() {
            self.last_append = now;
        }
        let mut dropped = 0;
        while self.backlog.len() > self.config.max_backlog_records
            || self.backlog_bytes > self.config.max_backlog_bytes
        {
            let Some(old) = self.backlog.pop_front() else {
                break;
            };
            self.backlog_bytes -= old.record.len();
            dropped += 1;
        }
        if dropped > 0 {
            self.stats.backlog_dropped += dropped;
            self.events
                .push_back(ClusterEvent::BacklogDropped { records: dropped });
        }
    }

    /// Applies what the backplane says.
    pub(crate) fn handle_input<H: PushHooks>(
        &mut self,
        now: Instant,
        input: BackplaneInput,
        hub: &mut Hub<H>,
    ) {
        match input {
            BackplaneInput::Up => self.handle_up(now),
            BackplaneInput::Down => {
                if self.up {
                    self.up = false;
                    self.down_since = Some(now);
                    self.requests.clear();
                    for o in &mut self.backlog {
                        o.sent = false;
                    }
                    for peer in self.peers.values_mut() {
                        peer.abandon_snapshot();
                    }
                    self.events.push_back(ClusterEvent::BackplaneDown);
                }
            }
            BackplaneInput::Appended { seq } => {
                while self.backlog.front().is_some_and(|o| o.seq <= seq) {
                    let o = self.backlog.pop_front().expect("checked");
                    self.backlog_bytes -= o.record.len();
                }
            }
            BackplaneInput::Directory(nodes) => self.handle_directory(now, nodes, hub),
            BackplaneInput::Snapshot {
                node,
                epoch,
                snapshot,
            } => self.handle_snapshot(now, &node, epoch, snapshot, hub),
            BackplaneInput::Records {
                node,
                epoch,
                records,
            } => self.handle_records(now, &node, epoch, records, hub),
        }
    }

    fn handle_up(&mut self, now: Instant) {
        if self.up {
            return;
        }
        self.up = true;
        self.down_since = None;
        self.isolated = false;
        self.requests.clear();
        self.request(BackplaneRequest::Register {
            node: self.config.node.clone(),
            epoch: self.config.epoch,
            seq: self.seq,
            state: self
                .state
                .iter()
                .map(|(key, value)| StateEntry {
                    key: key.clone(),
                    value: Some(value.clone()),
                })
                .collect(),
        });
        for o in &mut self.backlog {
            o.sent = false;
        }
        self.request(BackplaneRequest::Discover);
        self.next_discovery = Some(now + self.config.discovery);
        // A fresh start for every liveness clock: nothing was heard while away.
        for peer in self.peers.values_mut() {
            peer.last_heard = now;
        }
        if self.last_append.is_none() {
            self.last_append = Some(now);
        }
        self.events.push_back(ClusterEvent::BackplaneUp);
    }

    fn handle_directory<H: PushHooks>(
        &mut self,
        now: Instant,
        nodes: Vec<(Text, u64)>,
        hub: &mut Hub<H>,
    ) {
        let initial = !self.discovered;
        self.discovered = true;
        for (node, epoch) in &nodes {
            if *node == self.config.node {
                continue;
            }
            match self.peers.get(node) {
                Some(peer) if peer.epoch == *epoch => {
                    if peer.wants_snapshot() {
                        self.ask_snapshot(node);
                    }
                    continue;
                }
                Some(_) => {
                    // A new incarnation: the old one is gone, with whatever it had
                    // not written yet.
                    let old = self.peers.remove(node).expect("matched");
                    let was_alive = old.alive;
                    self.lose_peer(node, old, hub);
                    if was_alive {
                        self.gap_for_lost_peers(hub);
                    }
                }
                None => {}
            }
            let peer = Peer::new(*epoch, now, initial);
            self.peers.insert(node.clone(), peer);
            self.events.push_back(ClusterEvent::PeerFound {
                node: node.clone(),
                epoch: *epoch,
            });
            self.ask_snapshot(node);
        }
        // Peers gone from the directory and unheard: forgotten.
        let listed: Vec<&Text> = nodes.iter().map(|(n, _)| n).collect();
        let gone: Vec<Text> = self
            .peers
            .iter()
            .filter(|(n, p)| !p.alive && !listed.contains(n))
            .map(|(n, _)| n.clone())
            .collect();
        for node in gone {
            let peer = self.peers.remove(&node).expect("listed");
            self.lose_peer(&node, peer, hub);
        }
        // Dead peers still listed: the directory is cleaned of them.
        let forgotten: Vec<BackplaneRequest> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.alive && now >= p.last_heard + self.config.liveness * 10)
            .map(|(node, peer)| BackplaneRequest::Forget {
                node: node.clone(),
                epoch: peer.epoch,
            })
            .collect();
        for request in forgotten {
            self.request(request);
        }
    }

    fn ask_snapshot(&mut self, node: &Text) {
        let Some(peer) = self.peers.get_mut(node) else {
            return;
        };
        if peer.begin_snapshot() {
            let epoch = peer.epoch;
            self.request(BackplaneRequest::Snapshot {
                node: node.clone(),
                epoch,
            });
        }
    }

    fn handle_snapshot<H: PushHooks>(
        &mut self,
        now: Instant,
        node: &Text,
        epoch: u64,
        snapshot: Option<Snapshot>,
        hub: &mut Hub<H>,
    ) {
        let max_payload = self.max_payload;
        let Some(peer) = self.peers.get_mut(node).filter(|p| p.epoch == epoch) else {
            return;
        };
        let Some(held) = peer.end_snapshot() else {
            return;
        };
        let mut undecodable = 0;
        if let Some(snapshot) = snapshot {
            let mut members = BTreeMap::new();
            for value in &snapshot.entries {
                match Record::decode(value, max_payload).map(|r| r.from_node(node)) {
                    Ok(Record {
                        body:
                            RecordBody::Member {
                                session,
                                sender,
                                groups,
                            },
                        ..
                    }) => {
                        members.insert(session, (Sender::Peer(sender), groups));
                    }
                    Ok(Record {
                        body: RecordBody::GroupAdded { group, description },
                        ..
                    }) => hub.remote_group_added(group, description),
                    Ok(_) => {}
                    Err(_) => undecodable += 1,
                }
            }
            // Within the bound on remote sessions (those already seen stay).
            let room = self
                .config
                .max_remote_sessions
                .saturating_sub(self.peers.values().map(|p| p.members.len()).sum::<usize>());
            let mut admitted = 0;
            let before = members.len();
            let peer = self.peers.get_mut(node).expect("looked up");
            members.retain(|session, _| {
                let keep = peer.members.contains_key(session) || admitted < room;
                if keep && !peer.members.contains_key(session) {
                    admitted += 1;
                }
                keep
            });
            self.stats.remote_sessions_refused += (before - members.len()) as u64;
            let peer = self.peers.get_mut(node).expect("looked up");
            let changes = peer.apply_snapshot(snapshot.seq, members);
            apply_changes(changes, hub);
        } else {
            self.peers
                .get_mut(node)
                .expect("looked up")
                .snapshot_missing();
        }
        self.stats.undecodable += undecodable;
        if !held.is_empty() {
            self.handle_records(now, node, epoch, held, hub);
        }
    }

    fn handle_records<H: PushHooks>(
        &mut self,
        now: Instant,
        node: &Text,
        epoch: u64,
        records: Vec<(u64, Bytes)>,
        hub: &mut Hub<H>,
    ) {
        let mut records = records.into_iter();
        while let Some((seq, bytes)) = records.next() {
            let Some(peer) = self.peers.get_mut(node).filter(|p| p.epoch == epoch) else {
                return;
            };
            peer.last_heard = now;
            if !peer.alive {
                peer.alive = true;
                peer.stale_view = true;
            }
            // Back from the dead, the view is rebuilt from the peer's state first.
            if peer.is_snapshotting() || std::mem::take(&mut peer.stale_view) {
                let rest = std::iter::once((seq, bytes)).chain(records).collect();
                self.hold_until_snapshot(node, rest);
                return;
            }
            let Some(next) = peer.next() else {
                return;
            };
            let decode = |bytes: &Bytes| {
                Record::decode(bytes, self.max_payload)
                    .ok()
                    .filter(|r| r.epoch == epoch && r.seq == seq)
                    .map(|r| r.from_node(node))
            };
            if seq < next {
                self.stats.duplicates += 1;
                if self.fault == Some(ClusterFault::AcceptDuplicates) {
                    if let Some(record) = decode(&bytes) {
                        self.apply(node, record, hub);
                    }
                }
                continue;
            }
            let decoded = decode(&bytes);
            if seq > next && self.fault == Some(ClusterFault::IgnoreHoles) {
                if let Some(record) = decoded {
                    let peer = self.peers.get_mut(node).expect("looked up");
                    peer.skip_to(seq + 1);
                    self.apply(node, record, hub);
                    continue;
                }
            }
            if seq > next || decoded.is_none() {
                if decoded.is_none() {
                    self.stats.undecodable += 1;
                }
                self.stats.holes += 1;
                let sessions = hub.cluster_gap();
                self.events.push_back(ClusterEvent::Hole {
                    node: node.clone(),
                    expected: next,
                    found: seq,
                    sessions,
                });
                // Past the hole (and past a record that does not decode), then the
                // peer's state is read again before the rest applies.
                let peer = self.peers.get_mut(node).expect("looked up");
                let rest = if decoded.is_some() {
                    peer.skip_to(seq);
                    std::iter::once((seq, bytes)).chain(records).collect()
                } else {
                    peer.skip_to(seq + 1);
                    records.collect()
                };
                self.hold_until_snapshot(node, rest);
                return;
            }
            let record = decoded.expect("checked");
            let peer = self.peers.get_mut(node).expect("looked up");
            peer.skip_to(seq + 1);
            self.stats.records_in += 1;
            self.apply(node, record, hub);
        }
    }

    /// Whether a peer's session not yet in the view may join it.
    fn room_for_remote_session(&mut self) -> bool {
        if self.remote_sessions() < self.config.max_remote_sessions {
            return true;
        }
        self.stats.remote_sessions_refused += 1;
        false
    }

    /// Asks for the peer's state (unless asked already) and keeps `rest` of its
    /// records until the answer.
    fn hold_until_snapshot(&mut self, node: &Text, rest: Vec<(u64, Bytes)>) {
        self.ask_snapshot(node);
        let max_held = self.config.max_held_records;
        if let Some(peer) = self.peers.get_mut(node) {
            peer.hold(rest, max_held);
        }
    }

    fn apply<H: PushHooks>(&mut self, node: &Text, record: Record, hub: &mut Hub<H>) {
        if let RecordBody::Member { session, .. } = &record.body {
            let known = self.peers[node].members.contains_key(session);
            if !known && !self.room_for_remote_session() {
                return;
            }
        }
        let peer = self.peers.get_mut(node).expect("applied for a known peer");
        let covered = peer.covered_by_snapshot(record.seq);
        match record.body {
            RecordBody::Heartbeat => {}
            RecordBody::Member {
                session,
                sender,
                groups,
            } => {
                if !covered {
                    let changes = peer.set_member(session, Some((Sender::Peer(sender), groups)));
                    apply_changes(changes, hub);
                }
            }
            RecordBody::MemberGone { session } => {
                if !covered {
                    let changes = peer.set_member(session, None);
                    apply_changes(changes, hub);
                }
            }
            RecordBody::Publication {
                sender,
                groups,
                payload,
            } => {
                self.stats.remote_publications += 1;
                if self.fault == Some(ClusterFault::CopyPerGroup) && groups.len() > 1 {
                    for group in &groups {
                        hub.remote_publication(sender.clone(), &[*group], payload.clone());
                    }
                    return;
                }
                self.stats.remote_deliveries +=
                    u64::from(hub.remote_publication(sender, &groups, payload));
            }
            RecordBody::UserMessage {
                sender,
                receiver,
                payload,
            } => {
                hub.remote_user_message(sender, receiver.as_str(), payload);
            }
            RecordBody::GroupAdded { group, description } => {
                hub.remote_group_added(group, description)
            }
            RecordBody::GroupRemoved { group } => {
                if !covered {
                    hub.remote_group_removed(group)
                }
            }
        }
    }

    /// `peer` is gone: its members leave every local view.
    fn lose_peer<H: PushHooks>(&mut self, node: &Text, mut peer: Peer, hub: &mut Hub<H>) {
        let changes = peer.drop_view();
        apply_changes(changes, hub);
        self.events.push_back(ClusterEvent::PeerLost {
            node: node.clone(),
            epoch: peer.epoch,
        });
    }

    /// Timers: heartbeats, discovery, peers' liveness, this node's own absence.
    pub(crate) fn handle_timeout<H: PushHooks>(&mut self, now: Instant, hub: &mut Hub<H>) {
        if self.up {
            if self
                .last_append
                .is_some_and(|t| now >= t + self.config.heartbeat)
            {
                self.make(Some(now), RecordBody::Heartbeat, None);
            }
            if self.next_discovery.is_some_and(|t| now >= t) {
                self.request(BackplaneRequest::Discover);
                self.next_discovery = Some(now + self.config.discovery);
            }
            let silent: Vec<Text> = self
                .peers
                .iter()
                .filter(|(_, p)| p.alive && now >= p.last_heard + self.config.liveness)
                .map(|(n, _)| n.clone())
                .collect();
            if !silent.is_empty() {
                for node in silent {
                    self.kill_peer(&node, hub);
                }
                // What it made and had not written yet (it may have been cut off
                // rather than dead) is lost if it never comes back: say so.
                self.gap_for_lost_peers(hub);
            }
        } else if !self.isolated
            && self
                .down_since
                .is_some_and(|t| now >= t + self.config.liveness)
        {
            self.isolated = true;
            let all: Vec<Text> = self.peers.keys().cloned().collect();
            if !all.is_empty() {
                for node in all {
                    self.kill_peer(&node, hub);
                }
                self.gap_for_lost_peers(hub);
            }
        }
    }

    /// Peers were taken for gone: events they accepted and had not written to the
    /// backplane (while cut off, say) may never come. Every local session gets one
    /// Gap for them, once per batch of losses.
    fn gap_for_lost_peers<H: PushHooks>(&mut self, hub: &mut Hub<H>) {
        hub.cluster_gap();
    }

    /// A peer unheard too long: its members leave; its position is kept, so its
    /// log is read on from there when it is heard again.
    fn kill_peer<H: PushHooks>(&mut self, node: &Text, hub: &mut Hub<H>) {
        let Some(peer) = self.peers.get_mut(node) else {
            return;
        };
        if !peer.alive {
            return;
        }
        peer.alive = false;
        peer.stale_view = true;
        let changes = peer.drop_view();
        let epoch = peer.epoch;
        apply_changes(changes, hub);
        self.events.push_back(ClusterEvent::PeerLost {
            node: node.clone(),
            epoch,
        });
    }
}

/// Tells local members what changed in a peer's view, and the hub how many sessions
/// each user has elsewhere.
fn apply_changes<H: PushHooks>(changes: Vec<peers::Change>, hub: &mut Hub<H>) {
    for change in changes {
        if !change.left.is_empty() {
            hub.remote_presence(false, change.sender.clone(), &change.left);
        }
        if !change.joined.is_empty() {
            hub.remote_presence(true, change.sender.clone(), &change.joined);
        }
        if change.sessions_delta != 0 {
            hub.add_remote_user_sessions(&change.user_key, change.sessions_delta);
        }
    }
}
