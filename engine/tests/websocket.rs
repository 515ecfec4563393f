//! The WebSocket transport of the server engine, in memory: the HTTP upgrade (and its
//! refusals), RFC 6455 framing (masking, fragments, control frames, close) and
//! pushwire carried in binary messages. The browser side is tungstenite's client-role
//! `WebSocketContext` over the bytes of a pushwire client engine, or hand-made bytes.
//! Plaintext transport: TLS below the WebSocket layer is the same as for native
//! connections (the io-tokio tests run it over TLS).

mod common;
use common::{grant, peer, wall_clock};

use bytes::{Bytes, BytesMut};
use pushwire_engine::client::{ClientConfig, ClientConnection, ClientEvent, ClientTransport};
use pushwire_engine::server::{ServerConfig, ServerConnection, ServerEvent, ServerTransport};
use pushwire_engine::web::{WebConfig, WebError, WebPage};
use pushwire_engine::{CloseReason, ProtocolError, TimeoutKind};
use pushwire_protocol::{
    ClientOptions, CloseCode, GroupId, Hello, Message, Sender, Text, UserMessage, PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::{CloseCode as WsCloseCode, Data as OpData, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::protocol::{Role, WebSocketContext};
use tungstenite::Message as WsMessage;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn web_server(web: WebConfig) -> ServerConnection {
    let mut config = ServerConfig::new(ServerTransport::Plaintext);
    config.web = Some(Arc::new(web));
    ServerConnection::new(Arc::new(config), peer(), Instant::now()).unwrap()
}

fn upgrade_request(extra: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: localhost:7443\r\nUpgrade: websocket\r\n\
         Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
         Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Everything the server has to send now.
fn drain(server: &mut ServerConnection) -> Vec<u8> {
    let mut out = Vec::new();
    server.poll_transmit(Instant::now(), &mut out);
    out
}

fn events(server: &mut ServerConnection) -> Vec<ServerEvent> {
    std::iter::from_fn(|| server.poll_event()).collect()
}

fn closed(events: &[ServerEvent]) -> Option<&CloseReason> {
    events.iter().find_map(|e| match e {
        ServerEvent::Closed(r) => Some(r),
        _ => None,
    })
}

/// Sends a whole request head and returns the HTTP status line and the response.
fn http(server: &mut ServerConnection, request: &[u8]) -> (String, String) {
    server.handle_input(Instant::now(), request);
    let response = String::from_utf8_lossy(&drain(server)).into_owned();
    let status = response.lines().next().unwrap_or("").to_owned();
    (status, response)
}

/// An answered request ends the connection with this reason.
fn refused_with(server: &mut ServerConnection) -> WebError {
    assert!(
        server.is_finished(),
        "the server must close after an HTTP error"
    );
    match closed(&events(server)) {
        Some(CloseReason::Protocol(ProtocolError::Web(e))) => e.clone(),
        other => panic!("expected a web error, got {other:?}"),
    }
}

#[derive(Default)]
struct Pipe {
    input: VecDeque<u8>,
    output: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        for (slot, byte) in buf.iter_mut().zip(self.input.drain(..n)) {
            *slot = byte;
        }
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A browser: a WebSocket client context, optionally with a pushwire client engine
/// inside.
struct Browser {
    server: ServerConnection,
    ws: WebSocketContext,
    pipe: Pipe,
    /// Messages the browser received, in order.
    received: Vec<WsMessage>,
    server_events: Vec<ServerEvent>,
}

impl Browser {
    /// Connects and upgrades.
    fn upgraded(web: WebConfig) -> Self {
        let mut server = web_server(web);
        server.handle_input(Instant::now(), upgrade_request("").as_bytes());
        let response = drain(&mut server);
        let text = String::from_utf8_lossy(&response);
        assert!(
            text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{text}"
        );
        assert!(text.contains(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n")));
        let end = text.find("\r\n\r\n").unwrap() + 4;
        assert_eq!(end, response.len(), "nothing after the 101 yet");
        Self {
            server,
            ws: WebSocketContext::new(Role::Client, None),
            pipe: Pipe::default(),
            received: Vec::new(),
            server_events: Vec::new(),
        }
    }

    /// Sends a message (masked, as a client must).
    fn send(&mut self, message: WsMessage) {
        self.ws.write(&mut self.pipe, message).unwrap();
        self.ws.flush(&mut self.pipe).unwrap();
        self.push_raw_output();
    }

    fn push_raw_output(&mut self) {
        let bytes = std::mem::take(&mut self.pipe.output);
        self.raw(&bytes);
    }

    /// Hands bytes to the server as they are.
    fn raw(&mut self, bytes: &[u8]) {
        self.server.handle_input(Instant::now(), bytes);
        self.pump();
    }

    /// Moves what the server sends into `received`, and its events.
    fn pump(&mut self) {
        let out = drain(&mut self.server);
        self.pipe.input.extend(out);
        loop {
            match self.ws.read(&mut self.pipe) {
                Ok(m) => self.received.push(m),
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    break
                }
                Err(e) => panic!("browser: {e}"),
            }
        }
        // Replies the browser queued (a Close answer) are not sent on: tests that
        // want them call `send`.
        self.pipe.output.clear();
        self.server_events.extend(events(&mut self.server));
    }

    /// The pushwire frames of the binary messages received, decoded.
    fn pushwire_messages(&self) -> Vec<Message> {
        let mut decoder = pushwire_protocol::FrameDecoder::new(Default::default());
        let mut out = Vec::new();
        for m in &self.received {
            if let WsMessage::Binary(b) = m {
                let mut rest: &[u8] = b;
                while !rest.is_empty() {
                    let n = decoder.feed(rest);
                    rest = &rest[n..];
                    while let Some(f) = decoder.next_frame().unwrap() {
                        out.push(f.decode().unwrap());
                    }
                }
            }
        }
        out
    }

    fn close_frame(&self) -> Option<CloseFrame> {
        self.received.iter().find_map(|m| match m {
            WsMessage::Close(c) => c.clone(),
            _ => None,
        })
    }

    fn closed(&self) -> Option<&CloseReason> {
        closed(&self.server_events)
    }

    fn authenticated(&self) -> bool {
        self.server_events
            .iter()
            .any(|e| matches!(e, ServerEvent::Authenticate(r) if r.user_id.as_str() == "bob"))
    }
}

fn hello_bytes() -> Vec<u8> {
    let mut out = BytesMut::new();
    Message::Hello(Hello {
        min_version: *SUPPORTED_VERSIONS.start(),
        max_version: PROTOCOL_VERSION,
        service_id: 1,
        options: ClientOptions::default(),
        user_id: Text::from("bob"),
        password: Bytes::from_static(b"secret"),
        resume: None,
        max_frame_size: None,
    })
    .encode(&mut out);
    out.to_vec()
}

/// A pushwire client engine through the browser's WebSocket: Hello, Welcome, a
/// request, a publication and a server push, several frames per message.
#[test]
fn upgrade_then_pushwire_through_websocket() {
    let mut b = Browser::upgraded(WebConfig::default());
    let now = Instant::now();
    let mut client = ClientConnection::new(
        ClientConfig::new(ClientTransport::Plaintext, "bob", b"secret"),
        now,
        wall_clock(),
    )
    .unwrap();
    let mut client_events = Vec::new();
    let mut published = None;
    let mut delivered = 0;
    for round in 0..50 {
        let mut out = Vec::new();
        if client.poll_transmit(now, &mut out) > 0 {
            b.send(WsMessage::Binary(out.into()));
        }
        for m in std::mem::take(&mut b.received) {
            if let WsMessage::Binary(payload) = m {
                client.handle_input(now, &payload);
                delivered += 1;
            }
        }
        while let Some(e) = client.poll_event() {
            if let ClientEvent::ServerAuthenticated(_) = e {
                client.accept_server().unwrap();
            }
            if let ClientEvent::Ready(_) = e {
                client.request(9, Bytes::from_static(b"args")).unwrap();
                client.publish(&[GroupId(1)], b"hello browsers").unwrap();
            }
            client_events.push(e);
        }
        for e in std::mem::take(&mut b.server_events) {
            match e {
                ServerEvent::Authenticate(req) => {
                    assert_eq!(req.user_id.as_str(), "bob");
                    assert_eq!(req.password.as_ref(), b"secret");
                    b.server.permit(grant());
                }
                ServerEvent::Request {
                    request_id,
                    payload,
                    ..
                } => {
                    assert_eq!(payload.as_ref(), b"args");
                    b.server.respond(
                        request_id,
                        pushwire_engine::RequestResult::Ok(Bytes::from_static(b"result")),
                    );
                    b.server.send(&Message::UserMessage(UserMessage {
                        seq: 1,
                        sender: Sender::Server,
                        payload: Bytes::from_static(b"from the server"),
                        compression: None,
                    }));
                }
                ServerEvent::Push(Message::Publish(p)) => published = Some(p),
                other => panic!("unexpected server event {other:?} in round {round}"),
            }
        }
        b.pump();
    }
    assert!(client_events
        .iter()
        .any(|e| matches!(e, ClientEvent::Ready(_))));
    assert!(client_events.iter().any(
        |e| matches!(e, ClientEvent::Response { payload, .. } if payload.as_ref() == b"result")
    ));
    assert!(client_events.iter().any(|e| matches!(
        e,
        ClientEvent::Push(Message::UserMessage(m)) if m.payload.as_ref() == b"from the server"
    )));
    let published = published.expect("the publication reached the server");
    assert_eq!(published.groups, vec![GroupId(1)]);
    assert_eq!(published.payload.as_ref(), b"hello browsers");
    assert!(
        delivered >= 2,
        "Welcome and the answers came in binary messages"
    );
}

#[test]
fn hello_split_across_messages_and_fragments() {
    let hello = hello_bytes();
    // Two messages, the first cut inside the length prefix.
    let mut b = Browser::upgraded(WebConfig::default());
    b.send(WsMessage::Binary(Bytes::copy_from_slice(&hello[..2])));
    assert!(!b.authenticated());
    b.send(WsMessage::Binary(Bytes::copy_from_slice(&hello[2..])));
    assert!(b.authenticated(), "{:?}", b.server_events);

    // One message in three fragments.
    let mut b = Browser::upgraded(WebConfig::default());
    let (one, rest) = hello.split_at(3);
    let (two, three) = rest.split_at(5);
    for (data, opcode, fin) in [
        (one, OpData::Binary, false),
        (two, OpData::Continue, false),
        (three, OpData::Continue, true),
    ] {
        let frame = Frame::message(Bytes::copy_from_slice(data), OpCode::Data(opcode), fin);
        b.send(WsMessage::Frame(frame));
    }
    assert!(b.authenticated(), "{:?}", b.server_events);
}

#[test]
fn unmasked_client_frame_closes_with_protocol_error() {
    let mut b = Browser::upgraded(WebConfig::default());
    let hello = hello_bytes();
    let mut frame = vec![0x82, hello.len() as u8];
    frame.extend_from_slice(&hello);
    b.raw(&frame);
    assert!(!b.authenticated());
    assert_eq!(b.close_frame().unwrap().code, WsCloseCode::Protocol);
    assert!(matches!(
        b.closed(),
        Some(CloseReason::Protocol(ProtocolError::Web(WebError::Frame(
            _
        ))))
    ));
    assert!(b.server.is_finished());
}

#[test]
fn ping_is_answered_with_pong() {
    let mut b = Browser::upgraded(WebConfig::default());
    b.send(WsMessage::Ping(Bytes::from_static(b"are you there")));
    assert!(
        b.received
            .iter()
            .any(|m| matches!(m, WsMessage::Pong(p) if p.as_ref() == b"are you there")),
        "{:?}",
        b.received
    );
    assert!(b.closed().is_none());
}

#[test]
fn browser_close_is_answered_and_ends_the_connection() {
    let mut b = Browser::upgraded(WebConfig::default());
    b.send(WsMessage::Close(Some(CloseFrame {
        code: WsCloseCode::Away,
        reason: "tab closed".into(),
    })));
    assert!(
        b.close_frame().is_some(),
        "the close is answered: {:?}",
        b.received
    );
    assert_eq!(b.closed(), Some(&CloseReason::PeerClosed));
    assert!(b.server.is_finished());
}

#[test]
fn server_close_sends_pushwire_close_then_websocket_close() {
    let mut b = Browser::upgraded(WebConfig::default());
    b.server.close(CloseCode::GoingAway, "shutting down");
    b.pump();
    let messages = b.pushwire_messages();
    assert!(
        matches!(messages.last(), Some(Message::Close(c)) if c.code == CloseCode::GoingAway),
        "{messages:?}"
    );
    let last = b.received.last().unwrap();
    assert!(matches!(last, WsMessage::Close(Some(c)) if c.code == WsCloseCode::Normal));
    assert!(b.server.is_finished());
}

#[test]
fn text_message_is_refused_with_1003() {
    let mut b = Browser::upgraded(WebConfig::default());
    b.send(WsMessage::Text("hello".into()));
    assert_eq!(b.close_frame().unwrap().code, WsCloseCode::Unsupported);
    assert_eq!(
        b.closed(),
        Some(&CloseReason::Protocol(ProtocolError::Web(
            WebError::TextMessage
        )))
    );
}

#[test]
fn message_over_the_frame_limit_is_refused_with_1009() {
    let mut b = Browser::upgraded(WebConfig::default());
    let limit = pushwire_protocol::FrameLimits::default().max_frame_size() as usize + 4;
    b.send(WsMessage::Binary(vec![0u8; limit + 1].into()));
    assert_eq!(b.close_frame().unwrap().code, WsCloseCode::Size);
    assert_eq!(
        b.closed(),
        Some(&CloseReason::Protocol(ProtocolError::Web(
            WebError::MessageTooLarge { limit }
        )))
    );
}

#[test]
fn upgrade_in_pieces_with_frames_in_the_same_chunk() {
    let mut server = web_server(WebConfig::default());
    let request = upgrade_request("Origin: https://localhost:7443\r\n");
    let (a, rest) = request.as_bytes().split_at(10);
    server.handle_input(Instant::now(), a);
    assert!(drain(&mut server).is_empty());
    // The rest of the head and the first WebSocket message in one chunk.
    let mut ws = WebSocketContext::new(Role::Client, None);
    let mut pipe = Pipe::default();
    ws.write(&mut pipe, WsMessage::Binary(hello_bytes().into()))
        .unwrap();
    ws.flush(&mut pipe).unwrap();
    let mut chunk = rest.to_vec();
    chunk.extend_from_slice(&pipe.output);
    server.handle_input(Instant::now(), &chunk);
    assert!(String::from_utf8_lossy(&drain(&mut server)).starts_with("HTTP/1.1 101"));
    assert!(events(&mut server)
        .iter()
        .any(|e| matches!(e, ServerEvent::Authenticate(_))));
}

#[test]
fn oversize_head_gets_431() {
    let mut server = web_server(WebConfig::default());
    let padding = format!("X-Padding: {}\r\n", "a".repeat(9000));
    let (status, _) = http(&mut server, upgrade_request(&padding).as_bytes());
    assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");
    assert!(matches!(
        refused_with(&mut server),
        WebError::HeadTooLarge { limit: 8192 }
    ));

    // A head that never ends is cut at the limit, not buffered.
    let mut server = web_server(WebConfig::default());
    server.handle_input(Instant::now(), b"GET / HTTP/1.1\r\n");
    for _ in 0..100 {
        server.handle_input(Instant::now(), &[b'a'; 100]);
    }
    assert!(String::from_utf8_lossy(&drain(&mut server)).starts_with("HTTP/1.1 431"));
    assert!(server.buffer_capacity() < 64 * 1024);
}

#[test]
fn malformed_request_gets_400() {
    let mut server = web_server(WebConfig::default());
    let (status, _) = http(&mut server, b"GET / HTTP/1.1\r\nHost localhost\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    assert!(matches!(refused_with(&mut server), WebError::Malformed(_)));

    let mut server = web_server(WebConfig::default());
    let request = upgrade_request("").replace(KEY, "short");
    let (status, _) = http(&mut server, request.as_bytes());
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    assert!(matches!(refused_with(&mut server), WebError::BadUpgrade(_)));

    let mut server = web_server(WebConfig::default());
    let request = upgrade_request("").replace("Upgrade: websocket", "Upgrade: h2c");
    let (status, _) = http(&mut server, request.as_bytes());
    assert_eq!(status, "HTTP/1.1 400 Bad Request");

    let mut server = web_server(WebConfig::default());
    let (status, response) = http(&mut server, b"GOT / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed", "{response}");
    assert!(response.contains("Allow: GET\r\n"));
}

#[test]
fn wrong_origin_gets_403_and_listed_origins_pass() {
    let mut server = web_server(WebConfig::default());
    let (status, _) = http(
        &mut server,
        upgrade_request("Origin: https://evil.example\r\n").as_bytes(),
    );
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
    assert!(matches!(
        refused_with(&mut server),
        WebError::OriginRefused(o) if o == "https://evil.example"
    ));

    let listed = WebConfig {
        allowed_origins: vec!["https://app.example".into()],
        ..WebConfig::default()
    };
    let mut server = web_server(listed.clone());
    let (status, _) = http(
        &mut server,
        upgrade_request("Origin: https://app.example\r\n").as_bytes(),
    );
    assert_eq!(status, "HTTP/1.1 101 Switching Protocols");
    // With a list, the same origin is not implied.
    let mut server = web_server(listed);
    let (status, _) = http(
        &mut server,
        upgrade_request("Origin: https://localhost:7443\r\n").as_bytes(),
    );
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
}

#[test]
fn missing_upgrade_or_wrong_version_gets_426_and_pages_are_served() {
    let mut server = web_server(WebConfig::default());
    let (status, response) = http(&mut server, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 426 Upgrade Required");
    assert!(response.contains("Upgrade: websocket\r\n"));
    assert!(matches!(
        refused_with(&mut server),
        WebError::UpgradeRequired(_)
    ));

    let mut server = web_server(WebConfig::default());
    let request = upgrade_request("").replace("Version: 13", "Version: 8");
    let (status, response) = http(&mut server, request.as_bytes());
    assert_eq!(status, "HTTP/1.1 426 Upgrade Required");
    assert!(response.contains("Sec-WebSocket-Version: 13\r\n"));

    let pages = WebConfig {
        pages: vec![WebPage::new(
            "/",
            "text/html; charset=utf-8",
            Bytes::from_static(b"<h1>chat</h1>"),
        )],
        ..WebConfig::default()
    };
    let mut server = web_server(pages.clone());
    let (status, response) = http(
        &mut server,
        b"GET /?x=1 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(response.ends_with("\r\n\r\n<h1>chat</h1>"), "{response}");
    assert!(response.contains("Content-Length: 13\r\n"));
    assert!(server.is_finished());
    assert!(matches!(
        closed(&events(&mut server)),
        Some(CloseReason::Local {
            code: CloseCode::Normal,
            ..
        })
    ));

    let mut server = web_server(pages);
    let (status, _) = http(
        &mut server,
        b"GET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

#[test]
fn deadline_expires_during_the_upgrade() {
    let mut server = web_server(WebConfig::default());
    let request = upgrade_request("");
    server.handle_input(Instant::now(), &request.as_bytes()[..20]);
    assert!(drain(&mut server).is_empty());
    let deadline = server.poll_timeout().expect("the Hello deadline runs");
    assert!(deadline <= Instant::now() + Duration::from_secs(10));
    server.handle_timeout(deadline);
    let response = String::from_utf8_lossy(&drain(&mut server)).into_owned();
    assert!(
        response.starts_with("HTTP/1.1 408 Request Timeout"),
        "{response}"
    );
    assert!(server.is_finished());
    assert_eq!(
        closed(&events(&mut server)),
        Some(&CloseReason::Timeout(TimeoutKind::Hello))
    );

    // After the upgrade the same deadline still bounds the Hello.
    let mut b = Browser::upgraded(WebConfig::default());
    let deadline = b.server.poll_timeout().unwrap();
    b.server.handle_timeout(deadline);
    b.pump();
    assert!(matches!(
        b.pushwire_messages().last(),
        Some(Message::Close(c)) if c.code == CloseCode::HelloTimeout
    ));
    assert_eq!(b.closed(), Some(&CloseReason::Timeout(TimeoutKind::Hello)));
}

#[test]
fn without_websocket_an_http_request_is_a_protocol_error() {
    let config = ServerConfig::new(ServerTransport::Plaintext);
    let mut server = ServerConnection::new(Arc::new(config), peer(), Instant::now()).unwrap();
    server.handle_input(Instant::now(), upgrade_request("").as_bytes());
    let out = drain(&mut server);
    assert!(!out.starts_with(b"HTTP/"), "no HTTP answer when off");
    assert!(matches!(
        closed(&events(&mut server)),
        Some(CloseReason::Protocol(ProtocolError::Decode(_)))
    ));
}

#[test]
fn native_clients_still_work_with_websocket_on() {
    let mut server = web_server(WebConfig::default());
    server.handle_input(Instant::now(), &hello_bytes());
    assert!(events(&mut server)
        .iter()
        .any(|e| matches!(e, ServerEvent::Authenticate(r) if r.user_id.as_str() == "bob")));
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    fn cases() -> u32 {
        std::env::var("PUSHWIRE_PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64)
    }

    /// The upgrade, then the Hello in one masked binary message, as one byte string.
    fn browser_bytes() -> Vec<u8> {
        let mut ws = WebSocketContext::new(Role::Client, None);
        let mut pipe = Pipe::default();
        ws.write(&mut pipe, WsMessage::Binary(hello_bytes().into()))
            .unwrap();
        ws.flush(&mut pipe).unwrap();
        let mut all = upgrade_request("").into_bytes();
        all.extend_from_slice(&pipe.output);
        all
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        /// Cut anywhere, the upgrade and the Hello give the same result.
        #[test]
        fn any_chunking_of_upgrade_and_hello_authenticates(
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8)
        ) {
            let all = browser_bytes();
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(all.len())).collect();
            at.push(0);
            at.push(all.len());
            at.sort();
            let mut server = web_server(WebConfig::default());
            let mut out = Vec::new();
            for w in at.windows(2) {
                server.handle_input(Instant::now(), &all[w[0]..w[1]]);
                out.extend(drain(&mut server));
            }
            prop_assert!(out.starts_with(b"HTTP/1.1 101 "));
            prop_assert!(events(&mut server)
                .iter()
                .any(|e| matches!(e, ServerEvent::Authenticate(_))));
        }

        /// Garbage as the request head, or after the upgrade, never panics: the
        /// connection ends with one Closed, or waits for more.
        #[test]
        fn garbage_never_panics(
            head in any::<bool>(),
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let mut server = web_server(WebConfig::default());
            let mut input = if head { b"G".to_vec() } else { upgrade_request("").into_bytes() };
            input.extend_from_slice(&bytes);
            server.handle_input(Instant::now(), &input);
            let _ = drain(&mut server);
            let closes = events(&mut server)
                .iter()
                .filter(|e| matches!(e, ServerEvent::Closed(_)))
                .count();
            prop_assert!(closes <= 1);
            if closes == 0 {
                // Still waiting: the deadline ends it.
                let deadline = server.poll_timeout().expect("a deadline while waiting");
                server.handle_timeout(deadline);
                let _ = drain(&mut server);
                prop_assert!(server.is_finished());
            }
        }
    }
}
