//! What a simulation run records: every client session's history and the server's
//! journal of push operations, in the order the hub applied them.
//!
//! Naming conventions make histories self-describing: client `i`'s `k`-th session
//! uses the user id `c{i}s{k}`, and every publication or user message carries its
//! origin and number in its payload, followed by filler bytes derived from them, so
//! the oracle can check that what arrived is byte for byte what was sent.

use bytes::Bytes;
use pushwire_engine::client::CancelOutcome;
use pushwire_protocol::ErrorCode;
use std::fmt;

/// One connection's lifetime of one simulated client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionKey {
    /// The client's index.
    pub client: u32,
    /// Which of the client's connections (0 for the first).
    pub session: u32,
}

impl SessionKey {
    /// The user id this session connects with.
    pub fn user_id(&self) -> String {
        format!("c{}s{}", self.client, self.session)
    }

    /// The session a user id names, if it follows the convention.
    pub fn parse(user_id: &str) -> Option<SessionKey> {
        let rest = user_id.strip_prefix('c')?;
        let (client, session) = rest.split_once('s')?;
        Some(SessionKey {
            client: client.parse().ok()?,
            session: session.parse().ok()?,
        })
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}s{}", self.client, self.session)
    }
}

/// Who sent a push event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// The server on its own.
    Server,
    /// A client session (or the server on its behalf).
    Session(SessionKey),
}

impl Origin {
    /// The origin a received sender names: a session by its user id, or the server.
    pub fn of(sender: &pushwire_protocol::Sender) -> Origin {
        match sender {
            pushwire_protocol::Sender::Server => Origin::Server,
            pushwire_protocol::Sender::Peer(p) => {
                SessionKey::parse(p.user_id.as_str()).map_or(Origin::Server, Origin::Session)
            }
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Server => f.write_str("server"),
            Origin::Session(s) => s.fmt(f),
        }
    }
}

/// A publication's or user message's identity, carried in its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId {
    /// Who sent it.
    pub origin: Origin,
    /// Publication (`true`) or user message.
    pub publication: bool,
    /// The sender's running number for it.
    pub n: u32,
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.publication { "pub" } else { "msg" };
        write!(f, "{kind} #{} from {}", self.n, self.origin)
    }
}

impl MessageId {
    /// The payload for this message: its identity, then `filler` bytes derived
    /// from it.
    pub fn payload(&self, filler: usize) -> Bytes {
        let origin = match self.origin {
            Origin::Server => "server".to_owned(),
            Origin::Session(s) => s.to_string(),
        };
        let kind = if self.publication { 'P' } else { 'U' };
        let mut out = format!("{kind}|{origin}|{}|", self.n).into_bytes();
        let seed = self.n as usize * 31 + origin.len() * 7;
        out.extend((0..filler).map(|j| b'a' + ((seed + j) % 26) as u8));
        Bytes::from(out)
    }

    /// Reads the identity back from a payload (without checking the filler).
    pub fn parse(payload: &[u8]) -> Option<MessageId> {
        let text = std::str::from_utf8(payload.get(..payload.len().min(64))?).ok()?;
        let mut parts = text.splitn(4, '|');
        let publication = match parts.next()? {
            "P" => true,
            "U" => false,
            _ => return None,
        };
        let origin = match parts.next()? {
            "server" => Origin::Server,
            user => Origin::Session(SessionKey::parse(user)?),
        };
        let n = parts.next()?.parse().ok()?;
        parts.next()?;
        Some(MessageId {
            origin,
            publication,
            n,
        })
    }
}

