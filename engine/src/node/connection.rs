//! The per-connection half of the server node: one value per accepted transport,
//! owned by that connection's driver (its task), never by the node.

use super::mailbox::{Alert, Mailbox};
use super::NodeConfig;
use crate::close::{CloseReason, ProtocolError};
use crate::hub::ConnectionId;
use crate::rpc::RequestResult;
use crate::server::{AuthRequest, ServerConnection, ServerEvent, ServerState};
use crate::tls::TlsError;
use bytes::Bytes;
use pushwire_protocol::{CloseCode, CompressionError, Message, RefuseCode, Text};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

/// What an authenticated connection is in the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its session (the hub's id for it; kept across resumes).
    pub session: ConnectionId,
    /// The authenticated user id.
    pub user_id: Text,
    /// The service it connected to.
    pub service_id: u32,
}

/// A push command waiting for the node.
#[derive(Debug)]
pub(super) struct Command {
    pub(super) message: Message,
    /// The plain payload of a command that came compressed, decompressed by the
    /// connection (see [`NodeConnection::open`]); `None` for a plain command and for
    /// one whose declared size is over the hub's limit (the hub refuses it).
    pub(super) opened: Option<Bytes>,
}

/// What a connection asks of its driver: the application's part.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectionEvent {
    /// A complete Hello. Ask the application's authenticator; then either
    /// [`NodeConnection::refuse`], or hand the request to
    /// [`Node::handle_hello`](super::Node::handle_hello) with a fresh resume token.
    Authenticate(Box<AuthRequest>),
    /// An RPC call: run the member's service and answer with
    /// [`NodeConnection::respond`], in any order.
    Request {
        /// Its id.
        request_id: u64,
        /// The method.
        method_id: u32,
        /// Arguments.
        payload: Bytes,
    },
    /// Version 3: the client cancelled a running request. Tell its handler (a
    /// cancellation token, say); it still answers the request once, with
    /// `ErrorCode::Cancelled` if it stopped, or its result. It can come for a
    /// request already answered (Request and Cancel arrived together): ignore it.
    CancelRequested {
        /// The request concerned.
        request_id: u64,
    },
    /// The connection is over (for the log). Keep transmitting until
    /// [`NodeConnection::is_finished`], then tell the node with
    /// [`Node::handle_connection_closed`](super::Node::handle_connection_closed).
    Closed(CloseReason),
}

/// One connection of a [`Node`](super::Node): its protocol engine
/// ([`ServerConnection`]: TLS, framing, the Hello, RPC ordering, keep-alive), its
/// mailbox of push frames from the node, and what it is in the node.
///
/// # Calling contract
///
/// The connection's driver owns this value; nothing else touches it except the node,
/// to which the driver lends it in [`Node::handle_hello`](super::Node::handle_hello),
/// [`Node::handle_connection`](super::Node::handle_connection) and
/// [`Node::handle_connection_closed`](super::Node::handle_connection_closed).
///
/// - Feed it bytes with [`handle_input`](Self::handle_input), EOF with
///   [`handle_transport_closed`](Self::handle_transport_closed), the time with
///   [`handle_timeout`](Self::handle_timeout) when [`poll_timeout`](Self::poll_timeout)
///   is due, and call [`handle_mailbox`](Self::handle_mailbox) when the waker given
///   to [`new`](Self::new) fires (the node wakes it when it queued frames or closed
///   the mailbox).
/// - After any of these, drain [`poll_event`](Self::poll_event); then, if
///   [`wants_node`](Self::wants_node), lend it to
///   [`Node::handle_connection`](super::Node::handle_connection) (push commands and
///   acknowledgements go to the hub there).
/// - Whenever the transport can take more, call
///   [`poll_transmit`](Self::poll_transmit) and write what it appends; it takes the
///   mailbox's frames then. Report each write with
///   [`handle_written`](Self::handle_written). Call it only when the transport has room: a client that
///   does not read leaves its backlog in the bounded mailbox, where the
///   slow-consumer policy sees it.
/// - When [`is_finished`](Self::is_finished) and everything was written, or at once
///   when [`is_abandoned`](Self::is_abandoned), close the transport and lend it to
///   [`Node::handle_connection_closed`](super::Node::handle_connection_closed) once.
pub struct NodeConnection {
    pub(super) engine: ServerConnection,
    pub(super) config: Arc<NodeConfig>,
    pub(super) mailbox: Arc<Mailbox>,
    pub(super) member: Option<Member>,
    /// Push commands waiting for the node (for its lock, or, while flow control
    /// holds this connection, for its receivers to drain).
    pub(super) to_node: VecDeque<Command>,
    /// Compressed payloads decompressed here, and the bytes they gave, not yet added
    /// to the node's statistics.
    pub(super) decompressed: (u64, u64),
    /// The highest push-event sequence number the client acknowledged, not yet
    /// given to the hub (acknowledgements are cumulative: only the latest counts).
    pub(super) acked: Option<u64>,
    /// Flow control: the mailbox was congested and is now at or under its low-water
    /// mark; the node releases the connections held back for it.
    pub(super) drained: bool,
    /// The publish rate limit's bucket; `None` without a limit.
    pub(super) publish_bucket: Option<super::TokenBucket>,
    pub(super) close_reason: Option<CloseReason>,
    /// Whether the node was told this connection is over.
    pub(super) left: bool,
    /// The mailbox's alert was acted on.
    alert_handled: bool,
    /// After the node closed this connection: when its transport is dropped even if
    /// the Close could not be written (a peer that does not read).
    give_up: Option<Instant>,
    abandoned: bool,
    /// A timer fired or the handshake ended: once nothing is left to write, buffers
    /// go back (never per message, so a busy connection keeps what it grew).
    idle_pending: bool,
}

