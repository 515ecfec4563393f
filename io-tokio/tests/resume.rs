//! Session resume and slow consumers over real sockets: a proxy between client and
//! server cuts the connection on demand.

use bytes::Bytes;
use pushwire_engine::hub::SlowConsumerPolicy;
use pushwire_protocol::{CloseCode, FrameDecoder, GroupId, Message};
use pushwire_tokio::client::{Client, ConnectionContext, Event, EventStream, Reconnect, Trust};
use pushwire_tokio::server::{AuthDecision, FlowControl, Server, ServerBuilder};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards TCP connections to `target`; `cut()` drops every current connection.
struct Proxy {
    addr: SocketAddr,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    _accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accepted = links.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let link = tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::io::copy(&mut cr, &mut sw);
                    let down = tokio::io::copy(&mut sr, &mut cw);
                    let _ = tokio::join!(up, down);
                });
                accepted.lock().unwrap().push(link);
            }
        });
        Proxy {
            addr,
            links,
            _accept: accept,
        }
    }

    /// Drops every connection through the proxy, like a network failure: both ends
    /// see their socket close, nobody says goodbye.
    fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

fn builder() -> ServerBuilder {
    ServerBuilder::new()
        .plaintext()
        .group(1, "one")
        .authenticator(|_: &pushwire_tokio::server::AuthAttempt<'_>| AuthDecision::Permit)
}

fn context(addr: SocketAddr, user: &str) -> ConnectionContext {
    let mut cc = ConnectionContext::new("127.0.0.1", addr.port(), user, "pw");
    cc.trust = Trust::Plaintext;
    cc.reconnect = Some(Reconnect {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
        jitter_seed: 7,
    });
    cc
}

async fn next<T>(events: &mut EventStream, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = events.recv().await.expect("events ended");
            if let Some(t) = pick(&event) {
                return t;
            }
        }
    })
    .await
    .expect("timed out waiting for an event")
}

fn publication(event: &Event) -> Option<(u64, String)> {
    match event {
        Event::Published { seq, message, .. } => {
            Some((*seq, String::from_utf8_lossy(message).into_owned()))
        }
        _ => None,
    }
}

#[tokio::test]
async fn a_dropped_connection_resumes_its_session_and_gets_what_it_missed() {
    let server = builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let proxy = Proxy::start(server.local_addr().unwrap()).await;
    let (client, mut events) = Client::connect(context(proxy.addr, "alice")).await.unwrap();
    client.subscribe(&[1]).await.unwrap();
    next(&mut events, |e| {
        matches!(e, Event::Subscribed { .. }).then_some(())
    })
    .await;
    server.handle().publish(&[1], "before").unwrap();
    assert_eq!(next(&mut events, publication).await.1, "before");

    proxy.cut();
    next(&mut events, |e| {
        matches!(e, Event::Disconnected(_)).then_some(())
    })
    .await;
    // Published while alice is away: kept in her session's replay buffer.
    for n in 0..5 {
        server.handle().publish(&[1], format!("away {n}")).unwrap();
    }
    let resumed = next(&mut events, |e| match e {
        Event::Reconnected { resumed } => Some(*resumed),
        _ => None,
    })
    .await;
    assert!(resumed, "the server kept the session");
    server.handle().publish(&[1], "after").unwrap();
    let mut got = Vec::new();
    while got.len() < 6 {
        got.push(next(&mut events, publication).await);
    }
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (3..=8).collect::<Vec<u64>>(),
        "no loss, no duplicate, in order"
    );
    assert_eq!(got[5].1, "after");
    // The other members never saw alice leave.
    assert_eq!(server.handle().connection_count(), 1);
    client.close();
}

#[tokio::test]
async fn an_expired_session_is_reported_lost_and_the_client_rejoins_its_groups() {
    let server = builder()
        .session_timeout(Duration::from_millis(50))
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let proxy = Proxy::start(server.local_addr().unwrap()).await;
    let mut cc = context(proxy.addr, "alice");
    cc.reconnect = Some(Reconnect {
        initial: Duration::from_millis(300),
        max: Duration::from_millis(300),
        jitter_seed: 1,
    });
    let (client, mut events) = Client::connect(cc).await.unwrap();
    client.subscribe(&[1]).await.unwrap();
    next(&mut events, |e| {
        matches!(e, Event::Subscribed { .. }).then_some(())
    })
    .await;
    proxy.cut();
    next(&mut events, |e| {
        matches!(e, Event::Reconnected { resumed: false }).then_some(())
    })
    .await;
    next(&mut events, |e| {
        matches!(e, Event::SessionLost { .. }).then_some(())
    })
    .await;
    // The client re-subscribed by itself.
    let groups = next(&mut events, |e| match e {
        Event::Subscribed { sender, groups, .. } if sender.is_self() => Some(groups.clone()),
        _ => None,
    })
    .await;
    assert_eq!(groups, [GroupId(1)]);
    server.handle().publish(&[1], "new session").unwrap();
    assert_eq!(
        next(&mut events, publication).await,
        (2, "new session".to_owned())
    );
    client.close();
}

