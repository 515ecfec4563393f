//! Lifecycle tests on an in-memory pair: a client engine wired to a server engine
//! through byte buffers, time advanced by hand (like quinn-proto's `Pair`).

mod common;
use common::{cert, grant, peer, wall_clock};

use bytes::Bytes;
use proptest::prelude::*;
use pushwire_engine::client::{
    AbortReason, CancelOutcome, ClientConfig, ClientConnection, ClientEvent, ClientState,
    ClientTransport, PushCommand, ServerAuthMode,
};
use pushwire_engine::credentials::{
    load_certificate_chain, load_private_key, load_root_store, ServerCredentials,
};
use pushwire_engine::server::{
    ServerConfig, ServerConnection, ServerEvent, ServerState, ServerTransport,
};
use pushwire_engine::tls::{server_tls_config, ClientAuth, ClientTls, Verdict};
use pushwire_engine::{CloseReason, KeepAlive, TimeoutKind};
use pushwire_protocol::{CloseCode, ErrorCode, GroupId, Message, RefuseCode, Text};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn server_tls(cert_file: &str, key_file: &str, client_auth: ClientAuth) -> ServerTransport {
    let creds =
        ServerCredentials::from_pem_files(&cert(cert_file), &cert(key_file), Some("mypassword"))
            .or_else(|_| ServerCredentials::from_pem_files(&cert(cert_file), &cert(key_file), None))
            .expect("server credentials");
    ServerTransport::Tls(server_tls_config(&creds, client_auth).unwrap())
}

fn client_tls() -> ClientTransport {
    ClientTransport::Tls(common::client_tls())
}

/// How the simulated server application answers a Hello.
#[derive(Clone, Copy, PartialEq)]
enum Auth {
    /// Permit password `MyPassword`, refuse anything else.
    Password,
}

struct Pair {
    now: Instant,
    client: ClientConnection,
    server: ServerConnection,
    client_events: Vec<ClientEvent>,
    server_events: Vec<ServerEvent>,
    /// Chunks the client transmitted, in order (one entry per poll_transmit).
    client_transmits: Vec<Vec<u8>>,
    server_transmits: Vec<Vec<u8>>,
    auth: Auth,
    /// Deliver bytes between the two ends (false simulates a dead network).
    connected: bool,
}

impl Pair {
    fn new(client: ClientConfig, server: ServerConfig) -> Self {
        let now = Instant::now();
        Self {
            client: ClientConnection::new(client, now, wall_clock()).unwrap(),
            server: ServerConnection::new(Arc::new(server), peer(), now).unwrap(),
            now,
            client_events: Vec::new(),
            server_events: Vec::new(),
            client_transmits: Vec::new(),
            server_transmits: Vec::new(),
            auth: Auth::Password,
            connected: true,
        }
    }

    fn tls() -> Self {
        Self::new(
            ClientConfig::new(client_tls(), "alice", b"MyPassword"),
            ServerConfig::new(server_tls(
                "server.cert.pem",
                "server.key.pem",
                ClientAuth::None,
            )),
        )
    }

    fn plaintext() -> Self {
        Self::new(
            ClientConfig::new(ClientTransport::Plaintext, "alice", b"MyPassword"),
            ServerConfig::new(ServerTransport::Plaintext),
        )
    }

    /// Moves bytes and events until nothing changes.
    fn drive(&mut self) {
        for _ in 0..1000 {
            let mut progressed = false;
            let mut buf = Vec::new();
            if self.client.poll_transmit(self.now, &mut buf) > 0 {
                progressed = true;
                self.client_transmits.push(buf.clone());
                if self.connected {
                    self.server.handle_input(self.now, &buf);
                }
            }
            let mut buf = Vec::new();
            if self.server.poll_transmit(self.now, &mut buf) > 0 {
                progressed = true;
                self.server_transmits.push(buf.clone());
                if self.connected {
                    self.client.handle_input(self.now, &buf);
                }
            }
            // A finished end closes its transport; the other end sees EOF.
            if self.connected && self.client.is_finished() && !self.server.is_finished() {
                self.server.handle_transport_closed();
                progressed = true;
            }
            if self.connected && self.server.is_finished() && !self.client.is_finished() {
                self.client.handle_transport_closed();
                progressed = true;
            }
            while let Some(e) = self.client.poll_event() {
                progressed = true;
                self.client_events.push(e);
            }
            while let Some(e) = self.server.poll_event() {
                progressed = true;
                if let ServerEvent::Authenticate(req) = &e {
                    if self.auth == Auth::Password {
                        if req.password.as_ref() == b"MyPassword" {
                            self.server.permit(grant());
                        } else {
                            self.server
                                .refuse(RefuseCode::BadCredentials, "wrong password");
                        }
                    }
                }
                self.server_events.push(e);
            }
            if !progressed {
                return;
            }
        }
        panic!("pair did not settle");
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
        self.drive();
    }

    fn client_ready(&self) -> bool {
        self.client_events
            .iter()
            .any(|e| matches!(e, ClientEvent::Ready(_)))
    }

    fn client_closed(&self) -> Option<&CloseReason> {
        self.client_events.iter().find_map(|e| match e {
            ClientEvent::Closed(r) => Some(r),
            _ => None,
        })
    }

