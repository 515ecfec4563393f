//! What the real-socket tests share: the development certificates in `certs/` and a
//! server builder that uses them. Each test file uses part of it.
#![allow(dead_code)]

use pushwire_tokio::server::ServerBuilder;
use std::path::PathBuf;

/// A file of the development certificates (`certs/`).
pub fn cert(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../certs")
        .join(name)
}

/// A server builder with the development certificate, signed by `ca.cert.pem`.
pub fn dev_tls_server() -> ServerBuilder {
    ServerBuilder::new()
        .tls_from_pem(
            &cert("server.cert.pem"),
            &cert("server.key.pem"),
            Some("mypassword"),
        )
        .expect("the development certificate loads")
}
