//! Reloading a running server over real loopback sockets: a new certificate for new
//! connections while an old connection keeps working, and a new authenticator.

mod common;

use common::cert;

use bytes::Bytes;
use pushwire_protocol::{GroupId, RefuseCode};
use pushwire_tokio::client::{Client, ConnectError, ConnectionContext, Event, EventStream, Trust};
use pushwire_tokio::hello::{hello_world_service, ECHO, HELLO_WORLD_SERVICE};
use pushwire_tokio::server::{AuthAttempt, AuthDecision, Permit, Server, ServerBuilder};
use std::time::Duration;

/// A server with the development certificate (signed by `ca.cert.pem`).
async fn start() -> Server {
    common::dev_tls_server()
        .group(1, "R&D Department")
        .service(HELLO_WORLD_SERVICE, hello_world_service())
        .authenticator(|_: &AuthAttempt<'_>| AuthDecision::Permit)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// A client of `user` trusting only the CA in `ca`.
fn context(server: &Server, user: &str, ca: &str) -> ConnectionContext {
    let addr = server.local_addr().unwrap();
    let mut cc = ConnectionContext::new("localhost", addr.port(), user, "pw");
    cc.trust = Trust::CaFiles(vec![cert(ca)]);
    cc
}

async fn connect(
    server: &Server,
    user: &str,
    ca: &str,
) -> Result<(Client, EventStream), ConnectError> {
    tokio::time::timeout(
        Duration::from_secs(10),
        Client::connect(context(server, user, ca)),
    )
    .await
    .expect("connect timed out")
}

/// The next publication's message, skipping other events; fails after 5 s.
async fn next_message(events: &mut EventStream) -> String {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await.expect("event stream ended") {
                Event::Published { message, .. } => {
                    return String::from_utf8_lossy(&message).into_owned()
                }
                _ => continue,
            }
        }
    })
    .await
    .expect("timed out waiting for a publication")
}

/// An RPC and a publication to itself (the echo) on `client`.
async fn works(client: &Client, events: &mut EventStream, text: &str) {
    let echoed = client
        .request(ECHO, Bytes::from(text.to_owned()))
        .await
        .unwrap();
    assert_eq!(echoed, text.as_bytes());
    client.publish(&[1], text.to_owned()).await.unwrap();
    assert_eq!(next_message(events).await, text);
}

#[tokio::test]
async fn a_certificate_reload_serves_new_connections_while_old_ones_keep_working() {
    let server = start().await;
    let handle = server.handle();
    let (old, mut old_events) = connect(&server, "old", "ca.cert.pem").await.unwrap();
    old.subscribe(&[1]).await.unwrap();
    works(&old, &mut old_events, "before").await;

    // Certificate B: the same names, signed by an unrelated CA.
    let info = handle
        .reload_tls(
            &cert("other-server.cert.pem"),
            &cert("other-server.key.pem"),
            None,
        )
        .unwrap();
    assert!(info.issuer.contains("Unrelated"), "{info:?}");

    // The connection made with A goes on: RPC and push.
    works(&old, &mut old_events, "after").await;

    // A client trusting only B gets in; one trusting only A is refused by TLS.
    let (new, mut new_events) = connect(&server, "new", "other-ca.cert.pem").await.unwrap();
    new.subscribe(&[1]).await.unwrap();
    works(&new, &mut new_events, "new").await;
    // Both receive each other's publications.
    assert_eq!(next_message(&mut old_events).await, "new");
    match connect(&server, "late", "ca.cert.pem").await {
        Err(ConnectError::Untrusted(auth)) => assert!(!auth.verdict.is_verified()),
        other => panic!("expected Untrusted, got {:?}", other.map(|_| ())),
    }

    // A failed reload changes nothing: the wrong password for A's encrypted key.
    assert!(handle
        .reload_tls(
            &cert("server.cert.pem"),
            &cert("server.key.pem"),
            Some("wrong")
        )
        .is_err());
    // A key that is not the certificate's.
    assert!(handle
        .reload_tls(
            &cert("server.cert.pem"),
            &cert("other-server.key.pem"),
            None
        )
        .is_err());
    let (again, _events) = connect(&server, "again", "other-ca.cert.pem")
        .await
        .unwrap();
    works(&old, &mut old_events, "still").await;
    again.close();
    new.close();
    old.close();
    server.shutdown().await;
}

#[tokio::test]
async fn a_plaintext_server_has_no_certificate_to_reload() {
    let server = ServerBuilder::new()
        .plaintext()
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let result = server.handle().reload_tls(
        &cert("other-server.cert.pem"),
        &cert("other-server.key.pem"),
        None,
    );
    assert!(
        matches!(result, Err(pushwire_tokio::server::ServerError::NotTls)),
        "{result:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_new_authenticator_decides_new_logins_and_its_connection_limit_holds() {
    let server = start().await;
    let handle = server.handle();
    let (first, _first_events) = connect(&server, "alice", "ca.cert.pem").await.unwrap();

    // From now on alice may have one connection: hers is open, so a second is
    // refused; bob may not log in at all.
    handle.set_authenticator(|attempt: &AuthAttempt<'_>| {
        if attempt.user_id.eq_ignore_ascii_case("alice") {
            AuthDecision::PermitWith(Permit {
                max_user_connections: Some(1),
            })
        } else {
            AuthDecision::bad_credentials()
        }
    });
    match connect(&server, "ALICE", "ca.cert.pem").await {
        Err(ConnectError::Refused { code, reason }) => {
            assert_eq!(code, RefuseCode::TooManyConnections, "{reason}");
        }
        other => panic!("expected TooManyConnections, got {:?}", other.map(|_| ())),
    }
    match connect(&server, "bob", "ca.cert.pem").await {
        Err(ConnectError::Refused { code, .. }) => assert_eq!(code, RefuseCode::BadCredentials),
        other => panic!("expected BadCredentials, got {:?}", other.map(|_| ())),
    }
    // The connection let in before stays in.
    first.subscribe(&[1]).await.unwrap();
    assert_eq!(
        first.list_groups().await.unwrap()[0].id,
        GroupId(1),
        "the old connection works"
    );
    first.close();
    server.shutdown().await;
}

/// Two logins of a user with a limit of one, at the same moment, many times over:
/// exactly one gets in each time (the node decides under its lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_logins_cannot_both_pass_a_connection_limit() {
    let server = start().await;
    server.handle().set_authenticator(|_: &AuthAttempt<'_>| {
        AuthDecision::PermitWith(Permit {
            max_user_connections: Some(1),
        })
    });
    for round in 0..10 {
        let user = format!("user{round}");
        let (a, b) = tokio::join!(
            connect(&server, &user, "ca.cert.pem"),
            connect(&server, &user, "ca.cert.pem")
        );
        let outcomes = [&a, &b];
        let admitted = outcomes.iter().filter(|r| r.is_ok()).count();
        assert_eq!(admitted, 1, "round {round}");
        for refused in outcomes.iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                matches!(
                    refused,
                    ConnectError::Refused {
                        code: RefuseCode::TooManyConnections,
                        ..
                    }
                ),
                "{refused:?}"
            );
        }
    }
    server.shutdown().await;
}
