//! Adversarial tests of the connection engines: broken or hostile peers, TLS edge
//! cases (alerts, close_notify, bytes after it, key updates, record bounds, TLS 1.2),
//! and the lifecycle invariants every test checks on the way: exactly one `Closed`,
//! nothing after it, no timer armed after it, and every request ending exactly once
//! (G7).
//!
//! Two harnesses:
//! - [`Pair`]: a client engine wired to a server engine (as in `pair.rs`).
//! - [`Raw`]: one engine wired to a plain (buffered) rustls connection that the test
//!   scripts message by message, to play a peer the engines would never be.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use pushwire_engine::client::{
    AbortReason, ClientConfig, ClientConnection, ClientError, ClientEvent, ClientState,
    ClientTransport, PushCommand, ServerAuthMode,
};
use pushwire_engine::credentials::load_root_store;
use pushwire_engine::server::{
    ServerConfig, ServerConnection, ServerEvent, ServerState, ServerTransport,
};
use pushwire_engine::tls::{server_tls_config, ClientAuth, ClientTls, TlsError, MAX_RECORD_LEN};
use pushwire_engine::{CloseReason, ProtocolError, TimeoutKind};
use pushwire_protocol::{
    BatchBegin, BatchCommit, ClientOptions, Close, CloseCode, DecodeError, ErrorCode, FrameDecoder,
    FrameLimits, GroupId, Hello, Message, Ping, Pong, RefuseCode, Request, Response, ResumeToken,
    Sender, ServerError, Subscribe, Text, UserMessage, Welcome, DEFAULT_MAX_FRAME_SIZE,
    MAX_PASSWORD_BYTES, MAX_TEXT_BYTES, MAX_USER_ID_CHARS, PROTOCOL_VERSION, SUPPORTED_VERSIONS,
};
use rustls::pki_types::{ServerName, UnixTime};
use rustls::AlertDescription;
use std::fmt::Debug;
use std::io::{ErrorKind, Read, Write};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

mod common;
use common::{cert, client_tls, credentials, grant, peer, wall_clock};

// ---------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_rustls() -> Arc<rustls::ServerConfig> {
    static CONFIG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| server_tls_config(credentials(), ClientAuth::None).unwrap())
        .clone()
}

/// A server that speaks TLS 1.2 only, on the ring provider.
fn tls12_server_rustls() -> Arc<rustls::ServerConfig> {
    let creds = credentials();
    let config = rustls::ServerConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())
        .unwrap();
    Arc::new(config)
}

fn client_config(tls: bool) -> ClientConfig {
    let transport = if tls {
        ClientTransport::Tls(client_tls())
    } else {
        ClientTransport::Plaintext
    };
    ClientConfig::new(transport, "alice", b"MyPassword")
}

fn server_config(tls: bool) -> ServerConfig {
    ServerConfig::new(if tls {
        ServerTransport::Tls(server_rustls())
    } else {
        ServerTransport::Plaintext
    })
}

/// Certificate validity is checked at [`wall_clock`], not the machine's clock.
#[derive(Debug)]
struct FixedTime;

impl rustls::time_provider::TimeProvider for FixedTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(wall_clock())
    }
}

/// A plain rustls client trusting the development CA (TLS 1.2 and 1.3).
fn raw_client_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = load_root_store(&[cert("ca.cert.pem")]).unwrap();
            Arc::new(
                rustls::ClientConfig::builder_with_details(ring(), Arc::new(FixedTime))
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        })
        .clone()
}

fn hello_message() -> Message {
    Message::Hello(Hello {
        min_version: *SUPPORTED_VERSIONS.start(),
        max_version: PROTOCOL_VERSION,
        service_id: 1,
        options: ClientOptions::default(),
        user_id: Text::from("mallory"),
        password: Bytes::from_static(b"pw"),
        resume: None,
        max_frame_size: None,
    })
}

fn welcome_message() -> Message {
    Message::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        session_id: 1,
        resume_token: ResumeToken([1; 16]),
        resumed: false,
        max_frame_size: DEFAULT_MAX_FRAME_SIZE,
        ping_interval_ms: 15_000,
        session_timeout_ms: 0,
        replay_capacity: 0,
        idle_timeout_ms: 0,
    })
}

fn request_message(request_id: u64, payload: &'static [u8]) -> Message {
    Message::Request(Request {
        request_id,
        method_id: 1,
        payload: Bytes::from_static(payload),
    })
}

fn response_message(request_id: u64, payload: &'static [u8]) -> Message {
    Message::Response(Response {
        request_id,
        payload: Bytes::from_static(payload),
    })
}

fn server_push() -> Message {
    Message::UserMessage(UserMessage {
        seq: 1,
        sender: Sender::Server,
        payload: Bytes::from_static(b"push"),
        compression: None,
    })
}

fn encode(messages: &[Message]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for m in messages {
        m.encode(&mut out);
    }
    out.to_vec()
}

/// A frame header announcing `length` bytes (type byte plus body), then `kind`.
fn frame_header(length: u32, kind: u8) -> Vec<u8> {
    let mut v = length.to_be_bytes().to_vec();
    v.push(kind);
    v
}

fn cases() -> u32 {
    std::env::var("PUSHWIRE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

// ---------------------------------------------------------------------------------
// One interface over both engines, and the invariants checked on every event
// ---------------------------------------------------------------------------------

trait Engine {
    type Event: Debug + Clone + PartialEq;
    fn feed(&mut self, now: Instant, data: &[u8]);
    fn drain(&mut self, now: Instant, out: &mut Vec<u8>) -> usize;
    fn next_event(&mut self) -> Option<Self::Event>;
    fn eof(&mut self);
    fn timer(&self) -> Option<Instant>;
    fn closed_reason(event: &Self::Event) -> Option<&CloseReason>;
    /// What the scripted application does on an event (`auto`: permit every Hello).
    fn react(&mut self, event: &Self::Event, auto: bool);
}

impl Engine for ClientConnection {
    type Event = ClientEvent;
    fn feed(&mut self, now: Instant, data: &[u8]) {
        self.handle_input(now, data);
    }
    fn drain(&mut self, now: Instant, out: &mut Vec<u8>) -> usize {
        self.poll_transmit(now, out)
    }
    fn next_event(&mut self) -> Option<ClientEvent> {
        self.poll_event()
    }
    fn eof(&mut self) {
        self.handle_transport_closed();
    }
    fn timer(&self) -> Option<Instant> {
        self.poll_timeout()
    }
    fn closed_reason(event: &ClientEvent) -> Option<&CloseReason> {
        match event {
            ClientEvent::Closed(r) => Some(r),
            _ => None,
        }
    }
    fn react(&mut self, _: &ClientEvent, _: bool) {}
}

impl Engine for ServerConnection {
    type Event = ServerEvent;
    fn feed(&mut self, now: Instant, data: &[u8]) {
        self.handle_input(now, data);
    }
    fn drain(&mut self, now: Instant, out: &mut Vec<u8>) -> usize {
        self.poll_transmit(now, out)
    }
    fn next_event(&mut self) -> Option<ServerEvent> {
        self.poll_event()
    }
    fn eof(&mut self) {
        self.handle_transport_closed();
    }
    fn timer(&self) -> Option<Instant> {
        self.poll_timeout()
    }
    fn closed_reason(event: &ServerEvent) -> Option<&CloseReason> {
        match event {
            ServerEvent::Closed(r) => Some(r),
            _ => None,
        }
    }
    fn react(&mut self, event: &ServerEvent, auto: bool) {
        if auto && matches!(event, ServerEvent::Authenticate(_)) {
            self.permit(grant());
        }
    }
}

/// Drains an engine's events into `log`, checking that nothing follows `Closed` and
/// that no timer is armed once `Closed` is out. Returns whether there were any.
fn collect<E: Engine>(engine: &mut E, log: &mut Vec<E::Event>, auto: bool) -> bool {
    let mut any = false;
    while let Some(event) = engine.next_event() {
        any = true;
        assert!(
            !log.iter().any(|e| E::closed_reason(e).is_some()),
            "event {event:?} after Closed; log: {log:?}"
        );
        if E::closed_reason(&event).is_some() {
            assert_eq!(engine.timer(), None, "a timer is armed after Closed");
        }
        engine.react(&event, auto);
        log.push(event);
    }
    any
}

/// The one Closed event, which must be the last.
fn closed_once<E: Engine>(log: &[E::Event]) -> &CloseReason {
    let closes: Vec<&CloseReason> = log.iter().filter_map(E::closed_reason).collect();
    assert_eq!(closes.len(), 1, "expected exactly one Closed in {log:?}");
    assert!(
        E::closed_reason(log.last().unwrap()).is_some(),
        "Closed is not last: {log:?}"
    );
    closes[0]
}

fn not_closed<E: Engine>(log: &[E::Event]) {
    assert!(
        !log.iter().any(|e| E::closed_reason(e).is_some()),
        "unexpected Closed: {log:?}"
    );
}

// ---------------------------------------------------------------------------------
// Pair: client engine <-> server engine
// ---------------------------------------------------------------------------------

struct Pair {
    now: Instant,
    client: ClientConnection,
    server: ServerConnection,
    client_events: Vec<ClientEvent>,
    server_events: Vec<ServerEvent>,
    /// Deliver bytes between the ends (false: the network silently dropped).
    connected: bool,
    /// Permit every Hello.
    auto_permit: bool,
    /// Flip one byte in flight: (from the client?, nth transmit of that end, offset,
    /// xor mask). The offset wraps around the transmit's length.
    tamper: Option<(bool, usize, usize, u8)>,
    transmits: [usize; 2],
}

impl Pair {
    fn new(client: ClientConfig, server: ServerConfig) -> Self {
        let now = Instant::now();
        Self {
            client: ClientConnection::new(client, now, wall_clock()).unwrap(),
            server: ServerConnection::new(Arc::new(server), peer(), now).unwrap(),
            now,
            client_events: Vec::new(),
            server_events: Vec::new(),
            connected: true,
            auto_permit: true,
            tamper: None,
            transmits: [0, 0],
        }
    }

    fn apply_tamper(&mut self, from_client: bool, buf: &mut [u8]) {
        let side = usize::from(from_client);
        if let Some((who, nth, offset, mask)) = self.tamper {
            if who == from_client && nth == self.transmits[side] {
                buf[offset % buf.len()] ^= mask.max(1);
            }
        }
        self.transmits[side] += 1;
    }

    fn tls() -> Self {
        Self::new(client_config(true), server_config(true))
    }

    fn plaintext() -> Self {
        Self::new(client_config(false), server_config(false))
    }

    fn with(tls: bool) -> Self {
        if tls {
            Self::tls()
        } else {
            Self::plaintext()
        }
    }

    /// Moves bytes and events until nothing changes.
    fn drive(&mut self) {
        for _ in 0..1000 {
            let mut progressed = false;
            let mut buf = Vec::new();
            if self.client.poll_transmit(self.now, &mut buf) > 0 {
                progressed = true;
                self.apply_tamper(true, &mut buf);
                if self.connected {
                    self.server.handle_input(self.now, &buf);
                }
            }
            let mut buf = Vec::new();
            if self.server.poll_transmit(self.now, &mut buf) > 0 {
                progressed = true;
                self.apply_tamper(false, &mut buf);
                if self.connected {
                    self.client.handle_input(self.now, &buf);
                }
            }
            // A finished end closes its transport; the other end sees EOF.
            if self.connected && self.client.is_finished() && !self.server.is_finished() {
                self.server.handle_transport_closed();
                progressed = true;
            }
            if self.connected && self.server.is_finished() && !self.client.is_finished() {
                self.client.handle_transport_closed();
                progressed = true;
            }
            progressed |= collect(&mut self.client, &mut self.client_events, false);
            progressed |= collect(&mut self.server, &mut self.server_events, self.auto_permit);
            if !progressed {
                return;
            }
        }
        panic!("pair did not settle");
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
        self.drive();
    }

    /// Handshake, Hello, Welcome.
    fn ready(tls: bool) -> Self {
        let mut pair = Self::with(tls);
        pair.drive();
        assert_eq!(pair.client.state(), ClientState::Ready, "{pair:?}");
        assert_eq!(pair.server.state(), ServerState::Ready);
        pair
    }

    fn client_closed(&self) -> Option<&CloseReason> {
        self.client_events
            .iter()
            .find_map(ClientConnection::closed_reason)
    }

    fn server_closed(&self) -> Option<&CloseReason> {
        self.server_events
            .iter()
            .find_map(ServerConnection::closed_reason)
    }

    fn server_request_ids(&self) -> Vec<u64> {
        self.server_events
            .iter()
            .filter_map(|e| match e {
                ServerEvent::Request { request_id, .. } => Some(*request_id),
                _ => None,
            })
            .collect()
    }
}

/// Events, each cut to 150 characters (certificates and payloads are long).
fn short<T: Debug>(events: &[T]) -> Vec<String> {
    events
        .iter()
        .map(|e| format!("{e:?}").chars().take(150).collect())
        .collect()
}

impl Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair")
            .field("client_events", &short(&self.client_events))
            .field("server_events", &short(&self.server_events))
            .finish()
    }
}

