//! The client end of a connection: TLS, server authentication before credentials,
//! Hello, then RPC and push.

use crate::channel::{Channel, KeepAlive};
use crate::close::{CloseReason, ProtocolError, TimeoutKind};
use crate::rpc::{Cancelling, OutstandingRequests, DEFAULT_MAX_OUTSTANDING_REQUESTS};
use crate::tls::{
    CertificateInfo, ClientTls, ServerAuthentication, TlsConfigError, TlsLink, Verdict,
};
use bytes::{Bytes, BytesMut};
use pushwire_protocol::{
    compress_into, decompress, encode_publish_prefix, BatchBegin, BatchCommit, Cancel,
    ClientOptions, CloseCode, Compression, CompressionAlgorithm, ErrorCode, FrameLimits, GroupId,
    GroupSelection, Hello, ListGroups, Message, MessageKind, Pong, Publish, RawFrame, Request,
    ResumeRequest, SendUserMessage, Subscribe, Text, Unsubscribe, Welcome, COMPRESSION_HEADER_LEN,
    PROTOCOL_VERSION, SUPPORTED_VERSIONS,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::UnixTime;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use thiserror::Error;

/// How the client decides whether to trust the server (the seed's
/// `DoSslServerAuthentication`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerAuthMode {
    /// Accept exactly when the certificate chain verified. The
    /// [`ClientEvent::ServerAuthenticated`] event still reports what was seen.
    #[default]
    Automatic,
    /// Emit [`ClientEvent::ServerAuthenticated`] and wait for
    /// [`ClientConnection::accept_server`] or [`ClientConnection::reject_server`].
    Application,
}

/// Encryption of a client connection.
#[derive(Debug, Clone)]
pub enum ClientTransport {
    /// TLS with these settings.
    Tls(ClientTls),
    /// No encryption: an explicit opt-in for trusted networks and benchmarks.
    Plaintext,
}

/// Default [`CompressionConfig::threshold`]: payloads under 512 bytes go plain. LZ4
/// gains little on them (`benches/RESULTS.md`, compressed payloads, has the
/// measurements) while costing the sender and every receiver a pass over the bytes.
pub const DEFAULT_COMPRESSION_THRESHOLD: usize = 512;

/// Whether the client compresses the payloads it publishes and sends (protocol
/// version 3, `PROTOCOL.md` section 3.1). Receiving is a separate choice, the
/// [`ClientOptions::compression`] option of the Hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressionConfig {
    /// Compress outgoing payloads at all. Default off: compressing costs the
    /// publisher CPU, and only payloads that compress well pay it back.
    pub enabled: bool,
    /// Payloads shorter than this go plain. A payload at or over it is compressed
    /// (LZ4 block) and sent compressed only if that is smaller, header included.
    pub threshold: usize,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            threshold: DEFAULT_COMPRESSION_THRESHOLD,
        }
    }
}

/// Everything a client connection needs to know (SocketPro's `CConnectionContext`,
/// minus host and port, which belong to the shell).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// TLS or explicit plaintext.
    pub transport: ClientTransport,
    /// User id sent in the Hello (at most 255 characters).
    pub user_id: Text,
    /// Password sent in the Hello.
    pub password: Bytes,
    /// The service to use.
    pub service_id: u32,
    /// Echo and other options.
    pub options: ClientOptions,
    /// A session to resume.
    pub resume: Option<ResumeRequest>,
    /// Largest frame accepted from the server; announced in the Hello from protocol
    /// version 4, so that the server sends nothing larger.
    pub limits: FrameLimits,
    /// Keep-alive timing; after a version 4 Welcome it
    /// [follows](KeepAlive::following) the server's.
    pub keepalive: KeepAlive,
    /// Limit on TLS handshake plus Hello/Welcome.
    pub handshake_timeout: Duration,
    /// Who decides whether to trust the server.
    pub server_auth: ServerAuthMode,
    /// Bound on outstanding requests.
    pub max_outstanding_requests: usize,
    /// Highest protocol version offered in the Hello (default: the highest this
    /// crate speaks); lower it to talk as an older client.
    pub max_version: u16,
    /// Compression of the payloads this client publishes and sends (default off).
    /// Used only on a connection that negotiated version 3 or later.
    pub compression: CompressionConfig,
}

impl ClientConfig {
    /// A configuration with defaults for everything but the essentials.
    pub fn new(transport: ClientTransport, user_id: impl Into<Text>, password: &[u8]) -> Self {
        Self {
            transport,
            user_id: user_id.into(),
            password: Bytes::copy_from_slice(password),
            service_id: 1,
            options: ClientOptions::default(),
            resume: None,
            limits: FrameLimits::default(),
            keepalive: KeepAlive::default(),
            handshake_timeout: Duration::from_secs(10),
            server_auth: ServerAuthMode::default(),
            max_outstanding_requests: DEFAULT_MAX_OUTSTANDING_REQUESTS,
            max_version: PROTOCOL_VERSION,
            compression: CompressionConfig::default(),
        }
    }
}

