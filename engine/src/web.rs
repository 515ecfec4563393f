//! The WebSocket transport (server side): browsers speak pushwire inside binary
//! WebSocket messages, over the same TLS port as native clients.
//!
//! # Why on the TLS port itself
//!
//! A browser cannot open a raw TLS stream, only `wss://`. Rather than a second
//! listener (NATS' `websocket` port), the server tells the two apart by the first
//! plaintext byte after TLS: a pushwire connection starts with its Hello's 4-byte
//! big-endian length, at most [`HARD_MAX_FRAME_SIZE`](pushwire_protocol::HARD_MAX_FRAME_SIZE)
//! (16 MiB), so its first byte is `0x00` or `0x01`; an HTTP request starts with
//! `G` (`GET `, as a length 1.2 GB, far over any limit). One byte decides, nothing
//! is buffered, and one port, one certificate, one firewall rule and one deadline
//! serve both. The same port also serves the static pages the shell hands over in
//! [`WebConfig::pages`] (the browser chat), so the page and its WebSocket share an
//! origin.
//!
//! # What happens
//!
//! 1. The request head is read under a size limit ([`WebConfig::max_request_head`],
//!    `431` past it) and the server's Hello deadline (`408` when it expires): the
//!    upgrade is part of the handshake the deadline bounds.
//! 2. It is parsed with `httparse`. A WebSocket upgrade needs `GET`, HTTP/1.1,
//!    `Host`, `Upgrade: websocket`, `Connection: upgrade`,
//!    `Sec-WebSocket-Version: 13` (`426` otherwise) and a 16-byte
//!    `Sec-WebSocket-Key`; an `Origin` header must be allowed (`403`): the listed
//!    origins, or by default the same origin (its host and port equal the `Host`
//!    header's). No `Origin` header means no browser, and no cross-site risk: allowed.
//!    A `GET` without upgrade headers gets a configured page (`200`), `404`, or `426`
//!    when no pages are configured. Every answer but `101` ends the connection.
//! 3. After `101 Switching Protocols`, tungstenite's [`WebSocketContext`] decodes
//!    RFC 6455 frames from the decrypted bytes (through an in-memory adapter: it never
//!    sees a socket). Client frames must be masked. Binary messages, fragmented or
//!    not, are one byte stream for pushwire's frame decoder: a frame may span messages
//!    and a message may hold several frames. A text message closes with `1003`, a
//!    message over the frame limit (plus its 4-byte length) with `1009`, any framing
//!    violation with `1002`. Pings are answered with Pongs; a Close is answered and
//!    ends the connection.
//! 4. What the server sends (its frames, coalesced as on a native connection) leaves
//!    in one binary message per flush, unmasked. A close sends pushwire's Close in a
//!    last binary message, then the WebSocket Close, then TLS close_notify.
//!
//! Hello, authentication, limits, flow control and keep-alive are pushwire's, inside
//! the messages, exactly as on a native connection.
//!
//! tungstenite links `rand` for the masks of its client role (it has no feature to
//! leave it out); the server role never masks, so the engine never calls it and still
//! draws no OS randomness. `engine/tests/websocket.rs` reads every server frame with a
//! client-role context, which refuses masked frames from a server, so a masking
//! server would fail those tests.

use bytes::{Bytes, BytesMut};
use std::io::{self, Read, Write};
use std::sync::Arc;
use thiserror::Error;
use tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message as WsMessage;

/// Default bound on an HTTP request head (request line and headers).
pub const DEFAULT_MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Most headers read from a request head.
const MAX_HEADERS: usize = 64;

/// A static file served over HTTP on the pushwire port (the browser chat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebPage {
    /// Its path, as requested (`/`, `/pushwire.js`); the query is ignored.
    pub path: String,
    /// Its `Content-Type`.
    pub content_type: String,
    /// Its bytes.
    pub body: Bytes,
}

impl WebPage {
    /// A page at `path`.
    pub fn new(path: impl Into<String>, content_type: impl Into<String>, body: Bytes) -> Self {
        Self {
            path: path.into(),
            content_type: content_type.into(),
            body,
        }
    }
}