/// The request each client outcome event ends, if any.
fn ended_request(event: &ClientEvent) -> Option<u64> {
    match event {
        ClientEvent::Response { request_id, .. }
        | ClientEvent::ServerError { request_id, .. }
        | ClientEvent::RequestAborted { request_id, .. } => Some(*request_id),
        _ => None,
    }
}

/// G7: every issued request ends exactly once; results (not aborts) in request order.
fn check_g7(issued: &[u64], events: &[ClientEvent]) {
    for id in issued {
        let n = events
            .iter()
            .filter(|e| ended_request(e) == Some(*id))
            .count();
        assert_eq!(n, 1, "request {id} ended {n} times: {events:?}");
    }
    for e in events {
        if let Some(id) = ended_request(e) {
            assert!(issued.contains(&id), "outcome for unknown request {id}");
        }
    }
    let results: Vec<u64> = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                ClientEvent::Response { .. } | ClientEvent::ServerError { .. }
            )
        })
        .filter_map(ended_request)
        .collect();
    assert!(
        results.windows(2).all(|w| w[0] < w[1]),
        "results out of request order: {results:?}"
    );
}

// ---------------------------------------------------------------------------------
// Raw: one engine <-> a scripted rustls peer
// ---------------------------------------------------------------------------------

/// A plain buffered rustls connection the test writes messages (or bytes) into.
struct RawTls {
    conn: rustls::Connection,
    decoder: FrameDecoder,
    /// Messages decrypted from the engine.
    received: Vec<Message>,
    /// rustls failed on the engine's bytes.
    error: Option<rustls::Error>,
    /// The engine's close_notify arrived.
    peer_closed: bool,
}

impl RawTls {
    fn client() -> Self {
        let name = ServerName::try_from("localhost").unwrap();
        Self::wrap(
            rustls::ClientConnection::new(raw_client_config(), name)
                .unwrap()
                .into(),
        )
    }

    fn server(config: Arc<rustls::ServerConfig>) -> Self {
        Self::wrap(rustls::ServerConnection::new(config).unwrap().into())
    }

    fn wrap(conn: rustls::Connection) -> Self {
        Self {
            conn,
            decoder: FrameDecoder::new(FrameLimits::default()),
            received: Vec::new(),
            error: None,
            peer_closed: false,
        }
    }

    fn send(&mut self, messages: &[Message]) {
        self.send_bytes(&encode(messages));
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        self.conn.writer().write_all(bytes).unwrap();
    }

    /// Every TLS byte rustls wants to send.
    fn take_tls(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut out).unwrap() == 0 {
                break;
            }
        }
        out
    }

    fn receive(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.error.is_none() {
            match self.conn.read_tls(&mut data) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => panic!("read_tls: {e}"),
            }
            if let Err(e) = self.conn.process_new_packets() {
                self.error = Some(e);
                return;
            }
            self.read_plaintext();
        }
    }

    fn read_plaintext(&mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.conn.reader().read(&mut buf) {
                Ok(0) => {
                    self.peer_closed = true;
                    return;
                }
                Ok(n) => {
                    let mut rest = &buf[..n];
                    while !rest.is_empty() {
                        let taken = self.decoder.feed(rest);
                        rest = &rest[taken..];
                        while let Some(m) = self.decoder.next_message().expect("engine sent junk") {
                            self.received.push(m);
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => panic!("reader: {e}"),
            }
        }
    }

    fn close_frame(&self) -> Option<&Close> {
        self.received.iter().find_map(|m| match m {
            Message::Close(c) => Some(c),
            _ => None,
        })
    }
}

struct Raw<E: Engine> {
    now: Instant,
    raw: RawTls,
    engine: E,
    events: Vec<E::Event>,
    auto: bool,
}

impl Raw<ServerConnection> {
    /// A scripted rustls client against the server engine.
    fn client_vs(config: ServerConfig) -> Self {
        let now = Instant::now();
        Self {
            now,
            raw: RawTls::client(),
            engine: ServerConnection::new(Arc::new(config), peer(), now).unwrap(),
            events: Vec::new(),
            auto: true,
        }
    }

    /// Handshake, Hello, Welcome.
    fn welcomed(config: ServerConfig) -> Self {
        let mut raw = Self::client_vs(config);
        raw.drive();
        raw.raw.send(&[hello_message()]);
        raw.drive();
        assert!(
            matches!(raw.raw.received.first(), Some(Message::Welcome(_))),
            "{:?} / {:?}",
            raw.raw.received,
            raw.events
        );
        raw
    }
}

impl Raw<ClientConnection> {
    /// A scripted rustls server against the client engine.
    fn server_vs(config: ClientConfig) -> Self {
        let now = Instant::now();
        Self {
            now,
            raw: RawTls::server(server_rustls()),
            engine: ClientConnection::new(config, now, wall_clock()).unwrap(),
            events: Vec::new(),
            auto: false,
        }
    }

    /// Handshake, Hello (checked), Welcome.
    fn welcomed() -> Self {
        let mut raw = Self::server_vs(client_config(true));
        raw.drive();
        assert!(
            matches!(raw.raw.received.first(), Some(Message::Hello(_))),
            "{:?}",
            raw.raw.received
        );
        raw.raw.send(&[welcome_message()]);
        raw.drive();
        assert_eq!(raw.engine.state(), ClientState::Ready, "{:?}", raw.events);
        raw
    }
}

impl<E: Engine> Raw<E> {
    /// Moves bytes both ways and drains events until nothing changes.
    fn drive(&mut self) {
        for _ in 0..1000 {
            let mut progressed = false;
            let out = self.raw.take_tls();
            if !out.is_empty() {
                progressed = true;
                self.engine.feed(self.now, &out);
            }
            let mut buf = Vec::new();
            if self.engine.drain(self.now, &mut buf) > 0 {
                progressed = true;
                self.raw.receive(&buf);
            }
            progressed |= collect(&mut self.engine, &mut self.events, self.auto);
            if !progressed {
                return;
            }
        }
        panic!("raw pair did not settle");
    }
}

// ---------------------------------------------------------------------------------
// TLS alerts and failures
// ---------------------------------------------------------------------------------

/// A plaintext TLS record holding a fatal handshake_failure alert.
const FATAL_HANDSHAKE_FAILURE: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 40];

