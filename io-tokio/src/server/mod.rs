//! The production server: accepts connections, drives one engine per connection on
//! its own task, and shares one push hub among them.
//!
//! # How connections share the hub
//!
//! One `std::sync::Mutex` around the [`Hub`] and the connections' outboxes. A push
//! operation locks it, runs the pure hub, and encodes each delivery straight into the
//! receiving connection's outbox (a byte buffer plus a `Notify`); the receiving task
//! later takes the whole outbox at once, so many events leave in one TLS flush. The
//! critical section never awaits and never does I/O: it is hub work plus one encode
//! per delivery. An actor task owning the hub adds a channel hop and a task wake-up
//! per operation. Measured with `cargo bench -p pushwire-benches --bench hub_sharing`
//! (2-core machine, tokio multi-thread runtime with 2 workers, one publication of
//! 128 B to 100 subscribers, encoded into their outboxes): 18.9 µs per publication
//! under the lock against 22.0 µs through an actor — the lock is about 15 % faster
//! and needs no reply channel for the server API's results.

mod auth;
pub(crate) mod hooks;
mod service;

pub use auth::{AuthAttempt, AuthDecision, Authenticator, DenyAll};
pub use service::{service_fn, Call, CallFuture, Service};

use crate::read::{read_with, Input};
use crate::transport::{ByteStream, Listener};
use bytes::Bytes;
use hooks::LoggedHooks;
use pushwire_engine::credentials::{load_root_store, ServerCredentials};
use pushwire_engine::hub::{
    Actor, AllowAll, ConnectionId, ConnectionInfo, Hub, HubConfig, HubError, OutboundQueue,
    PushHooks, PushOutcome, Queued, ResumeError, SlowConsumerPolicy,
};
use pushwire_engine::server::{
    AuthRequest, Grant, ServerConfig, ServerConnection, ServerEvent, ServerTransport,
};
use pushwire_engine::tls::{server_tls_config, ClientAuth};
use pushwire_engine::{CloseReason, KeepAlive};
use pushwire_protocol::{
    CloseCode, ErrorCode, FrameLimits, GroupDescription, GroupId, ResumeToken, Text,
};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, info, info_span, warn, Instrument};

