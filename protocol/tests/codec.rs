//! Property tests of the codec: round trips through arbitrary chunkings, and hostile
//! input that must never panic or grow the decoder past its limit.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use pushwire_protocol::*;
use std::net::IpAddr;

/// Case count from `PUSHWIRE_PROPTEST_CASES` (default: proptest's, or its own
/// `PROPTEST_CASES`), so CI stays fast and a long run is one variable away.
fn config() -> ProptestConfig {
    let cases = std::env::var("PUSHWIRE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig::with_cases(cases)
}

fn text(max_chars: usize) -> impl Strategy<Value = Text> {
    proptest::collection::vec(any::<char>(), 0..=max_chars)
        .prop_map(|chars| Text::from(chars.into_iter().collect::<String>()))
}

fn short_text() -> impl Strategy<Value = Text> {
    prop_oneof![
        4 => text(12),
        1 => text(MAX_USER_ID_CHARS),
    ]
}

fn user_id() -> impl Strategy<Value = Text> {
    short_text()
}

fn payload() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => proptest::collection::vec(any::<u8>(), 0..20_000),
    ]
    .prop_map(Bytes::from)
}

/// A compression header, or none. The codec carries the header and the bytes without
/// looking at them: any declared length goes (real compressed data is in the round
/// trips through [`compress`] below).
fn compression() -> impl Strategy<Value = Option<Compression>> {
    prop_oneof![
        3 => Just(None),
        1 => any::<u32>().prop_map(|original_len| Some(Compression {
            algorithm: CompressionAlgorithm::Lz4Block,
            original_len,
        })),
    ]
}

fn groups() -> impl Strategy<Value = Vec<GroupId>> {
    proptest::collection::vec(any::<u32>().prop_map(GroupId), 0..12)
}

fn sender() -> impl Strategy<Value = Sender> {
    prop_oneof![
        1 => Just(Sender::Server),
        4 => (
            user_id(),
            any::<IpAddr>(),
            any::<u16>(),
            any::<u32>(),
            any::<bool>(),
            proptest::option::of("[A-Za-z0-9._-]{1,64}"),
        )
            .prop_map(|(user_id, addr, port, service_id, is_self, node)| {
                Sender::Peer(PeerSender {
                    user_id,
                    addr,
                    port,
                    service_id,
                    is_self,
                    node: node.map(Text::from),
                })
            }),
    ]
}

fn resume() -> impl Strategy<Value = Option<ResumeRequest>> {
    proptest::option::of((any::<[u8; 16]>(), any::<u64>()).prop_map(|(t, last_seq)| {
        ResumeRequest {
            token: ResumeToken(t),
            last_seq,
        }
    }))
}

fn handshake() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            any::<u16>(),
            any::<u16>(),
            any::<u32>(),
            any::<(bool, bool)>(),
            user_id(),
            proptest::collection::vec(any::<u8>(), 0..=MAX_PASSWORD_BYTES),
            resume(),
            proptest::option::of(any::<u32>())
        )
            .prop_map(
                |(a, b, service_id, (echo, compression), user_id, password, resume, max_frame)| {
                    let max_version = a.max(b);
                    Message::Hello(Hello {
                        min_version: a.min(b),
                        max_version,
                        service_id,
                        options: ClientOptions { echo, compression },
                        user_id,
                        password: password.into(),
                        resume,
                        // On the wire from version 4 only.
                        max_frame_size: max_frame.filter(|_| max_version >= 4),
                    })
                }
            ),
        (
            any::<u16>(),
            any::<u64>(),
            any::<[u8; 16]>(),
            any::<bool>(),
            any::<[u32; 5]>()
        )
            .prop_map(|(version, session_id, token, resumed, n)| {
                Message::Welcome(Welcome {
                    version,
                    session_id,
                    resume_token: ResumeToken(token),
                    resumed,
                    max_frame_size: n[0],
                    ping_interval_ms: n[1],
                    session_timeout_ms: n[2],
                    replay_capacity: n[3],
                    // On the wire from version 4 only.
                    idle_timeout_ms: if version >= 4 { n[4] } else { 0 },
                })
            }),
        (any::<u16>(), short_text()).prop_map(|(c, reason)| Message::Refused(Refused {
            code: RefuseCode::from_wire(c),
            reason
        })),
    ]
}

