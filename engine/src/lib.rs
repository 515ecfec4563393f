//! Sans-I/O state machines of pushwire.
//!
//! Nothing in this crate reads a clock, the OS random number generator or a socket,
//! and nothing spawns threads: time and randomness are arguments, bytes go in and out
//! through caller-owned buffers.

#![warn(missing_docs)]

mod channel;
pub mod client;
mod close;
pub mod credentials;
pub mod hub;
pub mod node;
mod rpc;
pub mod server;
pub mod tls;

pub use channel::KeepAlive;
pub use close::{CloseReason, ProtocolError, TimeoutKind};
pub use rpc::{RequestResult, DEFAULT_MAX_OUTSTANDING_REQUESTS};