/// Where a client connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// TLS handshake under way.
    Handshaking,
    /// Waiting for the application to accept or reject the server.
    AwaitingServerDecision,
    /// Hello sent, waiting for Welcome or Refused.
    HelloSent,
    /// Welcome received: RPC and push available.
    Ready,
    /// Over; see the Closed event.
    Closed,
}

/// Why a request ended without a result.
#[derive(Debug, Clone, PartialEq)]
pub enum AbortReason {
    /// The batch holding it was aborted before it was sent.
    BatchAborted,
    /// The application cancelled it (see [`CancelOutcome`]).
    Cancelled,
    /// The connection ended before the result arrived.
    ConnectionLost(CloseReason),
}

/// What the client engine reports to the application.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The TLS handshake finished; this is the server's certificate and the verdict.
    /// In [`ServerAuthMode::Application`] the engine waits for a decision.
    ServerAuthenticated(ServerAuthentication),
    /// The server accepted the Hello.
    Ready(Welcome),
    /// A request's result.
    Response {
        /// The request.
        request_id: u64,
        /// The result.
        payload: Bytes,
    },
    /// A request failed on the server.
    ServerError {
        /// The request.
        request_id: u64,
        /// What went wrong.
        code: ErrorCode,
        /// Detail.
        message: Text,
    },
    /// A request ended without a result.
    RequestAborted {
        /// The request.
        request_id: u64,
        /// Why.
        reason: AbortReason,
    },
    /// A push event or an answer to a push command (Subscribed, Unsubscribed,
    /// Published, UserMessage, Gap, SessionLost, PushRejected, UserMessageDelivered,
    /// GroupList).
    Push(Message),
    /// The server has run every push command up to and including `command_id`
    /// (protocol version 2 and later; after any PushRejected about them). Push
    /// commands are numbered 1, 2, 3, … on each connection.
    Taken {
        /// The last push command run.
        command_id: u64,
    },
    /// The connection is over. Always the last event.
    Closed(CloseReason),
}

/// A client operation that could not be started.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClientError {
    /// The connection is not ready (no Welcome yet).
    #[error("the connection is not ready")]
    NotReady,
    /// The connection is closed or closing.
    #[error("the connection is closed")]
    Closed,
    /// The message would exceed the server's frame limit.
    #[error("message of {size} bytes exceeds the server's frame limit of {max} bytes")]
    TooLarge {
        /// Frame size.
        size: usize,
        /// The limit.
        max: u32,
    },
    /// Too many requests are outstanding.
    #[error("{0} requests are already outstanding")]
    TooManyRequests(usize),
    /// No batch is open.
    #[error("no batch is open")]
    NoBatch,
    /// A batch is already open.
    #[error("a batch is already open")]
    BatchOpen,
    /// accept/reject called when no decision is pending.
    #[error("no server-authentication decision is pending")]
    NoDecisionPending,
    /// The user id is empty or longer than the protocol allows.
    #[error(
        "the user id must have 1 to {} characters, not {chars}",
        pushwire_protocol::MAX_USER_ID_CHARS
    )]
    InvalidUserId {
        /// Its length in characters.
        chars: usize,
    },
    /// The password is longer than the protocol allows.
    #[error(
        "the password has {bytes} bytes; at most {} are allowed",
        pushwire_protocol::MAX_PASSWORD_BYTES
    )]
    PasswordTooLong {
        /// Its length.
        bytes: usize,
    },
    /// The server name or TLS settings are invalid.
    #[error(transparent)]
    Config(#[from] TlsConfigErrorText),
}

/// A TLS configuration error, as text (rustls errors are not `Eq`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct TlsConfigErrorText(pub String);

impl From<TlsConfigError> for TlsConfigErrorText {
    fn from(e: TlsConfigError) -> Self {
        Self(e.to_string())
    }
}

/// A push command, as the client application issues it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushCommand {
    /// Join groups.
    Subscribe(Vec<GroupId>),
    /// Leave groups or all.
    Unsubscribe(GroupSelection),
    /// Publish to groups.
    Publish {
        /// Target groups.
        groups: Vec<GroupId>,
        /// Message.
        payload: Bytes,
    },
    /// Message one user.
    SendUserMessage {
        /// Receiver's user id.
        receiver: Text,
        /// Message.
        payload: Bytes,
    },
    /// Ask for the group list.
    ListGroups,
}

impl PushCommand {
    fn into_message(self, command_id: u64) -> Message {
        match self {
            PushCommand::Subscribe(groups) => Message::Subscribe(Subscribe { command_id, groups }),
            PushCommand::Unsubscribe(groups) => {
                Message::Unsubscribe(Unsubscribe { command_id, groups })
            }
            PushCommand::Publish { groups, payload } => Message::Publish(Publish {
                command_id,
                groups,
                payload,
                compression: None,
            }),
            PushCommand::SendUserMessage { receiver, payload } => {
                Message::SendUserMessage(SendUserMessage {
                    command_id,
                    receiver,
                    payload,
                    compression: None,
                })
            }
            PushCommand::ListGroups => Message::ListGroups(ListGroups { command_id }),
        }
    }
}

struct Batch {
    frames: BytesMut,
    requests: Vec<BatchedRequest>,
}

