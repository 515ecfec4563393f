//! The client commands: `sub`, `pub`, `send`, `call` and `groups`, and the flags they
//! share.

use super::output::{describe_event, event_json, JsonEvent};
use super::{development_file, CliError, Exit, DEVELOPMENT_PASSWORD};
use crate::client::{
    CancelOutcome, Client, ClientBuilder, ConnectionContext, Event, EventStream, PushError,
    RequestError, Trust,
};
use crate::hello;
use clap::{Args, Subcommand};
use futures_core::Stream;
use pushwire_protocol::GroupId;
use pushwire_protocol::RejectCode;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::{pin, Pin};
use std::str::FromStr;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::time::Instant;

/// `HOST:PORT` of a server; IPv6 addresses in brackets (`[::1]:20901`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddress {
    /// Host name or address, without brackets.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl FromStr for ServerAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
        let port = port
            .parse()
            .map_err(|_| format!("{port:?} is not a port number"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(format!("{s:?} has no host"));
        }
        if host.contains(':') && !s.starts_with('[') {
            return Err(format!("write IPv6 addresses in brackets: [{host}]:{port}"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Flags every client command takes. They are `global`, so they may also follow the
/// method of `call` (`pushwire call say-hello Jack Smith --user bob`).
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The server.
    #[arg(
        long,
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:20901",
        global = true
    )]
    pub server: ServerAddress,
    /// User id to log in with.
    #[arg(long, default_value = "guest", global = true)]
    pub user: String,
    /// Password [default: the development server's MyPassword].
    #[arg(long, default_value = DEVELOPMENT_PASSWORD, hide_default_value = true, global = true)]
    pub password: String,
    /// PEM file of the CA certificates to trust [default: the development CA
    /// certs/ca.cert.pem of the source tree if it exists, else the operating system's
    /// store].
    #[arg(long, value_name = "FILE", global = true)]
    pub ca: Option<PathBuf>,
    /// Name the server's certificate must carry [default: the host of --server].
    #[arg(long, value_name = "NAME", global = true)]
    pub server_name: Option<String>,
    /// No TLS: talk to a `serve --plaintext` server. Nothing is encrypted.
    #[arg(long, global = true, conflicts_with_all = ["ca", "server_name"])]
    pub plaintext: bool,
    /// Print one JSON object per line instead of readable text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Do not receive the echo of one's own publications and user messages.
    #[arg(long, global = true)]
    pub no_echo: bool,
    /// Ask the server to decompress payloads for this client instead of forwarding
    /// them compressed as their publishers sent them (what is printed is the same).
    #[arg(long, global = true)]
    pub no_accept_compressed: bool,
}

/// Compression flags of the commands that send payloads (`pub`, `send`).
#[derive(Debug, Clone, Copy, Args)]
pub struct CompressArgs {
    /// Compress the message (LZ4, protocol version 3) when it is at least
    /// --compress-threshold bytes and comes out smaller; the server forwards it
    /// compressed to the subscribers that accept it and decompresses it for the
    /// others.
    #[arg(long)]
    pub compress: bool,
    /// Messages shorter than this go plain even with --compress.
    #[arg(long, value_name = "BYTES", default_value_t = pushwire_engine::client::DEFAULT_COMPRESSION_THRESHOLD, requires = "compress")]
    pub compress_threshold: usize,
}

impl CompressArgs {
    /// Says on stderr what --compress does to `message`.
    fn note(&self, message: &str) {
        if !self.compress {
            return;
        }
        if message.len() < self.compress_threshold {
            eprintln!(
                "note: --compress: {} bytes is under the threshold of {}; sent plain",
                message.len(),
                self.compress_threshold
            );
            return;
        }
        let packed = pushwire_protocol::compress(
            pushwire_protocol::CompressionAlgorithm::Lz4Block,
            message.as_bytes(),
        )
        .map_or(usize::MAX, |c| c.wire_len());
        if packed < message.len() {
            eprintln!(
                "note: --compress: {} bytes go as {packed} (LZ4) to a server of protocol \
                 version 3 or later",
                message.len()
            );
        } else {
            eprintln!(
                "note: --compress: {} bytes do not compress; sent plain",
                message.len()
            );
        }
    }
}

impl ClientArgs {
    /// Whom to trust, saying on stderr which default was taken.
    fn trust(&self) -> Trust {
        if self.plaintext {
            eprintln!("note: --plaintext: the connection is not encrypted");
            return Trust::Plaintext;
        }
        if let Some(ca) = &self.ca {
            return Trust::CaFiles(vec![ca.clone()]);
        }
        let development_ca = development_file("ca.cert.pem");
        if development_ca.is_file() {
            eprintln!(
                "note: trusting the development CA {} (use --ca FILE for another)",
                development_ca.display()
            );
            Trust::CaFiles(vec![development_ca])
        } else {
            eprintln!(
                "note: trusting the operating system's certificate store (use --ca FILE for a \
                 private CA)"
            );
            Trust::NativeRoots
        }
    }

    /// The connection context these flags describe.
    pub fn context(&self) -> ConnectionContext {
        let mut context = ConnectionContext::new(
            self.server.host.clone(),
            self.server.port,
            self.user.clone(),
            self.password.clone(),
        );
        context.trust = self.trust();
        context.server_name = self.server_name.clone();
        context.service_id = hello::HELLO_WORLD_SERVICE;
        context.echo = !self.no_echo;
        context
    }

    /// Connects; `deadline` bounds the attempt (it cannot extend the default limit).
    async fn connect(&self, deadline: Option<Instant>) -> Result<(Client, EventStream), CliError> {
        self.connect_compressing(deadline, None).await
    }

    /// [`connect`](Self::connect), compressing what it sends as `compress` says.
    async fn connect_compressing(
        &self,
        deadline: Option<Instant>,
        compress: Option<CompressArgs>,
    ) -> Result<(Client, EventStream), CliError> {
        let mut context = self.context();
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            context.connect_timeout = context.connect_timeout.min(left);
        }
        let mut builder = ClientBuilder::new(context).accept_compressed(!self.no_accept_compressed);
        if let Some(compress) = compress {
            builder = builder
                .compression(compress.compress)
                .compression_threshold(compress.compress_threshold);
        }
        Ok(builder.connect().await?)
    }
}

