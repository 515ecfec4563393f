//! The production server: accepts connections and moves their bytes. Every decision
//! about sessions, resumes, slow consumers and push operations is the engine's
//! [`Node`]; this module is its tokio driver.
//!
//! # What is shared and what is per connection
//!
//! One `std::sync::Mutex` around the [`Node`] (the push hub and the sessions). Each
//! connection runs on its own task with its [`NodeConnection`]: TLS, framing, RPC
//! and the socket, outside that lock. A push command locks the node, runs the hub,
//! and copies each delivery's frame (encoded once per publication) into its
//! receiver's mailbox, waking the receiver's task; that task takes its whole
//! mailbox at once, so many events leave in one TLS flush. The critical section
//! never awaits and never does I/O. An actor task owning the hub adds a channel hop
//! and a task wake-up per operation. Measured with `cargo bench -p pushwire-benches
//! --bench hub_sharing` (2-core machine, tokio multi-thread runtime with 2 workers,
//! one publication of 128 B to 100 subscribers, encoded into their outboxes): 18.9 µs
//! per publication under the lock against 22.0 µs through an actor — the lock is
//! about 15 % faster and needs no reply channel for the server API's results.

mod admin;
mod auth;
mod cluster;
pub(crate) mod hooks;
mod metrics;
mod service;

pub use admin::{AdminError, AdminServer};

pub use auth::{AuthAttempt, AuthDecision, Authenticator, DenyAll};
pub use cluster::MAX_LOG_LEN;
pub use pushwire_engine::cluster::ClusterConfig;
pub use service::{service_fn, Call, CallFuture, Cancellation, Service};