/// A server that could not be configured or started.
#[derive(Debug, Error)]
pub enum ServerError {
    /// Certificate, key or CA files.
    #[error(transparent)]
    Credentials(#[from] pushwire_engine::credentials::CredentialsError),
    /// rustls refused the configuration.
    #[error(transparent)]
    Tls(#[from] pushwire_engine::tls::TlsConfigError),
    /// Neither TLS nor explicit plaintext was configured.
    #[error("no TLS certificate configured (and plaintext was not explicitly chosen)")]
    NoTransport,
    /// Binding the listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// An invalid limit.
    #[error(transparent)]
    Limit(#[from] pushwire_protocol::LimitError),
    /// A group registered twice.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// The replay buffer could not be replayed through the outbound queue.
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
}

/// Builds a [`Server`].
pub struct ServerBuilder {
    transport: Option<ServerTransport>,
    credentials: Option<ServerCredentials>,
    client_auth: ClientAuth,
    groups: Vec<(GroupId, Text)>,
    auto_subscribe: Vec<GroupId>,
    authenticator: Arc<dyn Authenticator>,
    services: BTreeMap<u32, Arc<dyn Service>>,
    hooks: Box<dyn PushHooks + Send>,
    limits: FrameLimits,
    hub: HubConfig,
    hello_timeout: Duration,
    keepalive: KeepAlive,
    max_connections: usize,
    shutdown_grace: Duration,
    observer: Option<Observer>,
    slow_consumer_policy: SlowConsumerPolicy,
}

/// The callback told when connections join and leave the hub.
type Observer = Arc<dyn Fn(&ConnectionEvent) + Send + Sync>;

/// A connection joining or leaving the hub, reported to the
/// [observer](ServerBuilder::observer) in the hub's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// An authenticated connection joined (before any subscription of its own).
    Joined {
        /// Its id in the hub.
        connection: ConnectionId,
        /// Its user id.
        user_id: Text,
        /// Its echo option.
        echo: bool,
    },
    /// A connection left (after its implicit unsubscribe-all).
    Left {
        /// Its id in the hub.
        connection: ConnectionId,
        /// Its user id.
        user_id: Text,
    },
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerBuilder {
    /// A builder with no transport yet (choose TLS or explicit plaintext), no groups,
    /// the [`DenyAll`] authenticator, and default limits.
    pub fn new() -> Self {
        Self {
            transport: None,
            credentials: None,
            client_auth: ClientAuth::None,
            groups: Vec::new(),
            auto_subscribe: Vec::new(),
            authenticator: Arc::new(DenyAll),
            services: BTreeMap::new(),
            hooks: Box::new(AllowAll),
            limits: FrameLimits::default(),
            hub: HubConfig::default(),
            hello_timeout: Duration::from_secs(10),
            keepalive: KeepAlive::default(),
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(5),
            observer: None,
            slow_consumer_policy: SlowConsumerPolicy::default(),
        }
    }

    /// How long a session outlives its connection for the client to resume it
    /// (default 30 s; zero ends sessions at the disconnect, as SocketPro does).
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.hub.session_timeout = timeout;
        self
    }

    /// Bounds of each session's replay buffer: events and bytes (defaults 1,024 and
    /// 1 MiB). Zero events disables resume.
    pub fn replay_buffer(mut self, events: usize, bytes: usize) -> Self {
        self.hub.replay_events = events;
        self.hub.replay_bytes = bytes;
        self
    }

    /// What to do with a connection whose unwritten push frames exceed
    /// [`max_outbound_bytes`](Self::max_outbound_bytes) (default: close it with
    /// `SlowConsumer`, keeping its session for a resume).
    pub fn slow_consumer_policy(mut self, policy: SlowConsumerPolicy) -> Self {
        self.slow_consumer_policy = policy;
        self
    }

    /// Called when an authenticated connection joins or leaves the hub, under the
    /// hub's lock (so in the same order as the push hooks): keep it quick.
    pub fn observer(mut self, observer: impl Fn(&ConnectionEvent) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// TLS with a certificate chain and a private key from PEM files; `password`
    /// decrypts an encrypted PKCS#8 key (SocketPro's `UseSSL`).
    pub fn tls_from_pem(
        mut self,
        cert: &Path,
        key: &Path,
        password: Option<&str>,
    ) -> Result<Self, ServerError> {
        self.credentials = Some(ServerCredentials::from_pem_files(cert, key, password)?);
        Ok(self)
    }

    /// Requires client certificates signed by a CA in these files (mutual TLS).
    pub fn client_ca(mut self, ca_files: &[impl AsRef<Path>]) -> Result<Self, ServerError> {
        self.client_auth = ClientAuth::Required(Arc::new(load_root_store(ca_files)?));
        Ok(self)
    }

    /// No encryption: an explicit opt-in for trusted networks and benchmarks.
    pub fn plaintext(mut self) -> Self {
        self.transport = Some(ServerTransport::Plaintext);
        self
    }

    /// Registers a chat group (SocketPro's `AddAChatGroup`).
    pub fn group(mut self, id: u32, description: impl Into<Text>) -> Self {
        self.groups.push((GroupId(id), description.into()));
        self
    }

    /// Subscribes every new connection to these groups (the seed's Figure 6).
    pub fn auto_subscribe(mut self, groups: impl IntoIterator<Item = u32>) -> Self {
        self.auto_subscribe = groups.into_iter().map(GroupId).collect();
        self
    }

    /// Decides who may connect.
    pub fn authenticator(mut self, authenticator: impl Authenticator) -> Self {
        self.authenticator = Arc::new(authenticator);
        self
    }

    /// Hosts a service under `service_id`.
    pub fn service(mut self, service_id: u32, service: impl Service) -> Self {
        self.services.insert(service_id, Arc::new(service));
        self
    }

    /// The application's push hooks (per-group authorization and notifications).
    pub fn hooks(mut self, hooks: impl PushHooks + Send + 'static) -> Self {
        self.hooks = Box::new(hooks);
        self
    }

    /// Largest frame accepted from clients (default 1 MiB).
    pub fn max_frame_size(mut self, bytes: u32) -> Result<Self, ServerError> {
        self.limits = FrameLimits::new(bytes)?;
        Ok(self)
    }

    /// Largest publication or user-message payload (default 512 KiB).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.hub.max_payload_bytes = bytes;
        self
    }

    /// Unwritten bytes per connection before it counts as a slow consumer and is
    /// closed (default 8 MiB).
    pub fn max_outbound_bytes(mut self, bytes: usize) -> Self {
        self.hub.max_outbound_bytes = bytes;
        self
    }

    /// Time a new connection has to complete TLS and its Hello (default 10 s).
    pub fn hello_timeout(mut self, timeout: Duration) -> Self {
        self.hello_timeout = timeout;
        self
    }

    /// Keep-alive timing.
    pub fn keepalive(mut self, keepalive: KeepAlive) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// Connections beyond this are closed right after accept (default 10,000).
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// How long a graceful shutdown waits for connections to finish (default 5 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Binds a TCP listener on `addr` and starts serving.
    pub async fn bind(self, addr: SocketAddr) -> Result<Server, ServerError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        self.serve(listener)
    }

    /// Starts serving on an already bound listener (tokio's or turmoil's).
    pub fn serve<L: Listener>(self, listener: L) -> Result<Server, ServerError> {
        let transport = match (self.transport, self.credentials) {
            (Some(ServerTransport::Plaintext), _) => ServerTransport::Plaintext,
            (_, Some(credentials)) => {
                ServerTransport::Tls(server_tls_config(&credentials, self.client_auth)?)
            }
            (Some(t), None) => t,
            (None, None) => return Err(ServerError::NoTransport),
        };
        let mut config = ServerConfig::new(transport);
        config.limits = self.limits;
        config.hello_timeout = self.hello_timeout;
        config.keepalive = self.keepalive;
        let outbound_limit = self.hub.max_outbound_bytes;
        if self.hub.replay_bytes > outbound_limit {
            return Err(ServerError::ReplayOverOutbound {
                replay: self.hub.replay_bytes,
                outbound: outbound_limit,
            });
        }
        let mut hub = Hub::new(self.hub, LoggedHooks(self.hooks));
        for (id, description) in self.groups {
            hub.add_group(id, description)?;
        }
        let local_addr = listener.local_addr().ok();
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            hub: Mutex::new(HubCore {
                hub,
                outboxes: BTreeMap::new(),
                to_wake: Vec::new(),
            }),
            config: Arc::new(config),
            authenticator: self.authenticator,
            services: self.services,
            auto_subscribe: self.auto_subscribe,
            shutdown,
            live: AtomicUsize::new(0),
            all_closed: Notify::new(),
            max_connections: self.max_connections,
            next_connection: AtomicU64::new(1),
            observer: self.observer,
            outbound_limit,
            slow_consumer_policy: self.slow_consumer_policy,
            hub_timer: Notify::new(),
        });
        let handle = ServerHandle { shared };
        let accept = tokio::spawn(accept_loop(handle.clone(), listener));
        let timer = tokio::spawn(expire_sessions(handle.clone()));
        Ok(Server {
            handle,
            local_addr,
            accept,
            timer,
            grace: self.shutdown_grace,
        })
    }
}

