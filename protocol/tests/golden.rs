//! Golden bytes: the exact encoding of at least one message of every type, written
//! out by hand from `PROTOCOL.md`, so the wire format cannot drift silently.
//!
//! Each expected frame is a hex dump: whitespace is ignored and `#` starts a comment
//! that runs to the end of the line. The four worked examples of `PROTOCOL.md` are
//! the `EXAMPLE_*` constants; a test checks the specification still contains them
//! verbatim.

use bytes::{Bytes, BytesMut};
use pushwire_protocol::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Parses a commented hex dump into bytes.
fn hex(dump: &str) -> Vec<u8> {
    let digits: Vec<u8> = dump
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.bytes())
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    assert!(
        digits.len() % 2 == 0,
        "odd number of hex digits in:\n{dump}"
    );
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).expect("ASCII hex digits");
            u8::from_str_radix(pair, 16)
                .unwrap_or_else(|_| panic!("not a hex byte: {pair:?} in:\n{dump}"))
        })
        .collect()
}

/// Renders bytes as space-separated hex, for readable assertion failures.
fn show(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Decodes one whole frame with a fresh decoder and checks nothing is left over.
fn decode_frame(frame: &[u8]) -> Message {
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    assert_eq!(
        decoder.feed(frame),
        frame.len(),
        "the decoder took the frame"
    );
    let message = decoder
        .next_message()
        .unwrap_or_else(|e| panic!("{e}: {}", show(frame)))
        .expect("a complete frame");
    assert_eq!(decoder.next_message(), Ok(None));
    assert_eq!(decoder.buffered(), 0);
    message
}

/// `message` encodes to exactly `dump`, and `dump` decodes to `message`.
fn check(message: &Message, dump: &str) {
    let expected = hex(dump);
    let mut wire = BytesMut::new();
    message.encode(&mut wire);
    assert_eq!(
        show(&wire),
        show(&expected),
        "encoding of {:?} drifted",
        message.kind()
    );
    assert_eq!(message.encoded_len(), expected.len());
    assert_eq!(message.frame_size(), expected.len() - 4);
    assert_eq!(
        u32::from_be_bytes(expected[..4].try_into().unwrap()) as usize,
        expected.len() - 4,
        "the length prefix counts the type byte and the body"
    );
    assert_eq!(expected[4], message.type_byte());
    assert_eq!(expected[4] & !COMPRESSED_TYPE_BIT, message.kind() as u8);
    assert_eq!(&decode_frame(&expected), message);
}

// ---------------------------------------------------------------------------------
// The worked examples of PROTOCOL.md, verbatim.
// ---------------------------------------------------------------------------------

const EXAMPLE_PING: &str = "\
00 00 00 09              # length: 9 = type byte + 8-byte body
40                       # type: Ping
01 02 03 04 05 06 07 08  # nonce: 0x0102030405060708
";

const EXAMPLE_SUBSCRIBE: &str = "\
00 00 00 13              # length: 19 = 1 + 8 + 2 + 2 * 4
20                       # type: Subscribe
00 00 00 00 00 00 00 07  # command_id: 7
00 02                    # groups: count 2
00 00 00 01              #   group 1
00 00 00 02              #   group 2
";

const EXAMPLE_PUBLISHED: &str = "\
00 00 00 24              # length: 36 = 1 + 8 + 19 + 6 + 2
32                       # type: Published
00 00 00 00 00 00 00 05  # seq: 5
04                       # sender tag: peer, IPv4
00                       # sender flags: not self
00 05 61 6c 69 63 65     # sender user_id: \"alice\"
c0 a8 01 0a              # sender address: 192.168.1.10
c3 50                    # sender port: 50000
00 00 00 01              # sender service_id: 1
00 01                    # groups: count 1
00 00 00 01              #   group 1
68 69                    # payload: \"hi\" (the rest of the frame)
";

const EXAMPLE_HELLO: &str = "\
00 00 00 1a              # length: 26 = 1 + 2 + 2 + 4 + 1 + 7 + 8 + 1
01                       # type: Hello
00 01                    # min_version: 1
00 01                    # max_version: 1
00 00 01 00              # service_id: 256
01                       # options: echo
00 05 61 6c 69 63 65     # user_id: \"alice\"
00 06 73 65 63 72 65 74  # password: \"secret\"
00                       # resume: none
";

const EXAMPLE_HELLO_V4: &str = "\
00 00 00 16              # length: 22 = 1 + 4 + 4 + 1 + 5 + 2 + 1 + 4
01                       # type: Hello
00 01                    # min_version: 1
00 04                    # max_version: 4
00 00 00 01              # service_id: 1
03                       # options: echo, compression
00 03 62 6f 62           # user_id: \"bob\"
00 00                    # password: empty
00                       # resume: none
00 01 00 00              # max_frame_size: 65,536 (version 4)
";

const EXAMPLE_WELCOME_V4: &str = "\
00 00 00 30              # length: 48 = 1 + 47
02                       # type: Welcome
00 04                    # version: 4
00 00 00 00 00 00 00 2a  # session_id: 42
a0 a1 a2 a3 a4 a5 a6 a7  # resume_token (16 bytes)
a8 a9 aa ab ac ad ae af
00                       # resumed: no
00 10 00 00              # max_frame_size: 1 MiB
00 00 3a 98              # ping_interval_ms: 15,000
00 00 ea 60              # session_timeout_ms: 60,000
00 00 04 00              # replay_capacity: 1,024
00 00 af c8              # idle_timeout_ms: 45,000 (version 4)
";

const EXAMPLE_PUBLISH_COMPRESSED: &str = "\
00 00 00 22              # length: 34 = 1 + 8 + 6 + 5 + 14
a2                       # type: Publish (0x22) with the compressed bit (0x80)
00 00 00 00 00 00 00 07  # command_id: 7
00 01                    # groups: count 1
00 00 00 01              #   group 1
01                       # payload: algorithm 1, LZ4 block
00 00 00 2f              #   original_len: 47
3f 68 69 20 03 00 13 60  #   the LZ4 block (14 bytes): literals \"hi \", a match of
20 68 69 20 68 69        #   38 bytes at offset 3, then the last literals \" hi hi\"
";

const EXAMPLE_PUBLISHED_COMPRESSED: &str = "\
00 00 00 35              # length: 53 = 1 + 8 + 19 + 6 + 5 + 14
b2                       # type: Published (0x32) with the compressed bit (0x80)
00 00 00 00 00 00 00 05  # seq: 5
04                       # sender tag: peer, IPv4
00                       # sender flags: not self
00 05 61 6c 69 63 65     # sender user_id: \"alice\"
c0 a8 01 0a              # sender address: 192.168.1.10
c3 50                    # sender port: 50000
00 00 00 01              # sender service_id: 1
00 01                    # groups: count 1
00 00 00 01              #   group 1
01                       # payload: algorithm 1, LZ4 block
00 00 00 2f              #   original_len: 47
3f 68 69 20 03 00 13 60  #   the publisher's 14 bytes, untouched
20 68 69 20 68 69
";

/// The payload of the compressed examples: "hi" 16 times, space-separated.
const HI_16: &[u8] = b"hi hi hi hi hi hi hi hi hi hi hi hi hi hi hi hi";

/// HI_16 as LZ4 compresses it.
const HI_16_LZ4: &[u8] = &[
    0x3f, 0x68, 0x69, 0x20, 0x03, 0x00, 0x13, 0x60, 0x20, 0x68, 0x69, 0x20, 0x68, 0x69,
];

fn lz4(original_len: u32) -> Option<Compression> {
    Some(Compression {
        algorithm: CompressionAlgorithm::Lz4Block,
        original_len,
    })
}

fn compressed_publish() -> Message {
    Message::Publish(Publish {
        command_id: 7,
        groups: vec![GroupId(1)],
        payload: Bytes::from_static(HI_16_LZ4),
        compression: lz4(47),
    })
}

fn compressed_published() -> Message {
    Message::Published(Published {
        seq: 5,
        sender: alice_v4(false),
        groups: vec![GroupId(1)],
        payload: Bytes::from_static(HI_16_LZ4),
        compression: lz4(47),
    })
}

fn ping() -> Message {
    Message::Ping(Ping {
        nonce: 0x0102_0304_0506_0708,
    })
}

fn alice_v4(is_self: bool) -> Sender {
    Sender::Peer(PeerSender {
        user_id: Text::from("alice"),
        addr: IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)),
        port: 50_000,
        service_id: 1,
        is_self,
        node: None,
    })
}