/// Arguments of `pushwire sub`.
#[derive(Debug, Args)]
pub struct SubArgs {
    /// Chat groups to join (none: only the server's automatic subscriptions and user
    /// messages).
    #[arg(value_name = "GROUP")]
    pub groups: Vec<u32>,
    /// Exit after this many messages (publications or user messages).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Exit with code 5 unless --count messages arrived within SECS seconds.
    #[arg(long, value_name = "SECS", requires = "count", value_parser = parse_seconds)]
    pub timeout: Option<Duration>,
    /// Connection flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Arguments of `pushwire pub`.
#[derive(Debug, Args)]
pub struct PubArgs {
    /// Chat groups to publish to.
    #[arg(value_name = "GROUP", required = true)]
    pub groups: Vec<u32>,
    /// The message.
    #[arg(long, short)]
    pub message: String,
    /// Publish it this many times.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub repeat: u64,
    /// Compression.
    #[command(flatten)]
    pub compress: CompressArgs,
    /// Connection flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Arguments of `pushwire send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The receiving user id (case-insensitive).
    pub receiver: String,
    /// The message.
    #[arg(long, short)]
    pub message: String,
    /// Compression.
    #[command(flatten)]
    pub compress: CompressArgs,
    /// Connection flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Arguments of `pushwire call`.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// The method.
    #[command(subcommand)]
    pub method: Method,
    /// Cancel the call if it has not finished after MS milliseconds (`pushwire call
    /// sleep 5000 --cancel-after 100`).
    #[arg(long, value_name = "MS", global = true)]
    pub cancel_after: Option<u64>,
    /// Connection flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The hello-world service's methods.
#[derive(Debug, Subcommand)]
pub enum Method {
    /// `say_hello(first, last)`: returns "Hello FIRST LAST" and publishes "Say hello
    /// from FIRST LAST" to groups 2 and 3.
    SayHello {
        /// First name.
        first: String,
        /// Last name.
        last: String,
    },
    /// `sleep(ms)`: returns after MS milliseconds (the server caps it at 60 s).
    Sleep {
        /// Milliseconds.
        ms: u32,
    },
    /// `echo(text)`: returns its argument.
    Echo {
        /// The text.
        text: String,
    },
}

/// Arguments of `pushwire groups`.
#[derive(Debug, Args)]
pub struct GroupsArgs {
    /// Connection flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let seconds: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{s:?} is not a valid duration"))
}

/// The next event if one is already queued, without waiting.
pub(super) fn queued_event(events: &mut EventStream) -> Option<Event> {
    let mut context = Context::from_waker(Waker::noop());
    match Pin::new(events).poll_next(&mut context) {
        Poll::Ready(event) => event,
        Poll::Pending => None,
    }
}

/// Runs `work` while reading `events`, so a full event buffer (echoes, presence)
/// never stalls the connection that `work` waits on. Returns `work`'s output and the
/// refusals of push commands seen until it finished, including those already queued
/// then.
async fn while_draining<T>(
    events: &mut EventStream,
    work: impl Future<Output = T>,
) -> (T, Vec<Event>) {
    let mut work = pin!(work);
    let mut rejections = Vec::new();
    let mut keep = |event: Event| {
        if matches!(event, Event::Rejected { .. }) {
            rejections.push(event);
        }
    };
    let output = loop {
        tokio::select! {
            biased;
            output = &mut work => break output,
            Some(event) = events.recv() => keep(event),
        }
    };
    while let Some(event) = queued_event(events) {
        keep(event);
    }
    (output, rejections)
}

/// Closes politely and waits briefly for the Close to leave, so the server logs an
/// orderly close rather than a dropped connection.
async fn close(client: Client, events: EventStream) {
    // A dropped event stream discards further events instead of blocking the
    // connection's task on a full buffer while it closes.
    drop(events);
    client.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), client.closed()).await;
}

