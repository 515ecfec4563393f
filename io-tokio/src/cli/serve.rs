//! `pushwire serve`: the server with the hello-world service, configured by flags and
//! an optional TOML file (flags win).
//!
//! ```toml
//! listen = "0.0.0.0:20901"
//! cert = "server.cert.pem"          # relative paths: from the file's directory
//! key = "server.key.pem"
//! key_password = "…"
//! client_ca = ["clients-ca.pem"]    # require client certificates (mutual TLS)
//! plaintext = false
//! auto_subscribe = [1, 3]
//! users = "users.toml"
//! max_running_calls = 64            # calls of one connection that run at once
//! max_connections = 10000
//! max_connections_per_address = 1000  # IPv6: per /64 prefix
//! max_handshaking = 256             # connections in their TLS handshake and Hello
//! admin = "127.0.0.1:9090"          # /metrics, /healthz, /connz over plain HTTP
//! publish_rate = 100                # publications + user messages per second and connection
//! publish_burst = 200               # bursts of up to this many (default: publish_rate)
//! web = true                        # browsers: WebSocket and the chat page on this port
//! allowed_origins = ["https://chat.example.com"]  # default: same origin only
//! cluster = "redis://127.0.0.1:6379"  # one node of a cluster sharing this Redis
//! node_id = "eu-1"                  # unique in the cluster (default: HOSTNAME-PORT)
//!
//! [[groups]]
//! id = 1
//! description = "R&D Department"
//!
//! [outbound]                        # what the server does when a receiver is slow
//! limit = "8MiB"                    # hard limit of unwritten bytes per connection
//! slow_consumer = "disconnect"      # or "drop-oldest"
//! flow_control = true               # hold publishers back for congested receivers
//! high_water = "1MiB"
//! low_water = "256KiB"
//! grace_ms = 2000
//! ```

use super::users::{DevelopmentLogin, UserStore, Users};
use super::{development_file, CliError, Exit, DEVELOPMENT_KEY_PASSWORD, DEVELOPMENT_PASSWORD};
use crate::hello::{hello_world_service, HELLO_WORLD_SERVICE};
use crate::server::{
    random_epoch, AdminServer, AdmissionLimits, ClusterConfig, FlowControl, RateLimit,
    ServerBuilder, ServerError, ServerHandle, WebConfig,
};
use clap::Args;
use pushwire_engine::hub::SlowConsumerPolicy;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

/// The address `serve` listens on and clients connect to by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:20901";

/// The seed's chat groups (its Figure 5), registered when none are configured.
pub const TUTORIAL_GROUPS: [(u32, &str); 3] = [
    (1, "R&D Department"),
    (2, "Sales Department"),
    (3, "Management Department"),
];