#[tokio::test]
async fn a_publish_while_disconnected_is_queued_and_sent_after_the_reconnect() {
    let server = builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let proxy = Proxy::start(server.local_addr().unwrap()).await;
    let (alice, mut alice_events) = Client::connect(context(proxy.addr, "alice")).await.unwrap();
    let (bob, mut bob_events) = Client::connect(context(server.local_addr().unwrap(), "bob"))
        .await
        .unwrap();
    bob.subscribe(&[1]).await.unwrap();
    next(&mut bob_events, |e| {
        matches!(e, Event::Subscribed { .. }).then_some(())
    })
    .await;
    proxy.cut();
    next(&mut alice_events, |e| {
        matches!(e, Event::Disconnected(_)).then_some(())
    })
    .await;
    let queued = alice.publish(&[1], "sent later");
    let request = alice.request(1, Bytes::from_static(b"x")).await;
    assert!(
        request.is_err(),
        "a request while disconnected fails at once"
    );
    queued.await.unwrap();
    assert_eq!(next(&mut bob_events, publication).await.1, "sent later");
}

/// Connects a plaintext client by hand, says Hello, subscribes to group 1, and then
/// reads nothing more.
async fn stalled_client(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut out = bytes::BytesMut::new();
    Message::Hello(pushwire_protocol::Hello {
        min_version: 1,
        max_version: 1,
        service_id: 1,
        options: Default::default(),
        user_id: "slow".into(),
        password: Bytes::from_static(b"pw"),
        resume: None,
        max_frame_size: None,
    })
    .encode(&mut out);
    stream.write_all(&out).await.unwrap();
    // Wait for the Welcome: commands may only follow it.
    let mut decoder = FrameDecoder::new(Default::default());
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before Welcome");
        decoder.feed(&buf[..n]);
        if let Ok(Some(Message::Welcome(_))) = decoder.next_message() {
            break;
        }
    }
    out.clear();
    Message::Subscribe(pushwire_protocol::Subscribe {
        command_id: 1,
        groups: vec![GroupId(1)],
    })
    .encode(&mut out);
    stream.write_all(&out).await.unwrap();
    stream
}

async fn read_all(stream: &mut TcpStream) -> Vec<Message> {
    let mut decoder = FrameDecoder::new(Default::default());
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    loop {
        let n = match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await
        {
            Ok(Ok(n)) if n > 0 => n,
            _ => return out,
        };
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let taken = decoder.feed(rest);
            rest = &rest[taken..];
            while let Ok(Some(m)) = decoder.next_message() {
                out.push(m);
            }
        }
    }
}

/// Publications to group 1 while the stalled client reads nothing: far more than the
/// kernel's socket buffers plus the server's 64 KiB queue limit.
const FLOOD: u64 = 20_000;