/// WebSocket settings of a server (off unless [`ServerConfig::web`] has one).
///
/// [`ServerConfig::web`]: crate::server::ServerConfig::web
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    /// Origins allowed to upgrade (`https://chat.example.com`, compared without
    /// case; `*` allows any). Empty: same origin only.
    pub allowed_origins: Vec<String>,
    /// Static pages served to a plain `GET`.
    pub pages: Vec<WebPage>,
    /// Bound on the request head, in bytes.
    pub max_request_head: usize,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            pages: Vec::new(),
            max_request_head: DEFAULT_MAX_REQUEST_HEAD,
        }
    }
}

/// What went wrong on the HTTP or WebSocket layer of a browser connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WebError {
    /// The request head grew past the limit (`431`).
    #[error("HTTP request head over {limit} bytes")]
    HeadTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The request head did not parse (`400`).
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    /// Not a `GET` (`405`).
    #[error("HTTP method {0} not allowed")]
    MethodNotAllowed(String),
    /// An upgrade request that is not a valid WebSocket upgrade (`400`).
    #[error("bad WebSocket upgrade: {0}")]
    BadUpgrade(&'static str),
    /// A WebSocket version other than 13, or no upgrade at all on a server without
    /// pages (`426`).
    #[error("upgrade required: {0}")]
    UpgradeRequired(&'static str),
    /// The `Origin` is not allowed (`403`).
    #[error("origin {0:?} not allowed")]
    OriginRefused(String),
    /// No page at this path (`404`).
    #[error("no page at {0:?}")]
    NotFound(String),
    /// A text message (close `1003`): pushwire travels in binary messages.
    #[error("text WebSocket message (pushwire travels in binary messages)")]
    TextMessage,
    /// A message over the limit (close `1009`).
    #[error("WebSocket message over {limit} bytes")]
    MessageTooLarge {
        /// The limit.
        limit: usize,
    },
    /// A violation of RFC 6455 (an unmasked client frame, a bad opcode, …; close
    /// `1002`).
    #[error("WebSocket protocol violation: {0}")]
    Frame(String),
}

/// What a received chunk did besides delivering payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WebOutcome {
    /// A static page was served: the connection ends, with nothing wrong.
    Served(String),
}

enum State {
    /// Reading the request head.
    Head(Vec<u8>),
    /// An HTTP answer is queued: nothing more is read, the connection ends.
    Answered,
    /// Upgraded.
    Open(Box<WebSocketContext>),
}

/// The WebSocket layer of one server connection, between the TLS plaintext and
/// pushwire's frame decoder.
pub(crate) struct WebLayer {
    config: Arc<WebConfig>,
    state: State,
    max_message: usize,
    /// Plaintext to encrypt: HTTP answers and WebSocket frames.
    out: Vec<u8>,
    /// The WebSocket close to send when the connection closes.
    close: Option<CloseFrame>,
    /// The peer's WebSocket Close arrived (and was answered).
    peer_closed: bool,
    outcome: Option<WebOutcome>,
}

/// tungstenite's view of the engine's buffers: reads take from a received chunk
/// (would-block when it is used up), writes append to the outbound plaintext.
struct Pipe<'a> {
    input: &'a [u8],
    out: &'a mut Vec<u8>,
}

impl Read for Pipe<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for Pipe<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl WebLayer {
    /// A layer for a connection whose first byte said HTTP; `max_frame_size` is the
    /// server's frame limit (a message may carry one such frame with its length).
    pub fn new(config: Arc<WebConfig>, max_frame_size: u32) -> Self {
        Self {
            config,
            state: State::Head(Vec::new()),
            max_message: max_frame_size as usize + 4,
            out: Vec::new(),
            close: None,
            peer_closed: false,
            outcome: None,
        }
    }

    /// Whether the connection may begin with `first` as a browser's (an HTTP request).
    pub fn starts_http(first: u8) -> bool {
        first == b'G'
    }

