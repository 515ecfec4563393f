//! Compressed payloads (protocol version 3, `PROTOCOL.md` section 3.1) through the
//! engines, in memory: client engines wired to a [`Node`]'s connections through byte
//! buffers, every frame each way recorded so the tests can see which form travelled.
//!
//! Covered: a compressed publication reaches receivers that opted in (compressed,
//! untouched) and receivers that did not (plain), byte-identical for both; user
//! messages likewise; the hooks see the plain payload; the client's threshold and its
//! refusal to send what does not shrink; a resume on a connection with the other
//! setting gets its replay in the new form; a declared size over the limit (a bomb)
//! is refused with PayloadTooLarge and the connection stays; corrupt data closes the
//! publisher's connection and nothing after it runs; a compressed frame on a version 2
//! connection is a protocol error, in both directions; mixed versions interoperate;
//! the client refuses compressed frames it did not ask for, bombs and corrupt data.

mod common;

use bytes::{Bytes, BytesMut};
use pushwire_engine::client::{
    ClientConfig, ClientConnection, ClientEvent, ClientState, ClientTransport, CompressionConfig,
    PushCommand,
};
use pushwire_engine::hub::{HookContext, HubConfig, PushHooks, Verdict};
use pushwire_engine::node::{ConnectionEvent, Node, NodeConfig, NodeConnection, NodeStats};
use pushwire_engine::server::{ServerConfig, ServerTransport};
use pushwire_engine::{CloseReason, ProtocolError};
use pushwire_protocol::{
    compress, CloseCode, Compression, CompressionAlgorithm, CompressionError, FrameDecoder,
    FrameLimits, GroupId, Message, Publish, RejectCode, ResumeRequest, ResumeToken, Sender, Text,
    Welcome, COMPRESSED_TYPE_BIT,
};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

// --- Harness ---------------------------------------------------------------------

/// Hooks that record every payload they are shown.
#[derive(Clone, Default)]
struct Recording(Arc<Mutex<Vec<Bytes>>>);

impl PushHooks for Recording {
    fn on_publish(&mut self, _: &HookContext<'_>, _: &[GroupId], payload: &Bytes) -> Verdict {
        self.0.lock().unwrap().push(payload.clone());
        Verdict::Allow
    }

    fn on_user_message(&mut self, _: &HookContext<'_>, _: &str, payload: &Bytes) -> Verdict {
        self.0.lock().unwrap().push(payload.clone());
        Verdict::Allow
    }
}

struct Pair {
    client: ClientConnection,
    conn: NodeConnection,
    events: Vec<ClientEvent>,
    /// Every frame the server sent this client: (type byte, message).
    to_client: Vec<(u8, Message)>,
    to_client_decoder: FrameDecoder,
    /// Every frame this client sent the server.
    to_server: Vec<(u8, Message)>,
    to_server_decoder: FrameDecoder,
    /// The transport is up.
    up: bool,
    told_node: bool,
}

impl Pair {
    fn published(&self) -> Vec<Bytes> {
        self.events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Push(Message::Published(p)) => {
                    assert_eq!(p.compression, None, "the application sees plain payloads");
                    Some(p.payload.clone())
                }
                _ => None,
            })
            .collect()
    }

    fn user_messages(&self) -> Vec<Bytes> {
        self.events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Push(Message::UserMessage(m)) => {
                    assert_eq!(m.compression, None, "the application sees plain payloads");
                    Some(m.payload.clone())
                }
                _ => None,
            })
            .collect()
    }

    fn rejections(&self) -> Vec<(RejectCode, String)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Push(Message::PushRejected(r)) => {
                    Some((r.code, r.reason.as_str().to_owned()))
                }
                _ => None,
            })
            .collect()
    }

    fn closed(&self) -> Option<&CloseReason> {
        self.events.iter().find_map(|e| match e {
            ClientEvent::Closed(r) => Some(r),
            _ => None,
        })
    }

    /// Type bytes of the payload frames the server sent (Published, UserMessage).
    fn payload_frames_in(&self) -> Vec<u8> {
        payload_frames(&self.to_client)
    }

    /// Type bytes of the payload frames the client sent (Publish, SendUserMessage).
    fn payload_frames_out(&self) -> Vec<u8> {
        payload_frames(&self.to_server)
    }
}