use crate::read::{read_with, Input};
use crate::transport::{ByteStream, Listener};
use bytes::Bytes;
use hooks::LoggedHooks;
use metrics::{MethodHistograms, ShellMetrics, SocketBytes};
use pushwire_engine::credentials::{load_root_store, ServerCredentials};
use pushwire_engine::hub::{
    Actor, AllowAll, ConnectionId, HubConfig, HubError, PushHooks, PushOutcome, SlowConsumerPolicy,
};
pub use pushwire_engine::node::AdmissionLimits;
pub use pushwire_engine::node::FlowControl;
pub use pushwire_engine::node::Permit;
use pushwire_engine::node::{
    Admission, ConnectionEvent as NodeConnectionEvent, Node, NodeConfig, NodeConfigError,
    NodeConnection, NodeEvent, NodeStats, SessionEnd,
};
pub use pushwire_engine::node::{ConnectionReport, NodeGauges};
pub use pushwire_engine::node::{RateLimit, RateLimitError};
use pushwire_engine::server::{AuthRequest, ServerConfig, ServerTransport};
use pushwire_engine::tls::{server_tls_config, CertificateInfo, ClientAuth};
pub use pushwire_engine::web::{WebConfig, WebPage};
use pushwire_engine::{CloseReason, KeepAlive, TimeoutKind};
use pushwire_protocol::{
    CloseCode, ErrorCode, FrameLimits, GroupDescription, GroupId, ResumeToken, Text,
};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Wake, Waker};
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
    /// Limits that do not fit together (the replay buffer over the outbound limit).
    #[error(transparent)]
    Node(#[from] NodeConfigError),
    /// The cluster's Redis URL does not parse.
    #[error("cluster: {0}")]
    Cluster(String),
    /// A certificate reload on a server that has no TLS (plaintext).
    #[error("the server runs without TLS: there is no certificate to replace")]
    NotTls,
    /// Credentials with an empty certificate chain.
    #[error("the credentials hold no certificate")]
    NoCertificate,
    /// The new certificate could not be read for its details.
    #[error(transparent)]
    Certificate(#[from] pushwire_engine::tls::CertificateParseError),
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
    max_outbound_bytes: usize,
    hello_timeout: Duration,
    keepalive: KeepAlive,
    admission: AdmissionLimits,
    shutdown_grace: Duration,
    observer: Option<Observer>,
    slow_consumer_policy: SlowConsumerPolicy,
    /// `None`: not set, [`FlowControl::fitted`] to the other settings.
    flow_control: Option<Option<FlowControl>>,
    max_running_requests: usize,
    max_version: u16,
    publish_rate: Option<RateLimit>,
    web: Option<WebConfig>,
    /// The Redis URL and this node's place in the cluster.
    cluster: Option<(String, ClusterConfig)>,
}

/// The callback told when connections join and leave the hub.
pub(crate) type Observer = Arc<dyn Fn(&ConnectionEvent) + Send + Sync>;

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
            max_outbound_bytes: 8 * 1024 * 1024,
            max_running_requests: pushwire_engine::DEFAULT_MAX_RUNNING_REQUESTS,
            max_version: pushwire_protocol::PROTOCOL_VERSION,
            hello_timeout: Duration::from_secs(10),
            keepalive: KeepAlive::default(),
            admission: AdmissionLimits::default(),
            shutdown_grace: Duration::from_secs(5),
            observer: None,
            slow_consumer_policy: SlowConsumerPolicy::default(),
            flow_control: None,
            publish_rate: None,
            web: None,
            cluster: None,
        }
    }

    /// Makes this server one node of a cluster that shares groups, presence and
    /// users through the Redis at `redis_url` (`redis://host:port`); see
    /// [`pushwire_engine::cluster`] for what holds across nodes. `config.node` must
    /// be unique in the cluster; `config.epoch` should be fresh for every start
    /// ([`ClusterConfig::new`] with [`random_epoch`]).
    pub fn cluster(mut self, redis_url: impl Into<String>, config: ClusterConfig) -> Self {
        self.cluster = Some((redis_url.into(), config));
        self
    }

    /// Accepts browsers on the same port: WebSocket upgrades (`wss://` with TLS),
    /// then pushwire in binary messages, and the static `pages` of `web` for plain
    /// `GET`s (see [`pushwire_engine::web`] for the why and the rules). Off by
    /// default.
    pub fn websocket(mut self, web: WebConfig) -> Self {
        self.web = Some(web);
        self
    }

    /// With [`websocket`](Self::websocket): the origins whose pages may open a
    /// WebSocket (`https://chat.example.com`; `*`: any). None given: the same origin
    /// only. Turns WebSocket on if it was off.
    pub fn allowed_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let web = self.web.get_or_insert_with(WebConfig::default);
        web.allowed_origins = origins.into_iter().map(Into::into).collect();
        self
    }

    /// Limits every connection to `per_second` publications and user messages per
    /// second on average, in bursts of up to `burst` (a token bucket per connection,
    /// in the engine; a publication to several groups costs one). A command over it
    /// is not delivered: its publisher gets a PushRejected with
    /// `RejectCode::RateLimited` (7), its connection stays, and other connections
    /// are not affected. Off by default. Fails for a zero rate or burst.
    pub fn publish_rate_limit(
        mut self,
        per_second: u32,
        burst: u32,
    ) -> Result<Self, RateLimitError> {
        self.publish_rate = Some(RateLimit::new(per_second, burst)?);
        Ok(self)
    }

    /// Speaks at most this protocol version (default: the newest), as an older
    /// server would: for rolling upgrades and mixed-version tests.
    pub fn max_protocol_version(mut self, version: u16) -> Self {
        self.max_version = version;
        self
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

    /// Backpressure to publishers (`None` turns it off): a receiver over the
    /// high-water mark holds back the connections publishing to it until it drains
    /// to the low-water mark, for at most the grace; then the slow-consumer policy
    /// handles it. See [`FlowControl`]. Default: [`FlowControl::default`] (1 MiB,
    /// 256 KiB, 2 s), scaled down to fit a smaller outbound limit or idle timeout.
    pub fn flow_control(mut self, flow_control: Option<FlowControl>) -> Self {
        self.flow_control = Some(flow_control);
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

    /// Bound on one connection's calls that run at once (default
    /// [`DEFAULT_MAX_RUNNING_REQUESTS`](pushwire_engine::DEFAULT_MAX_RUNNING_REQUESTS));
    /// later requests wait in order, and a cancel drops them before they start.
    pub fn max_running_requests(mut self, calls: usize) -> Self {
        self.max_running_requests = calls.max(1);
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

    /// Unwritten push bytes per connection before it counts as a slow consumer (default
    /// 8 MiB): a frame that finds this much waiting triggers the slow-consumer policy.
    pub fn max_outbound_bytes(mut self, bytes: usize) -> Self {
        self.max_outbound_bytes = bytes;
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
        self.admission.max_connections = max;
        self
    }

    /// Connections from one address beyond this are closed right after accept
    /// (default 1,000; IPv6 addresses count by their /64 prefix).
    pub fn max_connections_per_address(mut self, max: usize) -> Self {
        self.admission.max_per_address = max;
        self
    }

    /// Connections still in their TLS handshake and Hello beyond this are closed
    /// right after accept (default 256), so a flood of handshakes that never finish
    /// cannot crowd out the clients that do.
    pub fn max_handshaking(mut self, max: usize) -> Self {
        self.admission.max_handshaking = max;
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
                ServerTransport::Tls(server_tls_config(&credentials, self.client_auth.clone())?)
            }
            (Some(t), None) => t,
            (None, None) => return Err(ServerError::NoTransport),
        };
        let mut server = ServerConfig::new(transport);
        server.limits = self.limits;
        server.hello_timeout = self.hello_timeout;
        server.keepalive = self.keepalive;
        server.max_running_requests = self.max_running_requests;
        server.max_version = self.max_version;
        server.web = self.web.map(Arc::new);
        let mut config = NodeConfig::new(server);
        config.hub = self.hub;
        config.max_outbound_bytes = self.max_outbound_bytes;
        config.slow_consumer_policy = self.slow_consumer_policy;
        config.flow_control = self.flow_control.unwrap_or_else(|| {
            Some(FlowControl::fitted(
                self.max_outbound_bytes,
                self.keepalive.idle_timeout,
            ))
        });
        config.auto_subscribe = self.auto_subscribe;
        config.publish_rate = self.publish_rate;
        config.services = self.services.keys().copied().collect();
        config.cluster = self.cluster.as_ref().map(|(_, c)| c.clone());
        let hooks = LoggedHooks {
            app: self.hooks,
            observer: self.observer,
        };
        let mut node = Node::new(config, hooks)?;
        for (id, description) in self.groups {
            node.add_group(id, description)?;
        }
        let local_addr = listener.local_addr().ok();
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            node_config: Mutex::new(node.config().clone()),
            node: Mutex::new(node),
            authenticator: Mutex::new(self.authenticator),
            client_auth: self.client_auth,
            services: self.services,
            shutdown,
            live: AtomicUsize::new(0),
            all_closed: Notify::new(),
            admission: Mutex::new(Admission::new(self.admission)),
            next_connection: AtomicU64::new(1),
            node_timer: Notify::new(),
            metrics: ShellMetrics::new(),
        });
        let handle = ServerHandle { shared };
        let accept = tokio::spawn(accept_loop(handle.clone(), listener));
        let timer = tokio::spawn(expire_sessions(handle.clone()));
        let cluster = match &self.cluster {
            Some((url, config)) => {
                cluster::spawn(handle.clone(), url, config.node.clone(), config.epoch)
                    .map_err(|e| ServerError::Cluster(e.to_string()))?
            }
            None => Vec::new(),
        };
        Ok(Server {
            handle,
            local_addr,
            accept,
            timer,
            cluster,
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
    /// The backplane's writer and reader (a clustered server).
    cluster: Vec<tokio::task::JoinHandle<()>>,
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
        let open = loop {
            let notified = shared.all_closed.notified();
            let live = shared.live.load(Ordering::Acquire);
            if live == 0 {
                break 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break shared.live.load(Ordering::Acquire);
            }
        };
        if !self.cluster.is_empty() {
            // The sessions' departures reach the other nodes now rather than after
            // their liveness timeout, if Redis takes them within a second.
            let flush = tokio::time::Instant::now() + Duration::from_secs(1);
            while tokio::time::Instant::now() < flush
                && self
                    .handle
                    .with_node(|n| n.cluster().is_some_and(|c| c.backlog_len() > 0))
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            for task in &self.cluster {
                task.abort();
            }
        }
        open
    }
}