fn alert_received(desc: AlertDescription) -> CloseReason {
    CloseReason::Tls(TlsError::Rustls(rustls::Error::AlertReceived(desc)))
}

#[test]
fn a_fatal_alert_during_the_handshake_closes_either_engine_with_that_alert() {
    // Server engine: an alert instead of a ClientHello.
    let now = Instant::now();
    let mut server = ServerConnection::new(Arc::new(server_config(true)), peer(), now).unwrap();
    let mut events = Vec::new();
    server.handle_input(now, &FATAL_HANDSHAKE_FAILURE);
    server.poll_transmit(now, &mut Vec::new());
    collect(&mut server, &mut events, true);
    assert_eq!(
        closed_once::<ServerConnection>(&events),
        &alert_received(AlertDescription::HandshakeFailure)
    );
    assert!(server.is_finished());

    // Client engine: ClientHello out, alert back.
    let mut client = ClientConnection::new(client_config(true), now, wall_clock()).unwrap();
    let mut hello = Vec::new();
    assert!(client.poll_transmit(now, &mut hello) > 0);
    assert_eq!(hello[0], 0x16, "a handshake record first");
    client.handle_input(now, &FATAL_HANDSHAKE_FAILURE);
    client.poll_transmit(now, &mut Vec::new());
    let mut events = Vec::new();
    collect(&mut client, &mut events, false);
    assert_eq!(
        events,
        [ClientEvent::Closed(alert_received(
            AlertDescription::HandshakeFailure
        ))]
    );
    assert!(client.is_finished());
}

#[test]
fn an_encrypted_fatal_alert_after_welcome_aborts_requests_with_the_alert() {
    let mut raw = Raw::<ClientConnection>::welcomed();
    let id = raw.engine.request(1, Bytes::from_static(b"q")).unwrap();
    // Take the client's request record and corrupt it on its way to the raw server:
    // the raw server fails with bad_record_mac and sends that alert, encrypted.
    let mut record = Vec::new();
    raw.engine.poll_transmit(raw.now, &mut record);
    *record.last_mut().unwrap() ^= 0x80;
    raw.raw.receive(&record);
    assert_eq!(raw.raw.error, Some(rustls::Error::DecryptError));
    raw.drive();
    let reason = alert_received(AlertDescription::BadRecordMac);
    assert_eq!(closed_once::<ClientConnection>(&raw.events), &reason);
    assert!(raw.events.contains(&ClientEvent::RequestAborted {
        request_id: id,
        reason: AbortReason::ConnectionLost(reason.clone()),
    }));
    assert_eq!(raw.engine.outstanding_requests(), 0);
    assert!(raw.engine.is_finished());
}

#[test]
fn a_corrupted_record_ends_the_connection_with_a_tls_error() {
    let mut pair = Pair::ready(true);
    let id = pair.client.request(1, Bytes::new()).unwrap();
    pair.drive();
    pair.server.send(&server_push());
    let mut record = Vec::new();
    pair.server.poll_transmit(pair.now, &mut record);
    *record.last_mut().unwrap() ^= 0x01;
    pair.client.handle_input(pair.now, &record);
    pair.drive();
    let reason = CloseReason::Tls(TlsError::Rustls(rustls::Error::DecryptError));
    assert_eq!(
        closed_once::<ClientConnection>(&pair.client_events),
        &reason
    );
    assert!(pair.client_events.contains(&ClientEvent::RequestAborted {
        request_id: id,
        reason: AbortReason::ConnectionLost(reason),
    }));
    assert!(
        !pair
            .client_events
            .iter()
            .any(|e| matches!(e, ClientEvent::Push(_))),
        "a corrupted record delivered data"
    );
    closed_once::<ServerConnection>(&pair.server_events);
}

#[test]
fn the_peer_of_a_failed_tls_link_is_told_why_with_an_alert() {
    // Client side fails on a corrupted record: the server should see bad_record_mac,
    // not a bare transport close.
    let mut pair = Pair::ready(true);
    pair.server.send(&server_push());
    let mut record = Vec::new();
    pair.server.poll_transmit(pair.now, &mut record);
    *record.last_mut().unwrap() ^= 0x01;
    pair.client.handle_input(pair.now, &record);
    pair.drive();
    assert_eq!(
        pair.server_closed(),
        Some(&alert_received(AlertDescription::BadRecordMac)),
        "{pair:?}"
    );

    // Server side fails on a malformed ClientHello: its answer should be a plaintext
    // fatal alert record.
    let now = Instant::now();
    let mut server = ServerConnection::new(Arc::new(server_config(true)), peer(), now).unwrap();
    // A handshake record holding a ClientHello of 4 junk bytes.
    server.handle_input(
        now,
        &[0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0, 0, 4, 1, 2, 3, 4],
    );
    let mut out = Vec::new();
    server.poll_transmit(now, &mut out);
    assert!(
        out.len() >= 7 && out[0] == 0x15 && out[5] == 2,
        "no fatal alert sent: {out:?}"
    );
}

// ---------------------------------------------------------------------------------
// Protocol misbehaviour
// ---------------------------------------------------------------------------------

fn unexpected(message: &'static str, context: &'static str) -> CloseReason {
    CloseReason::Protocol(ProtocolError::Unexpected { message, context })
}

#[test]
fn a_second_hello_after_welcome_is_a_protocol_error() {
    let mut raw = Raw::<ServerConnection>::welcomed(server_config(true));
    raw.raw.send(&[hello_message()]);
    raw.drive();
    assert_eq!(
        closed_once::<ServerConnection>(&raw.events),
        &unexpected("Hello", "after the Hello phase")
    );
    assert_eq!(
        raw.events
            .iter()
            .filter(|e| matches!(e, ServerEvent::Authenticate(_)))
            .count(),
        1
    );
    assert_eq!(
        raw.raw.close_frame().map(|c| c.code),
        Some(CloseCode::ProtocolError),
        "{:?}",
        raw.raw.received
    );
    assert!(raw.raw.peer_closed, "no close_notify after the Close");
    assert!(raw.engine.is_finished());
}

#[test]
fn a_hello_repeated_before_the_decision_is_a_protocol_error_and_no_welcome_follows() {
    let mut raw = Raw::<ServerConnection>::client_vs(server_config(true));
    raw.auto = false;
    raw.drive();
    raw.raw.send(&[hello_message(), hello_message()]);
    raw.drive();
    assert!(matches!(raw.events[0], ServerEvent::Authenticate(_)));
    assert_eq!(
        closed_once::<ServerConnection>(&raw.events),
        &unexpected("Hello", "after the Hello phase")
    );
    // The application decides late: nothing may happen any more.
    raw.engine.permit(grant());
    raw.drive();
    assert_eq!(raw.engine.state(), ServerState::Closed);
    assert!(
        !raw.raw
            .received
            .iter()
            .any(|m| matches!(m, Message::Welcome(_))),
        "{:?}",
        raw.raw.received
    );
}

#[test]
fn requests_before_welcome_are_refused_locally_and_fatal_from_a_peer() {
    // The client API refuses before Ready, in every pre-Ready state.
    let mut pair = Pair::tls();
    pair.auto_permit = false;
    assert_eq!(pair.client.state(), ClientState::Handshaking);
    assert_eq!(
        pair.client.request(1, Bytes::new()),
        Err(ClientError::NotReady)
    );
    pair.drive();
    assert_eq!(pair.client.state(), ClientState::HelloSent);
    assert_eq!(
        pair.client.request(1, Bytes::new()),
        Err(ClientError::NotReady)
    );
    assert_eq!(
        pair.client.push(PushCommand::ListGroups),
        Err(ClientError::NotReady)
    );
    assert_eq!(pair.client.start_batch(), Err(ClientError::NotReady));
    assert_eq!(pair.client.outstanding_requests(), 0);
    assert!(pair.server_request_ids().is_empty());

    // A peer that sends a Request with its Hello, before any Welcome.
    let mut raw = Raw::<ServerConnection>::client_vs(server_config(true));
    raw.auto = false;
    raw.drive();
    raw.raw
        .send(&[hello_message(), request_message(1, b"early")]);
    raw.drive();
    assert_eq!(
        closed_once::<ServerConnection>(&raw.events),
        &unexpected("Request", "from a client before Welcome")
    );
    assert!(!raw
        .events
        .iter()
        .any(|e| matches!(e, ServerEvent::Request { .. })));
    assert_eq!(
        raw.raw.close_frame().map(|c| c.code),
        Some(CloseCode::ProtocolError)
    );

    // ... or before its Hello.
    let mut raw = Raw::<ServerConnection>::client_vs(server_config(true));
    raw.drive();
    raw.raw.send(&[request_message(1, b"earlier")]);
    raw.drive();
    assert_eq!(
        closed_once::<ServerConnection>(&raw.events),
        &unexpected("Request", "from a client before Welcome")
    );
}