fn payload_frames(frames: &[(u8, Message)]) -> Vec<u8> {
    frames
        .iter()
        .filter(|(_, m)| m.kind().allows_compression())
        .map(|(byte, _)| *byte)
        .collect()
}

/// Decodes every complete frame of `bytes` into `into`, with its type byte.
fn record(decoder: &mut FrameDecoder, mut bytes: &[u8], into: &mut Vec<(u8, Message)>) {
    while !bytes.is_empty() {
        let taken = decoder.feed(bytes);
        bytes = &bytes[taken..];
        while let Some(m) = decoder
            .next_message()
            .expect("the engines send valid frames")
        {
            into.push((m.type_byte(), m));
        }
        assert!(taken > 0 || bytes.is_empty());
    }
}

struct World {
    now: Instant,
    node: Node<Recording>,
    hooks: Recording,
    pairs: Vec<Pair>,
    tokens: u8,
}

/// Groups 1 and 2, a 64 KiB payload limit, resumable sessions.
fn node_config() -> NodeConfig {
    let mut config = NodeConfig::new(ServerConfig::new(ServerTransport::Plaintext));
    config.hub = HubConfig {
        max_payload_bytes: 64 * 1024,
        ..HubConfig::default()
    };
    config
}

impl World {
    fn new(config: NodeConfig) -> Self {
        let hooks = Recording::default();
        let mut node = Node::new(config, hooks.clone()).unwrap();
        for g in 1..=2 {
            node.add_group(GroupId(g), format!("group {g}")).unwrap();
        }
        Self {
            now: Instant::now(),
            node,
            hooks,
            pairs: Vec::new(),
            tokens: 0,
        }
    }

    /// A client that accepts compressed payloads and compresses what it sends.
    fn compressing(user: &str) -> ClientConfig {
        let mut config = ClientConfig::new(ClientTransport::Plaintext, user, b"pw");
        config.options.compression = true;
        config.compression = CompressionConfig {
            enabled: true,
            ..CompressionConfig::default()
        };
        config
    }

    /// A client with the defaults: it neither accepts nor sends compressed payloads.
    fn plain(user: &str) -> ClientConfig {
        ClientConfig::new(ClientTransport::Plaintext, user, b"pw")
    }

    fn connect(&mut self, config: ClientConfig) -> usize {
        let peer = format!("127.0.0.1:{}", 40_000 + self.pairs.len())
            .parse()
            .unwrap();
        let conn = self
            .node
            .connection(peer, self.now, Waker::noop().clone())
            .unwrap();
        let client = ClientConnection::new(config, self.now, common::wall_clock()).unwrap();
        self.pairs.push(Pair {
            client,
            conn,
            events: Vec::new(),
            to_client: Vec::new(),
            to_client_decoder: FrameDecoder::new(FrameLimits::default()),
            to_server: Vec::new(),
            to_server_decoder: FrameDecoder::new(FrameLimits::default()),
            up: true,
            told_node: false,
        });
        self.step();
        let i = self.pairs.len() - 1;
        assert_eq!(self.pairs[i].client.state(), ClientState::Ready);
        i
    }

    /// Connects and subscribes to group 1.
    fn join(&mut self, config: ClientConfig) -> usize {
        let i = self.connect(config);
        self.pairs[i]
            .client
            .push(PushCommand::Subscribe(vec![GroupId(1)]))
            .unwrap();
        self.step();
        i
    }

    fn publish(&mut self, i: usize, payload: &[u8]) {
        self.pairs[i]
            .client
            .publish(&[GroupId(1)], payload)
            .unwrap();
        self.step();
    }

    /// Sends `messages` to the server as if `i`'s client had (raw frames, after what
    /// the client engine queued).
    fn inject(&mut self, i: usize, messages: &[Message]) {
        self.step();
        let mut wire = BytesMut::new();
        for m in messages {
            m.encode(&mut wire);
        }
        let now = self.now;
        self.pairs[i].conn.handle_input(now, &wire);
        self.step();
    }

    fn cut(&mut self, i: usize) {
        let p = &mut self.pairs[i];
        p.up = false;
        p.conn.handle_transport_closed();
        p.client.handle_transport_closed();
        self.step();
    }

