//! The production client: a connection context like SocketPro's
//! `CConnectionContext`, a server-authentication callback, RPC futures, batching, push
//! commands, and events as a `Stream` and as callbacks.

mod event;
mod window;

use event::EventSender;
pub use event::{Event, EventStream};
use window::{SendWindow, COMMAND_OVERHEAD};

use crate::read::{read_with, Input};
use crate::transport::{ByteStream, Connector, TcpConnector};
use bytes::Bytes;
pub use pushwire_engine::client::CancelOutcome;
use pushwire_engine::client::{
    AbortReason, ClientConfig, ClientConnection, ClientError, ClientEvent, ClientTransport,
    CompressionConfig, PushCommand, ServerAuthMode,
};
use pushwire_engine::credentials::{load_native_roots, load_root_store, CredentialsError};
use pushwire_engine::tls::{ClientTls, ServerAuthentication, TlsConfigError};
use pushwire_engine::{CloseReason, KeepAlive};
use pushwire_protocol::{
    ClientOptions, CloseCode, ErrorCode, GroupDescription, GroupId, GroupSelection, Message,
    RefuseCode, RejectCode, Sender, Text,
};
use rustls::pki_types::UnixTime;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, Instrument};

/// Whom the client trusts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// CA certificates from these PEM files (SocketPro's `SetVerifyLocation`).
    CaFiles(Vec<PathBuf>),
    /// The operating system's trust store.
    NativeRoots,
    /// A ready TLS configuration (custom roots, client certificate …).
    Tls(ClientTls),
    /// No TLS at all: an explicit opt-in for trusted networks and benchmarks.
    Plaintext,
}

/// Where and how to connect (SocketPro's `CConnectionContext`).
#[derive(Debug, Clone)]
pub struct ConnectionContext {
    /// Server host name or address.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// User id sent after the server is trusted.
    pub user_id: String,
    /// Password sent after the server is trusted.
    pub password: String,
    /// Whom to trust.
    pub trust: Trust,
    /// Name the server certificate must carry (default: `host`).
    pub server_name: Option<String>,
    /// Service to use.
    pub service_id: u32,
    /// Receive one's own publications and user messages back (default on).
    pub echo: bool,
    /// Limit on TCP connect plus TLS plus Hello.
    pub connect_timeout: Duration,
    /// Keep-alive timing.
    pub keepalive: KeepAlive,
    /// Reconnect (and resume the session) when the connection drops after it was
    /// established; `None` ends the client at the first drop.
    pub reconnect: Option<Reconnect>,
    /// Push commands (publish, subscribe, user messages …) accepted while
    /// reconnecting, sent once the connection is back; beyond this they fail with
    /// [`ClientError::NotReady`]. Zero makes every push fail while disconnected.
    pub queue_while_disconnected: usize,
}

/// How the client reconnects after a drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    /// First delay.
    pub initial: Duration,
    /// Longest delay (the delay doubles per failed attempt up to this).
    pub max: Duration,
    /// Seed of the jitter (up to half the delay) that spreads reconnecting clients.
    pub jitter_seed: u64,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            jitter_seed: 0x5eed,
        }
    }
}

impl Reconnect {
    /// The delay before attempt `failures + 1`, jittered from `rng`.
    pub fn delay(&self, failures: u32, rng: &mut u64) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << failures.min(16))
            .min(self.max);
        base + base.mul_f64((next_random(rng) % 1000) as f64 / 2000.0)
    }
}

/// SplitMix64 step, for reconnect jitter.
pub(crate) fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl ConnectionContext {
    /// A context with defaults: trust the OS store, service 1, echo on, 10 s timeout.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        user_id: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        Self {
            host: host.into(),
            port,
            user_id: user_id.into(),
            password: password.into(),
            trust: Trust::NativeRoots,
            server_name: None,
            service_id: 1,
            echo: true,
            connect_timeout: Duration::from_secs(10),
            keepalive: KeepAlive::default(),
            reconnect: Some(Reconnect::default()),
            queue_while_disconnected: 1024,
        }
    }
}

/// Why a connection could not be established.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// TCP connect failed.
    #[error("cannot connect to {addr}: {source}")]
    Io {
        /// host:port
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// The trust store or TLS settings are unusable.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The TLS settings are unusable.
    #[error(transparent)]
    TlsConfig(#[from] TlsConfigError),
    /// The engine refused the settings.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The server's certificate was not accepted; no credential was sent.
    #[error("server certificate not trusted: {0}")]
    Untrusted(Box<ServerAuthentication>),
    /// The server refused the user id and password (or the service).
    #[error("refused by the server ({code:?}): {reason}")]
    Refused {
        /// Why.
        code: RefuseCode,
        /// The server's text.
        reason: Text,
    },
    /// Connecting took longer than the connect timeout.
    #[error("timed out connecting")]
    Timeout,
    /// The connection ended during the handshake.
    #[error("connection closed during the handshake: {0}")]
    Closed(CloseReason),
}

/// Why a request ended without a result.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum RequestError {
    /// The server's handler failed.
    #[error("server error {code:?}: {message}")]
    Server {
        /// Its code.
        code: ErrorCode,
        /// Its text.
        message: Text,
    },
    /// The batch holding the request was aborted.
    #[error("the batch was aborted")]
    BatchAborted,
    /// The request was cancelled ([`Client::cancel`]): it did not run, or its
    /// handler stopped.
    #[error("the request was cancelled")]
    Cancelled,
    /// The connection ended before the result arrived.
    #[error("connection lost: {0}")]
    ConnectionLost(CloseReason),
    /// The request could not be sent (not ready, too large, too many outstanding).
    #[error(transparent)]
    Rejected(#[from] ClientError),
}

impl PushError {
    /// Whether the server refused the command for its publish rate limit
    /// (`RejectCode::RateLimited`): it was not delivered; retry later.
    pub fn is_rate_limited(&self) -> bool {
        matches!(
            self,
            Self::Rejected {
                code: pushwire_protocol::RejectCode::RateLimited,
                ..
            }
        )
    }
}

/// Why a push command failed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PushError {
    /// The server refused it.
    #[error("refused by the server ({code:?}): {reason}")]
    Rejected {
        /// Why.
        code: pushwire_protocol::RejectCode,
        /// Offending groups.
        groups: Vec<GroupId>,
        /// The server's text.
        reason: Text,
    },
    /// It could not be sent.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The connection ended before the answer arrived.
    #[error("connection lost")]
    ConnectionLost,
}

