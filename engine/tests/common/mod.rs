//! Fixtures shared by the engine's integration tests: the development certificates,
//! a fixed wall clock inside their validity, and the values the in-memory pairs use.
#![allow(dead_code)] // each test binary uses its own subset

use pushwire_engine::credentials::{load_root_store, ServerCredentials};
use pushwire_engine::server::Grant;
use pushwire_engine::tls::ClientTls;
use pushwire_protocol::ResumeToken;
use rustls::pki_types::UnixTime;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// A file of `certs/`.
pub fn cert(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../certs")
        .join(name)
}

/// 2030-01-01: inside the development certificates' validity, after the expired one's.
pub fn wall_clock() -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(1_893_456_000))
}

/// The client address the server engines are told.
pub fn peer() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

/// The development server's credentials, loaded once: the key is encrypted and slow
/// to decrypt in debug builds.
pub fn credentials() -> &'static ServerCredentials {
    static CREDENTIALS: OnceLock<ServerCredentials> = OnceLock::new();
    CREDENTIALS.get_or_init(|| {
        ServerCredentials::from_pem_files(
            &cert("server.cert.pem"),
            &cert("server.key.pem"),
            Some("mypassword"),
        )
        .expect("server credentials")
    })
}

/// A client trusting the development CA and expecting "localhost".
pub fn client_tls() -> ClientTls {
    static TLS: OnceLock<ClientTls> = OnceLock::new();
    TLS.get_or_init(|| {
        ClientTls::new(
            load_root_store(&[cert("ca.cert.pem")]).unwrap(),
            "localhost",
        )
        .unwrap()
    })
    .clone()
}

/// What the simulated server application grants.
pub fn grant() -> Grant {
    Grant {
        session_id: 7,
        resume_token: ResumeToken([9; 16]),
        resumed: false,
        session_timeout_ms: 0,
        replay_capacity: 0,
    }
}