/// Arguments of `pushwire serve`. Every setting may also come from `--config`; a flag
/// given here wins over the file.
#[derive(Debug, Args)]
#[command(after_help = "Exit codes: 1 cannot listen, 2 invalid configuration. \
Logging: RUST_LOG (default info) to stderr; the bound address is printed to stdout as \
\"listening on ADDR\". SIGHUP rereads the users file and the certificate and key \
(new connections use them; a file that fails to load is logged and the old one kept).")]
pub struct ServeArgs {
    /// TOML file with the settings below (flags override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port [default: 127.0.0.1:20901].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Server certificate chain, PEM [default: the development certificate].
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Server private key, PEM (PKCS#8, possibly encrypted).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Password of an encrypted private key.
    #[arg(long, value_name = "PASSWORD")]
    pub key_password: Option<String>,
    /// Require client certificates signed by a CA in this PEM file (repeatable).
    #[arg(long, value_name = "FILE")]
    pub client_ca: Vec<PathBuf>,
    /// No TLS: nothing is encrypted. For trusted networks and benchmarks only.
    #[arg(long)]
    pub plaintext: bool,
    /// Register a chat group (repeatable) [default: the tutorial's 1 "R&D Department",
    /// 2 "Sales Department", 3 "Management Department"].
    #[arg(long = "group", value_name = "ID=DESCRIPTION", value_parser = parse_group)]
    pub groups: Vec<(u32, String)>,
    /// Subscribe every new connection to these groups (the tutorial's Figure 6 uses
    /// 1,3) [default: none].
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    pub auto_subscribe: Option<Vec<u32>>,
    /// TOML file of user ids, password hashes and permissions (`[users]` then
    /// `alice = "…"`, or `[users.bob]` with `password`, `publish`, `subscribe`,
    /// `user_messages`, `max_connections`; make hashes with `pushwire hash-password`;
    /// SIGHUP rereads it). Without it, any user id may log in with the password
    /// MyPassword, and only on a loopback address.
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// Hard limit of unwritten push bytes per connection (K, KiB, M, MiB suffixes);
    /// over it the slow-consumer policy acts at once [default: 8MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_byte_size)]
    pub max_outbound: Option<usize>,
    /// What happens to a receiver over the limit, or congested past the grace:
    /// disconnect (its session kept for a resume) or drop-oldest (a Gap tells it
    /// what it lost) [default: disconnect].
    #[arg(long, value_name = "POLICY", value_parser = parse_policy)]
    pub slow_consumer: Option<SlowConsumerPolicy>,
    /// No flow control: a receiver that falls behind is handled only at the hard
    /// limit, and publishers are never held back.
    #[arg(long)]
    pub no_flow_control: bool,
    /// Queued bytes that make a receiver congested: its publishers are held back
    /// [default: 1MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_byte_size)]
    pub high_water: Option<usize>,
    /// Queued bytes at which a congested receiver releases its publishers
    /// [default: 256KiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_byte_size)]
    pub low_water: Option<usize>,
    /// Longest a congested receiver that takes nothing holds its publishers back
    /// before the slow-consumer policy acts, in milliseconds [default: 2000].
    #[arg(long, value_name = "MS")]
    pub grace_ms: Option<u64>,
    /// Calls of one connection that run at once; later ones wait in order, and a
    /// cancelled one that waits never runs [default: 64].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_running_calls: Option<u32>,
    /// Connections at once, in all; more are closed right after accept
    /// [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Connections at once from one address (IPv6: one /64 prefix) [default: 1000].
    #[arg(long, value_name = "N")]
    pub max_connections_per_address: Option<usize>,
    /// Connections at once still in their TLS handshake and Hello, so a flood of
    /// handshakes that never finish cannot crowd out real clients [default: 256].
    #[arg(long, value_name = "N")]
    pub max_handshaking: Option<usize>,
    /// Serve the admin pages on this address: /metrics (Prometheus), /healthz and
    /// /connz, over plain HTTP without authentication — keep it on a loopback or
    /// management address [default: off].
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Publications and user messages per second that one connection may send on
    /// average; over it a command is refused with `RateLimited` (7) and not
    /// delivered [default: no limit].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub publish_rate: Option<u32>,
    /// With --publish-rate: the largest burst at once [default: the rate].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub publish_burst: Option<u32>,
    /// Browsers: accept WebSocket connections (`wss://`) on the listen port itself and
    /// serve the chat page at `https://HOST:PORT/`; the URL is printed after
    /// "listening on" [default: off].
    #[arg(long)]
    pub web: bool,
    /// With --web: an origin whose pages may open a WebSocket, as
    /// `https://chat.example.com` (repeatable; `*`: any) [default: the same origin
    /// only, the page this server serves].
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,
    /// Be one node of a cluster: share groups, presence and users with every
    /// server on this Redis (`redis://HOST:PORT`) [default: a server on its own].
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,
    /// With --cluster: this node's id, unique in the cluster, 1 to 64 of
    /// `A-Z a-z 0-9 - _ .` [default: HOSTNAME-PORT].
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
}

/// Parses `1048576`, `1024K`, `1024KiB`, `1M`, `1MiB` (K and M are binary, as the
/// rest of pushwire's sizes).
pub(super) fn parse_byte_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let number: usize = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size (bytes, or with K, KiB, M, MiB)"))?;
    let scale = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "KB" | "k" => 1024,
        "M" | "MiB" | "MB" => 1024 * 1024,
        "G" | "GiB" | "GB" => 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "{other:?} is not a size unit (K, KiB, M, MiB, G, GiB)"
            ))
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_policy(s: &str) -> Result<SlowConsumerPolicy, String> {
    match s {
        "disconnect" => Ok(SlowConsumerPolicy::Disconnect),
        "drop-oldest" => Ok(SlowConsumerPolicy::DropOldest),
        _ => Err(format!("{s:?} is not a policy (disconnect or drop-oldest)")),
    }
}

fn parse_group(s: &str) -> Result<(u32, String), String> {
    let (id, description) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not ID=DESCRIPTION"))?;
    let id = id
        .trim()
        .parse()
        .map_err(|_| format!("{id:?} is not a group id (a number)"))?;
    Ok((id, description.to_owned()))
}

/// The settings of a `--config` file; every field optional.
#[derive(Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on.
    pub listen: Option<SocketAddr>,
    /// Certificate chain file.
    pub cert: Option<PathBuf>,
    /// Private key file.
    pub key: Option<PathBuf>,
    /// Private key password.
    pub key_password: Option<String>,
    /// Client CA files (mutual TLS).
    pub client_ca: Option<Vec<PathBuf>>,
    /// No TLS.
    pub plaintext: Option<bool>,
    /// Chat groups.
    pub groups: Option<Vec<GroupConfig>>,
    /// Groups every new connection joins.
    pub auto_subscribe: Option<Vec<u32>>,
    /// Users file.
    pub users: Option<PathBuf>,
    /// Slow receivers: limits, policy, flow control.
    pub outbound: Option<OutboundConfig>,
    /// Calls of one connection that run at once.
    pub max_running_calls: Option<u32>,
    /// Connections at once, in all.
    pub max_connections: Option<usize>,
    /// Connections at once from one address.
    pub max_connections_per_address: Option<usize>,
    /// Connections at once in their handshake.
    pub max_handshaking: Option<usize>,
    /// The admin listener's address.
    pub admin: Option<SocketAddr>,
    /// Publish rate limit per connection, per second.
    pub publish_rate: Option<u32>,
    /// Its burst.
    pub publish_burst: Option<u32>,
    /// Browsers: WebSocket and the chat page on the listen port.
    pub web: Option<bool>,
    /// Origins allowed to open a WebSocket (default: same origin).
    pub allowed_origins: Option<Vec<String>>,
    /// The cluster's Redis URL.
    pub cluster: Option<String>,
    /// This node's id in the cluster.
    pub node_id: Option<String>,
}