fn hello() -> Message {
    Message::Hello(Hello {
        min_version: 1,
        max_version: 1,
        service_id: 256,
        options: ClientOptions {
            echo: true,
            compression: false,
        },
        user_id: Text::from("alice"),
        password: Bytes::from_static(b"secret"),
        resume: None,
        max_frame_size: None,
    })
}

#[test]
fn worked_example_ping() {
    check(&ping(), EXAMPLE_PING);
}

#[test]
fn worked_example_subscribe() {
    check(
        &Message::Subscribe(Subscribe {
            command_id: 7,
            groups: vec![GroupId(1), GroupId(2)],
        }),
        EXAMPLE_SUBSCRIBE,
    );
}

#[test]
fn worked_example_published_ipv4_peer() {
    check(
        &Message::Published(Published {
            seq: 5,
            sender: alice_v4(false),
            groups: vec![GroupId(1)],
            payload: Bytes::from_static(b"hi"),
            compression: None,
        }),
        EXAMPLE_PUBLISHED,
    );
}

#[test]
fn worked_example_hello() {
    check(&hello(), EXAMPLE_HELLO);
}

#[test]
fn worked_examples_compressed_publish_and_published() {
    check(&compressed_publish(), EXAMPLE_PUBLISH_COMPRESSED);
    check(&compressed_published(), EXAMPLE_PUBLISHED_COMPRESSED);
    // The example's bytes are what the reference compressor produces, and they give
    // the payload back.
    let ours = compress(CompressionAlgorithm::Lz4Block, HI_16).unwrap();
    assert_eq!(HI_16.len(), 47);
    assert_eq!(ours.compression, lz4(47).unwrap());
    assert_eq!(show(&ours.data), show(HI_16_LZ4));
    assert_eq!(
        decompress(lz4(47).unwrap(), HI_16_LZ4, 47).unwrap(),
        Bytes::from_static(HI_16)
    );
}