fn print_event(event: &Event, json: bool) {
    if json {
        if let Some(line) = event_json(event) {
            println!("{line}");
        }
    } else {
        println!("{}", describe_event(event));
    }
}

fn push_failure(error: PushError) -> CliError {
    match error {
        PushError::ConnectionLost => CliError::new(Exit::Connection, "the connection was lost"),
        other => CliError::new(Exit::Failure, other.to_string()),
    }
}

/// `pushwire sub`.
pub(super) async fn sub(args: SubArgs) -> Result<(), CliError> {
    let deadline = args.timeout.map(|t| Instant::now() + t);
    let json = args.client.json;
    let (client, mut events) = args.client.connect(deadline).await?;
    // The subscription's command: refused for every group, there is nothing to wait
    // for.
    let mut subscription = None;
    if !args.groups.is_empty() {
        subscription = Some(client.subscribe(&args.groups).await.map_err(push_failure)?);
    }
    let mut messages = 0u64;
    let outcome = loop {
        if args.count.is_some_and(|count| messages >= count) {
            break Ok(());
        }
        let next = async {
            match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, events.recv()).await,
                None => Ok(events.recv().await),
            }
        };
        let event = tokio::select! {
            event = next => event,
            _ = tokio::signal::ctrl_c() => break Ok(()),
        };
        match event {
            Err(_elapsed) => {
                break Err(CliError::new(
                    Exit::TimedOut,
                    format!(
                        "timed out: {messages} of {} messages arrived",
                        args.count.unwrap_or_default()
                    ),
                ))
            }
            Ok(None) => {
                break Err(CliError::new(Exit::Connection, "the connection was lost"));
            }
            Ok(Some(Event::Closed(reason))) => {
                break Err(CliError::new(
                    Exit::Connection,
                    format!("the connection closed: {reason}"),
                ));
            }
            Ok(Some(event)) => {
                print_event(&event, json);
                if matches!(event, Event::Published { .. } | Event::UserMessage { .. }) {
                    messages += 1;
                }
                if let Event::Rejected {
                    command_id, groups, ..
                } = &event
                {
                    let all = groups.is_empty()
                        || args.groups.iter().all(|g| groups.contains(&GroupId(*g)));
                    if Some(*command_id) == subscription && all {
                        break Err(CliError::new(
                            Exit::Failure,
                            "the server refused the subscription to every group",
                        ));
                    }
                }
            }
        }
    };
    close(client, events).await;
    outcome
}