    fn server_closed(&self) -> Option<&CloseReason> {
        self.server_events.iter().find_map(|e| match e {
            ServerEvent::Closed(r) => Some(r),
            _ => None,
        })
    }

    fn server_requests(&self) -> Vec<u64> {
        self.server_events
            .iter()
            .filter_map(|e| match e {
                ServerEvent::Request { request_id, .. } => Some(*request_id),
                _ => None,
            })
            .collect()
    }

    fn client_results(&self) -> Vec<u64> {
        self.client_events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Response { request_id, .. }
                | ClientEvent::ServerError { request_id, .. } => Some(*request_id),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn full_tls_handshake_with_the_encrypted_development_key() {
    let mut pair = Pair::tls();
    pair.drive();
    let auth = pair
        .client_events
        .iter()
        .find_map(|e| match e {
            ClientEvent::ServerAuthenticated(a) => Some(a.clone()),
            _ => None,
        })
        .expect("server authentication event");
    assert_eq!(auth.verdict, Verdict::Verified);
    let cert = auth.certificate().unwrap();
    assert!(cert.subject.contains("localhost"));
    assert!(cert.subject_alt_names.contains(&"127.0.0.1".to_string()));
    assert!(
        auth.protocol_version.contains("TLSv1_3"),
        "{}",
        auth.protocol_version
    );
    assert!(!auth.cipher_suite.is_empty());
    assert!(auth.to_string().contains("verdict:      verified"));
    assert!(pair.client_ready());
    assert_eq!(pair.client.state(), ClientState::Ready);
    assert_eq!(pair.server.state(), ServerState::Ready);
    let req = pair
        .server_events
        .iter()
        .find_map(|e| match e {
            ServerEvent::Authenticate(r) => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(req.user_id, "alice");
    assert_eq!(req.peer, peer());
    assert_eq!(req.client_certificate, None);
}

#[test]
fn a_rejected_server_never_sees_a_hello() {
    let mut client = ClientConfig::new(client_tls(), "alice", b"MyPassword");
    client.server_auth = ServerAuthMode::Application;
    let mut pair = Pair::new(
        client,
        ServerConfig::new(server_tls(
            "server.cert.pem",
            "server.key.pem",
            ClientAuth::None,
        )),
    );
    pair.drive();
    assert_eq!(pair.client.state(), ClientState::AwaitingServerDecision);
    let sent_before_decision: usize = pair.client_transmits.iter().map(Vec::len).sum();
    pair.client.reject_server().unwrap();
    pair.drive();
    // After the decision the client sent exactly one TLS 1.3 record of 24 bytes: the
    // encrypted close_notify alert (5 header + 2 alert + 1 type + 16 tag). A Hello
    // with the credentials would be longer.
    let sent_after: usize =
        pair.client_transmits.iter().map(Vec::len).sum::<usize>() - sent_before_decision;
    assert_eq!(sent_after, 24);
    assert_eq!(
        pair.server.app_bytes_received(),
        0,
        "the server decrypted application data"
    );
    assert!(!pair
        .server_events
        .iter()
        .any(|e| matches!(e, ServerEvent::Authenticate(_))));
    assert!(matches!(
        pair.client_closed(),
        Some(CloseReason::ServerRejected {
            verdict: Verdict::Verified
        })
    ));
    assert!(pair.client.is_finished());
}

#[test]
fn an_unknown_ca_and_an_expired_certificate_fail_verification_and_are_rejected() {
    for (cert_file, key_file, check) in [
        (
            "other-server.cert.pem",
            "other-server.key.pem",
            "UnknownIssuer",
        ),
        (
            "expired-server.cert.pem",
            "expired-server.key.pem",
            "Expired",
        ),
    ] {
        let mut pair = Pair::new(
            ClientConfig::new(client_tls(), "alice", b"MyPassword"),
            ServerConfig::new(server_tls(cert_file, key_file, ClientAuth::None)),
        );
        pair.drive();
        let Some(CloseReason::ServerRejected {
            verdict: Verdict::Failed(e),
        }) = pair.client_closed()
        else {
            panic!(
                "{cert_file}: expected a rejection, got {:?}",
                pair.client_events
            );
        };
        assert!(format!("{e:?}").contains(check), "{cert_file}: {e:?}");
        assert_eq!(pair.server.app_bytes_received(), 0);
        assert!(!pair.client_ready());
    }
}

#[test]
fn a_wrong_password_is_refused_with_the_servers_reason() {
    let mut pair = Pair::new(
        ClientConfig::new(client_tls(), "alice", b"wrong"),
        ServerConfig::new(server_tls(
            "server.cert.pem",
            "server.key.pem",
            ClientAuth::None,
        )),
    );
    pair.drive();
    assert_eq!(
        pair.client_closed(),
        Some(&CloseReason::Refused {
            code: RefuseCode::BadCredentials,
            reason: Text::from("wrong password"),
        })
    );
    assert!(pair.server_closed().is_some());
    assert!(pair.client.is_finished() && pair.server.is_finished());
}

#[test]
fn mutual_tls_with_and_without_a_client_certificate() {
    let roots = Arc::new(load_root_store(&[cert("ca.cert.pem")]).unwrap());
    let server = || {
        ServerConfig::new(server_tls(
            "server.cert.pem",
            "server.key.pem",
            ClientAuth::Required(roots.clone()),
        ))
    };

    let chain = load_certificate_chain(&cert("client.cert.pem")).unwrap();
    let key = load_private_key(&cert("client.key.pem"), None).unwrap();
    let with_cert = ClientTls::with_client_certificate(
        load_root_store(&[cert("ca.cert.pem")]).unwrap(),
        "localhost",
        chain,
        key,
    )
    .unwrap();
    let mut pair = Pair::new(
        ClientConfig::new(ClientTransport::Tls(with_cert), "alice", b"MyPassword"),
        server(),
    );
    pair.drive();
    assert!(pair.client_ready());
    let client_cert = pair.server_events.iter().find_map(|e| match e {
        ServerEvent::Authenticate(r) => r.client_certificate.clone(),
        _ => None,
    });
    assert!(client_cert.unwrap().subject.contains("pushwire-dev-client"));

    let mut pair = Pair::new(
        ClientConfig::new(client_tls(), "alice", b"MyPassword"),
        server(),
    );
    pair.drive();
    assert!(!pair.client_ready());
    assert!(
        matches!(pair.server_closed(), Some(CloseReason::Tls(_))),
        "{:?}",
        pair.server_events
    );
    assert!(pair.client_closed().is_some(), "{:?}", pair.client_events);
}

fn answer(pair: &mut Pair, request_id: u64) {
    assert!(pair
        .server
        .respond(request_id, Ok(Bytes::from(format!("r{request_id}")))));
    pair.drive();
}

#[test]
fn rpc_results_come_back_in_request_order_when_answered_out_of_order() {
    for mut pair in [Pair::tls(), Pair::plaintext()] {
        pair.drive();
        let ids: Vec<u64> = (0..3)
            .map(|i| pair.client.request(1, Bytes::from(vec![i; 3])).unwrap())
            .collect();
        pair.drive();
        assert_eq!(pair.server_requests(), ids);
        assert_eq!(pair.client.outstanding_requests(), 3);
        answer(&mut pair, ids[2]);
        assert!(pair
            .server
            .respond(ids[1], Err((ErrorCode::Other(1000), Text::from("nope")))));
        pair.drive();
        assert!(
            pair.client_results().is_empty(),
            "request {} is unanswered",
            ids[0]
        );
        answer(&mut pair, ids[0]);
        assert_eq!(pair.client_results(), ids);
        assert_eq!(pair.client.outstanding_requests(), 0);
        assert!(pair.client_events.contains(&ClientEvent::ServerError {
            request_id: ids[1],
            code: ErrorCode::Other(1000),
            message: Text::from("nope"),
        }));
    }
}

#[test]
fn a_committed_batch_leaves_as_one_transmit_with_and_without_server_batching() {
    for server_batching in [false, true] {
        let mut pair = Pair::tls();
        pair.drive();
        pair.client.start_batch().unwrap();
        let a = pair.client.request(1, Bytes::from_static(b"a")).unwrap();
        pair.client
            .push(PushCommand::Publish {
                groups: vec![GroupId(1), GroupId(2)],
                payload: Bytes::from_static(b"we are going to call sleep"),
            })
            .unwrap();
        let b = pair.client.request(2, Bytes::from_static(b"b")).unwrap();
        let c = pair.client.request(3, Bytes::from_static(b"c")).unwrap();
        pair.drive();
        assert!(
            pair.server_requests().is_empty(),
            "nothing leaves before the commit"
        );
        let transmits_before = pair.client_transmits.len();
        pair.client.commit_batch(server_batching).unwrap();
        pair.drive();
        assert_eq!(
            pair.client_transmits.len(),
            transmits_before + 1,
            "one transmit for the batch"
        );
        assert_eq!(pair.server_requests(), [a, b, c]);
        assert!(pair
            .server_events
            .iter()
            .any(|e| matches!(e, ServerEvent::Push(Message::Publish(_)))));

        let server_transmits_before = pair.server_transmits.len();
        answer(&mut pair, a);
        answer(&mut pair, b);
        if server_batching {
            assert!(
                pair.client_results().is_empty(),
                "held until the whole batch is answered"
            );
        } else {
            assert_eq!(pair.client_results(), [a, b]);
        }
        answer(&mut pair, c);
        assert_eq!(pair.client_results(), [a, b, c]);
        if server_batching {
            assert_eq!(
                pair.server_transmits.len(),
                server_transmits_before + 1,
                "results in one transmit"
            );
        }
    }
}

#[test]
fn an_aborted_batch_reports_each_request_and_sends_nothing() {
    let mut pair = Pair::tls();
    pair.drive();
    pair.client.start_batch().unwrap();
    let a = pair.client.request(1, Bytes::new()).unwrap();
    let b = pair.client.request(1, Bytes::new()).unwrap();
    pair.client.abort_batch().unwrap();
    pair.drive();
    let aborted: Vec<u64> = pair
        .client_events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::RequestAborted {
                request_id,
                reason: AbortReason::BatchAborted,
            } => Some(*request_id),
            _ => None,
        })
        .collect();
    assert_eq!(aborted, [a, b]);
    assert!(pair.server_requests().is_empty());
    assert_eq!(pair.client.outstanding_requests(), 0);
}

/// A plaintext pair whose server runs at most `max_running` calls at once and
/// speaks at most `server_version`.
fn cancel_pair(max_running: usize, server_version: u16) -> Pair {
    let mut server = ServerConfig::new(ServerTransport::Plaintext);
    server.max_running_requests = max_running;
    server.max_version = server_version;
    let mut pair = Pair::new(
        ClientConfig::new(ClientTransport::Plaintext, "alice", b"MyPassword"),
        server,
    );
    pair.drive();
    assert!(pair.client_ready());
    pair
}

/// How each request ended, in the order the client engine reported it.
fn request_ends(pair: &Pair) -> Vec<(u64, String)> {
    pair.client_events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Response {
                request_id,
                payload,
            } => Some((*request_id, String::from_utf8_lossy(payload).into_owned())),
            ClientEvent::ServerError {
                request_id, code, ..
            } => Some((*request_id, format!("{code:?}"))),
            ClientEvent::RequestAborted { request_id, reason } => {
                Some((*request_id, format!("aborted {reason:?}")))
            }
            _ => None,
        })
        .collect()
}