/// A request in an open batch and where its frame lies in the batch's bytes, so a
/// cancel can take it out.
#[derive(Debug, Clone, Copy)]
struct BatchedRequest {
    id: u64,
    frame: (usize, usize),
}

impl Batch {
    fn request_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.requests.iter().map(|r| r.id)
    }

    /// Takes request `id`'s frame out of the batch; false when it is not in it.
    fn remove(&mut self, id: u64) -> bool {
        let Some(index) = self.requests.iter().position(|r| r.id == id) else {
            return false;
        };
        let (start, end) = self.requests.remove(index).frame;
        let tail = self.frames.split_off(end);
        self.frames.truncate(start);
        self.frames.extend_from_slice(&tail);
        for later in &mut self.requests[index..] {
            later.frame.0 -= end - start;
            later.frame.1 -= end - start;
        }
        true
    }
}

/// What [`ClientConnection::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The request was in the open batch: it is taken out and ends now as
    /// [`AbortReason::Cancelled`]; the server never sees it.
    RemovedFromBatch,
    /// A Cancel went to the server (protocol version 3): the request ends with a
    /// ServerError `Cancelled` if it had not started or its handler stopped, or
    /// with its result if the cancel came too late.
    SentToServer,
    /// The server cannot be told (protocol version 1 or 2): the request ends now as
    /// [`AbortReason::Cancelled`] and its result, when it comes, is dropped.
    EndedLocally,
    /// A Cancel for it went to the server already; its end still comes from the
    /// server, as for [`CancelOutcome::SentToServer`].
    AlreadySent,
    /// The request had ended already: nothing changes.
    NotOutstanding,
}

/// The client end of one pushwire connection, as a state machine.
///
/// Calling contract (quinn-proto style):
/// - Feed bytes from the transport with [`handle_input`](Self::handle_input) and
///   timer expiry with [`handle_timeout`](Self::handle_timeout); call
///   [`handle_transport_closed`](Self::handle_transport_closed) on EOF or a transport
///   error.
/// - After any call that takes `&mut self`, drain [`poll_transmit`](Self::poll_transmit)
///   (write everything it appended, in order), [`poll_event`](Self::poll_event) until
///   `None`, and re-arm the timer from [`poll_timeout`](Self::poll_timeout).
/// - When [`is_finished`](Self::is_finished) returns true, close the transport.
///
/// No credential leaves before the server is accepted: in TLS mode the Hello is
/// queued only by [`accept_server`](Self::accept_server) or by the automatic policy.
pub struct ClientConnection {
    config: ClientConfig,
    channel: Channel,
    state: ClientState,
    events: VecDeque<ClientEvent>,
    verdict: Option<Verdict>,
    wall_clock: UnixTime,
    deadline: Option<Instant>,
    outstanding: OutstandingRequests,
    next_command_id: u64,
    batch: Option<Batch>,
    server_max_frame: u32,
    tls: Option<ClientTls>,
    /// Highest push-event sequence number received (or covered by a Gap).
    last_seq: u64,
    /// Highest sequence number acknowledged to the server.
    acked: u64,
    /// The session the Welcome granted.
    welcome: Option<Welcome>,
    /// Push-event frames received and not decoded yet, oldest first: decoded one at a
    /// time by [`ClientConnection::poll_event`], so each event is built just before
    /// the application takes it. Decoding a whole input at once held hundreds of
    /// events (and their group lists) at a time, which took the allocator off its
    /// fast path and the events out of cache.
    deferred: VecDeque<RawFrame>,
    /// Storage for the next decoded group list (see
    /// [`recycle_groups`](ClientConnection::recycle_groups)).
    spare_groups: Vec<GroupId>,
    /// Where [`publish`](ClientConnection::publish) encodes a frame's header.
    scratch: BytesMut,
    /// Where payloads are compressed before they are queued (reused: a publisher
    /// compresses many).
    packed: Vec<u8>,
}

/// Largest group list kept for reuse: a rare long list is not held forever.
const MAX_SPARE_GROUPS: usize = 64;

/// Acknowledge once this many push events are unacknowledged, so the server can trim
/// its replay buffer while the connection is up. Checked once per input, not per
/// event: a busy input carries hundreds of events, and one Ack covers them all.
const ACK_EVERY: u64 = 32;

