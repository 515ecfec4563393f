//! The client engine's push traffic. Events as the application sees them: in order,
//! each before the end of the connection, acknowledged once per input, and none
//! after a frame that broke the connection. Publications as the server sees them:
//! the same frames from `publish` as from `push`. The client is fed scripted server
//! bytes (plaintext), so each test controls exactly what arrives in one input.

use bytes::{Bytes, BytesMut};
use pushwire_engine::client::{
    ClientConfig, ClientConnection, ClientError, ClientEvent, ClientTransport, PushCommand,
};
use pushwire_engine::{CloseReason, ProtocolError};
use pushwire_protocol::{
    Close, CloseCode, FrameDecoder, FrameLimits, GroupId, Message, MessageKind, PeerSender,
    Publish, Published, ResumeToken, Sender, Text, Welcome, DEFAULT_MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

mod common;
use common::wall_clock;

fn encode(messages: &[Message]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for m in messages {
        m.encode(&mut out);
    }
    out.to_vec()
}

fn published(seq: u64) -> Message {
    Message::Published(Published {
        seq,
        sender: Sender::Peer(PeerSender {
            user_id: Text::from("bob"),
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 4000,
            service_id: 1,
            is_self: false,
            node: None,
        }),
        groups: vec![GroupId(1)],
        payload: Bytes::from(seq.to_be_bytes().to_vec()),
        compression: None,
    })
}

/// A plaintext client that has sent its Hello and received a Welcome.
struct Client {
    now: Instant,
    engine: ClientConnection,
}

impl Client {
    fn ready() -> Self {
        let now = Instant::now();
        let config = ClientConfig::new(ClientTransport::Plaintext, "alice", b"pw");
        let engine = ClientConnection::new(config, now, wall_clock()).unwrap();
        let mut client = Self { now, engine };
        client.transmit();
        let welcome = Message::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            session_id: 1,
            resume_token: ResumeToken([1; 16]),
            resumed: false,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            ping_interval_ms: 0,
            session_timeout_ms: 0,
            replay_capacity: 1024,
            idle_timeout_ms: 0,
        });
        client.engine.handle_input(now, &encode(&[welcome]));
        assert!(matches!(client.events()[..], [ClientEvent::Ready(_)]));
        client
    }

    fn events(&mut self) -> Vec<ClientEvent> {
        std::iter::from_fn(|| self.engine.poll_event()).collect()
    }

    /// The messages the client sent since the last call.
    fn transmit(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        self.engine.poll_transmit(self.now, &mut out);
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        let mut input = &out[..];
        let mut messages = Vec::new();
        while !input.is_empty() {
            let taken = decoder.feed(input);
            input = &input[taken..];
            while let Some(m) = decoder.next_message().unwrap() {
                messages.push(m);
            }
        }
        messages
    }
}

fn seqs(events: &[ClientEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Push(Message::Published(p)) => Some(p.seq),
            _ => None,
        })
        .collect()
}

fn acks(messages: &[Message]) -> Vec<u64> {
    messages
        .iter()
        .filter_map(|m| match m {
            Message::Ack(a) => Some(a.last_seq),
            _ => None,
        })
        .collect()
}

#[test]
fn one_ack_covers_every_event_of_an_input() {
    let mut client = Client::ready();
    let input: Vec<Message> = (1..=100).map(published).collect();
    client.engine.handle_input(client.now, &encode(&input));
    let events = client.events();
    assert_eq!(seqs(&events), (1..=100).collect::<Vec<_>>());
    assert_eq!(client.engine.last_seq(), 100);
    assert_eq!(acks(&client.transmit()), vec![100]);

    // Too few to be worth an Ack on their own: they wait for the next ones.
    let input: Vec<Message> = (101..=110).map(published).collect();
    client.engine.handle_input(client.now, &encode(&input));
    assert_eq!(seqs(&client.events()).len(), 10);
    assert_eq!(acks(&client.transmit()), Vec::<u64>::new());
}

#[test]
fn events_that_arrive_with_a_close_come_before_closed() {
    let mut client = Client::ready();
    let mut input: Vec<Message> = (1..=3).map(published).collect();
    input.push(Message::Close(Close {
        code: CloseCode::Normal,
        reason: Text::from("bye"),
    }));
    client.engine.handle_input(client.now, &encode(&input));
    client.transmit();
    let events = client.events();
    assert_eq!(seqs(&events), vec![1, 2, 3]);
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(
        events.last(),
        Some(&ClientEvent::Closed(CloseReason::Remote {
            code: CloseCode::Normal,
            reason: Text::from("bye"),
        }))
    );
}