impl NodeConnection {
    /// A connection accepted at `now` from `peer`. `waker` is woken whenever the node
    /// queued frames for it or closed its mailbox.
    pub fn new(
        config: Arc<NodeConfig>,
        peer: SocketAddr,
        now: Instant,
        waker: Waker,
    ) -> Result<Self, TlsError> {
        let engine = ServerConnection::new(config.server.clone(), peer, now)?;
        let mailbox = Arc::new(Mailbox::new(
            config.max_outbound_bytes,
            config.slow_consumer_policy,
            waker,
        ));
        let publish_bucket = config
            .publish_rate
            .map(|limit| super::TokenBucket::new(limit, now));
        Ok(Self {
            engine,
            config,
            mailbox,
            member: None,
            to_node: VecDeque::new(),
            decompressed: (0, 0),
            acked: None,
            drained: false,
            publish_bucket,
            close_reason: None,
            left: false,
            alert_handled: false,
            give_up: None,
            abandoned: false,
            idle_pending: false,
        })
    }

    /// The protocol engine (state, counters).
    pub fn server_connection(&self) -> &ServerConnection {
        &self.engine
    }

    /// Where the protocol engine is.
    pub fn state(&self) -> ServerState {
        self.engine.state()
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.engine.peer()
    }

    /// What it is in the node, once authenticated.
    pub fn member(&self) -> Option<&Member> {
        self.member.as_ref()
    }

