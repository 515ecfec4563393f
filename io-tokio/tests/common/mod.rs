//! What the real-socket tests share: the development certificates in `certs/` and a
//! server builder that uses them. Each test file uses part of it.
#![allow(dead_code)]

use pushwire_tokio::client::{Event, EventStream};
use pushwire_tokio::server::ServerBuilder;
use std::path::PathBuf;
use std::time::Duration;

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

/// Waits for the next event that `pick` accepts, skipping the others; fails after 5 s.
pub async fn next_event<T>(
    events: &mut EventStream,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let event = events.recv().await.expect("event stream ended");
            if let Some(t) = pick(&event) {
                return t;
            }
        }
    })
    .await
    .expect("timed out waiting for an event")
}