    /// Takes decrypted bytes; binary message payloads go to `deliver`.
    pub fn receive<E: From<WebError>>(
        &mut self,
        data: &[u8],
        deliver: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        match &mut self.state {
            State::Answered => Ok(()),
            State::Head(head) => {
                let limit = self.config.max_request_head;
                let room = (limit + 1).saturating_sub(head.len());
                head.extend_from_slice(&data[..room.min(data.len())]);
                let rest = &data[room.min(data.len())..];
                match self.try_head(rest) {
                    Ok(None) => Ok(()),
                    Ok(Some(leftover)) => self.read_messages(&leftover, deliver),
                    Err(e) => Err(e.into()),
                }
            }
            State::Open(_) => self.read_messages(data, deliver),
        }
    }

    /// Whether the peer's WebSocket Close has arrived.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// A page served, once.
    pub fn take_outcome(&mut self) -> Option<WebOutcome> {
        self.outcome.take()
    }

    /// Bytes of buffer capacity held (not counting tungstenite's own).
    pub fn buffer_capacity(&self) -> usize {
        self.out.capacity()
            + match &self.state {
                State::Head(h) => h.capacity(),
                _ => 0,
            }
    }

    /// Wraps the pushwire bytes queued in `outbound` (emptying it) into a binary
    /// message, adds the WebSocket Close when `closing`, and appends everything to
    /// send to `wire`. Before the upgrade pushwire bytes cannot leave and are dropped;
    /// a close then answers the request head with `408` (the deadline) if nothing
    /// was answered yet.
    pub fn flush(&mut self, outbound: &mut BytesMut, closing: bool, wire: &mut BytesMut) {
        match &mut self.state {
            State::Head(_) => {
                outbound.clear();
                if closing {
                    self.answer(
                        408,
                        "Request Timeout",
                        "",
                        "the request did not arrive in time\n",
                    );
                }
            }
            State::Answered => outbound.clear(),
            State::Open(ctx) => {
                let mut pipe = Pipe {
                    input: &[],
                    out: &mut self.out,
                };
                if !outbound.is_empty() {
                    let payload = outbound.split().freeze();
                    // Fails only once a Close was sent or received: then nothing more
                    // may leave, and the bytes are dropped.
                    let _ = ctx.write(&mut pipe, WsMessage::Binary(payload));
                }
                if closing && ctx.can_write() {
                    let frame = self.close.take().unwrap_or(CloseFrame {
                        code: WsCloseCode::Normal,
                        reason: "".into(),
                    });
                    let _ = ctx.close(&mut pipe, Some(frame));
                }
                let _ = ctx.flush(&mut pipe);
            }
        }
        if !self.out.is_empty() {
            wire.extend_from_slice(&self.out);
            self.out.clear();
        }
    }

    /// Parses the head when complete. `Ok(Some(leftover))`: upgraded, with the bytes
    /// after the head (frames already sent); `Ok(None)`: waiting for more, or
    /// answered with a page.
    fn try_head(&mut self, rest: &[u8]) -> Result<Option<Vec<u8>>, WebError> {
        let State::Head(head) = &mut self.state else {
            return Ok(None);
        };
        let limit = self.config.max_request_head;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let parsed = request.parse(head);
        let end = match parsed {
            Ok(httparse::Status::Complete(end)) if end <= limit => end,
            Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => {
                return Err(self.refuse(WebError::HeadTooLarge { limit }));
            }
            Ok(httparse::Status::Partial) if head.len() > limit => {
                return Err(self.refuse(WebError::HeadTooLarge { limit }));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(self.refuse(WebError::Malformed(e.to_string()))),
        };
        let decision = decide(&self.config, &request);
        let mut leftover = head[end..].to_vec();
        leftover.extend_from_slice(rest);
        match decision {
            Decision::Upgrade { accept } => {
                let response = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                self.out.extend_from_slice(response.as_bytes());
                let config = WebSocketConfig::default()
                    .read_buffer_size(4096)
                    .write_buffer_size(0)
                    .max_message_size(Some(self.max_message))
                    .max_frame_size(Some(self.max_message))
                    .accept_unmasked_frames(false);
                self.state =
                    State::Open(Box::new(WebSocketContext::new(Role::Server, Some(config))));
                Ok(Some(leftover))
            }
            Decision::Page(index) => {
                let page = &self.config.pages[index];
                let (path, content_type, body) = (
                    page.path.clone(),
                    page.content_type.clone(),
                    page.body.clone(),
                );
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
                     Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n\
                     Connection: close\r\n\r\n",
                    body.len()
                );
                self.out.extend_from_slice(head.as_bytes());
                self.out.extend_from_slice(&body);
                self.state = State::Answered;
                self.outcome = Some(WebOutcome::Served(path));
                Ok(None)
            }
            Decision::Refuse(e) => Err(self.refuse(e)),
        }
    }