/// The `[outbound]` table of a `--config` file.
#[derive(Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// Hard limit per connection, as `"8MiB"` or a number of bytes.
    pub limit: Option<ByteSize>,
    /// `"disconnect"` or `"drop-oldest"`.
    pub slow_consumer: Option<String>,
    /// Whether publishers are held back for congested receivers.
    pub flow_control: Option<bool>,
    /// High-water mark.
    pub high_water: Option<ByteSize>,
    /// Low-water mark.
    pub low_water: Option<ByteSize>,
    /// Grace in milliseconds.
    pub grace_ms: Option<u64>,
}

/// A size in a config file: a number of bytes or a string such as `"256KiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SizeValue")]
pub struct ByteSize(pub usize);

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl TryFrom<SizeValue> for ByteSize {
    type Error = String;

    fn try_from(value: SizeValue) -> Result<Self, String> {
        match value {
            SizeValue::Bytes(n) => usize::try_from(n)
                .map(ByteSize)
                .map_err(|_| format!("{n} is too large")),
            SizeValue::Text(text) => parse_byte_size(&text).map(ByteSize),
        }
    }
}

/// A chat group in a `--config` file.
#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// Its id.
    pub id: u32,
    /// What it is for.
    pub description: String,
}

impl ServeConfig {
    /// Parses a config file's text; relative paths are taken from `base` (the file's
    /// directory), as a reader of the file would expect.
    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let mut config: ServeConfig = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        let paths = config
            .cert
            .iter_mut()
            .chain(config.key.iter_mut())
            .chain(config.users.iter_mut())
            .chain(config.client_ca.iter_mut().flatten());
        for path in paths {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        Ok(config)
    }

    fn load(path: &Path) -> Result<Self, CliError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::new(
                Exit::Usage,
                format!("cannot read the config file {}: {e}", path.display()),
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(|e| {
            CliError::new(
                Exit::Usage,
                format!("invalid config file {}: {e}", path.display()),
            )
        })
    }
}

/// How the server secures connections.
#[derive(Debug, PartialEq, Eq)]
enum Transport {
    Plaintext,
    Tls {
        cert: PathBuf,
        key: PathBuf,
        key_password: Option<String>,
        client_ca: Vec<PathBuf>,
        development: bool,
    },
}

/// Flags and file merged, defaults applied, and checked.
#[derive(Debug, PartialEq, Eq)]
struct Settings {
    listen: SocketAddr,
    transport: Transport,
    groups: Vec<(u32, String)>,
    auto_subscribe: Vec<u32>,
    users: Option<PathBuf>,
    max_outbound: usize,
    slow_consumer: SlowConsumerPolicy,
    flow_control: Option<FlowControl>,
    max_running_calls: usize,
    admission: AdmissionLimits,
    admin: Option<SocketAddr>,
    publish_rate: Option<RateLimit>,
    web: bool,
    allowed_origins: Vec<String>,
    /// The cluster's Redis URL and this node's id (`None`: HOSTNAME-PORT).
    cluster: Option<(String, Option<String>)>,
}

/// This machine's host name (letters, digits, `-`, `_`, `.` kept) and the port: a
/// node id that stays the same across restarts of the same server.
fn default_node_id(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(50)
        .collect();
    let host = if host.is_empty() {
        "node".to_owned()
    } else {
        host
    };
    if port == 0 {
        // Any free port: no two such servers may share an id.
        return format!("{host}-{:08x}", random_epoch() as u32);
    }
    format!("{host}-{port}")
}

/// The server's outbound limit unless configured.
const DEFAULT_MAX_OUTBOUND: usize = 8 * 1024 * 1024;

fn usage(message: impl Into<String>) -> CliError {
    CliError::new(Exit::Usage, message)
}