#[test]
fn events_received_before_the_transport_ended_are_all_delivered() {
    let mut client = Client::ready();
    let input: Vec<Message> = (1..=3).map(published).collect();
    client.engine.handle_input(client.now, &encode(&input));
    // The application had not polled yet when the connection dropped.
    client.engine.handle_transport_closed();
    let events = client.events();
    assert_eq!(seqs(&events), vec![1, 2, 3]);
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(
        events.last(),
        Some(&ClientEvent::Closed(CloseReason::PeerClosed))
    );
    assert_eq!(client.engine.last_seq(), 3);
}

#[test]
fn nothing_after_a_malformed_push_event_is_delivered() {
    let mut client = Client::ready();
    let mut bytes = encode(&[published(1)]);
    // A Published whose body is too short for its sequence number.
    bytes.extend_from_slice(&[0, 0, 0, 3, MessageKind::Published as u8, 0, 0]);
    bytes.extend_from_slice(&encode(&[published(3)]));
    client.engine.handle_input(client.now, &bytes);
    let mut events = client.events();
    client.transmit();
    events.extend(client.events());
    assert_eq!(seqs(&events), vec![1], "{events:?}");
    assert!(
        matches!(
            events.last(),
            Some(ClientEvent::Closed(CloseReason::Protocol(
                ProtocolError::Decode(_)
            )))
        ),
        "{events:?}"
    );
    assert_eq!(client.engine.last_seq(), 1);
}

#[test]
fn a_recycled_group_list_holds_the_next_event_s_groups() {
    let mut client = Client::ready();
    client
        .engine
        .handle_input(client.now, &encode(&[published(1), published(2)]));
    let Some(ClientEvent::Push(Message::Published(first))) = client.engine.poll_event() else {
        panic!("no publication");
    };
    let storage = first.groups.as_ptr();
    client.engine.recycle_groups(first.groups);
    let Some(ClientEvent::Push(Message::Published(second))) = client.engine.poll_event() else {
        panic!("no publication");
    };
    assert_eq!(second.seq, 2);
    assert_eq!(second.groups, vec![GroupId(1)]);
    assert_eq!(second.groups.as_ptr(), storage);
}

#[test]
fn publish_sends_what_push_sends() {
    let mut client = Client::ready();
    let groups = [GroupId(1), GroupId(5)];
    let first = client
        .engine
        .push(PushCommand::Publish {
            groups: groups.to_vec(),
            payload: Bytes::from_static(b"one"),
        })
        .unwrap();
    let second = client.engine.publish(&groups, b"two").unwrap();
    assert_eq!(second, first + 1);
    assert_eq!(
        client.transmit(),
        vec![
            Message::Publish(Publish {
                command_id: first,
                groups: groups.to_vec(),
                payload: Bytes::from_static(b"one"),
                compression: None,
            }),
            Message::Publish(Publish {
                command_id: second,
                groups: groups.to_vec(),
                payload: Bytes::from_static(b"two"),
                compression: None,
            }),
        ]
    );

    // In a batch, it waits for the commit like any push command.
    client.engine.start_batch().unwrap();
    let third = client.engine.publish(&groups, b"three").unwrap();
    assert_eq!(client.transmit(), Vec::<Message>::new());
    client.engine.commit_batch(false).unwrap();
    let sent = client.transmit();
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert!(matches!(sent[0], Message::BatchBegin(_)));
    assert_eq!(
        sent[1],
        Message::Publish(Publish {
            command_id: third,
            groups: groups.to_vec(),
            payload: Bytes::from_static(b"three"),
            compression: None,
        })
    );
    assert!(matches!(sent[2], Message::BatchCommit(_)));

    // Over the server's frame limit: refused, and nothing is sent.
    let payload = vec![0u8; DEFAULT_MAX_FRAME_SIZE as usize];
    assert_eq!(
        client.engine.publish(&groups, &payload),
        Err(ClientError::TooLarge {
            size: 1 + 8 + 2 + 8 + payload.len(),
            max: DEFAULT_MAX_FRAME_SIZE,
        })
    );
    assert_eq!(client.transmit(), Vec::<Message>::new());
}