fn cancels_requested(pair: &Pair) -> Vec<u64> {
    pair.server_events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::CancelRequested { request_id } => Some(*request_id),
            _ => None,
        })
        .collect()
}

fn ends(list: &[(u64, &str)]) -> Vec<(u64, String)> {
    list.iter().map(|(id, s)| (*id, s.to_string())).collect()
}

#[test]
fn a_cancel_drops_a_request_that_has_not_started_and_the_next_one_runs() {
    let mut pair = cancel_pair(1, 3);
    let [a, b, c] = [0u8, 1, 2].map(|i| pair.client.request(1, Bytes::from(vec![i])).unwrap());
    pair.drive();
    assert_eq!(pair.server_requests(), [a], "one call runs at a time");
    assert_eq!(pair.client.cancel(b), CancelOutcome::SentToServer);
    pair.drive();
    assert!(
        request_ends(&pair).is_empty(),
        "b's end waits for a's result"
    );
    assert!(cancels_requested(&pair).is_empty(), "b never ran");
    answer(&mut pair, a);
    assert_eq!(pair.server_requests(), [a, c], "b is skipped");
    answer(&mut pair, c);
    assert_eq!(
        request_ends(&pair),
        ends(&[(a, "r1"), (b, "Cancelled"), (c, "r3")])
    );
    assert_eq!(pair.client.outstanding_requests(), 0);
}