type ServerAuthCallback = Arc<dyn Fn(&ServerAuthentication) -> bool + Send + Sync>;
// The callbacks borrow from the decoded message: handing them owned values cost a
// copy of the group list and two reference counts per event.
type GroupsCallback = Box<dyn FnMut(&Sender, &[GroupId]) + Send>;
type PublishCallback = Box<dyn FnMut(&Sender, &[GroupId], &Bytes) + Send>;
type UserMessageCallback = Box<dyn FnMut(&Sender, &Bytes) + Send>;

/// Configures the server-authentication decision and the event callbacks (mirroring
/// SocketPro's `OnSubscribe`, `OnUnsubscribe`, `OnPublish` and `OnSendUserMessage`,
/// each with the full sender), then connects.
pub struct ClientBuilder {
    context: ConnectionContext,
    server_auth: Option<ServerAuthCallback>,
    on_subscribe: Option<GroupsCallback>,
    on_unsubscribe: Option<GroupsCallback>,
    on_publish: Option<PublishCallback>,
    on_user_message: Option<UserMessageCallback>,
    event_capacity: usize,
    send_window: usize,
    cancel_on_drop: bool,
    compression: CompressionConfig,
    accept_compressed: bool,
    max_version: u16,
    limits: pushwire_protocol::FrameLimits,
}

impl ClientBuilder {
    /// Starts from a connection context.
    pub fn new(context: ConnectionContext) -> Self {
        Self {
            context,
            server_auth: None,
            on_subscribe: None,
            on_unsubscribe: None,
            on_publish: None,
            on_user_message: None,
            event_capacity: 1024,
            send_window: DEFAULT_SEND_WINDOW,
            cancel_on_drop: false,
            compression: CompressionConfig::default(),
            accept_compressed: true,
            max_version: pushwire_protocol::PROTOCOL_VERSION,
            limits: pushwire_protocol::FrameLimits::default(),
        }
    }