/// A fresh incarnation number for [`ClusterConfig::epoch`], from the crypto
/// provider's CSPRNG.
pub fn random_epoch() -> u64 {
    let mut bytes = [0u8; 8];
    let random = rustls::crypto::ring::default_provider().secure_random;
    if random.fill(&mut bytes).is_err() {
        warn!("system random number generator failed");
    }
    u64::from_be_bytes(bytes)
}

/// What the server keeps for all connections: the node behind one lock, and what the
/// connection tasks need without it.
struct Shared {
    node: Mutex<Node<LoggedHooks>>,
    /// The settings new connections are made from, without the node's lock: read
    /// once per accepted connection, replaced by a certificate reload (connections
    /// keep the `Arc` they started with).
    node_config: Mutex<Arc<NodeConfig>>,
    /// Asked once per Hello; replaced by [`ServerHandle::set_authenticator`].
    authenticator: Mutex<Arc<dyn Authenticator>>,
    /// Client certificates asked for, kept for a certificate reload.
    client_auth: ClientAuth,
    services: BTreeMap<u32, Arc<dyn Service>>,
    shutdown: watch::Sender<bool>,
    live: AtomicUsize,
    all_closed: Notify,
    /// The connection limits: who may connect now.
    admission: Mutex<Admission>,
    next_connection: AtomicU64,
    /// Woken when the node's deadline changed, so the timer task looks at it.
    node_timer: Notify,
    /// What only the shell sees, for the metrics.
    metrics: ShellMetrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the node as it was at the panic; keep
    // serving the other connections rather than poisoning them all.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The server's push and administration API, usable from handlers and from outside.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl ServerHandle {
    /// Runs `f` on the node under its lock, then logs what the node reports.
    fn with_node<R>(&self, f: impl FnOnce(&mut Node<LoggedHooks>) -> R) -> R {
        let mut node = lock(&self.shared.node);
        let deadline = node.poll_timeout();
        let r = f(&mut node);
        if node.poll_timeout() != deadline {
            // A session detached or a receiver congested: the timer task re-arms.
            self.shared.node_timer.notify_one();
        }
        while let Some(event) = node.poll_event() {
            log_node_event(&event);
        }
        r
    }

