//! The client's frame limit over real TLS loopback sockets (protocol version 4,
//! issue 16): a subscriber that accepts 4 KiB frames gets a Gap for a publication it
//! could not take and the next one normally, still connected, while a subscriber
//! with the default limit gets both; an RPC result over the limit ends as
//! `ResultTooLarge`.

mod common;

use common::cert;

use bytes::Bytes;
use pushwire_protocol::{ErrorCode, FrameLimits};
use pushwire_tokio::client::{
    Client, ClientBuilder, ConnectionContext, Event, EventStream, RequestError, Trust,
};
use pushwire_tokio::hello::{hello_world_service, ECHO, HELLO_WORLD_SERVICE};
use pushwire_tokio::server::{AuthAttempt, AuthDecision, Server};
use std::time::Duration;

async fn start() -> Server {
    common::dev_tls_server()
        .group(1, "mixed")
        .service(HELLO_WORLD_SERVICE, hello_world_service())
        .authenticator(|_: &AuthAttempt<'_>| AuthDecision::Permit)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

async fn connect(server: &Server, user: &str, limit: Option<u32>) -> (Client, EventStream) {
    let addr = server.local_addr().unwrap();
    let mut context = ConnectionContext::new("localhost", addr.port(), user, "pw");
    context.trust = Trust::CaFiles(vec![cert("ca.cert.pem")]);
    context.service_id = HELLO_WORLD_SERVICE;
    let mut builder = ClientBuilder::new(context);
    if let Some(limit) = limit {
        builder = builder.max_frame_size(FrameLimits::new(limit).unwrap());
    }
    builder.connect().await.unwrap()
}

/// The next Published or Gap, skipping presence.
async fn next(events: &mut EventStream) -> Event {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await.expect("events") {
                e @ (Event::Published { .. } | Event::Gap { .. }) => return e,
                Event::Disconnected(reason) | Event::Closed(reason) => {
                    panic!("connection ended: {reason}")
                }
                _ => {}
            }
        }
    })
    .await
    .expect("an event within 10 s")
}

#[tokio::test]
async fn a_publication_over_a_subscribers_frame_limit_is_a_gap_for_it_alone() {
    let server = start().await;
    let (small, mut small_events) = connect(&server, "small", Some(4096)).await;
    small.subscribe(&[1]).await.unwrap();
    let (big, mut big_events) = connect(&server, "big", None).await;
    big.subscribe(&[1]).await.unwrap();
    let (publisher, _events) = connect(&server, "publisher", None).await;
    publisher
        .publish(&[1], Bytes::from(vec![b'x'; 5000]))
        .await
        .unwrap();
    publisher.publish(&[1], "fits").await.unwrap();

    let gap = next(&mut small_events).await;
    let Event::Gap { first, last } = gap else {
        panic!("expected a Gap, got {gap:?}")
    };
    assert_eq!(first, last);
    match next(&mut small_events).await {
        Event::Published { seq, message, .. } => {
            assert_eq!(seq, last + 1);
            assert_eq!(&message[..], b"fits");
        }
        other => panic!("expected the next publication, got {other:?}"),
    }
    for expected in [5000, 4] {
        match next(&mut big_events).await {
            Event::Published { message, .. } => assert_eq!(message.len(), expected),
            other => panic!("{other:?}"),
        }
    }
    assert!(small.is_connected());

    // An RPC result over the limit: echo a 5,000-byte argument.
    let result = small.request(ECHO, Bytes::from(vec![b'y'; 5000])).await;
    assert!(
        matches!(
            result,
            Err(RequestError::Server {
                code: ErrorCode::ResultTooLarge,
                ..
            })
        ),
        "{result:?}"
    );
    assert!(small.is_connected());
}