/// A running server.
pub struct Server {
    handle: ServerHandle,
    local_addr: Option<SocketAddr>,
    accept: tokio::task::JoinHandle<()>,
    timer: tokio::task::JoinHandle<()>,
    grace: Duration,
}

impl Server {
    /// The address it listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The push and administration API.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Graceful shutdown: stops accepting, closes every connection with
    /// `GoingAway` (Close, then close_notify), and waits up to the grace period for
    /// their last writes. Returns the number of connections still open after it.
    pub async fn shutdown(self) -> usize {
        self.accept.abort();
        self.timer.abort();
        let shared = &self.handle.shared;
        shared.shutdown.send_replace(true);
        let deadline = tokio::time::Instant::now() + self.grace;
        loop {
            let notified = shared.all_closed.notified();
            let live = shared.live.load(Ordering::Acquire);
            if live == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return shared.live.load(Ordering::Acquire);
            }
        }
    }
}

/// One connection's share of the hub's output: encoded frames waiting for its task.
struct Outbox {
    queue: Mutex<OutboundQueue>,
    /// Frames are waiting.
    ready: Notify,
    /// `slow` or `superseded` was set: heard even while a write is pending.
    alert: Notify,
    /// Over the limit under the disconnect policy: the task closes the connection.
    slow: AtomicBool,
    /// Another connection resumed this session: the task closes this one.
    superseded: AtomicBool,
}

impl Outbox {
    fn new(limit: usize, policy: SlowConsumerPolicy) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(OutboundQueue::new(limit, policy)),
            ready: Notify::new(),
            alert: Notify::new(),
            slow: AtomicBool::new(false),
            superseded: AtomicBool::new(false),
        })
    }
}