#[test]
fn a_cancel_tells_a_running_call_which_still_ends_exactly_once() {
    let mut pair = cancel_pair(4, 3);
    let a = pair.client.request(1, Bytes::new()).unwrap();
    let b = pair.client.request(1, Bytes::new()).unwrap();
    pair.drive();
    assert_eq!(pair.server_requests(), [a, b]);
    assert_eq!(pair.client.cancel(a), CancelOutcome::SentToServer);
    assert_eq!(pair.client.cancel(b), CancelOutcome::SentToServer);
    assert_eq!(
        pair.client.cancel(a),
        CancelOutcome::AlreadySent,
        "asked once"
    );
    pair.drive();
    assert_eq!(cancels_requested(&pair), [a, b], "each handler told once");
    // a's handler stops; b's finishes anyway.
    assert!(pair
        .server
        .respond(a, Err((ErrorCode::Cancelled, Text::from("stopped")))));
    answer(&mut pair, b);
    assert!(
        !pair.server.respond(a, Ok(Bytes::new())),
        "answered already: a second answer is refused"
    );
    pair.drive();
    assert_eq!(request_ends(&pair), ends(&[(a, "Cancelled"), (b, "r2")]));
}

#[test]
fn a_cancel_after_the_result_changes_nothing_and_sends_nothing() {
    let mut pair = cancel_pair(4, 3);
    let a = pair.client.request(1, Bytes::new()).unwrap();
    pair.drive();
    answer(&mut pair, a);
    let transmits = pair.client_transmits.len();
    assert_eq!(pair.client.cancel(a), CancelOutcome::NotOutstanding);
    assert_eq!(pair.client.cancel(9_999), CancelOutcome::NotOutstanding);
    pair.drive();
    assert_eq!(pair.client_transmits.len(), transmits, "no Cancel sent");
    assert_eq!(request_ends(&pair), ends(&[(a, "r1")]));
}

#[test]
fn a_cancel_that_crosses_the_result_on_the_wire_is_ignored_by_the_server() {
    let mut pair = cancel_pair(4, 3);
    let a = pair.client.request(1, Bytes::new()).unwrap();
    pair.drive();
    // The result is on its way when the client cancels.
    assert!(pair.server.respond(a, Ok(Bytes::from_static(b"done"))));
    assert_eq!(pair.client.cancel(a), CancelOutcome::SentToServer);
    pair.drive();
    assert!(cancels_requested(&pair).is_empty());
    assert!(pair.server_closed().is_none() && pair.client_closed().is_none());
    assert_eq!(request_ends(&pair), ends(&[(a, "done")]));
}