/// Publications `pushwire pub --repeat` keeps unconfirmed before awaiting the oldest
/// (more than the client's send window holds of small ones: the window is the bound).
const PUBLISH_PIPELINE: usize = 16 * 1024;

/// `pushwire pub`.
pub(super) async fn publish(args: PubArgs) -> Result<(), CliError> {
    let json = args.client.json;
    let (client, mut events) = args
        .client
        .connect_compressing(None, Some(args.compress))
        .await?;
    args.compress.note(&args.message);
    let work = async {
        // Pipelined: each publication resolves when the server has taken it, and
        // the client's send window holds the rest back, so a server that slows this
        // publisher down (flow control) slows the loop down with it.
        // A publication refused by the server's rate limit resolves with that
        // refusal: it is counted (its Rejected event is printed below), the rest go on.
        let settle = |outcome: Result<u64, PushError>| match outcome {
            Err(e) if e.is_rate_limited() => Ok(()),
            other => other.map(drop).map_err(push_failure),
        };
        let mut in_flight = std::collections::VecDeque::new();
        for _ in 0..args.repeat {
            in_flight.push_back(client.publish(&args.groups, args.message.clone()));
            if in_flight.len() >= PUBLISH_PIPELINE {
                if let Some(oldest) = in_flight.pop_front() {
                    settle(oldest.await)?;
                }
            }
        }
        for publication in in_flight {
            settle(publication.await)?;
        }
        // The server answers ListGroups after handling everything sent before it, so
        // once the answer is here every refusal of a publication has arrived too.
        client.list_groups().await.map_err(push_failure)?;
        Ok::<(), CliError>(())
    };
    let (outcome, rejections) = while_draining(&mut events, work).await;
    close(client, events).await;
    outcome?;
    for rejection in &rejections {
        print_event(rejection, json);
    }
    if !rejections.is_empty() {
        let rate_limited = rejections
            .iter()
            .filter(|r| {
                matches!(
                    r,
                    Event::Rejected {
                        code: RejectCode::RateLimited,
                        ..
                    }
                )
            })
            .count();
        let limited = if rate_limited > 0 {
            format!(
                "; {rate_limited} rate limited (not delivered: the server's publish rate \
                 limit, retry more slowly)"
            )
        } else {
            String::new()
        };
        return Err(CliError::new(
            Exit::Failure,
            format!(
                "the server refused {} of {} publications (wholly or for some groups){limited}",
                rejections.len(),
                args.repeat
            ),
        ));
    }
    if !json {
        let times = if args.repeat == 1 {
            String::new()
        } else {
            format!(" {} times", args.repeat)
        };
        println!("Published to {:?}{times}", args.groups);
    }
    Ok(())
}

/// `pushwire send`.
pub(super) async fn send(args: SendArgs) -> Result<(), CliError> {
    let json = args.client.json;
    let (client, mut events) = args
        .client
        .connect_compressing(None, Some(args.compress))
        .await?;
    args.compress.note(&args.message);
    let work = client.send_user_message(&args.receiver, args.message.clone());
    let (reached, _) = while_draining(&mut events, work).await;
    close(client, events).await;
    let reached = reached.map_err(push_failure)?;
    if json {
        let line = JsonEvent {
            event: "delivered",
            receiver: Some(&args.receiver),
            connections: Some(reached),
            ..JsonEvent::default()
        }
        .to_line();
        println!("{line}");
    } else {
        let plural = if reached == 1 { "" } else { "s" };
        println!(
            "Delivered to {reached} connection{plural} of {}",
            args.receiver
        );
    }
    Ok(())
}