    /// The largest frame this client accepts from the server (default 1 MiB). With
    /// protocol version 4 the Hello announces it and the server keeps to it: a
    /// publication that would not fit arrives as an [`Event::Gap`] for its sequence
    /// number, an RPC result as a `ResultTooLarge` server error, and the connection
    /// stays. With an older server a larger frame ends the connection.
    pub fn max_frame_size(mut self, limits: pushwire_protocol::FrameLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Decides whether to trust the server after seeing its certificate and the
    /// verifier's verdict (the seed's `DoSslServerAuthentication`). Without it, the
    /// client trusts exactly the servers whose chain verified.
    pub fn server_authentication(
        mut self,
        decide: impl Fn(&ServerAuthentication) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.server_auth = Some(Arc::new(decide));
        self
    }

    /// Called for every Subscribed event (sender, groups).
    pub fn on_subscribe(mut self, f: impl FnMut(&Sender, &[GroupId]) + Send + 'static) -> Self {
        self.on_subscribe = Some(Box::new(f));
        self
    }

    /// Called for every Unsubscribed event (sender, groups).
    pub fn on_unsubscribe(mut self, f: impl FnMut(&Sender, &[GroupId]) + Send + 'static) -> Self {
        self.on_unsubscribe = Some(Box::new(f));
        self
    }

    /// Called for every publication (sender, groups, message).
    pub fn on_publish(
        mut self,
        f: impl FnMut(&Sender, &[GroupId], &Bytes) + Send + 'static,
    ) -> Self {
        self.on_publish = Some(Box::new(f));
        self
    }

    /// Called for every user message (sender, message).
    pub fn on_user_message(mut self, f: impl FnMut(&Sender, &Bytes) + Send + 'static) -> Self {
        self.on_user_message = Some(Box::new(f));
        self
    }

    /// How many events the [`EventStream`] buffers before the connection stops
    /// reading from the server (backpressure; default 1,024).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// Bytes of push commands (payloads and a little framing) the client holds
    /// queued or sent and not yet taken by the server (default 1 MiB). A command
    /// that finds the window full waits in the client, in call order, and its
    /// future resolves later: a server that holds this publisher back (its flow
    /// control, for receivers that fall behind) slows an application that awaits
    /// its publications down instead of growing the connection's queues. A command
    /// larger than the window goes alone. Servers of protocol version 1 do
    /// not confirm commands; the window then only bounds what waits to be written.
    pub fn send_window(mut self, bytes: usize) -> Self {
        self.send_window = bytes.max(1);
        self
    }

    /// Dropping a [`RequestFuture`] before it finished cancels its request
    /// (default off: a dropped future then leaves the request running and its
    /// result is discarded).
    pub fn cancel_on_drop(mut self, cancel: bool) -> Self {
        self.cancel_on_drop = cancel;
        self
    }

    /// Compresses the payloads this client publishes and sends (LZ4, protocol
    /// version 3; default off): those of at least the
    /// [threshold](Self::compression_threshold) that come out smaller. The server
    /// forwards them compressed to receivers that accept compressed payloads and
    /// decompresses them for the others; applications see the same bytes either way.
    /// Worth it for large text and JSON, not for small or already compressed
    /// payloads (`benches/RESULTS.md` has the figures). With a server of an older
    /// version everything goes plain.
    pub fn compression(mut self, on: bool) -> Self {
        self.compression.enabled = on;
        self
    }

    /// Payloads shorter than this go plain even with [compression](Self::compression)
    /// on (default
    /// [`DEFAULT_COMPRESSION_THRESHOLD`](pushwire_engine::client::DEFAULT_COMPRESSION_THRESHOLD),
    /// 512 bytes).
    pub fn compression_threshold(mut self, bytes: usize) -> Self {
        self.compression.threshold = bytes;
        self
    }

    /// Whether the server may send this client payloads compressed as their
    /// publishers sent them (the Hello's compression option; default on: the client
    /// decompresses them before any callback or event sees them, which costs less
    /// than the bytes it saves on the wire). Off, the server decompresses them for
    /// this client.
    pub fn accept_compressed(mut self, on: bool) -> Self {
        self.accept_compressed = on;
        self
    }

    /// Offers at most this protocol version (default: the newest), as an older
    /// client would: for mixed-version tests.
    pub fn max_protocol_version(mut self, version: u16) -> Self {
        self.max_version = version;
        self
    }

    /// Connects over TCP.
    pub async fn connect(self) -> Result<(Client, EventStream), ConnectError> {
        self.connect_with(&TcpConnector).await
    }

    /// Connects through a connector (tokio's TCP, or turmoil's in the simulator).
    /// The first connection must succeed; later drops are handled by reconnecting,
    /// as [`ConnectionContext::reconnect`] says.
    pub async fn connect_with<C: Connector + Clone>(
        self,
        connector: &C,
    ) -> Result<(Client, EventStream), ConnectError> {
        let context = self.context.clone();
        let transport = match &context.trust {
            Trust::Plaintext => ClientTransport::Plaintext,
            trust => {
                let name = context
                    .server_name
                    .clone()
                    .unwrap_or_else(|| context.host.clone());
                let tls = match trust {
                    Trust::CaFiles(files) => ClientTls::new(load_root_store(files)?, &name)?,
                    Trust::NativeRoots => ClientTls::new(load_native_roots()?, &name)?,
                    Trust::Tls(tls) => tls.clone(),
                    Trust::Plaintext => unreachable!("handled above"),
                };
                ClientTransport::Tls(tls)
            }
        };
        let mut config = ClientConfig::new(
            transport,
            context.user_id.as_str(),
            context.password.as_bytes(),
        );
        config.service_id = context.service_id;
        config.options = ClientOptions {
            echo: context.echo,
            compression: self.accept_compressed,
        };
        config.compression = self.compression;
        config.max_version = self.max_version;
        config.limits = self.limits;
        config.keepalive = context.keepalive;
        config.handshake_timeout = context.connect_timeout;
        config.server_auth = if self.server_auth.is_some() {
            ServerAuthMode::Application
        } else {
            ServerAuthMode::Automatic
        };
        let stream = open(connector, &context).await?;
        let engine = ClientConnection::new(config.clone(), now(), UnixTime::now())?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let window = Arc::new(SendWindow::new(self.send_window));
        let (events_tx, events_rx) = event::channel(self.event_capacity);
        let (ready_tx, ready_rx) = oneshot::channel();
        let (outstanding_tx, outstanding) = watch::channel(0usize);
        let (closed_tx, closed) = watch::channel(None);
        let (connected_tx, connected) = watch::channel(false);
        let task = Task {
            engine,
            commands: command_rx,
            events: events_tx,
            ready: Some(ready_tx),
            server_auth: self.server_auth,
            on_subscribe: self.on_subscribe,
            on_unsubscribe: self.on_unsubscribe,
            on_publish: self.on_publish,
            on_user_message: self.on_user_message,
            requests: BTreeMap::new(),
            tickets: BTreeMap::new(),
            answers: BTreeMap::new(),
            outstanding: outstanding_tx,
            closed: closed_tx,
            connected: connected_tx,
            untrusted: None,
            user_closed: false,
            groups: BTreeSet::new(),
            queued: Vec::new(),
            restore_after_loss: false,
            held_replies: Vec::new(),
            window: window.clone(),
            untaken: VecDeque::new(),
        };
        let reconnect = Reconnector {
            connector: connector.clone(),
            context: context.clone(),
            config,
        };
        tokio::spawn(
            task.run(stream, reconnect)
                .instrument(tracing::info_span!("client", user = %context.user_id)),
        );
        match ready_rx.await {
            Ok(Ok(())) => Ok((
                Client {
                    commands,
                    window,
                    outstanding,
                    closed,
                    connected,
                    next_ticket: Arc::new(AtomicU64::new(0)),
                    cancel_on_drop: self.cancel_on_drop,
                },
                events_rx,
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ConnectError::Closed(CloseReason::PeerClosed)),
        }
    }
}

/// Opens the transport, within the connect timeout.
async fn open<C: Connector>(
    connector: &C,
    context: &ConnectionContext,
) -> Result<C::Stream, ConnectError> {
    let addr = format!("{}:{}", context.host, context.port);
    match tokio::time::timeout(
        context.connect_timeout,
        connector.connect(&context.host, context.port),
    )
    .await
    {
        Err(_) => Err(ConnectError::Timeout),
        Ok(Err(source)) => Err(ConnectError::Io { addr, source }),
        Ok(Ok((stream, _peer))) => Ok(stream),
    }
}

/// What a client task needs to open a new connection after a drop.
struct Reconnector<C> {
    connector: C,
    context: ConnectionContext,
    config: ClientConfig,
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

enum Command {
    Request {
        ticket: RequestTicket,
        method: u32,
        payload: Bytes,
        reply: oneshot::Sender<Result<Bytes, RequestError>>,
    },
    Push {
        command: PushCommand,
        /// Bytes taken from the send window for it.
        cost: usize,
        reply: oneshot::Sender<Result<Answer, PushError>>,
    },
    /// A publication, apart from the other push commands: the engine encodes it from
    /// borrowed parts, and a single target group needs no list.
    Publish {
        groups: Targets,
        payload: Bytes,
        cost: usize,
        reply: oneshot::Sender<Result<Answer, PushError>>,
    },
    StartBatch(oneshot::Sender<Result<(), ClientError>>),
    CommitBatch(bool, oneshot::Sender<Result<(), ClientError>>),
    AbortBatch(oneshot::Sender<Result<(), ClientError>>),
    Cancel(RequestTicket, Option<oneshot::Sender<CancelOutcome>>),
    Close,
}

/// The target groups of a publication.
enum Targets {
    One(GroupId),
    Many(Vec<GroupId>),
}

impl Targets {
    fn new(groups: &[u32]) -> Self {
        match groups {
            [group] => Targets::One(GroupId(*group)),
            _ => Targets::Many(groups.iter().copied().map(GroupId).collect()),
        }
    }

    fn as_slice(&self) -> &[GroupId] {
        match self {
            Targets::One(group) => std::slice::from_ref(group),
            Targets::Many(groups) => groups,
        }
    }

    fn into_vec(self) -> Vec<GroupId> {
        match self {
            Targets::One(group) => vec![group],
            Targets::Many(groups) => groups,
        }
    }
}

/// The answer to a push command.
enum Answer {
    Sent(u64),
    Delivered(u32),
    Groups(Vec<GroupDescription>),
}

/// A connected client. Cheap to clone; the connection closes when [`Client::close`]
/// is called or the last clone is dropped.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    window: Arc<SendWindow<Command>>,
    outstanding: watch::Receiver<usize>,
    closed: watch::Receiver<Option<CloseReason>>,
    connected: watch::Receiver<bool>,
    next_ticket: Arc<AtomicU64>,
    cancel_on_drop: bool,
}

/// Names one request of a [`Client`], for [`Client::cancel`]. Copied out of a
/// [`RequestFuture`] before it is awaited elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestTicket(u64);

/// The outcome of a request ([`Client::request`]): its result, a server error,
/// [`RequestError::Cancelled`] or the loss of the connection, exactly one of them.
/// The request was queued when this was created.
pub struct RequestFuture {
    reply: Reply<Result<Bytes, RequestError>>,
    ticket: RequestTicket,
    /// Where to send the cancel when dropped unfinished
    /// ([`ClientBuilder::cancel_on_drop`]).
    cancel_on_drop: Option<mpsc::UnboundedSender<Command>>,
    finished: bool,
}

impl RequestFuture {
    /// The request's ticket, for [`Client::cancel`].
    pub fn ticket(&self) -> RequestTicket {
        self.ticket
    }
}

impl Future for RequestFuture {
    type Output = Result<Bytes, RequestError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let outcome = Pin::new(&mut self.reply).poll(cx);
        if outcome.is_ready() {
            self.finished = true;
        }
        outcome
    }
}

impl Drop for RequestFuture {
    fn drop(&mut self) {
        if let Some(commands) = self.cancel_on_drop.take().filter(|_| !self.finished) {
            let _ = commands.send(Command::Cancel(self.ticket, None));
        }
    }
}

/// A reply that arrives later; the command itself was already queued when the future
/// was created, so batching sees calls in program order.
pub struct Reply<T> {
    rx: Option<oneshot::Receiver<T>>,
    lost: fn() -> T,
}

impl<T> Future for Reply<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let lost = self.lost;
        match self.rx.as_mut() {
            None => Poll::Ready(lost()),
            Some(rx) => Pin::new(rx).poll(cx).map(|r| r.unwrap_or_else(|_| lost())),
        }
    }
}