#[test]
fn a_cancel_inside_an_open_batch_takes_the_request_out_of_it() {
    let mut pair = cancel_pair(4, 3);
    pair.client.start_batch().unwrap();
    let a = pair.client.request(1, Bytes::from_static(b"a")).unwrap();
    pair.client
        .push(PushCommand::Publish {
            groups: vec![GroupId(1)],
            payload: Bytes::from_static(b"between the calls"),
        })
        .unwrap();
    let b = pair.client.request(2, Bytes::from_static(b"b")).unwrap();
    let c = pair.client.request(3, Bytes::from_static(b"c")).unwrap();
    assert_eq!(pair.client.cancel(b), CancelOutcome::RemovedFromBatch);
    assert_eq!(pair.client.cancel(b), CancelOutcome::NotOutstanding);
    assert_eq!(pair.client.outstanding_requests(), 2);
    pair.client.commit_batch(true).unwrap();
    pair.drive();
    assert_eq!(pair.server_requests(), [a, c], "b never left the client");
    assert!(pair.server_events.iter().any(|e| matches!(
        e,
        ServerEvent::Push(Message::Publish(p)) if p.payload == "between the calls"
    )));
    answer(&mut pair, a);
    answer(&mut pair, c);
    assert_eq!(
        request_ends(&pair),
        ends(&[(b, "aborted Cancelled"), (a, "r1"), (c, "r3")])
    );
}

#[test]
fn an_older_server_cannot_be_told_so_the_request_ends_at_once_and_its_result_is_dropped() {
    let mut pair = cancel_pair(4, 2);
    let a = pair.client.request(1, Bytes::new()).unwrap();
    let b = pair.client.request(1, Bytes::new()).unwrap();
    pair.drive();
    let transmits = pair.client_transmits.len();
    assert_eq!(pair.client.cancel(a), CancelOutcome::EndedLocally);
    assert_eq!(pair.client.cancel(a), CancelOutcome::NotOutstanding);
    pair.drive();
    assert_eq!(
        pair.client_transmits.len(),
        transmits,
        "a v2 server gets no Cancel"
    );
    assert_eq!(request_ends(&pair), ends(&[(a, "aborted Cancelled")]));
    answer(&mut pair, a);
    answer(&mut pair, b);
    assert_eq!(
        request_ends(&pair),
        ends(&[(a, "aborted Cancelled"), (b, "r2")]),
        "a's late result is dropped, b's arrives"
    );
    assert!(
        pair.client_closed().is_none(),
        "the order check still passed"
    );
}

#[test]
fn a_cancel_on_a_version_2_connection_is_a_protocol_error() {
    let mut pair = cancel_pair(4, 2);
    let mut frame = bytes::BytesMut::new();
    Message::Cancel(pushwire_protocol::Cancel { request_id: 1 }).encode(&mut frame);
    pair.server.handle_input(pair.now, &frame);
    pair.drive();
    assert!(
        matches!(pair.server_closed(), Some(CloseReason::Protocol(_))),
        "{:?}",
        pair.server_closed()
    );
}

#[test]
fn a_peer_that_trickles_a_frame_that_never_ends_is_closed_as_idle() {
    let mut pair = Pair::plaintext();
    pair.drive();
    assert!(pair.client_ready());
    // From now on only the trickle reaches the server: a frame that announces 64
    // bytes, one byte every 5 s.
    pair.connected = false;
    let idle = KeepAlive::default().idle_timeout.unwrap();
    pair.server.handle_input(pair.now, &[0, 0, 0, 64, 0x10]);
    let started = pair.now;
    while pair.server_closed().is_none() && pair.now - started < 2 * idle {
        pair.advance(Duration::from_secs(5));
        pair.server.handle_input(pair.now, &[0]);
        pair.drive();
    }
    assert_eq!(
        pair.server_closed(),
        Some(&CloseReason::Timeout(TimeoutKind::Idle))
    );
    assert!(
        pair.now - started <= idle + Duration::from_secs(5),
        "closed at the idle deadline, not later: {:?}",
        pair.now - started
    );
}

#[test]
fn keepalive_pings_an_idle_link_and_closes_a_dead_one() {
    let mut pair = Pair::tls();
    pair.drive();
    let keepalive = KeepAlive::default();
    let server_rx = pair.server.app_bytes_received();
    pair.advance(keepalive.ping_interval.unwrap() + Duration::from_millis(1));
    assert!(
        pair.server.app_bytes_received() > server_rx,
        "the client pinged"
    );
    assert!(pair.client_closed().is_none() && pair.server_closed().is_none());

    // Requests in flight when the network dies end with connection-lost (G7).
    let id = pair.client.request(1, Bytes::new()).unwrap();
    pair.connected = false;
    for _ in 0..4 {
        pair.advance(keepalive.idle_timeout.unwrap() / 2);
    }
    assert_eq!(
        pair.client_closed(),
        Some(&CloseReason::Timeout(TimeoutKind::Idle))
    );
    assert_eq!(
        pair.server_closed(),
        Some(&CloseReason::Timeout(TimeoutKind::Idle))
    );
    assert!(pair.client_events.iter().any(|e| matches!(
        e,
        ClientEvent::RequestAborted { request_id, reason: AbortReason::ConnectionLost(_) } if *request_id == id
    )));
}