    /// Replaces the server's certificate chain and key with those in PEM files;
    /// `password` decrypts an encrypted PKCS#8 key. Connections accepted from now on
    /// use them; connections already open keep theirs (their TLS session is
    /// established and stays as it is). The client-certificate requirement stays as
    /// built. On any error nothing changes. Returns the new end-entity certificate's
    /// details, for the log.
    pub fn reload_tls(
        &self,
        cert: &Path,
        key: &Path,
        password: Option<&str>,
    ) -> Result<CertificateInfo, ServerError> {
        let credentials = ServerCredentials::from_pem_files(cert, key, password)?;
        self.set_tls_credentials(&credentials)
    }

    /// [`reload_tls`](Self::reload_tls) with credentials already loaded.
    pub fn set_tls_credentials(
        &self,
        credentials: &ServerCredentials,
    ) -> Result<CertificateInfo, ServerError> {
        let shared = &self.shared;
        let first = credentials
            .chain
            .first()
            .ok_or(ServerError::NoCertificate)?;
        let info = CertificateInfo::parse(first)?;
        let tls = server_tls_config(credentials, shared.client_auth.clone())?;
        let mut current = lock(&shared.node_config);
        if !matches!(current.server.transport, ServerTransport::Tls(_)) {
            return Err(ServerError::NotTls);
        }
        let mut server = ServerConfig::clone(&current.server);
        server.transport = ServerTransport::Tls(tls);
        let mut config = NodeConfig::clone(&current);
        config.server = Arc::new(server);
        *current = Arc::new(config);
        Ok(info)
    }

    /// Replaces the authenticator: Hellos from now on are decided by `authenticator`
    /// (a Hello being decided right now may still get the old one). Connections
    /// already in stay in.
    pub fn set_authenticator(&self, authenticator: impl Authenticator) {
        *lock(&self.shared.authenticator) = Arc::new(authenticator);
    }

    /// Publishes as the server (sender: the server; no echo).
    ///
    /// Never waits and never queues outside the receivers' bounded mailboxes: the
    /// outcome says how many receivers it `reached`, what was refused
    /// (`rejections`), how many receivers are over the flow control's high-water
    /// mark (`congested`: they fall behind, and a server publisher in a loop should
    /// slow down, as the server makes client publishers do by not reading them) and
    /// how many it cut off as slow consumers (`cut`). A receiver that stays
    /// congested past the grace gets the slow-consumer policy either way.
    pub fn publish(
        &self,
        groups: &[u32],
        payload: impl Into<Bytes>,
    ) -> Result<PushOutcome, HubError> {
        let groups: Vec<GroupId> = groups.iter().copied().map(GroupId).collect();
        let payload = payload.into();
        self.with_node(|node| node.publish(Actor::Server, &groups, payload))
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
        self.with_node(|node| node.publish(Actor::Connection(connection), &groups, payload))
    }