#[test]
fn the_specification_contains_the_worked_examples_verbatim() {
    let spec = include_str!("../PROTOCOL.md");
    for (name, example) in [
        ("Ping", EXAMPLE_PING),
        ("Subscribe", EXAMPLE_SUBSCRIBE),
        ("Published", EXAMPLE_PUBLISHED),
        ("Hello", EXAMPLE_HELLO),
        ("compressed Publish", EXAMPLE_PUBLISH_COMPRESSED),
        ("compressed Published", EXAMPLE_PUBLISHED_COMPRESSED),
        ("version 4 Hello", EXAMPLE_HELLO_V4),
        ("version 4 Welcome", EXAMPLE_WELCOME_V4),
    ] {
        assert!(
            spec.contains(example),
            "PROTOCOL.md no longer shows the {name} example exactly as this test checks it"
        );
    }
}

// ---------------------------------------------------------------------------------
// Every other message type.
// ---------------------------------------------------------------------------------

/// Every golden frame of this file: (message, hex dump).
fn golden() -> Vec<(Message, &'static str)> {
    vec![
        // --- handshake -------------------------------------------------------------
        (hello(), EXAMPLE_HELLO),
        (
            Message::Hello(Hello {
                min_version: 1,
                max_version: 3,
                service_id: 1,
                options: ClientOptions {
                    echo: false,
                    compression: false,
                },
                user_id: Text::from("bob"),
                password: Bytes::new(),
                resume: Some(ResumeRequest {
                    token: ResumeToken([
                        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b,
                        0x0c, 0x0d, 0x0e, 0x0f,
                    ]),
                    last_seq: 42,
                }),
                max_frame_size: None,
            }),
            "00 00 00 2a              # length: 42
             01                       # Hello
             00 01 00 03              # versions 1..=3
             00 00 00 01              # service_id 1
             00                       # options: echo off
             00 03 62 6f 62           # user_id \"bob\"
             00 00                    # password: empty
             01                       # resume: present
             00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f  # token
             00 00 00 00 00 00 00 2a  # last_seq 42",
        ),
        (
            Message::Welcome(Welcome {
                version: 1,
                session_id: 42,
                resume_token: ResumeToken([
                    0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac,
                    0xad, 0xae, 0xaf,
                ]),
                resumed: false,
                max_frame_size: 1024 * 1024,
                ping_interval_ms: 15_000,
                session_timeout_ms: 60_000,
                replay_capacity: 1024,
                idle_timeout_ms: 0,
            }),
            "00 00 00 2c              # length: 44
             02                       # Welcome
             00 01                    # version 1
             00 00 00 00 00 00 00 2a  # session_id 42
             a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab ac ad ae af  # resume_token
             00                       # resumed: no
             00 10 00 00              # max_frame_size 1 MiB
             00 00 3a 98              # ping_interval_ms 15000
             00 00 ea 60              # session_timeout_ms 60000
             00 00 04 00              # replay_capacity 1024",
        ),
        // Version 4: the Hello announces the client's frame limit, after the resume
        // request; the Welcome appends the server's idle timeout.
        (
            Message::Hello(Hello {
                min_version: 1,
                max_version: 4,
                service_id: 1,
                options: ClientOptions {
                    echo: true,
                    compression: true,
                },
                user_id: Text::from("bob"),
                password: Bytes::new(),
                resume: None,
                max_frame_size: Some(64 * 1024),
            }),
            EXAMPLE_HELLO_V4,
        ),
        (
            Message::Welcome(Welcome {
                version: 4,
                session_id: 42,
                resume_token: ResumeToken([
                    0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac,
                    0xad, 0xae, 0xaf,
                ]),
                resumed: false,
                max_frame_size: 1024 * 1024,
                ping_interval_ms: 15_000,
                session_timeout_ms: 60_000,
                replay_capacity: 1024,
                idle_timeout_ms: 45_000,
            }),
            EXAMPLE_WELCOME_V4,
        ),
        (
            Message::Refused(Refused {
                code: RefuseCode::BadCredentials,
                reason: Text::from("bad password"),
            }),
            "00 00 00 11 03
             00 01                                      # BadCredentials
             00 0c 62 61 64 20 70 61 73 73 77 6f 72 64  # \"bad password\"",
        ),
        // --- rpc -------------------------------------------------------------------
        (
            Message::Request(Request {
                request_id: 1,
                method_id: 16,
                payload: Bytes::from_static(b"ping"),
            }),
            "00 00 00 11 10
             00 00 00 00 00 00 00 01  # request_id 1
             00 00 00 10              # method_id 16
             70 69 6e 67              # payload \"ping\"",
        ),
        (
            Message::Response(Response {
                request_id: 1,
                payload: Bytes::from_static(b"pong"),
            }),
            "00 00 00 0d 11
             00 00 00 00 00 00 00 01  # request_id 1
             70 6f 6e 67              # payload \"pong\"",
        ),
        (
            Message::Response(Response {
                request_id: u64::MAX,
                payload: Bytes::new(),
            }),
            "00 00 00 09 11
             ff ff ff ff ff ff ff ff  # request_id, empty payload",
        ),
        (
            Message::ServerError(ServerError {
                request_id: 2,
                code: ErrorCode::UnknownMethod,
                message: Text::from("no such method"),
            }),
            "00 00 00 1d 12
             00 00 00 00 00 00 00 02                          # request_id 2
             00 00 00 01                                      # UnknownMethod
             00 0e 6e 6f 20 73 75 63 68 20 6d 65 74 68 6f 64  # \"no such method\"",
        ),
        (
            Message::ServerError(ServerError {
                request_id: 3,
                code: ErrorCode::Other(1000),
                message: Text::new(),
            }),
            "00 00 00 0f 12
             00 00 00 00 00 00 00 03  # request_id 3
             00 00 03 e8              # application code 1000
             00 00                    # empty message",
        ),
        (Message::BatchBegin(BatchBegin), "00 00 00 01 13"),
        (
            Message::BatchCommit(BatchCommit {
                server_batching: true,
            }),
            "00 00 00 02 14 01",
        ),
        (
            Message::BatchCommit(BatchCommit {
                server_batching: false,
            }),
            "00 00 00 02 14 00",
        ),
        (
            Message::Cancel(Cancel { request_id: 3 }),
            "00 00 00 09 15
             00 00 00 00 00 00 00 03  # request_id 3 (version 3)",
        ),
        // --- push commands ---------------------------------------------------------
        (
            Message::Subscribe(Subscribe {
                command_id: 7,
                groups: vec![GroupId(1), GroupId(2)],
            }),
            EXAMPLE_SUBSCRIBE,
        ),
        (
            Message::Unsubscribe(Unsubscribe {
                command_id: 8,
                groups: GroupSelection::Groups(vec![GroupId(3)]),
            }),
            "00 00 00 10 21
             00 00 00 00 00 00 00 08  # command_id 8
             00                       # all: no
             00 01 00 00 00 03        # groups [3]",
        ),
        (
            Message::Unsubscribe(Unsubscribe {
                command_id: 9,
                groups: GroupSelection::All,
            }),
            "00 00 00 0a 21
             00 00 00 00 00 00 00 09  # command_id 9
             01                       # all: yes, no group list follows",
        ),
        (
            Message::Publish(Publish {
                command_id: 10,
                groups: vec![GroupId(1), GroupId(2)],
                payload: Bytes::from_static(b"hello"),
                compression: None,
            }),
            "00 00 00 18 22
             00 00 00 00 00 00 00 0a              # command_id 10
             00 02 00 00 00 01 00 00 00 02        # groups [1, 2]
             68 65 6c 6c 6f                       # payload \"hello\"",
        ),
        (
            Message::SendUserMessage(SendUserMessage {
                command_id: 11,
                receiver: Text::from("bob"),
                payload: Bytes::from_static(b"yo"),
                compression: None,
            }),
            "00 00 00 10 23
             00 00 00 00 00 00 00 0b  # command_id 11
             00 03 62 6f 62           # receiver \"bob\"
             79 6f                    # payload \"yo\"",
        ),
        (
            Message::ListGroups(ListGroups { command_id: 12 }),
            "00 00 00 09 24
             00 00 00 00 00 00 00 0c  # command_id 12",
        ),
        // --- push events -----------------------------------------------------------
        (
            Message::Subscribed(Subscribed {
                seq: 1,
                sender: alice_v4(true),
                groups: vec![GroupId(1), GroupId(2)],
            }),
            "00 00 00 26 30
             00 00 00 00 00 00 00 01        # seq 1
             04 01                          # peer IPv4, self
             00 05 61 6c 69 63 65           # \"alice\"
             c0 a8 01 0a c3 50 00 00 00 01  # 192.168.1.10, port 50000, service 1
             00 02 00 00 00 01 00 00 00 02  # groups [1, 2]",
        ),
        (
            Message::Unsubscribed(Unsubscribed {
                seq: 2,
                sender: Sender::Peer(PeerSender {
                    user_id: Text::from("carol"),
                    addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                    port: 1234,
                    service_id: 1,
                    is_self: false,
                    node: None,
                }),
                groups: vec![GroupId(1)],
            }),
            "00 00 00 22 31
             00 00 00 00 00 00 00 02        # seq 2
             04 00                          # peer IPv4, not self
             00 05 63 61 72 6f 6c           # \"carol\"
             0a 00 00 02 04 d2 00 00 00 01  # 10.0.0.2, port 1234, service 1
             00 01 00 00 00 01              # groups [1]",
        ),
        (
            Message::Published(Published {
                seq: 5,
                sender: alice_v4(false),
                groups: vec![GroupId(1)],
                payload: Bytes::from_static(b"hi"),
                compression: None,
            }),
            EXAMPLE_PUBLISHED,
        ),
        (
            Message::Published(Published {
                seq: 6,
                sender: Sender::Peer(PeerSender {
                    user_id: Text::from("bob"),
                    addr: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
                    port: 443,
                    service_id: 2,
                    is_self: true,
                    node: None,
                }),
                groups: vec![GroupId(2), GroupId(3)],
                payload: Bytes::from_static(b"x"),
                compression: None,
            }),
            "00 00 00 31 32                                   # length 49, Published
             00 00 00 00 00 00 00 06                          # seq 6
             06 01                                            # peer IPv6, self
             00 03 62 6f 62                                   # \"bob\"
             20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01  # 2001:db8::1
             01 bb                                            # port 443
             00 00 00 02                                      # service 2
             00 02 00 00 00 02 00 00 00 03                    # groups [2, 3]
             78                                               # payload \"x\"",
        ),
        (
            Message::Published(Published {
                seq: 7,
                sender: Sender::Server,
                groups: vec![GroupId(1)],
                payload: Bytes::from_static(b"sys"),
                compression: None,
            }),
            "00 00 00 13 32
             00 00 00 00 00 00 00 07  # seq 7
             00                       # sender: the server (tag only)
             00 01 00 00 00 01        # groups [1]
             73 79 73                 # payload \"sys\"",
        ),
        (
            Message::UserMessage(UserMessage {
                seq: 8,
                sender: alice_v4(false),
                payload: Bytes::from_static(b"hey"),
                compression: None,
            }),
            "00 00 00 1f 33
             00 00 00 00 00 00 00 08        # seq 8
             04 00 00 05 61 6c 69 63 65     # peer IPv4, not self, \"alice\"
             c0 a8 01 0a c3 50 00 00 00 01  # 192.168.1.10, port 50000, service 1
             68 65 79                       # payload \"hey\"",
        ),
        (
            Message::Published(Published {
                seq: 11,
                sender: Sender::Peer(PeerSender {
                    node: Some(Text::from("n2")),
                    ..match alice_v4(false) {
                        Sender::Peer(p) => p,
                        Sender::Server => unreachable!(),
                    }
                }),
                groups: vec![GroupId(1)],
                payload: Bytes::from_static(b"hi"),
                compression: None,
            }),
            "00 00 00 28 32
             00 00 00 00 00 00 00 0b        # seq 11
             04 02                          # peer IPv4, not self, node follows (version 5)
             00 05 61 6c 69 63 65           # \"alice\"
             c0 a8 01 0a c3 50 00 00 00 01  # 192.168.1.10, port 50000, service 1
             00 02 6e 32                    # node \"n2\"
             00 01 00 00 00 01              # groups [1]
             68 69                          # payload \"hi\"",
        ),
        (
            Message::UserMessage(UserMessage {
                seq: 9,
                sender: Sender::Server,
                payload: Bytes::new(),
                compression: None,
            }),
            "00 00 00 0a 33
             00 00 00 00 00 00 00 09  # seq 9
             00                       # the server; empty payload",
        ),
        // --- compressed payloads (section 3.1) ------------------------------------
        (compressed_publish(), EXAMPLE_PUBLISH_COMPRESSED),
        (compressed_published(), EXAMPLE_PUBLISHED_COMPRESSED),
        (
            Message::SendUserMessage(SendUserMessage {
                command_id: 11,
                receiver: Text::from("bob"),
                payload: Bytes::from_static(HI_16_LZ4),
                compression: lz4(47),
            }),
            "00 00 00 21 a3              # length 33, SendUserMessage, compressed
             00 00 00 00 00 00 00 0b     # command_id 11
             00 03 62 6f 62              # receiver \"bob\"
             01 00 00 00 2f              # LZ4 block, 47 bytes decompressed
             3f 68 69 20 03 00 13 60 20 68 69 20 68 69",
        ),
        (
            Message::UserMessage(UserMessage {
                seq: 10,
                sender: Sender::Server,
                payload: Bytes::from_static(HI_16_LZ4),
                compression: lz4(47),
            }),
            "00 00 00 1d b3              # length 29, UserMessage, compressed
             00 00 00 00 00 00 00 0a     # seq 10
             00                          # the server
             01 00 00 00 2f              # LZ4 block, 47 bytes decompressed
             3f 68 69 20 03 00 13 60 20 68 69 20 68 69",
        ),
        (
            Message::Gap(Gap {
                first: 10,
                last: 12,
            }),
            "00 00 00 11 34
             00 00 00 00 00 00 00 0a  # first 10
             00 00 00 00 00 00 00 0c  # last 12",
        ),
        (
            Message::SessionLost(SessionLost {
                reason: SessionLostReason::Expired,
                text: Text::from("expired"),
            }),
            "00 00 00 0c 35
             00 02                       # Expired
             00 07 65 78 70 69 72 65 64  # \"expired\"",
        ),
        (
            Message::PushRejected(PushRejected {
                command_id: 7,
                code: RejectCode::UnknownGroups,
                groups: vec![GroupId(99)],
                reason: Text::from("unknown group"),
            }),
            "00 00 00 20 36
             00 00 00 00 00 00 00 07                    # command_id 7
             00 01                                      # UnknownGroups
             00 01 00 00 00 63                          # groups [99]
             00 0d 75 6e 6b 6e 6f 77 6e 20 67 72 6f 75 70  # \"unknown group\"",
        ),
        (
            Message::UserMessageDelivered(UserMessageDelivered {
                command_id: 11,
                connections: 2,
            }),
            "00 00 00 0d 37
             00 00 00 00 00 00 00 0b  # command_id 11
             00 00 00 02              # 2 connections",
        ),
        (
            Message::GroupList(GroupList {
                command_id: 12,
                groups: vec![
                    GroupDescription {
                        id: GroupId(1),
                        description: Text::from("news"),
                    },
                    GroupDescription {
                        id: GroupId(2),
                        description: Text::from("chat"),
                    },
                ],
            }),
            "00 00 00 21 38
             00 00 00 00 00 00 00 0c        # command_id 12
             00 00 00 02                    # count 2 (a u32 here)
             00 00 00 01 00 04 6e 65 77 73  # 1 \"news\"
             00 00 00 02 00 04 63 68 61 74  # 2 \"chat\"",
        ),
        (
            Message::PushTaken(PushTaken { command_id: 12 }),
            "00 00 00 09 39
             00 00 00 00 00 00 00 0c  # command_id 12 (version 2)",
        ),
        // --- control ---------------------------------------------------------------
        (ping(), EXAMPLE_PING),
        (
            Message::Pong(Pong {
                nonce: 0x0102_0304_0506_0708,
            }),
            "00 00 00 09 41 01 02 03 04 05 06 07 08",
        ),
        (
            Message::Close(Close {
                code: CloseCode::GoingAway,
                reason: Text::from("bye"),
            }),
            "00 00 00 08 42
             00 01           # GoingAway
             00 03 62 79 65  # \"bye\"",
        ),
        (
            Message::Close(Close {
                code: CloseCode::Other(999),
                reason: Text::new(),
            }),
            "00 00 00 05 42
             03 e7  # a code this version does not define: kept as Other(999)
             00 00  # empty reason",
        ),
        (
            Message::Ack(Ack { last_seq: 8 }),
            "00 00 00 09 43 00 00 00 00 00 00 00 08",
        ),
    ]
}