struct HubCore {
    hub: Hub<LoggedHooks>,
    outboxes: BTreeMap<ConnectionId, Arc<Outbox>>,
    /// Connections with frames queued since the last [`HubCore::wake`].
    to_wake: Vec<ConnectionId>,
}

impl HubCore {
    /// Encodes every pending delivery into its connection's outbox and flags slow
    /// consumers. Called after every hub operation, under the lock.
    fn dispatch(&mut self) {
        self.queue_deliveries();
        self.wake();
    }

    /// Encodes every pending delivery into its connection's outbox and flags slow
    /// consumers; the receiving tasks are woken by [`HubCore::wake`]. A connection
    /// task handling several commands from one read queues them all, then wakes
    /// each receiver once.
    fn queue_deliveries(&mut self) {
        let mut last: Option<ConnectionId> = None;
        while let Some(delivery) = self.hub.poll_delivery() {
            let connection = delivery.connection();
            let Some(outbox) = self.outboxes.get(&connection) else {
                continue;
            };
            if lock(&outbox.queue).push_delivery(&delivery) == Queued::OverLimit {
                outbox.slow.store(true, Ordering::Release);
                outbox.alert.notify_one();
            }
            // Deliveries of one operation to one connection come together.
            if last != Some(connection) {
                last = Some(connection);
                self.to_wake.push(connection);
            }
        }
        // The outbound queues enforce the limit themselves (above); the hub's own
        // accounting is not used by this shell.
        while self.hub.poll_slow_consumer().is_some() {}
    }

    /// Wakes every task whose outbox got frames since the last wake, once each.
    fn wake(&mut self) {
        self.to_wake.sort_unstable();
        self.to_wake.dedup();
        for connection in self.to_wake.drain(..) {
            if let Some(outbox) = self.outboxes.get(&connection) {
                outbox.ready.notify_one();
            }
        }
    }
}

struct Shared {
    hub: Mutex<HubCore>,
    config: Arc<ServerConfig>,
    authenticator: Arc<dyn Authenticator>,
    services: BTreeMap<u32, Arc<dyn Service>>,
    auto_subscribe: Vec<GroupId>,
    shutdown: watch::Sender<bool>,
    live: AtomicUsize,
    all_closed: Notify,
    max_connections: usize,
    next_connection: AtomicU64,
    observer: Option<Observer>,
    outbound_limit: usize,
    slow_consumer_policy: SlowConsumerPolicy,
    /// Woken when a session is detached, so the expiry task looks at its deadline.
    hub_timer: Notify,
}

impl Shared {
    fn outbox(&self) -> Arc<Outbox> {
        Outbox::new(self.outbound_limit, self.slow_consumer_policy)
    }