    fn step(&mut self) {
        for _ in 0..1000 {
            let mut progress = false;
            for i in 0..self.pairs.len() {
                progress |= self.step_pair(i);
            }
            if !progress {
                return;
            }
        }
        panic!("the world did not settle");
    }

    fn step_pair(&mut self, i: usize) -> bool {
        let now = self.now;
        let (node, tokens, p) = (&mut self.node, &mut self.tokens, &mut self.pairs[i]);
        let mut progress = false;
        let mut buf = Vec::new();
        if p.client.poll_transmit(now, &mut buf) > 0 && p.up {
            progress = true;
            record(&mut p.to_server_decoder, &buf, &mut p.to_server);
            p.conn.handle_input(now, &buf);
        }
        while let Some(event) = p.conn.poll_event() {
            progress = true;
            match event {
                ConnectionEvent::Authenticate(request) => {
                    *tokens += 1;
                    node.handle_hello(now, &mut p.conn, request, ResumeToken([*tokens; 16]));
                }
                ConnectionEvent::Request { request_id, .. } => {
                    p.conn.respond(request_id, Ok(Bytes::new()));
                }
                _ => {}
            }
        }
        if p.conn.wants_node() {
            node.handle_connection(now, &mut p.conn);
            progress = true;
        }
        let mut buf = Vec::new();
        if p.conn.poll_transmit(now, &mut buf) > 0 && p.up {
            progress = true;
            record(&mut p.to_client_decoder, &buf, &mut p.to_client);
            p.client.handle_input(now, &buf);
        }
        while let Some(event) = p.client.poll_event() {
            p.events.push(event);
            progress = true;
        }
        if p.up && p.client.is_finished() && !p.conn.is_finished() {
            p.conn.handle_transport_closed();
            progress = true;
        }
        if p.up && p.conn.is_finished() && !p.client.is_finished() {
            p.client.handle_transport_closed();
            progress = true;
        }
        if p.conn.is_finished() && !p.told_node {
            p.told_node = true;
            node.handle_connection_closed(now, &mut p.conn);
            progress = true;
        }
        progress
    }

    fn stats(&self) -> NodeStats {
        *self.node.stats()
    }
}

