//! The publish rate limit over real TLS loopback sockets (issue 16): one publisher
//! over the limit has some publications refused with `RateLimited` — its
//! `publish()` resolves with that refusal, its connection stays — while a second
//! publisher on its own bucket and the subscriber are unaffected, and the subscriber
//! receives exactly the publications the server accepted, in order.

mod common;

use common::cert;

use bytes::Bytes;
use pushwire_protocol::RejectCode;
use pushwire_tokio::client::{Client, ClientBuilder, ConnectionContext, Event, EventStream, Trust};
use pushwire_tokio::server::{AuthAttempt, AuthDecision, Server, ServerBuilder};
use std::time::{Duration, Instant};

/// One token a second: the test's own slowness adds at most a token or two.
const RATE: u32 = 1;
const BURST: u32 = 10;
/// The flood: well over the burst.
const FLOOD: usize = 40;

async fn start() -> Server {
    common::dev_tls_server()
        .group(1, "limited")
        .publish_rate_limit(RATE, BURST)
        .unwrap()
        .authenticator(|_: &AuthAttempt<'_>| AuthDecision::Permit)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

async fn connect(server: &Server, user: &str) -> (Client, EventStream) {
    let addr = server.local_addr().unwrap();
    let mut context = ConnectionContext::new("localhost", addr.port(), user, "pw");
    context.trust = Trust::CaFiles(vec![cert("ca.cert.pem")]);
    context.echo = false;
    ClientBuilder::new(context).connect().await.unwrap()
}

#[test]
fn a_zero_rate_or_burst_is_refused_by_the_builder() {
    assert!(ServerBuilder::new().publish_rate_limit(0, 5).is_err());
    assert!(ServerBuilder::new().publish_rate_limit(5, 0).is_err());
}

#[tokio::test]
async fn a_publisher_over_the_rate_is_refused_with_rate_limited_and_no_one_else_is_affected() {
    let server = start().await;
    let (bob, mut bob_events) = connect(&server, "bob").await;
    bob.subscribe(&[1]).await.unwrap();
    let (spammer, mut spammer_events) = connect(&server, "spammer").await;
    let (calm, _calm_events) = connect(&server, "calm").await;

    let started = Instant::now();
    let flood: Vec<_> = (0..FLOOD)
        .map(|i| spammer.publish(&[1], Bytes::from(format!("spam {i}"))))
        .collect();
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for (i, publication) in flood.into_iter().enumerate() {
        match publication.await {
            Ok(_) => accepted.push(format!("spam {i}")),
            Err(e) => {
                assert!(e.is_rate_limited(), "{e}");
                assert!(e.to_string().contains("RateLimited"), "{e}");
                refused.push(i);
            }
        }
    }
    let elapsed = started.elapsed().as_secs() as usize;
    assert!(
        (BURST as usize..=BURST as usize + elapsed + 1).contains(&accepted.len()),
        "{} accepted in {elapsed} s",
        accepted.len()
    );
    assert_eq!(accepted.len() + refused.len(), FLOOD);
    // The burst goes first: the first refusal comes after it (right after it, unless
    // the machine stalled for a second and a token came back).
    assert!(refused[0] >= BURST as usize, "{refused:?}");

    // Each refusal also came as an event, with the distinct code.
    let mut events_refused = 0;
    while events_refused < refused.len() {
        let event = tokio::time::timeout(Duration::from_secs(5), spammer_events.recv())
            .await
            .expect("a Rejected event")
            .expect("events");
        if let Event::Rejected { code, .. } = event {
            assert_eq!(code, RejectCode::RateLimited);
            events_refused += 1;
        }
    }
    // A user message counts too; the connection is still there.
    let mut dm_refused = 0;
    for _ in 0..3 {
        match spammer.send_user_message("bob", "psst").await {
            Ok(_) => {}
            Err(e) => {
                assert!(e.is_rate_limited(), "{e}");
                dm_refused += 1;
            }
        }
    }
    assert!(dm_refused >= 1);

    // The other publisher has its own bucket: all of its burst goes through.
    for i in 0..BURST {
        calm.publish(&[1], Bytes::from(format!("calm {i}")))
            .await
            .expect("calm is not limited");
    }
    // Everything accepted from the spammer was delivered before its publications
    // resolved, so the calm publisher's last one comes after it.
    let mut expected: Vec<String> = accepted.clone();
    expected.extend((0..BURST).map(|i| format!("calm {i}")));
    let mut got = Vec::new();
    while got.len() < expected.len() {
        match tokio::time::timeout(Duration::from_secs(10), bob_events.recv())
            .await
            .expect("bob's publications")
            .expect("events")
        {
            Event::Published { message, .. } => {
                got.push(String::from_utf8(message.to_vec()).unwrap())
            }
            Event::Gap { .. } => panic!("a gap"),
            _ => {}
        }
    }
    assert_eq!(got, expected);
    assert_eq!(
        server.handle().stats().rate_limited,
        (refused.len() + dm_refused) as u64
    );
    assert!(spammer.is_connected());
}