#[test]
fn a_silent_client_is_closed_at_the_hello_deadline() {
    let config = ServerConfig::new(server_tls(
        "server.cert.pem",
        "server.key.pem",
        ClientAuth::None,
    ));
    let deadline = config.hello_timeout;
    let now = Instant::now();
    let mut server = ServerConnection::new(Arc::new(config), peer(), now).unwrap();
    // A dribbling client: one byte of a ClientHello, then nothing.
    server.handle_input(now, &[0x16]);
    assert_eq!(server.poll_timeout(), Some(now + deadline));
    server.handle_timeout(now + deadline - Duration::from_millis(1));
    assert!(server.poll_event().is_none());
    server.handle_timeout(now + deadline);
    let mut out = Vec::new();
    server.poll_transmit(now + deadline, &mut out);
    assert_eq!(
        server.poll_event(),
        Some(ServerEvent::Closed(CloseReason::Timeout(
            TimeoutKind::Hello
        )))
    );
    assert!(server.is_finished());
}

#[test]
fn graceful_close_from_either_end() {
    let mut pair = Pair::tls();
    pair.drive();
    pair.client.close(CloseCode::Normal, "bye");
    pair.drive();
    assert_eq!(
        pair.server_closed(),
        Some(&CloseReason::Remote {
            code: CloseCode::Normal,
            reason: Text::from("bye")
        })
    );
    assert!(matches!(
        pair.client_closed(),
        Some(CloseReason::Local {
            code: CloseCode::Normal,
            ..
        })
    ));
    assert!(pair.client.is_finished() && pair.server.is_finished());

    let mut pair = Pair::tls();
    pair.drive();
    pair.server.close(CloseCode::GoingAway, "shutting down");
    pair.drive();
    assert_eq!(
        pair.client_closed(),
        Some(&CloseReason::Remote {
            code: CloseCode::GoingAway,
            reason: Text::from("shutting down")
        })
    );
    assert!(pair.client.is_finished() && pair.server.is_finished());
}

#[test]
fn garbage_after_the_handshake_is_an_error_not_a_panic() {
    let mut pair = Pair::tls();
    pair.drive();
    pair.server.handle_input(
        pair.now,
        &[
            0x17, 0x03, 0x03, 0x00, 0x20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
            17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
        ],
    );
    pair.drive();
    assert!(
        matches!(pair.server_closed(), Some(CloseReason::Tls(_))),
        "{:?}",
        pair.server_events
    );

    // In plaintext mode the frame decoder catches it, and the peer is told why.
    let mut pair = Pair::plaintext();
    pair.drive();
    pair.server.handle_input(pair.now, &[0, 0, 0, 1, 0xee]);
    pair.drive();
    assert!(matches!(
        pair.server_closed(),
        Some(CloseReason::Protocol(_))
    ));
    assert!(matches!(
        pair.client_closed(),
        Some(CloseReason::Remote {
            code: CloseCode::ProtocolError,
            ..
        })
    ));
}

#[test]
fn push_commands_and_events_pass_through_as_typed_values() {
    let mut pair = Pair::tls();
    pair.drive();
    let id = pair
        .client
        .push(PushCommand::Subscribe(vec![GroupId(1), GroupId(3)]))
        .unwrap();
    pair.drive();
    assert!(pair.server_events.iter().any(|e| matches!(
        e,
        ServerEvent::Push(Message::Subscribe(s)) if s.command_id == id && s.groups == [GroupId(1), GroupId(3)]
    )));
    let event = Message::UserMessage(pushwire_protocol::UserMessage {
        seq: 1,
        sender: pushwire_protocol::Sender::Server,
        payload: Bytes::from_static(b"hi"),
        compression: None,
    });
    pair.server.send(&event);
    pair.drive();
    assert!(pair.client_events.contains(&ClientEvent::Push(event)));
}