    /// Queues the HTTP answer for `error` and returns it.
    fn refuse(&mut self, error: WebError) -> WebError {
        let (status, reason, extra) = match &error {
            WebError::HeadTooLarge { .. } => (431, "Request Header Fields Too Large", ""),
            WebError::Malformed(_) | WebError::BadUpgrade(_) => (400, "Bad Request", ""),
            WebError::MethodNotAllowed(_) => (405, "Method Not Allowed", "Allow: GET\r\n"),
            WebError::UpgradeRequired(_) => (
                426,
                "Upgrade Required",
                "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
            ),
            WebError::OriginRefused(_) => (403, "Forbidden", ""),
            WebError::NotFound(_) => (404, "Not Found", ""),
            _ => (400, "Bad Request", ""),
        };
        let body = format!("{error}\n");
        self.answer(status, reason, extra, &body);
        error
    }

    fn answer(&mut self, status: u16, reason: &str, extra: &str, body: &str) {
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
            body.len()
        );
        self.out.extend_from_slice(response.as_bytes());
        self.state = State::Answered;
    }

    /// Runs the WebSocket decoder over `data` until it has used it all.
    fn read_messages<E: From<WebError>>(
        &mut self,
        data: &[u8],
        deliver: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let State::Open(ctx) = &mut self.state else {
            return Ok(());
        };
        let mut pipe = Pipe {
            input: data,
            out: &mut self.out,
        };
        loop {
            match ctx.read(&mut pipe) {
                Ok(WsMessage::Binary(payload)) => deliver(&payload)?,
                Ok(WsMessage::Text(_)) => {
                    self.close = Some(close_frame(WsCloseCode::Unsupported, "binary only"));
                    return Err(WebError::TextMessage.into());
                }
                Ok(WsMessage::Close(_)) => self.peer_closed = true,
                Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_)) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(())
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    self.peer_closed = true;
                    return Ok(());
                }
                Err(tungstenite::Error::Capacity(_)) => {
                    self.close = Some(close_frame(WsCloseCode::Size, "message too large"));
                    return Err(WebError::MessageTooLarge {
                        limit: self.max_message,
                    }
                    .into());
                }
                Err(tungstenite::Error::Utf8(e)) => {
                    self.close = Some(close_frame(WsCloseCode::Invalid, "invalid UTF-8"));
                    return Err(WebError::Frame(e).into());
                }
                Err(e) => {
                    self.close = Some(close_frame(WsCloseCode::Protocol, "protocol error"));
                    return Err(WebError::Frame(e.to_string()).into());
                }
            }
        }
    }
}

fn close_frame(code: WsCloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

enum Decision {
    Upgrade { accept: String },
    Page(usize),
    Refuse(WebError),
}

/// A header's value as text (`None`: absent or not UTF-8).
fn header<'a>(request: &'a httparse::Request<'_, '_>, name: &str) -> Option<&'a str> {
    request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
}

/// Whether a comma-separated header value holds `token` (without case).
fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