/// A push event as a client session received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Subscribed(sender, groups).
    Subscribed {
        /// Sequence number.
        seq: u64,
        /// Whose membership changed.
        from: Origin,
        /// The self flag.
        is_self: bool,
        /// Groups listed.
        groups: Vec<u32>,
    },
    /// Unsubscribed(sender, groups).
    Unsubscribed {
        /// Sequence number.
        seq: u64,
        /// Whose membership changed.
        from: Origin,
        /// The self flag.
        is_self: bool,
        /// Groups listed.
        groups: Vec<u32>,
    },
    /// Published(sender, groups, payload).
    Published {
        /// Sequence number.
        seq: u64,
        /// The publisher.
        from: Origin,
        /// The self flag.
        is_self: bool,
        /// Groups listed.
        groups: Vec<u32>,
        /// The payload.
        payload: Bytes,
    },
    /// UserMessage(sender, payload).
    UserMessage {
        /// Sequence number.
        seq: u64,
        /// The sender.
        from: Origin,
        /// The self flag.
        is_self: bool,
        /// The payload.
        payload: Bytes,
    },
    /// Gap(first..=last).
    Gap {
        /// First lost number.
        first: u64,
        /// Last lost number.
        last: u64,
    },
    /// The session could not be resumed.
    SessionLost,
}

impl Received {
    /// The sequence number, for the four sequenced events.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Received::Subscribed { seq, .. }
            | Received::Unsubscribed { seq, .. }
            | Received::Published { seq, .. }
            | Received::UserMessage { seq, .. } => Some(*seq),
            _ => None,
        }
    }

    /// The same event with another sequence number (for comparisons).
    pub fn with_seq(&self, new: u64) -> Received {
        let mut e = self.clone();
        match &mut e {
            Received::Subscribed { seq, .. }
            | Received::Unsubscribed { seq, .. }
            | Received::Published { seq, .. }
            | Received::UserMessage { seq, .. } => *seq = new,
            _ => {}
        }
        e
    }

    /// The message identity of a publication or user message.
    pub fn message_id(&self) -> Option<MessageId> {
        match self {
            Received::Published { payload, .. } | Received::UserMessage { payload, .. } => {
                MessageId::parse(payload)
            }
            _ => None,
        }
    }
}

/// How a request ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A result, with its payload.
    Result(Bytes),
    /// A server error, with its code (`ErrorCode::Cancelled` when the server
    /// dropped the request before it started or its handler stopped on a cancel).
    ServerError(ErrorCode),
    /// Ended without a result: its batch was aborted or the connection was lost.
    Aborted,
    /// Ended by the client engine on a cancel (`AbortReason::Cancelled`: taken out
    /// of an open batch, or ended locally on a connection that cannot tell the
    /// server).
    Cancelled,
}

impl Outcome {
    /// Whether this end says the request was cancelled (locally or by the server).
    pub fn is_cancelled(&self) -> bool {
        matches!(
            self,
            Outcome::Cancelled | Outcome::ServerError(ErrorCode::Cancelled)
        )
    }
}

/// One end of a request, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// When (simulated milliseconds).
    pub ms: u64,
    /// How.
    pub outcome: Outcome,
}

/// One call of `cancel` on a request, and what the client engine answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelRecord {
    /// When (simulated milliseconds).
    pub ms: u64,
    /// What `ClientConnection::cancel` returned.
    pub outcome: CancelOutcome,
    /// How many ends the request had when it was cancelled (orders the cancel
    /// among them within a millisecond).
    pub ended_before: usize,
}

/// One request, every end it got (exactly one is correct) and every cancel of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// The client's request id.
    pub id: u64,
    /// The result the request must produce (the harness uses methods whose result
    /// is known in advance: echo, and sleep's empty result).
    pub expected_result: Bytes,
    /// Ends, in arrival order.
    pub outcomes: Vec<Ended>,
    /// Cancels, in call order.
    pub cancels: Vec<CancelRecord>,
}

impl RequestRecord {
    /// A request not yet ended nor cancelled.
    pub fn new(id: u64, expected_result: Bytes) -> Self {
        Self {
            id,
            expected_result,
            outcomes: Vec::new(),
            cancels: Vec::new(),
        }
    }
}