impl Settings {
    fn resolve(args: ServeArgs, file: ServeConfig) -> Result<Self, CliError> {
        let listen = match args.listen.or(file.listen) {
            Some(listen) => listen,
            None => DEFAULT_LISTEN.parse().expect("valid constant"),
        };
        let plaintext = args.plaintext || file.plaintext.unwrap_or(false);
        let cert = args.cert.or(file.cert);
        let key = args.key.or(file.key);
        let key_password = args.key_password.or(file.key_password);
        let client_ca = if args.client_ca.is_empty() {
            file.client_ca.unwrap_or_default()
        } else {
            args.client_ca
        };
        let transport = if plaintext {
            if cert.is_some() || key.is_some() || !client_ca.is_empty() {
                return Err(usage(
                    "plaintext excludes a certificate, a key and client CAs",
                ));
            }
            Transport::Plaintext
        } else {
            match (cert, key) {
                (Some(cert), Some(key)) => Transport::Tls {
                    cert,
                    key,
                    key_password,
                    client_ca,
                    development: false,
                },
                (None, None) => Transport::Tls {
                    cert: development_file("server.cert.pem"),
                    key: development_file("server.key.pem"),
                    key_password: Some(
                        key_password.unwrap_or_else(|| DEVELOPMENT_KEY_PASSWORD.to_owned()),
                    ),
                    client_ca,
                    development: true,
                },
                (Some(_), None) => return Err(usage("a certificate needs its key (--key)")),
                (None, Some(_)) => return Err(usage("a key needs its certificate (--cert)")),
            }
        };
        let groups = if !args.groups.is_empty() {
            args.groups
        } else if let Some(groups) = file.groups {
            groups.into_iter().map(|g| (g.id, g.description)).collect()
        } else {
            TUTORIAL_GROUPS
                .iter()
                .map(|&(id, description)| (id, description.to_owned()))
                .collect()
        };
        let mut ids = BTreeSet::new();
        for (id, _) in &groups {
            if !ids.insert(*id) {
                return Err(usage(format!("group {id} is registered twice")));
            }
        }
        let auto_subscribe = args
            .auto_subscribe
            .or(file.auto_subscribe)
            .unwrap_or_default();
        if let Some(unknown) = auto_subscribe.iter().find(|id| !ids.contains(id)) {
            return Err(usage(format!(
                "auto-subscribe group {unknown} is not a registered group"
            )));
        }
        let users = args.users.or(file.users);
        if users.is_none() && !listen.ip().is_loopback() {
            return Err(usage(format!(
                "refusing to listen on {listen} without --users: the development login (any \
                 user id with the password {DEVELOPMENT_PASSWORD}) is only allowed on a \
                 loopback address; make a users file with `pushwire hash-password`"
            )));
        }
        let outbound = file.outbound.unwrap_or_default();
        let max_outbound = args
            .max_outbound
            .or(outbound.limit.map(|l| l.0))
            .unwrap_or(DEFAULT_MAX_OUTBOUND);
        let slow_consumer = match (args.slow_consumer, outbound.slow_consumer) {
            (Some(policy), _) => policy,
            (None, Some(text)) => parse_policy(&text).map_err(usage)?,
            (None, None) => SlowConsumerPolicy::default(),
        };
        let flow_on = !args.no_flow_control && outbound.flow_control.unwrap_or(true);
        let fitted = FlowControl::fitted(
            max_outbound,
            pushwire_engine::KeepAlive::default().idle_timeout,
        );
        let flow_control = flow_on.then(|| FlowControl {
            high_water: args
                .high_water
                .or(outbound.high_water.map(|s| s.0))
                .unwrap_or(fitted.high_water),
            low_water: args
                .low_water
                .or(outbound.low_water.map(|s| s.0))
                .unwrap_or(fitted.low_water),
            grace: args
                .grace_ms
                .or(outbound.grace_ms)
                .map_or(fitted.grace, Duration::from_millis),
        });
        if let Some(flow) = &flow_control {
            flow.check_marks(max_outbound)
                .map_err(|e| usage(e.to_string()))?;
        }
        let max_running_calls = match args.max_running_calls.or(file.max_running_calls) {
            Some(0) => return Err(usage("max_running_calls must be at least 1")),
            Some(n) => n as usize,
            None => pushwire_engine::DEFAULT_MAX_RUNNING_REQUESTS,
        };
        let defaults = AdmissionLimits::default();
        let admission = AdmissionLimits {
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(defaults.max_connections),
            max_per_address: args
                .max_connections_per_address
                .or(file.max_connections_per_address)
                .unwrap_or(defaults.max_per_address),
            max_handshaking: args
                .max_handshaking
                .or(file.max_handshaking)
                .unwrap_or(defaults.max_handshaking),
        };
        if admission.max_connections == 0
            || admission.max_per_address == 0
            || admission.max_handshaking == 0
        {
            return Err(usage(
                "max_connections, max_connections_per_address and max_handshaking must be \
                 at least 1",
            ));
        }
        let publish_rate = match (
            args.publish_rate.or(file.publish_rate),
            args.publish_burst.or(file.publish_burst),
        ) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(usage("publish_burst needs publish_rate"));
            }
            (Some(rate), burst) => Some(
                RateLimit::new(rate, burst.unwrap_or(rate)).map_err(|e| usage(e.to_string()))?,
            ),
        };
        Ok(Self {
            listen,
            transport,
            groups,
            auto_subscribe,
            users,
            max_outbound,
            slow_consumer,
            flow_control,
            max_running_calls,
            admission,
            admin: args.admin.or(file.admin),
            publish_rate,
            web: args.web || file.web.unwrap_or(false),
            allowed_origins: if args.allowed_origins.is_empty() {
                file.allowed_origins.unwrap_or_default()
            } else {
                args.allowed_origins
            },
            cluster: match (args.cluster.or(file.cluster), args.node_id.or(file.node_id)) {
                (Some(url), node_id) => Some((url, node_id)),
                (None, Some(_)) => return Err(usage("--node-id needs --cluster")),
                (None, None) => None,
            },
        })
    }
}

fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // stdout carries only the "listening on" line, for scripts; logs go to stderr.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn server_failure(error: ServerError) -> CliError {
    match error {
        ServerError::Bind { .. } => CliError::new(Exit::Failure, error.to_string()),
        // Certificates, keys, limits and groups: what the configuration says.
        other => usage(other.to_string()),
    }
}

/// Runs `pushwire serve` until Ctrl-C, then shuts down gracefully.
pub(super) async fn run(mut args: ServeArgs) -> Result<(), CliError> {
    init_logging();
    let file = match args.config.take() {
        Some(path) => ServeConfig::load(&path)?,
        None => ServeConfig::default(),
    };
    let settings = Settings::resolve(args, file)?;

    let mut builder = ServerBuilder::new();
    match &settings.transport {
        Transport::Plaintext => {
            warn!("plaintext: connections are not encrypted, passwords travel in the clear");
            builder = builder.plaintext();
        }
        Transport::Tls {
            cert,
            key,
            key_password,
            client_ca,
            development,
        } => {
            if *development && !(cert.is_file() && key.is_file()) {
                return Err(usage(format!(
                    "no --cert and --key given, and the development certificates are not at {} \
                     (they exist only in a source checkout)",
                    cert.display()
                )));
            }
            if *development {
                warn!(
                    "using the development certificate {} (for development and tests only; \
                     use --cert and --key in production)",
                    cert.display()
                );
            }
            builder = builder
                .tls_from_pem(cert, key, key_password.as_deref())
                .map_err(server_failure)?;
            if !client_ca.is_empty() {
                builder = builder.client_ca(client_ca).map_err(server_failure)?;
            }
        }
    }
    let mut store = None;
    builder = match &settings.users {
        Some(path) => {
            let users = Users::load(path).map_err(|e| usage(e.to_string()))?;
            if users.is_empty() {
                warn!("{} lists no users: nobody can log in", path.display());
            } else {
                info!("{}", describe_users(path, &users));
            }
            let users = UserStore::new(users);
            let hooks = users.hooks();
            store = Some(users.clone());
            builder.authenticator(users).hooks(hooks)
        }
        None => {
            warn!(
                "no --users file: any user id may log in with the password \
                 {DEVELOPMENT_PASSWORD} (allowed on loopback addresses only)"
            );
            builder.authenticator(DevelopmentLogin)
        }
    };
    for (id, description) in &settings.groups {
        builder = builder.group(*id, description.as_str());
    }
    if let Some(limit) = settings.publish_rate {
        builder = builder
            .publish_rate_limit(limit.rate(), limit.burst())
            .map_err(|e| usage(e.to_string()))?;
        info!(
            "publish rate limit: {} per second per connection, bursts of {}",
            limit.rate(),
            limit.burst()
        );
    }
    if settings.web {
        builder = builder.websocket(WebConfig {
            allowed_origins: settings.allowed_origins.clone(),
            pages: crate::web::chat_pages(),
            ..WebConfig::default()
        });
    } else if !settings.allowed_origins.is_empty() {
        return Err(usage("--allowed-origin needs --web"));
    }
    if let Some((url, node_id)) = &settings.cluster {
        let node_id = node_id
            .clone()
            .unwrap_or_else(|| default_node_id(settings.listen.port()));
        let config = ClusterConfig::new(node_id.as_str(), random_epoch());
        config.check().map_err(|e| usage(e.to_string()))?;
        info!(node = %node_id, epoch = %format!("{:016x}", config.epoch), "cluster through {url}");
        builder = builder.cluster(url.clone(), config);
    }
    let server = builder
        .max_outbound_bytes(settings.max_outbound)
        .slow_consumer_policy(settings.slow_consumer)
        .flow_control(settings.flow_control)
        .max_running_requests(settings.max_running_calls)
        .max_connections(settings.admission.max_connections)
        .max_connections_per_address(settings.admission.max_per_address)
        .max_handshaking(settings.admission.max_handshaking)
        .auto_subscribe(settings.auto_subscribe.iter().copied())
        .service(HELLO_WORLD_SERVICE, hello_world_service())
        .bind(settings.listen)
        .await
        .map_err(server_failure)?;

    let bound = server.local_addr().unwrap_or(settings.listen);
    println!("listening on {bound}");
    let admin = match settings.admin {
        Some(addr) => {
            let admin = AdminServer::bind(server.handle(), addr)
                .await
                .map_err(|e| CliError::new(Exit::Failure, e.to_string()))?;
            let at = admin.local_addr();
            // A script may stop reading after the first line: no panic on EPIPE.
            let _ = writeln!(std::io::stdout(), "admin on http://{at}/metrics");
            if !at.ip().is_loopback() {
                warn!(
                    "the admin pages on {at} have no authentication: anyone who reaches \
                     the address sees every connection's user and address"
                );
            }
            info!("admin pages on http://{at}: /metrics, /healthz, /connz");
            Some(admin)
        }
        None => None,
    };
    if settings.web {
        let scheme = match settings.transport {
            Transport::Plaintext => "http",
            Transport::Tls { .. } => "https",
        };
        // The development certificate names localhost: a loopback address is
        // shown by that name, so the browser's check passes.
        let host = if bound.ip().is_loopback() || bound.ip().is_unspecified() {
            "localhost".to_owned()
        } else {
            match bound.ip() {
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            }
        };
        let _ = writeln!(
            std::io::stdout(),
            "web chat on {scheme}://{host}:{}/",
            bound.port()
        );
        info!(
            origins = ?settings.allowed_origins,
            "browsers: WebSocket and the chat page on {bound} (a browser must trust the \
             server's certificate; for the development one, import certs/ca.cert.pem)"
        );
    }
    let _ = std::io::stdout().flush();
    info!(
        groups = ?settings.groups.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        auto_subscribe = ?settings.auto_subscribe,
        "serving the hello-world service on {bound}; Ctrl-C stops"
    );
    match &settings.flow_control {
        Some(flow) => info!(
            max_outbound = settings.max_outbound,
            high_water = flow.high_water,
            low_water = flow.low_water,
            grace_ms = flow.grace.as_millis() as u64,
            slow_consumer = ?settings.slow_consumer,
            "flow control on: publishers wait for receivers over the high-water mark"
        ),
        None => info!(
            max_outbound = settings.max_outbound,
            slow_consumer = ?settings.slow_consumer,
            "flow control off"
        ),
    }

    wait_for_ctrl_c(|| reload(&settings, store.as_ref(), &server.handle())).await;
    info!("shutting down");
    // The admin pages answer /healthz with 503 while the connections close.
    let still_open = server.shutdown().await;
    drop(admin);
    if still_open > 0 {
        warn!("{still_open} connections did not close within the grace period");
    }
    info!("stopped");
    Ok(())
}