#[test]
fn a_response_for_an_unknown_request_closes_and_aborts_the_outstanding_one() {
    for tls in [true, false] {
        let mut pair = Pair::ready(tls);
        let id = pair.client.request(1, Bytes::new()).unwrap();
        pair.drive();
        pair.server.send(&response_message(id + 100, b"forged"));
        pair.drive();
        let reason = CloseReason::Protocol(ProtocolError::ResultOutOfOrder {
            got: id + 100,
            expected: Some(id),
        });
        assert_eq!(
            closed_once::<ClientConnection>(&pair.client_events),
            &reason
        );
        check_g7(&[id], &pair.client_events);
        assert!(pair.client_events.contains(&ClientEvent::RequestAborted {
            request_id: id,
            reason: AbortReason::ConnectionLost(reason),
        }));
        assert!(
            matches!(
                closed_once::<ServerConnection>(&pair.server_events),
                CloseReason::Remote {
                    code: CloseCode::ProtocolError,
                    ..
                }
            ),
            "{pair:?}"
        );
    }
}

#[test]
fn a_response_with_nothing_outstanding_is_a_protocol_error() {
    let mut raw = Raw::<ClientConnection>::welcomed();
    raw.raw.send(&[response_message(1, b"unasked")]);
    raw.drive();
    assert_eq!(
        closed_once::<ClientConnection>(&raw.events),
        &CloseReason::Protocol(ProtocolError::ResultOutOfOrder {
            got: 1,
            expected: None
        })
    );
    assert!(!raw
        .events
        .iter()
        .any(|e| matches!(e, ClientEvent::Response { .. })));
}

#[test]
fn a_second_welcome_is_a_protocol_error() {
    let mut pair = Pair::ready(true);
    pair.server.send(&welcome_message());
    pair.drive();
    assert_eq!(
        closed_once::<ClientConnection>(&pair.client_events),
        &unexpected("Welcome", "from the server after Welcome")
    );
    assert_eq!(
        pair.client_events
            .iter()
            .filter(|e| matches!(e, ClientEvent::Ready(_)))
            .count(),
        1
    );
    assert!(matches!(
        pair.server_closed(),
        Some(CloseReason::Remote {
            code: CloseCode::ProtocolError,
            ..
        })
    ));
}

#[test]
fn a_welcome_with_an_impossible_frame_limit_or_version_is_refused() {
    for welcome in [
        Welcome {
            max_frame_size: 10,
            ..match welcome_message() {
                Message::Welcome(w) => w,
                _ => unreachable!(),
            }
        },
        Welcome {
            version: *SUPPORTED_VERSIONS.end() + 1,
            ..match welcome_message() {
                Message::Welcome(w) => w,
                _ => unreachable!(),
            }
        },
    ] {
        let mut raw = Raw::<ClientConnection>::server_vs(client_config(true));
        raw.drive();
        raw.raw.send(&[Message::Welcome(welcome)]);
        raw.drive();
        assert!(
            matches!(
                closed_once::<ClientConnection>(&raw.events),
                CloseReason::Protocol(ProtocolError::Unexpected {
                    message: "Welcome",
                    ..
                })
            ),
            "{:?}",
            raw.events
        );
        assert!(!raw
            .events
            .iter()
            .any(|e| matches!(e, ClientEvent::Ready(_))));
    }
}

// ---------------------------------------------------------------------------------
// close_notify
// ---------------------------------------------------------------------------------

#[test]
fn close_notify_without_a_close_frame_is_peer_closed_and_is_answered() {
    let mut raw = Raw::<ClientConnection>::welcomed();
    let id = raw.engine.request(1, Bytes::new()).unwrap();
    raw.drive();
    raw.raw.conn.send_close_notify();
    raw.drive();
    assert_eq!(
        closed_once::<ClientConnection>(&raw.events),
        &CloseReason::PeerClosed
    );
    check_g7(&[id], &raw.events);
    assert!(raw.events.contains(&ClientEvent::RequestAborted {
        request_id: id,
        reason: AbortReason::ConnectionLost(CloseReason::PeerClosed),
    }));
    assert!(
        raw.raw.peer_closed,
        "the client did not answer close_notify"
    );
    assert!(
        raw.raw.close_frame().is_none(),
        "no Close frame after the peer closed"
    );
    assert!(raw.engine.is_finished());

    // Server engine, same thing.
    let mut raw = Raw::<ServerConnection>::welcomed(server_config(true));
    raw.raw.conn.send_close_notify();
    raw.drive();
    assert_eq!(
        closed_once::<ServerConnection>(&raw.events),
        &CloseReason::PeerClosed
    );
    assert!(raw.raw.peer_closed);
    assert!(raw.engine.is_finished());

    // A client that gives up in the middle of the handshake, with close_notify: rustls
    // does not count an unauthenticated close_notify as a clean close.
    let mut raw = Raw::<ServerConnection>::client_vs(server_config(true));
    let client_hello = raw.raw.take_tls();
    raw.engine.handle_input(raw.now, &client_hello);
    raw.raw.conn.send_close_notify();
    let close_notify = raw.raw.take_tls();
    raw.engine.handle_input(raw.now, &close_notify);
    raw.engine.poll_transmit(raw.now, &mut Vec::new());
    collect(&mut raw.engine, &mut raw.events, true);
    assert_eq!(
        raw.events,
        [ServerEvent::Closed(alert_received(
            AlertDescription::CloseNotify
        ))]
    );
    assert!(raw.engine.is_finished());
    assert_eq!(raw.engine.app_bytes_received(), 0);
}

#[test]
fn data_arriving_with_close_notify_is_delivered_before_closed() {
    let mut raw = Raw::<ClientConnection>::welcomed();
    let a = raw.engine.request(1, Bytes::new()).unwrap();
    let b = raw.engine.request(1, Bytes::new()).unwrap();
    raw.drive();
    // One chunk: Response(a), a push, close_notify. b is never answered.
    raw.raw.send(&[response_message(a, b"a"), server_push()]);
    raw.raw.conn.send_close_notify();
    raw.drive();
    let tail: Vec<&ClientEvent> = raw.events.iter().rev().take(4).rev().collect();
    assert_eq!(
        tail,
        [
            &ClientEvent::Response {
                request_id: a,
                payload: Bytes::from_static(b"a")
            },
            &ClientEvent::Push(server_push()),
            &ClientEvent::RequestAborted {
                request_id: b,
                reason: AbortReason::ConnectionLost(CloseReason::PeerClosed)
            },
            &ClientEvent::Closed(CloseReason::PeerClosed),
        ]
    );
    check_g7(&[a, b], &raw.events);

    // A Close frame arriving with close_notify wins over "peer closed".
    let mut raw = Raw::<ServerConnection>::welcomed(server_config(true));
    raw.raw.send(&[Message::Close(Close {
        code: CloseCode::GoingAway,
        reason: Text::from("bye"),
    })]);
    raw.raw.conn.send_close_notify();
    raw.drive();
    assert_eq!(
        closed_once::<ServerConnection>(&raw.events),
        &CloseReason::Remote {
            code: CloseCode::GoingAway,
            reason: Text::from("bye")
        }
    );
}

#[test]
fn bytes_after_close_notify_are_ignored() {
    let junk_after: [&[u8]; 3] = [
        // An application-data record of junk.
        &[
            0x17, 0x03, 0x03, 0x00, 0x10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
        ],
        // A fatal alert.
        &FATAL_HANDSHAKE_FAILURE,
        // Not TLS at all, and an impossible record length.
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    ];
    for junk in junk_after {
        for split in [false, true] {
            let mut raw = Raw::<ClientConnection>::welcomed();
            let id = raw.engine.request(1, Bytes::new()).unwrap();
            raw.drive();
            raw.raw.send(&[response_message(id, b"ok")]);
            raw.raw.conn.send_close_notify();
            let mut chunk = raw.raw.take_tls();
            if split {
                raw.engine.handle_input(raw.now, &chunk);
                raw.engine.handle_input(raw.now, junk);
            } else {
                chunk.extend_from_slice(junk);
                raw.engine.handle_input(raw.now, &chunk);
            }
            raw.drive();
            assert_eq!(
                closed_once::<ClientConnection>(&raw.events),
                &CloseReason::PeerClosed,
                "junk {junk:?}, split {split}"
            );
            check_g7(&[id], &raw.events);
            assert!(raw.events.iter().any(|e| matches!(
                e,
                ClientEvent::Response { request_id, .. } if *request_id == id
            )));
        }
    }
}

// ---------------------------------------------------------------------------------
// Bounds
// ---------------------------------------------------------------------------------

/// A TLS record header: type, version 1.2, `len`.
fn record_header(content_type: u8, len: usize) -> Vec<u8> {
    let len = u16::try_from(len).unwrap();
    let mut v = vec![content_type, 0x03, 0x03];
    v.extend_from_slice(&len.to_be_bytes());
    v
}