/// Everything one client session saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHistory {
    /// Which session.
    pub key: SessionKey,
    /// Whether it asked for echo.
    pub echo: bool,
    /// Push events, in arrival order.
    pub received: Vec<Received>,
    /// Requests, in issue order.
    pub requests: Vec<RequestRecord>,
    /// Request ids in the order their results arrived.
    pub result_order: Vec<u64>,
    /// Still connected at the end of the run, after faults were healed and traffic
    /// stopped, and never cut off: everything sent to it must have arrived.
    pub intact: bool,
    /// The client process died during this session: its pending requests have no
    /// one left to report an outcome to.
    pub crashed: bool,
    /// The protocol error that ended the session, if one did (the client engine
    /// checks results arrive once and in order, and closes the connection if not).
    pub protocol_error: Option<String>,
    /// The protocol version its connections negotiated (`None` before the first
    /// Welcome): a cancel is sent to the server from version 3, ended locally
    /// before.
    pub version: Option<u16>,
}

impl SessionHistory {
    /// An empty history.
    pub fn new(key: SessionKey, echo: bool) -> Self {
        Self {
            key,
            echo,
            received: Vec::new(),
            requests: Vec::new(),
            result_order: Vec::new(),
            intact: false,
            crashed: false,
            protocol_error: None,
            version: None,
        }
    }
}

/// A push operation as the server's hub applied it (recorded from its hooks, in hub
/// order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalEntry {
    /// A session joined the hub.
    Connected {
        /// Which.
        session: SessionKey,
        /// Its echo option.
        echo: bool,
    },
    /// A session left the hub (after its implicit unsubscribe-all).
    Disconnected {
        /// Which.
        session: SessionKey,
    },
    /// A session joined groups (only the groups that changed).
    Subscribe {
        /// Which.
        session: SessionKey,
        /// Groups joined, ascending.
        groups: Vec<u32>,
    },
    /// A session left groups (only the groups that changed).
    Unsubscribe {
        /// Which.
        session: SessionKey,
        /// Groups left, ascending.
        groups: Vec<u32>,
        /// Why, which decides who is told.
        cause: LeaveCause,
    },
    /// A publication to known groups.
    Publish {
        /// Who published.
        origin: Origin,
        /// Target groups, ascending.
        groups: Vec<u32>,
        /// The payload.
        payload: Bytes,
    },
    /// A user message.
    UserMessage {
        /// Who sent it.
        origin: Origin,
        /// The receiver's user id as given.
        receiver: String,
        /// The payload.
        payload: Bytes,
    },
}

/// Why a session left groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveCause {
    /// It (or the server for it) asked: it and the other members are told.
    Request,
    /// It disconnected: the other members are told.
    Disconnect,
    /// The group was removed: only it is told.
    GroupRemoved,
}

/// One run's complete record.
#[derive(Debug, Clone, Default)]
pub struct RunRecord {
    /// The seed that produced the run.
    pub seed: u64,
    /// Every client session.
    pub sessions: Vec<SessionHistory>,
    /// The server's journal.
    pub journal: Vec<JournalEntry>,
    /// Queue-limit breaches observed by the harness (G8), as text.
    pub queue_breaches: Vec<String>,
    /// What the harness saw of the node's flow control, in a run with flow control
    /// on (`None` otherwise, and at the turmoil level).
    pub flow: Option<FlowRecord>,
    /// Breaches of the server's RPC contract the harness saw from the application's
    /// side (G7), as text: more calls of a connection running at once than
    /// `max_running_requests`, calls handed out out of arrival order, a cancel
    /// signalled twice or for a call never handed out.
    pub rpc_breaches: Vec<String>,
}

/// The slow-consumer policy of a run, as the oracle needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShedPolicy {
    /// A receiver over its limit, or congested past the grace, is closed with
    /// `CloseCode::SlowConsumer` (its session kept for a resume).
    #[default]
    Disconnect,
    /// Its oldest events are dropped, replaced by a Gap.
    DropOldest,
}