impl Client {
    /// Connects with default callbacks (see [`ClientBuilder`] for more).
    pub async fn connect(
        context: ConnectionContext,
    ) -> Result<(Client, EventStream), ConnectError> {
        ClientBuilder::new(context).connect().await
    }

    fn send<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
        lost: fn() -> T,
    ) -> Reply<T> {
        send_command(&self.commands, make, lost)
    }

    /// Queues a push command costing `cost` bytes of the send window: into the
    /// channel at once when it fits and nothing waits before it, otherwise into the
    /// window, from which the task takes it when room comes back (see
    /// [`ClientBuilder::send_window`]).
    fn send_windowed(
        &self,
        cost: usize,
        make: impl FnOnce(oneshot::Sender<Result<Answer, PushError>>) -> Command,
    ) -> Reply<Result<Answer, PushError>> {
        let (tx, rx) = oneshot::channel();
        let rx = match self.window.offer(cost, make(tx)) {
            Some(command) => self.commands.send(command).ok().map(|()| rx),
            None => Some(rx),
        };
        Reply {
            rx,
            lost: || Err(PushError::ConnectionLost),
        }
    }

    /// Calls `method` (SocketPro's `SendRequest`). The request is queued at once
    /// (into the open batch, if any); the future yields its outcome, and its
    /// [ticket](RequestFuture::ticket) lets [`Client::cancel`] cancel it.
    pub fn request(&self, method: u32, payload: impl Into<Bytes>) -> RequestFuture {
        let payload = payload.into();
        let ticket = RequestTicket(self.next_ticket.fetch_add(1, Ordering::Relaxed));
        let reply = self.send(
            |reply| Command::Request {
                ticket,
                method,
                payload,
                reply,
            },
            || Err(RequestError::ConnectionLost(CloseReason::PeerClosed)),
        );
        RequestFuture {
            reply,
            ticket,
            cancel_on_drop: self.cancel_on_drop.then(|| self.commands.clone()),
            finished: false,
        }
    }

    /// Cancels a request (SocketPro's `Cancel`). The request still ends exactly
    /// once; what it ends with depends on where it is, as the answer says:
    /// - in the open batch: taken out, it ends at once with
    ///   [`RequestError::Cancelled`] and the server never sees it;
    /// - sent, on a server of protocol version 3: the server drops it if it has not
    ///   started (it ends with `Cancelled`) or tells the running handler through
    ///   [`Call::cancellation`](crate::server::Call::cancellation), which may stop
    ///   (`Cancelled`) or finish (its result);
    /// - sent, on an older server: it ends at once with `Cancelled`; the server
    ///   still runs it and its result is dropped;
    /// - cancelled before and still waiting for the server: nothing more
    ///   ([`CancelOutcome::AlreadySent`]);
    /// - finished already: nothing happens ([`CancelOutcome::NotOutstanding`]).
    ///
    /// Results of other requests keep their order.
    pub fn cancel(&self, request: RequestTicket) -> Reply<CancelOutcome> {
        self.send(
            |reply| Command::Cancel(request, Some(reply)),
            || CancelOutcome::NotOutstanding,
        )
    }

    /// Holds requests and push commands until [`commit_batching`](Self::commit_batching).
    pub fn start_batching(&self) -> Reply<Result<(), ClientError>> {
        self.send(Command::StartBatch, || Err(ClientError::Closed))
    }

    /// Sends the batch in one transmit; with `server_batching` the server returns
    /// its results together.
    pub fn commit_batching(&self, server_batching: bool) -> Reply<Result<(), ClientError>> {
        self.send(
            |r| Command::CommitBatch(server_batching, r),
            || Err(ClientError::Closed),
        )
    }

    /// Drops the batch; its requests end with [`RequestError::BatchAborted`].
    pub fn abort_batching(&self) -> Reply<Result<(), ClientError>> {
        self.send(Command::AbortBatch, || Err(ClientError::Closed))
    }

    /// Waits until no request is outstanding (SocketPro's `WaitAll`).
    pub async fn wait_all(&self) {
        let mut outstanding = self.outstanding.clone();
        let _ = outstanding.wait_for(|n| *n == 0).await;
    }

    fn push(&self, command: PushCommand) -> Reply<Result<Answer, PushError>> {
        let cost = command_cost(&command);
        self.send_windowed(cost, move |reply| Command::Push {
            command,
            cost,
            reply,
        })
    }

    /// Joins chat groups. Resolves once the server has run the command (or, with a
    /// server of protocol version 1, once it is queued); refusals arrive as
    /// [`Event::Rejected`] with the returned command id.
    pub fn subscribe(&self, groups: &[u32]) -> impl Future<Output = Result<u64, PushError>> {
        let reply = self.push(PushCommand::Subscribe(
            groups.iter().copied().map(GroupId).collect(),
        ));
        async move { sent(reply.await) }
    }

    /// Leaves chat groups.
    pub fn unsubscribe(&self, groups: &[u32]) -> impl Future<Output = Result<u64, PushError>> {
        let reply = self.push(PushCommand::Unsubscribe(GroupSelection::Groups(
            groups.iter().copied().map(GroupId).collect(),
        )));
        async move { sent(reply.await) }
    }

    /// Leaves every chat group.
    pub fn unsubscribe_all(&self) -> impl Future<Output = Result<u64, PushError>> {
        let reply = self.push(PushCommand::Unsubscribe(GroupSelection::All));
        async move { sent(reply.await) }
    }

    /// Publishes to chat groups. Resolves with the command id once the server has
    /// taken the publication (run it: delivered, or refused with an
    /// [`Event::Rejected`] before this resolves), or with a server of protocol
    /// version 1 once it is queued. A publication the server refused as a whole for
    /// its publish rate limit was not delivered to anyone: it resolves with
    /// [`PushError::Rejected`] carrying `RejectCode::RateLimited` (after the
    /// [`Event::Rejected`]), so a publisher can back off and retry. Inside a batch it resolves once queued in the
    /// batch. While the [send window](ClientBuilder::send_window) is full the
    /// publication waits in the client, in call order, and goes when the server has
    /// taken earlier ones; requests and batch calls made meanwhile do not wait for
    /// it. A publication sent on a connection that dropped before the server
    /// confirmed it fails with [`PushError::ConnectionLost`]: it may or may not have
    /// been delivered.
    pub fn publish(
        &self,
        groups: &[u32],
        message: impl Into<Bytes>,
    ) -> impl Future<Output = Result<u64, PushError>> {
        let groups = Targets::new(groups);
        let payload = message.into();
        let cost = payload.len() + COMMAND_OVERHEAD + 4 * groups.as_slice().len();
        let reply = self.send_windowed(cost, move |reply| Command::Publish {
            groups,
            payload,
            cost,
            reply,
        });
        async move { sent(reply.await) }
    }

    /// Sends a message to every connection of `receiver` (case-insensitive); resolves
    /// with how many connections it reached.
    pub fn send_user_message(
        &self,
        receiver: &str,
        message: impl Into<Bytes>,
    ) -> impl Future<Output = Result<u32, PushError>> {
        let reply = self.push(PushCommand::SendUserMessage {
            receiver: Text::from(receiver),
            payload: message.into(),
        });
        async move {
            match reply.await? {
                Answer::Delivered(n) => Ok(n),
                _ => Err(PushError::ConnectionLost),
            }
        }
    }

    /// The server's chat groups.
    pub fn list_groups(&self) -> impl Future<Output = Result<Vec<GroupDescription>, PushError>> {
        let reply = self.push(PushCommand::ListGroups);
        async move {
            match reply.await? {
                Answer::Groups(g) => Ok(g),
                _ => Err(PushError::ConnectionLost),
            }
        }
    }

    /// Requests outstanding now.
    pub fn outstanding(&self) -> usize {
        *self.outstanding.borrow()
    }

    /// Whether the connection is up now (false while reconnecting).
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Waits until the connection is up (immediately if it is).
    pub async fn wait_connected(&self) {
        let mut connected = self.connected.clone();
        let _ = connected.wait_for(|c| *c).await;
    }

    /// Closes the connection (Close, then close_notify) and stops reconnecting.
    pub fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }

    /// Waits until the connection has ended; returns why.
    pub async fn closed(&self) -> CloseReason {
        let mut closed = self.closed.clone();
        let reason = closed.wait_for(Option::is_some).await.map(|r| r.clone());
        reason.ok().flatten().unwrap_or(CloseReason::PeerClosed)
    }
}