fn assert_tls_close(events: &[ServerEvent], what: &str) {
    assert!(
        matches!(
            closed_once::<ServerConnection>(events),
            CloseReason::Tls(TlsError::Rustls(_))
        ),
        "{what}: {events:?}"
    );
}

#[test]
fn records_over_the_bound_are_refused_from_their_header() {
    // Largest ciphertext the engine buffers: MAX_RECORD_LEN - 5 after the header.
    let too_long = MAX_RECORD_LEN - 5 + 1;

    // After the handshake: the header alone is enough to fail.
    let mut pair = Pair::ready(true);
    pair.server
        .handle_input(pair.now, &record_header(0x17, too_long));
    pair.drive();
    assert_tls_close(&pair.server_events, "oversized application record");

    // A record at the bound, full of junk, fed in pieces: a TLS error, no panic.
    let mut pair = Pair::ready(true);
    let mut record = record_header(0x17, MAX_RECORD_LEN - 5);
    record.resize(MAX_RECORD_LEN, 0xa5);
    for piece in record.chunks(1000) {
        pair.server.handle_input(pair.now, piece);
    }
    pair.drive();
    assert_tls_close(&pair.server_events, "junk record at the bound");

    // During the handshake.
    for (what, bytes) in [
        ("oversized handshake record", record_header(0x16, too_long)),
        (
            // A ClientHello announcing 16 MiB.
            "huge handshake message",
            [record_header(0x16, 4), vec![0x01, 0xff, 0xff, 0xff]].concat(),
        ),
    ] {
        let now = Instant::now();
        let mut server = ServerConnection::new(Arc::new(server_config(true)), peer(), now).unwrap();
        let mut events = Vec::new();
        server.handle_input(now, &bytes);
        server.poll_transmit(now, &mut Vec::new());
        collect(&mut server, &mut events, true);
        assert_tls_close(&events, what);
    }

    // A 64 KiB - 1 handshake message of junk, in full records, then more junk: rustls
    // joins it in the engine's buffer, rejects it, and the engine never needs more.
    let now = Instant::now();
    let mut server = ServerConnection::new(Arc::new(server_config(true)), peer(), now).unwrap();
    let mut message = vec![0x01, 0x00, 0xff, 0xff];
    message.resize(4 + 0xffff, 0x5a);
    let mut stream = Vec::new();
    for fragment in message.chunks(16_384) {
        stream.extend(record_header(0x16, fragment.len()));
        stream.extend_from_slice(fragment);
    }
    stream.extend(std::iter::repeat_n(0x16, 200_000));
    let mut events = Vec::new();
    for piece in stream.chunks(7_000) {
        server.handle_input(now, piece);
        server.poll_transmit(now, &mut Vec::new());
        collect(&mut server, &mut events, true);
    }
    assert_tls_close(&events, "64 KiB junk ClientHello");
    assert!(server.is_finished());
}

#[test]
fn a_frame_over_the_limit_on_a_tls_link_is_a_frame_too_large_close_locally() {
    // Raw client against a server accepting 4 KiB frames.
    let mut config = server_config(true);
    config.limits = FrameLimits::new(4096).unwrap();
    let mut raw = Raw::<ServerConnection>::welcomed(config);
    raw.raw.send_bytes(&frame_header(10_000, 0x01));
    raw.drive();
    assert_eq!(
        closed_once::<ServerConnection>(&raw.events),
        &CloseReason::Protocol(ProtocolError::Decode(DecodeError::FrameTooLarge {
            length: 10_000,
            max: 4096
        }))
    );
    assert!(raw.engine.is_finished());

    // Engine pair: the client accepts 4 KiB frames, the server answers with more.
    let mut client = client_config(true);
    client.limits = FrameLimits::new(4096).unwrap();
    // A version 3 client: it does not announce its limit, so the server sends the
    // large result (a version 4 client gets a ResultTooLarge instead, below).
    client.max_version = 3;
    let mut pair = Pair::new(client, server_config(true));
    pair.drive();
    let id = pair.client.request(1, Bytes::new()).unwrap();
    pair.drive();
    assert!(pair.server.respond(id, Ok(Bytes::from(vec![1u8; 5000]))));
    pair.drive();
    let reason = closed_once::<ClientConnection>(&pair.client_events);
    assert!(
        matches!(
            reason,
            CloseReason::Protocol(ProtocolError::Decode(DecodeError::FrameTooLarge {
                max: 4096,
                ..
            }))
        ),
        "{reason:?}"
    );
    check_g7(&[id], &pair.client_events);
}

#[test]
fn a_frame_over_the_limit_on_a_tls_link_is_reported_to_the_peer() {
    // Raw client against a server accepting 4 KiB frames: the client must get
    // Close(FrameTooLarge) and close_notify, as it would in plaintext.
    let mut config = server_config(true);
    config.limits = FrameLimits::new(4096).unwrap();
    for trailing_record in [false, true] {
        let mut raw = Raw::<ServerConnection>::welcomed(config.clone());
        raw.raw.send_bytes(&frame_header(10_000, 0x01));
        if trailing_record {
            // A second record in the same read, behind the offending one.
            raw.raw.send(&[Message::Ping(Ping { nonce: 5 })]);
        }
        raw.drive();
        assert_eq!(
            raw.raw.close_frame().map(|c| c.code),
            Some(CloseCode::FrameTooLarge),
            "trailing record {trailing_record}: raw client received {:?}, rustls error {:?}",
            raw.raw.received,
            raw.raw.error
        );
        assert!(raw.raw.peer_closed);
    }

    // Engine pair: the server must learn why the client left.
    let mut client = client_config(true);
    client.limits = FrameLimits::new(4096).unwrap();
    // A version 3 client: it does not announce its limit, so the server sends the
    // large result (a version 4 client gets a ResultTooLarge instead, below).
    client.max_version = 3;
    let mut pair = Pair::new(client, server_config(true));
    pair.drive();
    let id = pair.client.request(1, Bytes::new()).unwrap();
    pair.drive();
    pair.server.respond(id, Ok(Bytes::from(vec![1u8; 5000])));
    pair.drive();
    assert!(
        matches!(
            pair.server_closed(),
            Some(CloseReason::Remote {
                code: CloseCode::FrameTooLarge,
                ..
            })
        ),
        "{pair:?}"
    );
}

#[test]
fn frame_errors_on_a_plaintext_link_are_reported_to_the_peer() {
    // The plaintext counterpart of the test above: the same decode error, told.
    let mut client = client_config(false);
    client.limits = FrameLimits::new(4096).unwrap();
    // A version 3 client: it does not announce its limit, so the server sends the
    // large result (a version 4 client gets a ResultTooLarge instead, below).
    client.max_version = 3;
    let mut pair = Pair::new(client, server_config(false));
    pair.drive();
    let id = pair.client.request(1, Bytes::new()).unwrap();
    pair.drive();
    pair.server.respond(id, Ok(Bytes::from(vec![1u8; 5000])));
    pair.drive();
    assert!(
        matches!(
            pair.server_closed(),
            Some(CloseReason::Remote {
                code: CloseCode::FrameTooLarge,
                ..
            })
        ),
        "{pair:?}"
    );
}

#[test]
fn a_version_4_client_gets_result_too_large_for_a_result_over_its_limit_and_stays() {
    for tls in [false, true] {
        let mut client = client_config(tls);
        client.limits = FrameLimits::new(4096).unwrap();
        let mut pair = Pair::new(client, server_config(tls));
        pair.drive();
        let big = pair.client.request(1, Bytes::new()).unwrap();
        let small = pair.client.request(1, Bytes::new()).unwrap();
        let failed = pair.client.request(1, Bytes::new()).unwrap();
        pair.drive();
        assert!(pair.server.respond(big, Ok(Bytes::from(vec![1u8; 5000]))));
        // Exactly at the limit: frame size 4096 = type + request id + 4087 bytes.
        assert!(pair.server.respond(small, Ok(Bytes::from(vec![2u8; 4087]))));
        // An error keeps its code; its text is cut to fit any allowed limit.
        assert!(pair.server.respond(
            failed,
            Err((ErrorCode::Internal, Text::from("e".repeat(MAX_TEXT_BYTES))))
        ));
        pair.drive();
        not_closed::<ClientConnection>(&pair.client_events);
        let answers: Vec<_> = pair
            .client_events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::ServerError {
                    request_id, code, ..
                } => Some((*request_id, Err(*code))),
                ClientEvent::Response {
                    request_id,
                    payload,
                } => Some((*request_id, Ok(payload.len()))),
                _ => None,
            })
            .collect();
        assert_eq!(
            answers,
            [
                (big, Err(ErrorCode::ResultTooLarge)),
                (small, Ok(4087)),
                (failed, Err(ErrorCode::Internal))
            ],
            "tls {tls}"
        );
        let cut = pair.client_events.iter().find_map(|e| match e {
            ClientEvent::ServerError {
                request_id,
                message,
                ..
            } if *request_id == failed => Some(message.len()),
            _ => None,
        });
        assert_eq!(cut, Some(4096 - 1 - 8 - 4 - 2));
        check_g7(&[big, small, failed], &pair.client_events);
    }
}