#[test]
fn every_golden_frame_matches_encoder_and_decoder() {
    for (message, dump) in golden() {
        check(&message, dump);
    }
}

#[test]
fn every_message_type_has_a_golden_frame() {
    let covered: std::collections::BTreeSet<MessageKind> =
        golden().iter().map(|(m, _)| m.kind()).collect();
    for kind in MessageKind::ALL {
        assert!(covered.contains(kind), "no golden frame for {kind}");
    }
}

#[test]
fn the_golden_frames_back_to_back_decode_in_order() {
    let golden = golden();
    let stream: Vec<u8> = golden.iter().flat_map(|(_, dump)| hex(dump)).collect();
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    let mut rest = &stream[..];
    let mut decoded = Vec::new();
    while !rest.is_empty() {
        let taken = decoder.feed(rest);
        rest = &rest[taken..];
        while let Some(m) = decoder.next_message().unwrap() {
            decoded.push(m);
        }
        assert!(taken > 0 || rest.is_empty(), "the decoder stalled");
    }
    let expected: Vec<Message> = golden.into_iter().map(|(m, _)| m).collect();
    assert_eq!(decoded, expected);
}

#[test]
fn message_type_codes_are_frozen() {
    let codes: Vec<(u8, &str, Role)> = MessageKind::ALL
        .iter()
        .map(|&k| (k as u8, k.name(), k.sender()))
        .collect();
    use Role::*;
    assert_eq!(
        codes,
        vec![
            (0x01, "Hello", Client),
            (0x02, "Welcome", Server),
            (0x03, "Refused", Server),
            (0x10, "Request", Client),
            (0x11, "Response", Server),
            (0x12, "ServerError", Server),
            (0x13, "BatchBegin", Client),
            (0x14, "BatchCommit", Client),
            (0x15, "Cancel", Client),
            (0x20, "Subscribe", Client),
            (0x21, "Unsubscribe", Client),
            (0x22, "Publish", Client),
            (0x23, "SendUserMessage", Client),
            (0x24, "ListGroups", Client),
            (0x30, "Subscribed", Server),
            (0x31, "Unsubscribed", Server),
            (0x32, "Published", Server),
            (0x33, "UserMessage", Server),
            (0x34, "Gap", Server),
            (0x35, "SessionLost", Server),
            (0x36, "PushRejected", Server),
            (0x37, "UserMessageDelivered", Server),
            (0x38, "GroupList", Server),
            (0x39, "PushTaken", Server),
            (0x40, "Ping", Either),
            (0x41, "Pong", Either),
            (0x42, "Close", Either),
            (0x43, "Ack", Client),
        ]
    );
}