fn rpc() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u64>(), any::<u32>(), payload()).prop_map(|(request_id, method_id, payload)| {
            Message::Request(Request {
                request_id,
                method_id,
                payload,
            })
        }),
        (any::<u64>(), payload()).prop_map(|(request_id, payload)| Message::Response(Response {
            request_id,
            payload
        })),
        (any::<u64>(), any::<u32>(), short_text()).prop_map(|(request_id, c, message)| {
            Message::ServerError(ServerError {
                request_id,
                code: ErrorCode::from_wire(c),
                message,
            })
        }),
        Just(Message::BatchBegin(BatchBegin)),
        any::<bool>()
            .prop_map(|server_batching| Message::BatchCommit(BatchCommit { server_batching })),
        any::<u64>().prop_map(|request_id| Message::Cancel(Cancel { request_id })),
    ]
}

fn push_command() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u64>(), groups())
            .prop_map(|(command_id, groups)| Message::Subscribe(Subscribe { command_id, groups })),
        (any::<u64>(), proptest::option::of(groups())).prop_map(|(command_id, g)| {
            Message::Unsubscribe(Unsubscribe {
                command_id,
                groups: g.map_or(GroupSelection::All, GroupSelection::Groups),
            })
        }),
        (any::<u64>(), groups(), payload(), compression()).prop_map(
            |(command_id, groups, payload, compression)| {
                Message::Publish(Publish {
                    command_id,
                    groups,
                    payload,
                    compression,
                })
            }
        ),
        (any::<u64>(), user_id(), payload(), compression()).prop_map(
            |(command_id, receiver, payload, compression)| {
                Message::SendUserMessage(SendUserMessage {
                    command_id,
                    receiver,
                    payload,
                    compression,
                })
            }
        ),
        any::<u64>().prop_map(|command_id| Message::ListGroups(ListGroups { command_id })),
    ]
}

fn push_event() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u64>(), sender(), groups()).prop_map(|(seq, sender, groups)| Message::Subscribed(
            Subscribed {
                seq,
                sender,
                groups
            }
        )),
        (any::<u64>(), sender(), groups()).prop_map(|(seq, sender, groups)| {
            Message::Unsubscribed(Unsubscribed {
                seq,
                sender,
                groups,
            })
        }),
        (any::<u64>(), sender(), groups(), payload(), compression()).prop_map(
            |(seq, sender, groups, payload, compression)| {
                Message::Published(Published {
                    seq,
                    sender,
                    groups,
                    payload,
                    compression,
                })
            }
        ),
        (any::<u64>(), sender(), payload(), compression()).prop_map(
            |(seq, sender, payload, compression)| Message::UserMessage(UserMessage {
                seq,
                sender,
                payload,
                compression,
            })
        ),
        (1..u64::MAX, any::<u64>()).prop_map(|(first, span)| Message::Gap(Gap {
            first,
            last: first.saturating_add(span % 1000)
        })),
        (any::<u16>(), short_text()).prop_map(|(r, text)| Message::SessionLost(SessionLost {
            reason: SessionLostReason::from_wire(r),
            text
        })),
        (any::<u64>(), any::<u16>(), groups(), short_text()).prop_map(
            |(command_id, c, groups, reason)| {
                Message::PushRejected(PushRejected {
                    command_id,
                    code: RejectCode::from_wire(c),
                    groups,
                    reason,
                })
            }
        ),
        any::<u64>().prop_map(|command_id| Message::PushTaken(PushTaken { command_id })),
        (any::<u64>(), any::<u32>()).prop_map(|(command_id, connections)| {
            Message::UserMessageDelivered(UserMessageDelivered {
                command_id,
                connections,
            })
        }),
        (
            any::<u64>(),
            proptest::collection::vec((any::<u32>(), short_text()), 0..8)
        )
            .prop_map(|(command_id, g)| Message::GroupList(GroupList {
                command_id,
                groups: g
                    .into_iter()
                    .map(|(id, description)| GroupDescription {
                        id: GroupId(id),
                        description
                    })
                    .collect(),
            })),
    ]
}