impl ClientConnection {
    /// Starts a connection at `now`. `wall_clock` is the current calendar time, used
    /// to check the server certificate's validity period.
    pub fn new(
        config: ClientConfig,
        now: Instant,
        wall_clock: UnixTime,
    ) -> Result<Self, ClientError> {
        let chars = config.user_id.as_str().chars().count();
        if config.user_id.is_empty() || chars > pushwire_protocol::MAX_USER_ID_CHARS {
            return Err(ClientError::InvalidUserId { chars });
        }
        if config.password.len() > pushwire_protocol::MAX_PASSWORD_BYTES {
            return Err(ClientError::PasswordTooLong {
                bytes: config.password.len(),
            });
        }
        let (link, tls) = match &config.transport {
            ClientTransport::Tls(tls) => {
                let conn =
                    UnbufferedClientConnection::new(tls.rustls.clone(), tls.server_name.clone())
                        .map_err(|e| TlsConfigErrorText(e.to_string()))?;
                (TlsLink::client(conn), Some(tls.clone()))
            }
            ClientTransport::Plaintext => (TlsLink::plaintext(), None),
        };
        let channel = Channel::new(link, config.limits, config.keepalive, now);
        let mut client = Self {
            deadline: Some(now + config.handshake_timeout),
            server_max_frame: config.limits.max_frame_size(),
            config,
            channel,
            state: ClientState::Handshaking,
            events: VecDeque::new(),
            verdict: None,
            wall_clock,
            outstanding: OutstandingRequests::default(),
            next_command_id: 0,
            batch: None,
            tls,
            last_seq: 0,
            acked: 0,
            welcome: None,
            deferred: VecDeque::new(),
            spare_groups: Vec::new(),
            scratch: BytesMut::new(),
            packed: Vec::new(),
        };
        if let Some(resume) = &client.config.resume {
            client.last_seq = resume.last_seq;
            client.acked = resume.last_seq;
        }
        if client.tls.is_none() {
            client.send_hello();
        }
        Ok(client)
    }

    /// Where the connection is.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// The highest push-event sequence number received (or covered by a Gap): what
    /// to present, with the Welcome's resume token, when reconnecting. Events that
    /// [`poll_event`](Self::poll_event) has not reached yet may not be counted; once
    /// the connection is finished, all are.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The keep-alive timing in force: the configured one, and after a version 4
    /// Welcome that one [following](KeepAlive::following) the server's.
    pub fn keepalive(&self) -> KeepAlive {
        self.channel.keepalive()
    }

    /// The Welcome, once received: session id, resume token, limits.
    pub fn welcome(&self) -> Option<&Welcome> {
        self.welcome.as_ref()
    }

    /// Requests sent (or batched) whose result has not arrived: what counts against
    /// [`ClientConfig::max_outstanding_requests`]. A request ended locally by a
    /// cancel on an older server counts until its result arrives, since the server
    /// still holds it.
    pub fn outstanding_requests(&self) -> usize {
        self.outstanding.len() + self.batch.as_ref().map_or(0, |b| b.requests.len())
    }