    /// Sends a message to every connection of `receiver` as the server; returns how
    /// many connections it reached.
    pub fn send_user_message(
        &self,
        receiver: &str,
        payload: impl Into<Bytes>,
    ) -> Result<u32, HubError> {
        let payload = payload.into();
        self.with_node(|node| node.send_user_message(Actor::Server, receiver, payload))
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
        self.with_node(|node| {
            node.send_user_message(Actor::Connection(connection), receiver, payload)
        })
        .map(|o| o.reached)
    }

    /// Subscribes a connection to groups.
    pub fn subscribe(
        &self,
        connection: ConnectionId,
        groups: &[u32],
    ) -> Result<PushOutcome, HubError> {
        let groups: Vec<GroupId> = groups.iter().copied().map(GroupId).collect();
        self.with_node(|node| node.subscribe(connection, &groups))
    }

    /// Unsubscribes a connection from groups.
    pub fn unsubscribe(
        &self,
        connection: ConnectionId,
        groups: &[u32],
    ) -> Result<PushOutcome, HubError> {
        let groups: Vec<GroupId> = groups.iter().copied().map(GroupId).collect();
        self.with_node(|node| node.unsubscribe(connection, &groups))
    }

    /// Registers a group at run time.
    pub fn add_group(&self, id: u32, description: impl Into<Text>) -> Result<(), HubError> {
        let description = description.into();
        self.with_node(|node| node.add_group(GroupId(id), description))
    }

    /// Removes a group at run time; its members are unsubscribed, with notifications.
    pub fn remove_group(&self, id: u32) -> Result<Vec<ConnectionId>, HubError> {
        self.with_node(|node| node.remove_group(GroupId(id)))
    }

    /// The registered groups.
    pub fn groups(&self) -> Vec<GroupDescription> {
        lock(&self.shared.node).hub().group_list()
    }

    /// Whether any connection of `user_id` is online.
    pub fn is_online(&self, user_id: &str) -> bool {
        lock(&self.shared.node).hub().is_user_online(user_id)
    }

    /// Authenticated connections (sessions, detached ones included).
    pub fn connection_count(&self) -> usize {
        lock(&self.shared.node).hub().connection_count()
    }

    /// Running totals of sessions started, resumed, lost and expired, slow
    /// consumers and superseded connections.
    pub fn stats(&self) -> NodeStats {
        *lock(&self.shared.node).stats()
    }

    /// The levels the node holds now: connections, detached sessions, groups,
    /// subscriptions, replay buffers, queued bytes. Walks every session under the
    /// node's lock: for a scrape every few seconds, not for a loop.
    pub fn gauges(&self) -> NodeGauges {
        lock(&self.shared.node).gauges()
    }

    /// Every connected session: user, address, groups, queued bytes, uptime.
    pub fn connection_reports(&self) -> Vec<ConnectionReport> {
        lock(&self.shared.node).connection_reports(now())
    }

    /// The server's metrics in the Prometheus text format (OpenMetrics 1.0, ending
    /// with `# EOF`), as the admin listener's `/metrics` serves them. The node's
    /// numbers are copied under one hold of its lock.
    pub fn metrics_text(&self) -> String {
        let (stats, gauges, cluster) = {
            let node = lock(&self.shared.node);
            (
                *node.stats(),
                node.gauges(),
                node.cluster().map(metrics::ClusterSnapshot::of),
            )
        };
        metrics::render(&self.shared.metrics, stats, gauges, cluster)
    }

    /// Whether the server is shutting down (the admin listener's `/healthz` says so).
    pub fn is_shutting_down(&self) -> bool {
        *self.shared.shutdown.borrow()
    }
}