/// Runs a scripted session and returns every event of both ends, feeding each
/// transmit to the other end cut at the given points.
fn scripted_events(tls: bool, cuts: &[usize]) -> (Vec<ClientEvent>, Vec<ServerEvent>) {
    let mut pair = if tls { Pair::tls() } else { Pair::plaintext() };
    let mut cut_iter = cuts.iter().cycle();
    let mut steps = 0;
    let mut script = 0;
    loop {
        steps += 1;
        assert!(steps < 10_000, "did not settle");
        let mut moved = false;
        for from_client in [true, false] {
            let mut buf = Vec::new();
            let n = if from_client {
                pair.client.poll_transmit(pair.now, &mut buf)
            } else {
                pair.server.poll_transmit(pair.now, &mut buf)
            };
            if n == 0 {
                continue;
            }
            moved = true;
            let mut rest = &buf[..];
            while !rest.is_empty() {
                let take = (*cut_iter.next().unwrap()).clamp(1, rest.len());
                if from_client {
                    pair.server.handle_input(pair.now, &rest[..take]);
                } else {
                    pair.client.handle_input(pair.now, &rest[..take]);
                }
                rest = &rest[take..];
            }
        }
        while let Some(e) = pair.client.poll_event() {
            moved = true;
            pair.client_events.push(e);
        }
        while let Some(e) = pair.server.poll_event() {
            moved = true;
            match &e {
                ServerEvent::Authenticate(_) => pair.server.permit(grant()),
                ServerEvent::Request {
                    request_id,
                    payload,
                    ..
                } => {
                    pair.server.respond(*request_id, Ok(payload.clone()));
                }
                _ => {}
            }
            pair.server_events.push(e);
        }
        if !moved {
            match script {
                0 if pair.client.state() == ClientState::Ready => {
                    // Spans several TLS records.
                    pair.client
                        .request(1, Bytes::from(vec![7u8; 40_000]))
                        .unwrap();
                    pair.client.push(PushCommand::ListGroups).unwrap();
                    pair.client.start_batch().unwrap();
                    pair.client.request(2, Bytes::from_static(b"x")).unwrap();
                    pair.client.commit_batch(true).unwrap();
                }
                1 => pair.client.close(CloseCode::Normal, "done"),
                _ => break,
            }
            script += 1;
        }
    }
    // ServerAuthentication carries certificates that differ per run only if the
    // certs change; the events are compared whole.
    (pair.client_events, pair.server_events)
}

fn summary(events: &(Vec<ClientEvent>, Vec<ServerEvent>)) -> String {
    let short = |s: String| s.chars().take(120).collect::<String>();
    let client: Vec<String> = events.0.iter().map(|e| short(format!("{e:?}"))).collect();
    let server: Vec<String> = events.1.iter().map(|e| short(format!("{e:?}"))).collect();
    format!("client: {client:#?}\nserver: {server:#?}")
}

fn cases() -> u32 {
    std::env::var("PUSHWIRE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn cutting_the_byte_streams_anywhere_never_changes_the_events(
        tls in any::<bool>(),
        cuts in proptest::collection::vec(1usize..2000, 1..12),
    ) {
        let reference = scripted_events(tls, &[usize::MAX]);
        let responses = reference.0.iter().filter(|e| matches!(e, ClientEvent::Response { .. })).count();
        prop_assert_eq!(responses, 2);
        let cut = scripted_events(tls, &cuts);
        // Compared whole; printed as a summary (payloads are 40 kB).
        prop_assert!(cut == reference, "events differ:\n{}\nvs reference\n{}", summary(&cut), summary(&reference));
    }
}

#[test]
fn a_due_ping_with_frames_already_waiting_moves_the_timer_forward() {
    let mut pair = Pair::tls();
    pair.drive();
    // A frame waits unflushed when the ping falls due: no ping is needed, but the
    // deadline must not stay in the past (a driver would spin on it).
    pair.client
        .request(1, Bytes::from_static(b"waiting"))
        .unwrap();
    let later = pair.now + KeepAlive::default().ping_interval.unwrap() + Duration::from_millis(1);
    pair.client.handle_timeout(later);
    let next = pair.client.poll_timeout().expect("keep-alive stays armed");
    assert!(next > later, "the timer stayed in the past");
}

#[test]
fn an_idle_server_connection_gives_back_what_the_handshake_and_a_burst_grew() {
    // Most connections of a push server are idle: what they hold is what a server
    // with many connections pays for each.
    const IDLE_MAX: usize = 1024;
    for (mut pair, mode) in [(Pair::tls(), "TLS"), (Pair::plaintext(), "plaintext")] {
        pair.drive();
        assert_eq!(pair.server.state(), ServerState::Ready, "{mode}");
        let after_handshake = pair.server.buffer_capacity();
        assert!(
            after_handshake <= IDLE_MAX,
            "{mode}: {after_handshake} bytes held after the handshake"
        );

        // A burst of large requests and results grows the buffers, and a busy
        // connection keeps them: nothing is given back per message.
        let ids: Vec<u64> = (0..50)
            .map(|_| pair.client.request(1, Bytes::from(vec![7; 4000])).unwrap())
            .collect();
        pair.drive();
        for &id in &ids {
            assert!(pair.server.respond(id, Ok(Bytes::from(vec![1; 4000]))));
        }
        pair.drive();
        assert_eq!(pair.client_results(), ids, "{mode}");
        let busy = pair.server.buffer_capacity();
        assert!(
            busy > 16 * 1024,
            "{mode}: only {busy} bytes after the burst"
        );

        // A ping interval of silence: the connection is idle, and gives them back.
        pair.advance(KeepAlive::default().ping_interval.unwrap() + Duration::from_millis(1));
        let idle = pair.server.buffer_capacity();
        assert!(
            idle <= IDLE_MAX,
            "{mode}: {idle} bytes held by an idle connection"
        );
        assert!(pair.server_closed().is_none() && pair.client_closed().is_none());
    }
}

/// A pair whose client has keep-alive `client` and whose server has `server`,
/// speaking at most `client_version`; plaintext, handshake done.
fn keepalive_pair(client: KeepAlive, server: KeepAlive, client_version: u16) -> Pair {
    keepalive_pair_with(client, server, client_version, 4)
}

