//! The server and client over real loopback sockets.

mod common;

use common::{cert, next_event as next};

use bytes::Bytes;
use pushwire_engine::CloseReason;
use pushwire_protocol::{CloseCode, GroupId, RefuseCode, Sender};
use pushwire_tokio::client::{
    Client, ClientBuilder, ConnectError, ConnectionContext, Event, EventStream, Trust,
};
use pushwire_tokio::hello::{self, hello_world_service, HELLO_WORLD_SERVICE};
use pushwire_tokio::server::{AuthDecision, Server, ServerBuilder};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn builder(cert_file: &str, key_file: &str, attempts: Arc<AtomicUsize>) -> ServerBuilder {
    let password = (key_file == "server.key.pem").then_some("mypassword");
    ServerBuilder::new()
        .tls_from_pem(&cert(cert_file), &cert(key_file), password)
        .unwrap()
        .group(1, "R&D Department")
        .group(2, "Sales Department")
        .group(3, "Management Department")
        .auto_subscribe([1, 3])
        .service(HELLO_WORLD_SERVICE, hello_world_service())
        .authenticator(move |attempt: &pushwire_tokio::server::AuthAttempt<'_>| {
            attempts.fetch_add(1, Ordering::SeqCst);
            if attempt.password == b"MyPassword" {
                AuthDecision::Permit
            } else {
                AuthDecision::bad_credentials()
            }
        })
}

async fn start() -> (Server, Arc<AtomicUsize>) {
    let attempts = Arc::new(AtomicUsize::new(0));
    let server = builder("server.cert.pem", "server.key.pem", attempts.clone())
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    (server, attempts)
}

fn context(server: &Server, user: &str, password: &str) -> ConnectionContext {
    let addr = server.local_addr().unwrap();
    let mut cc = ConnectionContext::new("localhost", addr.port(), user, password);
    cc.trust = Trust::CaFiles(vec![cert("ca.cert.pem")]);
    cc
}

async fn connect(server: &Server, user: &str) -> (Client, EventStream) {
    Client::connect(context(server, user, "MyPassword"))
        .await
        .unwrap()
}

fn published(event: &Event) -> Option<(String, Vec<GroupId>, String, bool)> {
    match event {
        Event::Published {
            sender,
            groups,
            message,
            ..
        } => Some((
            match sender {
                Sender::Peer(p) => p.user_id.to_string(),
                Sender::Server => "<server>".into(),
            },
            groups.clone(),
            String::from_utf8_lossy(message).into_owned(),
            sender.is_self(),
        )),
        _ => None,
    }
}