#[test]
fn code_tables_are_frozen() {
    let close: Vec<u16> = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::FrameTooLarge,
        CloseCode::IdleTimeout,
        CloseCode::HelloTimeout,
        CloseCode::SlowConsumer,
        CloseCode::InternalError,
        CloseCode::TooManyConnections,
        CloseCode::ServerRejected,
        CloseCode::Kicked,
        CloseCode::HandshakeTimeout,
    ]
    .map(CloseCode::to_wire)
    .to_vec();
    assert_eq!(close, (0..=11).collect::<Vec<u16>>());

    let refuse = [
        RefuseCode::BadCredentials,
        RefuseCode::UnknownService,
        RefuseCode::UnsupportedVersion,
        RefuseCode::TooManyConnections,
        RefuseCode::ResumeNotPermitted,
        RefuseCode::InvalidHello,
        RefuseCode::GoingAway,
        RefuseCode::NotPermitted,
    ]
    .map(RefuseCode::to_wire);
    assert_eq!(refuse, [1, 2, 3, 4, 5, 6, 7, 8]);

    let reject = [
        RejectCode::UnknownGroups,
        RejectCode::EmptyGroupList,
        RejectCode::NotAuthorized,
        RejectCode::PayloadTooLarge,
        RejectCode::InvalidReceiver,
        RejectCode::Busy,
        RejectCode::RateLimited,
        RejectCode::AnswerTooLarge,
    ]
    .map(RejectCode::to_wire);
    assert_eq!(reject, [1, 2, 3, 4, 5, 6, 7, 8]);

    let lost =
        [SessionLostReason::Unknown, SessionLostReason::Expired].map(SessionLostReason::to_wire);
    assert_eq!(lost, [1, 2]);

    let error = [
        ErrorCode::UnknownMethod,
        ErrorCode::BadRequest,
        ErrorCode::Internal,
        ErrorCode::GoingAway,
        ErrorCode::NoService,
        ErrorCode::Cancelled,
        ErrorCode::ResultTooLarge,
    ]
    .map(ErrorCode::to_wire);
    assert_eq!(error, [1, 2, 3, 4, 5, 6, 7]);

    // Values without a name are kept, not refused.
    assert_eq!(RefuseCode::from_wire(0), RefuseCode::Other(0));
    assert_eq!(RejectCode::from_wire(9), RejectCode::Other(9));
    assert_eq!(SessionLostReason::from_wire(3), SessionLostReason::Other(3));
    assert_eq!(CloseCode::from_wire(12), CloseCode::Other(12));
    assert_eq!(ErrorCode::from_wire(8), ErrorCode::Other(8));
}