    fn observe(&self, event: ConnectionEvent) {
        if let Some(observer) = &self.observer {
            observer(&event);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the hub as it was at the panic; keep
    // serving the other connections rather than poisoning them all.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The server's push and administration API, usable from handlers and from outside.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl ServerHandle {
    fn with_hub<R>(&self, f: impl FnOnce(&mut Hub<LoggedHooks>) -> R) -> R {
        let mut core = lock(&self.shared.hub);
        let r = f(&mut core.hub);
        core.dispatch();
        r
    }

    /// Publishes as the server (sender: the server; no echo).
    pub fn publish(
        &self,
        groups: &[u32],
        payload: impl Into<Bytes>,
    ) -> Result<PushOutcome, HubError> {
        let groups: Vec<GroupId> = groups.iter().copied().map(GroupId).collect();
        let payload = payload.into();
        self.with_hub(|hub| hub.publish(Actor::Server, &groups, payload))
    }

    /// Publishes on behalf of a connection (it is the sender and gets its echo).
    pub fn publish_as(
        &self,
        connection: ConnectionId,
        groups: &[u32],
        payload: impl Into<Bytes>,
    ) -> Result<PushOutcome, HubError> {
        let groups: Vec<GroupId> = groups.iter().copied().map(GroupId).collect();
        let payload = payload.into();
        self.with_hub(|hub| hub.publish(Actor::Connection(connection), &groups, payload))
    }

    /// Sends a message to every connection of `receiver` as the server; returns how
    /// many connections it reached.
    pub fn send_user_message(
        &self,
        receiver: &str,
        payload: impl Into<Bytes>,
    ) -> Result<u32, HubError> {
        let payload = payload.into();
        self.with_hub(|hub| hub.send_user_message(Actor::Server, receiver, payload))
            .map(|o| o.reached)
    }

    /// Sends a user message on behalf of a connection.
    pub fn send_user_message_as(
        &self,
        connection: ConnectionId,
        receiver: &str,
        payload: impl Into<Bytes>,
    ) -> Result<u32, HubError> {
        let payload = payload.into();
        self.with_hub(|hub| hub.send_user_message(Actor::Connection(connection), receiver, payload))
            .map(|o| o.reached)
    }

    /// Subscribes a connection to groups.
    pub fn subscribe(
        &self,
        connection: ConnectionId,
        groups: &[u32],
    ) -> Result<PushOutcome, HubError> {
        let groups: Vec<GroupId> = groups.iter().copied().map(GroupId).collect();
        self.with_hub(|hub| hub.subscribe(connection, &groups))
    }

    /// Unsubscribes a connection from groups.
    pub fn unsubscribe(
        &self,
        connection: ConnectionId,
        groups: &[u32],
    ) -> Result<PushOutcome, HubError> {
        let groups: Vec<GroupId> = groups.iter().copied().map(GroupId).collect();
        self.with_hub(|hub| hub.unsubscribe(connection, &groups))
    }

    /// Registers a group at run time.
    pub fn add_group(&self, id: u32, description: impl Into<Text>) -> Result<(), HubError> {
        let description = description.into();
        self.with_hub(|hub| hub.add_group(GroupId(id), description))
    }

    /// Removes a group at run time; its members are unsubscribed, with notifications.
    pub fn remove_group(&self, id: u32) -> Result<Vec<ConnectionId>, HubError> {
        self.with_hub(|hub| hub.remove_group(GroupId(id)))
    }

    /// The registered groups.
    pub fn groups(&self) -> Vec<GroupDescription> {
        lock(&self.shared.hub).hub.group_list()
    }

    /// Whether any connection of `user_id` is online.
    pub fn is_online(&self, user_id: &str) -> bool {
        lock(&self.shared.hub).hub.is_user_online(user_id)
    }

    /// Authenticated connections.
    pub fn connection_count(&self) -> usize {
        lock(&self.shared.hub).hub.connection_count()
    }
}

async fn accept_loop<L: Listener>(handle: ServerHandle, mut listener: L) {
    let shared = &handle.shared;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
        if shared.live.load(Ordering::Acquire) >= shared.max_connections {
            warn!(conn = id, %peer, "connection limit reached; closing");
            drop(stream);
            continue;
        }
        shared.live.fetch_add(1, Ordering::AcqRel);
        let handle = handle.clone();
        tokio::spawn(
            async move {
                run_connection(&handle, stream, peer).await;
                let shared = &handle.shared;
                if shared.live.fetch_sub(1, Ordering::AcqRel) == 1 {
                    shared.all_closed.notify_waiters();
                }
            }
            .instrument(info_span!("conn", id, %peer)),
        );
    }
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// How long a connection being closed for not reading gets to take its Close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The channel on which spawned service calls return their results to the
/// connection's task.
struct Results {
    tx: mpsc::UnboundedSender<(u64, pushwire_engine::RequestResult)>,
    rx: mpsc::UnboundedReceiver<(u64, pushwire_engine::RequestResult)>,
}

/// What a connection holds in the hub once authenticated.
struct Member {
    id: ConnectionId,
    outbox: Arc<Outbox>,
    user_id: Text,
    service_id: u32,
}

async fn run_connection<S: ByteStream>(handle: &ServerHandle, stream: S, peer: SocketAddr) {
    let shared = &handle.shared;
    let mut engine = match ServerConnection::new(shared.config.clone(), peer, now()) {
        Ok(engine) => engine,
        Err(e) => {
            warn!("cannot start TLS: {e}");
            return;
        }
    };
    debug!("accepted");
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut transmit = Vec::new();
    let mut member: Option<Member> = None;
    // Results of service calls, made at the first request: most connections of a
    // push server never call a service, and the channel costs 2 KiB.
    let mut results: Option<Results> = None;
    let mut shutdown = shared.shutdown.subscribe();
    let mut closing = false;
    let mut close_reason: Option<CloseReason> = None;
    // Bytes of `transmit` already written.
    let mut written = 0usize;
    // When closing a connection whose peer may not read: the deadline after which
    // the transport is dropped even if the Close could not be written.
    let mut give_up: Option<tokio::time::Instant> = None;
    // The connection looks idle (its handshake just ended, or a timer fired: with
    // keep-alive that is nothing sent for a ping interval): once everything is
    // written and nothing more is due, this task's buffers and the outbox give back
    // their memory. Never per message, so a busy connection keeps what it grew.
    let mut release_buffers = false;

    loop {
        {
            // Push commands from one read are handled under one hold of the hub lock,
            // and each receiver is woken once for all of them.
            let mut hub_held: Option<MutexGuard<'_, HubCore>> = None;
            while let Some(event) = engine.poll_event() {
                if !matches!(event, ServerEvent::Push(_) | ServerEvent::Acknowledged(_)) {
                    if let Some(mut core) = hub_held.take() {
                        core.wake();
                    }
                }
                match event {
                    ServerEvent::Authenticate(request) => {
                        member = authenticate(handle, &mut engine, request);
                        // After the Welcome: the TLS flight grew `transmit`.
                        release_buffers = true;
                    }
                    ServerEvent::Request {
                        request_id,
                        method_id,
                        payload,
                    } => {
                        let Some(m) = &member else { continue };
                        let Some(service) = shared.services.get(&m.service_id).cloned() else {
                            engine.respond(
                                request_id,
                                Err((ErrorCode::NoService, Text::from("no service with this id"))),
                            );
                            continue;
                        };
                        let call = Call {
                            method: method_id,
                            payload,
                            user_id: m.user_id.clone(),
                            connection: m.id,
                            server: handle.clone(),
                        };
                        let results_tx = results
                            .get_or_insert_with(|| {
                                let (tx, rx) = mpsc::unbounded_channel();
                                Results { tx, rx }
                            })
                            .tx
                            .clone();
                        tokio::spawn(
                            async move {
                                let result = service.call(call).await;
                                let _ = results_tx.send((request_id, result));
                            }
                            .in_current_span(),
                        );
                    }
                    ServerEvent::Push(command) => {
                        if let Some(m) = &member {
                            let core = hub_held.get_or_insert_with(|| lock(&shared.hub));
                            if let Err(e) = core.hub.handle_command(m.id, command) {
                                debug!("push command refused: {e}");
                            }
                            core.queue_deliveries();
                        }
                    }
                    ServerEvent::Acknowledged(seq) => {
                        if let Some(m) = &member {
                            let core = hub_held.get_or_insert_with(|| lock(&shared.hub));
                            core.hub.acknowledge(m.id, seq);
                        }
                    }
                    ServerEvent::Closed(reason) => {
                        log_close(&reason);
                        close_reason = Some(reason);
                    }
                }
            }
            if let Some(mut core) = hub_held.take() {
                core.wake();
            }
        }

        // A peer that keeps the socket readable would starve the timer branch of the
        // biased select below: deadlines (Hello, keep-alive) are checked here too.
        if engine.poll_timeout().is_some_and(|t| t <= now()) {
            engine.handle_timeout(now());
            release_buffers = true;
        }
        // Writes are part of the select below, not awaited on their own: a client
        // that stops reading must not stop this task from noticing that its
        // outbound queue went over the limit.
        if written == transmit.len() {
            transmit.clear();
            written = 0;
            engine.poll_transmit(now(), &mut transmit);
            // Everything is written and nothing more is due: the connection is
            // about to wait.
            if transmit.is_empty() && std::mem::take(&mut release_buffers) {
                transmit = Vec::new();
                if let Some(m) = &member {
                    lock(&m.outbox.queue).release_idle_capacity();
                }
                // Every call has answered (the engine counts a request until its
                // result was received here and released): no sender will send again.
                if engine.pending_requests() == 0 {
                    results = None;
                }
            }
        }
        if engine.is_finished() && transmit.is_empty() {
            let _ = writer.shutdown().await;
            break;
        }

        let timeout = engine.poll_timeout().map(tokio::time::Instant::from_std);
        let outbox = member.as_ref().map(|m| &m.outbox);
        // Take more frames from the hub only once the last batch is on its way: the
        // backlog of a slow reader stays in its bounded outbound queue.
        let take_frames = outbox.is_some() && written == transmit.len();
        tokio::select! {
            biased;
            changed = shutdown.changed(), if !closing => {
                closing = true;
                if changed.is_ok() {
                    engine.close(CloseCode::GoingAway, "server shutting down");
                }
            }
            () = sleep_until(give_up), if give_up.is_some() => {
                debug!("the peer does not read; dropping the connection");
                break;
            }
            result = writer.write(&transmit[written..]), if written < transmit.len() => match result {
                Ok(0) | Err(_) => {
                    engine.handle_transport_closed();
                    transmit.clear();
                    written = 0;
                }
                Ok(n) => written += n,
            },
            // The bytes go to the engine inside the read's poll: no read buffer per
            // connection (see `crate::read`).
            () = read_with(&mut reader, |input| match input {
                Input::Bytes(bytes) => engine.handle_input(now(), bytes),
                Input::Closed => engine.handle_transport_closed(),
            }) => {}
            // The task keeps a sender, so `recv` never ends with `None`.
            Some((request_id, result)) = async { results.as_mut().expect("guarded").rx.recv().await }, if results.is_some() => {
                engine.respond(request_id, result);
            }
            () = async { outbox.as_ref().expect("guarded").alert.notified().await }, if outbox.is_some() => {
                let outbox = outbox.as_ref().expect("guarded");
                if outbox.superseded.load(Ordering::Acquire) {
                    info!("session resumed on another connection; closing this one");
                    engine.close(CloseCode::Kicked, "the session was resumed on another connection");
                    give_up.get_or_insert(tokio::time::Instant::now() + CLOSE_GRACE);
                } else if outbox.slow.swap(false, Ordering::AcqRel) {
                    warn!("slow consumer: outbound queue over its limit; closing, session kept");
                    lock(&outbox.queue).clear();
                    engine.close(CloseCode::SlowConsumer, "outbound queue over its limit; resume to catch up");
                    give_up.get_or_insert(tokio::time::Instant::now() + CLOSE_GRACE);
                }
            }
            () = async { outbox.as_ref().expect("guarded").ready.notified().await }, if take_frames => {
                let outbox = outbox.as_ref().expect("guarded");
                let frames = lock(&outbox.queue).take_frames();
                engine.send_encoded_buffer(frames);
            }
            () = sleep_until(timeout) => {
                engine.handle_timeout(now());
                release_buffers = true;
            }
        }
    }

    // The Closed event can come with the last transmit, after the loop's last look.
    while let Some(event) = engine.poll_event() {
        if let ServerEvent::Closed(reason) = event {
            log_close(&reason);
            close_reason = Some(reason);
        }
    }
    if let Some(m) = member {
        leave(shared, &m, close_reason.as_ref());
    }
    debug!("finished");
}

/// A connection ended: its session ends with it when the client said goodbye (or the
/// server is shutting down), and is detached for a resume otherwise.
fn leave(shared: &Shared, member: &Member, reason: Option<&CloseReason>) {
    let mut core = lock(&shared.hub);
    let still_ours = core
        .outboxes
        .get(&member.id)
        .is_some_and(|o| Arc::ptr_eq(o, &member.outbox));
    if !still_ours {
        // Resumed on another connection, which owns the session now.
        return;
    }
    core.outboxes.remove(&member.id);
    let deliberate = matches!(
        reason,
        Some(CloseReason::Remote {
            code: CloseCode::Normal,
            ..
        }) | Some(CloseReason::Local {
            code: CloseCode::GoingAway,
            ..
        })
    );
    let ended = if deliberate {
        core.hub.disconnect(member.id).is_ok()
    } else {
        match core.hub.detach(member.id, now()) {
            Ok(Some(_)) => true,
            Ok(None) => {
                debug!("{} detached; kept for a resume", member.id);
                shared.hub_timer.notify_one();
                false
            }
            Err(_) => false,
        }
    };
    if ended {
        shared.observe(ConnectionEvent::Left {
            connection: member.id,
            user_id: member.user_id.clone(),
        });
    }
    core.dispatch();
}

/// Ends detached sessions whose timeout has passed (their groups' other members are
/// told then).
async fn expire_sessions(handle: ServerHandle) {
    let shared = &handle.shared;
    loop {
        let next = lock(&shared.hub).hub.poll_timeout();
        let woken = shared.hub_timer.notified();
        match next {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {}
                    () = woken => continue,
                }
            }
            None => {
                woken.await;
                continue;
            }
        }
        let mut core = lock(&shared.hub);
        for (session, info) in core.hub.handle_timeout(now()) {
            info!(user = %info.user_id, "{session}: session expired");
            shared.observe(ConnectionEvent::Left {
                connection: session,
                user_id: info.user_id,
            });
        }
        core.dispatch();
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn log_close(reason: &CloseReason) {
    match reason {
        CloseReason::Local { .. } | CloseReason::Remote { .. } | CloseReason::PeerClosed => {
            info!("closed: {reason}")
        }
        _ => warn!("closed: {reason}"),
    }
}

fn authenticate(
    handle: &ServerHandle,
    engine: &mut ServerConnection,
    request: AuthRequest,
) -> Option<Member> {
    let shared = &handle.shared;
    let decision = shared.authenticator.authenticate(&AuthAttempt {
        user_id: request.user_id.as_str(),
        password: &request.password,
        service_id: request.service_id,
        peer: request.peer,
        client_certificate: request.client_certificate.as_ref(),
    });
    if let AuthDecision::Refuse { code, reason } = decision {
        info!(user = %request.user_id, "refused: {reason}");
        engine.refuse(code, reason);
        return None;
    }
    if !shared.services.is_empty() && !shared.services.contains_key(&request.service_id) {
        engine.refuse(
            pushwire_protocol::RefuseCode::UnknownService,
            format!("no service {} on this server", request.service_id),
        );
        return None;
    }
    let outbox = shared.outbox();
    let mut core = lock(&shared.hub);
    let config = core.hub.config().clone();
    let grant = |session: ConnectionId, token: ResumeToken, resumed: bool| Grant {
        session_id: session.0,
        resume_token: token,
        resumed,
        session_timeout_ms: config.session_timeout.as_millis().min(u128::from(u32::MAX)) as u32,
        replay_capacity: config.replay_events.min(u32::MAX as usize) as u32,
    };
    let mut lost = None;
    if let Some(resume) = request.resume {
        match core
            .hub
            .resume(&resume.token, request.user_id.as_str(), resume.last_seq)
        {
            Ok(resumed) => {
                if let Some(old) = core.outboxes.insert(resumed.session, outbox.clone()) {
                    old.superseded.store(true, Ordering::Release);
                    old.alert.notify_one();
                }
                engine.permit(grant(resumed.session, resume.token, true));
                info!(
                    user = %request.user_id,
                    "{} resumed: {} events replayed{}",
                    resumed.session,
                    resumed.replayed,
                    resumed.gap.map_or(String::new(), |(f, l)| format!(", gap {f}..={l}"))
                );
                core.dispatch();
                return Some(Member {
                    id: resumed.session,
                    outbox,
                    user_id: request.user_id,
                    service_id: request.service_id,
                });
            }
            Err(ResumeError::NotYours) => {
                drop(core);
                engine.refuse(
                    pushwire_protocol::RefuseCode::ResumeNotPermitted,
                    "the resume token belongs to another user",
                );
                return None;
            }
            Err(ResumeError::Unknown) => {
                lost = Some(pushwire_protocol::SessionLost {
                    reason: pushwire_protocol::SessionLostReason::Unknown,
                    text: Text::from(
                        "the session expired or the server restarted; this is a new session",
                    ),
                });
            }
        }
    }
    let token = random_token();
    let id = core.hub.connect_session(
        ConnectionInfo::new(
            request.user_id.clone(),
            request.peer.ip(),
            request.peer.port(),
            request.service_id,
        )
        .with_echo(request.options.echo),
        token,
    );
    core.outboxes.insert(id, outbox.clone());
    shared.observe(ConnectionEvent::Joined {
        connection: id,
        user_id: request.user_id.clone(),
        echo: request.options.echo,
    });
    engine.permit(grant(id, token, false));
    if let Some(lost) = lost {
        // Before any event of the new session: the client restores its subscriptions.
        engine.send(&pushwire_protocol::Message::SessionLost(lost));
    }
    info!(user = %request.user_id, "{id} authenticated");
    if !shared.auto_subscribe.is_empty() {
        // The seed's Figure 6: the server subscribes the newcomer on arrival.
        let _ = core.hub.subscribe(id, &shared.auto_subscribe);
    }
    core.dispatch();
    Some(Member {
        id,
        outbox,
        user_id: request.user_id,
        service_id: request.service_id,
    })
}

/// A resume token from the crypto provider's CSPRNG.
fn random_token() -> ResumeToken {
    let mut token = [0u8; 16];
    let random = rustls::crypto::ring::default_provider().secure_random;
    if random.fill(&mut token).is_err() {
        // ring's system RNG does not fail on supported platforms; an all-zero token
        // would only weaken resume, which is not offered yet (session_timeout 0).
        warn!("system random number generator failed");
    }
    ResumeToken(token)
}