#[tokio::test]
async fn the_tutorial_flow_end_to_end() {
    let (server, _) = start().await;
    let (alice, mut alice_events) = connect(&server, "alice").await;
    // Figure 6: the server subscribed alice to 1 and 3 on arrival.
    let groups = next(&mut alice_events, |e| match e {
        Event::Subscribed { sender, groups, .. } if sender.is_self() => Some(groups.clone()),
        _ => None,
    })
    .await;
    assert_eq!(groups, [GroupId(1), GroupId(3)]);

    let (bob, mut bob_events) = connect(&server, "bob").await;
    // alice sees bob join the groups they share.
    let (who, shared) = next(&mut alice_events, |e| match e {
        Event::Subscribed {
            sender: Sender::Peer(p),
            groups,
            ..
        } if !p.is_self => Some((p.user_id.to_string(), groups.clone())),
        _ => None,
    })
    .await;
    assert_eq!(
        (who.as_str(), shared),
        ("bob", vec![GroupId(1), GroupId(3)])
    );

    // Figure 10: a batch of say_hello, a publish to [1, 2], sleep, and a user message.
    let batch = alice.start_batching();
    let hello_reply = alice.request(hello::SAY_HELLO, hello::say_hello_args("Jack", "Smith"));
    let publish = alice.publish(&[1, 2], "We are going to call the method Sleep");
    let sleep_reply = alice.request(hello::SLEEP, hello::sleep_args(10));
    let delivered = alice.send_user_message("BOB", "A message from alice");
    alice.commit_batching(false).await.unwrap();
    batch.await.unwrap();
    assert_eq!(hello_reply.await.unwrap(), Bytes::from("Hello Jack Smith"));
    publish.await.unwrap();
    sleep_reply.await.unwrap();
    assert_eq!(delivered.await.unwrap(), 1, "bob has one connection");
    alice.wait_all().await;
    assert_eq!(alice.outstanding(), 0);

    // bob is in 1 and 3: the publish to [1, 2] reaches him as [1], say_hello's
    // notification to [2, 3] as [3], both from alice; and alice's user message. The
    // handler publishes when it runs, so the order among these three may vary.
    let mut got = Vec::new();
    let mut message = None;
    while got.len() < 2 || message.is_none() {
        let event = next(&mut bob_events, |e| Some(e.clone())).await;
        if let Some(p) = published(&event) {
            got.push(p);
        } else if let Event::UserMessage {
            message: m, sender, ..
        } = event
        {
            assert!(matches!(&sender, Sender::Peer(p) if p.user_id == "alice"));
            message = Some(m);
        }
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                "alice".into(),
                vec![GroupId(1)],
                "We are going to call the method Sleep".into(),
                false
            ),
            (
                "alice".into(),
                vec![GroupId(3)],
                "Say hello from Jack Smith".into(),
                false
            ),
        ]
    );
    assert_eq!(message, Some(Bytes::from("A message from alice")));

    // The server publishes on its own.
    let outcome = server.handle().publish(&[3], "from the server").unwrap();
    assert_eq!(outcome.reached, 2);
    let (who, ..) = next(&mut bob_events, published).await;
    assert_eq!(who, "<server>");

    // An unsubscribe is seen by the other member.
    alice.unsubscribe(&[1]).await.unwrap();
    let left = next(&mut bob_events, |e| match e {
        Event::Unsubscribed {
            sender: Sender::Peer(p),
            groups,
            ..
        } if p.user_id == "alice" => Some(groups.clone()),
        _ => None,
    })
    .await;
    assert_eq!(left, [GroupId(1)]);
    assert_eq!(server.handle().groups().len(), 3);
    assert_eq!(alice.list_groups().await.unwrap().len(), 3);
    bob.close();
    alice.close();
    assert_eq!(server.shutdown().await, 0);
}

#[tokio::test]
async fn an_independent_tls_peer_completes_a_handshake_and_a_hello() {
    let (server, attempts) = start().await;
    let roots = pushwire_engine::credentials::load_root_store(&[cert("ca.cert.pem")]).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.local_addr().unwrap())
        .await
        .unwrap();
    let mut tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let mut hello = bytes::BytesMut::new();
    pushwire_protocol::Message::Hello(pushwire_protocol::Hello {
        min_version: 1,
        max_version: 1,
        service_id: HELLO_WORLD_SERVICE,
        options: Default::default(),
        user_id: "tokio-rustls".into(),
        password: Bytes::from_static(b"MyPassword"),
        resume: None,
        max_frame_size: None,
    })
    .encode(&mut hello);
    tls.write_all(&hello).await.unwrap();
    let mut decoder = pushwire_protocol::FrameDecoder::new(Default::default());
    let mut buf = [0u8; 4096];
    let welcome = loop {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0, "server closed before Welcome");
        decoder.feed(&buf[..n]);
        if let Some(m) = decoder.next_message().unwrap() {
            break m;
        }
    };
    assert!(
        matches!(welcome, pushwire_protocol::Message::Welcome(_)),
        "{welcome:?}"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_untrusted_server_never_receives_credentials() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let server = builder(
        "other-server.cert.pem",
        "other-server.key.pem",
        attempts.clone(),
    )
    .bind("127.0.0.1:0".parse().unwrap())
    .await
    .unwrap();
    let result = Client::connect(context(&server, "alice", "MyPassword")).await;
    let Err(ConnectError::Untrusted(info)) = result else {
        panic!("expected Untrusted, got {:?}", result.map(|_| ()));
    };
    assert!(!info.verdict.is_verified());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        0,
        "the server saw an authentication attempt"
    );

    // An application callback may still decide to trust it (and then it connects).
    let (client, _events) = ClientBuilder::new(context(&server, "alice", "MyPassword"))
        .server_authentication(|auth| {
            auth.certificate()
                .is_some_and(|c| c.subject.contains("localhost"))
        })
        .connect()
        .await
        .unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    client.close();
}