    /// Feeds bytes received from the transport.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        self.engine.handle_input(now, data);
    }

    /// The transport ended or failed.
    pub fn handle_transport_closed(&mut self) {
        self.engine.handle_transport_closed();
    }

    /// Fires the timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.handle_mailbox(now);
        if self.give_up.is_some_and(|t| t <= now) {
            self.abandoned = true;
        }
        if self.engine.poll_timeout().is_some_and(|t| t <= now) {
            self.engine.handle_timeout(now);
            // With keep-alive a timer is nothing sent for a ping interval: idle.
            self.idle_pending = true;
        }
    }

    /// The next time [`handle_timeout`](Self::handle_timeout) must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.abandoned {
            return None;
        }
        match (self.engine.poll_timeout(), self.give_up) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Acts on what the node put in the mailbox besides frames: a connection whose
    /// session was resumed elsewhere closes with `Kicked`; a slow consumer (under the
    /// disconnect policy) closes with `SlowConsumer`, its session kept for a resume.
    /// Either way the peer gets the node's close grace to take the Close.
    pub fn handle_mailbox(&mut self, now: Instant) {
        if self.alert_handled {
            return;
        }
        let Some(alert) = self.mailbox.lock().alert() else {
            return;
        };
        self.alert_handled = true;
        match alert {
            Alert::Superseded => self.engine.close(
                CloseCode::Kicked,
                "the session was resumed on another connection",
            ),
            Alert::SlowConsumer => self.engine.close(
                CloseCode::SlowConsumer,
                "outbound queue over its limit; resume to catch up",
            ),
            Alert::Stalled => self.engine.close(
                CloseCode::SlowConsumer,
                "took nothing from its queue for the flow control's grace; resume to catch up",
            ),
        }
        self.give_up = Some(now + self.config.close_grace);
    }

    /// The next event for the driver. Push commands and acknowledgements do not come
    /// out here: they wait for [`Node::handle_connection`](super::Node::handle_connection).
    pub fn poll_event(&mut self) -> Option<ConnectionEvent> {
        while let Some(event) = self.engine.poll_event() {
            match event {
                ServerEvent::Authenticate(request) => {
                    return Some(ConnectionEvent::Authenticate(Box::new(request)))
                }
                ServerEvent::Request {
                    request_id,
                    method_id,
                    payload,
                } => {
                    return Some(ConnectionEvent::Request {
                        request_id,
                        method_id,
                        payload,
                    })
                }
                ServerEvent::CancelRequested { request_id } => {
                    return Some(ConnectionEvent::CancelRequested { request_id })
                }
                ServerEvent::Push(command) => {
                    if self.member.is_some() {
                        match self.open(command) {
                            Ok(command) => self.to_node.push_back(command),
                            // What the client sent after it is dropped with it; the
                            // Closed event comes next.
                            Err(e) => self.engine.fail(ProtocolError::Compression(e)),
                        }
                    }
                }
                ServerEvent::Acknowledged(seq) => {
                    if self.member.is_some() {
                        self.acked = Some(self.acked.map_or(seq, |a| a.max(seq)));
                    }
                }
                ServerEvent::Closed(reason) => {
                    self.close_reason = Some(reason.clone());
                    return Some(ConnectionEvent::Closed(reason));
                }
            }
        }
        None
    }

    /// Decompresses the compressed payload of a Publish or SendUserMessage once, here
    /// on the connection's own task rather than under the node's lock, so the hub's
    /// hooks and the receivers that do not accept compressed payloads get it plain.
    /// A declared size over the hub's payload limit is left for the hub to refuse
    /// (`PayloadTooLarge`; nothing is allocated for it); data that does not
    /// decompress to its declared size is an error that closes the connection.
    fn open(&mut self, message: Message) -> Result<Command, CompressionError> {
        let (compression, data) = match &message {
            Message::Publish(m) => (m.compression, &m.payload),
            Message::SendUserMessage(m) => (m.compression, &m.payload),
            _ => (None, &Bytes::new()),
        };
        let limit = self.config.hub.max_payload_bytes;
        let opened = match compression {
            Some(c) if c.original_len as usize <= limit => {
                let plain = pushwire_protocol::decompress(c, data, limit)?;
                self.decompressed.0 += 1;
                self.decompressed.1 += plain.len() as u64;
                Some(plain)
            }
            _ => None,
        };
        Ok(Command { message, opened })
    }

    /// Whether the driver should read from the transport. `false` while the node's
    /// flow control holds this connection back because receivers of what it sends
    /// are congested: not reading lets TCP slow the client down. Timers, the mailbox
    /// and writes go on meanwhile.
    pub fn wants_input(&self) -> bool {
        !self.mailbox.is_held()
    }

    /// Whether push commands or acknowledgements wait for
    /// [`Node::handle_connection`](super::Node::handle_connection). Push commands of
    /// a connection that flow control holds back wait until it is released (its
    /// waker fires then), so they do not count while it is held.
    pub fn wants_node(&self) -> bool {
        self.acked.is_some()
            || self.drained
            || (!self.to_node.is_empty() && !self.mailbox.is_held())
    }

    /// The application refused the Hello: Refused, then close.
    pub fn refuse(&mut self, code: RefuseCode, reason: impl Into<Text>) {
        self.engine.refuse(code, reason);
    }

    /// The protocol version negotiated in the Hello; see [`ServerConnection::version`].
    pub fn version(&self) -> u16 {
        self.engine.version()
    }

    /// Answers a request; see [`ServerConnection::respond`].
    pub fn respond(&mut self, request_id: u64, result: RequestResult) -> bool {
        self.engine.respond(request_id, result)
    }

    /// Closes with a Close message, then close_notify (a server shutting down uses
    /// `GoingAway`, which ends the session rather than keeping it for a resume).
    pub fn close(&mut self, code: CloseCode, reason: impl Into<Text>) {
        self.engine.close(code, reason);
    }

    /// Appends bytes to send to `out` (taking the mailbox's frames first); returns
    /// how many.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> usize {
        self.handle_mailbox(now);
        if self.member.is_some() {
            let (frames, drained) = {
                let mut mailbox = self.mailbox.lock();
                let frames = mailbox.take_frames();
                if frames.is_some() {
                    mailbox.note_progress(now);
                }
                let low_water = self.config.flow_control.map_or(0, |f| f.low_water);
                let drained = mailbox.is_congested() && mailbox.queue().bytes() <= low_water;
                if drained {
                    self.mailbox.set_congested(&mut mailbox, false);
                }
                (frames, drained)
            };
            if let Some(frames) = frames {
                self.engine.send_encoded_buffer(frames);
            }
            self.drained |= drained;
        }
        self.engine.poll_transmit(now, out)
    }

    /// The transport took `bytes` of what [`poll_transmit`](Self::poll_transmit)
    /// appended (call it after every write that took some). Under flow control this
    /// is the receiver's progress: a congested receiver whose transport keeps taking
    /// bytes, however slowly, is never handed to the slow-consumer policy by the
    /// grace, which runs from its last progress. A driver that does not report
    /// writes makes only whole takes of the mailbox count.
    pub fn handle_written(&mut self, now: Instant, bytes: usize) {
        if bytes > 0 {
            self.mailbox.note_progress(now);
        }
    }

    /// Called after a [`poll_transmit`](Self::poll_transmit) that appended nothing:
    /// whether the connection just went idle (its handshake ended, or a timer fired,
    /// and nothing is left to send). The mailbox gives back its capacity then; the
    /// driver should give back its own buffers too.
    pub fn poll_idle(&mut self) -> bool {
        if !std::mem::take(&mut self.idle_pending) {
            return false;
        }
        self.mailbox.lock().release_idle_capacity();
        if self.to_node.is_empty() {
            self.to_node = VecDeque::new();
        }
        true
    }

    /// The handshake just ended (the node permitted the Hello).
    pub(super) fn mark_idle(&mut self) {
        self.idle_pending = true;
    }

    /// Whether the connection is over: everything it had to send was handed out, or
    /// it was [abandoned](Self::is_abandoned).
    pub fn is_finished(&self) -> bool {
        self.abandoned || self.engine.is_finished()
    }

    /// Whether the peer did not take its Close within the node's close grace: drop
    /// the transport now, written or not.
    pub fn is_abandoned(&self) -> bool {
        self.abandoned
    }

    /// Requests received and not yet answered and released.
    pub fn pending_requests(&self) -> usize {
        self.engine.pending_requests()
    }

    /// Bytes of buffer capacity held for this connection by its engine and mailbox
    /// (memory accounting).
    pub fn buffer_capacity(&self) -> usize {
        self.engine.buffer_capacity() + self.mailbox.lock().queue().capacity()
    }

    /// Frame bytes waiting in the mailbox.
    pub fn queued_bytes(&self) -> usize {
        self.mailbox.lock().queue().bytes()
    }

    /// Push events the drop-oldest policy dropped from this connection's mailbox.
    pub fn dropped_by_policy(&self) -> u64 {
        self.mailbox.lock().queue().dropped_total()
    }

    /// Injected fault: the n-th released result goes out twice.
    #[cfg(feature = "fault-injection")]
    pub fn inject_answer_twice(&mut self, n: u64) {
        self.engine.inject_answer_twice(n);
    }

    /// Drains what is left of the engine's events when the connection is over: push
    /// input still goes to the node, the close reason is kept, the rest is moot.
    pub(super) fn drain_for_close(&mut self) {
        while self.poll_event().is_some() {}
    }
}