/// [`keepalive_pair`] with a server speaking at most `server_version`.
fn keepalive_pair_with(
    client: KeepAlive,
    server: KeepAlive,
    client_version: u16,
    server_version: u16,
) -> Pair {
    let mut client_config = ClientConfig::new(ClientTransport::Plaintext, "alice", b"MyPassword");
    client_config.keepalive = client;
    client_config.max_version = client_version;
    let mut server_config = ServerConfig::new(ServerTransport::Plaintext);
    server_config.keepalive = server;
    server_config.max_version = server_version;
    let mut pair = Pair::new(client_config, server_config);
    pair.drive();
    assert!(pair.client_ready());
    pair
}

/// Advances `pair` by `total` in steps of `step` or until a side closed; returns
/// how long it stayed open.
fn idle_for(pair: &mut Pair, total: Duration, step: Duration) -> Duration {
    let start = pair.now;
    while pair.now - start < total && pair.client_closed().is_none() {
        pair.advance(step);
    }
    pair.now - start
}

#[test]
fn a_version_4_client_pings_often_enough_for_the_servers_idle_timeout() {
    // The client sends nothing of its own (keep-alive off); the server never pings
    // but closes after 3 s without a frame.
    let off = KeepAlive {
        ping_interval: None,
        idle_timeout: None,
    };
    let server = KeepAlive {
        ping_interval: None,
        idle_timeout: Some(Duration::from_secs(3)),
    };
    let step = Duration::from_millis(250);

    let mut v4 = keepalive_pair(off, server, 4);
    assert_eq!(v4.client.welcome().unwrap().idle_timeout_ms, 3000);
    assert_eq!(
        v4.client.keepalive().ping_interval,
        Some(Duration::from_secs(1))
    );
    let lived = idle_for(&mut v4, Duration::from_secs(60), step);
    assert_eq!(lived, Duration::from_secs(60), "{:?}", v4.client_closed());
    assert!(v4.server_closed().is_none());

    // The same client speaking version 3, or meeting a version 3 server, does not
    // know the server's timeout.
    for (client_version, server_version) in [(3, 4), (4, 3)] {
        let mut v3 = keepalive_pair_with(off, server, client_version, server_version);
        let welcome = v3.client.welcome().unwrap();
        assert_eq!((welcome.version, welcome.idle_timeout_ms), (3, 0));
        assert_eq!(v3.client.keepalive(), off);
        let lived = idle_for(&mut v3, Duration::from_secs(60), step);
        assert!(lived <= Duration::from_secs(4), "{lived:?}");
        assert_eq!(
            v3.server_closed(),
            Some(&CloseReason::Timeout(TimeoutKind::Idle))
        );
        assert!(matches!(
            v3.client_closed(),
            Some(CloseReason::Remote {
                code: CloseCode::IdleTimeout,
                ..
            })
        ));
    }
}

#[test]
fn a_version_4_clients_idle_timeout_is_not_shorter_than_the_servers_pings_need() {
    // The server pings every 10 s and never times out; the client does not ping and
    // would time out after 4 s of silence.
    let client = KeepAlive {
        ping_interval: None,
        idle_timeout: Some(Duration::from_secs(4)),
    };
    let server = KeepAlive {
        ping_interval: Some(Duration::from_secs(10)),
        idle_timeout: None,
    };
    let step = Duration::from_millis(500);

    let mut v4 = keepalive_pair(client, server, 4);
    assert_eq!(
        v4.client.keepalive(),
        KeepAlive {
            ping_interval: None,
            idle_timeout: Some(Duration::from_secs(30)),
        }
    );
    let lived = idle_for(&mut v4, Duration::from_secs(120), step);
    assert_eq!(lived, Duration::from_secs(120), "{:?}", v4.client_closed());

    let mut v3 = keepalive_pair(client, server, 3);
    let lived = idle_for(&mut v3, Duration::from_secs(120), step);
    assert!(lived <= Duration::from_secs(5), "{lived:?}");
    assert_eq!(
        v3.client_closed(),
        Some(&CloseReason::Timeout(TimeoutKind::Idle))
    );
}

#[test]
fn following_the_server_only_ever_shortens_pings_and_lengthens_the_idle_timeout() {
    let own = KeepAlive {
        ping_interval: Some(Duration::from_secs(15)),
        idle_timeout: Some(Duration::from_secs(45)),
    };
    // The defaults on both ends: nothing changes.
    assert_eq!(
        own.following(Some(Duration::from_secs(15)), Some(Duration::from_secs(45))),
        own
    );
    // A server that says nothing: nothing changes.
    assert_eq!(own.following(None, None), own);
    // A strict server: the client pings at a third of its idle timeout.
    assert_eq!(
        own.following(None, Some(Duration::from_secs(6)))
            .ping_interval,
        Some(Duration::from_secs(2))
    );
    // A server that pings rarely: the client waits three of its intervals.
    assert_eq!(
        own.following(Some(Duration::from_secs(60)), None)
            .idle_timeout,
        Some(Duration::from_secs(180))
    );
}