/// The default [`ClientBuilder::send_window`].
pub const DEFAULT_SEND_WINDOW: usize = 1024 * 1024;

fn send_command<T>(
    commands: &mpsc::UnboundedSender<Command>,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
    lost: fn() -> T,
) -> Reply<T> {
    let (tx, rx) = oneshot::channel();
    let rx = commands.send(make(tx)).ok().map(|()| rx);
    Reply { rx, lost }
}

/// What a push command takes of the send window.
fn command_cost(command: &PushCommand) -> usize {
    COMMAND_OVERHEAD
        + match command {
            PushCommand::Subscribe(groups) => 4 * groups.len(),
            PushCommand::Unsubscribe(GroupSelection::Groups(groups)) => 4 * groups.len(),
            PushCommand::Publish { groups, payload } => 4 * groups.len() + payload.len(),
            PushCommand::SendUserMessage { receiver, payload } => {
                receiver.as_str().len() + payload.len()
            }
            _ => 0,
        }
}

fn sent(answer: Result<Answer, PushError>) -> Result<u64, PushError> {
    match answer? {
        Answer::Sent(id) => Ok(id),
        _ => Err(PushError::ConnectionLost),
    }
}

struct Task {
    engine: ClientConnection,
    commands: mpsc::UnboundedReceiver<Command>,
    events: EventSender,
    ready: Option<oneshot::Sender<Result<(), ConnectError>>>,
    server_auth: Option<ServerAuthCallback>,
    on_subscribe: Option<GroupsCallback>,
    on_unsubscribe: Option<GroupsCallback>,
    on_publish: Option<PublishCallback>,
    on_user_message: Option<UserMessageCallback>,
    /// Requests awaiting their outcome, by request id, with their tickets.
    requests: BTreeMap<u64, (RequestTicket, oneshot::Sender<Result<Bytes, RequestError>>)>,
    /// The request id of each outstanding ticket, for cancels.
    tickets: BTreeMap<RequestTicket, u64>,
    /// Push commands awaiting an answer from the server, by command id.
    answers: BTreeMap<u64, oneshot::Sender<Result<Answer, PushError>>>,
    outstanding: watch::Sender<usize>,
    closed: watch::Sender<Option<CloseReason>>,
    connected: watch::Sender<bool>,
    untrusted: Option<ServerAuthentication>,
    /// The application closed the client: do not reconnect.
    user_closed: bool,
    /// Groups this session is in, as the server confirmed them (self-flagged
    /// presence events): restored when the server reports the session lost.
    groups: BTreeSet<GroupId>,
    /// Push commands accepted while reconnecting.
    queued: Vec<OfflineCommand>,
    /// The server lost the session: re-subscribe once it is ready.
    restore_after_loss: bool,
    /// Replies held back until the events received before them are in the stream.
    held_replies: Vec<HeldReply>,
    window: Arc<SendWindow<Command>>,
    /// Push commands sent on this connection and not yet confirmed by the server,
    /// in command-id order: their window bytes, and the reply to send then (none
    /// for commands whose answer is a message of its own).
    untaken: VecDeque<Untaken>,
}

/// A push command accepted while reconnecting: the command, its window bytes and
/// its reply.
type OfflineCommand = (
    PushCommand,
    usize,
    oneshot::Sender<Result<Answer, PushError>>,
);