#[test]
fn limits_are_frozen() {
    assert_eq!(FRAME_HEADER_LEN, 5);
    assert_eq!(DEFAULT_MAX_FRAME_SIZE, 1_048_576);
    assert_eq!(MIN_MAX_FRAME_SIZE, 4096);
    assert_eq!(HARD_MAX_FRAME_SIZE, 16_777_216);
    assert_eq!(MAX_USER_ID_CHARS, 255);
    assert_eq!(MAX_USER_ID_BYTES, 1020);
    assert_eq!(MAX_PASSWORD_BYTES, 1024);
    assert_eq!(MAX_TEXT_BYTES, 4096);
    assert_eq!(MAX_GROUPS_PER_MESSAGE, 65_535);
    assert_eq!(MAX_NODE_ID_BYTES, 64);
    assert_eq!(PROTOCOL_VERSION, 5);
    assert_eq!(SUPPORTED_VERSIONS, 1..=5);
}

// ---------------------------------------------------------------------------------
// Forward compatibility of the Hello.
// ---------------------------------------------------------------------------------

#[test]
fn hello_ignores_unknown_option_bits_and_trailing_extensions() {
    let frame = hex(
        "00 00 00 21              # length: 33 = the example's 26 + 4 + 3
         01                       # Hello
         00 01 00 06              # versions 1..=6
         00 00 01 00              # service_id 256
         ff                       # options: echo, compression, six unknown bits
         00 05 61 6c 69 63 65     # \"alice\"
         00 06 73 65 63 72 65 74  # \"secret\"
         00                       # resume: none
         00 00 10 00              # max_frame_size 4096 (version 4)
         aa bb cc                 # fields of a later version: ignored",
    );
    let Message::Hello(decoded) = decode_frame(&frame) else {
        panic!("expected a Hello");
    };
    let Message::Hello(mut expected) = hello() else {
        unreachable!()
    };
    expected.max_version = 6;
    expected.options.compression = true;
    expected.max_frame_size = Some(4096);
    assert_eq!(decoded, expected);
    // A server of versions 1..=5 meets a newer client at 5, and refuses one that
    // speaks only later versions.
    assert_eq!(negotiate_version(1, 6), Some(5));
    assert_eq!(negotiate_version(6, 6), None);
}