#[test]
fn a_version_4_hello_with_a_frame_limit_below_the_least_is_refused() {
    let mut raw = Raw::<ServerConnection>::client_vs(server_config(true));
    raw.drive();
    let Message::Hello(mut hello) = hello_message() else {
        unreachable!()
    };
    hello.max_frame_size = Some(4095);
    raw.raw.send(&[Message::Hello(hello)]);
    raw.drive();
    assert!(
        matches!(
            closed_once::<ServerConnection>(&raw.events),
            CloseReason::Local { .. }
        ),
        "{:?}",
        raw.events
    );
    let refused = raw.raw.received.iter().find_map(|m| match m {
        Message::Refused(r) => Some(r.clone()),
        _ => None,
    });
    let refused = refused.expect("a Refused");
    assert_eq!(refused.code, RefuseCode::InvalidHello);
    assert!(refused.reason.as_str().contains("4095"), "{refused:?}");
}

// ---------------------------------------------------------------------------------
// Key updates, TLS 1.2
// ---------------------------------------------------------------------------------

#[test]
fn key_updates_from_either_peer_keep_rpc_flowing() {
    // A client that refreshes its keys (and asks the server to) before each request.
    let mut raw = Raw::<ServerConnection>::welcomed(server_config(true));
    for id in 1..=4u64 {
        raw.raw.conn.refresh_traffic_keys().unwrap();
        raw.raw.send(&[request_message(id, b"k")]);
        raw.drive();
        assert!(raw.events.contains(&ServerEvent::Request {
            request_id: id,
            method_id: 1,
            payload: Bytes::from_static(b"k"),
        }));
        assert!(raw.engine.respond(id, Ok(Bytes::from(id.to_string()))));
        raw.drive();
        assert!(
            raw.raw.received.contains(&Message::Response(Response {
                request_id: id,
                payload: Bytes::from(id.to_string()),
            })),
            "round {id}: {:?} / {:?}",
            raw.raw.received,
            raw.raw.error
        );
    }
    assert_eq!(raw.raw.error, None);
    not_closed::<ServerConnection>(&raw.events);

    // A server that refreshes its keys before each response.
    let mut raw = Raw::<ClientConnection>::welcomed();
    let mut issued = Vec::new();
    for round in 0..4u64 {
        let id = raw.engine.request(1, Bytes::new()).unwrap();
        issued.push(id);
        raw.drive();
        raw.raw.conn.refresh_traffic_keys().unwrap();
        raw.raw.send(&[response_message(id, b"r")]);
        raw.drive();
        assert!(
            raw.events.contains(&ClientEvent::Response {
                request_id: id,
                payload: Bytes::from_static(b"r")
            }),
            "round {round}: {:?}",
            raw.events
        );
    }
    check_g7(&issued, &raw.events);
    assert_eq!(raw.raw.error, None);
    not_closed::<ClientConnection>(&raw.events);
    raw.engine.close(CloseCode::Normal, "done");
    raw.drive();
    assert_eq!(
        raw.raw.close_frame().map(|c| c.code),
        Some(CloseCode::Normal)
    );
    assert!(raw.raw.peer_closed);
}

#[test]
fn a_flood_of_key_update_requests_is_a_tls_error_not_a_loop() {
    let mut raw = Raw::<ServerConnection>::welcomed(server_config(true));
    // Key updates asking for an answer, and no application data in between: rustls
    // allows a few, then calls it misbehaviour.
    for _ in 0..64 {
        if raw.raw.conn.refresh_traffic_keys().is_err() {
            break;
        }
        let records = raw.raw.take_tls();
        raw.engine.handle_input(raw.now, &records);
        if raw.engine.is_finished() {
            break;
        }
    }
    raw.drive();
    assert_eq!(
        closed_once::<ServerConnection>(&raw.events),
        &CloseReason::Tls(TlsError::Rustls(rustls::Error::PeerMisbehaved(
            rustls::PeerMisbehaved::TooManyKeyUpdateRequests
        )))
    );
    assert!(raw.engine.is_finished());
}

#[test]
fn a_tls12_only_server_completes_the_handshake_and_rpc() {
    let mut pair = Pair::new(
        client_config(true),
        ServerConfig::new(ServerTransport::Tls(tls12_server_rustls())),
    );
    pair.drive();
    let auth = pair
        .client_events
        .iter()
        .find_map(|e| match e {
            ClientEvent::ServerAuthenticated(a) => Some(a.clone()),
            _ => None,
        })
        .expect("server authentication");
    assert!(
        auth.protocol_version.contains("TLSv1_2"),
        "{}",
        auth.protocol_version
    );
    assert!(auth.verdict.is_verified());
    assert_eq!(pair.client.state(), ClientState::Ready, "{pair:?}");

    // Small and multi-record payloads both ways.
    let big = Bytes::from((0..50_000u32).map(|i| i as u8).collect::<Vec<u8>>());
    let a = pair
        .client
        .request(1, Bytes::from_static(b"small"))
        .unwrap();
    let b = pair.client.request(2, big.clone()).unwrap();
    pair.drive();
    assert_eq!(pair.server_request_ids(), [a, b]);
    assert!(pair.server.respond(b, Ok(big.clone())));
    assert!(pair.server.respond(a, Ok(Bytes::from_static(b"tiny"))));
    pair.drive();
    assert!(pair.client_events.contains(&ClientEvent::Response {
        request_id: a,
        payload: Bytes::from_static(b"tiny")
    }));
    assert!(pair.client_events.contains(&ClientEvent::Response {
        request_id: b,
        payload: big
    }));
    check_g7(&[a, b], &pair.client_events);

    pair.client.close(CloseCode::Normal, "bye");
    pair.drive();
    assert_eq!(
        closed_once::<ServerConnection>(&pair.server_events),
        &CloseReason::Remote {
            code: CloseCode::Normal,
            reason: Text::from("bye")
        }
    );
    closed_once::<ClientConnection>(&pair.client_events);
    assert!(pair.client.is_finished() && pair.server.is_finished());
}

#[test]
fn a_resumed_tls_session_still_reports_the_chain_and_verdict() {
    // A fresh ClientTls has its own session cache: the first connection is full, the
    // next ones resume (TLS 1.3 PSK) and must still be authenticated before the Hello.
    let tls = ClientTls::new(
        load_root_store(&[cert("ca.cert.pem")]).unwrap(),
        "localhost",
    )
    .unwrap();
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let config = ClientConfig::new(ClientTransport::Tls(tls.clone()), "alice", b"pw");
        let mut raw = Raw::<ClientConnection>::server_vs(config);
        raw.drive();
        kinds.push(raw.raw.conn.handshake_kind());
        let auth = raw
            .events
            .iter()
            .find_map(|e| match e {
                ClientEvent::ServerAuthenticated(a) => Some(a.clone()),
                _ => None,
            })
            .expect("server authentication");
        assert!(auth.verdict.is_verified(), "{:?}", auth.verdict);
        assert_eq!(auth.chain.len(), 1);
        assert!(matches!(raw.raw.received.first(), Some(Message::Hello(_))));
        raw.raw.send(&[welcome_message()]);
        raw.drive();
        assert_eq!(raw.engine.state(), ClientState::Ready);
        raw.engine.close(CloseCode::Normal, "x");
        raw.drive();
    }
    assert_eq!(
        kinds,
        [
            Some(rustls::HandshakeKind::Full),
            Some(rustls::HandshakeKind::Resumed),
            Some(rustls::HandshakeKind::Resumed)
        ]
    );
}