/// A push command the server has not confirmed yet.
struct Untaken {
    command_id: u64,
    cost: usize,
    reply: Option<oneshot::Sender<Result<Answer, PushError>>>,
    /// The server refused the whole command for its publish rate limit: the reply
    /// is this error once the command is taken.
    refused: Option<PushError>,
}

/// A reply to the application, released by [`Task::flush_events`]: whoever sees a
/// reply (a command's answer, a request's result) then finds in the event stream
/// every event received before it — a refusal of a publication before the answer to
/// a later ListGroups, say.
enum HeldReply {
    Push(
        oneshot::Sender<Result<Answer, PushError>>,
        Result<Answer, PushError>,
    ),
    Request(
        oneshot::Sender<Result<Bytes, RequestError>>,
        Result<Bytes, RequestError>,
    ),
}

/// How one connection ended.
enum Ended {
    /// For good: the application closed it, or reconnecting cannot help.
    Final(CloseReason),
    /// Dropped: reconnect.
    Dropped(CloseReason),
}

impl Task {
    async fn run<C: Connector + Clone>(mut self, stream: C::Stream, reconnect: Reconnector<C>) {
        let mut stream = Some(stream);
        let mut rng = reconnect.context.reconnect.map_or(0, |r| r.jitter_seed);
        loop {
            let Some(s) = stream.take() else { return };
            let reason = match self.drive(s).await {
                Ended::Final(reason) => reason,
                Ended::Dropped(reason) => match reconnect.context.reconnect {
                    Some(policy) if !self.user_closed && self.ready.is_none() => {
                        self.events.push(Event::Disconnected(reason.clone()));
                        self.flush_events().await;
                        match self.reconnect(&reconnect, policy, &mut rng).await {
                            Some(next) => {
                                stream = Some(next);
                                continue;
                            }
                            None => reason,
                        }
                    }
                    _ => reason,
                },
            };
            self.finish(reason).await;
            return;
        }
    }

    /// Hands the queued events over (waiting for room: backpressure), then releases
    /// the replies that arrived after them.
    async fn flush_events(&mut self) {
        self.events.flush().await;
        for held in self.held_replies.drain(..) {
            match held {
                HeldReply::Push(reply, answer) => {
                    let _ = reply.send(answer);
                }
                HeldReply::Request(reply, result) => {
                    let _ = reply.send(result);
                }
            }
        }
    }

    /// Everything that ends the client for good.
    async fn finish(&mut self, reason: CloseReason) {
        if let Some(ready) = self.ready.take() {
            let error = match (&reason, self.untrusted.take()) {
                (CloseReason::ServerRejected { .. }, Some(info)) => {
                    ConnectError::Untrusted(Box::new(info))
                }
                (CloseReason::Refused { code, reason }, _) => ConnectError::Refused {
                    code: *code,
                    reason: reason.clone(),
                },
                (CloseReason::Timeout(_), _) => ConnectError::Timeout,
                (other, _) => ConnectError::Closed(other.clone()),
            };
            let _ = ready.send(Err(error));
        }
        for (_, reply) in std::mem::take(&mut self.answers) {
            let _ = reply.send(Err(PushError::ConnectionLost));
        }
        for (_, cost, reply) in std::mem::take(&mut self.queued) {
            self.window.give_back(cost);
            let _ = reply.send(Err(PushError::ConnectionLost));
        }
        self.fail_untaken();
        // Their replies are dropped with them: the callers see the connection lost.
        drop(self.window.close());
        self.connected.send_replace(false);
        self.events.push(Event::Closed(reason.clone()));
        self.flush_events().await;
        self.closed.send_replace(Some(reason));
    }

    /// Waits out the backoff and opens a new connection that resumes the session.
    /// Commands arriving meanwhile: requests fail (there is no connection to send
    /// them on), push commands are queued up to the configured bound.
    async fn reconnect<C: Connector + Clone>(
        &mut self,
        reconnect: &Reconnector<C>,
        policy: Reconnect,
        rng: &mut u64,
    ) -> Option<C::Stream> {
        let mut failures = 0u32;
        loop {
            let delay = policy.delay(failures, rng);
            let wake = tokio::time::Instant::now() + delay;
            loop {
                tokio::select! {
                    biased;
                    command = self.commands.recv() => match command {
                        None | Some(Command::Close) => {
                            self.user_closed = true;
                            return None;
                        }
                        Some(command) => {
                        self.handle_command_offline(command, reconnect.context.queue_while_disconnected);
                        while self.commands.is_empty() {
                            let Some(command) = self.window.next_ready() else { break };
                            self.handle_command_offline(command, reconnect.context.queue_while_disconnected);
                        }
                    }
                    },
                    () = tokio::time::sleep_until(wake) => break,
                }
            }
            let stream = match open(&reconnect.connector, &reconnect.context).await {
                Ok(stream) => stream,
                Err(e) => {
                    debug!("reconnect failed: {e}");
                    failures = failures.saturating_add(1);
                    continue;
                }
            };
            let mut config = reconnect.config.clone();
            config.resume = self
                .engine
                .welcome()
                .map(|w| pushwire_protocol::ResumeRequest {
                    token: w.resume_token,
                    last_seq: self.engine.last_seq(),
                });
            match ClientConnection::new(config, now(), UnixTime::now()) {
                Ok(engine) => {
                    self.engine = engine;
                    return Some(stream);
                }
                Err(e) => {
                    debug!("cannot start a connection: {e}");
                    return None;
                }
            }
        }
    }

    fn handle_command_offline(&mut self, command: Command, queue_limit: usize) {
        let lost = || CloseReason::PeerClosed;
        match command {
            Command::Request { reply, .. } => {
                let _ = reply.send(Err(RequestError::ConnectionLost(lost())));
            }
            Command::Push {
                command,
                cost,
                reply,
            } => self.queue_push(command, cost, reply, queue_limit),
            Command::Publish {
                groups,
                payload,
                cost,
                reply,
            } => {
                let command = PushCommand::Publish {
                    groups: groups.into_vec(),
                    payload,
                };
                self.queue_push(command, cost, reply, queue_limit);
            }
            Command::StartBatch(reply)
            | Command::CommitBatch(_, reply)
            | Command::AbortBatch(reply) => {
                let _ = reply.send(Err(ClientError::NotReady));
            }
            // Every request ended when the connection was lost.
            Command::Cancel(_, reply) => {
                if let Some(reply) = reply {
                    let _ = reply.send(CancelOutcome::NotOutstanding);
                }
            }
            Command::Close => self.user_closed = true,
        }
    }