#[test]
fn a_hello_up_to_version_3_keeps_every_trailing_byte_as_an_ignored_extension() {
    // The bytes a version 4 Hello would read as max_frame_size are extensions to
    // ignore when the client speaks at most version 3.
    let frame = hex(
        "00 00 00 1e              # length: 30 = the example's 26 + 4
         01                       # Hello
         00 01 00 03              # versions 1..=3
         00 00 01 00              # service_id 256
         01                       # options: echo
         00 05 61 6c 69 63 65     # \"alice\"
         00 06 73 65 63 72 65 74  # \"secret\"
         00                       # resume: none
         00 00 00 01              # not a frame limit: ignored",
    );
    let Message::Hello(decoded) = decode_frame(&frame) else {
        panic!("expected a Hello");
    };
    assert_eq!(decoded.max_version, 3);
    assert_eq!(decoded.max_frame_size, None);
    // And an encoder leaves the field out of such a Hello.
    let Message::Hello(mut hello) = hello() else {
        unreachable!()
    };
    hello.max_frame_size = Some(4096);
    let hello = Message::Hello(hello);
    let mut wire = BytesMut::new();
    hello.encode(&mut wire);
    assert_eq!(
        show(&wire),
        show(&hex(EXAMPLE_HELLO)),
        "a version 1 Hello has no frame limit on the wire"
    );
    assert_eq!(hello.encoded_len(), wire.len());
}

