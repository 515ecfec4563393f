//! The server end of a connection: TLS, the Hello under a deadline, the
//! application's authentication decision, then RPC and push.

use crate::channel::{Channel, KeepAlive};
use crate::close::{CloseReason, ProtocolError, TimeoutKind};
use crate::rpc::{
    CancelEffect, RequestResult, ResultQueue, DEFAULT_MAX_OUTSTANDING_REQUESTS,
    DEFAULT_MAX_RUNNING_REQUESTS,
};
use crate::tls::{CertificateInfo, TlsError, TlsLink};
use crate::web::WebConfig;
use bytes::{Bytes, BytesMut};
use pushwire_protocol::{
    negotiate_version, ClientOptions, CloseCode, FrameLimits, Hello, Message, Pong, RawFrame,
    RefuseCode, Refused, ResumeRequest, ResumeToken, Text, Welcome, HARD_MAX_FRAME_SIZE,
    MIN_MAX_FRAME_SIZE, PROTOCOL_VERSION, SUPPORTED_VERSIONS,
};
use rustls::server::UnbufferedServerConnection;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::{Zeroize, Zeroizing};

/// Encryption of the server's connections.
#[derive(Debug, Clone)]
pub enum ServerTransport {
    /// TLS with this rustls configuration (see [`crate::tls::server_tls_config`]).
    Tls(Arc<rustls::ServerConfig>),
    /// No encryption: an explicit opt-in for trusted networks and benchmarks.
    Plaintext,
}

/// Settings shared by all of a server's connections.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// TLS or explicit plaintext.
    pub transport: ServerTransport,
    /// Largest frame accepted from clients; announced in the Welcome.
    pub limits: FrameLimits,
    /// Time from accept until the Hello must be complete (TLS handshake included).
    pub hello_timeout: Duration,
    /// Keep-alive timing; the ping interval is announced in the Welcome, and from
    /// protocol version 4 the idle timeout too.
    pub keepalive: KeepAlive,
    /// Bound on requests a client may have outstanding.
    pub max_outstanding_requests: usize,
    /// Bound on a client's requests that run at once; later ones wait, in order,
    /// and a Cancel drops them before they start.
    pub max_running_requests: usize,
    /// Highest protocol version this server agrees to (default: the highest it
    /// speaks); a lower value makes it behave as an older server, for mixed-version
    /// deployments and tests.
    pub max_version: u16,
    /// Browsers: accept WebSocket upgrades (and serve the configured pages) on this
    /// same port, told from native connections by their first byte (see
    /// [`crate::web`]). `None` (the default): off, and an HTTP request is a
    /// protocol error like any other bytes that are not a Hello.
    pub web: Option<Arc<WebConfig>>,
}

impl ServerConfig {
    /// Defaults for everything but the transport.
    pub fn new(transport: ServerTransport) -> Self {
        Self {
            transport,
            limits: FrameLimits::default(),
            hello_timeout: Duration::from_secs(10),
            keepalive: KeepAlive::default(),
            max_outstanding_requests: DEFAULT_MAX_OUTSTANDING_REQUESTS,
            max_running_requests: DEFAULT_MAX_RUNNING_REQUESTS,
            max_version: PROTOCOL_VERSION,
            web: None,
        }
    }
}

/// Where a server connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// TLS handshake under way.
    Handshaking,
    /// Waiting for the client's Hello.
    AwaitingHello,
    /// Waiting for the application to permit or refuse.
    Authenticating,
    /// Welcome sent: requests and push commands flow.
    Ready,
    /// Over; see the Closed event.
    Closed,
}

/// A client asks to be let in (the seed's `OnIsPermitted`).
#[derive(Debug, Clone, PartialEq)]
pub struct AuthRequest {
    /// The claimed user id.
    pub user_id: Text,
    /// The password. Its memory is wiped when the last copy is dropped; the engine
    /// drops its own at the decision.
    pub password: Bytes,
    /// The requested service.
    pub service_id: u32,
    /// The client's options.
    pub options: ClientOptions,
    /// A session the client wants to resume.
    pub resume: Option<ResumeRequest>,
    /// The negotiated protocol version.
    pub version: u16,
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's certificate, with mutual TLS.
    pub client_certificate: Option<CertificateInfo>,
}