#[tokio::test]
async fn a_wrong_password_is_refused_with_the_reason() {
    let (server, _) = start().await;
    match Client::connect(context(&server, "alice", "wrong")).await {
        Err(ConnectError::Refused { code, reason }) => {
            assert_eq!(code, RefuseCode::BadCredentials);
            assert!(reason.as_str().contains("wrong password"), "{reason}");
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn a_slow_request_does_not_delay_push_delivery() {
    let (server, _) = start().await;
    let (alice, mut events) = connect(&server, "alice").await;
    let started = tokio::time::Instant::now();
    let slow = alice.request(hello::SLEEP, hello::sleep_args(1500));
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.handle().publish(&[1], "while you wait").unwrap();
    let (_, _, message, _) = next(&mut events, published).await;
    assert_eq!(message, "while you wait");
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "push waited for the slow request"
    );
    slow.await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test]
async fn two_hundred_clients_get_exactly_the_expected_fan_out() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let server = builder("server.cert.pem", "server.key.pem", attempts)
        .plaintext()
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut clients = Vec::new();
    for i in 0..200 {
        let mut cc = context(&server, &format!("user{i}"), "MyPassword");
        cc.trust = Trust::Plaintext;
        clients.push(Client::connect(cc).await.unwrap());
    }
    const MESSAGES: usize = 20;
    for n in 0..MESSAGES {
        server.handle().publish(&[1], format!("m{n}")).unwrap();
    }
    for (client, events) in &mut clients {
        let mut got = Vec::new();
        while got.len() < MESSAGES {
            let (_, groups, message, _) = next(events, published).await;
            assert_eq!(groups, [GroupId(1)]);
            got.push(message);
        }
        let expected: Vec<String> = (0..MESSAGES).map(|n| format!("m{n}")).collect();
        assert_eq!(got, expected, "in order, no loss, no duplicates");
        client.close();
    }
    server.shutdown().await;
}

#[tokio::test]
async fn garbage_and_oversized_frames_close_only_that_connection() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let server = builder("server.cert.pem", "server.key.pem", attempts)
        .plaintext()
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut cc = context(&server, "alice", "MyPassword");
    cc.trust = Trust::Plaintext;
    let (alice, mut events) = Client::connect(cc).await.unwrap();

    for attack in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0x7f, 0xff, 0xff, 0xff, 0x10][..],
    ] {
        let mut raw = tokio::net::TcpStream::connect(server.local_addr().unwrap())
            .await
            .unwrap();
        raw.write_all(attack).await.unwrap();
        let mut answer = Vec::new();
        // The server answers with a Close frame (FrameTooLarge or ProtocolError) and
        // ends the connection.
        tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut answer))
            .await
            .expect("server kept the connection open")
            .unwrap();
        let mut decoder = pushwire_protocol::FrameDecoder::new(Default::default());
        decoder.feed(&answer);
        assert!(matches!(
            decoder.next_message().unwrap(),
            Some(pushwire_protocol::Message::Close(c)) if c.code == CloseCode::FrameTooLarge
        ));
    }
    // alice carries on.
    assert_eq!(
        alice.request(hello::ECHO, "still here").await.unwrap(),
        Bytes::from("still here")
    );
    server.handle().publish(&[3], "still pushing").unwrap();
    assert_eq!(next(&mut events, published).await.2, "still pushing");
}