#[test]
fn a_version_4_hello_with_a_partial_frame_limit_is_truncated() {
    let bytes = hex("00 00 00 1c 01
         00 01 00 04 00 00 01 00 01
         00 05 61 6c 69 63 65
         00 06 73 65 63 72 65 74
         00
         00 10                    # two of max_frame_size's four bytes");
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    decoder.feed(&bytes);
    assert!(matches!(
        decoder.next_message(),
        Err(DecodeError::Truncated { .. })
    ));
}

// ---------------------------------------------------------------------------------
// Bytes that must be refused, with the error and the close code PROTOCOL.md gives.
// ---------------------------------------------------------------------------------

fn decode_error(dump: &str, limits: FrameLimits) -> DecodeError {
    let bytes = hex(dump);
    let mut decoder = FrameDecoder::new(limits);
    let mut rest = &bytes[..];
    loop {
        let taken = decoder.feed(rest);
        rest = &rest[taken..];
        match decoder.next_message() {
            Err(e) => {
                assert!(decoder.buffered() <= decoder.capacity_limit());
                assert_eq!(decoder.next_message(), Err(e.clone()), "errors are sticky");
                return e;
            }
            Ok(Some(m)) => panic!("decoded {m:?} from bad input {}", show(&bytes)),
            Ok(None) if rest.is_empty() || taken == 0 => {
                panic!("no error from bad input {}", show(&bytes))
            }
            Ok(None) => {}
        }
    }
}

#[test]
fn bad_frames_are_refused_with_the_specified_error() {
    let default = FrameLimits::default();
    let small = FrameLimits::new(MIN_MAX_FRAME_SIZE).unwrap();
    let ping = MessageKind::Ping;
    let cases: Vec<(&str, FrameLimits, DecodeError, CloseCode)> = vec![
        (
            "00 00 00 00",
            default,
            DecodeError::EmptyFrame,
            CloseCode::ProtocolError,
        ),
        (
            "00 00 10 01 22  # 4097 > 4096, refused before the body arrives",
            small,
            DecodeError::FrameTooLarge {
                length: 4097,
                max: 4096,
            },
            CloseCode::FrameTooLarge,
        ),
        (
            "00 00 00 01 99",
            default,
            DecodeError::UnknownMessageType(0x99),
            CloseCode::ProtocolError,
        ),
        (
            "00 00 00 05 40 00 00 00 00  # a Ping with a 4-byte nonce",
            default,
            DecodeError::Truncated {
                kind: ping,
                field: "nonce",
            },
            CloseCode::ProtocolError,
        ),
        (
            "00 00 00 0a 40 00 00 00 00 00 00 00 01 ff  # a Ping with one byte too many",
            default,
            DecodeError::TrailingBytes {
                kind: ping,
                extra: 1,
            },
            CloseCode::ProtocolError,
        ),
        (
            "00 00 00 02 14 02  # BatchCommit: a boolean must be 0 or 1",
            default,
            DecodeError::InvalidValue {
                kind: MessageKind::BatchCommit,
                field: "server_batching",
                value: 2,
            },
            CloseCode::ProtocolError,
        ),
        (
            "00 00 00 06 42 00 00 00 01 ff  # Close reason that is not UTF-8",
            default,
            DecodeError::InvalidUtf8 {
                kind: MessageKind::Close,
                field: "reason",
            },
            CloseCode::ProtocolError,
        ),
        (
            "00 00 00 05 42 00 00 10 01  # Close reason of 4097 bytes",
            default,
            DecodeError::TooLong {
                kind: MessageKind::Close,
                field: "reason",
                actual: 4097,
                max: MAX_TEXT_BYTES,
            },
            CloseCode::ProtocolError,
        ),
        (
            "00 00 00 0c 33 00 00 00 00 00 00 00 01 05 00 00  # sender tag 5",
            default,
            DecodeError::InvalidValue {
                kind: MessageKind::UserMessage,
                field: "sender",
                value: 5,
            },
            CloseCode::ProtocolError,
        ),
        (
            "00 00 00 0c 33 00 00 00 00 00 00 00 01 04 04 00  # reserved sender flag",
            default,
            DecodeError::InvalidValue {
                kind: MessageKind::UserMessage,
                field: "sender flags",
                value: 4,
            },
            CloseCode::ProtocolError,
        ),
        (
            "00 00 00 11 34 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01  # Gap from 0",
            default,
            DecodeError::InvalidValue {
                kind: MessageKind::Gap,
                field: "first",
                value: 0,
            },
            CloseCode::ProtocolError,
        ),
        (
            "00 00 00 11 34 00 00 00 00 00 00 00 05 00 00 00 00 00 00 00 04  # Gap 5..=4",
            default,
            DecodeError::InvalidValue {
                kind: MessageKind::Gap,
                field: "last",
                value: 4,
            },
            CloseCode::ProtocolError,
        ),
        (
            "00 00 00 0f 01 00 02 00 01 00 00 00 01 01 00 00 00 00 00  # Hello min 2 > max 1",
            default,
            DecodeError::InvalidValue {
                kind: MessageKind::Hello,
                field: "min_version",
                value: 2,
            },
            CloseCode::ProtocolError,
        ),
        (
            "00 00 00 0f 20 00 00 00 00 00 00 00 01 00 02 00 00 00 01  # 2 groups, 1 present",
            default,
            DecodeError::Truncated {
                kind: MessageKind::Subscribe,
                field: "groups",
            },
            CloseCode::ProtocolError,
        ),
    ];
    for (dump, limits, error, close) in cases {
        let got = decode_error(dump, limits);
        assert_eq!(got, error, "for {dump}");
        assert_eq!(got.close_code(), close, "for {dump}");
    }
}