/// `pushwire call`.
pub(super) async fn call(args: CallArgs) -> Result<(), CliError> {
    let (name, method, payload) = match &args.method {
        Method::SayHello { first, last } => (
            "say_hello",
            hello::SAY_HELLO,
            hello::say_hello_args(first, last),
        ),
        Method::Sleep { ms } => ("sleep", hello::SLEEP, hello::sleep_args(*ms)),
        Method::Echo { text } => ("echo", hello::ECHO, text.clone().into()),
    };
    let json = args.client.json;
    let (client, mut events) = args.client.connect(None).await?;
    let call = client.request(method, payload);
    let ticket = call.ticket();
    let started = std::time::Instant::now();
    let cancel_after = args.cancel_after;
    let cancelling = async {
        match cancel_after {
            Some(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Some(client.cancel(ticket).await)
            }
            None => std::future::pending().await,
        }
    };
    let mut cancel = None;
    let outcome = async {
        tokio::pin!(call);
        tokio::select! {
            result = &mut call => result,
            outcome = cancelling => {
                cancel = outcome;
                call.await
            }
        }
    };
    let (result, _) = while_draining(&mut events, outcome).await;
    close(client, events).await;
    if let Err(RequestError::Cancelled) = result {
        let after = started.elapsed().as_millis();
        let how = match cancel {
            Some(CancelOutcome::SentToServer) => "the server stopped it",
            Some(CancelOutcome::EndedLocally) => {
                "the server is too old to be told; its result will be dropped"
            }
            // The call never sits in a batch here, so nothing else ends it Cancelled.
            _ => "cancelled",
        };
        if json {
            let line = serde_json::json!({
                "method": name,
                "cancelled": true,
                "after_ms": after,
            });
            println!("{line}");
        } else {
            println!("Cancelled {name} after {after} ms: {how}");
        }
        return Ok(());
    }
    let result = result.map_err(|e| match e {
        RequestError::ConnectionLost(reason) => CliError::new(
            Exit::Connection,
            format!("the connection was lost: {reason}"),
        ),
        other => CliError::new(Exit::Failure, format!("{name} failed: {other}")),
    })?;
    let text = String::from_utf8_lossy(&result);
    if json {
        let line = serde_json::json!({ "method": name, "result": text });
        println!("{line}");
    } else if let Method::Sleep { ms } = args.method {
        println!("Slept {ms} ms");
    } else {
        println!("{text}");
    }
    Ok(())
}

/// `pushwire groups`.
pub(super) async fn groups(args: GroupsArgs) -> Result<(), CliError> {
    let json = args.client.json;
    let (client, mut events) = args.client.connect(None).await?;
    let (groups, _) = while_draining(&mut events, client.list_groups()).await;
    close(client, events).await;
    for group in groups.map_err(push_failure)? {
        if json {
            let line = serde_json::json!({
                "id": group.id.0,
                "description": group.description.as_str(),
            });
            println!("{line}");
        } else {
            println!("{:>4}  {}", group.id, group.description);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_parse_with_and_without_brackets() {
        let parsed: ServerAddress = "example.com:20901".parse().unwrap();
        assert_eq!((parsed.host.as_str(), parsed.port), ("example.com", 20901));
        let parsed: ServerAddress = "[::1]:443".parse().unwrap();
        assert_eq!((parsed.host.as_str(), parsed.port), ("::1", 443));
        assert_eq!(parsed.to_string(), "[::1]:443");
        for bad in ["localhost", ":80", "host:http", "::1:80", "host:70000"] {
            assert!(bad.parse::<ServerAddress>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn seconds_may_be_fractional() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
    }
}