/// The node's flow control as a run saw it: its settings, the receivers the
/// scenario made behave in a known way, and every change the harness observed in
/// the connections' mailboxes and read states, in time order.
///
/// Observations are taken right after every call into the node and every
/// `poll_transmit` (the only places a mailbox or a hold changes), so a receiver's
/// `Congested` comes from the very call whose delivery took it over the high-water
/// mark, before anything could take the frames.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowRecord {
    /// Queued bytes over which a receiver is congested.
    pub high_water: usize,
    /// Queued bytes at or under which it is drained.
    pub low_water: usize,
    /// How long a congested receiver may hold publishers back.
    pub grace_ms: u64,
    /// The simulator's time step while bytes are in flight: the slack the rules allow
    /// for a timer that falls between two steps.
    pub tick_ms: u64,
    /// What happens to a receiver at the end of its grace.
    pub policy: ShedPolicy,
    /// Receivers with a scripted behaviour the oracle makes claims about.
    pub readers: Vec<ReaderRecord>,
    /// Everything observed, in time order.
    pub observations: Vec<FlowObservation>,
    /// When the run ended (simulated milliseconds).
    pub end_ms: u64,
}

/// A receiver with a scripted behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderRecord {
    /// The session.
    pub session: SessionKey,
    /// What it did.
    pub behaviour: Behaviour,
    /// The simulator's own conditions make the claims fair: flow control on, no
    /// injected fault, and nothing else (no cut, partition, crash or server restart)
    /// touched this session while it behaved so.
    pub fair: bool,
}

/// How a scripted receiver read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// For its whole life it read at most this many bytes each simulated
    /// millisecond, never pausing: a reader at a fraction of its publisher's rate.
    Slow {
        /// Read rate.
        bytes_per_ms: usize,
    },
    /// It read nothing from `from_ms` until `until_ms`.
    Stopped {
        /// Start of the stop.
        from_ms: u64,
        /// End of the stop.
        until_ms: u64,
    },
}

/// One observed change of one server-side connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowObservation {
    /// Simulated milliseconds.
    pub ms: u64,
    /// The harness's id of the server-side connection.
    pub conn: u64,
    /// The session it serves.
    pub session: SessionKey,
    /// What changed.
    pub what: Observed,
}

/// What changed in a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// Its mailbox went over the high-water mark.
    Congested {
        /// Bytes queued then.
        queued: usize,
        /// Its transport could take nothing more then (the link held a socket
        /// buffer's worth the client had not read): only the client reading, or
        /// the policy, can end this congestion.
        transport_full: bool,
        /// The node counted a congestion in the same call (its `congestions`
        /// total rose by at least the number of mailboxes seen going over): a
        /// delivery took it over, not a notice for the connection alone, which
        /// the node does not count as congestion.
        counted: bool,
    },
    /// Its mailbox, congested before, is at or under the low-water mark again
    /// (the connection took its frames, the policy shed them, or it was closed).
    Drained,
    /// The drop-oldest policy dropped events from its mailbox.
    Shed {
        /// Bytes still queued after the drop.
        queued: usize,
    },
    /// The node closed it as a slow consumer.
    CutSlowConsumer,
    /// It stopped being read (the node holds it back). `journal` is the range of
    /// journal entries its own push commands made in the call that held it (empty
    /// when the hold came from elsewhere); `congested` the sessions whose mailboxes
    /// were over the high-water mark right after that call. Also recorded, with the
    /// same fields, when a connection already held ran push commands.
    Held {
        /// Journal entries `[start, end)` of the call.
        journal: (usize, usize),
        /// Sessions over the high-water mark after the call.
        congested: Vec<SessionKey>,
    },
    /// It is read again.
    Released,
    /// It is over (finished, or lost in a server restart).
    Gone,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_user_ids_and_payloads() {
        let key = SessionKey {
            client: 3,
            session: 12,
        };
        assert_eq!(SessionKey::parse(&key.user_id()), Some(key));
        assert_eq!(SessionKey::parse("alice"), None);
        for origin in [Origin::Server, Origin::Session(key)] {
            let id = MessageId {
                origin,
                publication: true,
                n: 77,
            };
            let payload = id.payload(40);
            assert_eq!(MessageId::parse(&payload), Some(id));
            assert_eq!(id.payload(40), payload, "deterministic");
        }
    }
}