fn decide(config: &WebConfig, request: &httparse::Request<'_, '_>) -> Decision {
    let method = request.method.unwrap_or("");
    if method != "GET" {
        return Decision::Refuse(WebError::MethodNotAllowed(
            method.chars().take(16).collect(),
        ));
    }
    if request.version != Some(1) {
        return Decision::Refuse(WebError::Malformed("HTTP/1.1 required".into()));
    }
    let path = request.path.unwrap_or("/");
    let path = path.split(['?', '#']).next().unwrap_or("/");
    let upgrade = header(request, "upgrade");
    let connection = header(request, "connection");
    if upgrade.is_none() && !has_token(connection, "upgrade") {
        // A plain request: a page, or nothing.
        if config.pages.is_empty() {
            return Decision::Refuse(WebError::UpgradeRequired(
                "this server speaks WebSocket only",
            ));
        }
        return match config.pages.iter().position(|p| p.path == path) {
            Some(i) => Decision::Page(i),
            None => Decision::Refuse(WebError::NotFound(path.chars().take(200).collect())),
        };
    }
    if !has_token(upgrade, "websocket") {
        return Decision::Refuse(WebError::BadUpgrade("Upgrade must be websocket"));
    }
    if !has_token(connection, "upgrade") {
        return Decision::Refuse(WebError::BadUpgrade("Connection must include upgrade"));
    }
    let Some(host) = header(request, "host") else {
        return Decision::Refuse(WebError::BadUpgrade("no Host header"));
    };
    if header(request, "sec-websocket-version") != Some("13") {
        return Decision::Refuse(WebError::UpgradeRequired(
            "Sec-WebSocket-Version must be 13",
        ));
    }
    let Some(key) = header(request, "sec-websocket-key") else {
        return Decision::Refuse(WebError::BadUpgrade("no Sec-WebSocket-Key"));
    };
    // Base64 of 16 bytes: 22 characters and "==".
    let valid_key = key.len() == 24
        && key.ends_with("==")
        && key.as_bytes()[..22]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if !valid_key {
        return Decision::Refuse(WebError::BadUpgrade(
            "Sec-WebSocket-Key is not 16 bytes in base64",
        ));
    }
    if let Some(origin) = header(request, "origin") {
        if !origin_allowed(config, origin, host) {
            return Decision::Refuse(WebError::OriginRefused(origin.chars().take(200).collect()));
        }
    }
    Decision::Upgrade {
        accept: tungstenite::handshake::derive_accept_key(key.as_bytes()),
    }
}

/// Whether a browser at `origin` may connect, `host` being the request's `Host`.
fn origin_allowed(config: &WebConfig, origin: &str, host: &str) -> bool {
    if !config.allowed_origins.is_empty() {
        return config
            .allowed_origins
            .iter()
            .any(|o| o == "*" || o.trim_end_matches('/').eq_ignore_ascii_case(origin));
    }
    // Same origin: the origin's authority (default port left out) is the Host's.
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return false,
    };
    let strip = |a: &str| -> String {
        let a = a.to_ascii_lowercase();
        match a.strip_suffix(default_port) {
            Some(s) => s.to_owned(),
            None => a,
        }
    };
    strip(authority) == strip(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_compares_authority_with_default_ports() {
        let c = WebConfig::default();
        assert!(origin_allowed(
            &c,
            "https://localhost:7443",
            "localhost:7443"
        ));
        assert!(origin_allowed(&c, "https://Example.com", "example.com:443"));
        assert!(!origin_allowed(&c, "https://evil.com", "localhost:7443"));
        assert!(!origin_allowed(
            &c,
            "https://localhost:7444",
            "localhost:7443"
        ));
        assert!(!origin_allowed(&c, "null", "localhost:7443"));
        let listed = WebConfig {
            allowed_origins: vec!["https://app.example.com".into()],
            ..WebConfig::default()
        };
        assert!(origin_allowed(&listed, "https://APP.example.com", "x:1"));
        assert!(!origin_allowed(
            &listed,
            "https://localhost:7443",
            "localhost:7443"
        ));
    }
}