fn log_node_event(event: &NodeEvent) {
    match event {
        NodeEvent::Cluster(event) => info!("cluster: {event}"),
        NodeEvent::SessionStarted {
            session,
            user_id,
            lost,
        } => {
            let lost = if *lost {
                " (the session it asked to resume is gone)"
            } else {
                ""
            };
            info!(user = %user_id, "{session} authenticated{lost}")
        }
        NodeEvent::Resumed {
            session,
            user_id,
            replayed,
            gap,
            superseded,
        } => info!(
            user = %user_id,
            "{session} resumed: {replayed} events replayed{}{}",
            gap.map_or(String::new(), |(f, l)| format!(", gap {f}..={l}")),
            if *superseded { "; its old connection is closed" } else { "" }
        ),
        NodeEvent::ResumeRefused { user_id } => {
            info!(user = %user_id, "refused: the resume token belongs to another user")
        }
        NodeEvent::UserAtLimit {
            user_id,
            max_connections,
        } => info!(
            user = %user_id,
            "refused: the user already has {max_connections} connections open, its limit"
        ),
        NodeEvent::UnknownService {
            user_id,
            service_id,
        } => info!(user = %user_id, "refused: no service {service_id} on this server"),
        NodeEvent::Detached { session, user_id } => {
            debug!(user = %user_id, "{session} detached; kept for a resume")
        }
        NodeEvent::Ended {
            session,
            user_id,
            end: SessionEnd::Expired,
        } => info!(user = %user_id, "{session}: session expired"),
        NodeEvent::Ended {
            session, user_id, ..
        } => debug!(user = %user_id, "{session} ended"),
        NodeEvent::SlowConsumer { session } => {
            warn!(
                "slow consumer: outbound queue over its limit, or nothing taken for the flow \
                 control's grace; closing {session}, session kept"
            )
        }
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
        if let Err(refusal) = lock(&shared.admission).admit(peer.ip()) {
            warn!(conn = id, %peer, "not admitted ({refusal}); closing");
            shared.metrics.refused(&refusal);
            drop(stream);
            continue;
        }
        shared.metrics.accepted();
        shared.live.fetch_add(1, Ordering::AcqRel);
        let handle = handle.clone();
        tokio::spawn(
            async move {
                let handshaking = run_connection(&handle, stream, peer).await;
                let shared = &handle.shared;
                lock(&shared.admission).closed(peer.ip(), handshaking);
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

/// The channel on which spawned service calls return their results to the
/// connection's task, and the cancellations of the calls that run.
struct Results {
    tx: mpsc::UnboundedSender<(u64, pushwire_engine::RequestResult)>,
    rx: mpsc::UnboundedReceiver<(u64, pushwire_engine::RequestResult)>,
    /// Running calls that can be cancelled (protocol version 3): fired on the
    /// client's Cancel, and for every call left when the connection ends.
    cancellations: BTreeMap<u64, Cancellation>,
    /// The latency histograms of the methods this connection called.
    histograms: MethodHistograms,
}

/// The connection's waker: the node wakes it when it queued frames for the
/// connection or closed its mailbox.
struct TaskWake(Notify);

impl Wake for TaskWake {
    fn wake(self: Arc<Self>) {
        self.0.notify_one();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.notify_one();
    }
}

/// Moves one connection's bytes: socket ↔ [`NodeConnection`], the node's lock for
/// push commands, the application's authenticator and services. Every decision is
/// the node's.
///
/// Returns whether the connection ended in its handshake (before its Hello was
/// permitted), for the admission count.
async fn run_connection<S: ByteStream>(handle: &ServerHandle, stream: S, peer: SocketAddr) -> bool {
    let shared = &handle.shared;
    let wake = Arc::new(TaskWake(Notify::new()));
    let waker = Waker::from(wake.clone());
    let config = lock(&shared.node_config).clone();
    let mut conn = match NodeConnection::new(config, peer, now(), waker) {
        Ok(conn) => conn,
        Err(e) => {
            warn!("cannot start TLS: {e}");
            return true;
        }
    };
    debug!("accepted");
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut transmit = Vec::new();
    // Results of service calls, made at the first request: most connections of a
    // push server never call a service, and the channel costs 2 KiB.
    let mut results: Option<Results> = None;
    let mut shutdown = shared.shutdown.subscribe();
    let mut closing = false;
    // Bytes of `transmit` already written.
    let mut written = 0usize;
    let mut socket_bytes = SocketBytes::default();

    // Until the Hello is permitted the connection counts against the handshake
    // limit.
    let mut handshaking = true;
    loop {
        if handshaking && conn.member().is_some() {
            lock(&shared.admission).handshake_finished();
            handshaking = false;
        }
        while let Some(event) = conn.poll_event() {
            match event {
                NodeConnectionEvent::Authenticate(request) => {
                    authenticate(handle, &mut conn, request)
                }
                NodeConnectionEvent::Request {
                    request_id,
                    method_id,
                    payload,
                } => {
                    let Some(member) = conn.member() else {
                        continue;
                    };
                    let Some(service) = shared.services.get(&member.service_id).cloned() else {
                        conn.respond(
                            request_id,
                            Err((ErrorCode::NoService, Text::from("no service with this id"))),
                        );
                        continue;
                    };
                    let results = results.get_or_insert_with(|| {
                        let (tx, rx) = mpsc::unbounded_channel();
                        Results {
                            tx,
                            rx,
                            cancellations: BTreeMap::new(),
                            histograms: MethodHistograms::default(),
                        }
                    });
                    let cancellation = if conn.version() >= 3 {
                        let cancellation = Cancellation::new();
                        results
                            .cancellations
                            .insert(request_id, cancellation.clone());
                        cancellation
                    } else {
                        Cancellation::never()
                    };
                    let call = Call {
                        method: method_id,
                        payload,
                        user_id: member.user_id.clone(),
                        connection: member.session,
                        server: handle.clone(),
                        cancellation,
                    };
                    let results_tx = results.tx.clone();
                    let histogram =
                        results
                            .histograms
                            .get(&shared.metrics, member.service_id, method_id);
                    let started = tokio::time::Instant::now();
                    tokio::spawn(
                        async move {
                            let result = service.call(call).await;
                            histogram.observe(started.elapsed().as_secs_f64());
                            let _ = results_tx.send((request_id, result));
                        }
                        .in_current_span(),
                    );
                }
                NodeConnectionEvent::CancelRequested { request_id } => {
                    if let Some(cancellation) = results
                        .as_ref()
                        .and_then(|r| r.cancellations.get(&request_id))
                    {
                        debug!(request_id, "the client cancelled a running call");
                        cancellation.cancel();
                    }
                }
                NodeConnectionEvent::Closed(reason) => note_close(shared, &reason, handshaking),
            }
        }
        // Push commands from one read go to the node under one hold of its lock, and
        // each receiver is woken once for all of them.
        if conn.wants_node() {
            handle.with_node(|node| node.handle_connection(now(), &mut conn));
        }
        // A peer that keeps the socket readable would starve the timer branch of the
        // biased select below: deadlines are checked here too.
        if conn.poll_timeout().is_some_and(|t| t <= now()) {
            conn.handle_timeout(now());
        }
        // Writes are part of the select below, not awaited on their own: a client
        // that stops reading must not stop this task from noticing that the node
        // closed its mailbox.
        if written == transmit.len() {
            transmit.clear();
            written = 0;
            conn.poll_transmit(now(), &mut transmit);
            // Taking the mailbox may have drained a congested receiver: its
            // publishers are released now, not at the next wake.
            if conn.wants_node() {
                handle.with_node(|node| node.handle_connection(now(), &mut conn));
            }
            if transmit.is_empty() && conn.poll_idle() {
                transmit = Vec::new();
                socket_bytes.flush(&shared.metrics);
                // Every call has answered (the engine counts a request until its
                // result was received here and released): no sender will send again.
                if conn.pending_requests() == 0 {
                    results = None;
                }
            }
        }
        if conn.is_abandoned() {
            debug!("the peer does not read; dropping the connection");
            break;
        }
        if conn.is_finished() && transmit.is_empty() {
            let _ = writer.shutdown().await;
            break;
        }

        let timeout = conn.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            changed = shutdown.changed(), if !closing => {
                closing = true;
                if changed.is_ok() {
                    conn.close(CloseCode::GoingAway, "server shutting down");
                }
            }
            result = writer.write(&transmit[written..]), if written < transmit.len() => match result {
                Ok(0) | Err(_) => {
                    conn.handle_transport_closed();
                    transmit.clear();
                    written = 0;
                }
                Ok(n) => {
                    written += n;
                    socket_bytes.written(n, &shared.metrics);
                    // The receiver's progress, for the flow control's grace.
                    conn.handle_written(now(), n);
                }
            },
            // The bytes go to the engine inside the read's poll: no read buffer per
            // connection (see `crate::read`).
            // Not while the node's flow control holds this publisher back: TCP then
            // slows the client down.
            () = read_with(&mut reader, |input| match input {
                Input::Bytes(bytes) => {
                    socket_bytes.read(bytes.len(), &shared.metrics);
                    conn.handle_input(now(), bytes)
                }
                Input::Closed => conn.handle_transport_closed(),
            }), if conn.wants_input() => {}
            // The task keeps a sender, so `recv` never ends with `None`.
            Some((request_id, result)) = async { results.as_mut().expect("guarded").rx.recv().await }, if results.is_some() => {
                if let Some(results) = &mut results {
                    results.cancellations.remove(&request_id);
                }
                conn.respond(request_id, result);
            }
            () = wake.0.notified() => conn.handle_mailbox(now()),
            () = sleep_until(timeout) => conn.handle_timeout(now()),
        }
    }

    // Nobody will read the results of calls that still run: let them stop.
    if let Some(results) = &results {
        for cancellation in results.cancellations.values() {
            cancellation.cancel();
        }
    }
    // The Closed event can come with the last transmit, after the loop's last look.
    while let Some(event) = conn.poll_event() {
        if let NodeConnectionEvent::Closed(reason) = event {
            note_close(shared, &reason, handshaking);
        }
    }
    socket_bytes.flush(&shared.metrics);
    handle.with_node(|node| node.handle_connection_closed(now(), &mut conn));
    debug!("finished");
    handshaking
}

/// Fires the node's timers: detached sessions whose timeout has passed end (their
/// groups' other members are told then), congested receivers past their grace get
/// the slow-consumer policy.
async fn expire_sessions(handle: ServerHandle) {
    let shared = &handle.shared;
    loop {
        let next = lock(&shared.node).poll_timeout();
        let woken = shared.node_timer.notified();
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
        handle.with_node(|node| node.handle_timeout(now()));
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Logs how a connection closed, and counts handshakes that failed.
fn note_close(shared: &Shared, reason: &CloseReason, handshaking: bool) {
    if handshaking {
        match reason {
            CloseReason::Tls(_) => shared.metrics.tls_failed(),
            CloseReason::Timeout(TimeoutKind::Handshake | TimeoutKind::Hello) => {
                shared.metrics.handshake_timed_out()
            }
            _ => {}
        }
    }
    log_close(reason);
}

fn log_close(reason: &CloseReason) {
    match reason {
        CloseReason::Local { .. } | CloseReason::Remote { .. } | CloseReason::PeerClosed => {
            info!("closed: {reason}")
        }
        _ => warn!("closed: {reason}"),
    }
}

/// Asks the application's authenticator; the node admits what it permits.
fn authenticate(handle: &ServerHandle, conn: &mut NodeConnection, request: Box<AuthRequest>) {
    let authenticator = lock(&handle.shared.authenticator).clone();
    let decision = authenticator.authenticate(&AuthAttempt {
        user_id: request.user_id.as_str(),
        password: &request.password,
        service_id: request.service_id,
        peer: request.peer,
        client_certificate: request.client_certificate.as_ref(),
    });
    let permit = match decision {
        AuthDecision::Refuse { code, reason } => {
            info!(user = %request.user_id, "refused: {reason}");
            handle.shared.metrics.auth_refused();
            conn.refuse(code, reason);
            return;
        }
        AuthDecision::Permit => Permit::UNLIMITED,
        AuthDecision::PermitWith(permit) => permit,
    };
    let token = random_token();
    handle.with_node(|node| node.handle_permitted_hello(now(), conn, request, token, permit));
}

/// A resume token from the crypto provider's CSPRNG.
fn random_token() -> ResumeToken {
    let mut token = [0u8; 16];
    let random = rustls::crypto::ring::default_provider().secure_random;
    if random.fill(&mut token).is_err() {
        // ring's system RNG does not fail on supported platforms; an all-zero token
        // would only weaken resume.
        warn!("system random number generator failed");
    }
    ResumeToken(token)
}