#[test]
fn credentials_over_the_protocol_limits_are_refused_up_front() {
    for (user_id, password) in [
        ("u".repeat(MAX_USER_ID_CHARS + 1), b"pw".to_vec()),
        ("alice".to_owned(), vec![b'p'; MAX_PASSWORD_BYTES + 1]),
    ] {
        for tls in [false, true] {
            let client = ClientConfig::new(
                if tls {
                    ClientTransport::Tls(client_tls())
                } else {
                    ClientTransport::Plaintext
                },
                user_id.as_str(),
                &password,
            );
            let now = Instant::now();
            let result = ClientConnection::new(client, now, wall_clock());
            assert!(
                matches!(
                    result,
                    Err(ClientError::InvalidUserId { .. } | ClientError::PasswordTooLong { .. })
                ),
                "credentials over the limits must be refused up front"
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// Lifecycle: Closed exactly once, nothing after it, no timers after it
// ---------------------------------------------------------------------------------

#[test]
fn every_way_of_closing_reports_closed_once_and_disarms_timers() {
    type Scenario = (&'static str, fn(&mut Pair));
    let scenarios: [Scenario; 8] = [
        ("client close", |p| p.client.close(CloseCode::Normal, "x")),
        ("server close", |p| p.server.close(CloseCode::Kicked, "x")),
        ("client transport closed", |p| {
            p.client.handle_transport_closed()
        }),
        ("server transport closed", |p| {
            p.server.handle_transport_closed()
        }),
        ("network dies: keep-alive", |p| {
            p.connected = false;
            for _ in 0..4 {
                p.advance(Duration::from_secs(30));
            }
        }),
        ("both close at once", |p| {
            p.client.close(CloseCode::Normal, "a");
            p.server.close(CloseCode::GoingAway, "b");
        }),
        ("close twice", |p| {
            p.client.close(CloseCode::Normal, "a");
            p.client.close(CloseCode::GoingAway, "b");
            p.client.handle_transport_closed();
        }),
        ("garbage", |p| {
            p.server
                .handle_input(p.now, &[0x17, 0x03, 0x03, 0x00, 0x01, 0])
        }),
    ];
    for tls in [true, false] {
        for (name, act) in scenarios {
            let mut pair = Pair::ready(tls);
            let id = pair.client.request(1, Bytes::new()).unwrap();
            pair.drive();
            act(&mut pair);
            pair.drive();
            // Whatever happened, the network then goes away entirely.
            pair.client.handle_transport_closed();
            pair.server.handle_transport_closed();
            pair.drive();
            closed_once::<ClientConnection>(&pair.client_events);
            closed_once::<ServerConnection>(&pair.server_events);
            check_g7(&[id], &pair.client_events);
            assert_eq!(pair.client.poll_timeout(), None, "{name}");
            assert_eq!(pair.server.poll_timeout(), None, "{name}");
            assert!(
                pair.client.is_finished() && pair.server.is_finished(),
                "{name}"
            );
            assert_eq!(pair.client.state(), ClientState::Closed, "{name}");
            assert_eq!(pair.server.state(), ServerState::Closed, "{name}");
        }
    }
}

#[test]
fn no_event_and_no_byte_follow_closed() {
    for tls in [true, false] {
        let mut pair = Pair::ready(tls);
        let id = pair.client.request(1, Bytes::new()).unwrap();
        pair.drive();
        pair.server.close(CloseCode::GoingAway, "bye");
        pair.drive();
        closed_once::<ClientConnection>(&pair.client_events);
        closed_once::<ServerConnection>(&pair.server_events);
        let counts = (pair.client_events.len(), pair.server_events.len());

        // Poke every entry point of both ends.
        let later = pair.now + Duration::from_secs(3600);
        assert_eq!(
            pair.client.request(1, Bytes::new()),
            Err(ClientError::Closed)
        );
        assert_eq!(
            pair.client.push(PushCommand::ListGroups),
            Err(ClientError::Closed)
        );
        assert_eq!(pair.client.start_batch(), Err(ClientError::Closed));
        assert_eq!(pair.client.commit_batch(true), Err(ClientError::Closed));
        assert_eq!(pair.client.abort_batch(), Err(ClientError::NoBatch));
        assert_eq!(
            pair.client.accept_server(),
            Err(ClientError::NoDecisionPending)
        );
        assert_eq!(
            pair.client.reject_server(),
            Err(ClientError::NoDecisionPending)
        );
        pair.client.close(CloseCode::Normal, "again");
        pair.client
            .handle_input(later, &[0, 0, 0, 1, 0xee, 1, 2, 3]);
        pair.client.handle_timeout(later);
        pair.client.handle_transport_closed();
        pair.server.permit(grant());
        pair.server.refuse(RefuseCode::GoingAway, "late");
        pair.server.respond(id, Ok(Bytes::new()));
        pair.server.send(&server_push());
        pair.server.send_encoded(&encode(&[server_push()]));
        pair.server.close(CloseCode::Normal, "again");
        pair.server
            .handle_input(later, &[0, 0, 0, 1, 0xee, 1, 2, 3]);
        pair.server.handle_timeout(later);
        pair.server.handle_transport_closed();

        let mut out = Vec::new();
        assert_eq!(pair.client.poll_transmit(later, &mut out), 0);
        assert_eq!(pair.server.poll_transmit(later, &mut out), 0);
        assert!(out.is_empty());
        assert_eq!(pair.client.poll_event(), None);
        assert_eq!(pair.server.poll_event(), None);
        pair.drive();
        assert_eq!((pair.client_events.len(), pair.server_events.len()), counts);
        assert_eq!(pair.client.poll_timeout(), None);
        assert_eq!(pair.server.poll_timeout(), None);
        assert_eq!(pair.client.state(), ClientState::Closed);
        assert_eq!(pair.server.state(), ServerState::Closed);
        assert_eq!(pair.client.outstanding_requests(), 0);
    }
}

#[test]
fn a_handshake_timeout_before_tls_is_up_sends_nothing_in_clear() {
    let now = Instant::now();
    let config = client_config(true);
    let limit = config.handshake_timeout;
    let mut client = ClientConnection::new(config, now, wall_clock()).unwrap();
    let mut client_hello = Vec::new();
    client.poll_transmit(now, &mut client_hello);
    assert_eq!(client_hello[0], 0x16);
    assert_eq!(client.poll_timeout(), Some(now + limit));
    client.handle_timeout(now + limit - Duration::from_millis(1));
    assert_eq!(client.poll_event(), None);
    client.handle_timeout(now + limit);
    let mut out = Vec::new();
    client.poll_transmit(now + limit, &mut out);
    assert!(out.is_empty(), "sent {out:?} after giving up");
    let mut events = Vec::new();
    collect(&mut client, &mut events, false);
    assert_eq!(
        events,
        [ClientEvent::Closed(CloseReason::Timeout(
            TimeoutKind::Handshake
        ))]
    );
    assert!(client.is_finished());
    assert_eq!(client.poll_timeout(), None);
}

#[test]
fn undecided_server_authentication_times_out_without_a_hello() {
    let mut config = client_config(true);
    config.server_auth = ServerAuthMode::Application;
    let limit = config.handshake_timeout;
    let mut pair = Pair::new(config, server_config(true));
    pair.drive();
    assert_eq!(pair.client.state(), ClientState::AwaitingServerDecision);
    assert!(
        pair.client.poll_timeout().is_some(),
        "no deadline while undecided"
    );
    pair.advance(limit);
    assert_eq!(
        pair.client_closed(),
        Some(&CloseReason::Timeout(TimeoutKind::Handshake))
    );
    closed_once::<ClientConnection>(&pair.client_events);
    assert_eq!(
        pair.client.accept_server(),
        Err(ClientError::NoDecisionPending)
    );
    pair.drive();
    assert!(!pair
        .server_events
        .iter()
        .any(|e| matches!(e, ServerEvent::Authenticate(_))));
    closed_once::<ServerConnection>(&pair.server_events);
}

#[test]
fn a_client_waiting_for_welcome_gives_up_at_its_deadline() {
    let mut pair = Pair::tls();
    pair.auto_permit = false;
    pair.drive();
    assert_eq!(pair.client.state(), ClientState::HelloSent);
    let deadline = pair.client.poll_timeout().expect("a handshake deadline");
    pair.advance(deadline - pair.now);
    assert_eq!(
        closed_once::<ClientConnection>(&pair.client_events),
        &CloseReason::Timeout(TimeoutKind::Handshake)
    );
    closed_once::<ServerConnection>(&pair.server_events);
    // The late decision changes nothing.
    pair.server.permit(grant());
    pair.drive();
    assert!(!pair
        .client_events
        .iter()
        .any(|e| matches!(e, ClientEvent::Ready(_))));
}

#[test]
fn requests_in_an_open_batch_end_when_the_connection_drops() {
    for tls in [true, false] {
        let mut pair = Pair::ready(tls);
        pair.client.start_batch().unwrap();
        let a = pair.client.request(1, Bytes::new()).unwrap();
        let b = pair.client.request(1, Bytes::new()).unwrap();
        pair.client.handle_transport_closed();
        pair.drive();
        closed_once::<ClientConnection>(&pair.client_events);
        check_g7(&[a, b], &pair.client_events);
        assert_eq!(pair.client.outstanding_requests(), 0);
    }
}

#[test]
fn an_overlong_close_reason_is_clamped_not_a_panic() {
    let mut pair = Pair::ready(false);
    let reason = "x".repeat(MAX_TEXT_BYTES + 100);
    pair.client.close(CloseCode::Normal, reason.as_str());
    pair.drive();
    match pair.server_closed() {
        // Cut so the Close (1 + 2 + 2 + text) fits the least frame limit, 4,096.
        Some(CloseReason::Remote { reason, .. }) => assert_eq!(reason.len(), 4091),
        other => panic!("{other:?}"),
    }

    // The server application's refusal text, likewise.
    let mut pair = Pair::plaintext();
    pair.auto_permit = false;
    pair.drive();
    pair.server
        .refuse(RefuseCode::NotPermitted, "y".repeat(MAX_TEXT_BYTES + 1));
    pair.drive();
    match pair.client_closed() {
        Some(CloseReason::Refused { reason, .. }) => assert_eq!(reason.len(), 4091),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------
// G7 under random disconnects
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Request(u16),
    /// A batch of `n` requests, committed (with server batching or not) or aborted.
    Batch {
        n: u8,
        commit: Option<bool>,
    },
    /// The server answers the `k`-th unanswered request it has seen.
    Answer {
        k: u8,
        ok: bool,
    },
    Push,
    Advance(u8),
    CutNetwork,
    DropTransport {
        client_side: bool,
    },
    ClientClose,
    ServerClose,
    /// The next server transmit reaches the client corrupted.
    Corrupt,
    /// The server sends a Response for a request nobody made.
    Forged,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u16..3000).prop_map(Op::Request),
        2 => (0u8..4, proptest::option::of(any::<bool>()))
            .prop_map(|(n, commit)| Op::Batch { n, commit }),
        6 => (0u8..4, any::<bool>()).prop_map(|(k, ok)| Op::Answer { k, ok }),
        1 => Just(Op::Push),
        2 => (0u8..40).prop_map(Op::Advance),
        1 => Just(Op::CutNetwork),
        1 => any::<bool>().prop_map(|client_side| Op::DropTransport { client_side }),
        1 => Just(Op::ClientClose),
        1 => Just(Op::ServerClose),
        1 => Just(Op::Corrupt),
        1 => Just(Op::Forged),
    ]
}

fn run_g7(tls: bool, ops: &[Op]) {
    let mut pair = Pair::with(tls);
    pair.drive();
    let mut issued = Vec::new();
    let mut answered = Vec::new();
    for op in ops {
        match op {
            Op::Request(len) => {
                if let Ok(id) = pair
                    .client
                    .request(1, Bytes::from(vec![3u8; usize::from(*len)]))
                {
                    issued.push(id);
                }
            }
            Op::Batch { n, commit } => {
                if pair.client.start_batch().is_ok() {
                    for _ in 0..*n {
                        issued.push(pair.client.request(2, Bytes::new()).unwrap());
                    }
                    match commit {
                        Some(server_batching) => {
                            pair.client.commit_batch(*server_batching).unwrap();
                        }
                        None => pair.client.abort_batch().unwrap(),
                    }
                }
            }
            Op::Answer { k, ok } => {
                let pending: Vec<u64> = pair
                    .server_request_ids()
                    .into_iter()
                    .filter(|id| !answered.contains(id))
                    .collect();
                if let Some(&id) = pending.get(usize::from(*k)) {
                    answered.push(id);
                    let result = if *ok {
                        Ok(Bytes::from(id.to_string()))
                    } else {
                        Err((ErrorCode::Internal, Text::from("no")))
                    };
                    pair.server.respond(id, result);
                }
            }
            Op::Push => {
                let _ = pair.client.push(PushCommand::Subscribe(vec![GroupId(1)]));
                pair.server.send(&server_push());
            }
            Op::Advance(secs) => pair.advance(Duration::from_secs(u64::from(*secs))),
            Op::CutNetwork => pair.connected = false,
            Op::DropTransport { client_side } => {
                pair.connected = false;
                if *client_side {
                    pair.client.handle_transport_closed();
                } else {
                    pair.server.handle_transport_closed();
                }
            }
            Op::ClientClose => pair.client.close(CloseCode::Normal, "bye"),
            Op::ServerClose => pair.server.close(CloseCode::GoingAway, "bye"),
            Op::Corrupt => {
                pair.server.send(&server_push());
                let mut buf = Vec::new();
                pair.server.poll_transmit(pair.now, &mut buf);
                if pair.connected && !buf.is_empty() {
                    if tls {
                        *buf.last_mut().unwrap() ^= 0x40;
                    } else {
                        buf.extend_from_slice(&[0, 0, 0, 1, 0xee]);
                    }
                    pair.client.handle_input(pair.now, &buf);
                }
            }
            Op::Forged => pair.server.send(&response_message(1_000_000, b"?")),
        }
        pair.drive();
    }
    // The end: whatever is left, the transports go away.
    pair.connected = false;
    pair.client.handle_transport_closed();
    pair.server.handle_transport_closed();
    pair.drive();

    check_g7(&issued, &pair.client_events);
    closed_once::<ClientConnection>(&pair.client_events);
    closed_once::<ServerConnection>(&pair.server_events);
    assert_eq!(pair.client.outstanding_requests(), 0);
    assert_eq!(pair.client.poll_timeout(), None);
    assert_eq!(pair.server.poll_timeout(), None);
    assert!(pair.client.is_finished() && pair.server.is_finished());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn every_request_ends_exactly_once_under_random_disconnects(
        tls in any::<bool>(),
        ops in proptest::collection::vec(arb_op(), 0..24),
    ) {
        run_g7(tls, &ops);
    }
}

// ---------------------------------------------------------------------------------
// Hostile frames into the engines (plaintext, so every byte reaches the decoder)
// ---------------------------------------------------------------------------------

fn client_frames() -> Vec<Vec<u8>> {
    [
        hello_message(),
        Message::Ping(Ping { nonce: 1 }),
        Message::Pong(Pong { nonce: 1 }),
        request_message(1, b"a"),
        request_message(2, b"b"),
        Message::BatchBegin(BatchBegin),
        Message::BatchCommit(BatchCommit {
            server_batching: true,
        }),
        Message::Subscribe(Subscribe {
            command_id: 1,
            groups: vec![GroupId(1)],
        }),
        Message::Close(Close {
            code: CloseCode::Normal,
            reason: Text::from("x"),
        }),
        welcome_message(),
        response_message(1, b"r"),
    ]
    .iter()
    .map(|m| encode(std::slice::from_ref(m)))
    .collect()
}

fn server_frames() -> Vec<Vec<u8>> {
    [
        welcome_message(),
        response_message(1, b"r"),
        response_message(2, b"r"),
        Message::ServerError(ServerError {
            request_id: 1,
            code: ErrorCode::Internal,
            message: Text::from("e"),
        }),
        Message::Ping(Ping { nonce: 2 }),
        server_push(),
        Message::Close(Close {
            code: CloseCode::GoingAway,
            reason: Text::from("x"),
        }),
        hello_message(),
    ]
    .iter()
    .map(|m| encode(std::slice::from_ref(m)))
    .collect()
}

fn arb_chunk(valid: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => proptest::sample::select(valid),
        // A well-framed message of any type with a junk body.
        2 => (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..24)).prop_map(
            |(kind, body)| {
                let mut v = frame_header(u32::try_from(body.len() + 1).unwrap(), kind);
                v.extend(body);
                v
            }
        ),
        1 => proptest::collection::vec(any::<u8>(), 1..12),
    ]
}

/// Feeds `chunks` to a plaintext engine, cut every `cut` bytes, with `act` run
/// between inputs; then EOF. Checks the lifecycle invariants.
fn feed_hostile<E: Engine>(
    engine: &mut E,
    now: Instant,
    chunks: &[Vec<u8>],
    cut: usize,
    mut act: impl FnMut(&mut E),
) -> Vec<E::Event> {
    let mut events = Vec::new();
    let stream = chunks.concat();
    for piece in stream.chunks(cut) {
        engine.feed(now, piece);
        engine.drain(now, &mut Vec::new());
        collect(engine, &mut events, true);
        act(engine);
        engine.drain(now, &mut Vec::new());
        collect(engine, &mut events, true);
    }
    engine.eof();
    engine.drain(now, &mut Vec::new());
    collect(engine, &mut events, true);
    closed_once::<E>(&events);
    assert_eq!(engine.timer(), None);
    events
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn hostile_frames_never_panic_the_server_and_it_closes_once(
        chunks in proptest::collection::vec(arb_chunk(client_frames()), 0..16),
        cut in 1usize..64,
    ) {
        let now = Instant::now();
        let mut server =
            ServerConnection::new(Arc::new(server_config(false)), peer(), now).unwrap();
        let events = feed_hostile(&mut server, now, &chunks, cut, |s| {
            // Answer whatever was asked, out of order.
            for id in [2, 1] {
                s.respond(id, Ok(Bytes::new()));
            }
        });
        prop_assert!(server.is_finished());
        prop_assert_eq!(
            events.iter().filter(|e| matches!(e, ServerEvent::Authenticate(_))).count()
                > 1,
            false
        );
    }

    #[test]
    fn hostile_frames_never_panic_the_client_and_requests_end_once(
        chunks in proptest::collection::vec(arb_chunk(server_frames()), 0..16),
        cut in 1usize..64,
    ) {
        let now = Instant::now();
        let mut client = ClientConnection::new(client_config(false), now, wall_clock()).unwrap();
        let mut issued = Vec::new();
        let events = feed_hostile(&mut client, now, &chunks, cut, |c| {
            if let Ok(id) = c.request(1, Bytes::new()) {
                issued.push(id);
            }
        });
        check_g7(&issued, &events);
        prop_assert_eq!(client.outstanding_requests(), 0);
        prop_assert!(client.is_finished());
    }
}

// ---------------------------------------------------------------------------------
// One flipped byte anywhere in a TLS conversation, handshake included
// ---------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn a_flipped_byte_anywhere_ends_in_one_closed_per_end_and_no_panic(
        from_client in any::<bool>(),
        nth in 0usize..6,
        offset in any::<usize>(),
        mask in any::<u8>(),
    ) {
        let mut pair = Pair::tls();
        pair.tamper = Some((from_client, nth, offset, mask));
        pair.drive();
        let mut issued = Vec::new();
        for _ in 0..3 {
            if let Ok(id) = pair.client.request(1, Bytes::from_static(b"q")) {
                issued.push(id);
            }
            pair.drive();
            for id in pair.server_request_ids() {
                pair.server.respond(id, Ok(Bytes::from_static(b"r")));
            }
            pair.drive();
        }
        pair.client.close(CloseCode::Normal, "done");
        pair.drive();
        pair.client.handle_transport_closed();
        pair.server.handle_transport_closed();
        pair.drive();
        closed_once::<ClientConnection>(&pair.client_events);
        closed_once::<ServerConnection>(&pair.server_events);
        check_g7(&issued, &pair.client_events);
        prop_assert!(pair.client.is_finished() && pair.server.is_finished());
    }
}