fn describe_users(path: &Path, users: &Users) -> String {
    format!(
        "{}: {} users, {} with restricted permissions or a connection limit",
        path.display(),
        users.len(),
        users.restricted()
    )
}

/// Waits for Ctrl-C; on Unix, calls `reload` at every SIGHUP meanwhile.
async fn wait_for_ctrl_c(mut reload: impl FnMut()) {
    #[cfg(unix)]
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(e) => {
            warn!("cannot listen for SIGHUP ({e}): no reloads without a restart");
            None
        }
    };
    loop {
        #[cfg(unix)]
        let hangup_received = async {
            match &mut hangup {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup_received = std::future::pending::<Option<()>>();
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => {
                if let Err(e) = interrupted {
                    warn!("cannot wait for Ctrl-C ({e}); shutting down");
                }
                return;
            }
            Some(()) = hangup_received => reload(),
        }
    }
}

/// SIGHUP: rereads the users file and the certificate and key. What fails to load
/// is logged and the old one stays in force; connections already open keep their
/// TLS session (and, for the users file, get the new permissions at their next
/// command).
fn reload(settings: &Settings, store: Option<&UserStore>, handle: &ServerHandle) {
    info!("SIGHUP: reloading");
    if let (Some(path), Some(store)) = (&settings.users, store) {
        match Users::load(path) {
            Ok(users) => {
                info!("reloaded {}", describe_users(path, &users));
                if users.is_empty() {
                    warn!("{} lists no users: nobody can log in", path.display());
                }
                store.replace(users);
            }
            Err(e) => error!("{e}; the users loaded before stay in force"),
        }
    }
    if let Transport::Tls {
        cert,
        key,
        key_password,
        ..
    } = &settings.transport
    {
        match handle.reload_tls(cert, key, key_password.as_deref()) {
            Ok(info) => info!(
                "reloaded certificate {}: subject {}, serial {}, expires {}",
                cert.display(),
                info.subject,
                info.serial,
                utc_date(info.not_after)
            ),
            Err(e) => error!(
                "cannot reload the certificate {} and key {}: {e}; the certificate loaded \
                 before stays in force",
                cert.display(),
                key.display()
            ),
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` for seconds since the Unix epoch (proleptic Gregorian).
fn utc_date(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let secs = unix_seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3_600,
        secs % 3_600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn try_args(flags: &[&str]) -> Result<ServeArgs, clap::Error> {
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let argv = std::iter::once("serve").chain(flags.iter().copied());
        Wrapper::try_parse_from(argv).map(|w| w.serve)
    }

    fn args(flags: &[&str]) -> ServeArgs {
        try_args(flags).unwrap()
    }

    #[test]
    fn connection_limits_come_from_flags_over_the_file_and_must_be_positive() {
        let default = Settings::resolve(args(&[]), ServeConfig::default()).unwrap();
        assert_eq!(default.admission, AdmissionLimits::default());
        let file = ServeConfig::parse(
            "max_connections = 50\nmax_connections_per_address = 5\n",
            Path::new("."),
        )
        .unwrap();
        let settings =
            Settings::resolve(args(&["--max-connections-per-address", "3"]), file).unwrap();
        assert_eq!(
            settings.admission,
            AdmissionLimits {
                max_connections: 50,
                max_per_address: 3,
                max_handshaking: AdmissionLimits::default().max_handshaking,
            }
        );
        assert!(
            Settings::resolve(args(&["--max-handshaking", "0"]), ServeConfig::default()).is_err()
        );
    }

    #[test]
    fn the_publish_rate_limit_comes_from_flags_over_the_file_and_must_be_positive() {
        let default = Settings::resolve(args(&[]), ServeConfig::default()).unwrap();
        assert_eq!(default.publish_rate, None);
        let file = || {
            ServeConfig::parse(
                "publish_rate = 100
publish_burst = 300
",
                Path::new("."),
            )
            .unwrap()
        };
        assert_eq!(
            Settings::resolve(args(&[]), file()).unwrap().publish_rate,
            Some(RateLimit::new(100, 300).unwrap())
        );
        assert_eq!(
            Settings::resolve(args(&["--publish-rate", "5"]), file())
                .unwrap()
                .publish_rate,
            Some(RateLimit::new(5, 300).unwrap())
        );
        // The burst defaults to the rate.
        assert_eq!(
            Settings::resolve(args(&["--publish-rate", "20"]), ServeConfig::default())
                .unwrap()
                .publish_rate,
            Some(RateLimit::new(20, 20).unwrap())
        );
        assert!(try_args(&["--publish-rate", "0"]).is_err());
        assert!(try_args(&["--publish-rate", "ten"]).is_err());
        assert!(try_args(&["--publish-rate", "5", "--publish-burst", "0"]).is_err());
        assert!(
            Settings::resolve(args(&["--publish-burst", "5"]), ServeConfig::default()).is_err()
        );
        let zero = ServeConfig::parse(
            "publish_rate = 0
",
            Path::new("."),
        )
        .unwrap();
        assert!(Settings::resolve(args(&[]), zero).is_err());
        let zero_burst = ServeConfig::parse(
            "publish_rate = 3
publish_burst = 0
",
            Path::new("."),
        )
        .unwrap();
        assert!(Settings::resolve(args(&[]), zero_burst).is_err());
    }

    #[test]
    fn running_calls_come_from_the_flag_over_the_file_and_must_be_positive() {
        let default = Settings::resolve(args(&[]), ServeConfig::default()).unwrap();
        assert_eq!(
            default.max_running_calls,
            pushwire_engine::DEFAULT_MAX_RUNNING_REQUESTS
        );
        let file = || ServeConfig::parse("max_running_calls = 3\n", Path::new(".")).unwrap();
        assert_eq!(
            Settings::resolve(args(&[]), file())
                .unwrap()
                .max_running_calls,
            3
        );
        let flag = Settings::resolve(args(&["--max-running-calls", "7"]), file()).unwrap();
        assert_eq!(flag.max_running_calls, 7);
        let zero = ServeConfig::parse("max_running_calls = 0\n", Path::new(".")).unwrap();
        assert!(Settings::resolve(args(&[]), zero).is_err());
        assert!(try_args(&["--max-running-calls", "0"]).is_err());
    }

    #[test]
    fn slow_receiver_settings_come_from_flags_over_the_file_with_fitted_defaults() {
        let settings = Settings::resolve(args(&[]), ServeConfig::default()).unwrap();
        assert_eq!(settings.max_outbound, DEFAULT_MAX_OUTBOUND);
        assert_eq!(settings.slow_consumer, SlowConsumerPolicy::Disconnect);
        assert_eq!(settings.flow_control, Some(FlowControl::default()));

        let file = ServeConfig::parse(
            "[outbound]\nlimit = \"1MiB\"\nslow_consumer = \"drop-oldest\"\n\
             high_water = 65536\ngrace_ms = 500\n",
            Path::new("."),
        )
        .unwrap();
        let settings = Settings::resolve(args(&["--low-water", "16K"]), file).unwrap();
        assert_eq!(settings.max_outbound, 1024 * 1024);
        assert_eq!(settings.slow_consumer, SlowConsumerPolicy::DropOldest);
        assert_eq!(
            settings.flow_control,
            Some(FlowControl {
                high_water: 64 * 1024,
                low_water: 16 * 1024,
                grace: Duration::from_millis(500),
            })
        );

        // A smaller limit alone scales the marks down to fit it.
        let settings =
            Settings::resolve(args(&["--max-outbound", "256KiB"]), ServeConfig::default()).unwrap();
        let flow = settings.flow_control.unwrap();
        assert_eq!(flow.high_water, 32 * 1024);
        assert_eq!(flow.low_water, 8 * 1024);

        let settings =
            Settings::resolve(args(&["--no-flow-control"]), ServeConfig::default()).unwrap();
        assert_eq!(settings.flow_control, None);
        let file =
            ServeConfig::parse("[outbound]\nflow_control = false\n", Path::new(".")).unwrap();
        assert_eq!(
            Settings::resolve(args(&[]), file).unwrap().flow_control,
            None
        );
    }

    #[test]
    fn slow_receiver_settings_that_cannot_work_are_refused() {
        let error =
            Settings::resolve(args(&["--high-water", "8MiB"]), ServeConfig::default()).unwrap_err();
        assert!(error.to_string().contains("high water"), "{error}");
        let error = Settings::resolve(
            args(&["--high-water", "64K", "--low-water", "128K"]),
            ServeConfig::default(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("low water"), "{error}");
        assert!(parse_byte_size("12 parsecs").is_err());
        assert!(parse_byte_size("x").is_err());
        assert_eq!(parse_byte_size("3M"), Ok(3 * 1024 * 1024));
        assert!(parse_policy("sometimes").is_err());
        assert!(ServeConfig::parse("[outbound]\nlimit = \"lots\"\n", Path::new(".")).is_err());
        assert!(ServeConfig::parse("[outbound]\nhigh = 1\n", Path::new(".")).is_err());
    }

    #[test]
    fn defaults_are_the_tutorial_server_on_loopback() {
        let settings = Settings::resolve(args(&[]), ServeConfig::default()).unwrap();
        assert_eq!(settings.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(settings.groups.len(), 3);
        assert_eq!(settings.groups[0], (1, "R&D Department".to_owned()));
        assert!(settings.auto_subscribe.is_empty());
        assert!(matches!(
            settings.transport,
            Transport::Tls { development: true, ref key_password, .. }
                if key_password.as_deref() == Some(DEVELOPMENT_KEY_PASSWORD)
        ));
    }

    #[test]
    fn flags_override_the_file_and_file_paths_are_relative_to_it() {
        let file = ServeConfig::parse(
            r#"
                listen = "127.0.0.1:1234"
                cert = "c.pem"
                key = "/abs/k.pem"
                auto_subscribe = [2]
                users = "users.toml"
                [[groups]]
                id = 2
                description = "Sales"
                [[groups]]
                id = 7
                description = "Seven"
            "#,
            Path::new("/etc/pushwire"),
        )
        .unwrap();
        assert_eq!(file.cert, Some(PathBuf::from("/etc/pushwire/c.pem")));
        assert_eq!(file.key, Some(PathBuf::from("/abs/k.pem")));
        let settings = Settings::resolve(
            args(&["--listen", "127.0.0.1:0", "--auto-subscribe", "2,7"]),
            file,
        )
        .unwrap();
        assert_eq!(settings.listen.port(), 0, "the flag wins");
        assert_eq!(settings.auto_subscribe, [2, 7]);
        assert_eq!(
            settings.groups,
            [(2, "Sales".to_owned()), (7, "Seven".to_owned())]
        );
        assert_eq!(
            settings.users,
            Some(PathBuf::from("/etc/pushwire/users.toml"))
        );
    }

    #[test]
    fn group_flags_replace_the_defaults() {
        let settings = Settings::resolve(
            args(&["--group", "9=Nine = 9", "--group", "10=Ten"]),
            ServeConfig::default(),
        )
        .unwrap();
        assert_eq!(
            settings.groups,
            [(9, "Nine = 9".to_owned()), (10, "Ten".to_owned())]
        );
    }

    #[test]
    fn inconsistent_settings_are_usage_errors() {
        let cases: &[(&[&str], &str)] = &[
            (&["--listen", "0.0.0.0:0"], "without --users"),
            (&["--cert", "c.pem"], "needs its key"),
            (
                &["--plaintext", "--cert", "c", "--key", "k"],
                "plaintext excludes",
            ),
            (&["--group", "1=a", "--group", "1=b"], "registered twice"),
            (&["--auto-subscribe", "4"], "not a registered group"),
        ];
        for (flags, expected) in cases {
            let error = Settings::resolve(args(flags), ServeConfig::default()).unwrap_err();
            assert_eq!(error.exit, Exit::Usage, "{flags:?}");
            assert!(error.message.contains(expected), "{flags:?}: {error}");
        }
        assert!(
            Settings::resolve(
                args(&["--listen", "0.0.0.0:0", "--users", "u.toml"]),
                ServeConfig::default()
            )
            .is_ok(),
            "with a users file any address is allowed"
        );
    }

    #[test]
    fn unknown_config_keys_are_refused() {
        let error = ServeConfig::parse("listen_on = \"x\"", Path::new(".")).unwrap_err();
        assert!(error.contains("listen_on"), "{error}");
    }
}