/// The application's acceptance of a Hello: what goes into the Welcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Server-wide session id.
    pub session_id: u64,
    /// Resume secret (from a CSPRNG the application or shell provides).
    pub resume_token: ResumeToken,
    /// Whether the requested session was resumed.
    pub resumed: bool,
    /// How long a detached session is kept, in milliseconds (0: none).
    pub session_timeout_ms: u32,
    /// Push events kept for replay per session.
    pub replay_capacity: u32,
}

/// What the server engine reports to the application.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// A complete Hello: answer with [`ServerConnection::permit`] or
    /// [`ServerConnection::refuse`].
    Authenticate(AuthRequest),
    /// An RPC call to run: answer with [`ServerConnection::respond`], in any order.
    /// At most [`ServerConfig::max_running_requests`] of a connection are handed
    /// out unanswered; the next comes after an answer.
    Request {
        /// Its id.
        request_id: u64,
        /// The method.
        method_id: u32,
        /// Arguments.
        payload: Bytes,
    },
    /// Version 3: the client cancelled a running request. The application may stop
    /// it and answer `Cancelled` (or answer as usual); it still answers it once.
    /// It can come for a request the application has just answered (the Request
    /// and the Cancel arrived together): ignore it then.
    CancelRequested {
        /// The request concerned.
        request_id: u64,
    },
    /// A push command for the hub (Subscribe, Unsubscribe, Publish, SendUserMessage,
    /// ListGroups). On protocol version 3 a Publish or SendUserMessage may carry a
    /// compressed payload, as the client sent it: [`Hub::handle_command`] checks and
    /// decompresses it. (A compressed frame on an earlier version never gets here:
    /// this engine closes the connection for it.)
    ///
    /// [`Hub::handle_command`]: crate::hub::Hub::handle_command
    Push(Message),
    /// The client has every push event up to this sequence number.
    Acknowledged(u64),
    /// The connection is over. Always the last event.
    Closed(CloseReason),
}

/// The server end of one pushwire connection, as a state machine.
///
/// Calling contract (quinn-proto style): feed bytes with
/// [`handle_input`](Self::handle_input), expiry with
/// [`handle_timeout`](Self::handle_timeout), EOF with
/// [`handle_transport_closed`](Self::handle_transport_closed); after any call that
/// takes `&mut self`, drain [`poll_transmit`](Self::poll_transmit),
/// [`poll_event`](Self::poll_event) until `None`, and re-arm the timer from
/// [`poll_timeout`](Self::poll_timeout). Close the transport once
/// [`is_finished`](Self::is_finished).
pub struct ServerConnection {
    config: Arc<ServerConfig>,
    channel: Channel,
    state: ServerState,
    events: VecDeque<ServerEvent>,
    hello_deadline: Option<Instant>,
    peer: SocketAddr,
    version: u16,
    /// Version 4: the largest frame size the client accepts (its Hello's
    /// `max_frame_size`); `None` when it did not say (an earlier version).
    client_max_frame: Option<u32>,
    results: ResultQueue,
}

impl ServerConnection {
    /// A connection accepted at `now` from `peer`.
    pub fn new(
        config: Arc<ServerConfig>,
        peer: SocketAddr,
        now: Instant,
    ) -> Result<Self, TlsError> {
        let link = match &config.transport {
            ServerTransport::Tls(tls) => {
                TlsLink::server(UnbufferedServerConnection::new(tls.clone())?)
            }
            ServerTransport::Plaintext => TlsLink::plaintext(),
        };
        let mut channel = Channel::new(link, config.limits, config.keepalive, now);
        if let Some(web) = &config.web {
            channel.enable_web(web.clone(), config.limits.max_frame_size());
        }
        Ok(Self {
            hello_deadline: Some(now + config.hello_timeout),
            results: ResultQueue::new(config.max_outstanding_requests, config.max_running_requests),
            config,
            channel,
            state: ServerState::Handshaking,
            events: VecDeque::new(),
            peer,
            version: *SUPPORTED_VERSIONS.end(),
            client_max_frame: None,
        })
    }

