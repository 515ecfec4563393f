//! Compressed payloads over real loopback sockets and TLS: receivers that accept
//! compressed payloads and receivers that do not get the same bytes; version 2
//! clients and servers interoperate with compressing clients; a payload that would
//! decompress past the server's limit (a compression bomb) is refused with
//! PayloadTooLarge and the publisher's connection goes on.

mod common;

use common::cert;

use bytes::Bytes;
use pushwire_protocol::RejectCode;
use pushwire_tokio::client::{Client, ClientBuilder, ConnectionContext, Event, EventStream, Trust};
use pushwire_tokio::server::{AuthDecision, Server};
use std::time::Duration;

/// A TLS server with group 1, a 256 KiB payload limit, speaking up to `version`.
async fn start(version: u16) -> Server {
    common::dev_tls_server()
        .group(1, "compressed")
        .max_payload(256 * 1024)
        .max_protocol_version(version)
        .authenticator(|_: &pushwire_tokio::server::AuthAttempt<'_>| AuthDecision::Permit)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn context(server: &Server, user: &str) -> ConnectionContext {
    let addr = server.local_addr().unwrap();
    let mut context = ConnectionContext::new("localhost", addr.port(), user, "pw");
    context.trust = Trust::CaFiles(vec![cert("ca.cert.pem")]);
    context
}

/// Connects and joins group 1.
async fn join(builder: ClientBuilder) -> (Client, EventStream) {
    let (client, events) = builder.connect().await.unwrap();
    client.subscribe(&[1]).await.unwrap();
    (client, events)
}

/// The next publication's payload; fails after 5 s.
async fn next_publication(events: &mut EventStream) -> Bytes {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await.expect("the event stream ended") {
                Event::Published { message, .. } => return message,
                _ => continue,
            }
        }
    })
    .await
    .expect("no publication within 5 s")
}

/// JSON-like text of about `len` bytes: repetitive, as logs and API payloads are.
fn json_text(len: usize) -> Bytes {
    let mut out = String::from("[");
    let mut i = 0;
    while out.len() < len {
        out.push_str(&format!(
            "{{\"id\":{i},\"user\":\"user{}\",\"active\":{},\"tags\":[\"a\",\"b\"]}},",
            i % 17,
            i % 2 == 0
        ));
        i += 1;
    }
    out.push(']');
    Bytes::from(out)
}

#[tokio::test]
async fn opted_in_and_plain_receivers_get_identical_bytes_of_a_compressed_publication() {
    let server = start(3).await;
    let (alice, _alice_events) =
        join(ClientBuilder::new(context(&server, "alice")).compression(true)).await;
    let (_bob, mut bob_events) = join(ClientBuilder::new(context(&server, "bob"))).await;
    let (_carol, mut carol_events) =
        join(ClientBuilder::new(context(&server, "carol")).accept_compressed(false)).await;
    let payloads = [
        json_text(64 * 1024),
        json_text(1024),
        Bytes::from_static(b"small"),
    ];
    for payload in &payloads {
        alice
            .publish(&[1], payload.clone())
            .await
            .expect("taken by the server");
    }
    for payload in &payloads {
        assert_eq!(&next_publication(&mut bob_events).await, payload);
        assert_eq!(&next_publication(&mut carol_events).await, payload);
    }
    let stats = server.handle().stats();
    // The two large payloads came compressed; "small" is under the threshold.
    assert_eq!(stats.payloads_decompressed, 2);
    // bob and alice's echo took them compressed; carol plain.
    assert_eq!(stats.deliveries_compressed, 4);
    assert_eq!(stats.deliveries_decompressed, 2);
    assert!(stats.bytes_decompressed_for_receivers > 40_000, "{stats:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn version_2_clients_and_servers_interoperate_with_compressing_clients() {
    // A version 3 server: a version 2 receiver gets the compressed publication
    // plain, and a version 2 publisher with compression on sends plain.
    let server = start(3).await;
    let (alice, _a) = join(ClientBuilder::new(context(&server, "alice")).compression(true)).await;
    let (old, mut old_events) = join(
        ClientBuilder::new(context(&server, "old"))
            .compression(true)
            .max_protocol_version(2),
    )
    .await;
    let (_bob, mut bob_events) = join(ClientBuilder::new(context(&server, "bob"))).await;
    let big = json_text(20_000);
    alice.publish(&[1], big.clone()).await.unwrap();
    assert_eq!(next_publication(&mut old_events).await, big);
    assert_eq!(next_publication(&mut bob_events).await, big);
    old.publish(&[1], big.clone()).await.unwrap();
    assert_eq!(next_publication(&mut old_events).await, big, "the echo");
    assert_eq!(next_publication(&mut bob_events).await, big);
    let stats = server.handle().stats();
    assert_eq!(
        stats.payloads_decompressed, 1,
        "only alice's came compressed"
    );
    server.shutdown().await;

    // A version 2 server: compressing clients just send and get plain.
    let server = start(2).await;
    let (alice, _a) = join(ClientBuilder::new(context(&server, "alice")).compression(true)).await;
    let (_bob, mut bob_events) = join(ClientBuilder::new(context(&server, "bob"))).await;
    alice.publish(&[1], big.clone()).await.unwrap();
    assert_eq!(next_publication(&mut bob_events).await, big);
    assert_eq!(server.handle().stats().payloads_decompressed, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_compression_bomb_is_refused_with_payload_too_large() {
    let server = start(3).await;
    let (alice, mut alice_events) =
        join(ClientBuilder::new(context(&server, "alice")).compression(true)).await;
    let (_bob, mut bob_events) = join(ClientBuilder::new(context(&server, "bob"))).await;
    // 16 MiB of zeros compresses to about 64 KiB: it fits a frame, but not the
    // server's 256 KiB payload limit once decompressed.
    let bomb = Bytes::from(vec![0u8; 16 << 20]);
    // The publication is taken (run by the server, which refused it), and the
    // refusal comes as an event first.
    let command_id = alice.publish(&[1], bomb).await.unwrap();
    let rejected = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Event::Rejected {
                command_id: id,
                code,
                reason,
                ..
            } = alice_events.recv().await.expect("events")
            {
                break (id, code, reason);
            }
        }
    })
    .await
    .expect("a refusal");
    assert_eq!(rejected.0, command_id);
    assert_eq!(rejected.1, RejectCode::PayloadTooLarge);
    assert!(
        rejected
            .2
            .as_str()
            .contains("would decompress to 16777216 bytes"),
        "{}",
        rejected.2
    );
    assert_eq!(server.handle().stats().payloads_decompressed, 0);
    // The connection goes on.
    let next = json_text(2000);
    alice.publish(&[1], next.clone()).await.unwrap();
    assert_eq!(next_publication(&mut bob_events).await, next);
    assert!(alice.is_connected());
    server.shutdown().await;
}
