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

fn groups() -> impl Strategy<Value = Vec<GroupId>> {
    proptest::collection::vec(any::<u32>().prop_map(GroupId), 0..12)
}

fn sender() -> impl Strategy<Value = Sender> {
    prop_oneof![
        1 => Just(Sender::Server),
        4 => (user_id(), any::<IpAddr>(), any::<u16>(), any::<u32>(), any::<bool>()).prop_map(
            |(user_id, addr, port, service_id, is_self)| {
                Sender::Peer(PeerSender { user_id, addr, port, service_id, is_self })
            }
        ),
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
            any::<bool>(),
            user_id(),
            proptest::collection::vec(any::<u8>(), 0..=MAX_PASSWORD_BYTES),
            resume()
        )
            .prop_map(|(a, b, service_id, echo, user_id, password, resume)| {
                Message::Hello(Hello {
                    min_version: a.min(b),
                    max_version: a.max(b),
                    service_id,
                    options: ClientOptions { echo },
                    user_id,
                    password: password.into(),
                    resume,
                })
            }),
        (
            any::<u16>(),
            any::<u64>(),
            any::<[u8; 16]>(),
            any::<bool>(),
            any::<[u32; 4]>()
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
        (any::<u64>(), groups(), payload()).prop_map(|(command_id, groups, payload)| {
            Message::Publish(Publish {
                command_id,
                groups,
                payload,
            })
        }),
        (any::<u64>(), user_id(), payload()).prop_map(|(command_id, receiver, payload)| {
            Message::SendUserMessage(SendUserMessage {
                command_id,
                receiver,
                payload,
            })
        }),
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
        (any::<u64>(), sender(), groups(), payload()).prop_map(|(seq, sender, groups, payload)| {
            Message::Published(Published {
                seq,
                sender,
                groups,
                payload,
            })
        }),
        (any::<u64>(), sender(), payload()).prop_map(
            |(seq, sender, payload)| Message::UserMessage(UserMessage {
                seq,
                sender,
                payload
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
        let decoded = Message::decode_reusing(m.kind(), body, &mut reused).unwrap();
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
        let result = Message::decode(m.kind(), Bytes::copy_from_slice(&body[..keep]));
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
    let message = Publish {
        command_id: 12,
        groups: vec![GroupId(2), GroupId(3)],
        payload: Bytes::from_static(b"payload"),
    };
    let mut full = BytesMut::new();
    Message::Publish(message.clone()).encode(&mut full);
    let mut split = BytesMut::new();
    let n = encode_publish_prefix(&mut split, 12, &message.groups, 7);
    assert_eq!(n, split.len());
    split.extend_from_slice(b"payload");
    assert_eq!(split, full);
}

#[test]
fn published_prefix_plus_payload_equals_the_full_encoding() {
    let sender = Sender::Peer(PeerSender {
        user_id: Text::from("alice"),
        addr: "::1".parse().unwrap(),
        port: 4000,
        service_id: 1,
        is_self: false,
    });
    let message = Published {
        seq: 9,
        sender: sender.clone(),
        groups: vec![GroupId(2), GroupId(3)],
        payload: Bytes::from_static(b"payload"),
    };
    let mut full = BytesMut::new();
    Message::Published(message.clone()).encode(&mut full);
    let mut split = BytesMut::new();
    let n = encode_published_prefix(&mut split, 9, &sender, &message.groups, 7);
    assert_eq!(n, split.len());
    split.extend_from_slice(b"payload");
    assert_eq!(split, full);
}

#[test]
fn a_spare_group_list_is_reused_without_allocating() {
    let message = Message::Published(Published {
        seq: 1,
        sender: Sender::Server,
        groups: vec![GroupId(7)],
        payload: Bytes::from_static(b"x"),
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
