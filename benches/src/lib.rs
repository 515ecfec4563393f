//! Workloads and helpers shared by pushwire's criterion benchmarks and the measurement
//! binaries (`compare`, the NATS side of the side-by-side run; `idle_memory`).

use bytes::Bytes;
use pushwire_protocol::{
    Gap, GroupDescription, GroupId, GroupList, Message, PeerSender, Published, PushRejected,
    PushTaken, RejectCode, Sender, SessionLost, SessionLostReason, Subscribed, Text, Unsubscribed,
    UserMessage, UserMessageDelivered,
};
use rustls::crypto::CryptoProvider;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;

/// A typical peer sender: a user id of 17 characters on an IPv4 address.
pub fn sample_sender(is_self: bool) -> Sender {
    Sender::Peer(PeerSender {
        user_id: Text::from("alice@example.com"),
        addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
        port: 51_234,
        service_id: 1,
        is_self,
        node: None,
    })
}

/// A typical publication as one receiver gets it: a peer sender, two groups, and a
/// payload of `payload_len` bytes.
pub fn sample_published(payload_len: usize) -> Message {
    Message::Published(Published {
        seq: 1_000_000,
        sender: sample_sender(false),
        groups: vec![GroupId(2), GroupId(3)],
        payload: Bytes::from(vec![b'x'; payload_len]),
        compression: None,
    })
}

/// One sample of every message the server pushes or answers a push command with
/// (every server-to-client push message type), named by its type; payloads of
/// `payload_len` bytes where the message has one.
pub fn sample_push_events(payload_len: usize) -> Vec<(&'static str, Message)> {
    let payload = Bytes::from(vec![b'x'; payload_len]);
    vec![
        (
            "Subscribed",
            Message::Subscribed(Subscribed {
                seq: 41,
                sender: sample_sender(false),
                groups: vec![GroupId(1), GroupId(3)],
            }),
        ),
        (
            "Unsubscribed",
            Message::Unsubscribed(Unsubscribed {
                seq: 42,
                sender: sample_sender(false),
                groups: vec![GroupId(3)],
            }),
        ),
        ("Published", sample_published(payload_len)),
        (
            "UserMessage",
            Message::UserMessage(UserMessage {
                seq: 43,
                sender: sample_sender(false),
                payload,
                compression: None,
            }),
        ),
        (
            "Gap",
            Message::Gap(Gap {
                first: 44,
                last: 90,
            }),
        ),
        (
            "SessionLost",
            Message::SessionLost(SessionLost {
                reason: SessionLostReason::Expired,
                text: Text::from("the session expired after 60 s detached"),
            }),
        ),
        (
            "PushRejected",
            Message::PushRejected(PushRejected {
                command_id: 7,
                code: RejectCode::UnknownGroups,
                groups: vec![GroupId(9), GroupId(10)],
                reason: Text::from("no such chat groups"),
            }),
        ),
        (
            "UserMessageDelivered",
            Message::UserMessageDelivered(UserMessageDelivered {
                command_id: 8,
                connections: 2,
            }),
        ),
        ("PushTaken", Message::PushTaken(PushTaken { command_id: 9 })),
        (
            "GroupList",
            Message::GroupList(GroupList {
                command_id: 9,
                groups: vec![
                    GroupDescription {
                        id: GroupId(1),
                        description: Text::from("R&D Department"),
                    },
                    GroupDescription {
                        id: GroupId(2),
                        description: Text::from("Sales Department"),
                    },
                    GroupDescription {
                        id: GroupId(3),
                        description: Text::from("Management Department"),
                    },
                ],
            }),
        ),
    ]
}

/// Payload sizes measured by the codec and fan-out benchmarks.
pub const PAYLOAD_SIZES: [usize; 3] = [16, 128, 1024];

/// A file of the development certificates (`certs/` at the workspace root).
pub fn cert_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../certs")
        .join(name)
}

/// The development server key's password.
pub const DEV_KEY_PASSWORD: &str = "mypassword";

/// Whether the benchmark binary runs a full measurement (`cargo bench` passes
/// `--bench`) rather than criterion's test mode (`cargo test --bench`, each benchmark
/// once), where the largest setups are skipped to keep CI fast.
pub fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// ring's provider reduced to one cipher suite, TLS13_AES_128_GCM_SHA256, so that
/// both sides of the TLS comparison negotiate the same suite whatever the client
/// offers.
pub fn pinned_provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    Arc::new(provider)
}

/// The development certificate as a rustls server config: TLS 1.3 with the
/// [pinned provider](pinned_provider)'s one suite, as the TLS benchmarks measure it.
pub fn dev_server_tls() -> Arc<rustls::ServerConfig> {
    let credentials = pushwire_engine::credentials::ServerCredentials::from_pem_files(
        &cert_file("server.cert.pem"),
        &cert_file("server.key.pem"),
        Some(DEV_KEY_PASSWORD),
    )
    .expect("development credentials");
    let config = rustls::ServerConfig::builder_with_provider(pinned_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(credentials.chain.clone(), credentials.key.clone_key())
        .expect("server certificate");
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use pushwire_protocol::{FrameDecoder, FrameLimits, MessageKind, Role};

    #[test]
    fn sample_publication_has_the_requested_payload() {
        for size in PAYLOAD_SIZES {
            let Message::Published(p) = sample_published(size) else {
                panic!("not a publication");
            };
            assert_eq!(p.payload.len(), size);
        }
    }

    #[test]
    fn samples_cover_every_server_push_message_and_round_trip() {
        let samples = sample_push_events(16);
        let push_kinds = MessageKind::ALL
            .iter()
            .filter(|k| k.sender() == Role::Server && (0x30..0x40).contains(&(**k as u8)));
        for kind in push_kinds {
            assert!(
                samples.iter().any(|(_, m)| m.kind() == *kind),
                "no sample of {kind}"
            );
        }
        for (name, message) in samples {
            assert_eq!(message.kind().name(), name);
            let mut wire = BytesMut::new();
            message.encode(&mut wire);
            let mut decoder = FrameDecoder::new(FrameLimits::default());
            assert_eq!(decoder.feed(&wire), wire.len());
            assert_eq!(decoder.next_message().unwrap(), Some(message));
        }
    }

    #[test]
    fn the_pinned_provider_has_one_suite() {
        assert_eq!(pinned_provider().cipher_suites.len(), 1);
        assert!(cert_file("ca.cert.pem").is_file());
    }
}