    fn queue_push(
        &mut self,
        command: PushCommand,
        cost: usize,
        reply: oneshot::Sender<Result<Answer, PushError>>,
        queue_limit: usize,
    ) {
        if self.queued.len() < queue_limit {
            self.queued.push((command, cost, reply));
        } else {
            self.window.give_back(cost);
            let _ = reply.send(Err(PushError::Client(ClientError::NotReady)));
        }
    }

    /// Runs one connection until it ends.
    async fn drive<S: ByteStream>(&mut self, stream: S) -> Ended {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut transmit = Vec::new();
        // Bytes of `transmit` already written.
        let mut written = 0usize;
        let mut commands_open = true;
        let mut end: Option<CloseReason> = None;
        loop {
            // Take every command already waiting before writing, so a burst of
            // publishes leaves in one write instead of one write each.
            if commands_open && written == transmit.len() {
                for _ in 0..1024 {
                    match self.commands.try_recv() {
                        Ok(command) => self.handle_command(command),
                        Err(_) => break,
                    }
                }
            }
            // Backpressure: a full stream stops this task, hence reading, hence the
            // server's writes; the server then applies its slow-consumer policy.
            while let Some(event) = self.engine.poll_event() {
                match event {
                    ClientEvent::Closed(reason) => end = Some(reason),
                    // Matched here, not in handle_event: passing the whole event on
                    // cost a copy of it per push event.
                    ClientEvent::Push(message) => self.handle_push(message),
                    other => self.handle_event(other),
                }
                if self.events.is_full() {
                    self.flush_events().await;
                }
            }
            self.flush_events().await;
            // Commands that waited for room in the send window, once the server took
            // earlier ones; after everything already in the channel, which is older.
            if written == transmit.len() {
                while self.commands.is_empty() {
                    let Some(command) = self.window.next_ready() else {
                        break;
                    };
                    self.handle_command(command);
                }
            }
            // A peer that keeps the socket readable would starve the timer branch of
            // the biased select below: deadlines are checked here too.
            if self.engine.poll_timeout().is_some_and(|t| t <= now()) {
                self.engine.handle_timeout(now());
            }
            self.outstanding.send_if_modified(|n| {
                let now = self.engine.outstanding_requests();
                std::mem::replace(n, now) != now
            });
            // Writes are part of the select below, not awaited on their own: a
            // server that holds this publisher back (flow control) stops reading it,
            // and the client must go on reading what the server sends meanwhile, or
            // it would become a slow consumer itself.
            if written == transmit.len() {
                transmit.clear();
                written = 0;
                self.engine.poll_transmit(now(), &mut transmit);
            }
            if self.engine.is_finished() && written == transmit.len() {
                self.fail_untaken();
                let _ = writer.shutdown().await;
                self.connected.send_replace(false);
                let reason = end.unwrap_or(CloseReason::PeerClosed);
                return if self.user_closed || !reconnectable(&reason) {
                    Ended::Final(reason)
                } else {
                    Ended::Dropped(reason)
                };
            }
            let timeout = self
                .engine
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                biased;
                result = writer.write(&transmit[written..]), if written < transmit.len() => match result {
                    Ok(0) | Err(_) => {
                        debug!("write failed: {result:?}");
                        self.engine.handle_transport_closed();
                        transmit.clear();
                        written = 0;
                    }
                    Ok(n) => written += n,
                },
                // Straight into the engine: no read buffer per connection.
                () = read_with(&mut reader, |input| match input {
                    Input::Bytes(bytes) => self.engine.handle_input(now(), bytes),
                    Input::Closed => self.engine.handle_transport_closed(),
                }) => {}
                command = self.commands.recv(), if commands_open && written == transmit.len() => match command {
                    Some(command) => self.handle_command(command),
                    None => {
                        // Every Client handle is gone: close politely.
                        commands_open = false;
                        self.user_closed = true;
                        self.engine.close(CloseCode::Normal, "client dropped");
                    }
                },
                () = sleep_until(timeout) => self.engine.handle_timeout(now()),
            }
        }
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Request {
                ticket,
                method,
                payload,
                reply,
            } => match self.engine.request(method, payload) {
                Ok(id) => {
                    self.requests.insert(id, (ticket, reply));
                    self.tickets.insert(ticket, id);
                }
                Err(e) => {
                    let _ = reply.send(Err(RequestError::Rejected(e)));
                }
            },
            Command::Push {
                command,
                cost,
                reply,
            } => self.push(command, cost, reply),
            Command::Publish {
                groups,
                payload,
                cost,
                reply,
            } => match self.engine.publish(groups.as_slice(), &payload) {
                Ok(id) => self.sent(id, cost, Some(reply)),
                Err(e) => {
                    self.window.give_back(cost);
                    let _ = reply.send(Err(PushError::Client(e)));
                }
            },
            Command::Cancel(ticket, reply) => {
                let outcome = match self.tickets.get(&ticket) {
                    Some(&id) => self.engine.cancel(id),
                    None => CancelOutcome::NotOutstanding,
                };
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
            }
            Command::StartBatch(reply) => {
                let _ = reply.send(self.engine.start_batch());
            }
            Command::CommitBatch(server_batching, reply) => {
                let _ = reply.send(self.engine.commit_batch(server_batching));
            }
            Command::AbortBatch(reply) => {
                let _ = reply.send(self.engine.abort_batch());
            }
            Command::Close => {
                self.user_closed = true;
                self.engine.close(CloseCode::Normal, "client closed");
            }
        }
    }

    fn push(
        &mut self,
        command: PushCommand,
        cost: usize,
        reply: oneshot::Sender<Result<Answer, PushError>>,
    ) {
        let waits = matches!(
            command,
            PushCommand::SendUserMessage { .. } | PushCommand::ListGroups
        );
        match self.engine.push(command) {
            Ok(id) if waits => {
                self.answers.insert(id, reply);
                self.sent(id, cost, None);
            }
            Ok(id) => self.sent(id, cost, Some(reply)),
            Err(e) => {
                self.window.give_back(cost);
                let _ = reply.send(Err(PushError::Client(e)));
            }
        }
    }

    /// A push command went to the engine: it waits for the server's confirmation,
    /// unless nothing will confirm it (a batch, whose commands wait for the commit,
    /// or a server of protocol version 1).
    fn sent(
        &mut self,
        command_id: u64,
        cost: usize,
        reply: Option<oneshot::Sender<Result<Answer, PushError>>>,
    ) {
        if self.engine.confirms_push_commands() && !self.engine.in_batch() {
            self.untaken.push_back(Untaken {
                command_id,
                cost,
                reply,
                refused: None,
            });
            return;
        }
        self.window.give_back(cost);
        if let Some(reply) = reply {
            let _ = reply.send(Ok(Answer::Sent(command_id)));
        }
    }

    /// The server ran every push command up to `command_id`.
    fn taken(&mut self, command_id: u64) {
        while let Some(front) = self.untaken.front() {
            if front.command_id > command_id {
                break;
            }
            let Untaken {
                command_id,
                cost,
                reply,
                refused,
            } = self.untaken.pop_front().expect("looked at");
            self.window.give_back(cost);
            if let Some(reply) = reply {
                // After the events received before the confirmation (a refusal of
                // this very publication, say).
                let answer = match refused {
                    Some(error) => Err(error),
                    None => Ok(Answer::Sent(command_id)),
                };
                self.held_replies.push(HeldReply::Push(reply, answer));
            }
        }
    }

    /// The connection ended: commands it carried that the server did not confirm
    /// may or may not have run.
    fn fail_untaken(&mut self) {
        for untaken in std::mem::take(&mut self.untaken) {
            self.window.give_back(untaken.cost);
            if let Some(reply) = untaken.reply {
                let _ = reply.send(Err(PushError::ConnectionLost));
            }
        }
    }

    fn handle_event(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::ServerAuthenticated(info) => {
                if let Some(decide) = &self.server_auth {
                    let trusted = decide(&info);
                    let _ = if trusted {
                        self.engine.accept_server()
                    } else {
                        self.engine.reject_server()
                    };
                }
                if !info.verdict.is_verified() || self.server_auth.is_some() {
                    self.untrusted = Some(info);
                }
            }
            ClientEvent::Ready(welcome) => {
                self.untrusted = None;
                self.connected.send_replace(true);
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Ok(()));
                } else {
                    self.events.push(Event::Reconnected {
                        resumed: welcome.resumed,
                    });
                }
                for (command, cost, reply) in std::mem::take(&mut self.queued) {
                    self.push(command, cost, reply);
                }
            }
            ClientEvent::Response {
                request_id,
                payload,
            } => self.request_ended(request_id, Ok(payload)),
            ClientEvent::ServerError {
                request_id,
                code: ErrorCode::Cancelled,
                ..
            } => self.request_ended(request_id, Err(RequestError::Cancelled)),
            ClientEvent::ServerError {
                request_id,
                code,
                message,
            } => self.request_ended(request_id, Err(RequestError::Server { code, message })),
            ClientEvent::RequestAborted { request_id, reason } => {
                let error = match reason {
                    AbortReason::BatchAborted => RequestError::BatchAborted,
                    AbortReason::Cancelled => RequestError::Cancelled,
                    AbortReason::ConnectionLost(r) => RequestError::ConnectionLost(r),
                };
                self.request_ended(request_id, Err(error));
            }
            ClientEvent::Push(message) => self.handle_push(message),
            ClientEvent::Taken { command_id } => self.taken(command_id),
            ClientEvent::Closed(_) => {}
        }
    }

    /// A request's one outcome, to its future once the events before it are out.
    fn request_ended(&mut self, request_id: u64, outcome: Result<Bytes, RequestError>) {
        if let Some((ticket, reply)) = self.requests.remove(&request_id) {
            self.tickets.remove(&ticket);
            self.held_replies.push(HeldReply::Request(reply, outcome));
        }
    }

    #[inline]
    fn handle_push(&mut self, message: Message) {
        match &message {
            Message::Subscribed(m) => {
                if m.sender.is_self() {
                    self.groups.extend(m.groups.iter().copied());
                }
                if let Some(f) = &mut self.on_subscribe {
                    f(&m.sender, &m.groups);
                }
            }
            Message::Unsubscribed(m) => {
                if m.sender.is_self() {
                    for g in &m.groups {
                        self.groups.remove(g);
                    }
                }
                if let Some(f) = &mut self.on_unsubscribe {
                    f(&m.sender, &m.groups);
                }
            }
            Message::Published(m) => {
                if let Some(f) = &mut self.on_publish {
                    f(&m.sender, &m.groups, &m.payload);
                }
            }
            Message::UserMessage(m) => {
                if let Some(f) = &mut self.on_user_message {
                    f(&m.sender, &m.payload);
                }
            }
            Message::SessionLost(_) => {
                // The server kept nothing: join the groups again, by ourselves.
                let groups: Vec<GroupId> = std::mem::take(&mut self.groups).into_iter().collect();
                if !groups.is_empty() {
                    let (reply, _) = oneshot::channel();
                    self.push(PushCommand::Subscribe(groups), 0, reply);
                }
                self.restore_after_loss = false;
            }
            Message::UserMessageDelivered(d) => {
                if let Some(reply) = self.answers.remove(&d.command_id) {
                    self.held_replies
                        .push(HeldReply::Push(reply, Ok(Answer::Delivered(d.connections))));
                }
                return;
            }
            Message::GroupList(g) => {
                if let Some(reply) = self.answers.remove(&g.command_id) {
                    self.held_replies
                        .push(HeldReply::Push(reply, Ok(Answer::Groups(g.groups.clone()))));
                }
                return;
            }
            Message::PushRejected(r) => {
                let error = || PushError::Rejected {
                    code: r.code,
                    groups: r.groups.clone(),
                    reason: r.reason.clone(),
                };
                if let Some(reply) = self.answers.remove(&r.command_id) {
                    self.held_replies.push(HeldReply::Push(reply, Err(error())));
                } else if r.code == RejectCode::RateLimited {
                    // Not run at all: the publication resolves with the refusal
                    // when the server confirms it (other refusals, which may be
                    // partial, come as events only).
                    if let Ok(i) = self
                        .untaken
                        .binary_search_by_key(&r.command_id, |u| u.command_id)
                    {
                        self.untaken[i].refused = Some(error());
                    }
                }
            }
            _ => {}
        }
        // A dropped stream (callbacks only) discards: skip building the event, and
        // let the next publication reuse this one's group list.
        if self.events.is_closed() {
            if let Message::Published(p) = message {
                self.engine.recycle_groups(p.groups);
            }
            return;
        }
        if let Some(event) = Event::from_message(message) {
            self.events.push(event);
        }
    }
}

/// Whether reconnecting can help after a connection ended this way.
fn reconnectable(reason: &CloseReason) -> bool {
    !matches!(
        reason,
        CloseReason::Refused { .. }
            | CloseReason::ServerRejected { .. }
            | CloseReason::Local { .. }
            | CloseReason::Protocol(_)
    )
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