/// A text payload of `len` bytes that compresses well (as chat and JSON do).
fn text(len: usize) -> Vec<u8> {
    let words = [
        "the ",
        "server ",
        "forwards ",
        "compressed ",
        "bytes ",
        "untouched ",
        "to ",
        "every ",
        "receiver ",
        "that ",
        "asked ",
        "for ",
        "them. ",
    ];
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0usize;
    while out.len() < len {
        out.extend_from_slice(words[(i * 7 + i / 13) % words.len()].as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// Bytes that do not compress (a fixed xorshift sequence).
fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

const PUBLISH_COMPRESSED: u8 = 0x22 | COMPRESSED_TYPE_BIT;
const PUBLISHED: u8 = 0x32;
const PUBLISHED_COMPRESSED: u8 = 0x32 | COMPRESSED_TYPE_BIT;
const USER_MESSAGE: u8 = 0x33;
const USER_MESSAGE_COMPRESSED: u8 = 0x33 | COMPRESSED_TYPE_BIT;

fn lz4(original_len: u32) -> Option<Compression> {
    Some(Compression {
        algorithm: CompressionAlgorithm::Lz4Block,
        original_len,
    })
}

// --- Delivery ----------------------------------------------------------------------

#[test]
fn a_compressed_publication_reaches_opted_in_and_plain_receivers_byte_identical() {
    let mut w = World::new(node_config());
    let alice = w.join(World::compressing("alice"));
    let bob = w.join(World::compressing("bob"));
    let carol = w.join(World::plain("carol"));
    let payload = text(4096);
    w.publish(alice, &payload);

    assert_eq!(w.pairs[alice].payload_frames_out(), [PUBLISH_COMPRESSED]);
    // The echo and bob's copy travel compressed; carol did not ask, so hers is plain.
    assert_eq!(w.pairs[alice].payload_frames_in(), [PUBLISHED_COMPRESSED]);
    assert_eq!(w.pairs[bob].payload_frames_in(), [PUBLISHED_COMPRESSED]);
    assert_eq!(w.pairs[carol].payload_frames_in(), [PUBLISHED]);
    for i in [alice, bob, carol] {
        assert_eq!(w.pairs[i].published(), [Bytes::from(payload.clone())]);
    }
    // The server forwarded the publisher's bytes untouched.
    let (Message::Publish(sent), Message::Published(got)) = (
        &w.pairs[alice].to_server.last().unwrap().1,
        &w.pairs[bob].to_client.last().unwrap().1,
    ) else {
        panic!("a Publish and a Published");
    };
    assert_eq!(
        (sent.compression, &sent.payload),
        (got.compression, &got.payload)
    );
    assert!(sent.payload.len() * 4 < payload.len(), "text compresses");
    // The hook saw the plain payload, once.
    assert_eq!(*w.hooks.0.lock().unwrap(), [Bytes::from(payload.clone())]);

    let stats = w.stats();
    assert_eq!(stats.payloads_decompressed, 1);
    assert_eq!(stats.bytes_decompressed, payload.len() as u64);
    assert_eq!(stats.deliveries_compressed, 2);
    assert_eq!(stats.deliveries_decompressed, 1);
    assert_eq!(
        stats.bytes_decompressed_for_receivers,
        (payload.len() - 5 - sent.payload.len()) as u64
    );
}

#[test]
fn compressed_user_messages_reach_every_connection_of_the_user_in_its_form() {
    let mut w = World::new(node_config());
    let alice = w.connect(World::compressing("alice"));
    let bob_packed = w.connect(World::compressing("bob"));
    let bob_plain = w.connect(World::plain("BOB"));
    let payload = text(2000);
    w.pairs[alice]
        .client
        .push(PushCommand::SendUserMessage {
            receiver: Text::from("Bob"),
            payload: Bytes::from(payload.clone()),
        })
        .unwrap();
    w.step();
    assert_eq!(
        payload_frames(&w.pairs[alice].to_server),
        [0x23 | COMPRESSED_TYPE_BIT]
    );
    assert_eq!(
        w.pairs[bob_packed].payload_frames_in(),
        [USER_MESSAGE_COMPRESSED]
    );
    assert_eq!(w.pairs[bob_plain].payload_frames_in(), [USER_MESSAGE]);
    assert_eq!(
        w.pairs[alice].payload_frames_in(),
        [USER_MESSAGE_COMPRESSED],
        "the echo"
    );
    for i in [alice, bob_packed, bob_plain] {
        assert_eq!(w.pairs[i].user_messages(), [Bytes::from(payload.clone())]);
    }
    let delivered = w.pairs[alice].events.iter().any(
        |e| matches!(e, ClientEvent::Push(Message::UserMessageDelivered(d)) if d.connections == 2),
    );
    assert!(delivered, "both of bob's connections were reached");
    assert_eq!(*w.hooks.0.lock().unwrap(), [Bytes::from(payload)]);
}

#[test]
fn the_client_compresses_only_from_its_threshold_and_only_what_shrinks() {
    let mut w = World::new(node_config());
    let alice = w.join(World::compressing("alice"));
    let bob = w.join(World::compressing("bob"));
    let small = text(511);
    let at_threshold = text(512);
    let incompressible = noise(4096);
    w.publish(alice, &small);
    w.publish(alice, &at_threshold);
    w.publish(alice, &incompressible);
    assert_eq!(
        w.pairs[alice].payload_frames_out(),
        [0x22, PUBLISH_COMPRESSED, 0x22]
    );
    assert_eq!(
        w.pairs[bob].payload_frames_in(),
        [PUBLISHED, PUBLISHED_COMPRESSED, PUBLISHED]
    );
    assert_eq!(
        w.pairs[bob].published(),
        [small, at_threshold, incompressible].map(Bytes::from)
    );
    // And through `push`, the same rules.
    w.pairs[alice]
        .client
        .push(PushCommand::Publish {
            groups: vec![GroupId(1)],
            payload: Bytes::from(text(5000)),
        })
        .unwrap();
    w.step();
    assert_eq!(
        w.pairs[alice].payload_frames_out().last(),
        Some(&PUBLISH_COMPRESSED)
    );
    assert_eq!(w.pairs[bob].published().last().unwrap(), &text(5000));
}

#[test]
fn a_client_with_compression_off_sends_plain_even_when_it_accepts_compressed() {
    let mut w = World::new(node_config());
    let mut config = World::plain("alice");
    config.options.compression = true;
    let alice = w.join(config);
    let bob = w.join(World::compressing("bob"));
    w.publish(alice, &text(8000));
    w.publish(bob, &text(8000));
    assert_eq!(w.pairs[alice].payload_frames_out(), [0x22]);
    assert_eq!(
        w.pairs[alice].payload_frames_in(),
        [PUBLISHED, PUBLISHED_COMPRESSED]
    );
    assert_eq!(w.pairs[alice].published(), [text(8000), text(8000)]);
}

// --- Resume ------------------------------------------------------------------------

/// Bob (compressing when `before`) misses a compressed publication while detached,
/// then resumes with compression `after`: his replay comes in the form he asks now.
fn resume_across_a_change(before: bool, after: bool) {
    let mut w = World::new(node_config());
    let alice = w.join(World::compressing("alice"));
    let config = |accepts: bool| {
        let mut c = World::plain("bob");
        c.options.compression = accepts;
        c
    };
    let bob = w.join(config(before));
    w.publish(alice, &text(3000));
    let resume = ResumeRequest {
        token: w.pairs[bob].client.welcome().unwrap().resume_token,
        last_seq: w.pairs[bob].client.last_seq(),
    };
    w.cut(bob);
    w.publish(alice, &text(6000));
    w.publish(alice, &text(200));
    let mut again = config(after);
    again.resume = Some(resume);
    let bob2 = w.connect(again);
    assert!(w.pairs[bob2].client.welcome().unwrap().resumed);
    let form = if after {
        PUBLISHED_COMPRESSED
    } else {
        PUBLISHED
    };
    assert_eq!(w.pairs[bob2].payload_frames_in(), [form, PUBLISHED]);
    assert_eq!(w.pairs[bob2].published(), [text(6000), text(200)]);
}

#[test]
fn a_session_resumed_without_compression_gets_its_replay_plain() {
    resume_across_a_change(true, false);
}

#[test]
fn a_session_resumed_with_compression_gets_its_replay_compressed() {
    resume_across_a_change(false, true);
}

// --- Hostile publishers -------------------------------------------------------------

#[test]
fn a_bomb_is_refused_with_payload_too_large_and_the_connection_stays() {
    let mut w = World::new(node_config());
    let alice = w.join(World::compressing("alice"));
    let bob = w.join(World::compressing("bob"));
    // 16 MiB of zeros: about 64 KiB compressed, within the frame limit, far over
    // the 64 KiB payload limit once decompressed.
    let bomb = compress(CompressionAlgorithm::Lz4Block, &vec![0u8; 16 << 20]).unwrap();
    assert!(bomb.data.len() < 100_000);
    // And one that lies: tiny data claiming 4 GiB.
    w.inject(
        alice,
        &[
            Message::Publish(Publish {
                command_id: 900,
                groups: vec![GroupId(1)],
                payload: bomb.data.clone(),
                compression: Some(bomb.compression),
            }),
            Message::Publish(Publish {
                command_id: 901,
                groups: vec![GroupId(1)],
                payload: Bytes::from_static(&[0x1f, 0, 1, 0, 0xff, 0xff]),
                compression: lz4(u32::MAX),
            }),
        ],
    );
    let rejections = w.pairs[alice].rejections();
    assert_eq!(rejections.len(), 2, "{rejections:?}");
    for (code, reason) in &rejections {
        assert_eq!(*code, RejectCode::PayloadTooLarge);
        assert!(reason.contains("decompress to"), "{reason}");
        assert!(reason.contains("65536"), "{reason}");
    }
    assert!(rejections[0].1.contains(&(16 << 20).to_string()));
    assert!(w.pairs[bob].published().is_empty());
    assert_eq!(
        w.stats().payloads_decompressed,
        0,
        "nothing was decompressed"
    );
    // The connection goes on.
    assert_eq!(w.pairs[alice].client.state(), ClientState::Ready);
    w.publish(alice, &text(1000));
    assert_eq!(w.pairs[bob].published(), [text(1000)]);
}

#[test]
fn corrupt_compressed_data_closes_the_publishers_connection_and_nothing_after_it_runs() {
    let mut w = World::new(node_config());
    let alice = w.join(World::compressing("alice"));
    let bob = w.join(World::compressing("bob"));
    let good = compress(CompressionAlgorithm::Lz4Block, &text(1000)).unwrap();
    let publish = |command_id, compression, payload: &Bytes| {
        Message::Publish(Publish {
            command_id,
            groups: vec![GroupId(1)],
            payload: payload.clone(),
            compression,
        })
    };
    w.inject(
        alice,
        &[
            // Runs: it came before the bad one.
            publish(1, Some(good.compression), &good.data),
            // Declares one byte more than the data holds.
            publish(2, lz4(1001), &good.data),
            // Never runs.
            publish(3, Some(good.compression), &good.data),
        ],
    );
    assert_eq!(w.pairs[bob].published(), [text(1000)]);
    let Some(CloseReason::Remote { code, reason }) = w.pairs[alice].closed() else {
        panic!("closed by the server: {:?}", w.pairs[alice].closed());
    };
    assert_eq!(*code, CloseCode::ProtocolError);
    assert!(
        reason.as_str().contains("corrupt LZ4 block payload"),
        "{reason}"
    );
    assert!(reason.as_str().contains("1001"), "{reason}");
}

#[test]
fn a_compressed_frame_on_a_version_2_connection_is_a_protocol_error() {
    let mut w = World::new(node_config());
    let mut old = World::compressing("alice");
    old.max_version = 2;
    let alice = w.join(old);
    assert_eq!(w.pairs[alice].client.welcome().unwrap().version, 2);
    let good = compress(CompressionAlgorithm::Lz4Block, &text(1000)).unwrap();
    w.inject(
        alice,
        &[Message::Publish(Publish {
            command_id: 1,
            groups: vec![GroupId(1)],
            payload: good.data,
            compression: Some(good.compression),
        })],
    );
    let Some(CloseReason::Remote { code, reason }) = w.pairs[alice].closed() else {
        panic!("closed by the server: {:?}", w.pairs[alice].closed());
    };
    assert_eq!(*code, CloseCode::ProtocolError);
    assert_eq!(
        reason.as_str(),
        "protocol error: unexpected compressed Publish on a connection of protocol version 1 or 2"
    );
}

// --- Mixed versions -------------------------------------------------------------------

#[test]
fn version_2_clients_and_servers_interoperate_with_compression_configured() {
    // A version 2 client that would compress and accept: it sends plain (the server
    // could not take compressed frames) and gets plain.
    let mut w = World::new(node_config());
    let alice = w.join(World::compressing("alice"));
    let mut old = World::compressing("old");
    old.max_version = 2;
    let old = w.join(old);
    w.publish(alice, &text(4000));
    w.publish(old, &text(4000));
    assert_eq!(w.pairs[old].payload_frames_out(), [0x22]);
    assert_eq!(w.pairs[old].payload_frames_in(), [PUBLISHED, PUBLISHED]);
    assert_eq!(w.pairs[old].published(), [text(4000), text(4000)]);
    assert_eq!(
        w.pairs[alice].payload_frames_in(),
        [PUBLISHED_COMPRESSED, PUBLISHED]
    );
    assert_eq!(w.pairs[alice].published(), [text(4000), text(4000)]);

    // A version 2 server: compressing clients send and get plain.
    let mut config = node_config();
    let mut server = ServerConfig::new(ServerTransport::Plaintext);
    server.max_version = 2;
    config.server = Arc::new(server);
    let mut w = World::new(config);
    let alice = w.join(World::compressing("alice"));
    let bob = w.join(World::compressing("bob"));
    assert_eq!(w.pairs[alice].client.welcome().unwrap().version, 2);
    w.publish(alice, &text(4000));
    assert_eq!(w.pairs[alice].payload_frames_out(), [0x22]);
    assert_eq!(w.pairs[bob].payload_frames_in(), [PUBLISHED]);
    assert_eq!(w.pairs[bob].published(), [text(4000)]);
    assert_eq!(w.stats().payloads_decompressed, 0);
}

// --- The client receiving ------------------------------------------------------------

/// A plaintext client engine talking to a scripted server: the Welcome of `version`,
/// then `frames`. Returns the events and the frames the client sent.
fn scripted(config: ClientConfig, version: u16, frames: &[Message]) -> Vec<ClientEvent> {
    let now = Instant::now();
    let mut client = ClientConnection::new(config, now, common::wall_clock()).unwrap();
    let mut out = Vec::new();
    client.poll_transmit(now, &mut out);
    let mut wire = BytesMut::new();
    Message::Welcome(Welcome {
        version,
        session_id: 1,
        resume_token: ResumeToken([1; 16]),
        resumed: false,
        max_frame_size: 1 << 20,
        ping_interval_ms: 0,
        session_timeout_ms: 0,
        replay_capacity: 0,
        idle_timeout_ms: 0,
    })
    .encode(&mut wire);
    for m in frames {
        m.encode(&mut wire);
    }
    client.handle_input(now, &wire);
    let mut events = Vec::new();
    while let Some(e) = client.poll_event() {
        events.push(e);
    }
    client.poll_transmit(now + Duration::from_millis(1), &mut out);
    while let Some(e) = client.poll_event() {
        events.push(e);
    }
    events
}

fn compressed_published(seq: u64, payload: Bytes, compression: Option<Compression>) -> Message {
    Message::Published(pushwire_protocol::Published {
        seq,
        sender: Sender::Server,
        groups: vec![GroupId(1)],
        payload,
        compression,
    })
}

fn protocol_error(events: &[ClientEvent]) -> ProtocolError {
    match events.last() {
        Some(ClientEvent::Closed(CloseReason::Protocol(e))) => e.clone(),
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

#[test]
fn the_client_decompresses_what_it_asked_for_and_refuses_the_rest() {
    let payload = text(3000);
    let good = compress(CompressionAlgorithm::Lz4Block, &payload).unwrap();
    let frame = compressed_published(1, good.data.clone(), Some(good.compression));
    let mut accepting = World::plain("alice");
    accepting.options.compression = true;

    // Asked for, on version 3: the application gets the plain payload.
    let events = scripted(accepting.clone(), 3, std::slice::from_ref(&frame));
    let got: Vec<&Bytes> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Push(Message::Published(p)) => {
                assert_eq!(p.compression, None);
                Some(&p.payload)
            }
            _ => None,
        })
        .collect();
    assert_eq!(got, [&Bytes::from(payload.clone())]);
    assert!(!events.iter().any(|e| matches!(e, ClientEvent::Closed(_))));

    // Not asked for.
    let events = scripted(World::plain("alice"), 3, std::slice::from_ref(&frame));
    assert_eq!(
        protocol_error(&events),
        ProtocolError::Unexpected {
            message: "compressed Published",
            context: "although the Hello did not ask for compressed payloads",
        }
    );

    // On a version 2 connection.
    let events = scripted(accepting.clone(), 2, std::slice::from_ref(&frame));
    assert_eq!(
        protocol_error(&events),
        ProtocolError::Unexpected {
            message: "compressed Published",
            context: "on a connection of protocol version 1 or 2",
        }
    );

    // A bomb: more than the client's frame limit once decompressed.
    let bomb = compress(CompressionAlgorithm::Lz4Block, &vec![b'x'; 2 << 20]).unwrap();
    let events = scripted(
        accepting.clone(),
        3,
        &[compressed_published(1, bomb.data, Some(bomb.compression))],
    );
    assert_eq!(
        protocol_error(&events),
        ProtocolError::Compression(CompressionError::TooLarge {
            original_len: 2 << 20,
            limit: 1 << 20,
        })
    );

    // Corrupt: the events before it are delivered, nothing after it.
    let events = scripted(
        accepting,
        3,
        &[
            frame.clone(),
            compressed_published(2, good.data.clone(), lz4(2999)),
            frame,
        ],
    );
    let delivered = events
        .iter()
        .filter(|e| matches!(e, ClientEvent::Push(Message::Published(_))))
        .count();
    assert_eq!(delivered, 1);
    assert!(matches!(
        protocol_error(&events),
        ProtocolError::Compression(CompressionError::Corrupt {
            original_len: 2999,
            ..
        })
    ));
}
