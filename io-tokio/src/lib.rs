//! pushwire on tokio: the production server and client, and the `pushwire` CLI.
//!
//! This crate is the only place with sockets, tasks and clocks. It wires the sans-I/O
//! engines of `pushwire-engine` to byte streams: tokio's TCP in production, turmoil's
//! in the simulator.

#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod hello;
pub mod pool;
mod read;
pub mod server;
pub mod transport;
pub mod web;

use pushwire_protocol::{
    MessageKind, Role, COMPRESSED_TYPE_BIT, PROTOCOL_VERSION, SUPPORTED_VERSIONS,
};
use std::fmt::Write;

/// A human-readable list of the protocol version and every message type, with its wire
/// code and which end sends it.
pub fn protocol_catalogue() -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pushwire protocol version {PROTOCOL_VERSION} (supported {}..={})",
        SUPPORTED_VERSIONS.start(),
        SUPPORTED_VERSIONS.end()
    );
    let _ = writeln!(out, "{:<6} {:<22} sent by", "code", "message");
    for &kind in MessageKind::ALL {
        let sender = match kind.sender() {
            Role::Client => "client",
            Role::Server => "server",
            Role::Either => "either",
        };
        let _ = writeln!(out, "0x{:02x}   {:<22} {sender}", kind as u8, kind.name());
    }
    let _ = writeln!(
        out,
        "with bit 0x80 (version 3), compressed payloads: {}",
        MessageKind::ALL
            .iter()
            .filter(|k| k.allows_compression())
            .map(|&k| format!("0x{:02x} {}", k as u8 | COMPRESSED_TYPE_BIT, k.name()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_lists_every_message_once() {
        let catalogue = protocol_catalogue();
        for &kind in MessageKind::ALL {
            let line = format!("0x{:02x}   {:<22}", kind as u8, kind.name());
            assert_eq!(catalogue.matches(&line).count(), 1, "{line}");
        }
        assert!(catalogue.starts_with(&format!("pushwire protocol version {PROTOCOL_VERSION}")));
        assert!(catalogue
            .contains("0xa2 Publish, 0xa3 SendUserMessage, 0xb2 Published, 0xb3 UserMessage"));
    }
}