#[tokio::test]
async fn graceful_shutdown_tells_every_client_why() {
    let (server, _) = start().await;
    // Clients that would otherwise reconnect to the restarted server.
    let mut once = context(&server, "alice", "MyPassword");
    once.reconnect = None;
    let (alice, _alice_events) = Client::connect(once.clone()).await.unwrap();
    once.user_id = "bob".into();
    let (bob, _bob_events) = Client::connect(once).await.unwrap();
    assert_eq!(server.shutdown().await, 0);
    for client in [alice, bob] {
        let reason = tokio::time::timeout(Duration::from_secs(5), client.closed())
            .await
            .unwrap();
        assert!(
            matches!(
                reason,
                CloseReason::Remote {
                    code: CloseCode::GoingAway,
                    ..
                }
            ),
            "{reason:?}"
        );
    }
}

#[tokio::test]
async fn a_connection_works_on_after_idle_periods_gave_back_its_buffers() {
    // Pings every 100 ms of silence: each is a moment the server's connection task
    // gives back its buffers, its outbox's arena and (with no call running) its
    // results channel. Everything must come back on demand, and a call running
    // across such a moment must still be answered.
    let keepalive = pushwire_engine::KeepAlive {
        ping_interval: Some(Duration::from_millis(100)),
        idle_timeout: Some(Duration::from_secs(10)),
    };
    let server = builder("server.cert.pem", "server.key.pem", Arc::default())
        .keepalive(keepalive)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut cc = context(&server, "alice", "MyPassword");
    cc.keepalive = keepalive;
    let (alice, mut events) = Client::connect(cc).await.unwrap();
    for round in 0..3 {
        let slow = alice.request(hello::SLEEP, hello::sleep_args(350));
        let reply = alice.request(hello::ECHO, Bytes::from(vec![7; 40_000]));
        server
            .handle()
            .publish(&[1], format!("round {round}"))
            .unwrap();
        let (_, _, message, _) = next(&mut events, published).await;
        assert_eq!(message, format!("round {round}"));
        assert_eq!(reply.await.unwrap(), Bytes::from(vec![7; 40_000]));
        slow.await.unwrap();
        tokio::time::sleep(Duration::from_millis(350)).await;
    }
    alice.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_never_overtakes_the_events_received_before_it() {
    // The server answers ListGroups after the publications sent before it; the
    // client must not resolve the answer before those publications' refusals are in
    // the event stream (the CLI's `pub` relies on it to report refused groups). Here
    // the refusal, the answer and an echo arrive together, and the echo's callback
    // holds the connection's task for a while after the answer was handled: an
    // answer released at once would be seen with the refusal not yet in the stream.
    let (server, _) = start().await;
    let (client, mut events) = ClientBuilder::new(context(&server, "alice", "MyPassword"))
        .on_publish(|_, _, _| std::thread::sleep(Duration::from_millis(200)))
        .connect()
        .await
        .unwrap();
    client.subscribe(&[1]).await.unwrap();
    // Whether the three answers arrive in one read is up to the network stack;
    // several rounds make it likely that one of them does.
    for round in 0..5 {
        // One client batch: the three commands leave in one write, so the server
        // answers them together.
        client.start_batching().await.unwrap();
        let to_nobody = client.publish(&[99], "to nobody");
        let answer = client.list_groups();
        let echoed = client.publish(&[1], "echoed");
        client.commit_batching(false).await.unwrap();
        to_nobody.await.unwrap();
        echoed.await.unwrap();
        answer.await.unwrap();
        let mut refused = false;
        while let Ok(Some(event)) = tokio::time::timeout(Duration::ZERO, events.recv()).await {
            refused |= matches!(event, Event::Rejected { .. });
        }
        assert!(
            refused,
            "round {round}: the answer came before the refusal was in the stream"
        );
    }
}

#[tokio::test]
async fn a_peer_trickling_a_frame_is_closed_at_the_idle_deadline() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let idle = Duration::from_millis(600);
    let server = builder("server.cert.pem", "server.key.pem", attempts)
        .plaintext()
        .keepalive(pushwire_engine::KeepAlive {
            ping_interval: None,
            idle_timeout: Some(idle),
        })
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut raw = tokio::net::TcpStream::connect(server.local_addr().unwrap())
        .await
        .unwrap();
    let mut hello = bytes::BytesMut::new();
    pushwire_protocol::Message::Hello(pushwire_protocol::Hello {
        min_version: 1,
        max_version: pushwire_protocol::PROTOCOL_VERSION,
        service_id: HELLO_WORLD_SERVICE,
        options: Default::default(),
        user_id: "trickler".into(),
        password: Bytes::from_static(b"MyPassword"),
        resume: None,
        max_frame_size: None,
    })
    .encode(&mut hello);
    raw.write_all(&hello).await.unwrap();
    // A Request frame announcing 1,000 bytes, then one byte every 100 ms: bytes
    // keep coming, a frame never completes.
    raw.write_all(&[0, 0, 3, 232, 0x10]).await.unwrap();
    let began = std::time::Instant::now();
    let (mut reader, mut writer) = raw.into_split();
    let trickle = tokio::spawn(async move {
        while writer.write_all(&[0]).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut received))
        .await
        .expect("the trickling peer kept its connection")
        .ok();
    let lasted = began.elapsed();
    trickle.abort();
    assert!(
        lasted >= idle && lasted < idle * 4,
        "closed after {lasted:?}, the idle timeout is {idle:?}"
    );
    let mut decoder = pushwire_protocol::FrameDecoder::new(Default::default());
    let mut rest = &received[..];
    let mut close = None;
    while !rest.is_empty() {
        let taken = decoder.feed(rest);
        rest = &rest[taken..];
        while let Ok(Some(message)) = decoder.next_message() {
            if let pushwire_protocol::Message::Close(c) = message {
                close = Some(c.code);
            }
        }
        if taken == 0 {
            break;
        }
    }
    assert_eq!(close, Some(CloseCode::IdleTimeout), "{received:?}");
}