fn control() -> impl Strategy<Value = Message> {
    prop_oneof![
        any::<u64>().prop_map(|nonce| Message::Ping(Ping { nonce })),
        any::<u64>().prop_map(|nonce| Message::Pong(Pong { nonce })),
        (any::<u16>(), short_text()).prop_map(|(c, reason)| Message::Close(Close {
            code: CloseCode::from_wire(c),
            reason
        })),
        any::<u64>().prop_map(|last_seq| Message::Ack(Ack { last_seq })),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![handshake(), rpc(), push_command(), push_event(), control()]
}

/// Decodes `wire` fed in chunks of the given sizes (cycled), draining after each feed.
fn decode_in_chunks(
    wire: &[u8],
    chunks: &[usize],
    decoder: &mut FrameDecoder,
) -> Result<Vec<Message>, DecodeError> {
    let mut out = Vec::new();
    let mut rest = wire;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let mut chunk = &rest[..(*sizes.next().unwrap()).clamp(1, rest.len())];
        rest = &rest[chunk.len()..];
        while !chunk.is_empty() {
            let taken = decoder.feed(chunk);
            assert!(decoder.buffered() <= decoder.capacity_limit());
            chunk = &chunk[taken..];
            while let Some(m) = decoder.next_message()? {
                out.push(m);
            }
            if taken == 0 && !chunk.is_empty() {
                // The decoder refused bytes: it must have an error to report.
                decoder.next_message()?;
                panic!("decoder stalled without an error");
            }
        }
    }
    Ok(out)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_message_round_trips_through_any_chunking(
        messages in proptest::collection::vec(message(), 1..16),
        chunks in proptest::collection::vec(1usize..300, 1..8),
    ) {
        let mut wire = BytesMut::new();
        for m in &messages {
            let before = wire.len();
            m.encode(&mut wire);
            prop_assert_eq!(wire.len() - before, m.encoded_len());
        }
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        let decoded = decode_in_chunks(&wire, &chunks, &mut decoder).unwrap();
        prop_assert_eq!(decoded, messages);
        prop_assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn one_byte_at_a_time_gives_the_same_messages(messages in proptest::collection::vec(message(), 1..6)) {
        let mut wire = BytesMut::new();
        for m in &messages {
            m.encode(&mut wire);
        }
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        prop_assert_eq!(decode_in_chunks(&wire, &[1], &mut decoder).unwrap(), messages);
    }

    #[test]
    fn a_partial_frame_waits_without_error(m in message(), cut in any::<prop::sample::Index>()) {
        let mut wire = BytesMut::new();
        m.encode(&mut wire);
        let cut = cut.index(wire.len());
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        let mut rest = &wire[..cut];
        while !rest.is_empty() {
            let taken = decoder.feed(rest);
            prop_assert!(taken > 0);
            rest = &rest[taken..];
            prop_assert_eq!(decoder.next_message(), Ok(None));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_nor_overfill(
        garbage in proptest::collection::vec(any::<u8>(), 0..4096),
        chunks in proptest::collection::vec(1usize..64, 1..4),
    ) {
        let limits = FrameLimits::new(MIN_MAX_FRAME_SIZE).unwrap();
        let mut decoder = FrameDecoder::new(limits);
        // Any outcome is fine except a panic or buffering past the limit.
        let _ = decode_in_chunks(&garbage, &chunks, &mut decoder);
        prop_assert!(decoder.buffered() <= decoder.capacity_limit());
    }

    #[test]
    fn corrupted_frames_decode_or_fail_cleanly(
        m in message(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut wire = BytesMut::new();
        m.encode(&mut wire);
        for (at, byte) in flips {
            let i = at.index(wire.len());
            wire[i] = byte;
        }
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        let _ = decode_in_chunks(&wire, &[7], &mut decoder);
        prop_assert!(decoder.buffered() <= decoder.capacity_limit());
    }

    #[test]
    fn decoding_with_a_spare_group_list_changes_nothing_but_the_storage(
        m in message(),
        spare in proptest::collection::vec(any::<u32>().prop_map(GroupId), 0..8),
    ) {
        let mut wire = BytesMut::new();
        m.encode(&mut wire);
        let body = Bytes::copy_from_slice(&wire[FRAME_HEADER_LEN..]);
        let mut reused = spare.clone();
        let decoded = Message::decode_frame(m.kind(), m.is_compressed(), body, &mut reused).unwrap();
        prop_assert_eq!(decoded, m);
        // Either a group list took the storage, or it was left alone.
        prop_assert!(reused == spare || (reused.is_empty() && reused.capacity() == 0));
    }

    #[test]
    fn body_truncation_is_reported_not_panicked(m in message(), cut in any::<prop::sample::Index>()) {
        // Re-frame a shortened body with a consistent length prefix: the message
        // decoder itself must notice.
        let mut wire = BytesMut::new();
        m.encode(&mut wire);
        let body = &wire[FRAME_HEADER_LEN..];
        let keep = cut.index(body.len() + 1);
        let result = Message::decode_frame(
            m.kind(),
            m.is_compressed(),
            Bytes::copy_from_slice(&body[..keep]),
            &mut Vec::new(),
        );
        if keep < body.len() {
            // Messages whose last field is a payload or Hello extensions may still
            // decode, but never into the original message.
            if let Ok(decoded) = result {
                prop_assert_ne!(decoded, m);
            }
        } else {
            prop_assert_eq!(result.unwrap(), m);
        }
    }
}

#[test]
fn oversized_length_is_refused_before_the_body_arrives() {
    let limits = FrameLimits::new(MIN_MAX_FRAME_SIZE).unwrap();
    let mut decoder = FrameDecoder::new(limits);
    let mut wire = (MIN_MAX_FRAME_SIZE + 1).to_be_bytes().to_vec();
    wire.push(MessageKind::Publish as u8);
    wire.extend(std::iter::repeat_n(0u8, 10_000));
    let taken = decoder.feed(&wire);
    assert_eq!(taken, 5, "only the header is taken");
    assert_eq!(
        decoder.next_message(),
        Err(DecodeError::FrameTooLarge {
            length: MIN_MAX_FRAME_SIZE + 1,
            max: MIN_MAX_FRAME_SIZE
        })
    );
    assert_eq!(
        decoder.feed(&wire[5..]),
        0,
        "a failed decoder takes nothing"
    );
    assert!(decoder.next_message().is_err(), "the error is sticky");
    assert_eq!(
        DecodeError::FrameTooLarge { length: 1, max: 0 }.close_code(),
        CloseCode::FrameTooLarge
    );
}

#[test]
fn errors_name_what_is_wrong() {
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    decoder.feed(&[0, 0, 0, 1, 0x99]);
    let err = decoder.next_message().unwrap_err();
    assert_eq!(err, DecodeError::UnknownMessageType(0x99));
    assert_eq!(err.to_string(), "unknown message type 0x99");

    let mut decoder = FrameDecoder::new(FrameLimits::default());
    decoder.feed(&[0, 0, 0, 0]);
    assert_eq!(decoder.next_message(), Err(DecodeError::EmptyFrame));

    // A Subscribe claiming 3 groups but carrying 1.
    let mut frame = vec![0, 0, 0, 1 + 8 + 2 + 4, MessageKind::Subscribe as u8];
    frame.extend_from_slice(&[0; 8]);
    frame.extend_from_slice(&[0, 3, 0, 0, 0, 1]);
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    decoder.feed(&frame);
    let err = decoder.next_message().unwrap_err();
    assert_eq!(
        err.to_string(),
        "Subscribe frame truncated: it ends inside groups"
    );

    // A Ping with a byte too many.
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    decoder.feed(&[
        0,
        0,
        0,
        10,
        MessageKind::Ping as u8,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        9,
    ]);
    assert_eq!(
        decoder.next_message(),
        Err(DecodeError::TrailingBytes {
            kind: MessageKind::Ping,
            extra: 1
        })
    );
}

#[test]
fn text_fields_reject_bad_utf8_and_overlong_user_ids() {
    let bad_utf8 = {
        let mut b = BytesMut::new();
        Message::Close(Close {
            code: CloseCode::Normal,
            reason: Text::from("ab"),
        })
        .encode(&mut b);
        let n = b.len();
        b[n - 1] = 0xff;
        b
    };
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    decoder.feed(&bad_utf8);
    assert_eq!(
        decoder.next_message(),
        Err(DecodeError::InvalidUtf8 {
            kind: MessageKind::Close,
            field: "reason"
        })
    );

    // 256 characters is one too many for a user id, although it fits in bytes.
    let long: String = "a".repeat(256);
    let mut body = BytesMut::new();
    body.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 1, 1]);
    body.extend_from_slice(&(long.len() as u16).to_be_bytes());
    body.extend_from_slice(long.as_bytes());
    body.extend_from_slice(&[0, 0, 0]);
    assert_eq!(
        Message::decode(MessageKind::Hello, body.freeze()),
        Err(DecodeError::TooLong {
            kind: MessageKind::Hello,
            field: "user_id",
            actual: 256,
            max: MAX_USER_ID_CHARS
        })
    );
}

#[test]
fn decoded_payloads_and_texts_share_the_input_buffer() {
    let mut wire = BytesMut::new();
    Message::SendUserMessage(SendUserMessage {
        command_id: 1,
        receiver: Text::from("bob"),
        payload: Bytes::from(vec![42u8; 1000]),
        compression: None,
    })
    .encode(&mut wire);
    let body = wire.freeze().slice(FRAME_HEADER_LEN..);
    let range = body.as_ptr_range();
    let Message::SendUserMessage(m) =
        Message::decode(MessageKind::SendUserMessage, body.clone()).unwrap()
    else {
        panic!("expected a SendUserMessage");
    };
    assert_eq!(m.payload.len(), 1000);
    assert!(range.contains(&m.payload.as_ptr()), "payload was copied");
    assert!(
        range.contains(&m.receiver.as_bytes().as_ptr()),
        "receiver was copied"
    );
}

#[test]
fn publish_prefix_plus_payload_equals_the_full_encoding() {
    for compression in [None, Some(lz4(1000))] {
        let message = Publish {
            command_id: 12,
            groups: vec![GroupId(2), GroupId(3)],
            payload: Bytes::from_static(b"payload"),
            compression,
        };
        let mut full = BytesMut::new();
        Message::Publish(message.clone()).encode(&mut full);
        let mut split = BytesMut::new();
        let n = encode_publish_prefix(&mut split, 12, &message.groups, compression, 7);
        assert_eq!(n, split.len());
        split.extend_from_slice(b"payload");
        assert_eq!(split, full);
    }
}

#[test]
fn published_prefix_plus_payload_equals_the_full_encoding() {
    let sender = Sender::Peer(PeerSender {
        user_id: Text::from("alice"),
        addr: "::1".parse().unwrap(),
        port: 4000,
        service_id: 1,
        is_self: false,
        node: Some(Text::from("node-a")),
    });
    for compression in [None, Some(lz4(1000))] {
        let message = Published {
            seq: 9,
            sender: sender.clone(),
            groups: vec![GroupId(2), GroupId(3)],
            payload: Bytes::from_static(b"payload"),
            compression,
        };
        let mut full = BytesMut::new();
        Message::Published(message.clone()).encode(&mut full);
        let mut split = BytesMut::new();
        let n = encode_published_prefix(&mut split, 9, &sender, &message.groups, compression, 7);
        assert_eq!(n, split.len());
        split.extend_from_slice(b"payload");
        assert_eq!(split, full);
    }
}

#[test]
fn a_spare_group_list_is_reused_without_allocating() {
    let message = Message::Published(Published {
        seq: 1,
        sender: Sender::Server,
        groups: vec![GroupId(7)],
        payload: Bytes::from_static(b"x"),
        compression: None,
    });
    let mut wire = BytesMut::new();
    message.encode(&mut wire);
    let body = wire.split_off(FRAME_HEADER_LEN).freeze();
    let mut spare = Vec::with_capacity(4);
    spare.push(GroupId(99));
    let storage = spare.as_ptr();
    match Message::decode_reusing(MessageKind::Published, body, &mut spare).unwrap() {
        Message::Published(p) => {
            assert_eq!(p.groups, vec![GroupId(7)]);
            assert_eq!(p.groups.as_ptr(), storage);
        }
        other => panic!("decoded {other:?}"),
    }
    assert_eq!(spare.capacity(), 0);
}

fn lz4(original_len: u32) -> Compression {
    Compression {
        algorithm: CompressionAlgorithm::Lz4Block,
        original_len,
    }
}

// ---------------------------------------------------------------------------------
// Compressed payloads (PROTOCOL.md section 3.1).
// ---------------------------------------------------------------------------------

/// Payloads that compress (text-like, repetitive) and payloads that do not (random).
fn compressible_payload() -> impl Strategy<Value = Vec<u8>> {
    let words = proptest::collection::vec(
        prop::sample::select(vec![
            &b"the "[..],
            b"quick ",
            b"brown ",
            b"fox ",
            b"{\"id\":",
            b"\"name\":\"",
            b"\"},",
            b"0123",
            b"\n",
        ]),
        0..3000,
    )
    .prop_map(|words| words.concat());
    prop_oneof![
        3 => words,
        1 => proptest::collection::vec(any::<u8>(), 0..5000),
        1 => (any::<u8>(), 0usize..100_000).prop_map(|(b, n)| vec![b; n]),
    ]
}

/// One of the four payload messages, its payload compressed.
fn compressed_message(
    kind: usize,
    compressed: CompressedPayload,
    seq_or_id: u64,
    sender: Sender,
    groups: Vec<GroupId>,
) -> Message {
    let CompressedPayload {
        compression,
        data: payload,
    } = compressed;
    let compression = Some(compression);
    match kind % 4 {
        0 => Message::Publish(Publish {
            command_id: seq_or_id,
            groups,
            payload,
            compression,
        }),
        1 => Message::SendUserMessage(SendUserMessage {
            command_id: seq_or_id,
            receiver: Text::from("bob"),
            payload,
            compression,
        }),
        2 => Message::Published(Published {
            seq: seq_or_id,
            sender,
            groups,
            payload,
            compression,
        }),
        _ => Message::UserMessage(UserMessage {
            seq: seq_or_id,
            sender,
            payload,
            compression,
        }),
    }
}

/// The payload field of a decoded payload message.
fn payload_of(m: &Message) -> (Bytes, Option<Compression>) {
    match m {
        Message::Publish(p) => (p.payload.clone(), p.compression),
        Message::SendUserMessage(p) => (p.payload.clone(), p.compression),
        Message::Published(p) => (p.payload.clone(), p.compression),
        Message::UserMessage(p) => (p.payload.clone(), p.compression),
        other => panic!("not a payload message: {other:?}"),
    }
}

proptest! {
    #![proptest_config(config())]

    /// Compress, frame, decode through any chunking, decompress: the original bytes,
    /// and the frame's type byte carries the compressed bit.
    #[test]
    fn compressed_payloads_round_trip_through_the_codec(
        original in compressible_payload(),
        kind in 0usize..4,
        seq in any::<u64>(),
        sender in sender(),
        groups in groups(),
        chunks in proptest::collection::vec(1usize..300, 1..8),
    ) {
        let compressed = compress(CompressionAlgorithm::Lz4Block, &original).unwrap();
        prop_assert_eq!(compressed.compression.original_len as usize, original.len());
        let message = compressed_message(kind, compressed, seq, sender, groups);
        let mut wire = BytesMut::new();
        message.encode(&mut wire);
        prop_assert_eq!(wire.len(), message.encoded_len());
        prop_assert_eq!(wire[4], message.kind() as u8 | COMPRESSED_TYPE_BIT);
        prop_assert!(message.is_compressed());
        let limits = FrameLimits::new(HARD_MAX_FRAME_SIZE).unwrap();
        let mut decoder = FrameDecoder::new(limits);
        let decoded = decode_in_chunks(&wire, &chunks, &mut decoder).unwrap();
        prop_assert_eq!(&decoded, &vec![message]);
        let (data, compression) = payload_of(&decoded[0]);
        let plain = decompress(compression.unwrap(), &data, original.len()).unwrap();
        prop_assert_eq!(&plain[..], &original[..]);
    }

    /// A declared size over the limit is refused whatever follows, before anything
    /// is decompressed; a declared size within it either decompresses to exactly
    /// that many bytes or is reported corrupt. Never a panic.
    #[test]
    fn compression_bombs_and_garbage_are_refused_cleanly(
        data in proptest::collection::vec(any::<u8>(), 0..2000),
        original_len in prop_oneof![0u32..5000, any::<u32>()],
        limit in 0usize..10_000,
    ) {
        let compression = lz4(original_len);
        match decompress(compression, &data, limit) {
            Ok(plain) => {
                prop_assert!(original_len as usize <= limit);
                prop_assert_eq!(plain.len(), original_len as usize);
            }
            Err(CompressionError::TooLarge { original_len: declared, limit: l }) => {
                prop_assert_eq!((declared, l), (original_len, limit));
                prop_assert!(original_len as usize > limit);
            }
            Err(CompressionError::Corrupt { original_len: declared, .. }) => {
                prop_assert_eq!(declared, original_len);
                prop_assert!(original_len as usize <= limit);
            }
        }
    }

    /// Real compressed data that decompresses far beyond the limit (a bomb: highly
    /// repetitive bytes) is refused from its header alone; with its true size and a
    /// limit that allows it, the same bytes decompress.
    #[test]
    fn a_real_bomb_is_refused_by_its_declared_size(byte in any::<u8>(), len in 10_000usize..2_000_000) {
        let bomb = compress(CompressionAlgorithm::Lz4Block, &vec![byte; len]).unwrap();
        prop_assert!(bomb.data.len() * 100 < len, "LZ4 packs a run tightly");
        let limit = len - 1;
        prop_assert_eq!(
            decompress(bomb.compression, &bomb.data, limit),
            Err(CompressionError::TooLarge { original_len: len as u32, limit })
        );
        // Lying about the size to get under the limit does not work either.
        let lie = lz4(limit as u32);
        let is_corrupt = matches!(
            decompress(lie, &bomb.data, limit),
            Err(CompressionError::Corrupt { .. })
        );
        prop_assert!(is_corrupt);
        prop_assert_eq!(decompress(bomb.compression, &bomb.data, len).unwrap().len(), len);
    }
}

#[test]
fn an_unknown_algorithm_is_refused() {
    for code in [0u8, 2, 0xff] {
        // A compressed UserMessage from the server sender, algorithm `code`.
        let frame = [
            0, 0, 0, 16, 0xb3, 0, 0, 0, 0, 0, 0, 0, 1, 0x00, code, 0, 0, 0, 4, 0xaa,
        ];
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        decoder.feed(&frame);
        assert_eq!(
            decoder.next_message(),
            Err(DecodeError::InvalidValue {
                kind: MessageKind::UserMessage,
                field: "compression algorithm",
                value: code.into(),
            })
        );
    }
}

#[test]
fn the_compressed_bit_on_any_other_type_is_an_unknown_type() {
    for &kind in MessageKind::ALL {
        if kind.allows_compression() {
            continue;
        }
        let byte = kind as u8 | COMPRESSED_TYPE_BIT;
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        decoder.feed(&[0, 0, 0, 1, byte]);
        assert_eq!(
            decoder.next_message(),
            Err(DecodeError::UnknownMessageType(byte)),
            "{kind}"
        );
    }
}

#[test]
fn a_compressed_frame_too_short_for_its_header_is_truncated() {
    // A compressed Published from the server sender with no group, then only 3 of
    // the 5 header bytes.
    let frame = [
        0, 0, 0, 15, 0xb2, 0, 0, 0, 0, 0, 0, 0, 1, 0x00, 0, 0, 1, 0, 0,
    ];
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    decoder.feed(&frame);
    assert_eq!(
        decoder.next_message(),
        Err(DecodeError::Truncated {
            kind: MessageKind::Published,
            field: "original_len",
        })
    );
}