    /// Feeds bytes received from the transport.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        self.channel.receive(now, data);
        self.after_input();
    }

    /// The transport ended or failed.
    pub fn handle_transport_closed(&mut self) {
        self.channel.transport_closed();
        self.after_input();
    }

    /// Fires timers whose time has come.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(deadline) = self.deadline {
            if now >= deadline && self.state != ClientState::Ready {
                self.deadline = None;
                let reason = CloseReason::Timeout(TimeoutKind::Handshake);
                if self.state == ClientState::AwaitingServerDecision {
                    // Not trusted yet: not even a Close message goes to this server.
                    self.channel.finish(reason);
                } else {
                    self.channel.close_with(reason);
                }
            }
        }
        if self.channel.handle_keepalive(now) && self.events.is_empty() {
            // Idle for a ping interval: the events queue last used by a burst goes
            // too (the channel gave back its own buffers).
            self.events = VecDeque::new();
        }
        // Timers fire on quiet links: a good moment to acknowledge the rest.
        self.acknowledge(1);
        self.after_input();
    }

    /// Tells the server the events up to `last_seq` arrived, once at least `every`
    /// are unacknowledged.
    fn acknowledge(&mut self, every: u64) {
        if self.state == ClientState::Ready
            && !self.channel.is_closing()
            && self.last_seq >= self.acked + every
        {
            self.channel.send(&Message::Ack(pushwire_protocol::Ack {
                last_seq: self.last_seq,
            }));
            self.acked = self.last_seq;
        }
    }

    /// The next time [`handle_timeout`](Self::handle_timeout) must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == ClientState::Closed || self.channel.is_closing() {
            return None;
        }
        let handshake = self.deadline.filter(|_| self.state != ClientState::Ready);
        match (handshake, self.channel.keepalive_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Appends bytes to send to `out`; returns how many.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> usize {
        let n = self.channel.poll_transmit(now, out);
        self.after_input();
        n
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        if let Some(event) = self.events.pop_front() {
            return Some(event);
        }
        // Frames wait only while the connection is ready and not closing, so each is
        // a push event as handle_message would queue it: returned directly, without
        // a trip through the event queue (two copies of a large enum).
        if let Some(frame) = self.deferred.pop_front() {
            match self.decode_frame(frame) {
                Ok(message) => {
                    debug_assert_eq!(self.state, ClientState::Ready);
                    self.record_seq(&message);
                    return Some(ClientEvent::Push(message));
                }
                Err(e) => self.fail_decode(e),
            }
            return self.events.pop_front();
        }
        // Everything received so far is handed out: one Ack covers it.
        self.acknowledge(ACK_EVERY);
        None
    }

    /// Hands back the group list of a push event the application is done with: the
    /// next event's list reuses its allocation instead of making a new one.
    pub fn recycle_groups(&mut self, groups: Vec<GroupId>) {
        if groups.capacity() <= MAX_SPARE_GROUPS && groups.capacity() > self.spare_groups.capacity()
        {
            self.spare_groups = groups;
        }
    }

    /// Whether the connection is over and all its bytes were handed out.
    pub fn is_finished(&self) -> bool {
        self.channel.is_finished()
    }

    /// Trusts the server: the Hello (with the credentials) is queued.
    pub fn accept_server(&mut self) -> Result<(), ClientError> {
        if self.state != ClientState::AwaitingServerDecision {
            return Err(ClientError::NoDecisionPending);
        }
        self.send_hello();
        Ok(())
    }

    /// Distrusts the server: close_notify, then closed. No Hello is ever sent.
    pub fn reject_server(&mut self) -> Result<(), ClientError> {
        if self.state != ClientState::AwaitingServerDecision {
            return Err(ClientError::NoDecisionPending);
        }
        let verdict = self.verdict.clone().unwrap_or(Verdict::Verified);
        self.channel.finish(CloseReason::ServerRejected { verdict });
        self.after_input();
        Ok(())
    }

    /// Sends a request; its outcome arrives as exactly one event.
    pub fn request(&mut self, method_id: u32, payload: Bytes) -> Result<u64, ClientError> {
        self.check_ready()?;
        if self.outstanding_requests() >= self.config.max_outstanding_requests {
            return Err(ClientError::TooManyRequests(self.outstanding_requests()));
        }
        let request_id = self.outstanding.allocate_id();
        let message = Message::Request(Request {
            request_id,
            method_id,
            payload,
        });
        self.check_size(&message)?;
        match &mut self.batch {
            Some(batch) => {
                let start = batch.frames.len();
                message.encode(&mut batch.frames);
                batch.requests.push(BatchedRequest {
                    id: request_id,
                    frame: (start, batch.frames.len()),
                });
            }
            None => {
                self.channel.send(&message);
                self.outstanding.push(request_id);
            }
        }
        Ok(request_id)
    }

    /// Sends a push command; returns its command id (echoed in PushRejected,
    /// UserMessageDelivered and GroupList).
    pub fn push(&mut self, command: PushCommand) -> Result<u64, ClientError> {
        self.check_ready()?;
        self.next_command_id += 1;
        let mut message = command.into_message(self.next_command_id);
        self.compress_message(&mut message);
        self.check_size(&message)?;
        match &mut self.batch {
            Some(batch) => message.encode(&mut batch.frames),
            None => self.channel.send(&message),
        }
        Ok(self.next_command_id)
    }

    /// Publishes `payload` to `groups`: what [`push`](Self::push) does with a
    /// [`PushCommand::Publish`], from borrowed parts (no command to build, no group
    /// list to allocate). Returns the command id.
    pub fn publish(&mut self, groups: &[GroupId], payload: &[u8]) -> Result<u64, ClientError> {
        self.check_ready()?;
        self.next_command_id += 1;
        let command_id = self.next_command_id;
        // The header and fields are encoded aside and checked; then they and the
        // payload are queued as they are (the payload is not copied twice).
        let compression = self.compress(payload);
        let payload: &[u8] = match compression {
            Some(_) => &self.packed,
            None => payload,
        };
        self.scratch.clear();
        let prefix = encode_publish_prefix(
            &mut self.scratch,
            command_id,
            groups,
            compression,
            payload.len(),
        );
        let size = prefix + payload.len() - 4;
        if size > self.server_max_frame as usize {
            return Err(ClientError::TooLarge {
                size,
                max: self.server_max_frame,
            });
        }
        match &mut self.batch {
            Some(batch) => {
                batch.frames.extend_from_slice(&self.scratch);
                batch.frames.extend_from_slice(payload);
            }
            None => {
                self.channel.send_encoded(&self.scratch);
                self.channel.send_encoded(payload);
            }
        }
        Ok(command_id)
    }

    /// Whether this connection compresses outgoing payloads of `len` bytes: it
    /// negotiated version 3 (so the server accepts them), compression is enabled,
    /// and the payload is at least the threshold.
    fn compresses(&self, len: usize) -> bool {
        let policy = self.config.compression;
        policy.enabled
            && len >= policy.threshold
            && self.welcome.as_ref().is_some_and(|w| w.version >= 3)
    }

    /// Compresses `payload` into `self.packed` when this connection compresses it
    /// and the compressed form, header included, is smaller; the header to send, or
    /// `None` to send the payload plain.
    fn compress(&mut self, payload: &[u8]) -> Option<Compression> {
        if !self.compresses(payload.len()) {
            return None;
        }
        let compression = compress_into(CompressionAlgorithm::Lz4Block, payload, &mut self.packed)?;
        (COMPRESSION_HEADER_LEN + self.packed.len() < payload.len()).then_some(compression)
    }

    /// Compresses the payload of a Publish or SendUserMessage, as
    /// [`compress`](Self::compress) decides.
    fn compress_message(&mut self, message: &mut Message) {
        let (payload, compression) = match message {
            Message::Publish(m) => (&mut m.payload, &mut m.compression),
            Message::SendUserMessage(m) => (&mut m.payload, &mut m.compression),
            _ => return,
        };
        if let Some(c) = self.compress(payload) {
            *payload = Bytes::copy_from_slice(&self.packed);
            *compression = Some(c);
        }
    }

    /// Decompresses the payload of a Published or UserMessage that came compressed,
    /// before the application sees it (its payload is then byte-identical to the one
    /// published). A compressed payload is a protocol error on a connection below
    /// version 3 or when the Hello did not ask for them, and so is one that does not
    /// decompress to its declared size or declares more than the frame limit.
    fn open_payload(&self, message: &mut Message) -> Result<(), ProtocolError> {
        let kind = message.kind();
        let (payload, compression) = match message {
            Message::Published(m) => (&mut m.payload, &mut m.compression),
            Message::UserMessage(m) => (&mut m.payload, &mut m.compression),
            _ => return Ok(()),
        };
        let Some(c) = *compression else {
            return Ok(());
        };
        let name = crate::server::compressed_name(kind);
        if self.welcome.as_ref().is_none_or(|w| w.version < 3) {
            return Err(ProtocolError::Unexpected {
                message: name,
                context: "on a connection of protocol version 1 or 2",
            });
        }
        if !self.config.options.compression {
            return Err(ProtocolError::Unexpected {
                message: name,
                context: "although the Hello did not ask for compressed payloads",
            });
        }
        let limit = self.config.limits.max_frame_size() as usize;
        *payload = decompress(c, payload, limit)?;
        *compression = None;
        Ok(())
    }

    /// Whether a batch is open (its commands wait for the commit).
    pub fn in_batch(&self) -> bool {
        self.batch.is_some()
    }

    /// Whether the server confirms the push commands it ran with
    /// [`ClientEvent::Taken`] (protocol version 2 and later).
    pub fn confirms_push_commands(&self) -> bool {
        self.welcome.as_ref().is_some_and(|w| w.version >= 2)
    }

    /// Holds requests and push commands until [`commit_batch`](Self::commit_batch).
    pub fn start_batch(&mut self) -> Result<(), ClientError> {
        self.check_ready()?;
        if self.batch.is_some() {
            return Err(ClientError::BatchOpen);
        }
        self.batch = Some(Batch {
            frames: BytesMut::new(),
            requests: Vec::new(),
        });
        Ok(())
    }

    /// Sends the batch as one transmit. With `server_batching` the server returns the
    /// batch's results together.
    pub fn commit_batch(&mut self, server_batching: bool) -> Result<(), ClientError> {
        self.check_ready()?;
        let batch = self.batch.take().ok_or(ClientError::NoBatch)?;
        self.channel.send(&Message::BatchBegin(BatchBegin));
        self.channel.send_encoded(&batch.frames);
        self.channel
            .send(&Message::BatchCommit(BatchCommit { server_batching }));
        for id in batch.request_ids() {
            self.outstanding.push(id);
        }
        Ok(())
    }

    /// Drops the batch; each of its requests ends as aborted.
    pub fn abort_batch(&mut self) -> Result<(), ClientError> {
        let batch = self.batch.take().ok_or(ClientError::NoBatch)?;
        // Events keep their order: what was received before comes out first.
        self.decode_deferred();
        for request_id in batch.request_ids() {
            self.events.push_back(ClientEvent::RequestAborted {
                request_id,
                reason: AbortReason::BatchAborted,
            });
        }
        Ok(())
    }

    /// Cancels request `request_id` (SocketPro's `Cancel`). Whatever the outcome,
    /// the request still ends with exactly one event: see [`CancelOutcome`] for
    /// which. Results of other requests keep their order.
    pub fn cancel(&mut self, request_id: u64) -> CancelOutcome {
        if self.state == ClientState::Closed {
            return CancelOutcome::NotOutstanding;
        }
        if self.batch.as_mut().is_some_and(|b| b.remove(request_id)) {
            self.decode_deferred();
            self.events.push_back(ClientEvent::RequestAborted {
                request_id,
                reason: AbortReason::Cancelled,
            });
            return CancelOutcome::RemovedFromBatch;
        }
        if self.welcome.as_ref().is_some_and(|w| w.version >= 3) {
            return match self.outstanding.cancel_on_server(request_id) {
                Cancelling::Send => {
                    self.channel.send(&Message::Cancel(Cancel { request_id }));
                    CancelOutcome::SentToServer
                }
                Cancelling::AlreadyAsked => CancelOutcome::AlreadySent,
                Cancelling::Unknown => CancelOutcome::NotOutstanding,
            };
        }
        if !self.outstanding.end_locally(request_id) {
            return CancelOutcome::NotOutstanding;
        }
        self.decode_deferred();
        self.events.push_back(ClientEvent::RequestAborted {
            request_id,
            reason: AbortReason::Cancelled,
        });
        CancelOutcome::EndedLocally
    }

    /// Closes the connection with a Close message, then close_notify.
    pub fn close(&mut self, code: CloseCode, reason: impl Into<Text>) {
        self.channel.close_local(code, reason.into());
        self.after_input();
    }

    fn check_ready(&self) -> Result<(), ClientError> {
        match self.state {
            ClientState::Ready if !self.channel.is_closing() => Ok(()),
            ClientState::Closed => Err(ClientError::Closed),
            _ if self.channel.is_closing() => Err(ClientError::Closed),
            _ => Err(ClientError::NotReady),
        }
    }

    fn check_size(&self, message: &Message) -> Result<(), ClientError> {
        let size = message.frame_size();
        if size > self.server_max_frame as usize {
            return Err(ClientError::TooLarge {
                size,
                max: self.server_max_frame,
            });
        }
        Ok(())
    }

    fn send_hello(&mut self) {
        let hello = Hello {
            min_version: *SUPPORTED_VERSIONS.start(),
            max_version: self
                .config
                .max_version
                .clamp(*SUPPORTED_VERSIONS.start(), PROTOCOL_VERSION),
            service_id: self.config.service_id,
            options: self.config.options,
            user_id: self.config.user_id.clone(),
            password: self.config.password.clone(),
            resume: self.config.resume,
            // Version 4: what this client accepts (left off the wire when it asks
            // for an earlier version).
            max_frame_size: Some(self.config.limits.max_frame_size()),
        };
        self.channel.send(&Message::Hello(hello));
        self.state = ClientState::HelloSent;
    }

    /// Advances the lifecycle after new input: server authentication once TLS is up,
    /// then every decoded frame.
    fn after_input(&mut self) {
        if self.state == ClientState::Handshaking && self.channel.link.status().ready {
            self.authenticate_server();
        }
        while let Some(frame) = self.channel.next_frame() {
            if self.state == ClientState::Ready && is_push_event(frame.kind) {
                self.deferred.push_back(frame);
            } else {
                // Anything else may change the state: handled in order, after the
                // events received before it.
                self.decode_deferred();
                self.decode(frame);
            }
        }
        let link = self.channel.link.status();
        if self.channel.is_closing() || link.closed || link.peer_closed {
            // The end is near: what arrived before it is decoded now, as it would
            // have been on arrival (a bad frame still closes with a protocol error,
            // and the Closed event comes after every event).
            self.decode_deferred();
        }
        self.channel.check_peer_closed();
        if self.state != ClientState::Closed {
            if let Some(reason) = self.channel.take_close_reason() {
                self.state = ClientState::Closed;
                let batched: Vec<u64> = self
                    .batch
                    .take()
                    .map(|b| b.request_ids().collect())
                    .unwrap_or_default();
                for request_id in self.outstanding.drain().chain(batched) {
                    self.events.push_back(ClientEvent::RequestAborted {
                        request_id,
                        reason: AbortReason::ConnectionLost(reason.clone()),
                    });
                }
                self.events.push_back(ClientEvent::Closed(reason));
            }
        }
    }

    fn decode(&mut self, frame: RawFrame) {
        match self.decode_frame(frame) {
            Ok(message) => self.handle_message(message),
            Err(e) => self.fail_decode(e),
        }
    }

    /// Decodes a frame, a push event's group list reusing the spare storage, and
    /// decompresses a payload that came compressed.
    fn decode_frame(&mut self, frame: RawFrame) -> Result<Message, ProtocolError> {
        let mut message = frame.decode_reusing(&mut self.spare_groups)?;
        self.open_payload(&mut message)?;
        Ok(message)
    }

    fn fail_decode(&mut self, e: ProtocolError) {
        self.channel.close_with(CloseReason::Protocol(e));
        // Nothing after a bad frame is read, as if it had closed on arrival.
        self.deferred.clear();
    }

    fn decode_deferred(&mut self) {
        while let Some(frame) = self.deferred.pop_front() {
            self.decode(frame);
        }
    }

    fn authenticate_server(&mut self) {
        let Some(tls) = &self.tls else {
            return;
        };
        let Some(session) = self.channel.link.client_session() else {
            return;
        };
        let certs = session.peer_certificates().unwrap_or(&[]);
        let verdict = match certs.split_first() {
            None => Verdict::Failed(rustls::Error::NoCertificatesPresented),
            Some((end_entity, intermediates)) => match tls.verifier.verify_server_cert(
                end_entity,
                intermediates,
                &tls.server_name,
                &[],
                self.wall_clock,
            ) {
                Ok(_) => Verdict::Verified,
                Err(e) => Verdict::Failed(e),
            },
        };
        let info = ServerAuthentication {
            chain: certs
                .iter()
                .filter_map(|c| CertificateInfo::parse(c).ok())
                .collect(),
            verdict: verdict.clone(),
            protocol_version: session
                .protocol_version()
                .map_or_else(String::new, |v| format!("{v:?}")),
            cipher_suite: session
                .negotiated_cipher_suite()
                .map_or_else(String::new, |s| format!("{:?}", s.suite())),
            server_name: tls.server_name.to_str().into_owned(),
        };
        self.verdict = Some(verdict.clone());
        self.state = ClientState::AwaitingServerDecision;
        self.events
            .push_back(ClientEvent::ServerAuthenticated(info));
        if self.config.server_auth == ServerAuthMode::Automatic {
            let decided = if verdict.is_verified() {
                self.accept_server()
            } else {
                self.reject_server()
            };
            debug_assert!(decided.is_ok());
        }
    }

    fn handle_message(&mut self, message: Message) {
        let kind = message.kind();
        match (self.state, message) {
            (_, Message::Ping(ping)) => self
                .channel
                .send(&Message::Pong(Pong { nonce: ping.nonce })),
            (_, Message::Pong(_)) => {}
            (_, Message::Close(close)) => self.channel.finish(CloseReason::Remote {
                code: close.code,
                reason: close.reason,
            }),
            (ClientState::HelloSent, Message::Welcome(welcome)) => {
                let Ok(server_limits) = FrameLimits::new(welcome.max_frame_size) else {
                    return self.channel.close_with(CloseReason::Protocol(
                        ProtocolError::Unexpected {
                            message: "Welcome",
                            context: "with a frame limit outside the protocol's range",
                        },
                    ));
                };
                if !SUPPORTED_VERSIONS.contains(&welcome.version)
                    || welcome.version > self.config.max_version
                {
                    return self.channel.close_with(CloseReason::Protocol(
                        ProtocolError::Unexpected {
                            message: "Welcome",
                            context: "with a version the client did not offer",
                        },
                    ));
                }
                self.state = ClientState::Ready;
                self.deadline = None;
                self.server_max_frame = server_limits.max_frame_size();
                if welcome.version >= 4 {
                    // Follow the server's timing (its idle timeout came in version 4).
                    let ms = |ms: u32| (ms > 0).then(|| Duration::from_millis(ms.into()));
                    let keepalive = self
                        .config
                        .keepalive
                        .following(ms(welcome.ping_interval_ms), ms(welcome.idle_timeout_ms));
                    self.channel.set_keepalive(keepalive);
                }
                self.channel.start_keepalive_now();
                // The handshake is over: its buffers are not needed by an idle
                // connection.
                self.channel.release_after_flush();
                if !welcome.resumed {
                    // A new session numbers its events from 1 again.
                    self.last_seq = 0;
                    self.acked = 0;
                }
                self.welcome = Some(welcome.clone());
                self.events.push_back(ClientEvent::Ready(welcome));
            }
            (ClientState::HelloSent, Message::Refused(refused)) => {
                self.channel.finish(CloseReason::Refused {
                    code: refused.code,
                    reason: refused.reason,
                });
            }
            (ClientState::Ready, Message::Response(r)) => {
                if self.complete(r.request_id) {
                    self.events.push_back(ClientEvent::Response {
                        request_id: r.request_id,
                        payload: r.payload,
                    });
                }
            }
            (ClientState::Ready, Message::ServerError(e)) => {
                if self.complete(e.request_id) {
                    self.events.push_back(ClientEvent::ServerError {
                        request_id: e.request_id,
                        code: e.code,
                        message: e.message,
                    });
                }
            }
            (
                ClientState::Ready,
                m @ (Message::Subscribed(_)
                | Message::Unsubscribed(_)
                | Message::Published(_)
                | Message::UserMessage(_)
                | Message::Gap(_)
                | Message::SessionLost(_)
                | Message::PushRejected(_)
                | Message::UserMessageDelivered(_)
                | Message::GroupList(_)),
            ) => {
                self.record_seq(&m);
                self.events.push_back(ClientEvent::Push(m));
            }
            (ClientState::Ready, Message::PushTaken(taken))
                if self.welcome.as_ref().is_some_and(|w| w.version >= 2) =>
            {
                self.events.push_back(ClientEvent::Taken {
                    command_id: taken.command_id,
                });
            }
            (state, _) => {
                self.channel
                    .close_with(CloseReason::Protocol(ProtocolError::Unexpected {
                        message: kind_name(kind),
                        context: match state {
                            ClientState::Ready => "from the server after Welcome",
                            _ => "from the server before Welcome",
                        },
                    }))
            }
        }
    }

    /// Notes the sequence number a push event carries (or a Gap covers).
    fn record_seq(&mut self, m: &Message) {
        let seq = match m {
            Message::Subscribed(e) => e.seq,
            Message::Unsubscribed(e) => e.seq,
            Message::Published(e) => e.seq,
            Message::UserMessage(e) => e.seq,
            Message::Gap(g) => g.last,
            _ => return,
        };
        self.last_seq = self.last_seq.max(seq);
    }

    fn complete(&mut self, request_id: u64) -> bool {
        match self.outstanding.complete(request_id) {
            Ok(wanted) => wanted,
            Err(e) => {
                self.channel.close_with(CloseReason::Protocol(e));
                false
            }
        }
    }
}

/// Messages whose handling, once the connection is ready, only records the sequence
/// number and queues a [`ClientEvent::Push`]: they can wait in `deferred`.
fn is_push_event(kind: MessageKind) -> bool {
    matches!(
        kind,
        MessageKind::Subscribed
            | MessageKind::Unsubscribed
            | MessageKind::Published
            | MessageKind::UserMessage
            | MessageKind::Gap
            | MessageKind::SessionLost
            | MessageKind::PushRejected
            | MessageKind::UserMessageDelivered
            | MessageKind::GroupList
    )
}

fn kind_name(kind: MessageKind) -> &'static str {
    kind.name()
}