async fn flood(server: &Server) {
    for _ in 0..FLOOD {
        server.handle().publish(&[1], vec![b'x'; 1000]).unwrap();
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_slow_consumer_is_closed_with_its_own_reason_and_keeps_its_session() {
    let server = builder()
        .max_outbound_bytes(64 * 1024)
        .replay_buffer(1024, 32 * 1024)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut stalled = stalled_client(server.local_addr().unwrap()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    flood(&server).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let messages = read_all(&mut stalled).await;
    let close = messages.iter().find_map(|m| match m {
        Message::Close(c) => Some(c.code),
        _ => None,
    });
    assert_eq!(
        close,
        Some(CloseCode::SlowConsumer),
        "the stalled client is told why"
    );
    // Its session is detached, not ended: still a member, resumable.
    assert!(server.handle().is_online("slow"));
}

#[tokio::test]
async fn the_drop_oldest_policy_keeps_the_connection_and_reports_a_gap() {
    let server = builder()
        .max_outbound_bytes(64 * 1024)
        .replay_buffer(1024, 32 * 1024)
        .slow_consumer_policy(SlowConsumerPolicy::DropOldest)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut stalled = stalled_client(server.local_addr().unwrap()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    flood(&server).await;
    let messages = read_all(&mut stalled).await;
    assert!(
        !messages.iter().any(|m| matches!(m, Message::Close(_))),
        "the connection stays"
    );
    let gap = messages.iter().find_map(|m| match m {
        Message::Gap(g) => Some((g.first, g.last)),
        _ => None,
    });
    let (first, last) = gap.expect("a Gap stands for the dropped events");
    // Sequence numbers delivered plus the gap cover everything exactly once.
    let mut seqs: Vec<u64> = messages
        .iter()
        .filter_map(|m| match m {
            Message::Published(p) => Some(p.seq),
            Message::Subscribed(p) => Some(p.seq),
            _ => None,
        })
        .collect();
    seqs.extend(first..=last);
    seqs.sort();
    assert_eq!(seqs, (1..=FLOOD + 1).collect::<Vec<u64>>());
}

#[tokio::test]
async fn a_client_that_says_goodbye_ends_its_session_at_once() {
    let server = builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let (alice, mut alice_events) = Client::connect(context(addr, "alice")).await.unwrap();
    let (bob, mut bob_events) = Client::connect(context(addr, "bob")).await.unwrap();
    alice.subscribe(&[1]).await.unwrap();
    next(&mut alice_events, |e| {
        matches!(e, Event::Subscribed { .. }).then_some(())
    })
    .await;
    bob.subscribe(&[1]).await.unwrap();
    next(&mut bob_events, |e| {
        matches!(e, Event::Subscribed { sender, .. } if sender.is_self()).then_some(())
    })
    .await;
    alice.close();
    // Well inside the 30 s session timeout: a goodbye is not a drop.
    let left = tokio::time::timeout(
        Duration::from_secs(2),
        next(&mut bob_events, |e| match e {
            Event::Unsubscribed {
                sender: pushwire_protocol::Sender::Peer(p),
                ..
            } if p.user_id == "alice" => Some(()),
            _ => None,
        }),
    )
    .await;
    assert!(left.is_ok(), "bob was not told at once that alice left");
    assert!(!server.handle().is_online("alice"));
}

/// Flow control over real sockets: one subscriber reads, one never does. The reader
/// gets every publication with no gap and no disconnect; the frozen one holds the
/// publisher back for at most the grace, then is cut as a slow consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_flow_control_a_reader_gets_everything_and_a_frozen_subscriber_is_cut_after_the_grace()
{
    const MESSAGES: usize = 20_000;
    let grace = Duration::from_secs(1);
    let server = builder()
        .flow_control(Some(FlowControl {
            high_water: 256 * 1024,
            low_water: 64 * 1024,
            grace,
        }))
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let mut stalled = stalled_client(addr).await;
    let (reader, mut reader_events) = Client::connect(context(addr, "reader")).await.unwrap();
    reader.subscribe(&[1]).await.unwrap();
    let mut cc = context(addr, "publisher");
    cc.echo = false;
    let (publisher, _publisher_events) = Client::connect(cc).await.unwrap();

    let started = std::time::Instant::now();
    // Pipelined, as a throughput-minded application would: each publish resolves
    // when the server has taken it, and the client's send window bounds how many
    // are in flight.
    let publishing = tokio::spawn(async move {
        let mut in_flight = std::collections::VecDeque::new();
        for _ in 0..MESSAGES {
            in_flight.push_back(publisher.publish(&[1], vec![b'x'; 1000]));
            if in_flight.len() > 256 {
                in_flight.pop_front().unwrap().await.unwrap();
            }
        }
        for publication in in_flight {
            publication.await.unwrap();
        }
        publisher
    });
    let mut received = 0;
    while received < MESSAGES {
        let event = tokio::time::timeout(Duration::from_secs(20), reader_events.recv())
            .await
            .expect("the reader waited 20 s for a publication")
            .expect("events ended");
        match event {
            Event::Published { message, .. } => {
                assert_eq!(message.len(), 1000);
                received += 1;
            }
            Event::Subscribed { .. } => {}
            other => panic!("the reader got {other:?} after {received} publications"),
        }
    }
    let _publisher = publishing.await.unwrap();
    let stats = server.handle().stats();
    assert!(stats.publishers_held >= 1, "{stats:?}");
    assert!(stats.congestions_expired >= 1, "{stats:?}");
    assert!(
        started.elapsed() >= grace,
        "the publisher was held for the grace"
    );

    let messages = read_all(&mut stalled).await;
    let close = messages.iter().find_map(|m| match m {
        Message::Close(c) => Some(c.code),
        _ => None,
    });
    assert_eq!(close, Some(CloseCode::SlowConsumer));
    assert!(server.handle().is_online("slow"), "its session is kept");
}