    /// Where the connection is.
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The protocol version negotiated in the Hello (before it: the highest this
    /// server speaks).
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Version 4: the largest frame size (type byte plus body) the client accepts,
    /// from its Hello, within [`HARD_MAX_FRAME_SIZE`]; `None` when it did not
    /// announce one (a client of an earlier version). The engine replaces an RPC
    /// result over it by a ServerError (`ResultTooLarge`); whoever queues push frames
    /// for this client (the node's mailbox) must keep to it too.
    pub fn client_max_frame_size(&self) -> Option<u32> {
        self.client_max_frame
    }

    /// Feeds bytes received from the transport.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        self.channel.receive(now, data);
        self.advance();
    }

    /// The transport ended or failed.
    pub fn handle_transport_closed(&mut self) {
        self.channel.transport_closed();
        self.advance();
    }

    /// Fires timers whose time has come.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(deadline) = self.hello_deadline {
            if now >= deadline {
                self.hello_deadline = None;
                self.channel
                    .close_with(CloseReason::Timeout(TimeoutKind::Hello));
            }
        }
        if self.channel.handle_keepalive(now) {
            // Idle for a ping interval: the queues last used by a burst go too.
            self.release_idle_capacity();
        }
        self.advance();
    }

    /// Gives back the capacity of the engine's own queues when they are empty.
    fn release_idle_capacity(&mut self) {
        if self.events.is_empty() {
            self.events = VecDeque::new();
        }
        self.results.release_idle_capacity();
    }

    /// The next time [`handle_timeout`](Self::handle_timeout) must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == ServerState::Closed || self.channel.is_closing() {
            return None;
        }
        match (self.hello_deadline, self.channel.keepalive_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Appends bytes to send to `out`; returns how many.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> usize {
        let n = self.channel.poll_transmit(now, out);
        self.advance();
        n
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Whether the connection is over and all its bytes were handed out.
    pub fn is_finished(&self) -> bool {
        self.channel.is_finished()
    }

    /// Injected fault: the n-th released result goes out twice. Works only in debug
    /// builds; panics in others.
    #[cfg(feature = "fault-injection")]
    pub fn inject_answer_twice(&mut self, n: u64) {
        #[cfg(debug_assertions)]
        {
            self.results.answer_twice = Some((n, 0));
        }
        #[cfg(not(debug_assertions))]
        panic!("fault injection (answer {n} twice) works only in debug builds");
    }

    /// Requests received and not yet answered and released.
    pub fn pending_requests(&self) -> usize {
        self.results.len()
    }

    /// Application bytes received (after decryption) so far: 0 proves the client sent
    /// nothing beyond TLS itself.
    pub fn app_bytes_received(&self) -> u64 {
        self.channel.app_bytes_received()
    }

    /// Plaintext bytes queued for the next transmit (outbound accounting).
    pub fn queued_bytes(&self) -> usize {
        self.channel.queued()
    }

    /// Bytes of buffer capacity the engine holds for this connection, in use or not
    /// (memory accounting; rustls' own state is not counted). Buffers grown by the
    /// handshake or by a burst of traffic are given back once the connection is idle.
    pub fn buffer_capacity(&self) -> usize {
        self.channel.buffer_capacity()
            + self.events.capacity() * std::mem::size_of::<ServerEvent>()
            + self.results.capacity_bytes()
    }

    /// Lets the client in: sends the Welcome.
    pub fn permit(&mut self, grant: Grant) {
        if self.state != ServerState::Authenticating || self.channel.is_closing() {
            return;
        }
        let keepalive = self.config.keepalive;
        self.channel.send(&Message::Welcome(Welcome {
            version: self.version,
            session_id: grant.session_id,
            resume_token: grant.resume_token,
            resumed: grant.resumed,
            max_frame_size: self.config.limits.max_frame_size(),
            ping_interval_ms: keepalive
                .ping_interval
                .map_or(0, |d| d.as_millis().min(u32::MAX as u128) as u32),
            session_timeout_ms: grant.session_timeout_ms,
            replay_capacity: grant.replay_capacity,
            // Sent from version 4 only (the encoder leaves it out before).
            idle_timeout_ms: keepalive
                .idle_timeout
                .map_or(0, |d| d.as_millis().clamp(1, u32::MAX as u128) as u32),
        }));
        self.state = ServerState::Ready;
        self.channel.start_keepalive_now();
        // The handshake is over: what it grew (the events queue held the Hello's
        // AuthRequest, the channel the TLS flight) is not needed by an idle
        // connection.
        self.channel.release_after_flush();
        self.release_idle_capacity();
    }

    /// Keeps the client out: sends Refused, then closes.
    pub fn refuse(&mut self, code: RefuseCode, reason: impl Into<Text>) {
        if self.state != ServerState::Authenticating {
            return;
        }
        self.refuse_now(code, reason.into());
    }

    fn refuse_now(&mut self, code: RefuseCode, reason: Text) {
        let reason = crate::channel::clamp_text(reason);
        self.channel.send(&Message::Refused(Refused {
            code,
            reason: reason.clone(),
        }));
        self.channel.finish_after_queued(CloseReason::Local {
            code: CloseCode::Normal,
            reason: Text::from(format!("refused: {reason}")),
        });
        self.advance();
    }

    /// Answers a request. Results leave in request order; returns false when the
    /// request is unknown or already answered.
    pub fn respond(&mut self, request_id: u64, result: RequestResult) -> bool {
        if self.state == ServerState::Closed || !self.results.answer(request_id, result) {
            return false;
        }
        self.release_results();
        self.start_calls();
        true
    }

    /// Queues a push event (or any server message) for this client.
    pub fn send(&mut self, message: &Message) {
        if self.state == ServerState::Ready {
            self.channel.send(message);
        }
    }

    /// Queues already-encoded frames (for example a publication encoded once for many
    /// receivers).
    pub fn send_encoded(&mut self, frames: &[u8]) {
        if self.state == ServerState::Ready {
            self.channel.send_encoded(frames);
        }
    }

    /// Like [`ServerConnection::send_encoded`], taking the buffer (an
    /// [`OutboundQueue::take_frames`](crate::hub::OutboundQueue::take_frames)): when
    /// nothing else is queued it is sent from without a copy.
    pub fn send_encoded_buffer(&mut self, frames: bytes::BytesMut) {
        if self.state == ServerState::Ready {
            self.channel.send_encoded_buffer(frames);
        }
    }

    /// Closes with a Close message, then close_notify.
    pub fn close(&mut self, code: CloseCode, reason: impl Into<Text>) {
        self.channel.close_local(code, reason.into());
        self.advance();
    }

    /// Closes for a protocol violation found above the engine, in an event it
    /// reported (a compressed payload that does not decompress): a Close with the
    /// error's code and text, then close_notify. The events decoded after the bad
    /// one are dropped, as if the connection had closed on its arrival; the Closed
    /// event follows.
    pub fn fail(&mut self, error: ProtocolError) {
        if self.state == ServerState::Closed || self.channel.is_closing() {
            return;
        }
        self.events.clear();
        self.channel.close_with(CloseReason::Protocol(error));
        self.advance();
    }

    fn release_results(&mut self) {
        let channel = &mut self.channel;
        let limit = self.client_max_frame;
        self.results.release(|m| {
            let size = m.frame_size();
            let over = limit.is_some_and(|max| size > max as usize);
            match m {
                // Version 4: a result the client could not take is replaced, so the
                // request still ends exactly once (G7) and the client stays.
                Message::Response(r) if over => {
                    channel.send(&Message::ServerError(pushwire_protocol::ServerError {
                        request_id: r.request_id,
                        code: pushwire_protocol::ErrorCode::ResultTooLarge,
                        message: Text::from(format!(
                            "the result ({} bytes in its frame) exceeds the client's frame limit \
                         of {} bytes",
                            size,
                            limit.unwrap_or_default()
                        )),
                    }));
                }
                // An error's text is cut so that its frame fits any allowed limit.
                Message::ServerError(mut e) => {
                    e.message = crate::channel::clamp_text_to(
                        e.message,
                        crate::channel::SERVER_ERROR_TEXT_MAX,
                    );
                    channel.send(&Message::ServerError(e));
                }
                m => channel.send(&m),
            }
        });
    }

    /// Hands the application every request that may run now.
    fn start_calls(&mut self) {
        while let Some(call) = self.results.next_call() {
            self.events.push_back(ServerEvent::Request {
                request_id: call.request_id,
                method_id: call.method_id,
                payload: call.payload,
            });
        }
    }

    fn advance(&mut self) {
        if self.state == ServerState::Handshaking && self.channel.link.status().ready {
            self.state = ServerState::AwaitingHello;
        }
        while let Some(frame) = self.channel.next_frame() {
            self.handle_frame(frame);
        }
        self.channel.check_peer_closed();
        if self.state != ServerState::Closed {
            if let Some(reason) = self.channel.take_close_reason() {
                self.state = ServerState::Closed;
                self.events.push_back(ServerEvent::Closed(reason));
            }
        }
    }

    fn handle_frame(&mut self, frame: RawFrame) {
        if frame.kind == pushwire_protocol::MessageKind::Hello {
            return self.handle_hello(frame.body);
        }
        let message = match frame.decode() {
            Ok(m) => m,
            Err(e) => {
                return self
                    .channel
                    .close_with(CloseReason::Protocol(ProtocolError::Decode(e)))
            }
        };
        if message.is_compressed() && self.version < 3 {
            // The decoder takes the compressed forms whatever the connection; they
            // exist only from version 3 on.
            return self
                .channel
                .close_with(CloseReason::Protocol(ProtocolError::Unexpected {
                    message: compressed_name(message.kind()),
                    context: "on a connection of protocol version 1 or 2",
                }));
        }
        let result = match (self.state, message) {
            (_, Message::Ping(ping)) => {
                self.channel
                    .send(&Message::Pong(Pong { nonce: ping.nonce }));
                Ok(())
            }
            (_, Message::Pong(_)) => Ok(()),
            (_, Message::Close(close)) => {
                self.channel.finish(CloseReason::Remote {
                    code: close.code,
                    reason: close.reason,
                });
                Ok(())
            }
            (ServerState::Ready, Message::Request(r)) => self
                .results
                .begin_request(r.request_id, r.method_id, r.payload)
                .map(|()| self.start_calls()),
            (ServerState::Ready, Message::Cancel(cancel)) if self.version >= 3 => {
                match self.results.cancel(cancel.request_id) {
                    CancelEffect::Dropped => self.release_results(),
                    CancelEffect::SignalRunning => {
                        self.events.push_back(ServerEvent::CancelRequested {
                            request_id: cancel.request_id,
                        })
                    }
                    CancelEffect::None => {}
                }
                Ok(())
            }
            (ServerState::Ready, Message::BatchBegin(_)) => self.results.begin_batch(),
            (ServerState::Ready, Message::BatchCommit(c)) => {
                let r = self.results.commit_batch(c.server_batching);
                self.release_results();
                r
            }
            (ServerState::Ready, Message::Ack(ack)) => {
                self.events
                    .push_back(ServerEvent::Acknowledged(ack.last_seq));
                Ok(())
            }
            (
                ServerState::Ready,
                m @ (Message::Subscribe(_)
                | Message::Unsubscribe(_)
                | Message::Publish(_)
                | Message::SendUserMessage(_)
                | Message::ListGroups(_)),
            ) => {
                self.events.push_back(ServerEvent::Push(m));
                Ok(())
            }
            (state, m) => Err(ProtocolError::Unexpected {
                message: m.kind().name(),
                context: match state {
                    ServerState::Ready => "from a client after Welcome",
                    _ => "from a client before Welcome",
                },
            }),
        };
        if let Err(e) = result {
            self.channel.close_with(CloseReason::Protocol(e));
        }
    }

    /// Decodes the Hello from a buffer that is wiped when the last reference to it
    /// (the password in the AuthRequest) is dropped, and wipes the frame it came in.
    fn handle_hello(&mut self, mut body: BytesMut) {
        let owned = Bytes::from_owner(Zeroizing::new(body.to_vec()));
        body.as_mut().zeroize();
        if self.state != ServerState::AwaitingHello {
            return self
                .channel
                .close_with(CloseReason::Protocol(ProtocolError::Unexpected {
                    message: "Hello",
                    context: "after the Hello phase",
                }));
        }
        let hello = match Message::decode(pushwire_protocol::MessageKind::Hello, owned) {
            Ok(Message::Hello(hello)) => hello,
            Ok(_) => unreachable!("decoding as Hello yields a Hello"),
            Err(e) => {
                self.state = ServerState::Authenticating;
                return self.refuse_now(RefuseCode::InvalidHello, Text::from(e.to_string()));
            }
        };
        self.hello_deadline = None;
        self.state = ServerState::Authenticating;
        let Hello {
            min_version,
            max_version,
            service_id,
            options,
            user_id,
            password,
            resume,
            max_frame_size,
        } = hello;
        let offered = max_version.min(self.config.max_version);
        let Some(version) = negotiate_version(min_version, offered) else {
            return self.refuse_now(
                RefuseCode::UnsupportedVersion,
                Text::from(format!(
                    "client speaks versions {min_version}..={max_version}, server {}..={}",
                    SUPPORTED_VERSIONS.start(),
                    self.config.max_version.min(*SUPPORTED_VERSIONS.end())
                )),
            );
        };
        if user_id.is_empty() {
            return self.refuse_now(RefuseCode::InvalidHello, Text::from("empty user id"));
        }
        if version >= 4 {
            if let Some(max) = max_frame_size {
                if max < MIN_MAX_FRAME_SIZE {
                    return self.refuse_now(
                        RefuseCode::InvalidHello,
                        Text::from(format!(
                            "max_frame_size {max} is below the protocol's least frame limit \
                             of {MIN_MAX_FRAME_SIZE} bytes"
                        )),
                    );
                }
                self.client_max_frame = Some(max.min(HARD_MAX_FRAME_SIZE));
            }
        }
        self.version = version;
        let client_certificate = self
            .channel
            .link
            .server_session()
            .and_then(|s| s.peer_certificates())
            .and_then(|certs| certs.first())
            .and_then(|c| CertificateInfo::parse(c).ok());
        self.events
            .push_back(ServerEvent::Authenticate(AuthRequest {
                user_id,
                password,
                service_id,
                options,
                resume,
                version,
                peer: self.peer,
                client_certificate,
            }));
    }
}

/// The name of a message type in its compressed form, for errors.
pub(crate) fn compressed_name(kind: pushwire_protocol::MessageKind) -> &'static str {
    use pushwire_protocol::MessageKind;
    match kind {
        MessageKind::Publish => "compressed Publish",
        MessageKind::SendUserMessage => "compressed SendUserMessage",
        MessageKind::Published => "compressed Published",
        MessageKind::UserMessage => "compressed UserMessage",
        _ => "compressed payload",
    }
}