/// Connects until it works, for at most 3 s (the server notices closed connections
/// asynchronously).
async fn connect_eventually(cc: &ConnectionContext) -> (Client, EventStream) {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        match Client::connect(cc.clone()).await {
            Ok(connected) => return connected,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("never admitted: {e}"),
        }
    }
}

#[tokio::test]
async fn connection_limits_per_address_and_in_the_handshake_close_the_extra_ones() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let server = builder("server.cert.pem", "server.key.pem", attempts)
        .plaintext()
        .max_connections_per_address(2)
        .max_handshaking(1)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut cc = context(&server, "alice", "MyPassword");
    cc.trust = Trust::Plaintext;
    cc.reconnect = None;
    cc.connect_timeout = Duration::from_secs(2);

    // A peer that never sends its Hello holds the one handshake slot.
    let silent = tokio::net::TcpStream::connect(server.local_addr().unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        Client::connect(cc.clone()).await.is_err(),
        "a second handshake is not admitted"
    );
    drop(silent);
    let (first, _e1) = connect_eventually(&cc).await;

    // Authenticated connections leave the handshake count: a second one is let in,
    // a third from the same address is not.
    let (second, _e2) = connect_eventually(&cc).await;
    assert!(
        Client::connect(cc.clone()).await.is_err(),
        "a third connection from one address"
    );
    assert_eq!(
        first.request(hello::ECHO, "still fine").await.unwrap(),
        Bytes::from("still fine")
    );
    second.close();
    let (third, _e3) = connect_eventually(&cc).await;
    assert_eq!(
        third.request(hello::ECHO, "after a close").await.unwrap(),
        Bytes::from("after a close")
    );
}
